//! The request-log writer: a background service that drains the capture
//! queue in batches and writes each with one binary `COPY` into
//! `request_logs`, on a Postgres connection of its own.
//!
//! - A batch is written as soon as it is full ([`BATCH_MAX`]) and at
//!   least every `flush_interval`. The writer wakes for its timer and
//!   when a batch's worth of records waits (half the queue, if smaller),
//!   never for each record: that wake-up crosses threads, and cost more
//!   than the rest of the capture (benches/RESULTS.md, "Profiles").
//! - Daily partitions are created ahead (today, +1, +2, again whenever the
//!   day changes), and on demand when a batch meets a day without one.
//! - Postgres down or unreachable: the batch is kept and retried with
//!   capped exponential backoff ([`BACKOFF_MIN`] → [`BACKOFF_MAX`]) on a
//!   new connection, until it is written. Meanwhile the queue fills and
//!   the capture handle drops (and counts) what does not fit.
//! - A batch Postgres refuses for a data reason [`DATA_ATTEMPTS`] times is
//!   dropped and counted (`reason="rejected"`): never a loop for ever.
//! - On shutdown it keeps writing until the last in-flight request has
//!   been captured, then writes what is left (a few attempts only, so a
//!   dead database does not hold the exit until the grace period ends)
//!   and sets `drained`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};

use super::capture::{reason, Receiver};
use super::record::RequestRecord;
use crate::config::DatabaseConfig;
use crate::proxy::Inflight;
use crate::store::{self, request_log_writer as sql};

/// Records per `COPY`.
pub const BATCH_MAX: usize = 4_096;
/// First retry delay after a failed write; doubled per failure...
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Attempts at a batch Postgres refuses for a data reason before it is
/// dropped.
pub const DATA_ATTEMPTS: u32 = 3;
/// Attempts at the final batches on shutdown.
const SHUTDOWN_ATTEMPTS: u32 = 3;
/// Bound on one `COPY` (or partition creation): a link that stops
/// answering is dropped and the batch retried on a new one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Partitions kept ready ahead of today.
const DAYS_AHEAD: u64 = 2;
/// How often the shutdown wait looks at the in-flight count.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

pub struct RequestLogWriter {
    rx: tokio::sync::Mutex<Receiver>,
    db: DatabaseConfig,
    every: Duration,
    inflight: Arc<Inflight>,
    /// Set once the final batch after shutdown was written (or given up).
    pub drained: Arc<AtomicBool>,
}

/// Why a write failed, and so what to do with the batch.
#[derive(Debug)]
enum Failure {
    /// The link or the server's state: keep the batch, reconnect, back off.
    Transient(String),
    /// Some record's day has no partition: create them, retry at once.
    MissingPartition,
    /// The data: retry a few times, then drop.
    Rejected(String),
}

/// The writer's connection and its prepared `COPY`.
struct Conn {
    client: Client,
    copy: Statement,
    /// The last day partitions were made ahead for.
    ahead_of: Option<NaiveDate>,
}

impl RequestLogWriter {
    pub fn new(rx: Receiver, db: DatabaseConfig, every: Duration, inflight: Arc<Inflight>) -> Self {
        Self {
            rx: tokio::sync::Mutex::new(rx),
            db,
            every,
            inflight,
            drained: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let client = store::connect(&self.db)
            .await
            .map_err(|e| Failure::Transient(e.describe()))?;
        let copy = sql::prepare_copy(&client).await.map_err(|e| classify(&e))?;
        Ok(Conn {
            client,
            copy,
            ahead_of: None,
        })
    }

    /// Makes today's and the next days' partitions once per day.
    async fn partitions_ahead(conn: &mut Conn, today: NaiveDate) -> Result<(), Failure> {
        if conn.ahead_of == Some(today) {
            return Ok(());
        }
        let days = today.iter_days().take(DAYS_AHEAD as usize + 1);
        ensure_days(&conn.client, days).await?;
        conn.ahead_of = Some(today);
        Ok(())
    }

    /// One attempt at `batch` on `conn` (opened if needed).
    async fn attempt(
        &self,
        conn: &mut Option<Conn>,
        batch: &[RequestRecord],
    ) -> Result<u64, Failure> {
        if conn.is_none() {
            *conn = Some(self.connect().await?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(Failure::Transient("no connection".into()));
        };
        if let Err(e) = Self::partitions_ahead(c, Utc::now().date_naive()).await {
            // Not fatal for this batch: the on-demand path covers its days.
            tracing::warn!(error = ?e, "could not create request-log partitions ahead");
        }
        let started = Instant::now();
        let n =
            match tokio::time::timeout(WRITE_TIMEOUT, sql::copy_records(&c.client, &c.copy, batch))
                .await
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(classify(&e)),
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "COPY took over {WRITE_TIMEOUT:?}"
                    )))
                }
            };
        metrics::histogram!("gateway_request_log_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(n)
    }

    /// Writes `batch` until it is stored, dropped as rejected, or (when
    /// `attempts` is bounded, on shutdown) given up. Empties `batch`.
    async fn flush(
        &self,
        conn: &mut Option<Conn>,
        batch: &mut Vec<RequestRecord>,
        attempts: Option<u32>,
        rx: &Receiver,
    ) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = BACKOFF_MIN;
        let mut rejected = 0;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.attempt(conn, batch).await {
                Ok(_) => {
                    metrics::counter!("gateway_request_logs_written_total")
                        .increment(batch.len() as u64);
                    metrics::histogram!("gateway_request_log_batch_size")
                        .record(batch.len() as f64);
                    batch.clear();
                    return;
                }
                Err(Failure::MissingPartition) => {
                    let days = days_of(batch);
                    tracing::info!(days = days.len(), "creating missing request-log partitions");
                    let made = match conn.as_ref() {
                        Some(c) => ensure_days(&c.client, days.into_iter()).await,
                        None => Err(Failure::Transient("no connection".into())),
                    };
                    match made {
                        // Partitions made: retry at once, not counted as a
                        // data failure (another instance's retention job may
                        // race us, so a few rounds are allowed).
                        Ok(()) if tries < 2 * DATA_ATTEMPTS => continue,
                        Ok(()) => rejected += 1,
                        Err(Failure::Transient(e)) => {
                            tracing::warn!(error = %e, "request-log partition creation failed; will retry");
                            *conn = None;
                        }
                        Err(_) => rejected += 1,
                    }
                }
                Err(Failure::Rejected(e)) => {
                    rejected += 1;
                    tracing::warn!(error = %e, records = batch.len(), attempt = rejected, "request-log batch refused");
                }
                Err(Failure::Transient(e)) => {
                    tracing::warn!(error = %e, records = batch.len(), retry_in_ms = backoff.as_millis() as u64, "request-log write failed; will retry");
                    *conn = None;
                }
            }
            if rejected >= DATA_ATTEMPTS {
                metrics::counter!("gateway_request_logs_dropped_total", "reason" => reason::REJECTED)
                    .increment(batch.len() as u64);
                batch.clear();
                return;
            }
            if attempts.is_some_and(|max| tries >= max) {
                metrics::counter!("gateway_request_logs_dropped_total", "reason" => reason::SHUTDOWN)
                    .increment(batch.len() as u64);
                batch.clear();
                return;
            }
            set_depth(rx);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[async_trait]
impl BackgroundService for RequestLogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        let mut conn: Option<Conn> = None;
        // Partitions ahead from the start, when the database is there.
        match self.connect().await {
            Ok(mut c) => {
                if let Err(e) = Self::partitions_ahead(&mut c, Utc::now().date_naive()).await {
                    tracing::warn!(error = ?e, "could not create request-log partitions ahead");
                }
                conn = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = ?e, "request-log writer cannot reach the database yet; will retry")
            }
        }
        let mut batch: Vec<RequestRecord> = Vec::with_capacity(BATCH_MAX);
        let mut stopping = false;
        let mut next_flush = tokio::time::Instant::now() + self.every;
        loop {
            let wake = if stopping {
                next_flush.min(tokio::time::Instant::now() + SHUTDOWN_POLL)
            } else {
                next_flush
            };
            // Woken by the timer or by a batch's worth of records, never
            // by each record (see `capture::Receiver`).
            // A backlog (after an outage, or a burst) drains batch after
            // batch without waiting.
            if rx.len() + batch.len() < BATCH_MAX {
                let batch_ready = rx.batch_ready.clone();
                tokio::select! {
                    _ = batch_ready.notified() => {}
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = shutdown.changed(), if !stopping => stopping = true,
                }
            }
            // Never more than a batch: a full batch was written below.
            let mut senders_gone = false;
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        senders_gone = true;
                        break;
                    }
                }
            }
            if senders_gone {
                // Nothing more will come; the final flush below writes it.
                break;
            }
            set_depth(&rx);
            let due = tokio::time::Instant::now() >= next_flush;
            if batch.len() >= BATCH_MAX || due {
                let attempts = stopping.then_some(SHUTDOWN_ATTEMPTS);
                self.flush(&mut conn, &mut batch, attempts, &rx).await;
                next_flush = tokio::time::Instant::now() + self.every;
            }
            if stopping && self.inflight.get() == 0 && rx.is_empty() {
                break;
            }
        }
        // Final batches: what is queued now. Requests still in flight past
        // this point (the grace period ran out) are not recorded.
        while !rx.is_empty() || !batch.is_empty() {
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.flush(&mut conn, &mut batch, Some(SHUTDOWN_ATTEMPTS), &rx)
                .await;
        }
        set_depth(&rx);
        self.drained.store(true, Ordering::Release);
    }
}

/// The UTC days of `batch`'s records.
fn days_of(batch: &[RequestRecord]) -> BTreeSet<NaiveDate> {
    batch.iter().map(|r| r.ts.date_naive()).collect()
}

async fn ensure_days(
    client: &Client,
    days: impl Iterator<Item = NaiveDate>,
) -> Result<(), Failure> {
    for day in days {
        match tokio::time::timeout(WRITE_TIMEOUT, sql::ensure_partition(client, day)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(classify(&e)),
            Err(_) => return Err(Failure::Transient("partition creation timed out".into())),
        }
    }
    Ok(())
}

fn classify(e: &tokio_postgres::Error) -> Failure {
    // As `DbError::describe`: the server's code and message, never data.
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    if sql::is_missing_partition(e) {
        Failure::MissingPartition
    } else if sql::is_transient(e) {
        Failure::Transient(text)
    } else {
        Failure::Rejected(text)
    }
}

fn set_depth(rx: &Receiver) {
    metrics::gauge!("gateway_request_log_queue_depth").set(rx.len() as f64);
}

/// Registers the writer's histograms so they are exported from start-up
/// (see [`crate::telemetry::register_at_boot`]).
pub fn register_metrics() {
    let _ = metrics::histogram!("gateway_request_log_batch_size");
    let _ = metrics::histogram!("gateway_request_log_batch_seconds");
}
