//! `[database]`: the Postgres URL, pool size and connect timeout.

use std::str::FromStr;
use std::time::Duration;

use super::file;
use super::validate::{check_url, positive_ms};
use super::Errors;

/// Default database URL when neither the file nor `DATABASE_URL` sets one.
pub const DEFAULT_DATABASE_URL: &str = "postgres://gateway@127.0.0.1:5432/gateway";

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

pub(super) fn build_database(d: file::Database, errs: &mut Errors) -> Option<DatabaseConfig> {
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
