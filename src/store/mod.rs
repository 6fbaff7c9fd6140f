//! Postgres: connections, the pool, migrations and repositories.
//!
//! Postgres is the source of truth. The proxy never waits on it: the pool
//! serves the CLI, `/health`, batched `last_used_at` flushes and (later) the
//! admin API; the key listener has a dedicated connection of its own.

pub mod audit;
pub mod expiry;
pub mod keys;
pub mod migrations;
pub mod request_log_writer;
pub mod request_logs;
pub mod request_stats;
pub mod roles;
pub mod webhook_admin;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use tokio_postgres::NoTls;

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

impl DbError {
    /// A message safe to print: Postgres errors carry their server detail,
    /// never parameters.
    pub fn describe(&self) -> String {
        match self {
            DbError::Postgres(e) => match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// A nullable jsonb column. A value serde_json cannot read back (written by
/// hand in SQL, such as a number beyond the range of a double) reads as
/// JSON `null` with a warning rather than failing the request.
pub(crate) fn json_column(r: &tokio_postgres::Row, idx: usize) -> Option<serde_json::Value> {
    r.try_get(idx).unwrap_or_else(|e| {
        tracing::warn!(column = idx, error = %e, "unreadable jsonb value shown as null");
        Some(serde_json::Value::Null)
    })
}

/// TCP keepalive: first probe after this much silence...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// ...then one probe this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and the kernel drops the connection after this many go unanswered
/// (so a silent dead peer is noticed after about 25 s).
const KEEPALIVE_RETRIES: u32 = 3;
/// Data the peer has not acknowledged for this long drops the connection
/// (Linux `TCP_USER_TIMEOUT`; keepalives cannot fire while data is unacked).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(25);
/// Server-side bound on each statement of a pooled connection, so a lock
/// wait cannot hold a pool slot for ever. The admin API bounds its own
/// wait on the client side too (a dead link never answers at all).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// tokio-postgres's default keepalive idle time, i.e. the URL did not set one.
const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// tokio-postgres settings for `cfg`, with timeouts and TCP keepalives so a
/// dead server is noticed instead of hanging. Settings given in the URL
/// (`keepalives_idle`, `keepalives_interval`, `keepalives_retries`,
/// `tcp_user_timeout`) win.
pub fn pg_config(cfg: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let mut pg = tokio_postgres::Config::from_str(&cfg.url)?;
    if pg.get_application_name().is_none() {
        pg.application_name("gateway");
    }
    pg.connect_timeout(cfg.connect_timeout);
    pg.keepalives(true);
    if pg.get_keepalives_idle() == DEFAULT_KEEPALIVE_IDLE {
        pg.keepalives_idle(KEEPALIVE_IDLE);
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(KEEPALIVE_RETRIES);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    Ok(pg)
}

/// One dedicated connection, driven on its own task.
pub async fn connect(cfg: &DatabaseConfig) -> Result<tokio_postgres::Client, DbError> {
    let pg = pg_config(cfg)?;
    let (client, connection) = tokio::time::timeout(cfg.connect_timeout, pg.connect(NoTls))
        .await
        .map_err(|_| DbError::Timeout(cfg.connect_timeout))??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// The shared pool. Creating it does not connect; connections open on use.
pub fn pool(cfg: &DatabaseConfig) -> Result<Pool, DbError> {
    let mut pg = pg_config(cfg)?;
    let statement_timeout = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
    let options = match pg.get_options() {
        Some(o) if o.contains("statement_timeout") => o.to_string(),
        Some(o) => format!("{o} {statement_timeout}"),
        None => statement_timeout,
    };
    pg.options(options);
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            // One empty query per checkout, bounded by the recycle timeout:
            // a connection whose link died is replaced rather than handed
            // out to hang (the pool serves no hot path).
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(mgr)
        .max_size(cfg.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(cfg.connect_timeout),
            create: Some(cfg.connect_timeout),
            recycle: Some(cfg.connect_timeout),
        })
        .build()
        .map_err(|e| DbError::Other(format!("cannot build database pool: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> DatabaseConfig {
        DatabaseConfig {
            url: url.into(),
            pool_size: 1,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn links_get_full_keepalive_settings() {
        let pg = pg_config(&cfg("postgres://u@127.0.0.1/d")).expect("config");
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(pg.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(pg.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }

    #[test]
    fn keepalive_settings_in_the_url_win() {
        let url = "postgres://u@127.0.0.1/d?keepalives_idle=30&keepalives_interval=7\
                   &keepalives_retries=9&tcp_user_timeout=40";
        let pg = pg_config(&cfg(url)).expect("config");
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(7)));
        assert_eq!(pg.get_keepalives_retries(), Some(9));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(40)));
    }
}
