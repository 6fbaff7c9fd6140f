//! The audit of refused admin calls (401/403): one bounded queue, one writer.
//!
//! A flood of bad credentials must neither pile up tasks nor hold pool
//! connections and the audit chain's append lock against real writes. The
//! admin handler only `try_send`s a [`Denial`]; a full queue drops it and
//! counts it (`gateway_audit_dropped_total{reason="queue_full"}`), it never
//! waits. One background writer drains the queue every [`FLUSH_INTERVAL`],
//! folds repeats (same actor, client IP, code, endpoint and minute) into one
//! entry whose `after.count` says how many calls it stands for, and writes
//! the batch in one transaction on one pooled connection, so the chain
//! stays one ordered list and `gateway audit verify` checks it as before.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use tokio::sync::mpsc;

use crate::service::keys::KeyService;

/// `reason` labels of `gateway_audit_dropped_total`.
const DROP_QUEUE_FULL: &str = "queue_full";
const DROP_BACKLOG: &str = "backlog";
const DROP_WRITE_FAILED: &str = "write_failed";

/// Registers the denial audit's metrics at zero (see [`crate::telemetry`]).
pub fn register_metrics() {
    for reason in [DROP_QUEUE_FULL, DROP_BACKLOG, DROP_WRITE_FAILED] {
        metrics::counter!("gateway_audit_dropped_total", "reason" => reason).absolute(0);
    }
    metrics::counter!("gateway_audit_denials_recorded_total").absolute(0);
}
use crate::store::audit::{Actor, Event, Origin, Outcome};

/// Refusals waiting for the writer; beyond this they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 4096;
/// How often the writer drains the queue and writes one batch.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Folded entries kept while the database cannot take them; a refusal that
/// would start another entry beyond this is dropped and counted.
pub const MAX_FOLDED: usize = 1024;
/// Bound on one batch write, so a hung database does not stall the writer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One refused admin call.
#[derive(Debug, Clone)]
pub struct Denial {
    pub origin: Origin,
    /// `METHOD /path`.
    pub endpoint: String,
    pub code: &'static str,
    pub message: String,
    /// When it was refused.
    pub at: DateTime<Utc>,
}

/// The handler's side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct DenialAudit {
    tx: mpsc::Sender<Denial>,
}

impl DenialAudit {
    pub fn record(&self, denial: Denial) {
        if self.tx.try_send(denial).is_err() {
            // No log line per drop: under a flood that would be a second flood.
            metrics::counter!("gateway_audit_dropped_total", "reason" => DROP_QUEUE_FULL)
                .increment(1);
        }
    }
}

/// What makes two refusals "the same" for folding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FoldKey {
    actor: Actor,
    client_ip: Option<String>,
    code: &'static str,
    endpoint: String,
    /// Unix minute of the refusal.
    minute: i64,
}

#[derive(Debug)]
struct Folded {
    first: Denial,
    last_at: DateTime<Utc>,
    count: u64,
}

/// Refusals folded by [`FoldKey`], waiting to be written.
#[derive(Debug, Default)]
pub struct Fold {
    entries: HashMap<FoldKey, Folded>,
}

impl Fold {
    /// Adds one refusal. `false` (and nothing added) when it would start a
    /// new entry while `max` entries are already waiting.
    pub fn add(&mut self, d: Denial, max: usize) -> bool {
        let key = FoldKey {
            actor: d.origin.actor,
            client_ip: d.origin.client_ip.clone(),
            code: d.code,
            endpoint: d.endpoint.clone(),
            minute: d.at.timestamp().div_euclid(60),
        };
        if let Some(f) = self.entries.get_mut(&key) {
            f.count += 1;
            f.last_at = f.last_at.max(d.at);
            return true;
        }
        if self.entries.len() >= max {
            return false;
        }
        self.entries.insert(
            key,
            Folded {
                last_at: d.at,
                first: d,
                count: 1,
            },
        );
        true
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Refusals the waiting entries stand for.
    pub fn total(&self) -> u64 {
        self.entries.values().map(|f| f.count).sum()
    }

    /// The audit entries, oldest first. The origin (request id, user agent)
    /// is the first refusal's; `after` carries the code, the message, the
    /// count and the first and last time.
    pub fn events(&self) -> Vec<(Origin, Event<'static>)> {
        let mut folded: Vec<&Folded> = self.entries.values().collect();
        folded.sort_by_key(|f| (f.first.at, f.first.origin.request_id.clone()));
        folded
            .into_iter()
            .map(|f| {
                let event = Event {
                    action: "admin.access_denied",
                    target_type: "endpoint",
                    target_id: f.first.endpoint.clone(),
                    before: None,
                    after: Some(json!({
                        "code": f.first.code,
                        "message": f.first.message,
                        "count": f.count,
                        "first_at": f.first.at,
                        "last_at": f.last_at,
                    })),
                    outcome: Outcome::Denied,
                };
                (f.first.origin.clone(), event)
            })
            .collect()
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The background side: drains, folds and writes.
pub struct DenialWriter {
    rx: tokio::sync::Mutex<mpsc::Receiver<Denial>>,
    pool: Pool,
    service: KeyService,
}

pub fn channel(pool: Pool, service: KeyService) -> (DenialAudit, DenialWriter) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    (
        DenialAudit { tx },
        DenialWriter {
            rx: tokio::sync::Mutex::new(rx),
            pool,
            service,
        },
    )
}

impl DenialWriter {
    async fn flush(&self, rx: &mut mpsc::Receiver<Denial>, fold: &mut Fold) {
        while let Ok(d) = rx.try_recv() {
            if !fold.add(d, MAX_FOLDED) {
                metrics::counter!("gateway_audit_dropped_total", "reason" => DROP_BACKLOG)
                    .increment(1);
            }
        }
        if fold.is_empty() {
            return;
        }
        let entries = fold.events();
        let write = async {
            let mut client = self.pool.get().await?;
            self.service.record_denials(&mut client, &entries).await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                metrics::counter!("gateway_audit_denials_recorded_total").increment(fold.total());
                fold.clear();
            }
            // Kept (folded, bounded) and retried at the next interval.
            Ok(Err(e)) => tracing::warn!(
                error = %e.describe(),
                entries = fold.len(),
                "audit of refused admin calls failed; will retry"
            ),
            Err(_) => tracing::warn!(
                entries = fold.len(),
                "audit of refused admin calls timed out; will retry"
            ),
        }
    }
}

#[async_trait]
impl BackgroundService for DenialWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        let mut fold = Fold::default();
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&mut rx, &mut fold).await,
                _ = shutdown.changed() => break,
            }
        }
        // One last batch; what the database cannot take now is lost.
        self.flush(&mut rx, &mut fold).await;
        if !fold.is_empty() {
            metrics::counter!("gateway_audit_dropped_total", "reason" => DROP_WRITE_FAILED)
                .increment(fold.total());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(ip: &str, code: &'static str, endpoint: &str, at_secs: i64) -> Denial {
        Denial {
            origin: Origin {
                actor: Actor::Anonymous,
                client_ip: Some(ip.to_string()),
                user_agent: None,
                request_id: format!("r{at_secs}"),
            },
            endpoint: endpoint.to_string(),
            code,
            message: "m".into(),
            at: DateTime::from_timestamp(1_800_000_000 + at_secs, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn repeats_fold_into_one_entry_per_ip_code_endpoint_and_minute() {
        let mut f = Fold::default();
        // 1_800_000_000 starts a minute: 0..59 s is one minute, 65 the next.
        for s in 0..30 {
            assert!(f.add(denial("10.0.0.1", "invalid_api_key", "GET /a", s), 100));
        }
        assert!(f.add(denial("10.0.0.2", "invalid_api_key", "GET /a", 1), 100));
        assert!(f.add(denial("10.0.0.1", "missing_api_key", "GET /a", 1), 100));
        assert!(f.add(denial("10.0.0.1", "invalid_api_key", "GET /b", 1), 100));
        assert!(f.add(denial("10.0.0.1", "invalid_api_key", "GET /a", 65), 100));
        assert_eq!((f.len(), f.total()), (5, 34));

        let events = f.events();
        let counts: Vec<u64> = events
            .iter()
            .map(|(_, e)| {
                e.after
                    .as_ref()
                    .and_then(|a| a["count"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 34);
        let (origin, first) = &events[0];
        assert_eq!(origin.request_id, "r0", "oldest first, with its own origin");
        assert_eq!(
            first.after.as_ref().map(|a| a["count"].clone()),
            Some(json!(30))
        );
        assert_eq!(first.outcome, Outcome::Denied);
        assert_eq!(first.target_id, "GET /a");
    }

    #[test]
    fn a_full_fold_still_counts_repeats_but_starts_no_new_entry() {
        let mut f = Fold::default();
        assert!(f.add(denial("10.0.0.1", "invalid_api_key", "GET /a", 0), 1));
        assert!(!f.add(denial("10.0.0.2", "invalid_api_key", "GET /a", 0), 1));
        assert!(f.add(denial("10.0.0.1", "invalid_api_key", "GET /a", 1), 1));
        assert_eq!((f.len(), f.total()), (1, 2));
    }
}
