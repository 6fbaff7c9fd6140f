//! `gateway`: an API-key gateway built on Pingora.
//!
//! See `../shared/DESIGN.md` for the architecture. Module map:
//! `config` (file schema and validation), `keys` (format, hashing, snapshot,
//! listener), `proxy` (the Pingora service), `admin` (health, metrics and the
//! admin API), `store` (Postgres), `telemetry`, `cli` (subcommands), `demo`
//! (the demo upstream), `server` (wiring for `gateway serve`), `http_path`
//! (request-path normalisation, shared by `proxy` and `admin`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http_path;
pub mod keys;
pub mod limits;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
