//! Webhook endpoints as the admin API and the CLI manage them: create,
//! list, read, update, delete, rotate the secret, list deliveries and replay
//! one. The dispatcher's queries (outbox, claims, attempts) are in
//! [`super::webhooks`].
//!
//! Every change runs in one transaction with its audit entry (target type
//! `webhook`), so the change and its record commit together. Secrets are
//! generated and sealed here and returned only by [`WebhookOps::create`] and
//! [`WebhookOps::rotate_secret`]; a [`WebhookRow`] has no secret field, so
//! neither lists, reads nor audit entries can carry one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use super::audit::{self, AuditChain, Event, Origin, Outcome};
use super::DbError;
use crate::webhooks::secret::{self, SecretBox};

/// The events an endpoint may subscribe to by name (DESIGN §3
/// "Webhooks"); `api_key.*` and `*` subscribe to groups. `webhook.test` is
/// sent only by `/test`, to the endpoint under test.
pub const EVENT_TYPES: &[&str] = &[
    "api_key.created",
    "api_key.updated",
    "api_key.rotated",
    "api_key.revoked",
    "api_key.expiring",
    "api_key.expired",
];
/// Longest endpoint URL.
pub const MAX_URL: usize = 2048;
/// Longest endpoint description.
pub const MAX_DESCRIPTION: usize = 1000;
/// Most entries in an endpoint's `events`.
pub const MAX_EVENTS: usize = 20;
/// Default grace of a secret rotation: the old secret signs too for a day.
pub const DEFAULT_SECRET_GRACE: Duration = Duration::from_secs(86_400);
/// Longest grace of a secret rotation (7 days).
pub const MAX_SECRET_GRACE: Duration = Duration::from_secs(604_800);

/// Whether `pattern` is something an endpoint can subscribe to: a known
/// event name, `api_key.*` or `*`.
pub fn is_event_pattern(pattern: &str) -> bool {
    pattern == "*" || pattern == "api_key.*" || EVENT_TYPES.contains(&pattern)
}

/// Checks an `events` list: 1 to [`MAX_EVENTS`] patterns, duplicates
/// dropped, order kept. `Err` carries the index of the bad entry (None for
/// the list itself) and why.
pub fn check_events(list: &[String]) -> Result<Vec<String>, (Option<usize>, String)> {
    if list.is_empty() {
        return Err((None, "Give at least one event.".into()));
    }
    if list.len() > MAX_EVENTS {
        return Err((None, format!("At most {MAX_EVENTS} events.")));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        if !is_event_pattern(e) {
            return Err((
                Some(i),
                format!(
                    "Unknown event; use one of {}, `api_key.*` or `*`.",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// Columns of a [`WebhookRow`], in the order [`WebhookRow::from_row`] reads them.
const ROW_COLUMNS: &str = "id, url, description, events, enabled, disabled_reason, created_at, \
     updated_at, succeeded, failed, consecutive_failures, last_success_at, last_failure_at";

/// Columns of a [`DeliveryRow`], in the order [`DeliveryRow::from_row`] reads them.
const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, status, attempts, \
     created_at, last_attempt_at, next_attempt_at, response_status, response_body, error, \
     duration_ms";

/// An endpoint as operators see it: never its secret.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WebhookRow {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub enabled: bool,
    /// `consecutive_failures`, `gone` or `manual` while disabled.
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub stats: Stats,
}

/// Delivery counters of one endpoint, kept by the dispatcher.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub succeeded: i64,
    pub failed: i64,
    pub consecutive_failures: i32,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

impl WebhookRow {
    fn from_row(r: &Row) -> WebhookRow {
        WebhookRow {
            id: r.get(0),
            url: r.get(1),
            description: r.get(2),
            events: r.get(3),
            enabled: r.get(4),
            disabled_reason: r.get(5),
            created_at: r.get(6),
            updated_at: r.get(7),
            stats: Stats {
                succeeded: r.get(8),
                failed: r.get(9),
                consecutive_failures: r.get(10),
                last_success_at: r.get(11),
                last_failure_at: r.get(12),
            },
        }
    }
}

/// An endpoint with its signing secret: the create and rotate answers only.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub row: WebhookRow,
    /// `whsec_…`, shown only now.
    pub secret: String,
}

/// The answer of a secret rotation.
#[derive(Debug, Clone, Serialize)]
pub struct RotatedSecret {
    /// The new `whsec_…`, shown only now.
    pub secret: String,
    /// Until then deliveries are signed with the old secret too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// A validated new endpoint (the URL has passed the SSRF guard).
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub enabled: bool,
}

/// Fields of an update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub response_status: Option<i16>,
    /// The first 1 KiB of the last response body.
    pub response_body: Option<String>,
    /// `timeout`, `connect`, `unsafe_target`, `redirect` or `http_status`.
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
}

impl DeliveryRow {
    fn from_row(r: &Row) -> DeliveryRow {
        DeliveryRow {
            id: r.get(0),
            webhook_id: r.get(1),
            event_id: r.get(2),
            event_type: r.get(3),
            status: r.get(4),
            attempts: r.get(5),
            created_at: r.get(6),
            last_attempt_at: r.get(7),
            next_attempt_at: r.get(8),
            response_status: r.get(9),
            response_body: r.get(10),
            error: r.get(11),
            duration_ms: r.get(12),
        }
    }
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub at: DateTime<Utc>,
    pub response_status: Option<i16>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

/// A delivery with every attempt made, oldest first: `attempts` here is the
/// list, where a [`DeliveryRow`] has the count.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryWithoutCount,
    pub attempts: Vec<AttemptRow>,
}

/// [`DeliveryRow`] without `attempts` (the count), for [`DeliveryDetail`].
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryWithoutCount {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub response_status: Option<i16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
}

impl From<DeliveryRow> for DeliveryWithoutCount {
    fn from(d: DeliveryRow) -> Self {
        DeliveryWithoutCount {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            created_at: d.created_at,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            response_status: d.response_status,
            response_body: d.response_body,
            error: d.error,
            duration_ms: d.duration_ms,
        }
    }
}

/// Filters of a delivery listing; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub event_type: Option<String>,
    /// Only deliveries listed after this id (the cursor): UUIDv7, newest first.
    pub after_id: Option<Uuid>,
}

/// Endpoints newest first (ids are UUIDv7), at most `limit`, after the
/// cursor `after_id`.
pub async fn list(
    client: &impl GenericClient,
    after_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<WebhookRow>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {ROW_COLUMNS} FROM webhooks WHERE ($1::uuid IS NULL OR id < $1) \
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&after_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(WebhookRow::from_row).collect())
}

pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<WebhookRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM webhooks WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(WebhookRow::from_row))
}

async fn get_for_update(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<WebhookRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM webhooks WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(WebhookRow::from_row))
}

/// Deliveries of endpoint `webhook_id`, newest first.
pub async fn list_deliveries(
    client: &impl GenericClient,
    webhook_id: Uuid,
    f: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<DeliveryRow>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
                 WHERE webhook_id = $1 \
                   AND ($2::text IS NULL OR status = $2) \
                   AND ($3::text IS NULL OR event_type = $3) \
                   AND ($4::uuid IS NULL OR id < $4) \
                 ORDER BY id DESC LIMIT $5"
            ),
            &[&webhook_id, &f.status, &f.event_type, &f.after_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(DeliveryRow::from_row).collect())
}

pub async fn get_delivery(
    client: &impl GenericClient,
    webhook_id: Uuid,
    delivery_id: Uuid,
) -> Result<Option<DeliveryRow>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
                 WHERE id = $1 AND webhook_id = $2"
            ),
            &[&delivery_id, &webhook_id],
        )
        .await?;
    Ok(row.as_ref().map(DeliveryRow::from_row))
}

/// A delivery with its attempts, oldest first.
pub async fn get_delivery_detail(
    client: &impl GenericClient,
    webhook_id: Uuid,
    delivery_id: Uuid,
) -> Result<Option<DeliveryDetail>, DbError> {
    let Some(delivery) = get_delivery(client, webhook_id, delivery_id).await? else {
        return Ok(None);
    };
    let attempts = client
        .query(
            "SELECT at, response_status, error, duration_ms FROM webhook_attempts \
             WHERE delivery_id = $1 ORDER BY id",
            &[&delivery_id],
        )
        .await?
        .iter()
        .map(|r| AttemptRow {
            at: r.get(0),
            response_status: r.get(1),
            error: r.get(2),
            duration_ms: r.get(3),
        })
        .collect();
    Ok(Some(DeliveryDetail {
        delivery: delivery.into(),
        attempts,
    }))
}

fn webhook_event<'a>(
    action: &'a str,
    id: Uuid,
    before: Option<&WebhookRow>,
    after: Option<&WebhookRow>,
) -> Event<'a> {
    Event {
        action,
        target_type: "webhook",
        target_id: id.to_string(),
        before: before.and_then(|r| serde_json::to_value(r).ok()),
        after: after.and_then(|r| serde_json::to_value(r).ok()),
        outcome: Outcome::Success,
    }
}

/// The audited write operations, with what they need to seal secrets and
/// chain audit entries.
pub struct WebhookOps<'a> {
    pub secrets: &'a SecretBox,
    pub chain: &'a AuditChain,
}

impl WebhookOps<'_> {
    /// Creates an endpoint with a new secret, returned (only) here.
    pub async fn create(
        &self,
        client: &mut Client,
        origin: &Origin,
        new: &NewWebhook,
    ) -> Result<CreatedWebhook, DbError> {
        let secret = secret::generate();
        let sealed = self.secrets.seal(&secret);
        let disabled_reason = (!new.enabled).then_some("manual");
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO webhooks (id, url, description, events, enabled, disabled_reason, secret) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ROW_COLUMNS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &new.url,
                    &new.description,
                    &new.events,
                    &new.enabled,
                    &disabled_reason,
                    &sealed,
                ],
            )
            .await?;
        let row = WebhookRow::from_row(&row);
        let event = webhook_event("webhook.created", row.id, None, Some(&row));
        audit::append(&tx, self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(CreatedWebhook { row, secret })
    }

    /// Applies `change`. Enabling a disabled endpoint resets its failure
    /// count, clears `disabled_reason` and makes its waiting deliveries due
    /// now; disabling sets `disabled_reason` to `manual`. None: no such
    /// endpoint.
    pub async fn update(
        &self,
        client: &mut Client,
        origin: &Origin,
        id: Uuid,
        change: WebhookUpdate,
    ) -> Result<Option<WebhookRow>, DbError> {
        let tx = client.transaction().await?;
        let Some(before) = get_for_update(&tx, id).await? else {
            return Ok(None);
        };
        let enabled = change.enabled.unwrap_or(before.enabled);
        let (disabled_reason, reset) = match (before.enabled, enabled) {
            (false, true) => (None, true),
            (true, false) => (Some("manual".to_string()), false),
            _ => (before.disabled_reason.clone(), false),
        };
        let row = tx
            .query_one(
                &format!(
                    "UPDATE webhooks SET url = $2, description = $3, events = $4, enabled = $5, \
                     disabled_reason = $6, \
                     consecutive_failures = CASE WHEN $7 THEN 0 ELSE consecutive_failures END, \
                     updated_at = now() \
                     WHERE id = $1 RETURNING {ROW_COLUMNS}"
                ),
                &[
                    &id,
                    &change.url.as_ref().unwrap_or(&before.url),
                    &change.description.as_ref().unwrap_or(&before.description),
                    &change.events.as_ref().unwrap_or(&before.events),
                    &enabled,
                    &disabled_reason,
                    &reset,
                ],
            )
            .await?;
        let after = WebhookRow::from_row(&row);
        if reset {
            // Re-enabled: what waited (possibly for a long backoff step)
            // resumes at once.
            tx.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() \
                 WHERE webhook_id = $1 AND status = 'pending' \
                   AND (next_attempt_at IS NULL OR next_attempt_at > now())",
                &[&id],
            )
            .await?;
        }
        let event = webhook_event("webhook.updated", id, Some(&before), Some(&after));
        audit::append(&tx, self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    /// Deletes an endpoint; its deliveries and their attempts go with it
    /// (the schema cascades), so nothing pending is attempted any more.
    /// False: no such endpoint.
    pub async fn delete(
        &self,
        client: &mut Client,
        origin: &Origin,
        id: Uuid,
    ) -> Result<bool, DbError> {
        let tx = client.transaction().await?;
        let Some(before) = get_for_update(&tx, id).await? else {
            return Ok(false);
        };
        tx.execute("DELETE FROM webhooks WHERE id = $1", &[&id])
            .await?;
        let event = webhook_event("webhook.deleted", id, Some(&before), None);
        audit::append(&tx, self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives the endpoint a new secret; the old one keeps signing too (a
    /// second signature) for `grace`, 0 ending it at once. A rotation during
    /// a grace replaces the older secret. None: no such endpoint.
    pub async fn rotate_secret(
        &self,
        client: &mut Client,
        origin: &Origin,
        id: Uuid,
        grace: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<RotatedSecret>, DbError> {
        let secret = secret::generate();
        let sealed = self.secrets.seal(&secret);
        let expires_at = (!grace.is_zero())
            .then(|| chrono::Duration::from_std(grace).ok().map(|g| now + g))
            .flatten();
        let tx = client.transaction().await?;
        let Some(before) = get_for_update(&tx, id).await? else {
            return Ok(None);
        };
        let row = tx
            .query_one(
                &format!(
                    "UPDATE webhooks SET \
                     previous_secret = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE secret END, \
                     previous_secret_expires_at = $3, secret = $2, updated_at = now() \
                     WHERE id = $1 RETURNING {ROW_COLUMNS}"
                ),
                &[&id, &sealed, &expires_at],
            )
            .await?;
        let after = WebhookRow::from_row(&row);
        let event = webhook_event("webhook.secret_rotated", id, Some(&before), Some(&after));
        audit::append(&tx, self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(Some(RotatedSecret {
            secret,
            previous_secret_expires_at: expires_at,
        }))
    }

    /// Creates a `webhook.test` event for this endpoint only and its
    /// delivery, audited. Returns the delivery id (None: no such endpoint);
    /// the caller attempts it now.
    pub async fn create_test(
        &self,
        client: &mut Client,
        origin: &Origin,
        id: Uuid,
    ) -> Result<Option<Uuid>, DbError> {
        let tx = client.transaction().await?;
        if get_for_update(&tx, id).await?.is_none() {
            return Ok(None);
        }
        let delivery = super::webhooks::create_test_delivery(&tx, id).await?;
        let event = Event {
            action: "webhook.tested",
            target_type: "webhook",
            target_id: id.to_string(),
            before: None,
            after: Some(serde_json::json!({ "delivery_id": delivery })),
            outcome: Outcome::Success,
        };
        audit::append(&tx, self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(Some(delivery))
    }

    /// Makes a delivery due now whatever its state (an exhausted `failed`
    /// one included): `pending` and due now. A lease held by an attempt in
    /// flight stays, so the two never overlap. The dispatcher then
    /// makes one more attempt; if it fails and the schedule is spent, the
    /// delivery is `failed` again. None: no such delivery of this endpoint.
    pub async fn retry_delivery(
        &self,
        client: &mut Client,
        origin: &Origin,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<Option<DeliveryRow>, DbError> {
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now() \
                     WHERE id = $1 AND webhook_id = $2 \
                     RETURNING {DELIVERY_COLUMNS}"
                ),
                &[&delivery_id, &webhook_id],
            )
            .await?;
        let Some(row) = row.as_ref().map(DeliveryRow::from_row) else {
            return Ok(None);
        };
        let event = Event {
            action: "webhook.delivery_retried",
            target_type: "webhook",
            target_id: webhook_id.to_string(),
            before: None,
            after: Some(serde_json::json!({
                "delivery_id": row.id,
                "event_id": row.event_id,
                "event_type": row.event_type,
            })),
            outcome: Outcome::Success,
        };
        audit::append(&tx, self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(Some(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn events_are_known_names_api_key_star_or_star() {
        assert_eq!(
            check_events(&strings(&[
                "api_key.created",
                "*",
                "api_key.*",
                "api_key.created"
            ])),
            Ok(strings(&["api_key.created", "*", "api_key.*"]))
        );
        for (bad, at) in [
            (strings(&[]), None),
            (strings(&["api_key.created", "api_key.nope"]), Some(1)),
            (strings(&["webhook.test"]), Some(0)),
            (strings(&["api_key"]), Some(0)),
            (strings(&["*.*"]), Some(0)),
            (strings(&["API_KEY.CREATED"]), Some(0)),
            (vec!["*".to_string(); MAX_EVENTS + 1], None),
        ] {
            assert_eq!(check_events(&bad).map_err(|e| e.0), Err(at), "{bad:?}");
        }
    }

    #[test]
    fn a_webhook_row_serialises_without_any_secret() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let row = WebhookRow {
            id: Uuid::nil(),
            url: "https://example.com/hook".into(),
            description: String::new(),
            events: strings(&["*"]),
            enabled: true,
            disabled_reason: None,
            created_at: at,
            updated_at: at,
            stats: Stats {
                succeeded: 0,
                failed: 0,
                consecutive_failures: 0,
                last_success_at: None,
                last_failure_at: None,
            },
        };
        let v = serde_json::to_value(&row).expect("json");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert!(!keys.iter().any(|k| k.contains("secret")), "{keys:?}");
    }
}
