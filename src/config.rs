//! Configuration: the TOML file schema, environment overrides, and the
//! validated [`Config`] the rest of the gateway runs on.
//!
//! Two layers, as in river's `config/internal.rs`: serde structs mirror the
//! file (`file::*`), and [`Config::from_toml`] turns them into typed,
//! validated values. Validation never stops at the first problem: every
//! error is collected with its key path (`routes[2].upstream`) so an operator
//! fixes a broken file in one pass. Nothing in here panics on any input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

use crate::keys::scope::Scope;

/// Default proxy listener.
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener: loopback only, the admin API is not for the internet.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default database URL when neither the file nor `DATABASE_URL` sets one.
pub const DEFAULT_DATABASE_URL: &str = "postgres://gateway@127.0.0.1:5432/gateway";
/// Default key prefix (DESIGN §3 "API keys").
pub const DEFAULT_KEY_PREFIX: &str = "gw_live_";
/// Default bound on one Redis rate-limit call.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 25;
/// Default prefix of the gateway's Redis keys.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "gateway:rl:";
/// Default bound on local rate-limit counters (about 100 MB at most).
pub const DEFAULT_MAX_LOCAL_COUNTERS: u64 = 1_000_000;
/// Default prefix length IPv6 clients are counted under: a /64, what one
/// subscriber usually gets.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Shortest pepper accepted: 32 bytes, the size of the BLAKE3 key it derives.
pub const MIN_PEPPER_LEN: usize = 32;
/// Default budget of Postgres lookups per second for keys missing from the
/// snapshot (DESIGN §3 "API keys" → "Visibility").
pub const DEFAULT_MISS_LOOKUPS_PER_SECOND: u32 = 200;
/// Highest `keys.miss_lookups_per_second` accepted.
pub const MAX_MISS_LOOKUPS_PER_SECOND: u64 = 100_000;

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

/// The serde schema of `gateway.toml`. Field docs live in `conf/gateway.toml`.
///
/// No `deny_unknown_fields` here on purpose: it stops at the first unknown
/// key, while `serde_ignored` (see [`section`]) reports all of them.
pub mod file {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    pub struct Proxy {
        pub listen: Option<String>,
        pub threads: Option<u64>,
        pub connect_timeout_ms: Option<u64>,
        pub read_timeout_ms: Option<u64>,
        pub write_timeout_ms: Option<u64>,
        pub upstream_down_seconds: Option<u64>,
        pub upstream_keepalive_pool_size: Option<u64>,
        pub shutdown_grace_seconds: Option<u64>,
        pub trusted_proxies: Option<Vec<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Admin {
        pub listen: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Database {
        pub url: Option<String>,
        pub pool_size: Option<u64>,
        pub connect_timeout_ms: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Redis {
        pub url: Option<String>,
        pub timeout_ms: Option<u64>,
        pub key_prefix: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Keys {
        pub pepper: Option<String>,
        pub prefix: Option<String>,
        pub last_used_flush_ms: Option<u64>,
        pub miss_lookups_per_second: Option<u64>,
    }

    #[derive(Debug, Default, Clone, Copy, Deserialize)]
    pub struct Limits {
        pub per_minute: Option<i64>,
        pub per_hour: Option<i64>,
        pub per_day: Option<i64>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct RateLimits {
        pub backend: Option<String>,
        pub on_backend_error: Option<String>,
        pub default: Option<Limits>,
        pub anonymous: Option<Limits>,
        pub auth_failures: Option<Limits>,
        pub exempt_ips: Option<Vec<String>>,
        pub max_local_counters: Option<u64>,
        pub ipv6_prefix: Option<i64>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Log {
        pub level: Option<String>,
        pub format: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Upstream {
        pub name: Option<String>,
        pub targets: Option<Vec<String>>,
        pub connect_timeout_ms: Option<u64>,
        pub read_timeout_ms: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Route {
        pub name: Option<String>,
        pub path_prefix: Option<String>,
        pub host: Option<String>,
        pub upstream: Option<String>,
        pub scopes: Option<Vec<String>>,
        pub method_scopes: Option<BTreeMap<String, Vec<String>>>,
        pub auth: Option<String>,
        pub rate_limit: Option<Limits>,
        pub global_rate_limit: Option<Limits>,
    }
}

/// Per-key or per-IP limits for one caller; `None` means "no such tier"
/// (for a key's overrides: "use the configured default").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

impl Limits {
    /// Each tier of `self`, or of `fallback` where `self` leaves it unset.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            per_minute: self.per_minute.or(fallback.per_minute),
            per_hour: self.per_hour.or(fallback.per_hour),
            per_day: self.per_day.or(fallback.per_day),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    Allow,
    Deny,
}

impl OnBackendError {
    /// The configuration value: `"allow"` or `"deny"`.
    pub fn name(self) -> &'static str {
        match self {
            OnBackendError::Allow => "allow",
            OnBackendError::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long a target that refused a connection is skipped.
    pub upstream_down_for: Duration,
    pub upstream_keepalive_pool_size: usize,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Secret mixed into every key hash. Never logged.
    pub pepper: Secret,
    pub prefix: String,
    pub last_used_flush: Duration,
    /// Postgres lookups per second, at most, of well-formed keys missing
    /// from the snapshot; 0 disables them (default 200).
    pub miss_lookups_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub backend: LimitBackend,
    pub on_backend_error: OnBackendError,
    /// Per-key tiers of keys without overrides.
    pub default: Limits,
    /// Per client IP on `auth = "none"` routes.
    pub anonymous: Limits,
    /// Brute-force guard: failed authentications per client IP.
    pub auth_failures: Limits,
    /// Clients in these networks bypass every limit.
    pub exempt_ips: Vec<IpNet>,
    /// Bound on the local backend's counters (and the guard's).
    pub max_local_counters: usize,
    /// IPv6 clients are counted per network of this prefix length (1-128,
    /// default [`DEFAULT_IPV6_PREFIX`]): one host usually holds a whole /64.
    pub ipv6_prefix: u8,
}

/// `[redis]`: the shared store of the `redis` rate-limit backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Bound on one rate-limit call, network included.
    pub timeout: Duration,
    /// Prepended to every key the gateway writes, so several deployments
    /// (or test runs) can share one Redis.
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: Arc<str>,
    pub targets: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: Arc<str>,
    pub path_prefix: String,
    /// Lower-cased host without port; `None` matches any host.
    pub host: Option<String>,
    pub upstream: Arc<str>,
    pub scopes: Vec<Scope>,
    /// Extra scopes required for one method (upper-case method name).
    pub method_scopes: BTreeMap<String, Vec<Scope>>,
    pub auth: AuthMode,
    /// Per caller (key, or client IP on `auth = "none"` routes), this route only.
    pub rate_limit: Option<Limits>,
    /// Across all callers of this route.
    pub global_rate_limit: Option<Limits>,
}

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

/// `GATEWAY_<SECTION>_<KEY>` overrides one scalar key; `DATABASE_URL` and
/// `REDIS_URL` set the URLs. A key the schema types as a string (URLs, the
/// pepper, prefixes, names) takes the value as it is, byte for byte; any
/// other key reads it as a TOML value (`8`, `true`, `["a","b"]`), or as a
/// string when it does not parse, for the schema to refuse by name.
fn apply_env(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    errs: &mut Errors,
) {
    // Longest section first so `RATE_LIMITS_` wins over a shorter match.
    let mut sections: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|s| *s != "upstreams" && *s != "routes")
        .collect();
    sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    // Explicit GATEWAY_ variables win over the conventional URL variables.
    vars.sort_by_key(|(k, _)| k.starts_with("GATEWAY_"));
    for (name, raw) in vars {
        let (section, key) = match name.as_str() {
            "DATABASE_URL" => ("database", "url".to_string()),
            "REDIS_URL" => ("redis", "url".to_string()),
            _ => {
                let Some(rest) = name.strip_prefix("GATEWAY_") else {
                    continue;
                };
                let lower = rest.to_ascii_lowercase();
                let found = sections.iter().find_map(|s| {
                    lower
                        .strip_prefix(s)
                        .and_then(|r| r.strip_prefix('_'))
                        .filter(|k| !k.is_empty())
                        .map(|k| (*s, k.to_string()))
                });
                match found {
                    Some(f) => f,
                    // GATEWAY_CONFIG and friends are not config keys.
                    None => continue,
                }
            }
        };
        let value = if takes_string(section, &key, &raw) {
            toml::Value::String(raw)
        } else {
            parse_env_value(&raw)
        };
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => errs.push(section, "must be a table"),
        }
    }
}

/// Whether the schema of `section` accepts `key = "<raw>"`: the file types
/// decide, so a secret that happens to read as a number, a boolean or a
/// date (`GATEWAY_KEYS_PEPPER=1234…`) is never turned into one. A key the
/// section does not have counts as a string; it is reported as unknown.
fn takes_string(section: &str, key: &str, raw: &str) -> bool {
    fn fits<T: serde::de::DeserializeOwned>(t: toml::Table) -> bool {
        t.try_into::<T>().is_ok()
    }
    let mut t = toml::Table::new();
    t.insert(key.to_string(), toml::Value::String(raw.to_string()));
    match section {
        "proxy" => fits::<file::Proxy>(t),
        "admin" => fits::<file::Admin>(t),
        "database" => fits::<file::Database>(t),
        "redis" => fits::<file::Redis>(t),
        "keys" => fits::<file::Keys>(t),
        "rate_limits" => fits::<file::RateLimits>(t),
        "log" => fits::<file::Log>(t),
        _ => false,
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Deserializes one value, recording unknown keys and type errors under `path`.
fn section<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    path: &str,
    errs: &mut Errors,
) -> Option<T> {
    let Some(value) = value else {
        return Some(T::default());
    };
    let mut unknown = Vec::new();
    let result: Result<T, _> = serde_ignored::deserialize(value, |p| unknown.push(p.to_string()));
    for key in unknown {
        errs.push(format!("{path}.{key}"), "unknown key");
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            errs.push(path, e.to_string().trim().to_string());
            None
        }
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

    let proxy = proxy.map(|p| build_proxy(p, errs));
    let admin_listen = admin.map(|a| {
        parse_addr(
            a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            "admin.listen",
            errs,
        )
    });
    let database = database.map(|d| build_database(d, errs));
    let redis = redis.and_then(|r| build_redis(r, redis_present, errs));
    let keys = keys.map(|k| build_keys(k, need, errs));
    let rate_limits = rate_limits.map(|r| build_rate_limits(r, redis.is_some(), errs));
    let (log_level, log_format) = log.map(|l| build_log(l, errs)).unzip();

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
    let mut prefixes = HashMap::new();
    for (i, r) in &routes {
        if let Some(first) = prefixes.insert((r.host.clone(), r.path_prefix.clone()), *i) {
            errs.push(
                format!("routes[{i}].path_prefix"),
                format!(
                    "duplicate route: {} {:?} is already routed by routes[{first}]",
                    r.host.as_deref().unwrap_or("*"),
                    r.path_prefix
                ),
            );
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
    })
}

fn array_of<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    path: &str,
    errs: &mut Errors,
) -> Vec<Option<T>> {
    match value {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| section(Some(v), &format!("{path}[{i}]"), errs))
            .collect(),
        Some(_) => {
            errs.push(path, format!("must be an array of tables ([[{path}]])"));
            Vec::new()
        }
    }
}

/// Reports every repeated `field` value among `(index in file, value)` pairs.
fn check_unique(
    names: impl Iterator<Item = (usize, String)>,
    list: &str,
    field: &str,
    errs: &mut Errors,
) {
    let mut seen = HashMap::new();
    for (i, n) in names {
        if let Some(first) = seen.insert(n.clone(), i) {
            errs.push(
                format!("{list}[{i}].{field}"),
                format!("duplicate {field} {n:?} (also {list}[{first}])"),
            );
        }
    }
}

fn parse_addr(s: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match SocketAddr::from_str(s) {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(path, format!("{s:?} is not an IP:port address"));
            None
        }
    }
}

fn check_url(s: &str, schemes: &[&str], path: &str, errs: &mut Errors) -> bool {
    match url::Url::parse(s) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => true,
        Ok(u) => {
            errs.push(
                path,
                format!(
                    "URL scheme must be one of {schemes:?} with a host (got {:?})",
                    u.scheme()
                ),
            );
            false
        }
        Err(e) => {
            errs.push(path, format!("not a valid URL: {e}"));
            false
        }
    }
}

/// Longest `proxy.upstream_down_seconds`: an hour; a target skipped for
/// longer is better removed from the config.
const MAX_UPSTREAM_DOWN_SECONDS: u64 = 3600;

fn positive_ms(v: Option<u64>, default_ms: u64, path: &str, errs: &mut Errors) -> Duration {
    match v {
        Some(0) => {
            errs.push(path, "must be greater than 0");
            Duration::from_millis(default_ms)
        }
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_millis(default_ms),
    }
}

fn parse_cidrs(list: Option<Vec<String>>, path: &str, errs: &mut Errors) -> Vec<IpNet> {
    list.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            // A bare address means a single host.
            let parsed =
                IpNet::from_str(s).or_else(|_| std::net::IpAddr::from_str(s).map(IpNet::from));
            match parsed {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.push(format!("{path}[{i}]"), format!("{s:?} is not a CIDR or IP"));
                    None
                }
            }
        })
        .collect()
}

fn build_proxy(p: file::Proxy, errs: &mut Errors) -> Option<ProxyConfig> {
    let listen = parse_addr(
        p.listen.as_deref().unwrap_or(DEFAULT_PROXY_LISTEN),
        "proxy.listen",
        errs,
    );
    let threads = match p.threads {
        Some(0) => {
            errs.push("proxy.threads", "must be at least 1");
            1
        }
        Some(n) if n > 1024 => {
            errs.push("proxy.threads", "must be at most 1024");
            1
        }
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let grace = match p.shutdown_grace_seconds {
        Some(s) if s > 3600 => {
            errs.push("proxy.shutdown_grace_seconds", "must be at most 3600");
            5
        }
        Some(s) => s,
        None => 5,
    };
    let pool = p.upstream_keepalive_pool_size.unwrap_or(128);
    if pool > 1_000_000 {
        errs.push(
            "proxy.upstream_keepalive_pool_size",
            "must be at most 1000000",
        );
    }
    let down_seconds = match p.upstream_down_seconds {
        Some(s) if s > MAX_UPSTREAM_DOWN_SECONDS => {
            errs.push(
                "proxy.upstream_down_seconds",
                format!("must be at most {MAX_UPSTREAM_DOWN_SECONDS}"),
            );
            10
        }
        Some(s) => s,
        None => 10,
    };
    Some(ProxyConfig {
        listen: listen?,
        threads,
        connect_timeout: positive_ms(
            p.connect_timeout_ms,
            2_000,
            "proxy.connect_timeout_ms",
            errs,
        ),
        read_timeout: positive_ms(p.read_timeout_ms, 30_000, "proxy.read_timeout_ms", errs),
        write_timeout: positive_ms(p.write_timeout_ms, 30_000, "proxy.write_timeout_ms", errs),
        upstream_down_for: Duration::from_secs(down_seconds),
        upstream_keepalive_pool_size: pool as usize,
        shutdown_grace: Duration::from_secs(grace),
        trusted_proxies: parse_cidrs(p.trusted_proxies, "proxy.trusted_proxies", errs),
    })
}

fn build_database(d: file::Database, errs: &mut Errors) -> Option<DatabaseConfig> {
    let url = d.url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let url_ok = match tokio_postgres::Config::from_str(&url) {
        Ok(_) => check_url(&url, &["postgres", "postgresql"], "database.url", errs),
        Err(e) => {
            errs.push("database.url", format!("not a valid Postgres URL: {e}"));
            false
        }
    };
    let pool_size = match d.pool_size {
        Some(0) => {
            errs.push("database.pool_size", "must be at least 1");
            1
        }
        Some(n) => n as usize,
        None => 8,
    };
    let connect_timeout = positive_ms(
        d.connect_timeout_ms,
        3_000,
        "database.connect_timeout_ms",
        errs,
    );
    url_ok.then_some(DatabaseConfig {
        url,
        pool_size,
        connect_timeout,
    })
}

fn build_keys(k: file::Keys, need: Need, errs: &mut Errors) -> Option<KeysConfig> {
    let prefix = k.prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 16
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !prefix_ok {
        errs.push(
            "keys.prefix",
            "must be 1-16 characters of A-Z, a-z, 0-9 and _",
        );
    }
    let pepper = match k.pepper {
        Some(p) if p.len() >= MIN_PEPPER_LEN => Some(Secret::new(p)),
        Some(_) => {
            errs.push(
                "keys.pepper",
                format!("must be at least {MIN_PEPPER_LEN} bytes (generate one with `openssl rand -hex 32`)"),
            );
            None
        }
        None if need == Need::Database => Some(Secret::new(String::new())),
        None => {
            errs.push(
                "keys.pepper",
                "missing: set [keys] pepper or GATEWAY_KEYS_PEPPER (at least 32 bytes of secret)",
            );
            None
        }
    };
    let flush = positive_ms(k.last_used_flush_ms, 5_000, "keys.last_used_flush_ms", errs);
    let miss_lookups_per_second = match k.miss_lookups_per_second {
        None => DEFAULT_MISS_LOOKUPS_PER_SECOND,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| u64::from(*n) <= MAX_MISS_LOOKUPS_PER_SECOND)
            .unwrap_or_else(|| {
                errs.push(
                    "keys.miss_lookups_per_second",
                    format!("must be 0 (off) to {MAX_MISS_LOOKUPS_PER_SECOND}"),
                );
                DEFAULT_MISS_LOOKUPS_PER_SECOND
            }),
    };
    Some(KeysConfig {
        pepper: pepper?,
        prefix,
        last_used_flush: flush,
        miss_lookups_per_second,
    })
}

fn build_limits(l: Option<file::Limits>, path: &str, errs: &mut Errors) -> Limits {
    let Some(l) = l else {
        return Limits::default();
    };
    let mut one = |v: Option<i64>, name: &str| -> Option<u32> {
        match v {
            Some(n) if n <= 0 => {
                errs.push(format!("{path}.{name}"), "must be a positive integer");
                None
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.push(format!("{path}.{name}"), "must be at most 4294967295");
                    None
                }
            },
            None => None,
        }
    };
    Limits {
        per_minute: one(l.per_minute, "per_minute"),
        per_hour: one(l.per_hour, "per_hour"),
        per_day: one(l.per_day, "per_day"),
    }
}

fn build_rate_limits(
    r: file::RateLimits,
    have_redis: bool,
    errs: &mut Errors,
) -> Option<RateLimitConfig> {
    let backend = match r.backend.as_deref() {
        None | Some("local") => LimitBackend::Local,
        Some("redis") => {
            if !have_redis {
                errs.push(
                    "rate_limits.backend",
                    "\"redis\" needs [redis] url (or REDIS_URL)",
                );
            }
            LimitBackend::Redis
        }
        Some(other) => {
            errs.push(
                "rate_limits.backend",
                format!("must be \"local\" or \"redis\", got {other:?}"),
            );
            LimitBackend::Local
        }
    };
    let on_backend_error = match r.on_backend_error.as_deref() {
        None | Some("allow") => OnBackendError::Allow,
        Some("deny") => OnBackendError::Deny,
        Some(other) => {
            errs.push(
                "rate_limits.on_backend_error",
                format!("must be \"allow\" or \"deny\", got {other:?}"),
            );
            OnBackendError::Allow
        }
    };
    let default = match r.default {
        Some(l) => build_limits(Some(l), "rate_limits.default", errs),
        None => Limits {
            per_minute: Some(600),
            per_hour: Some(20_000),
            per_day: Some(200_000),
        },
    };
    let anonymous = match r.anonymous {
        Some(l) => build_limits(Some(l), "rate_limits.anonymous", errs),
        None => Limits {
            per_minute: Some(60),
            ..Limits::default()
        },
    };
    let auth_failures = match r.auth_failures {
        Some(l) => build_limits(Some(l), "rate_limits.auth_failures", errs),
        None => Limits {
            per_minute: Some(20),
            ..Limits::default()
        },
    };
    let max_local_counters = match r.max_local_counters {
        None => DEFAULT_MAX_LOCAL_COUNTERS,
        Some(n) if (1_000..=100_000_000).contains(&n) => n,
        Some(_) => {
            errs.push(
                "rate_limits.max_local_counters",
                "must be between 1000 and 100000000",
            );
            DEFAULT_MAX_LOCAL_COUNTERS
        }
    };
    let ipv6_prefix = match r.ipv6_prefix {
        None => DEFAULT_IPV6_PREFIX,
        Some(n @ 1..=128) => n as u8,
        Some(n) => {
            errs.push(
                "rate_limits.ipv6_prefix",
                format!("must be a prefix length between 1 and 128, got {n}"),
            );
            DEFAULT_IPV6_PREFIX
        }
    };
    Some(RateLimitConfig {
        backend,
        on_backend_error,
        default,
        anonymous,
        auth_failures,
        exempt_ips: parse_cidrs(r.exempt_ips, "rate_limits.exempt_ips", errs),
        max_local_counters: max_local_counters as usize,
        ipv6_prefix,
    })
}

fn build_redis(r: file::Redis, present: bool, errs: &mut Errors) -> Option<RedisConfig> {
    let url = match (present, r.url) {
        (_, Some(url)) => url,
        (true, None) => {
            errs.push("redis.url", "missing (the [redis] section needs a url)");
            return None;
        }
        (false, None) => return None,
    };
    if url.starts_with("rediss:") {
        errs.push(
            "redis.url",
            "TLS to Redis (rediss://) is not supported yet; use redis:// on a private network",
        );
    } else {
        check_url(&url, &["redis"], "redis.url", errs);
    }
    let timeout = positive_ms(
        r.timeout_ms,
        DEFAULT_REDIS_TIMEOUT_MS,
        "redis.timeout_ms",
        errs,
    );
    if timeout > Duration::from_secs(10) {
        errs.push("redis.timeout_ms", "must be at most 10000");
    }
    let key_prefix = r
        .key_prefix
        .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string());
    if key_prefix.len() > 64
        || key_prefix.contains(['{', '}'])
        || key_prefix.contains(char::is_whitespace)
    {
        errs.push(
            "redis.key_prefix",
            "must be at most 64 characters, without braces or whitespace",
        );
    }
    Some(RedisConfig {
        url,
        timeout,
        key_prefix,
    })
}

fn build_log(l: file::Log, errs: &mut Errors) -> (Option<String>, Option<LogFormat>) {
    let level = l.level.unwrap_or_else(|| "info".to_string());
    let level = match tracing_subscriber::EnvFilter::try_new(&level) {
        Ok(_) => Some(level),
        Err(e) => {
            errs.push("log.level", format!("not a valid level or filter: {e}"));
            None
        }
    };
    let format = match l.format.as_deref() {
        None | Some("json") => Some(LogFormat::Json),
        Some("text") => Some(LogFormat::Text),
        Some(other) => {
            errs.push(
                "log.format",
                format!("must be \"json\" or \"text\", got {other:?}"),
            );
            None
        }
    };
    (level, format)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn build_upstream(
    u: file::Upstream,
    i: usize,
    proxy: Option<&ProxyConfig>,
    errs: &mut Errors,
) -> Option<UpstreamConfig> {
    let path = format!("upstreams[{i}]");
    let name = match u.name {
        Some(n) if is_name(&n) => Some(n),
        Some(n) => {
            errs.push(
                format!("{path}.name"),
                format!("{n:?} must be 1-64 characters of A-Z, a-z, 0-9, _ - ."),
            );
            None
        }
        None => {
            errs.push(format!("{path}.name"), "missing");
            None
        }
    };
    let targets = u.targets.unwrap_or_default();
    if targets.is_empty() {
        errs.push(format!("{path}.targets"), "needs at least one host:port");
    } else if targets.len() > crate::proxy::upstream::MAX_TARGETS {
        errs.push(
            format!("{path}.targets"),
            format!("at most {} targets", crate::proxy::upstream::MAX_TARGETS),
        );
    }
    let mut addrs = Vec::new();
    for (j, t) in targets.iter().enumerate() {
        // Hostnames resolve once, at start-up: the hot path never resolves.
        match t.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => addrs.push(a),
            Ok(None) | Err(_) => errs.push(
                format!("{path}.targets[{j}]"),
                format!("{t:?} is not a resolvable host:port"),
            ),
        }
    }
    let (dc, dr) = proxy.map_or((2_000, 30_000), |p| {
        (
            p.connect_timeout.as_millis() as u64,
            p.read_timeout.as_millis() as u64,
        )
    });
    let connect_timeout = positive_ms(
        u.connect_timeout_ms,
        dc,
        &format!("{path}.connect_timeout_ms"),
        errs,
    );
    let read_timeout = positive_ms(
        u.read_timeout_ms,
        dr,
        &format!("{path}.read_timeout_ms"),
        errs,
    );
    Some(UpstreamConfig {
        name: name?.into(),
        targets: addrs,
        connect_timeout,
        read_timeout,
    })
}

fn parse_scopes(list: &[String], path: &str, errs: &mut Errors) -> Vec<Scope> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| match Scope::parse(s) {
            Ok(scope) => Some(scope),
            Err(e) => {
                errs.push(format!("{path}[{i}]"), e.to_string());
                None
            }
        })
        .collect()
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

fn build_route(
    r: file::Route,
    i: usize,
    upstreams: &HashSet<String>,
    errs: &mut Errors,
) -> Option<RouteConfig> {
    let path = format!("routes[{i}]");
    let before = errs.0.len();
    let name = r.name.unwrap_or_else(|| format!("route{i}"));
    if !is_name(&name) {
        errs.push(
            format!("{path}.name"),
            format!("{name:?} must be 1-64 characters of A-Z, a-z, 0-9, _ - ."),
        );
    }
    let prefix = r.path_prefix.unwrap_or_default();
    if !prefix.starts_with('/') {
        errs.push(
            format!("{path}.path_prefix"),
            format!("{prefix:?} must start with '/'"),
        );
    } else if prefix.contains(['?', '#']) || prefix.chars().any(|c| c.is_ascii_control()) {
        errs.push(
            format!("{path}.path_prefix"),
            "must be a path without query, fragment or control characters",
        );
    } else {
        // Requests are routed on their normalised path, so a prefix in any
        // other spelling would never match.
        match crate::http_path::normalize(&prefix) {
            Ok(std::borrow::Cow::Borrowed(_)) => {}
            Ok(n) => errs.push(
                format!("{path}.path_prefix"),
                format!("{prefix:?} must be written normalised, as {n:?}"),
            ),
            Err(e) => errs.push(
                format!("{path}.path_prefix"),
                format!("{prefix:?} is a path the gateway refuses: {e}"),
            ),
        }
    }
    let host = r.host.map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !ok {
            errs.push(format!("{path}.host"), format!("{h:?} is not a hostname"));
        }
    }
    let upstream = match r.upstream {
        Some(u) if upstreams.contains(u.as_str()) => Some(u),
        Some(u) => {
            errs.push(
                format!("{path}.upstream"),
                format!("no [[upstreams]] entry named {u:?}"),
            );
            None
        }
        None => {
            errs.push(format!("{path}.upstream"), "missing");
            None
        }
    };
    let auth = match r.auth.as_deref() {
        None | Some("required") => AuthMode::Required,
        Some("none") => AuthMode::None,
        Some(other) => {
            errs.push(
                format!("{path}.auth"),
                format!("must be \"required\" or \"none\", got {other:?}"),
            );
            AuthMode::Required
        }
    };
    let scopes = parse_scopes(
        &r.scopes.unwrap_or_default(),
        &format!("{path}.scopes"),
        errs,
    );
    let mut method_scopes = BTreeMap::new();
    for (method, list) in r.method_scopes.unwrap_or_default() {
        let upper = method.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            errs.push(
                format!("{path}.method_scopes.{method}"),
                "not an HTTP method",
            );
            continue;
        }
        let s = parse_scopes(&list, &format!("{path}.method_scopes.{method}"), errs);
        method_scopes.insert(upper, s);
    }
    if auth == AuthMode::None && (!scopes.is_empty() || !method_scopes.is_empty()) {
        errs.push(
            format!("{path}.scopes"),
            "a route with auth = \"none\" cannot require scopes",
        );
    }
    let rate_limit = r
        .rate_limit
        .map(|l| build_limits(Some(l), &format!("{path}.rate_limit"), errs));
    let global_rate_limit = r
        .global_rate_limit
        .map(|l| build_limits(Some(l), &format!("{path}.global_rate_limit"), errs));
    if errs.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        name: name.into(),
        path_prefix: prefix,
        host,
        upstream: upstream?.into(),
        scopes,
        method_scopes,
        auth,
        rate_limit,
        global_rate_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEPPER: &str = "0123456789abcdef0123456789abcdef";

    fn minimal() -> String {
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

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

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
    fn miss_lookups_per_second_is_bounded_and_zero_disables() {
        let with = |v: &str| {
            minimal().replace(
                "[keys]\n",
                &format!("[keys]\nmiss_lookups_per_second = {v}\n"),
            )
        };
        let cfg = Config::from_toml(&with("0"), no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.keys.miss_lookups_per_second, 0);
        let errs = Config::from_toml(&with("100001"), no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "keys.miss_lookups_per_second");
        assert!(Config::from_toml(&with("-1"), no_env(), Need::Serve).is_err());
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
    fn a_huge_upstream_down_time_is_refused_by_name() {
        let text = format!(
            "{}\n[proxy]\nupstream_down_seconds = 9223372036854775807\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        let e = errs
            .0
            .iter()
            .find(|e| e.path == "proxy.upstream_down_seconds");
        assert!(
            e.is_some_and(|e| e.to_string().contains("at most 3600")),
            "{errs}"
        );
        let text = format!("{}\n[proxy]\nupstream_down_seconds = 3600\n", minimal());
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.proxy.upstream_down_for, Duration::from_secs(3600));
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
    fn env_overrides_win() {
        let env = vec![
            ("GATEWAY_PROXY_THREADS".to_string(), "3".to_string()),
            (
                "GATEWAY_RATE_LIMITS_BACKEND".to_string(),
                "local".to_string(),
            ),
            (
                "DATABASE_URL".to_string(),
                "postgres://a@127.0.0.1:1/b".to_string(),
            ),
            (
                "GATEWAY_DATABASE_URL".to_string(),
                "postgres://c@127.0.0.1:1/d".to_string(),
            ),
            ("GATEWAY_CONFIG".to_string(), "ignored".to_string()),
        ];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.proxy.threads, 3);
        assert_eq!(cfg.database.url, "postgres://c@127.0.0.1:1/d");
    }

    #[test]
    fn env_values_keep_the_type_the_schema_gives_the_key() {
        // Each of these parses as TOML (a float, an integer, a boolean, a
        // date-time, a quoted string) but the keys they set are strings.
        let pepper = "3.14159265358979323846264338327950288";
        let env = vec![
            ("GATEWAY_KEYS_PEPPER".to_string(), pepper.to_string()),
            ("GATEWAY_KEYS_PREFIX".to_string(), "1234".to_string()),
            (
                "REDIS_URL".to_string(),
                "redis://127.0.0.1:6379".to_string(),
            ),
            ("GATEWAY_REDIS_KEY_PREFIX".to_string(), "true".to_string()),
            ("GATEWAY_PROXY_THREADS".to_string(), "3".to_string()),
        ];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve);
        let cfg = match cfg {
            Ok(cfg) => cfg,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cfg.keys.pepper.expose(), pepper);
        assert_eq!(cfg.keys.prefix, "1234");
        assert_eq!(
            cfg.redis.as_ref().map(|r| r.key_prefix.as_str()),
            Some("true")
        );
        assert_eq!(cfg.proxy.threads, 3, "numbers stay numbers");

        // A date-time-looking pepper stays the same bytes.
        let pepper = "1979-05-27T07:32:00Z-and-then-some-more-secret";
        let env = vec![("GATEWAY_KEYS_PEPPER".to_string(), pepper.to_string())];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.keys.pepper.expose(), pepper);
        // A quoted value is the raw string, quotes included: env values are
        // never unquoted, so a secret is never changed on the way in.
        let quoted = "\"a-pepper-in-quotes-a-pepper-in-quotes\"";
        let env = vec![("GATEWAY_KEYS_PEPPER".to_string(), quoted.to_string())];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.keys.pepper.expose(), quoted);
        // A non-string key still takes TOML, and a bad one is an error.
        let env = vec![(
            "GATEWAY_RATE_LIMITS_EXEMPT_IPS".to_string(),
            "[\"10.0.0.0/8\"]".to_string(),
        )];
        assert!(Config::from_toml(&minimal(), env, Need::Serve).is_ok());
        let env = vec![("GATEWAY_PROXY_THREADS".to_string(), "many".to_string())];
        assert!(Config::from_toml(&minimal(), env, Need::Serve).is_err());
    }

    #[test]
    fn every_env_section_is_typed_by_its_schema() {
        // A section missing from `takes_string` would fall back to guessing
        // types from the value; an unknown key of a known section is a string.
        for section in SECTIONS
            .iter()
            .filter(|s| !["upstreams", "routes"].contains(s))
        {
            assert!(takes_string(section, "no_such_key", "1"), "{section}");
        }
    }

    #[test]
    fn env_override_of_unknown_key_is_an_error() {
        let env = vec![("GATEWAY_PROXY_COLOUR".to_string(), "red".to_string())];
        let errs = Config::from_toml(&minimal(), env, Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "proxy.colour");
    }

    #[test]
    fn missing_pepper_is_fine_for_migrate_only() {
        let text = "[database]\nurl = \"postgres://a@127.0.0.1/b\"\n";
        assert!(Config::from_toml(text, no_env(), Need::Database).is_ok());
        let errs = Config::from_toml(text, no_env(), Need::Keys).unwrap_err();
        assert_eq!(errs.0[0].path, "keys.pepper");
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

    #[test]
    fn redis_backend_needs_redis_url() {
        let text = format!("{}\n[rate_limits]\nbackend = \"redis\"\n", minimal());
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "rate_limits.backend");
    }

    #[test]
    fn auth_none_with_scopes_is_rejected() {
        let text = format!(
            "{}\n[[routes]]\nname = \"pub\"\npath_prefix = \"/pub\"\nupstream = \"echo\"\nauth = \"none\"\nscopes = [\"read:x\"]\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "routes[1].scopes");
    }

    #[test]
    fn pepper_is_not_printed_by_debug() {
        let cfg = Config::from_toml(&minimal(), no_env(), Need::Serve).expect("valid");
        assert!(!format!("{cfg:?}").contains(PEPPER));
    }
}
