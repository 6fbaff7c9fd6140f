//! The serde schema of `gateway.toml`: one struct per section, every field
//! optional so that defaults and errors are decided by the section builders.
//! Field docs live in `conf/gateway.toml`.
//!
//! No `deny_unknown_fields` here on purpose: it stops at the first unknown
//! key, while `serde_ignored` (see `validate::section`) reports all
//! of them, each with its path.
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
    pub tls_listen: Option<String>,
    pub certificates: Option<Vec<Certificate>>,
    pub max_body_bytes: Option<u64>,
    pub security_headers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Certificate {
    pub cert: Option<String>,
    pub key: Option<String>,
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
    pub cluster: Option<bool>,
    pub connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Keys {
    pub pepper: Option<String>,
    pub prefix: Option<String>,
    pub last_used_flush_ms: Option<u64>,
    pub miss_lookups_per_second: Option<u64>,
    pub purge_expired_after_days: Option<u64>,
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
    pub headers: Option<String>,
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
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub ca_file: Option<String>,
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
    pub log_bodies: Option<bool>,
    pub hosts: Option<Vec<String>>,
    pub strip_prefix: Option<bool>,
    pub rewrite_prefix: Option<String>,
    pub match_headers: Option<BTreeMap<String, String>>,
    pub cors: Option<Cors>,
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    pub compress: Option<bool>,
    pub allow_ips: Option<Vec<String>>,
    pub deny_ips: Option<Vec<String>>,
    pub max_body_bytes: Option<u64>,
    pub deprecation: Option<Deprecation>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Cors {
    pub allow_origins: Option<Vec<String>>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    pub max_age_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct HeaderRules {
    pub set: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Deprecation {
    pub deprecated_at: Option<String>,
    pub sunset_at: Option<String>,
    pub link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RequestLogs {
    pub enabled: Option<bool>,
    pub sample_rate: Option<f64>,
    pub retention_days: Option<u64>,
    pub rollup_retention_days: Option<u64>,
    pub queue_capacity: Option<u64>,
    pub flush_interval_ms: Option<u64>,
    pub redact_query_params: Option<Vec<String>>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Webhooks {
    pub enabled: Option<bool>,
    pub allow_private_targets: Option<bool>,
    pub timeout_ms: Option<u64>,
    pub retry_schedule_ms: Option<Vec<u64>>,
    pub disable_after_consecutive_failures: Option<u64>,
    pub expiring_notice_days: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub max_in_flight_per_endpoint: Option<u64>,
    pub poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Jwt {
    pub issuers: Option<Vec<JwtIssuer>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JwtIssuer {
    pub name: Option<String>,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    pub hs256_secret: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub scopes_claim: Option<String>,
    pub leeway_seconds: Option<u64>,
    pub rate_limits: Option<Limits>,
    pub forward_token: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Housekeeping {
    pub interval_ms: Option<u64>,
}
