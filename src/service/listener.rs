//! The key listener: a Pingora background service that owns the snapshot.
//!
//! It holds one dedicated Postgres connection (pooled connections drop
//! notifications) and drives it with `poll_message`. Per session:
//! `LISTEN`, full load, then apply notifications as they come. `LISTEN`
//! goes first so a change committed during the load is not missed; applying
//! it twice is harmless. On any error it reconnects with capped exponential
//! backoff and reloads everything, so changes made while it was away are
//! picked up. The proxy keeps serving the last snapshot meanwhile.
//!
//! Every call on the connection is bounded, and a heartbeat probes a quiet
//! link, so a half-open connection (no FIN, no RST: a dead peer, a dropped
//! NAT entry, a stuck proxy) is noticed within [`DETECT_WITHIN`] rather
//! than never. The listener publishes its state and the instant the
//! snapshot was last confirmed current for `/health`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::keys::snapshot::{KeyChange, KeySnapshot, KeyStore, ListenerState};
use crate::store::{self, DbError};

/// Channel every key change is announced on (see `sql/0001_api_keys.up.sql`).
pub const CHANNEL: &str = "api_keys_changed";
/// A silent connection is probed this often, so a half-open TCP connection
/// is noticed even when no notification arrives.
/// Registers the key listener's and snapshot's metrics at zero (see
/// [`crate::telemetry`]). The snapshot ages are set at every scrape.
pub fn register_metrics() {
    metrics::gauge!("gateway_key_snapshot_keys").set(0.0);
    metrics::gauge!("gateway_key_listener_connected").set(0.0);
    metrics::counter!("gateway_key_listener_errors_total").absolute(0);
    let _ = metrics::histogram!("gateway_key_snapshot_load_seconds");
    let _ = metrics::histogram!("gateway_key_snapshot_apply_seconds");
}

const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// Bound on each short call: `LISTEN`, the heartbeat, and loading the
/// records a burst of notifications names. A burst too large to load in
/// this time fails the session, and the reconnect's full reload covers it.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The full load fails when no row arrives for this long...
const LOAD_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// ...or when it takes longer than this in all: a million keys load in
/// about 1.3 s, so this leaves room for a hundred times more, or a slow disk.
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);
/// Worst case from a link going silent to the listener noticing: a
/// heartbeat interval plus its timeout (a notification burst in progress
/// is bounded by the same [`CALL_TIMEOUT`]).
pub const DETECT_WITHIN: Duration =
    Duration::from_secs(HEARTBEAT_EVERY.as_secs() + CALL_TIMEOUT.as_secs());
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct KeyListener {
    store: Arc<KeyStore>,
    db: DatabaseConfig,
}

impl KeyListener {
    pub fn new(store: Arc<KeyStore>, db: DatabaseConfig) -> Self {
        Self { store, db }
    }

    /// One connected session; returns only on error.
    async fn session(&self, ready: &mut Option<ServiceReadyNotifier>) -> Result<(), DbError> {
        let pg = store::pg_config(&self.db)?;
        let (client, mut connection) =
            tokio::time::timeout(self.db.connect_timeout, pg.connect(NoTls))
                .await
                .map_err(|_| DbError::Timeout(self.db.connect_timeout))??;

        // Drive the connection here, forwarding notifications; the channel
        // closing tells the session the connection is gone.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let result = self.serve(&client, &mut rx, ready).await;
        driver.abort();
        result
    }

    async fn serve(
        &self,
        client: &tokio_postgres::Client,
        rx: &mut mpsc::UnboundedReceiver<String>,
        ready: &mut Option<ServiceReadyNotifier>,
    ) -> Result<(), DbError> {
        bounded(
            CALL_TIMEOUT,
            client.batch_execute(&format!("LISTEN {CHANNEL}")),
        )
        .await?;
        let started = Instant::now();
        let mut snapshot = KeySnapshot::default();
        let count = bounded(
            LOAD_TIMEOUT,
            store::keys::load_all(client, &mut snapshot, LOAD_STALL_TIMEOUT),
        )
        .await?;
        self.store.replace(snapshot);
        self.store.confirm_current(started);
        self.store.set_listener_state(ListenerState::Connected);
        metrics::histogram!("gateway_key_snapshot_load_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            keys = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "key snapshot loaded"
        );
        if let Some(r) = ready.take() {
            r.notify_ready();
        }

        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else {
                        return Err(DbError::Other("listener connection closed".into()));
                    };
                    // Coalesce a burst into one snapshot rebuild.
                    let mut payloads = vec![first];
                    while let Ok(p) = rx.try_recv() {
                        payloads.push(p);
                    }
                    self.apply(client, payloads).await?;
                }
                _ = heartbeat.tick() => {
                    let sent = Instant::now();
                    bounded(CALL_TIMEOUT, client.simple_query("SELECT 1")).await?;
                    // The connection task forwards a notification before
                    // the reply that follows it, so an empty queue now means
                    // nothing committed before `sent` is left to apply.
                    if rx.is_empty() {
                        self.store.confirm_current(sent);
                    }
                }
            }
        }
    }

    async fn apply(
        &self,
        client: &tokio_postgres::Client,
        payloads: Vec<String>,
    ) -> Result<(), DbError> {
        let started = Instant::now();
        let ids: HashSet<Uuid> = payloads
            .iter()
            .filter_map(|p| match Uuid::parse_str(p) {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(payload = %p, "ignoring malformed key notification");
                    None
                }
            })
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let records = bounded(CALL_TIMEOUT, store::keys::load_by_ids(client, &ids)).await?;
        let found: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
        let mut changes: Vec<KeyChange> = records.into_iter().map(KeyChange::Upsert).collect();
        changes.extend(
            ids.into_iter()
                .filter(|id| !found.contains(id))
                .map(KeyChange::Remove),
        );
        let n = changes.len();
        self.store.apply(changes);
        self.store.confirm_current(started);
        metrics::histogram!("gateway_key_snapshot_apply_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(changes = n, "key changes applied");
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for KeyListener {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut ready = Some(ready);
        let mut backoff = BACKOFF_MIN;
        let mut failures: u32 = 0;
        loop {
            let began = Instant::now();
            let result = tokio::select! {
                r = self.session(&mut ready) => r,
                _ = shutdown.changed() => return,
            };
            let was = self.store.listener_state();
            // A session that connected and loaded resets the failure count.
            if was == ListenerState::Connected {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            self.store.set_listener_state(next_state(was, failures));
            if let Err(e) = result {
                metrics::counter!("gateway_key_listener_errors_total").increment(1);
                tracing::warn!(error = %e.describe(), retry_in_ms = backoff.as_millis() as u64,
                    "key listener lost its database connection; serving the cached snapshot");
            }
            // A session that lived a while earns a fresh start on backoff.
            if began.elapsed() > BACKOFF_MAX * 2 {
                backoff = BACKOFF_MIN;
            }
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Awaits `fut` for at most `limit`.
async fn bounded<T, E>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DbError>
where
    DbError: From<E>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DbError::Timeout(limit)),
    }
}

/// The state after a session ended, `failures` sessions in a row having
/// failed since the listener was last connected: the first loss is
/// `reconnecting`; a failed reconnect, or no connection yet, is `down`.
fn next_state(was: ListenerState, failures: u32) -> ListenerState {
    match was {
        ListenerState::Connected if failures <= 1 => ListenerState::Reconnecting,
        _ => ListenerState::Down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_link_is_reconnecting_then_down() {
        assert_eq!(
            next_state(ListenerState::Connected, 1),
            ListenerState::Reconnecting
        );
        assert_eq!(
            next_state(ListenerState::Reconnecting, 2),
            ListenerState::Down
        );
        assert_eq!(next_state(ListenerState::Down, 3), ListenerState::Down);
        assert_eq!(next_state(ListenerState::Starting, 1), ListenerState::Down);
    }

    #[test]
    fn a_dead_link_is_noticed_within_ten_seconds() {
        assert!(DETECT_WITHIN <= Duration::from_secs(10));
    }
}
