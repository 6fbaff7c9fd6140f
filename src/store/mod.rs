//! Postgres: connections, the pool, migrations and repositories.
//!
//! Postgres is the source of truth. The proxy never waits on it: the pool
//! serves the CLI, `/health`, batched `last_used_at` flushes and (later) the
//! admin API; the key listener has a dedicated connection of its own.

pub mod audit;
pub mod keys;
pub mod migrations;

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

/// tokio-postgres settings for `cfg`, with timeouts and TCP keepalives so a
/// dead server is noticed instead of hanging.
pub fn pg_config(cfg: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let mut pg = tokio_postgres::Config::from_str(&cfg.url)?;
    if pg.get_application_name().is_none() {
        pg.application_name("gateway");
    }
    pg.connect_timeout(cfg.connect_timeout);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(10));
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
    let pg = pg_config(cfg)?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
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
