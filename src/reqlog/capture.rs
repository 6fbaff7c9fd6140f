//! The proxy's side of request logging: a cloneable handle that counts
//! every record in the rollups, samples, and queues the kept ones for the
//! writer without ever waiting.
//!
//! With `request_logs.enabled = false` the handle does nothing at all: no
//! raw records and no rollups, so an operator who turns request logs off
//! gets no Postgres writes from them (stats then show no traffic).

use std::cell::Cell;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::record::RequestRecord;
use super::rollup::Rollups;
use super::writer::BATCH_MAX;
use crate::config::RequestLogConfig;

/// Reasons a record is dropped, the `reason` label of
/// `gateway_request_logs_dropped_total`.
pub mod reason {
    /// The queue to the writer was full (the writer is slow or Postgres down).
    pub const QUEUE_FULL: &str = "queue_full";
    /// Postgres refused the batch for a data reason several times.
    pub const REJECTED: &str = "rejected";
    /// The gateway shut down before the writer could store the batch.
    pub const SHUTDOWN: &str = "shutdown";
    pub const ALL: &[&str] = &[QUEUE_FULL, REJECTED, SHUTDOWN];
}

/// Largest user agent kept, in bytes (cut at a character boundary).
pub const MAX_USER_AGENT_BYTES: usize = 512;

/// The hot-path handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct RequestLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    cfg: RequestLogConfig,
    /// `sample_rate` scaled to the RNG's range: a record with status < 400
    /// is kept when a random u64 is below it.
    keep_below: u64,
    keep_all: bool,
    rollups: Arc<Rollups>,
    tx: mpsc::Sender<RequestRecord>,
    /// Wakes the writer once [`Inner::wake_at`] records wait.
    batch_ready: Arc<Notify>,
    wake_at: usize,
}

/// The writer's end of the queue: the records, and the signal that a
/// batch's worth of them waits. The writer never waits on the queue
/// itself: a task woken by every record costs a cross-thread wake-up (a
/// context switch) per request, more than the rest of the capture.
pub struct Receiver {
    pub records: mpsc::Receiver<RequestRecord>,
    pub batch_ready: Arc<Notify>,
}

impl std::ops::Deref for Receiver {
    type Target = mpsc::Receiver<RequestRecord>;

    fn deref(&self) -> &Self::Target {
        &self.records
    }
}

impl std::ops::DerefMut for Receiver {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.records
    }
}

impl RequestLog {
    /// A handle that captures nothing (`request_logs.enabled = false`).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// A handle and the receiving end of its queue, or a disabled handle
    /// and `None` when the config turns request logs off.
    pub fn new(cfg: &RequestLogConfig, rollups: Arc<Rollups>) -> (Self, Option<Receiver>) {
        if !cfg.enabled {
            return (Self::disabled(), None);
        }
        let capacity = cfg.queue_capacity.max(1);
        let (tx, records) = mpsc::channel(capacity);
        let batch_ready = Arc::new(Notify::new());
        let rate = cfg.sample_rate.clamp(0.0, 1.0);
        let inner = Inner {
            cfg: cfg.clone(),
            keep_below: (rate * u64::MAX as f64) as u64,
            keep_all: rate >= 1.0,
            rollups,
            tx,
            batch_ready: batch_ready.clone(),
            // A full batch, or half the queue when that is less: the
            // writer drains long before the queue overflows.
            wake_at: BATCH_MAX.min(capacity / 2).max(1),
        };
        (
            Self {
                inner: Some(Arc::new(inner)),
            },
            Some(Receiver {
                records,
                batch_ready,
            }),
        )
    }

    /// The config the proxy fills records by (redaction, body bounds), or
    /// `None` when nothing is captured: the proxy then builds no record.
    pub fn config(&self) -> Option<&RequestLogConfig> {
        self.inner.as_deref().map(|i| &i.cfg)
    }

    /// Records waiting for the writer (0 when disabled).
    pub fn queue_depth(&self) -> usize {
        self.inner
            .as_deref()
            .map_or(0, |i| i.tx.max_capacity() - i.tx.capacity())
    }

    /// Counts `record` in the rollups and, if sampled in, queues it.
    pub fn submit(&self, record: RequestRecord) {
        let Some(inner) = self.inner.as_deref() else {
            return;
        };
        inner.rollups.observe(&record);
        if record.status < 400 && !inner.keep_all && random_u64() >= inner.keep_below {
            return;
        }
        if inner.tx.try_send(record).is_err() {
            metrics::counter!("gateway_request_logs_dropped_total", "reason" => reason::QUEUE_FULL)
                .increment(1);
        }
        // Two atomic loads; the writer wakes by its timer otherwise.
        if inner.tx.max_capacity() - inner.tx.capacity() >= inner.wake_at {
            inner.batch_ready.notify_one();
        }
    }
}

/// Registers the request-log metrics at zero, so they are exported from
/// start-up (an alert on their rate needs the series to exist), also when
/// request logs are off. Called by [`crate::telemetry::register_at_boot`].
pub fn register_metrics() {
    metrics::counter!("gateway_request_logs_written_total").absolute(0);
    for r in reason::ALL {
        metrics::counter!("gateway_request_logs_dropped_total", "reason" => *r).absolute(0);
    }
    metrics::gauge!("gateway_request_log_queue_depth").set(0.0);
}

/// A cheap per-thread RNG (xorshift64*), seeded once per thread from the
/// std hasher's random keys. Sampling needs no cryptographic quality.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    // Never zero: xorshift would stay at zero for ever.
    h.finish() | 1
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` without NUL characters (Postgres text cannot hold them; a lossy
/// body may): each becomes U+FFFD. No copy when there is none.
pub fn pg_safe(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// The first bytes of a body, kept in the request context on `log_bodies`
/// routes only: nothing is copied once `max` bytes are held.
#[derive(Debug, Default)]
pub struct BodyCapture {
    buf: Vec<u8>,
}

impl BodyCapture {
    pub fn push(&mut self, chunk: &[u8], max: usize) {
        let room = max.saturating_sub(self.buf.len());
        if room > 0 {
            let take = room.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn body_capture_keeps_only_the_first_max_bytes() {
        let mut b = BodyCapture::default();
        b.push(b"hello ", 8);
        b.push(b"world", 8);
        b.push(b"more", 8);
        assert_eq!(b.bytes(), b"hello wo");
    }

    fn record(status: u16) -> RequestRecord {
        RequestRecord {
            id: uuid::Uuid::now_v7(),
            ts: chrono::Utc::now(),
            request_id: http::HeaderValue::from_static("r"),
            key_id: None,
            route: Some("echo".into()),
            method: http::Method::GET,
            path: "/echo".into(),
            query: None,
            status,
            error_code: None,
            latency_ms: 1.0,
            upstream_latency_ms: None,
            upstream: None,
            request_bytes: 0,
            response_bytes: 0,
            client_ip: None,
            user_agent: None,
            request_body: None,
            response_body: None,
        }
    }

    fn cfg(sample_rate: f64, queue_capacity: usize) -> RequestLogConfig {
        RequestLogConfig {
            sample_rate,
            queue_capacity,
            ..RequestLogConfig::default()
        }
    }

    #[test]
    fn errors_are_always_kept_and_the_rest_sampled() {
        let (log, rx) = RequestLog::new(&cfg(0.0, 100), Arc::default());
        let mut rx = rx.expect("enabled");
        for status in [200, 204, 301, 399, 400, 404, 429, 502, 0] {
            log.submit(record(status));
        }
        let kept: Vec<u16> = std::iter::from_fn(|| rx.try_recv().ok().map(|r| r.status)).collect();
        assert_eq!(kept, [400, 404, 429, 502]);

        let (log, rx) = RequestLog::new(&cfg(1.0, 100), Arc::default());
        for _ in 0..50 {
            log.submit(record(200));
        }
        assert_eq!(rx.expect("enabled").len(), 50);
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let (log, rx) = RequestLog::new(&cfg(1.0, 2), Arc::default());
        for _ in 0..5 {
            log.submit(record(500));
        }
        assert_eq!(log.queue_depth(), 2);
        assert_eq!(rx.expect("enabled").len(), 2);
    }

    #[test]
    fn disabled_captures_nothing() {
        let off = RequestLogConfig {
            enabled: false,
            ..RequestLogConfig::default()
        };
        let (log, rx) = RequestLog::new(&off, Arc::default());
        assert!(rx.is_none());
        assert!(log.config().is_none());
        log.submit(record(500));
    }

    #[test]
    fn sampling_rng_is_roughly_uniform() {
        // Not a timing or statistical-power test: a broken RNG (stuck at a
        // value, or zero) keeps 0 % or 100 %.
        let n = 100_000;
        let below = (0..n).filter(|_| random_u64() < u64::MAX / 10).count();
        assert!((5_000..15_000).contains(&below), "{below} of {n}");
    }
}
