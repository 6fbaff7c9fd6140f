//! Key-expiry queries for housekeeping (DESIGN §3 "Webhooks"): which keys
//! are due an `api_key.expiring` or `api_key.expired` notice that was not
//! emitted yet, and the purge of long-expired keys.
//!
//! "Not emitted yet" is the outbox itself: a notice is enqueued with a
//! dedupe key (`webhook_events.dedupe_key` is unique) naming the event
//! type, the key and the `expires_at` it announces, and a key is due only
//! while no event carries that dedupe key. Putting `expires_at` in the
//! dedupe key is deliberate: a key whose expiry is moved (extended, or
//! shortened) is announced again for its new date, while the same date is
//! never announced twice, however many rounds or instances look at it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::keys::{KeyRow, KeyStatus, ROW_COLUMNS};
use super::DbError;

/// The two notices housekeeping sends about an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The key expires within `webhooks.expiring_notice_days` and is still
    /// active (not revoked, not expired).
    Expiring,
    /// The key's `expires_at` has passed and it was not revoked.
    Expired,
}

impl Notice {
    pub const ALL: [Notice; 2] = [Notice::Expiring, Notice::Expired];

    /// The webhook event type, also the first part of the dedupe key.
    pub fn event_type(self) -> &'static str {
        match self {
            Notice::Expiring => "api_key.expiring",
            Notice::Expired => "api_key.expired",
        }
    }
}

/// The dedupe key of `notice` for a row of `api_keys`, as SQL:
/// `<event type>:<key id>:<expires_at in RFC 3339 UTC with microseconds>`,
/// e.g. `api_key.expiring:0192…:2026-12-01T10:00:00.000000Z`. Written only
/// here, so the "already emitted?" probe and the key handed to the outbox
/// are the same string.
fn dedupe_sql(notice: Notice) -> String {
    format!(
        "'{}:' || id::text || ':' || \
         to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        notice.event_type()
    )
}

/// A key due a notice, with the dedupe key to enqueue it under.
#[derive(Debug, Clone)]
pub struct Due {
    /// The key as `GET /api/v1/keys/{id}` shows it, its status as of `now`.
    pub key: KeyRow,
    pub dedupe_key: String,
}

/// The status `row` has at `now`, by the rule `status_sql!` applies with
/// the database's clock: revoked wins, then expiry.
fn status_at(row: &KeyRow, now: DateTime<Utc>) -> KeyStatus {
    if row.revoked_at.is_some() {
        KeyStatus::Revoked
    } else if row.expires_at.is_some_and(|e| e <= now) {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    }
}

/// Up to `limit` keys due `notice` at `now` whose notice for their current
/// `expires_at` is not in the outbox, soonest expiry first. `window` is
/// the expiring notice (`webhooks.expiring_notice_days`); a zero window
/// sends no `api_key.expiring`. Revoked keys get neither notice: they no
/// longer work, whatever their expiry says.
pub async fn due_notices(
    client: &impl GenericClient,
    notice: Notice,
    now: DateTime<Utc>,
    window: Duration,
    limit: i64,
) -> Result<Vec<Due>, DbError> {
    let horizon = chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| now.checked_add_signed(w))
        .unwrap_or(now);
    // `expires_at <= now` is "expired" everywhere (status_sql!, the proxy).
    let (range, upper) = match notice {
        Notice::Expiring => ("expires_at > $1 AND expires_at <= $3", Some(horizon)),
        Notice::Expired => ("expires_at <= $1", None),
    };
    let sql = format!(
        "SELECT {ROW_COLUMNS}, dedupe_key FROM ( \
           SELECT *, {dedupe} AS dedupe_key FROM api_keys \
           WHERE revoked_at IS NULL AND {range} \
         ) k \
         WHERE NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.dedupe_key = k.dedupe_key) \
         ORDER BY expires_at, id LIMIT $2",
        dedupe = dedupe_sql(notice),
    );
    let rows = match upper {
        Some(upper) => client.query(&sql, &[&now, &limit, &upper]).await?,
        None => client.query(&sql, &[&now, &limit]).await?,
    };
    Ok(rows
        .iter()
        .map(|r| {
            let mut key = KeyRow::from_row(r);
            key.status = status_at(&key, now);
            Due {
                key,
                dedupe_key: r.get("dedupe_key"),
            }
        })
        .collect())
}

/// Deletes up to `limit` keys whose `expires_at` is before `cutoff`, oldest
/// expiry first, and returns them as they were. Rows another transaction
/// holds are skipped (`SKIP LOCKED`), and the condition is checked again on
/// the locked row, so a key whose expiry an admin just extended survives.
/// The NOTIFY trigger announces each delete, so every instance drops the
/// key from its snapshot on commit.
pub async fn purge_expired(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<KeyRow>, DbError> {
    let rows = client
        .query(
            &format!(
                "DELETE FROM api_keys WHERE id IN ( \
                   SELECT id FROM api_keys WHERE expires_at < $1 \
                   ORDER BY expires_at, id LIMIT $2 FOR UPDATE SKIP LOCKED \
                 ) AND expires_at < $1 RETURNING {ROW_COLUMNS}"
            ),
            &[&cutoff, &limit],
        )
        .await?;
    Ok(rows.iter().map(KeyRow::from_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn row(expires_at: Option<DateTime<Utc>>, revoked_at: Option<DateTime<Utc>>) -> KeyRow {
        KeyRow {
            id: uuid::Uuid::nil(),
            name: "k".into(),
            description: String::new(),
            prefix: "gw_live_abcd".into(),
            scopes: Vec::new(),
            roles: Vec::new(),
            effective_scopes: Vec::new(),
            rate_limits: Default::default(),
            metadata: serde_json::Value::Null,
            status: KeyStatus::Active,
            created_at: t(-100),
            updated_at: t(-100),
            expires_at,
            revoked_at,
            last_used_at: None,
            rotation: None,
            version: 1,
        }
    }

    #[test]
    fn status_at_matches_the_proxy_rule() {
        assert_eq!(status_at(&row(None, None), t(0)), KeyStatus::Active);
        assert_eq!(status_at(&row(Some(t(1)), None), t(0)), KeyStatus::Active);
        // `expires_at <= now` is expired, the same instant included.
        assert_eq!(status_at(&row(Some(t(0)), None), t(0)), KeyStatus::Expired);
        assert_eq!(
            status_at(&row(Some(t(-5)), Some(t(-9))), t(0)),
            KeyStatus::Revoked
        );
    }

    #[test]
    fn dedupe_keys_name_type_key_and_date() {
        for n in Notice::ALL {
            let sql = dedupe_sql(n);
            assert!(sql.starts_with(&format!("'{}:'", n.event_type())), "{sql}");
            assert!(sql.contains("expires_at"), "{sql}");
        }
        assert_ne!(Notice::Expiring.event_type(), Notice::Expired.event_type());
    }
}
