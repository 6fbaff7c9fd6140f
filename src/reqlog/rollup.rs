//! Per-minute rollups: every instance aggregates its requests by minute ×
//! route × key × method × status × error code and upserts them into
//! `request_rollups`, where rows of several instances add up.
//!
//! Hot path ([`Rollups::observe`]): one uncontended lock of this thread's
//! shard and a hash-map update; the series key holds the route's
//! `Arc<str>` and `&'static` error code, so a request of a series already
//! seen this minute allocates nothing. Shards are picked per worker thread,
//! so the proxy's threads never wait on each other; the flusher merges them.
//!
//! Flush ([`RollupFlusher`]): every [`FLUSH_INTERVAL`] the flusher swaps
//! every shard's map out and upserts the deltas (current minute included,
//! so stats see traffic within about two seconds) with `count = count +
//! EXCLUDED.count` and `histogram_add`. When Postgres is down the deltas
//! stay in memory, merged series by series, and are retried with backoff;
//! past [`MAX_PENDING_SERIES`] a new series is dropped and its requests
//! counted in `gateway_request_rollups_dropped_total`. On shutdown the
//! flusher keeps flushing until the proxy has no request in flight, then
//! flushes once more.
//!
//! A flush whose commit succeeded but whose answer was lost (the link died
//! at that instant) is retried and counted twice; stats are exact up to
//! that race.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use http::Method;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use uuid::Uuid;

use super::histogram::Histogram;
use super::record::RequestRecord;
use crate::store::request_stats::{self, RollupRow};
use crate::store::DbError;

/// Shards of the aggregator (a power of two): more than the proxy's worker
/// threads on any usual machine, so each thread has its own.
pub const SHARDS: usize = 16;
/// Series one shard holds between flushes; a request of a new series past
/// this is dropped and counted (a flood of distinct keys or routes within
/// one flush interval). A series is ~850 bytes (its histogram is 744), so
/// a full shard is ~14 MB; only the proxy's worker threads fill shards.
pub const MAX_SERIES_PER_SHARD: usize = 16_384;
/// Series kept in memory while Postgres is unreachable (~85 MB at most);
/// past this a new series is dropped and its requests counted.
pub const MAX_PENDING_SERIES: usize = 100_000;
/// How often the flusher upserts: stats see traffic within about this plus
/// the upsert's own time.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between retries while Postgres is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bound on one flush, so a dead link cannot stall the flusher for ever.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// `reason` labels of `gateway_request_rollups_dropped_total`.
const DROP_SERIES_CAP: &str = "series_cap";
const DROP_PENDING_CAP: &str = "pending_cap";
/// `result` labels of `gateway_request_rollup_flushes_total`.
const FLUSH_OK: &str = "ok";
const FLUSH_ERROR: &str = "error";

/// Registers the rollups' metrics at zero (see
/// [`crate::telemetry::register_at_boot`]).
pub fn register_metrics() {
    for reason in [DROP_SERIES_CAP, DROP_PENDING_CAP] {
        metrics::counter!("gateway_request_rollups_dropped_total", "reason" => reason).absolute(0);
    }
    for result in [FLUSH_OK, FLUSH_ERROR] {
        metrics::counter!("gateway_request_rollup_flushes_total", "result" => result).absolute(0);
    }
    metrics::counter!("gateway_request_rollup_rows_total").absolute(0);
    metrics::gauge!("gateway_request_rollup_pending_series").set(0.0);
}

/// One series: a minute and the dimensions a rollup row is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// Unix minutes (seconds / 60) of the request start.
    pub minute: i64,
    pub route: Option<Arc<str>>,
    pub key_id: Option<Uuid>,
    pub method: Method,
    pub status: u16,
    pub error_code: Option<&'static str>,
}

/// The counters of one series.
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    pub count: u64,
    /// Status 400–499.
    pub client_errors: u64,
    /// Status 500–599.
    pub server_errors: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_sum_ms: f64,
    pub latency: Histogram,
}

impl Aggregate {
    fn observe(&mut self, r: &RequestRecord) {
        self.count += 1;
        self.client_errors += u64::from((400..500).contains(&r.status));
        self.server_errors += u64::from((500..600).contains(&r.status));
        self.request_bytes = self.request_bytes.saturating_add(r.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(r.response_bytes);
        if r.latency_ms.is_finite() && r.latency_ms > 0.0 {
            self.latency_sum_ms += r.latency_ms;
        }
        self.latency.record(r.latency_ms);
    }

    pub fn merge(&mut self, o: &Aggregate) {
        self.count += o.count;
        self.client_errors += o.client_errors;
        self.server_errors += o.server_errors;
        self.request_bytes = self.request_bytes.saturating_add(o.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency.merge(&o.latency);
    }
}

type Series = HashMap<SeriesKey, Aggregate>;

/// The aggregator the proxy feeds; cheap to call from `logging`.
#[derive(Debug)]
pub struct Rollups {
    shards: Box<[Mutex<Series>]>,
}

impl Default for Rollups {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Series::new())).collect(),
        }
    }
}

/// The shard of the calling thread: threads are numbered as they first
/// observe, so each worker keeps to its own shard.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A poisoned shard only means a panic elsewhere mid-update of plain
/// counters; the map is still usable.
fn lock(m: &Mutex<Series>) -> MutexGuard<'_, Series> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rollups {
    /// Counts one request (every request, sampled out or not).
    pub fn observe(&self, record: &RequestRecord) {
        let key = SeriesKey {
            minute: record.ts.timestamp().div_euclid(60),
            route: record.route.clone(),
            key_id: record.key_id,
            method: record.method.clone(),
            status: record.status,
            error_code: record.error_code,
        };
        let mut shard = lock(&self.shards[shard_index()]);
        if let Some(agg) = shard.get_mut(&key) {
            agg.observe(record);
            return;
        }
        if shard.len() >= MAX_SERIES_PER_SHARD {
            drop(shard);
            metrics::counter!("gateway_request_rollups_dropped_total", "reason" => DROP_SERIES_CAP)
                .increment(1);
            return;
        }
        let mut agg = Aggregate::default();
        agg.observe(record);
        shard.insert(key, agg);
    }

    /// Takes everything observed since the last call, every shard merged.
    pub fn take(&self) -> Series {
        let mut out = Series::new();
        for shard in self.shards.iter() {
            let taken = {
                let mut s = lock(shard);
                // Leave room for as many series as last time, so the proxy
                // does not grow the map again request by request.
                let cap = s.len();
                std::mem::replace(&mut *s, Series::with_capacity(cap))
            };
            merge_into(&mut out, taken, usize::MAX);
        }
        out
    }
}

/// Adds `from` to `into`; a series new to `into` once it holds `cap`
/// series is dropped. Returns the requests dropped.
fn merge_into(into: &mut Series, from: Series, cap: usize) -> u64 {
    let mut dropped = 0;
    for (k, v) in from {
        if let Some(a) = into.get_mut(&k) {
            a.merge(&v);
        } else if into.len() < cap {
            into.insert(k, v);
        } else {
            dropped += v.count;
        }
    }
    dropped
}

/// The rows to upsert, in primary-key order: two instances upserting the
/// same series lock them in the same order and cannot deadlock.
fn rows(pending: &Series) -> Vec<RollupRow> {
    let mut rows: Vec<RollupRow> = pending
        .iter()
        .filter_map(|(k, a)| {
            Some(RollupRow {
                minute: DateTime::<Utc>::from_timestamp(k.minute.checked_mul(60)?, 0)?,
                route: k.route.as_deref().unwrap_or("").to_string(),
                key_id: k.key_id.unwrap_or(Uuid::nil()),
                method: k.method.as_str().to_string(),
                status: i16::try_from(k.status).unwrap_or(i16::MAX),
                error_code: k.error_code.unwrap_or("").to_string(),
                count: clamp(a.count),
                client_errors: clamp(a.client_errors),
                server_errors: clamp(a.server_errors),
                request_bytes: clamp(a.request_bytes),
                response_bytes: clamp(a.response_bytes),
                latency_sum_ms: a.latency_sum_ms,
                latency_buckets: a.latency.to_stored(),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.primary_key().cmp(&b.primary_key()));
    rows
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The background service that upserts the rollups.
pub struct RollupFlusher {
    rollups: Arc<Rollups>,
    pool: Pool,
    every: Duration,
    /// True once no request is in flight: the last observations are in.
    idle: Box<dyn Fn() -> bool + Send + Sync>,
    /// Set once the final flush after shutdown has run.
    pub drained: Arc<AtomicBool>,
    pending: tokio::sync::Mutex<Series>,
}

impl RollupFlusher {
    pub fn new(
        rollups: Arc<Rollups>,
        pool: Pool,
        every: Duration,
        idle: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        Self {
            rollups,
            pool,
            every,
            idle,
            drained: Arc::new(AtomicBool::new(false)),
            pending: tokio::sync::Mutex::new(Series::new()),
        }
    }

    /// Moves the shards' series into `pending`, within the cap.
    fn collect(&self, pending: &mut Series) {
        let dropped = merge_into(pending, self.rollups.take(), MAX_PENDING_SERIES);
        if dropped > 0 {
            metrics::counter!("gateway_request_rollups_dropped_total", "reason" => DROP_PENDING_CAP)
                .increment(dropped);
        }
        metrics::gauge!("gateway_request_rollup_pending_series").set(pending.len() as f64);
    }

    /// Upserts `pending`; it is cleared only when the upsert committed.
    async fn flush(&self, pending: &mut Series) -> Result<(), DbError> {
        self.collect(pending);
        if pending.is_empty() {
            return Ok(());
        }
        let rows = rows(pending);
        let upsert = async {
            let mut client = self.pool.get().await?;
            request_stats::upsert_rollups(&mut client, &rows).await
        };
        match tokio::time::timeout(FLUSH_TIMEOUT, upsert).await {
            Ok(Ok(())) => {
                pending.clear();
                metrics::counter!("gateway_request_rollup_flushes_total", "result" => FLUSH_OK)
                    .increment(1);
                metrics::counter!("gateway_request_rollup_rows_total").increment(rows.len() as u64);
                metrics::gauge!("gateway_request_rollup_pending_series").set(0.0);
                Ok(())
            }
            Ok(Err(e)) => {
                metrics::counter!("gateway_request_rollup_flushes_total", "result" => FLUSH_ERROR)
                    .increment(1);
                Err(e)
            }
            Err(_) => {
                metrics::counter!("gateway_request_rollup_flushes_total", "result" => FLUSH_ERROR)
                    .increment(1);
                Err(DbError::Timeout(FLUSH_TIMEOUT))
            }
        }
    }

    /// Upserts everything observed so far (and anything a failed flush
    /// left), now: for tests and tools; the service flushes on its own.
    pub async fn flush_once(&self) -> Result<(), DbError> {
        let mut pending = self.pending.lock().await;
        self.flush(&mut pending).await
    }

    /// Series waiting for a successful flush (after failures).
    pub async fn pending_series(&self) -> usize {
        self.pending.lock().await.len()
    }

    /// Flushes every `every`, backing off while Postgres fails. Returns
    /// when the shutdown watch fires.
    async fn run(&self, shutdown: &mut ShutdownWatch) {
        let mut backoff = self.every;
        let mut wait = self.every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            let mut pending = self.pending.lock().await;
            match self.flush(&mut pending).await {
                Ok(()) => {
                    backoff = self.every;
                    wait = self.every;
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e.describe(),
                        series = pending.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "request rollup flush failed; keeping the counts and retrying"
                    );
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // Keep draining the shards meanwhile, so the proxy's maps
                    // stay small and the pending cap applies.
                    self.collect(&mut pending);
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for RollupFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.run(&mut shutdown).await;
        // Requests still in flight count once they end: keep flushing until
        // none is left (the shutdown watcher ends the process after the
        // grace period anyway), then flush what they added.
        while !(self.idle)() {
            if let Err(e) = self.flush_once().await {
                tracing::warn!(error = %e.describe(), "request rollup flush failed during shutdown");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self.flush_once().await {
            let series = self.pending_series().await;
            tracing::warn!(
                error = %e.describe(),
                series,
                "final request rollup flush failed; these counts are lost"
            );
        }
        self.drained.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(route: Option<&str>, status: u16, latency_ms: f64) -> RequestRecord {
        RequestRecord {
            id: Uuid::now_v7(),
            ts: DateTime::from_timestamp(1_800_000_000, 0).expect("ts"),
            request_id: http::HeaderValue::from_static("r"),
            key_id: Some(Uuid::from_u128(7)),
            route: route.map(Arc::from),
            method: Method::GET,
            path: "/x".into(),
            query: None,
            status,
            error_code: (status == 429).then_some("rate_limited"),
            latency_ms,
            upstream_latency_ms: None,
            upstream: None,
            request_bytes: 10,
            response_bytes: 100,
            client_ip: None,
            user_agent: None,
            request_body: None,
            response_body: None,
        }
    }

    #[test]
    fn observations_of_many_threads_merge_into_one_series() {
        let rollups = Arc::new(Rollups::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = rollups.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        r.observe(&record(
                            Some("echo"),
                            if i % 10 == 0 { 503 } else { 200 },
                            2.0,
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        rollups.observe(&record(Some("echo"), 429, 0.5));
        let taken = rollups.take();
        assert_eq!(taken.len(), 3, "{taken:?}");
        let ok = taken
            .iter()
            .find(|(k, _)| k.status == 200)
            .map(|(_, a)| a.clone())
            .expect("200 series");
        assert_eq!(ok.count, 900);
        assert_eq!(ok.latency.total(), 900);
        assert_eq!(ok.response_bytes, 90_000);
        let limited = taken
            .iter()
            .find(|(k, _)| k.status == 429)
            .map(|(k, a)| (k.error_code, a.client_errors))
            .expect("429 series");
        assert_eq!(limited, (Some("rate_limited"), 1));
        assert!(rollups.take().is_empty(), "take empties the shards");
    }

    #[test]
    fn pending_cap_drops_new_series_and_counts_their_requests() {
        let mut into = Series::new();
        let r = Rollups::default();
        r.observe(&record(Some("a"), 200, 1.0));
        merge_into(&mut into, r.take(), 1);
        r.observe(&record(Some("a"), 200, 1.0));
        r.observe(&record(Some("b"), 200, 1.0));
        r.observe(&record(Some("b"), 200, 1.0));
        let dropped = merge_into(&mut into, r.take(), 1);
        assert_eq!(dropped, 2);
        assert_eq!(into.len(), 1);
        assert_eq!(into.values().next().map(|a| a.count), Some(2));
    }

    #[test]
    fn rows_use_the_sentinels_and_sort_by_primary_key() {
        let r = Rollups::default();
        let mut anon = record(None, 401, 0.2);
        anon.key_id = None;
        r.observe(&anon);
        r.observe(&record(Some("b"), 200, 1.0));
        r.observe(&record(Some("a"), 200, 1.0));
        let rows = rows(&r.take());
        let routes: Vec<&str> = rows.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(routes, ["", "a", "b"]);
        assert_eq!(rows[0].key_id, Uuid::nil());
        assert_eq!(rows[0].error_code, "");
        assert_eq!(rows[0].client_errors, 1);
        assert_eq!(
            rows[1].minute,
            DateTime::from_timestamp(1_800_000_000 / 60 * 60, 0).expect("minute")
        );
    }
}
