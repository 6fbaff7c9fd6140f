//! Batched `last_used_at` tracking.
//!
//! The proxy marks a key used in memory ([`KeyRecord::mark_used`]) and, the
//! first time per flush interval, queues its id here without waiting. A
//! background service writes each batch with one `UPDATE … WHERE id = ANY`.
//! If Postgres is down the batch is kept and retried; a full queue drops the
//! id and counts it, it never blocks the proxy.
//!
//! [`KeyRecord::mark_used`]: crate::keys::snapshot::KeyRecord::mark_used

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::keys::snapshot::{KeyRecord, KeyStore};
use crate::store;

/// Queue bound: one entry per distinct key per interval, so this covers a
/// million active keys per flush before anything is dropped.
pub const QUEUE_CAPACITY: usize = 1 << 20;

/// The `queue` label of this queue in `gateway_queue_dropped_total`.
const QUEUE_LABEL: &str = "last_used";

/// Registers the flusher's metrics at zero (see [`crate::telemetry`]).
pub fn register_metrics() {
    metrics::counter!("gateway_queue_dropped_total", "queue" => QUEUE_LABEL).absolute(0);
    metrics::counter!("gateway_last_used_flushed_total").absolute(0);
}

/// The hot-path side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct LastUsedTracker {
    tx: mpsc::Sender<Uuid>,
}

impl LastUsedTracker {
    pub fn record(&self, key: &KeyRecord) {
        if key.mark_used() && self.tx.try_send(key.id).is_err() {
            // Let a later request try again rather than lose the key for good.
            key.clear_used();
            metrics::counter!("gateway_queue_dropped_total", "queue" => QUEUE_LABEL).increment(1);
        }
    }
}

/// The background side: drains the queue and flushes batches.
pub struct LastUsedFlusher {
    rx: tokio::sync::Mutex<mpsc::Receiver<Uuid>>,
    pool: Pool,
    store: Arc<KeyStore>,
    every: Duration,
    /// Set once the final flush after shutdown has run.
    pub drained: Arc<AtomicBool>,
}

pub fn channel(
    pool: Pool,
    store: Arc<KeyStore>,
    every: Duration,
) -> (LastUsedTracker, LastUsedFlusher) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    (
        LastUsedTracker { tx },
        LastUsedFlusher {
            rx: tokio::sync::Mutex::new(rx),
            pool,
            store,
            every,
            drained: Arc::new(AtomicBool::new(false)),
        },
    )
}

impl LastUsedFlusher {
    async fn flush(&self, rx: &mut mpsc::Receiver<Uuid>, pending: &mut HashSet<Uuid>) {
        while let Ok(id) = rx.try_recv() {
            pending.insert(id);
        }
        if pending.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = pending.iter().copied().collect();
        let result = async {
            let client = self.pool.get().await?;
            store::keys::touch_last_used(&**client, &ids).await
        };
        match tokio::time::timeout(Duration::from_secs(5), result).await {
            Ok(Ok(_)) => {
                let snap = self.store.load();
                for id in &ids {
                    if let Some(r) = snap.get_by_id(id) {
                        r.clear_used();
                    }
                }
                pending.clear();
                metrics::counter!("gateway_last_used_flushed_total").increment(ids.len() as u64);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e.describe(), keys = ids.len(), "last_used_at flush failed; will retry")
            }
            Err(_) => tracing::warn!(keys = ids.len(), "last_used_at flush timed out; will retry"),
        }
    }
}

#[async_trait]
impl BackgroundService for LastUsedFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        let mut pending = HashSet::new();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&mut rx, &mut pending).await,
                _ = shutdown.changed() => break,
            }
        }
        // Final flush on shutdown. Keys first used by requests still in
        // flight after this point are not recorded: last_used_at is
        // accurate to the flush interval, not to the request.
        self.flush(&mut rx, &mut pending).await;
        self.drained.store(true, Ordering::Release);
    }
}
