//! Request-log retention, a housekeeping [`Job`] (one instance at a time,
//! under the housekeeping advisory lock) and `gateway logs prune`:
//!
//! - creates the daily partitions of today and the next
//!   [`PARTITIONS_AHEAD`] days if missing, so the writer rarely has to;
//! - drops every `request_logs_YYYYMMDD` partition whose whole day (UTC) is
//!   older than `request_logs.retention_days`: dropping a partition is
//!   cheap and leaves no dead rows, where a `DELETE` would rewrite the
//!   table. Partitions named otherwise are never touched;
//! - deletes `request_rollups` rows whose minute is older than
//!   `request_logs.rollup_retention_days`, [`ROLLUP_DELETE_BATCH`] rows a
//!   statement, so no statement runs long or holds many row locks.
//!
//! Each step runs even when an earlier one failed; the round reports the
//! first error and the next round tries again. Dropping a partition needs
//! a brief exclusive lock on `request_logs`; it waits at most
//! [`DROP_LOCK_TIMEOUT`] for the writer's `COPY` (the writer's queue
//! absorbs the pause) and otherwise gives up until the next round.

use async_trait::async_trait;
use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use deadpool_postgres::Object;
use tokio_postgres::Client;

use crate::config::RequestLogConfig;
use crate::service::housekeeping::Job;
use crate::store::DbError;

/// Daily partitions are `request_logs_YYYYMMDD` (see
/// `request_logs_ensure_partition` in sql/0004_request_logs.up.sql).
pub const PARTITION_PREFIX: &str = "request_logs_";
/// Days after today whose partitions are created ahead of time.
pub const PARTITIONS_AHEAD: u64 = 2;
/// Rollup rows deleted by one statement.
pub const ROLLUP_DELETE_BATCH: i64 = 10_000;
/// Batches in one round at most (10 M rows); the rest waits for the next
/// round, so the lock is never held for hours.
const MAX_ROLLUP_BATCHES: usize = 1_000;
/// How long dropping a partition waits for the table lock.
pub const DROP_LOCK_TIMEOUT: &str = "5s";

/// The retention job; cheap to clone.
#[derive(Debug, Clone)]
pub struct Retention {
    retention_days: u32,
    rollup_retention_days: u32,
}

/// A daily partition of `request_logs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub schema: String,
    pub name: String,
    pub day: NaiveDate,
    /// Postgres's estimate of its rows; None before it was ever analysed.
    pub rows_estimate: Option<i64>,
}

/// What one pass did, or with `dry_run` would do.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub dry_run: bool,
    /// Partitions created ahead of time (names).
    pub created: Vec<String>,
    pub dropped: Vec<Partition>,
    /// Rollup rows older than this are deleted.
    pub rollups_before: DateTime<Utc>,
    pub rollups_deleted: u64,
}

/// The day a partition holds, from its name; None for any other table.
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Midnight UTC starting `day`.
fn start_of(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN))
}

fn days_before(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now.checked_sub_days(Days::new(u64::from(days)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether every moment of `day` (UTC) is more than `retention_days` before
/// `now`: the partition's upper bound is at or before the cutoff.
pub fn expired(day: NaiveDate, now: DateTime<Utc>, retention_days: u32) -> bool {
    match day.succ_opt() {
        Some(next) => start_of(next) <= days_before(now, retention_days),
        None => false,
    }
}

/// `"ident"`, quoted for SQL.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Describes and registers retention's metrics at zero (see
/// [`crate::telemetry::register_at_boot`]).
pub fn register_metrics() {
    metrics::describe_counter!(
        "gateway_request_log_partitions_dropped_total",
        "Daily request_logs partitions dropped by retention."
    );
    metrics::describe_counter!(
        "gateway_request_rollups_deleted_total",
        "Per-minute rollup rows deleted by retention."
    );
    metrics::counter!("gateway_request_log_partitions_dropped_total").absolute(0);
    metrics::counter!("gateway_request_rollups_deleted_total").absolute(0);
}

impl Retention {
    pub fn new(cfg: &RequestLogConfig) -> Self {
        Self {
            retention_days: cfg.retention_days,
            rollup_retention_days: cfg.rollup_retention_days,
        }
    }

    /// Every daily partition of `request_logs`, oldest first.
    pub async fn partitions(db: &Client) -> Result<Vec<Partition>, DbError> {
        let rows = db
            .query(
                "SELECT n.nspname::text, c.relname::text, c.reltuples::bigint
                 FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE i.inhparent = 'request_logs'::regclass",
                &[],
            )
            .await?;
        let mut parts: Vec<Partition> = rows
            .iter()
            .filter_map(|r| {
                let name: String = r.get(1);
                let rows: i64 = r.get(2);
                Some(Partition {
                    schema: r.get(0),
                    day: partition_day(&name)?,
                    name,
                    rows_estimate: (rows >= 0).then_some(rows),
                })
            })
            .collect();
        parts.sort_by_key(|p| p.day);
        Ok(parts)
    }

    /// One pass at `now`: creates the partitions ahead, drops expired
    /// partitions, deletes old rollups. With `dry_run`, changes nothing and
    /// reports what it would do (rollup rows counted instead of deleted).
    /// Every step runs; the first error is returned after all were tried.
    pub async fn prune(
        &self,
        db: &mut Client,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Outcome, DbError> {
        let mut outcome = Outcome {
            dry_run,
            created: Vec::new(),
            dropped: Vec::new(),
            rollups_before: days_before(now, self.rollup_retention_days),
            rollups_deleted: 0,
        };
        let ahead = self.ensure_ahead(db, now, dry_run, &mut outcome).await;
        let drop = self.drop_expired(db, now, dry_run, &mut outcome).await;
        let rollups = self.delete_rollups(db, dry_run, &mut outcome).await;
        ahead.and(drop).and(rollups).map(|()| outcome)
    }

    async fn ensure_ahead(
        &self,
        db: &mut Client,
        now: DateTime<Utc>,
        dry_run: bool,
        outcome: &mut Outcome,
    ) -> Result<(), DbError> {
        let today = now.date_naive();
        for d in 0..=PARTITIONS_AHEAD {
            let Some(day) = today.checked_add_days(Days::new(d)) else {
                continue;
            };
            let name = format!("{PARTITION_PREFIX}{}", day.format("%Y%m%d"));
            let missing: bool = db
                .query_one("SELECT to_regclass($1) IS NULL", &[&quote_ident(&name)])
                .await?
                .get(0);
            if !missing {
                continue;
            }
            if !dry_run {
                db.query_one("SELECT request_logs_ensure_partition($1)", &[&day])
                    .await?;
                tracing::info!(partition = %name, "created request-log partition ahead of time");
            }
            outcome.created.push(name);
        }
        Ok(())
    }

    async fn drop_expired(
        &self,
        db: &mut Client,
        now: DateTime<Utc>,
        dry_run: bool,
        outcome: &mut Outcome,
    ) -> Result<(), DbError> {
        let mut first_error = Ok(());
        for part in Self::partitions(db).await? {
            if !expired(part.day, now, self.retention_days) {
                continue;
            }
            if !dry_run {
                if let Err(e) = drop_partition(db, &part).await {
                    tracing::warn!(partition = %part.name, error = %e.describe(), "could not drop request-log partition; next round retries");
                    first_error = first_error.and(Err(e));
                    continue;
                }
                metrics::counter!("gateway_request_log_partitions_dropped_total").increment(1);
                tracing::info!(
                    partition = %part.name,
                    rows_estimate = part.rows_estimate,
                    retention_days = self.retention_days,
                    "dropped request-log partition"
                );
            }
            outcome.dropped.push(part);
        }
        first_error
    }

    async fn delete_rollups(
        &self,
        db: &mut Client,
        dry_run: bool,
        outcome: &mut Outcome,
    ) -> Result<(), DbError> {
        let before = outcome.rollups_before;
        if dry_run {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM request_rollups WHERE minute < $1",
                    &[&before],
                )
                .await?
                .get(0);
            outcome.rollups_deleted = n.max(0) as u64;
            return Ok(());
        }
        for _ in 0..MAX_ROLLUP_BATCHES {
            let n = db
                .execute(
                    "DELETE FROM request_rollups WHERE ctid = ANY (ARRAY(
                         SELECT ctid FROM request_rollups WHERE minute < $1 LIMIT $2))",
                    &[&before, &ROLLUP_DELETE_BATCH],
                )
                .await?;
            outcome.rollups_deleted += n;
            metrics::counter!("gateway_request_rollups_deleted_total").increment(n);
            if n < ROLLUP_DELETE_BATCH as u64 {
                break;
            }
        }
        if outcome.rollups_deleted > 0 {
            tracing::info!(
                rows = outcome.rollups_deleted,
                before = %before.to_rfc3339(),
                "deleted old request rollups"
            );
        }
        Ok(())
    }
}

async fn drop_partition(db: &mut Client, part: &Partition) -> Result<(), DbError> {
    let tx = db.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'; DROP TABLE IF EXISTS {}.{}",
        quote_ident(&part.schema),
        quote_ident(&part.name)
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Job for Retention {
    fn name(&self) -> &'static str {
        "request_log_retention"
    }

    async fn run(&self, db: &mut Object) -> anyhow::Result<()> {
        let client: &mut Client = db;
        self.prune(client, Utc::now(), false)
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!(e.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn partition_names() {
        assert_eq!(
            partition_day("request_logs_20261129"),
            Some(day("2026-11-29"))
        );
        for other in [
            "request_logs",
            "request_logs_2026112",
            "request_logs_202611290",
            "request_logs_20261340",
            "request_logs_2026-11-2",
            "request_logs_default",
            "request_rollups",
            "xrequest_logs_20261129",
        ] {
            assert_eq!(partition_day(other), None, "{other}");
        }
    }

    #[test]
    fn a_day_expires_when_all_of_it_is_older_than_the_retention() {
        let now = at("2026-11-29T16:00:00Z");
        // Cutoff 2026-11-15T16:00Z: the 14th ended before it, the 15th not.
        assert!(expired(day("2026-11-14"), now, 14));
        assert!(!expired(day("2026-11-15"), now, 14));
        assert!(!expired(day("2026-11-29"), now, 14));
        // Exactly at the bound: the 15th ends at the cutoff.
        assert!(expired(day("2026-11-15"), at("2026-11-30T00:00:00Z"), 14));
        assert!(!expired(day("2026-11-15"), at("2026-11-29T23:59:59Z"), 14));
        assert!(!expired(NaiveDate::MAX, now, 1));
        assert!(!expired(day("2026-11-28"), now, 3650));
    }
}
