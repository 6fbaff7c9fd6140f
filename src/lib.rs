//! `gateway`: an API-key gateway built on Pingora.
//!
//! See `../shared/DESIGN.md` for the architecture. Layers point down: a
//! module uses only those listed below it.
//!
//! - `server` (wiring for `gateway serve`), `cli` (subcommands), `demo`
//!   (the demo upstream)
//! - `proxy` (the Pingora service), `admin` (health, metrics and the admin
//!   API)
//! - `reqlog` (request records: capture queue, writer, rollups, redaction,
//!   retention), `webhooks` (outbox dispatcher, signing, SSRF guard)
//! - `limits` (rate limits: policy, backends, headers)
//! - `route` (the one immutable route table, with upstreams and each
//!   route's limits, behind one `ArcSwap`)
//! - `identity` (credentials, the authenticator, client IP, request ids),
//!   `errors` (the error catalogue and JSON body both listeners answer with)
//! - `service` (key lifecycle, the snapshot listener, the `last_used`
//!   flush, miss lookups: I/O over `store`)
//! - `store` (Postgres), `telemetry`
//! - `keys` (format, hashing, scopes, the snapshot: no I/O)
//! - `config` (file schema, env overrides, one builder per section)
//! - `http_path` (request-path normalisation, shared by `proxy`, `admin`
//!   and the route prefixes `config` accepts)
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod errors;
pub mod http_path;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod proxy;
pub mod reload;
pub mod reqlog;
pub mod route;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod webhooks;

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
