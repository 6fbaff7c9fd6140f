//! Housekeeping jobs about key expiry (DESIGN §3 "Webhooks", ISSUE 14
//! "Key-expiry events"): [`ExpiryEvents`] emits `api_key.expiring` and
//! `api_key.expired` once per key and expiry date, [`PurgeExpired`] deletes
//! keys expired for longer than `keys.purge_expired_after_days`.
//!
//! Both run under the housekeeping advisory lock, so one instance at a time
//! does them; "once" does not depend on the lock, though: it is the
//! outbox's unique dedupe key (see [`crate::store::expiry`]). Work is done
//! in bounded batches, each its own transaction, so a backlog (a first
//! deployment over many keys) spreads over rounds instead of holding one
//! huge transaction.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use uuid::Uuid;

use super::housekeeping::Job;
use crate::store::audit::{self, Actor, AuditChain, Event, Origin, Outcome};
use crate::store::expiry::{self as repo, Notice};
use crate::store::webhooks;

/// Registers the expiry jobs' metrics at zero (see [`crate::telemetry`]).
pub fn register_metrics() {
    for notice in Notice::ALL {
        metrics::counter!("gateway_key_expiry_events_total", "type" => notice.event_type())
            .absolute(0);
    }
    metrics::counter!("gateway_keys_purged_total").absolute(0);
}

/// Keys handled per transaction.
pub const BATCH: i64 = 500;
/// Batches per kind of work in one round: at most 10,000 notices of each
/// kind, or purged keys, per round; the rest waits for the next round.
pub const MAX_BATCHES_PER_ROUND: usize = 20;

/// Emits `api_key.expiring` when a key enters the notice window and
/// `api_key.expired` when its `expires_at` has passed, each once per key
/// and `expires_at`. The event's `data` is the key as `GET /keys/{id}`
/// shows it: never a secret or a hash.
pub struct ExpiryEvents {
    /// `webhooks.expiring_notice_days`, as a duration; zero sends no
    /// `api_key.expiring`.
    notice: Duration,
}

impl ExpiryEvents {
    pub fn new(notice: Duration) -> Self {
        Self { notice }
    }

    /// Emits every notice due at `now`, batch by batch; returns how many
    /// events went to the outbox.
    pub async fn emit_due(
        &self,
        db: &mut tokio_postgres::Client,
        now: DateTime<Utc>,
    ) -> anyhow::Result<u64> {
        let mut emitted = 0;
        for notice in Notice::ALL {
            for _ in 0..MAX_BATCHES_PER_ROUND {
                let tx = db.transaction().await?;
                let due = repo::due_notices(&tx, notice, now, self.notice, BATCH).await?;
                let mut new = 0u64;
                for d in &due {
                    let data = serde_json::to_value(&d.key)?;
                    let id = webhooks::enqueue_event(
                        &tx,
                        notice.event_type(),
                        data,
                        Some(&d.dedupe_key),
                    )
                    .await?;
                    new += u64::from(id.is_some());
                }
                tx.commit().await?;
                if new > 0 {
                    metrics::counter!(
                        "gateway_key_expiry_events_total",
                        "type" => notice.event_type()
                    )
                    .increment(new);
                }
                emitted += new;
                // A short batch was the last; a batch in which nothing was
                // new means the outbox refused them all, and asking again
                // would only return the same keys.
                if due.len() < BATCH as usize || new == 0 {
                    break;
                }
            }
        }
        Ok(emitted)
    }
}

#[async_trait]
impl Job for ExpiryEvents {
    fn name(&self) -> &'static str {
        "key_expiry_events"
    }

    async fn run(&self, db: &mut Object) -> anyhow::Result<()> {
        self.emit_due(db, Utc::now()).await.map(drop)
    }
}

/// Deletes keys expired for longer than `keys.purge_expired_after_days`,
/// each with an `api_key.purged` audit entry holding the key as it was.
///
/// Nothing else needs deleting with a key: no table has a foreign key to
/// `api_keys`. Audit entries, request logs and rollups keep the key id as
/// history (request logs age out by their own retention), and the NOTIFY
/// trigger on `api_keys` removes the key from every instance's snapshot,
/// after which it answers `invalid_api_key` like any unknown key.
pub struct PurgeExpired {
    after_days: u32,
    chain: AuditChain,
}

impl PurgeExpired {
    /// `after_days` 0 never purges.
    pub fn new(after_days: u32, pepper: &str) -> Self {
        Self {
            after_days,
            chain: AuditChain::new(pepper),
        }
    }

    /// Keys whose `expires_at` is before this are purged at `now`; `None`
    /// when purging is off.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.after_days == 0 {
            return None;
        }
        now.checked_sub_signed(chrono::Duration::days(i64::from(self.after_days)))
    }

    /// Who the audit log names for a purge: the gateway itself, straight
    /// against the database like the CLI (the `cli` actor, which is "no
    /// API key"), told apart from an operator by its user agent.
    fn origin() -> Origin {
        Origin {
            actor: Actor::Cli,
            client_ip: None,
            user_agent: Some(format!(
                "gateway-housekeeping/{}",
                env!("CARGO_PKG_VERSION")
            )),
            request_id: Uuid::new_v4().to_string(),
        }
    }

    /// Purges every key due at `now`, batch by batch; returns how many.
    pub async fn purge_due(
        &self,
        db: &mut tokio_postgres::Client,
        now: DateTime<Utc>,
    ) -> anyhow::Result<u64> {
        let Some(cutoff) = self.cutoff(now) else {
            return Ok(0);
        };
        let origin = Self::origin();
        let mut purged = 0;
        for _ in 0..MAX_BATCHES_PER_ROUND {
            let tx = db.transaction().await?;
            let rows = repo::purge_expired(&tx, cutoff, BATCH).await?;
            let entries: Vec<(Origin, Event<'_>)> = rows
                .iter()
                .map(|row| {
                    (
                        origin.clone(),
                        Event {
                            action: "api_key.purged",
                            target_type: "api_key",
                            target_id: row.id.to_string(),
                            before: serde_json::to_value(row).ok(),
                            after: None,
                            outcome: Outcome::Success,
                        },
                    )
                })
                .collect();
            if !entries.is_empty() {
                audit::append_all(&tx, &self.chain, &entries).await?;
            }
            tx.commit().await?;
            let n = rows.len() as u64;
            if n > 0 {
                metrics::counter!("gateway_keys_purged_total").increment(n);
                tracing::info!(keys = n, "purged long-expired keys");
            }
            purged += n;
            if rows.len() < BATCH as usize {
                break;
            }
        }
        Ok(purged)
    }
}

#[async_trait]
impl Job for PurgeExpired {
    fn name(&self) -> &'static str {
        "purge_expired_keys"
    }

    async fn run(&self, db: &mut Object) -> anyhow::Result<()> {
        self.purge_due(db, Utc::now()).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_days_never_purges_and_the_cutoff_is_that_many_days_back() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        assert_eq!(PurgeExpired::new(0, "p").cutoff(now), None);
        assert_eq!(
            PurgeExpired::new(30, "p").cutoff(now),
            DateTime::from_timestamp(1_800_000_000 - 30 * 86_400, 0)
        );
    }
}
