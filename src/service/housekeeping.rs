//! Housekeeping: maintenance jobs that one instance at a time runs every
//! `housekeeping.interval_ms` (DESIGN §2): request-log retention, key-expiry
//! events, the purge of long-expired keys.
//!
//! Each round takes a session-level advisory lock with `pg_try_advisory_lock`
//! on one pooled connection; an instance that does not get it skips the
//! round, and a lock whose connection dies is released by Postgres. Jobs run
//! in order, each with its own error: one failing job never stops the
//! others, and a round that failed is simply tried again next interval.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Arbitrary constant naming the housekeeping advisory lock. Advisory
/// locks share one number space per database: it must differ from the
/// migration lock (`…01`) and the audit log's append lock (`…02`), or a
/// round would hold up every audited admin write on every instance.
pub const LOCK_ID: i64 = 0x6761_7465_7761_7903; // "gateway" + 3

/// One maintenance job. `run` gets the connection holding the lock; a job
/// may open transactions on it but must leave none open.
#[async_trait]
pub trait Job: Send + Sync {
    /// Stable name, for logs and the `job` metric label.
    fn name(&self) -> &'static str;
    async fn run(&self, db: &mut Object) -> anyhow::Result<()>;
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// The lock was taken and every job ran; `failed` of them errored.
    Ran { failed: usize },
    /// Another instance holds the lock.
    Busy,
}

/// `outcome` labels of `gateway_housekeeping_runs_total`.
const OUTCOME_OK: &str = "ok";
const OUTCOME_ERROR: &str = "error";

pub struct Housekeeping {
    pool: Pool,
    interval: Duration,
    jobs: Vec<Box<dyn Job>>,
}

impl Housekeeping {
    pub fn new(pool: Pool, interval: Duration) -> Self {
        Self {
            pool,
            interval,
            jobs: Vec::new(),
        }
    }

    pub fn with_job(mut self, job: impl Job + 'static) -> Self {
        self.jobs.push(Box::new(job));
        self
    }

    /// Registers `gateway_housekeeping_runs_total` at zero for every job and
    /// outcome (see [`crate::telemetry`]).
    pub fn register_metrics(&self) {
        for job in &self.jobs {
            for outcome in [OUTCOME_OK, OUTCOME_ERROR] {
                metrics::counter!("gateway_housekeeping_runs_total", "job" => job.name(), "outcome" => outcome)
                    .absolute(0);
            }
        }
    }

    /// One round: under the lock, every job once. Also what the CLI runs
    /// by hand (`gateway logs prune`), so the two never overlap.
    pub async fn run_once(&self) -> anyhow::Result<Round> {
        let mut db = self.pool.get().await?;
        let locked: bool = db
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_ID])
            .await?
            .get(0);
        if !locked {
            return Ok(Round::Busy);
        }
        let mut failed = 0;
        for job in &self.jobs {
            let name = job.name();
            let outcome = match job.run(&mut db).await {
                Ok(()) => OUTCOME_OK,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(job = name, error = %format!("{e:#}"), "housekeeping job failed");
                    OUTCOME_ERROR
                }
            };
            metrics::counter!("gateway_housekeeping_runs_total", "job" => name, "outcome" => outcome)
                .increment(1);
        }
        let unlocked = db
            .query_one("SELECT pg_advisory_unlock($1)", &[&LOCK_ID])
            .await
            .map(|row| row.get::<_, bool>(0));
        if !matches!(unlocked, Ok(true)) {
            // Never hand a connection that may still hold the lock back to
            // the pool: closing it releases the lock.
            drop(Object::take(db));
        }
        Ok(Round::Ran { failed })
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.jobs.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.run_once().await {
                Ok(Round::Ran { .. }) => {}
                Ok(Round::Busy) => tracing::debug!("housekeeping: another instance holds the lock"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "housekeeping round failed; will retry")
                }
            }
        }
    }
}
