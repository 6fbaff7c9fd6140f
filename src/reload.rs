//! Hot reload of the configuration (DESIGN §3 "Edge: TLS, HTTP/2, route
//! options, hot reload"): SIGHUP and `POST /api/v1/config/reload` re-read
//! the file `serve` was started with, with the same environment overrides,
//! and validate it exactly as `gateway check-config` does.
//!
//! A file with any error changes nothing. A valid one is applied whole:
//! - certificates of the TLS listener are re-read first, the only step that
//!   can still fail (then nothing has changed);
//! - the limiter's [`Policy`] (default, anonymous and auth-failure limits,
//!   exempt IPs, trusted proxies, `rate_limits.headers`) is swapped;
//! - a new [`RouteTable`] is built and swapped in one store. A route keeps
//!   its [`crate::route::RouteId`] (its local counters) as long as it keeps
//!   its name; an upstream whose settings did not change is the same
//!   `Arc<Upstream>`, so its passive health carries over (keep-alive
//!   connections are pooled by Pingora per peer address, so they carry over
//!   anyway). Requests in flight hold their `Arc<Route>` and finish on the
//!   table they started with; no listener is touched, so no connection drops.
//!
//! Settings that only take effect at start-up (listeners, threads, the
//! database, Redis, keys, request logs, webhooks, JWT issuers…) are compared
//! with the running configuration and reported as `needs_restart`, never
//! silently ignored. Reloads are serialised.
//!
//! The running configuration is kept as loaded: its SHA-256 (of the file's
//! bytes), when it was loaded, and the effective document (file plus
//! environment overrides) with every secret redacted, for
//! `GET /api/v1/config`. Nothing unredacted is kept beyond the [`Config`].
//!
//! Above `config`, `route`, `limits` and `tls`; below `admin` and `server`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, ConfigErrors, KeySource, Need};
use crate::limits::policy::Policy;
use crate::limits::RateLimiter;
use crate::route::upstream::Upstream;
use crate::route::{RouteTable, Routes};
use crate::tls::Certificates;

/// `result` labels of `gateway_config_reloads_total`: applied, refused for
/// errors in the file, failed for an internal reason.
pub const RESULTS: [&str; 3] = ["ok", "invalid", "error"];

/// What replaces a secret in `GET /api/v1/config`.
pub const REDACTED: &str = "<redacted>";

/// Registers `gateway_config_reloads_total` at zero for every result.
pub fn register_metrics() {
    for result in RESULTS {
        metrics::counter!("gateway_config_reloads_total", "result" => result).absolute(0);
    }
}

fn count(result: &'static str) {
    metrics::counter!("gateway_config_reloads_total", "result" => result).increment(1);
}

/// Where `serve`'s configuration comes from: the file and the environment
/// overrides it was started with.
#[derive(Clone)]
pub struct ConfigSource {
    path: PathBuf,
    /// Only the variables config overrides read (`GATEWAY_*`,
    /// `DATABASE_URL`, `REDIS_URL`).
    env: Vec<(String, String)>,
}

impl Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment may hold the database password: never printed.
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ConfigSource {
    pub fn new(path: PathBuf, env: impl IntoIterator<Item = (String, String)>) -> ConfigSource {
        let env = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("GATEWAY_") || k == "DATABASE_URL" || k == "REDIS_URL")
            .collect();
        ConfigSource { path, env }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file, as `gateway check-config` does
    /// ([`Config::from_toml`] with the same overrides). Blocking file I/O.
    pub fn load(&self) -> Result<Loaded, ConfigErrors> {
        let file_error = |message: String| {
            ConfigErrors(vec![ConfigError {
                path: self.path.display().to_string(),
                message,
            }])
        };
        let bytes = std::fs::read(&self.path)
            .map_err(|e| file_error(format!("cannot read configuration file: {e}")))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            file_error("cannot read configuration file: it is not valid UTF-8".into())
        })?;
        let config = Config::from_toml(text, self.env.iter().cloned(), Need::Serve)?;
        let document = Config::effective_document(text, self.env.iter().cloned())
            .map(|doc| redact_document(&doc))
            .unwrap_or(Value::Null);
        Ok(Loaded {
            config,
            sha256: hex::encode(Sha256::digest(&bytes)),
            document,
            loaded_at: Utc::now(),
        })
    }
}

/// One successful read of the configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub sha256: String,
    /// The effective document (file plus overrides), secrets redacted.
    pub document: Value,
    pub loaded_at: DateTime<Utc>,
}

/// What asked for a reload, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Api,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Api => "api",
        }
    }
}

/// The answer of a successful reload.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub sha256: String,
    pub previous_sha256: String,
    /// Whether the file's bytes differ from the running ones.
    pub changed: bool,
    /// RFC 3339, UTC.
    pub loaded_at: String,
    pub routes: usize,
    pub upstreams: usize,
    /// Keys whose new values differ from the running ones but only take
    /// effect after a restart; everything else was applied.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has errors: the same list `gateway check-config` prints.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The reload task itself failed (a bug); logged.
    #[error("configuration reload failed")]
    Internal,
}

/// Owns the running configuration and applies new ones.
pub struct Reloader {
    source: ConfigSource,
    running: ArcSwap<Loaded>,
    routes: Routes,
    limiter: Arc<RateLimiter>,
    /// The TLS listener's certificates, when there is one.
    certificates: Option<Arc<Certificates>>,
    /// One reload at a time: two would race on the route ids and on which
    /// file ends up running.
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// `loaded` is what the gateway was started with; `routes` and
    /// `limiter` were built from it.
    pub fn new(
        source: ConfigSource,
        loaded: Loaded,
        routes: Routes,
        limiter: Arc<RateLimiter>,
    ) -> Reloader {
        Reloader {
            source,
            running: ArcSwap::from_pointee(loaded),
            routes,
            limiter,
            certificates: None,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the TLS listener's certificates on every reload.
    pub fn with_certificates(mut self, certificates: Arc<Certificates>) -> Reloader {
        self.certificates = Some(certificates);
        self
    }

    /// The running configuration.
    pub fn running(&self) -> Arc<Loaded> {
        self.running.load_full()
    }

    /// `gateway_config_info{sha256="…"} 1` for the running file, in the
    /// Prometheus text format. Rendered with `/metrics` rather than kept in
    /// the recorder, so the previous hash's series is gone after a swap.
    pub fn info_metric(&self) -> String {
        format!(
            "# HELP gateway_config_info The running configuration file's SHA-256.\n\
             # TYPE gateway_config_info gauge\n\
             gateway_config_info{{sha256=\"{}\"}} 1\n",
            self.running.load().sha256
        )
    }

    /// Reads, validates and applies the file; on any error nothing changes.
    pub async fn reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let old = self.running.load_full();
        let source = self.source.clone();
        let certificates = self.certificates.clone();
        let tls_was = old.config.proxy.tls.as_ref().map(|t| t.listen);
        // File reads (the config, then the certificates) off the runtime.
        let read = tokio::task::spawn_blocking(move || {
            let loaded = source.load()?;
            // The listener keeps its address until a restart; its files are
            // re-read now. Certificates go first: they are the last thing
            // that can fail, and they swap whole or not at all.
            if let (Some(certs), Some(tls)) = (&certificates, &loaded.config.proxy.tls) {
                if tls_was.is_some() {
                    certs.reload(tls)?;
                }
            }
            Ok::<Loaded, ConfigErrors>(loaded)
        })
        .await;
        let loaded = match read {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(errors)) => {
                count("invalid");
                tracing::error!(
                    trigger = trigger.as_str(),
                    file = %self.source.path.display(),
                    errors = %errors,
                    "configuration reload refused; the running configuration stays"
                );
                return Err(ReloadError::Invalid(errors));
            }
            Err(e) => {
                count("error");
                tracing::error!(trigger = trigger.as_str(), error = %e, "configuration reload task failed");
                return Err(ReloadError::Internal);
            }
        };
        let needs_restart = needs_restart(&old.config, &loaded.config);
        self.apply(&old.config, &loaded.config);
        let applied = Applied {
            changed: loaded.sha256 != old.sha256,
            sha256: loaded.sha256.clone(),
            previous_sha256: old.sha256.clone(),
            loaded_at: loaded
                .loaded_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            routes: loaded.config.routes.len(),
            upstreams: loaded.config.upstreams.len(),
            needs_restart,
        };
        self.running.store(Arc::new(loaded));
        count("ok");
        tracing::info!(
            trigger = trigger.as_str(),
            sha256 = %applied.sha256,
            changed = applied.changed,
            routes = applied.routes,
            needs_restart = ?applied.needs_restart,
            "configuration reloaded"
        );
        if !applied.needs_restart.is_empty() {
            tracing::warn!(
                needs_restart = ?applied.needs_restart,
                "configuration reloaded, but these settings take effect only after a restart"
            );
        }
        Ok(applied)
    }

    /// Publishes the parts of `new` that apply live.
    fn apply(&self, old: &Config, new: &Config) {
        let previous = self.routes.load_full();
        let upstreams = reuse_upstreams(old, new, &previous);
        let table = RouteTable::after(&previous, new, &upstreams);
        crate::telemetry::register_route_metrics(new, &table);
        self.limiter.set_policy(Policy::new(new));
        self.routes.swap(table);
    }
}

/// The upstreams of `new`: the running `Arc<Upstream>` (with its passive
/// health) for each one whose settings are unchanged, a fresh one for the
/// others.
fn reuse_upstreams(old: &Config, new: &Config, running: &RouteTable) -> Vec<Arc<Upstream>> {
    // Settings `Upstream` takes from `[proxy]` rather than from its entry.
    let same_proxy = old.proxy.write_timeout == new.proxy.write_timeout
        && old.proxy.upstream_down_for == new.proxy.upstream_down_for;
    Upstream::from_config(new)
        .into_iter()
        .map(|fresh| {
            let unchanged = same_proxy && old.upstream(&fresh.name) == new.upstream(&fresh.name);
            let kept = running
                .iter()
                .map(|r| &r.upstream)
                .find(|u| u.name == fresh.name);
            match kept {
                Some(u) if unchanged => u.clone(),
                _ => fresh,
            }
        })
        .collect()
}

/// Whether `a` and `b` differ, by their `Debug` form: the typed config has
/// no `PartialEq` everywhere, and its `Debug` shows every field but
/// secrets (compared separately).
fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The hs256 secrets of `cfg`'s issuers, which `Debug` hides.
fn jwt_secrets(cfg: &Config) -> Vec<&str> {
    cfg.jwt
        .issuers
        .iter()
        .filter_map(|i| match &i.keys {
            KeySource::Hs256Secret(s) => Some(s.expose()),
            _ => None,
        })
        .collect()
}

/// The keys whose value changed from `old` to `new` but that only take
/// effect at start-up.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (op, np) = (&old.proxy, &new.proxy);
    let (ol, nl) = (&old.rate_limits, &new.rate_limits);
    let (ok, nk) = (&old.keys, &new.keys);
    let tls_listen = |c: &Config| c.proxy.tls.as_ref().map(|t| t.listen);
    let checks: [(&'static str, bool); 27] = [
        ("proxy.listen", op.listen != np.listen),
        ("proxy.threads", op.threads != np.threads),
        (
            "proxy.upstream_keepalive_pool_size",
            op.upstream_keepalive_pool_size != np.upstream_keepalive_pool_size,
        ),
        (
            "proxy.shutdown_grace_seconds",
            op.shutdown_grace != np.shutdown_grace,
        ),
        // Added, removed or moved: the listener is built at start-up. Its
        // certificates are re-read on every reload.
        ("proxy.tls_listen", tls_listen(old) != tls_listen(new)),
        // Read by the proxy at start-up, not from the route table.
        (
            "proxy.max_body_bytes",
            op.max_body_bytes != np.max_body_bytes,
        ),
        (
            "proxy.security_headers",
            op.security_headers != np.security_headers,
        ),
        ("admin.listen", old.admin_listen != new.admin_listen),
        ("database.url", old.database.url != new.database.url),
        (
            "database.pool_size",
            old.database.pool_size != new.database.pool_size,
        ),
        (
            "database.connect_timeout_ms",
            old.database.connect_timeout != new.database.connect_timeout,
        ),
        ("redis", differs(&old.redis, &new.redis)),
        ("keys.pepper", ok.pepper.expose() != nk.pepper.expose()),
        ("keys.prefix", ok.prefix != nk.prefix),
        (
            "keys.last_used_flush_ms",
            ok.last_used_flush != nk.last_used_flush,
        ),
        (
            "keys.miss_lookups_per_second",
            ok.miss_lookups_per_second != nk.miss_lookups_per_second,
        ),
        (
            "keys.purge_expired_after_days",
            ok.purge_expired_after_days != nk.purge_expired_after_days,
        ),
        ("rate_limits.backend", ol.backend != nl.backend),
        (
            "rate_limits.on_backend_error",
            ol.on_backend_error != nl.on_backend_error,
        ),
        (
            "rate_limits.max_local_counters",
            ol.max_local_counters != nl.max_local_counters,
        ),
        ("rate_limits.ipv6_prefix", ol.ipv6_prefix != nl.ipv6_prefix),
        ("log.level", old.log_level != new.log_level),
        ("log.format", old.log_format != new.log_format),
        (
            "request_logs",
            differs(&old.request_logs, &new.request_logs),
        ),
        ("webhooks", differs(&old.webhooks, &new.webhooks)),
        (
            "housekeeping",
            differs(&old.housekeeping, &new.housekeeping),
        ),
        // Issuers own a JWKS refresher started with the server: swapping
        // them live is not worth its cost yet.
        (
            "jwt",
            differs(&old.jwt, &new.jwt) || jwt_secrets(old) != jwt_secrets(new),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(path, _)| path)
        .collect()
}

/// Whether a key of this name holds a secret: its whole value is redacted.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "pepper"
        || [
            "secret",
            "password",
            "passwd",
            "token",
            "credential",
            "private",
        ]
        .iter()
        .any(|s| k.contains(s))
}

/// Header names whose configured values (`request_headers.set`…) are
/// credentials for the upstream.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["token", "secret", "key", "auth", "password", "signature"]
        .iter()
        .any(|s| n.contains(s))
}

/// `doc` as JSON with every secret replaced by [`REDACTED`]: values of
/// secret-named keys (the pepper, `hs256_secret`, passwords, tokens),
/// credential headers in `set` tables, and the password of any URL or
/// connection string (`postgres://u:pw@h`, `password=pw`).
pub fn redact_document(doc: &toml::Table) -> Value {
    let json = serde_json::to_value(doc).unwrap_or(Value::Null);
    redact_value(json, None, false)
}

/// `key` is the name `v` is found under; `in_set` says the name is a
/// header's, in a `set` table.
fn redact_value(v: Value, key: Option<&str>, in_set: bool) -> Value {
    let whole = key.is_some_and(|k| is_secret_key(k) || (in_set && is_secret_header(k)));
    match v {
        Value::String(_) if whole => Value::String(REDACTED.into()),
        Value::String(s) => Value::String(redact_credentials(&s)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| redact_value(i, key, in_set))
                .collect(),
        ),
        Value::Object(map) => {
            // The entries of a `set` table are header names and values.
            let is_set = key == Some("set");
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = redact_value(v, Some(&k), is_set);
                        (k, v)
                    })
                    .collect(),
            )
        }
        other => other,
    }
}

/// `s` with the password of a URL's userinfo and every `password=…`
/// (libpq key/value and query forms) replaced.
fn redact_credentials(s: &str) -> String {
    let mut out = s.to_string();
    if let Ok(mut url) = url::Url::parse(&out) {
        if url.password().is_some() && url.set_password(Some(REDACTED)).is_ok() {
            // `set_password` percent-encodes `<>`; show the marker plainly.
            out = url.to_string().replace("%3Credacted%3E", REDACTED);
        }
    }
    let lower = out.to_ascii_lowercase();
    if !lower.contains("password=") && !lower.contains("passwd=") {
        return out;
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    loop {
        let l = rest.to_ascii_lowercase();
        let found = ["password=", "passwd="]
            .iter()
            .filter_map(|p| l.find(p).map(|i| (i, p.len())))
            .min();
        let Some((at, len)) = found else {
            result.push_str(rest);
            break;
        };
        result.push_str(&rest[..at + len]);
        let value = &rest[at + len..];
        // A quoted libpq value runs to its closing quote; a bare one to the
        // next separator.
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |i| i + 2)
        } else {
            value.find(['&', ' ', '#']).unwrap_or(value.len())
        };
        result.push_str(REDACTED);
        rest = &value[end..];
    }
    result
}

/// Reloads on SIGHUP. Pingora handles TERM, INT and QUIT itself and leaves
/// HUP alone; without this service a SIGHUP would end the process.
pub struct SighupReloads(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for SighupReloads {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload through the admin API");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // The outcome is logged by `reload` itself.
                    let _ = self.0.reload(Trigger::Signal).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
[keys]
pepper = "0123456789abcdef0123456789abcdef"
[[upstreams]]
name = "u"
targets = ["127.0.0.1:1"]
[[routes]]
name = "a"
path_prefix = "/a"
upstream = "u"
"#;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, Vec::new(), Need::Serve).expect("valid config")
    }

    #[test]
    fn live_changes_need_no_restart_and_listeners_do() {
        let old = cfg(BASE);
        let live = cfg(&format!(
            "{BASE}[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"u\"\nrate_limit = {{ per_minute = 5 }}\n"
        ));
        assert!(needs_restart(&old, &live).is_empty());
        let moved = cfg(&BASE.replace("127.0.0.1:8080", "127.0.0.1:8081").replace(
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
        ));
        assert_eq!(needs_restart(&old, &moved), ["proxy.listen", "keys.pepper"]);
    }

    #[test]
    fn redaction_hides_every_secret_and_keeps_the_rest() {
        let doc: toml::Table = r#"
[database]
url = "postgres://gw:dbpass1@db:5432/gw?sslmode=disable&password=dbpass2"
[redis]
url = "redis://:redispass@cache:6379"
[keys]
pepper = "pepper-value-0123456789abcdef0123"
prefix = "gw"
[[jwt.issuers]]
name = "idp"
hs256_secret = "hs-secret-value"
[[routes]]
name = "r"
request_headers = { set = { "x-upstream-token" = "Bearer upstream-credential-1", "x-tenant" = "acme" } }
[other]
dsn = "host=db user=gw password='quoted pass' dbname=gw"
"#
        .parse()
        .expect("toml");
        let shown = redact_document(&doc).to_string();
        for secret in [
            "dbpass1",
            "dbpass2",
            "redispass",
            "pepper-value",
            "hs-secret-value",
            "upstream-credential-1",
            "quoted pass",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        for kept in [
            "postgres://gw:<redacted>@db:5432/gw",
            "cache:6379",
            "acme",
            "\"prefix\":\"gw\"",
            "dbname=gw",
        ] {
            assert!(shown.contains(kept), "{kept} missing: {shown}");
        }
    }
}
