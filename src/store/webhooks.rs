//! Webhook tables on the dispatcher's side: the outbox insert used by every
//! key change, fan-out of events to the endpoints subscribed at dispatch
//! time, claims of due deliveries (`FOR UPDATE SKIP LOCKED` and a lease),
//! and the record of each attempt. The admin API's queries live in
//! `webhook_admin`.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use super::DbError;

/// The channel an enqueued event is announced on (at commit).
pub const CHANNEL: &str = "webhook_events";

/// A new event id: `msg_` + a time-ordered UUIDv7 in hex, so ids sort by
/// creation like a ULID.
pub fn new_event_id() -> String {
    format!("msg_{}", Uuid::now_v7().simple())
}

/// Inserts one event into the outbox (and NOTIFYs the dispatchers), in the
/// caller's transaction. `data` is the event's `data` object; the body is
/// built here. With `dedupe_key`, an event already emitted under that key
/// is not emitted again (returns None).
pub async fn enqueue_event(
    client: &impl GenericClient,
    event_type: &str,
    data: serde_json::Value,
    dedupe_key: Option<&str>,
) -> Result<Option<String>, DbError> {
    let id = new_event_id();
    let payload = json!({
        "type": event_type,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    });
    let inserted = client
        .execute(
            "INSERT INTO webhook_events (id, type, payload, dedupe_key) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&id, &event_type, &payload, &dedupe_key],
        )
        .await?;
    if inserted == 0 {
        return Ok(None);
    }
    // Delivered at commit, and not at all on rollback.
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id])
        .await?;
    Ok(Some(id))
}

/// Creates a `webhook.test` event for one endpoint and its delivery, due
/// now; the event is marked dispatched, so it never fans out to others.
/// Returns the delivery id (attempt it with `Dispatch::attempt_now`).
pub async fn create_test_delivery(
    client: &impl GenericClient,
    webhook_id: Uuid,
) -> Result<Uuid, DbError> {
    let id = new_event_id();
    let payload = json!({
        "type": TEST_EVENT,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": {"webhook_id": webhook_id},
    });
    client
        .execute(
            "INSERT INTO webhook_events (id, type, payload, dispatched_at) VALUES ($1, $2, $3, now())",
            &[&id, &TEST_EVENT, &payload],
        )
        .await?;
    let delivery = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, next_attempt_at)
             VALUES ($1, $2, $3, $4, now())",
            &[&delivery, &webhook_id, &id, &TEST_EVENT],
        )
        .await?;
    Ok(delivery)
}

/// The event `/test` sends; targeted at one endpoint, never fanned out.
pub const TEST_EVENT: &str = "webhook.test";

/// Whether an endpoint subscribed to `patterns` receives `event_type`:
/// an exact name, `prefix.*` for every event under `prefix.`, or `*`.
/// `webhook.test` goes only to the endpoint under test.
pub fn subscribed(patterns: &[String], event_type: &str) -> bool {
    if event_type == TEST_EVENT {
        return false;
    }
    patterns.iter().any(|p| {
        p == "*"
            || p == event_type
            || p.strip_suffix(".*").is_some_and(|prefix| {
                event_type
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
            })
    })
}

/// Fans out up to `batch` undispatched events, oldest first, to the
/// endpoints existing now: one delivery per (event, subscribed endpoint),
/// and the events marked dispatched, in one transaction. Events another
/// instance is fanning out are skipped. Returns how many events it took.
pub async fn fan_out(client: &mut Client, batch: i64) -> Result<usize, DbError> {
    let tx = client.transaction().await?;
    let events = tx
        .query(
            "SELECT id, type FROM webhook_events WHERE dispatched_at IS NULL
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&batch],
        )
        .await?;
    if events.is_empty() {
        return Ok(0);
    }
    // KEY SHARE: an endpoint cannot be deleted under the insert; one
    // created after this read gets none of these events.
    let endpoints = tx
        .query("SELECT id, events FROM webhooks FOR KEY SHARE", &[])
        .await?;
    let mut ids = Vec::new();
    let mut webhook_ids = Vec::new();
    let mut event_ids = Vec::new();
    let mut types = Vec::new();
    let mut taken = Vec::with_capacity(events.len());
    for ev in &events {
        let event_id: String = ev.get(0);
        let event_type: String = ev.get(1);
        for ep in &endpoints {
            let patterns: Vec<String> = ep.get(1);
            if subscribed(&patterns, &event_type) {
                ids.push(Uuid::now_v7());
                webhook_ids.push(ep.get::<_, Uuid>(0));
                event_ids.push(event_id.clone());
                types.push(event_type.clone());
            }
        }
        taken.push(event_id);
    }
    if !ids.is_empty() {
        tx.execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, next_attempt_at)
             SELECT d, w, e, t, now() FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS u(d, w, e, t)
             ON CONFLICT (event_id, webhook_id) DO NOTHING",
            &[&ids, &webhook_ids, &event_ids, &types],
        )
        .await?;
    }
    tx.execute(
        "UPDATE webhook_events SET dispatched_at = now() WHERE id = ANY($1)",
        &[&taken],
    )
    .await?;
    tx.commit().await?;
    Ok(taken.len())
}

/// A delivery claimed for one attempt, with what the attempt needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    /// Attempts made before this one.
    pub attempts: i32,
    pub url: String,
    /// Sealed secrets: the current one, then the previous one while its
    /// rotation grace lasts.
    pub secrets: Vec<Vec<u8>>,
    pub event_id: String,
    /// The exact body sent, the same bytes on every attempt.
    pub body: String,
}

const CLAIM_RETURNING: &str = "RETURNING d.id, d.webhook_id, d.attempts, w.url, w.secret,
     CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END,
     e.id, e.payload::text";

fn claimed(r: &tokio_postgres::Row) -> Claimed {
    let mut secrets = vec![r.get::<_, Vec<u8>>(4)];
    if let Some(prev) = r.get::<_, Option<Vec<u8>>>(5) {
        secrets.push(prev);
    }
    Claimed {
        delivery_id: r.get(0),
        webhook_id: r.get(1),
        attempts: r.get(2),
        url: r.get(3),
        secrets,
        event_id: r.get(6),
        body: r.get(7),
    }
}

/// Claims due deliveries of enabled endpoints, oldest due first: up to
/// `scan` candidates are locked (`SKIP LOCKED`: another instance's are
/// passed over), `pick` chooses among them by endpoint (it reserves the
/// in-flight slots), and the chosen ones get a lease of `lease`. Endpoints
/// in `exclude` (at their in-flight cap) are not considered.
pub async fn claim_due(
    client: &mut Client,
    scan: i64,
    exclude: &[Uuid],
    lease: Duration,
    mut pick: impl FnMut(Uuid) -> bool,
) -> Result<Vec<Claimed>, DbError> {
    let tx = client.transaction().await?;
    let candidates = tx
        .query(
            "SELECT d.id, d.webhook_id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
             WHERE d.status = 'pending' AND d.next_attempt_at <= now()
               AND (d.lease_until IS NULL OR d.lease_until < now())
               AND w.enabled AND NOT (d.webhook_id = ANY($1))
             ORDER BY d.next_attempt_at LIMIT $2
             FOR UPDATE OF d SKIP LOCKED",
            &[&exclude, &scan],
        )
        .await?;
    let chosen: Vec<Uuid> = candidates
        .iter()
        .filter(|r| pick(r.get(1)))
        .map(|r| r.get(0))
        .collect();
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            &format!(
                "UPDATE webhook_deliveries d SET lease_until = now() + make_interval(secs => $2)
                 FROM webhooks w, webhook_events e
                 WHERE d.id = ANY($1) AND w.id = d.webhook_id AND e.id = d.event_id
                 {CLAIM_RETURNING}"
            ),
            &[&chosen, &lease.as_secs_f64()],
        )
        .await?;
    tx.commit().await?;
    Ok(rows.iter().map(claimed).collect())
}

/// Claims one delivery for an attempt now, whatever its status and due
/// time (`/test`, `/retry`). None when it does not exist or another
/// attempt holds its lease.
pub async fn claim_one(
    client: &impl GenericClient,
    delivery: Uuid,
    lease: Duration,
) -> Result<Option<Claimed>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE webhook_deliveries d SET lease_until = now() + make_interval(secs => $2)
                 FROM webhooks w, webhook_events e
                 WHERE d.id = $1 AND w.id = d.webhook_id AND e.id = d.event_id
                   AND (d.lease_until IS NULL OR d.lease_until < now())
                 {CLAIM_RETURNING}"
            ),
            &[&delivery, &lease.as_secs_f64()],
        )
        .await?;
    Ok(row.as_ref().map(claimed))
}

/// Whether `delivery` exists and is leased (an attempt is in progress).
pub async fn leased(client: &impl GenericClient, delivery: Uuid) -> Result<Option<bool>, DbError> {
    let row = client
        .query_opt(
            "SELECT lease_until IS NOT NULL AND lease_until >= now() FROM webhook_deliveries WHERE id = $1",
            &[&delivery],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    Succeeded,
    /// Pending again, due after this delay.
    RetryIn(Duration),
    /// The schedule is exhausted.
    Failed,
}

/// One finished attempt, to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    pub at: DateTime<Utc>,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<&'static str>,
    pub duration_ms: f64,
    pub after: After,
    /// The receiver answered 410 Gone: disable the endpoint now.
    pub gone: bool,
}

/// What recording an attempt did to its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointState {
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// This attempt disabled it.
    pub just_disabled: bool,
}

/// Records an attempt in one transaction: the attempt row, the delivery's
/// new state (lease released), and the endpoint's counters. A 410, or the
/// `disable_after`-th failure in a row, disables the endpoint.
pub async fn record_attempt(
    client: &mut Client,
    a: &AttemptRecord,
    disable_after: u32,
) -> Result<Option<EndpointState>, DbError> {
    let tx = client.transaction().await?;
    let status = a.response_status.map(|s| s as i16);
    tx.execute(
        // Nothing when the endpoint (and so the delivery) was deleted
        // while the attempt was in flight.
        "INSERT INTO webhook_attempts (delivery_id, at, response_status, error, duration_ms)
         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)",
        &[&a.delivery_id, &a.at, &status, &a.error, &a.duration_ms],
    )
    .await?;
    let (state, retry_secs): (&str, Option<f64>) = match a.after {
        After::Succeeded => ("succeeded", None),
        After::RetryIn(d) => ("pending", Some(d.as_secs_f64())),
        After::Failed => ("failed", None),
    };
    tx.execute(
        "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, last_attempt_at = $3,
             response_status = $4, response_body = $5, error = $6, duration_ms = $7,
             next_attempt_at = CASE WHEN $8::float8 IS NULL THEN NULL
                                    ELSE $3::timestamptz + make_interval(secs => $8::float8) END,
             lease_until = NULL
         WHERE id = $1",
        &[
            &a.delivery_id,
            &state,
            &a.at,
            &status,
            &a.response_body,
            &a.error,
            &a.duration_ms,
            &retry_secs,
        ],
    )
    .await?;
    let row = if a.error.is_none() {
        tx.query_opt(
            "UPDATE webhooks SET succeeded = succeeded + 1, consecutive_failures = 0,
                 last_success_at = $2
             WHERE id = $1
             RETURNING enabled, disabled_reason, false",
            &[&a.webhook_id, &a.at],
        )
        .await?
    } else {
        let limit = disable_after as i32;
        tx.query_opt(
            "WITH old AS (SELECT enabled FROM webhooks WHERE id = $1 FOR UPDATE)
             UPDATE webhooks w SET failed = w.failed + 1,
                 consecutive_failures = w.consecutive_failures + 1,
                 last_failure_at = $2,
                 enabled = CASE WHEN $3 OR w.consecutive_failures + 1 >= $4 THEN false
                                ELSE w.enabled END,
                 disabled_reason = CASE WHEN NOT w.enabled THEN w.disabled_reason
                                        WHEN $3 THEN 'gone'
                                        WHEN w.consecutive_failures + 1 >= $4 THEN 'consecutive_failures'
                                        ELSE w.disabled_reason END,
                 updated_at = CASE WHEN w.enabled AND ($3 OR w.consecutive_failures + 1 >= $4)
                                   THEN now() ELSE w.updated_at END
             FROM old
             WHERE w.id = $1
             RETURNING w.enabled, w.disabled_reason, old.enabled AND NOT w.enabled",
            &[&a.webhook_id, &a.at, &a.gone, &limit],
        )
        .await?
    };
    tx.commit().await?;
    Ok(row.map(|r| EndpointState {
        enabled: r.get(0),
        disabled_reason: r.get(1),
        just_disabled: r.get(2),
    }))
}

/// Releases a claim without an attempt (e.g. the secret could not be
/// opened): the delivery is due again after `delay`.
pub async fn release(
    client: &impl GenericClient,
    delivery: Uuid,
    delay: Duration,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE webhook_deliveries SET lease_until = NULL,
                 next_attempt_at = now() + make_interval(secs => $2)
             WHERE id = $1",
            &[&delivery, &delay.as_secs_f64()],
        )
        .await?;
    Ok(())
}

/// Time until the next delivery of an enabled endpoint is due (now or a
/// lease expiring), or None when nothing is pending.
pub async fn next_due_in(client: &impl GenericClient) -> Result<Option<Duration>, DbError> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM min(greatest(d.next_attempt_at, d.lease_until)) - now())::float8
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
             WHERE d.status = 'pending' AND w.enabled",
            &[],
        )
        .await?;
    let secs: Option<f64> = row.get(0);
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// The backlog `/health` and the metrics show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Events not yet fanned out.
    pub outbox: i64,
    /// Deliveries pending (due or waiting for a retry or a disabled endpoint).
    pub pending: i64,
    /// Deliveries due now on enabled endpoints.
    pub due: i64,
    /// Age of the oldest due delivery, seconds.
    pub oldest_due_seconds: Option<f64>,
}

pub async fn backlog(client: &impl GenericClient) -> Result<Backlog, DbError> {
    let row = client
        .query_one(
            "SELECT
               (SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL),
               (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
               count(*),
               extract(epoch FROM now() - min(d.next_attempt_at))::float8
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
             WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND w.enabled",
            &[],
        )
        .await?;
    Ok(Backlog {
        outbox: row.get(0),
        pending: row.get(1),
        due: row.get(2),
        oldest_due_seconds: row.get::<_, Option<f64>>(3).map(|s| s.max(0.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subscriptions_match_exact_names_prefixes_and_star() {
        assert!(subscribed(&pats(&["api_key.created"]), "api_key.created"));
        assert!(!subscribed(&pats(&["api_key.revoked"]), "api_key.created"));
        assert!(subscribed(&pats(&["api_key.*"]), "api_key.expiring"));
        assert!(!subscribed(&pats(&["api_key.*"]), "api_keyx.created"));
        assert!(!subscribed(&pats(&["api_key.*"]), "api_key"));
        assert!(subscribed(&pats(&["*"]), "api_key.rotated"));
        assert!(!subscribed(&pats(&[]), "api_key.rotated"));
        assert!(subscribed(
            &pats(&["api_key.revoked", "api_key.created"]),
            "api_key.created"
        ));
        for p in ["*", "webhook.*", "webhook.test"] {
            assert!(!subscribed(&pats(&[p]), TEST_EVENT), "{p}");
        }
    }

    #[test]
    fn event_ids_are_msg_prefixed_and_time_ordered() {
        let a = new_event_id();
        let b = new_event_id();
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert!(a < b, "{a} {b}");
    }
}
