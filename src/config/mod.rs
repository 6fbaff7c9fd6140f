//! Configuration: the TOML file schema, environment overrides, and the
//! validated [`Config`] the rest of the gateway runs on.
//!
//! Two layers, as in river's `config/internal.rs`: serde structs mirror the
//! file ([`mod@file`]), and [`Config::from_toml`] turns them into typed,
//! validated values. Validation never stops at the first problem: every
//! error is collected with its key path (`routes[2].upstream`) so an operator
//! fixes a broken file in one pass. Nothing in here panics on any input.
//!
//! Layout: [`mod@file`] (serde schema), `env` (`GATEWAY_*` overrides), `validate`
//! (helpers every section uses), and one builder per section: `proxy`,
//! `admin`, `database`, `keys`, `rate_limits`, `redis`, `log`, `upstreams`,
//! `routes`. This module assembles them and checks what spans sections
//! (unique names, duplicate routes, overlapping listeners). Everything the
//! rest of the gateway uses is re-exported here, so callers write
//! `crate::config::Limits`, never a submodule path. `config` depends on no
//! other module of the gateway but `keys::scope` and `http_path`.

mod admin;
mod cors;
mod database;
mod edge;
mod env;
pub mod file;
mod jwt;
mod keys;
mod log;
mod proxy;
mod rate_limits;
mod redis;
mod request_logs;
mod routes;
mod tls;
mod upstreams;
mod validate;
mod webhooks;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

pub use self::admin::DEFAULT_ADMIN_LISTEN;
pub use self::cors::{AllowOrigins, CorsConfig, DeprecationConfig};
pub use self::database::{DatabaseConfig, DEFAULT_DATABASE_URL};
pub use self::edge::{HeaderRules, RouteOptions, BUFFERED_BODY_LIMIT};
pub use self::jwt::{IssuerConfig, JwtConfig, KeySource};
pub use self::keys::{
    KeysConfig, DEFAULT_KEY_PREFIX, DEFAULT_MISS_LOOKUPS_PER_SECOND, MAX_MISS_LOOKUPS_PER_SECOND,
    MIN_PEPPER_LEN,
};
pub use self::log::LogFormat;
pub use self::proxy::{ProxyConfig, DEFAULT_PROXY_LISTEN};
pub use self::rate_limits::{
    HeaderStyle, LimitBackend, Limits, OnBackendError, RateLimitConfig, DEFAULT_IPV6_PREFIX,
    DEFAULT_MAX_LOCAL_COUNTERS,
};
pub use self::redis::{RedisConfig, DEFAULT_REDIS_KEY_PREFIX, DEFAULT_REDIS_TIMEOUT_MS};
pub use self::request_logs::{
    RequestLogConfig, DEFAULT_REDACT_QUERY_PARAMS, MAX_LOGGED_BODY_BYTES, MAX_QUEUE_CAPACITY,
};
pub use self::routes::{AuthMode, RouteConfig};
pub use self::tls::{
    load_certificates, CaCerts, CertificateConfig, LoadedCertificate, TlsListenerConfig,
    UpstreamTls,
};
pub use self::upstreams::{UpstreamConfig, MAX_TARGETS};
pub use self::webhooks::{HousekeepingConfig, WebhookConfig, DEFAULT_RETRY_SCHEDULE_MS};

use self::admin::build_admin;
use self::database::build_database;
use self::env::apply_env;
use self::jwt::build_jwt;
use self::keys::build_keys;
use self::log::build_log;
use self::proxy::build_proxy;
use self::rate_limits::build_rate_limits;
use self::redis::build_redis;
use self::request_logs::build_request_logs;
use self::routes::build_route;
use self::upstreams::build_upstream;
use self::validate::{array_of, check_unique, section};
use self::webhooks::{build_housekeeping, build_webhooks};

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `routes[1].upstream` or `GATEWAY_PROXY_THREADS`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration has {} error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A string that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin_listen: SocketAddr,
    pub database: DatabaseConfig,
    pub redis: Option<RedisConfig>,
    pub keys: KeysConfig,
    pub rate_limits: RateLimitConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub request_logs: RequestLogConfig,
    pub webhooks: WebhookConfig,
    pub housekeeping: HousekeepingConfig,
    pub jwt: JwtConfig,
}

/// Which parts of the configuration a command needs. `gateway migrate` must
/// not demand a pepper, `gateway keys` must not demand routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Everything `serve` needs.
    Serve,
    /// Database and keys (pepper): `keys` subcommands.
    Keys,
    /// Database only: `migrate`.
    Database,
}

const SECTIONS: &[&str] = &[
    "proxy",
    "admin",
    "database",
    "redis",
    "keys",
    "rate_limits",
    "log",
    "upstreams",
    "routes",
    "request_logs",
    "webhooks",
    "housekeeping",
    "jwt",
];

impl Config {
    /// Reads `path`, applies `env` overrides and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        need: Need,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read configuration file: {e}"),
            }])
        })?;
        Self::from_toml(&text, env, need)
    }

    /// Parses TOML text, applies `env` overrides and validates.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        need: Need,
    ) -> Result<Config, ConfigErrors> {
        let mut errs = Errors::default();
        let mut doc: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                // A syntax error hides everything after it; report it alone.
                let msg = e.to_string().replace('\n', " ");
                return Err(ConfigErrors(vec![ConfigError {
                    path: "<file>".into(),
                    message: msg.trim().to_string(),
                }]));
            }
        };
        apply_env(&mut doc, env, &mut errs);
        let cfg = build(doc, need, &mut errs);
        match (cfg, errs.0.is_empty()) {
            (Some(cfg), true) => Ok(cfg),
            _ => Err(ConfigErrors(errs.0)),
        }
    }

    /// The TOML document [`Config::from_toml`] validates: `text` with the
    /// `env` overrides applied; `None` when `text` does not parse. What
    /// `GET /api/v1/config` shows (redacted) of the running configuration.
    pub fn effective_document(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Option<toml::Table> {
        let mut doc: toml::Table = text.parse().ok()?;
        apply_env(&mut doc, env, &mut Errors::default());
        Some(doc)
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn build(mut doc: toml::Table, need: Need, errs: &mut Errors) -> Option<Config> {
    for key in doc.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            errs.push(key.clone(), "unknown section");
        }
    }
    let proxy: Option<file::Proxy> = section(doc.remove("proxy"), "proxy", errs);
    let admin: Option<file::Admin> = section(doc.remove("admin"), "admin", errs);
    let database: Option<file::Database> = section(doc.remove("database"), "database", errs);
    let redis_present = doc.contains_key("redis");
    let redis: Option<file::Redis> = section(doc.remove("redis"), "redis", errs);
    let keys: Option<file::Keys> = section(doc.remove("keys"), "keys", errs);
    let rate_limits: Option<file::RateLimits> =
        section(doc.remove("rate_limits"), "rate_limits", errs);
    let log: Option<file::Log> = section(doc.remove("log"), "log", errs);
    let upstreams = array_of::<file::Upstream>(doc.remove("upstreams"), "upstreams", errs);
    let routes = array_of::<file::Route>(doc.remove("routes"), "routes", errs);
    let request_logs: Option<file::RequestLogs> =
        section(doc.remove("request_logs"), "request_logs", errs);
    let webhooks: Option<file::Webhooks> = section(doc.remove("webhooks"), "webhooks", errs);
    let housekeeping: Option<file::Housekeeping> =
        section(doc.remove("housekeeping"), "housekeeping", errs);
    let jwt: Option<file::Jwt> = section(doc.remove("jwt"), "jwt", errs);

    let proxy = proxy.map(|p| build_proxy(p, errs));
    let admin_listen = admin.map(|a| build_admin(a, errs));
    let database = database.map(|d| build_database(d, errs));
    let redis = redis.and_then(|r| build_redis(r, redis_present, errs));
    let keys = keys.map(|k| build_keys(k, need, errs));
    let rate_limits = rate_limits.map(|r| build_rate_limits(r, redis.is_some(), errs));
    let (log_level, log_format) = log.map(|l| build_log(l, errs)).unzip();
    let request_logs = request_logs.map(|r| build_request_logs(r, errs));
    let webhooks = webhooks.map(|w| build_webhooks(w, errs));
    let housekeeping = housekeeping.map(|h| build_housekeeping(h, errs));
    let jwt = jwt.map(|j| build_jwt(j, errs));

    // Routes are checked against every upstream the file declares, so an
    // upstream with a bad target does not also make its routes "dangling".
    let declared: HashSet<String> = upstreams
        .iter()
        .flatten()
        .filter_map(|u| u.name.clone())
        .collect();
    // Entries keep their index in the file so errors point at the right one
    // even when an earlier entry was dropped for its own errors.
    let upstreams: Vec<(usize, UpstreamConfig)> = upstreams
        .into_iter()
        .enumerate()
        .filter_map(|(i, u)| {
            u.and_then(|u| build_upstream(u, i, proxy.as_ref().and_then(|p| p.as_ref()), errs))
                .map(|u| (i, u))
        })
        .collect();
    check_unique(
        upstreams.iter().map(|(i, u)| (*i, u.name.to_string())),
        "upstreams",
        "name",
        errs,
    );
    let upstreams: Vec<UpstreamConfig> = upstreams.into_iter().map(|(_, u)| u).collect();
    let routes: Vec<(usize, RouteConfig)> = routes
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.and_then(|r| build_route(r, i, &declared, errs))
                .map(|r| (i, r))
        })
        .collect();
    check_unique(
        routes.iter().map(|(i, r)| (*i, r.name.to_string())),
        "routes",
        "name",
        errs,
    );
    // Two routes are the same when a request could match both equally:
    // one host (or both host-less), one prefix, the same header conditions.
    let mut prefixes = HashMap::new();
    for (i, r) in &routes {
        let conditions: Vec<(String, Vec<u8>)> = r
            .options
            .match_headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let hosts: Vec<Option<&String>> = if r.hosts.is_empty() {
            vec![None]
        } else {
            r.hosts.iter().map(Some).collect()
        };
        for host in hosts {
            let key = (host.cloned(), r.path_prefix.clone(), conditions.clone());
            if let Some(first) = prefixes.insert(key, *i) {
                errs.push(
                    format!("routes[{i}].path_prefix"),
                    format!(
                        "duplicate route: {} {:?}{} is already routed by routes[{first}]",
                        host.map_or("*", |h| h.as_str()),
                        r.path_prefix,
                        if conditions.is_empty() {
                            ""
                        } else {
                            " with the same match_headers"
                        }
                    ),
                );
            }
        }
    }
    // A jwt-only route with no issuer to verify against would refuse
    // everyone: a mistake, not a policy.
    if jwt.as_ref().is_some_and(|j| !j.is_enabled()) {
        for (i, r) in &routes {
            if r.auth == AuthMode::Jwt {
                errs.push(
                    format!("routes[{i}].auth"),
                    "auth = \"jwt\" needs at least one [[jwt.issuers]] entry",
                );
            }
        }
    }
    let routes: Vec<RouteConfig> = routes.into_iter().map(|(_, r)| r).collect();
    if need == Need::Serve && routes.is_empty() && errs.0.is_empty() {
        errs.push("routes", "at least one [[routes]] entry is needed to serve");
    }
    if let (Some(Some(p)), Some(Some(a))) = (&proxy, &admin_listen) {
        let overlap = p.listen.port() == a.port()
            && (p.listen.ip() == a.ip()
                || p.listen.ip().is_unspecified()
                || a.ip().is_unspecified());
        if overlap {
            errs.push(
                "admin.listen",
                format!("{a} overlaps proxy.listen ({})", p.listen),
            );
        }
        if let Some(t) = p.tls.as_ref().filter(|t| tls::overlaps(t.listen, *a)) {
            errs.push(
                "admin.listen",
                format!("{a} overlaps proxy.tls_listen ({})", t.listen),
            );
        }
    }

    Some(Config {
        proxy: proxy??,
        admin_listen: admin_listen??,
        database: database??,
        redis,
        keys: keys??,
        rate_limits: rate_limits??,
        log_level: log_level??,
        log_format: log_format??,
        upstreams,
        routes,
        request_logs: request_logs?,
        webhooks: webhooks?,
        housekeeping: housekeeping?,
        jwt: jwt?,
    })
}

#[cfg(test)]
mod test_support {
    pub const PEPPER: &str = "0123456789abcdef0123456789abcdef";

    pub fn minimal() -> String {
        format!(
            r#"
[keys]
pepper = "{PEPPER}"
[[upstreams]]
name = "echo"
targets = ["127.0.0.1:3001"]
[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "echo"
scopes = ["read:echo"]
"#
        )
    }

    pub fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::{minimal, no_env};
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::from_toml(&minimal(), no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.proxy.listen.to_string(), DEFAULT_PROXY_LISTEN);
        assert_eq!(cfg.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(cfg.proxy.shutdown_grace, Duration::from_secs(5));
        assert_eq!(cfg.keys.prefix, "gw_live_");
        assert_eq!(cfg.keys.miss_lookups_per_second, 200);
        assert_eq!(cfg.routes[0].auth, AuthMode::Required);
        assert_eq!(cfg.rate_limits.default.per_minute, Some(600));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
bogus_section = 1
[proxy]
listen = "nope"
colour = "blue"
[database]
url = "mysql://x"
[keys]
pepper = "short"
[rate_limits]
exempt_ips = ["10.0.0.0/8", "not-a-cidr"]
[[upstreams]]
name = "a"
targets = ["127.0.0.1:1"]
[[routes]]
name = "r1"
path_prefix = "/x"
upstream = "missing"
scopes = ["Bad Scope"]
[[routes]]
name = "r2"
path_prefix = "/y"
upstream = "a"
[[routes]]
name = "r3"
path_prefix = "/y"
upstream = "a"
"#;
        let errs = Config::from_toml(text, no_env(), Need::Serve).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "bogus_section",
            "proxy.colour",
            "database.url",
            "keys.pepper",
            "rate_limits.exempt_ips[1]",
            "routes[0].upstream",
            "routes[0].scopes[0]",
            // Index in the file, though routes[0] was dropped for its errors.
            "routes[2].path_prefix",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn unknown_key_inside_known_section_is_an_error_when_types_are_fine() {
        let text = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:9999\"\nport = 1\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "admin.port");
    }

    #[test]
    fn wrong_type_is_reported() {
        let text = format!("{}\n[proxy]\nthreads = \"many\"\n", minimal());
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "proxy");
        assert!(errs.0[0].message.contains("invalid type"), "{errs}");
    }

    #[test]
    fn syntax_error_does_not_panic() {
        for text in [
            "[proxy",
            "a = ",
            "[[routes]]\nname = 1\n[[routes]]\nx=",
            "\u{0}",
        ] {
            assert!(Config::from_toml(text, no_env(), Need::Serve).is_err());
        }
    }

    #[test]
    fn overlapping_listeners_are_rejected() {
        let text = format!(
            "{}\n[proxy]\nlisten = \"0.0.0.0:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "admin.listen");
    }

    #[test]
    fn a_route_to_a_broken_upstream_is_not_also_dangling() {
        let text = format!(
            "{}\n[[upstreams]]\nname = \"bad\"\ntargets = [\"nope\"]\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"bad\"\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["upstreams[1].targets[0]"]);
    }
}
