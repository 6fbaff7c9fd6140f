//! Versioned migrations from `sql/`, embedded in the binary.
//!
//! `schema_migrations` records each applied version with the SHA-256 of its
//! up script. A changed script is refused rather than silently skipped, and
//! a session-level advisory lock serialises instances that start together.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::DbError;

/// One migration: `sql/NNNN_name.up.sql` and its `.down.sql`.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// `migration!(1, "0001", "api_keys")` embeds `sql/0001_api_keys.{up,down}.sql`.
macro_rules! migration {
    ($version:literal, $file_version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            up: include_str!(concat!("../../sql/", $file_version, "_", $name, ".up.sql")),
            down: include_str!(concat!(
                "../../sql/",
                $file_version,
                "_",
                $name,
                ".down.sql"
            )),
        }
    };
}

/// Every migration, in order. A unit test checks this list against `sql/`.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001", "api_keys"),
    migration!(2, "0002", "audit_log"),
    migration!(3, "0003", "key_version"),
    migration!(4, "0004", "request_logs"),
    migration!(5, "0005", "webhooks"),
    migration!(6, "0006", "roles"),
];

/// Arbitrary constant naming the migration advisory lock.
const LOCK_ID: i64 = 0x6761_7465_7761_7901; // "gateway" + 1

impl Migration {
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.up.as_bytes()))
    }
}

/// State of one migration as `gateway migrate status` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: i32,
    pub name: String,
    pub applied: bool,
    /// Set when the applied checksum differs from the embedded script.
    pub checksum_mismatch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {embedded} in this binary); restore the original file or write a new migration")]
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        embedded: String,
    },
    #[error("the database has migration {0} applied, which this binary does not know; run a newer gateway")]
    UnknownApplied(i32),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(DbError::Postgres(e))
    }
}

async fn with_lock<T, F>(client: &mut Client, f: F) -> Result<T, MigrateError>
where
    F: for<'c> FnOnce(
        &'c mut Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, MigrateError>> + Send + 'c>,
    >,
{
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_ID])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
        f(client).await
    }
    .await;
    // Unlock even on error; a lost connection releases it anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_ID])
        .await;
    result
}

async fn applied(client: &Client) -> Result<Vec<(i32, String)>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Refuses to go on when an applied script changed or is unknown.
fn verify(applied: &[(i32, String)]) -> Result<(), MigrateError> {
    for (version, checksum) in applied {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.version == *version)
            .ok_or(MigrateError::UnknownApplied(*version))?;
        let embedded = m.checksum();
        if *checksum != embedded {
            return Err(MigrateError::ChecksumMismatch {
                version: *version,
                name: m.name.to_string(),
                applied: checksum.clone(),
                embedded,
            });
        }
    }
    Ok(())
}

/// Applies every pending migration, each in its own transaction. Returns the
/// versions applied.
pub async fn up(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    with_lock(client, |client| {
        Box::pin(async move {
            let done = applied(client).await?;
            verify(&done)?;
            let mut ran = Vec::new();
            for m in MIGRATIONS {
                if done.iter().any(|(v, _)| *v == m.version) {
                    continue;
                }
                let tx = client.transaction().await?;
                tx.batch_execute(m.up).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &m.checksum()],
                )
                .await?;
                tx.commit().await?;
                ran.push(m.version);
            }
            Ok(ran)
        })
    })
    .await
}

/// Reverts the last `n` applied migrations, newest first.
pub async fn down(client: &mut Client, n: usize) -> Result<Vec<i32>, MigrateError> {
    with_lock(client, |client| {
        Box::pin(async move {
            let done = applied(client).await?;
            verify(&done)?;
            let mut reverted = Vec::new();
            for (version, _) in done.iter().rev().take(n) {
                let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) else {
                    return Err(MigrateError::UnknownApplied(*version));
                };
                let tx = client.transaction().await?;
                tx.batch_execute(m.down).await?;
                tx.execute(
                    "DELETE FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?;
                tx.commit().await?;
                reverted.push(*version);
            }
            Ok(reverted)
        })
    })
    .await
}

/// Every known migration and whether it is applied.
pub async fn status(client: &mut Client) -> Result<Vec<Status>, MigrateError> {
    with_lock(client, |client| {
        Box::pin(async move {
            let done = applied(client).await?;
            let mut out: Vec<Status> = MIGRATIONS
                .iter()
                .map(|m| {
                    let row = done.iter().find(|(v, _)| *v == m.version);
                    Status {
                        version: m.version,
                        name: m.name.to_string(),
                        applied: row.is_some(),
                        checksum_mismatch: row.is_some_and(|(_, c)| *c != m.checksum()),
                    }
                })
                .collect();
            for (v, _) in &done {
                if !MIGRATIONS.iter().any(|m| m.version == *v) {
                    out.push(Status {
                        version: *v,
                        name: "<unknown to this binary>".into(),
                        applied: true,
                        checksum_mismatch: false,
                    });
                }
            }
            Ok(out)
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("sql/ exists")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".up.sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.up.sql", m.version, m.name))
            .collect();
        assert_eq!(files, embedded);
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
    }
}
