//! The webhook dispatcher: a background service on every instance (off
//! when `webhooks.enabled = false`).
//!
//! A round fans out undispatched events to the endpoints subscribed now,
//! then claims due deliveries (`FOR UPDATE SKIP LOCKED`, with a lease of
//! the attempt timeout plus a margin, so each attempt is made by one
//! instance and a dead instance's claim is taken over when its lease runs
//! out) and starts one task per attempt. Attempts in flight are bounded on
//! the instance (`max_in_flight`) and per endpoint
//! (`max_in_flight_per_endpoint`): an endpoint at its cap is left out of
//! the next claim, so a slow endpoint cannot take every slot.
//!
//! A round runs on a `NOTIFY webhook_events` (received on a dedicated
//! connection that reconnects with backoff), when an attempt ends, when
//! the next delivery falls due, and at least every `poll_interval` as the
//! fallback for lost notifications.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::dispatch::Dispatch;
use crate::config::DatabaseConfig;
use crate::store::webhooks as repo;
use crate::store::{self, DbError};

/// Connections of the webhook pool: claims, and recording attempts (each
/// holds one only for its short transaction).
pub const POOL_SIZE: usize = 8;
/// Events fanned out per transaction.
const FAN_OUT_BATCH: i64 = 500;
/// How often the pending gauge is refreshed at most.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bound on `LISTEN` and on the listener's heartbeat.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// Every `outcome` label of `gateway_webhook_deliveries_total`.
pub const OUTCOMES: &[&str] = &[
    "success",
    "http_status",
    "timeout",
    "connect",
    "unsafe_target",
    "redirect",
];

/// Registers the webhook metrics at zero, so dashboards and alerts see
/// them from start-up (also where no dispatcher runs).
pub fn export_metrics() {
    for outcome in OUTCOMES {
        metrics::counter!("gateway_webhook_deliveries_total", "outcome" => *outcome).increment(0);
    }
    metrics::gauge!("gateway_webhook_pending").set(0.0);
    metrics::gauge!("gateway_webhook_oldest_due_seconds").set(0.0);
    let _ = metrics::histogram!("gateway_webhook_delivery_seconds");
}

/// The backlog gauges, from the dispatcher's poll. The oldest due
/// delivery's age is what `GatewayWebhookBacklogOld` alerts on: a pending
/// count alone cannot tell a burst from a stuck queue.
fn export_backlog(b: &repo::Backlog) {
    metrics::gauge!("gateway_webhook_pending").set(b.pending as f64);
    metrics::gauge!("gateway_webhook_oldest_due_seconds").set(b.oldest_due_seconds.unwrap_or(0.0));
}

/// Attempts in flight on this instance, in all and per endpoint.
#[derive(Default)]
struct Slots {
    inner: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    per_endpoint: HashMap<Uuid, usize>,
}

impl Slots {
    /// Reserves a slot for an attempt to `endpoint` if both caps allow.
    fn reserve(&self, endpoint: Uuid, max: usize, per_endpoint: usize) -> bool {
        let mut c = self.inner.lock();
        let used = c.per_endpoint.get(&endpoint).copied().unwrap_or(0);
        if c.total >= max || used >= per_endpoint {
            return false;
        }
        c.total += 1;
        c.per_endpoint.insert(endpoint, used + 1);
        true
    }

    fn release(&self, endpoint: Uuid) {
        let mut c = self.inner.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_endpoint.get_mut(&endpoint) {
            *n -= 1;
            if *n == 0 {
                c.per_endpoint.remove(&endpoint);
            }
        }
    }

    fn free(&self, max: usize) -> usize {
        max.saturating_sub(self.inner.lock().total)
    }

    /// Endpoints at their cap: left out of the next claim.
    fn full(&self, per_endpoint: usize) -> Vec<Uuid> {
        let c = self.inner.lock();
        c.per_endpoint
            .iter()
            .filter(|(_, n)| **n >= per_endpoint)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Gives a slot back when the attempt's task ends, however it ends.
struct SlotGuard {
    slots: Arc<Slots>,
    endpoint: Uuid,
    dispatch: Dispatch,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.release(self.endpoint);
        // Room for another claim.
        self.dispatch.wake();
    }
}

pub struct Dispatcher {
    dispatch: Dispatch,
    db: DatabaseConfig,
    slots: Arc<Slots>,
}

impl Dispatcher {
    pub fn new(dispatch: Dispatch, db: DatabaseConfig) -> Self {
        Self {
            dispatch,
            db,
            slots: Arc::new(Slots::default()),
        }
    }

    /// One round; returns how long until the next delivery falls due.
    async fn round(&self, last_gauge: &mut Option<Instant>) -> Result<Option<Duration>, DbError> {
        let pool = self
            .dispatch
            .pool()
            .ok_or_else(|| DbError::Other("webhooks: no database".into()))?;
        let mut db = pool.get().await?;
        while repo::fan_out(&mut db, FAN_OUT_BATCH).await? as i64 == FAN_OUT_BATCH {}

        let cfg = &self.dispatch.config;
        let lease = self.dispatch.lease();
        loop {
            let free = self.slots.free(cfg.max_in_flight);
            if free == 0 {
                break;
            }
            let exclude = self.slots.full(cfg.max_in_flight_per_endpoint);
            let slots = self.slots.clone();
            let (max, per) = (cfg.max_in_flight, cfg.max_in_flight_per_endpoint);
            // Scan past one endpoint's backlog to reach the next endpoint.
            let scan = (free * 4).max(per * 2) as i64;
            let mut reserved = Vec::new();
            let claimed = repo::claim_due(&mut db, scan, &exclude, lease, |endpoint| {
                let ok = slots.reserve(endpoint, max, per);
                if ok {
                    reserved.push(endpoint);
                }
                ok
            })
            .await;
            // Give back every reservation no claimed delivery uses (all of
            // them when the claim's transaction failed).
            let used = claimed.as_deref().unwrap_or_default();
            for c in used {
                if let Some(i) = reserved.iter().position(|e| *e == c.webhook_id) {
                    reserved.swap_remove(i);
                }
            }
            for endpoint in reserved {
                self.slots.release(endpoint);
            }
            let claimed = claimed?;
            if claimed.is_empty() {
                break;
            }
            for c in claimed {
                let guard = SlotGuard {
                    slots: self.slots.clone(),
                    endpoint: c.webhook_id,
                    dispatch: self.dispatch.clone(),
                };
                let dispatch = self.dispatch.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let delivery = c.delivery_id;
                    if let Err(e) = dispatch.attempt(c).await {
                        tracing::warn!(delivery_id = %delivery, error = %e.describe(),
                            "webhooks: attempt not recorded; retried after its lease");
                    }
                });
            }
        }

        if last_gauge.is_none_or(|t| t.elapsed() >= GAUGE_EVERY) {
            let b = repo::backlog(&**db).await?;
            export_backlog(&b);
            *last_gauge = Some(Instant::now());
        }
        repo::next_due_in(&**db).await
    }

    /// Forwards `NOTIFY webhook_events` as wake-ups; reconnects with
    /// backoff. Runs until the task is dropped.
    async fn listen(dispatch: Dispatch, db: DatabaseConfig) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let began = Instant::now();
            if let Err(e) = Self::listen_once(&dispatch, &db).await {
                tracing::warn!(error = %e.describe(), retry_in_ms = backoff.as_millis() as u64,
                    "webhooks: lost the notification connection; polling meanwhile");
            }
            if began.elapsed() > BACKOFF_MAX * 2 {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn listen_once(dispatch: &Dispatch, db: &DatabaseConfig) -> Result<(), DbError> {
        let pg = store::pg_config(db)?;
        let (client, mut connection) = tokio::time::timeout(db.connect_timeout, pg.connect(NoTls))
            .await
            .map_err(|_| DbError::Timeout(db.connect_timeout))??;
        let wake = dispatch.clone();
        let mut driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(AsyncMessage::Notification(_)) => wake.wake(),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        bounded(
            CALL_TIMEOUT,
            client.batch_execute(&format!("LISTEN {}", repo::CHANNEL)),
        )
        .await?;
        // Events committed before LISTEN took effect are found by this round.
        dispatch.wake();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = &mut driver => {
                    return match ended {
                        Ok(Err(e)) => Err(e.into()),
                        _ => Err(DbError::Other("notification connection closed".into())),
                    };
                }
                _ = heartbeat.tick() => {
                    bounded(CALL_TIMEOUT, client.batch_execute("SELECT 1")).await?;
                }
            }
        }
    }
}

/// Awaits `fut` for at most `limit`.
async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DbError::Timeout(limit)),
    }
}

#[async_trait]
impl BackgroundService for Dispatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = tokio::spawn(Self::listen(self.dispatch.clone(), self.db.clone()));
        let poll = self.dispatch.config.poll_interval;
        let mut last_gauge = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            let wait = match self.round(&mut last_gauge).await {
                Ok(next) => {
                    backoff = BACKOFF_MIN;
                    next.map_or(poll, |d| d.min(poll))
                }
                Err(e) => {
                    tracing::warn!(error = %e.describe(), "webhooks: dispatch round failed");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    backoff.min(poll)
                }
            };
            tokio::select! {
                _ = self.dispatch.woken() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        listener.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_the_total_and_each_endpoint() {
        let s = Slots::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(s.reserve(a, 3, 2));
        assert!(s.reserve(a, 3, 2));
        assert!(!s.reserve(a, 3, 2), "per-endpoint cap");
        assert_eq!(s.full(2), vec![a]);
        assert!(s.reserve(b, 3, 2));
        assert!(!s.reserve(b, 3, 2), "total cap");
        assert_eq!(s.free(3), 0);
        s.release(a);
        assert!(s.full(2).is_empty());
        assert_eq!(s.free(3), 1);
        assert!(s.reserve(b, 3, 2));
        s.release(b);
        s.release(b);
        s.release(a);
        assert_eq!(s.free(3), 3);
        assert!(s.inner.lock().per_endpoint.is_empty());
    }
}
