//! The `audit_log` repository: appending chained entries, reading them back,
//! and verifying the chain.
//!
//! Each entry's `hash` is a keyed BLAKE3 hash over the previous entry's hash
//! and this entry's canonical form (every stored field, length-prefixed).
//! The key is derived from the server pepper, so someone with write access
//! to the table but not the pepper cannot forge a consistent chain. Appends
//! take a transaction-level advisory lock, so the chain order is the id
//! order. Deleting the newest entries is only detectable against a hash
//! recorded elsewhere; `gateway audit verify` prints the head hash for that.

use chrono::{DateTime, Utc};
use futures_util::{pin_mut, TryStreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

use super::DbError;

/// Arbitrary constant naming the advisory lock that serialises appends.
const APPEND_LOCK_ID: i64 = 0x6761_7465_7761_7902;

/// `prev_hash` of the first entry.
const GENESIS: [u8; 32] = [0; 32];

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// An API key on the admin API.
    Key(Uuid),
    /// The `gateway` CLI, straight against the database.
    Cli,
    /// A caller that presented no usable key.
    Anonymous,
}

impl Actor {
    fn kind(self) -> &'static str {
        match self {
            Actor::Key(_) => "key",
            Actor::Cli => "cli",
            Actor::Anonymous => "anonymous",
        }
    }

    fn key_id(self) -> Option<Uuid> {
        match self {
            Actor::Key(id) => Some(id),
            _ => None,
        }
    }
}

/// Where a change came from: the same for every entry of one request.
#[derive(Debug, Clone)]
pub struct Origin {
    pub actor: Actor,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
}

impl Origin {
    /// A CLI invocation, with a fresh request id to find it by.
    pub fn cli() -> Origin {
        Origin {
            actor: Actor::Cli,
            client_ip: None,
            user_agent: Some(format!("gateway-cli/{}", env!("CARGO_PKG_VERSION"))),
            request_id: Uuid::new_v4().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
        }
    }
}

/// One thing that happened, before it is chained and stored.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// e.g. `api_key.rotated`.
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: String,
    /// States with secrets removed; the caller guarantees that.
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub outcome: Outcome,
}

/// The key that chains entries, derived from the pepper.
#[derive(Clone)]
pub struct AuditChain {
    key: [u8; 32],
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditChain(<redacted>)")
    }
}

/// The stored fields of one entry, as the hash sees them.
struct Canonical<'a> {
    occurred_at_us: i64,
    actor_type: &'a str,
    actor_key_id: Option<Uuid>,
    action: &'a str,
    target_type: &'a str,
    target_id: &'a str,
    /// Postgres's own text rendering of the jsonb value, so the bytes hashed
    /// at append and at verify are the same whatever the JSON held.
    before: Option<&'a str>,
    after: Option<&'a str>,
    result: &'a str,
    client_ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_id: &'a str,
}

impl AuditChain {
    pub fn new(pepper: &str) -> AuditChain {
        AuditChain {
            key: blake3::derive_key("gateway audit chain v1", pepper.as_bytes()),
        }
    }

    fn link(&self, prev: &[u8], c: &Canonical<'_>) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(prev);
        let id = c.actor_key_id.map(|u| u.to_string());
        let fields: [Option<&str>; 11] = [
            Some(c.actor_type),
            id.as_deref(),
            Some(c.action),
            Some(c.target_type),
            Some(c.target_id),
            c.before,
            c.after,
            Some(c.result),
            c.client_ip,
            c.user_agent,
            Some(c.request_id),
        ];
        h.update(&c.occurred_at_us.to_le_bytes());
        for f in fields {
            match f {
                // Length prefixes keep field boundaries unambiguous; NULL is
                // distinct from the empty string.
                Some(s) => {
                    h.update(&(s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
                None => {
                    h.update(&u64::MAX.to_le_bytes());
                }
            }
        }
        *h.finalize().as_bytes()
    }
}

/// Appends one entry inside `tx`; it commits or rolls back with the change.
pub async fn append(
    tx: &Transaction<'_>,
    chain: &AuditChain,
    origin: &Origin,
    event: &Event<'_>,
) -> Result<(), DbError> {
    let prev = lock_head(tx).await?;
    insert_linked(tx, chain, &prev, origin, event).await?;
    Ok(())
}

/// Appends `entries` in order inside `tx`, taking the append lock and
/// reading the chain's head once for all of them: the denial writer puts a
/// whole batch in one transaction this way.
pub async fn append_all(
    tx: &Transaction<'_>,
    chain: &AuditChain,
    entries: &[(Origin, Event<'_>)],
) -> Result<(), DbError> {
    let mut prev = lock_head(tx).await?;
    for (origin, event) in entries {
        prev = insert_linked(tx, chain, &prev, origin, event)
            .await?
            .to_vec();
    }
    Ok(())
}

/// Takes the append lock (until the transaction ends) and returns the
/// hash the next entry links to.
async fn lock_head(tx: &Transaction<'_>) -> Result<Vec<u8>, DbError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK_ID])
        .await?;
    let head = tx
        .query_one(
            "SELECT (SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1)",
            &[],
        )
        .await?;
    Ok(head
        .get::<_, Option<Vec<u8>>>(0)
        .unwrap_or_else(|| GENESIS.to_vec()))
}

/// Inserts one entry after `prev` (the caller holds the append lock);
/// returns its hash.
async fn insert_linked(
    tx: &Transaction<'_>,
    chain: &AuditChain,
    prev: &[u8],
    origin: &Origin,
    event: &Event<'_>,
) -> Result<[u8; 32], DbError> {
    let texts = tx
        .query_one(
            "SELECT $1::jsonb::text, $2::jsonb::text",
            &[&event.before, &event.after],
        )
        .await?;
    let before: Option<String> = texts.get(0);
    let after: Option<String> = texts.get(1);
    // Postgres keeps microseconds; hash exactly what it will store.
    let now = Utc::now();
    let occurred_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let c = Canonical {
        occurred_at_us: occurred_at.timestamp_micros(),
        actor_type: origin.actor.kind(),
        actor_key_id: origin.actor.key_id(),
        action: event.action,
        target_type: event.target_type,
        target_id: &event.target_id,
        before: before.as_deref(),
        after: after.as_deref(),
        result: event.outcome.as_str(),
        client_ip: origin.client_ip.as_deref(),
        user_agent: origin.user_agent.as_deref(),
        request_id: &origin.request_id,
    };
    let hash = chain.link(prev, &c);
    tx.execute(
        "INSERT INTO audit_log (occurred_at, actor_type, actor_key_id, action, target_type, \
         target_id, before, after, result, client_ip, user_agent, request_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &occurred_at,
            &c.actor_type,
            &c.actor_key_id,
            &c.action,
            &c.target_type,
            &c.target_id,
            &event.before,
            &event.after,
            &c.result,
            &c.client_ip,
            &c.user_agent,
            &c.request_id,
            &prev,
            &hash.as_slice(),
        ],
    )
    .await?;
    Ok(hash)
}

/// An entry as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor: ActorView,
    pub action: String,
    pub target: TargetView,
    pub result: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    /// Hex of the chained hash, so an operator can anchor the head elsewhere.
    pub hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActorView {
    #[serde(rename = "type")]
    pub kind: String,
    pub key_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// Filters of `GET /api/v1/audit-logs`; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<Uuid>,
    pub target_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only entries older than this id (the cursor).
    pub before_id: Option<i64>,
}

/// Newest first, at most `limit`.
pub async fn list(
    client: &impl GenericClient,
    f: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEntry>, DbError> {
    let rows = client
        .query(
            "SELECT id, occurred_at, actor_type, actor_key_id, action, target_type, target_id, \
             result, before, after, client_ip, user_agent, request_id, hash FROM audit_log \
             WHERE ($1::text IS NULL OR action = $1) \
               AND ($2::uuid IS NULL OR actor_key_id = $2) \
               AND ($3::text IS NULL OR target_id = $3) \
               AND ($4::timestamptz IS NULL OR occurred_at >= $4) \
               AND ($5::timestamptz IS NULL OR occurred_at < $5) \
               AND ($6::bigint IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7",
            &[
                &f.action,
                &f.actor,
                &f.target_id,
                &f.since,
                &f.until,
                &f.before_id,
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(entry_from_row).collect())
}

fn entry_from_row(r: &Row) -> AuditEntry {
    AuditEntry {
        id: r.get(0),
        occurred_at: r.get(1),
        actor: ActorView {
            kind: r.get(2),
            key_id: r.get(3),
        },
        action: r.get(4),
        target: TargetView {
            kind: r.get(5),
            id: r.get(6),
        },
        result: r.get(7),
        before: super::json_column(r, 8),
        after: super::json_column(r, 9),
        client_ip: r.get(10),
        user_agent: r.get(11),
        request_id: r.get(12),
        hash: hex::encode(r.get::<_, &[u8]>(13)),
    }
}

/// What `gateway audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry links to the one before and hashes to its stored hash.
    Intact { entries: u64, head: Option<String> },
    /// The first entry that does not check out, and why.
    Broken {
        id: i64,
        checked: u64,
        reason: &'static str,
    },
}

/// Walks the whole chain in id order (streamed, not held in memory).
pub async fn verify(client: &impl GenericClient, chain: &AuditChain) -> Result<Verdict, DbError> {
    let stream = client
        .query_raw(
            "SELECT id, occurred_at, actor_type, actor_key_id, action, target_type, target_id, \
             before::text, after::text, result, client_ip, user_agent, request_id, prev_hash, hash \
             FROM audit_log ORDER BY id",
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await?;
    pin_mut!(stream);
    let mut expected_prev = GENESIS.to_vec();
    let mut checked = 0u64;
    while let Some(r) = stream.try_next().await? {
        let id: i64 = r.get(0);
        let prev: &[u8] = r.get(13);
        let stored: &[u8] = r.get(14);
        if prev != expected_prev.as_slice() {
            return Ok(Verdict::Broken {
                id,
                checked,
                reason: "it does not link to the entry before it (an entry was removed, \
                         inserted or reordered)",
            });
        }
        let occurred_at: DateTime<Utc> = r.get(1);
        let c = Canonical {
            occurred_at_us: occurred_at.timestamp_micros(),
            actor_type: r.get(2),
            actor_key_id: r.get(3),
            action: r.get(4),
            target_type: r.get(5),
            target_id: r.get(6),
            before: r.get(7),
            after: r.get(8),
            result: r.get(9),
            client_ip: r.get(10),
            user_agent: r.get(11),
            request_id: r.get(12),
        };
        if chain.link(prev, &c) != stored {
            return Ok(Verdict::Broken {
                id,
                checked,
                reason: "its content does not match its hash (the entry was altered)",
            });
        }
        expected_prev = stored.to_vec();
        checked += 1;
    }
    Ok(Verdict::Intact {
        entries: checked,
        head: (checked > 0).then(|| hex::encode(&expected_prev)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Canonical<'static> {
        Canonical {
            occurred_at_us: 1,
            actor_type: "key",
            actor_key_id: None,
            action: "api_key.created",
            target_type: "api_key",
            target_id: "x",
            before: None,
            after: Some("{}"),
            result: "success",
            client_ip: None,
            user_agent: Some(""),
            request_id: "r",
        }
    }

    #[test]
    fn every_field_and_the_key_change_the_hash() {
        let chain = AuditChain::new("pepper-pepper-pepper-pepper-pepper");
        let base = chain.link(&GENESIS, &sample());
        assert_eq!(base, chain.link(&GENESIS, &sample()));
        let other_key = AuditChain::new("another-pepper-another-pepper-another");
        assert_ne!(base, other_key.link(&GENESIS, &sample()));
        assert_ne!(base, chain.link(&[1; 32], &sample()));
        let variants: Vec<Canonical<'static>> = vec![
            Canonical {
                occurred_at_us: 2,
                ..sample()
            },
            Canonical {
                target_id: "y",
                ..sample()
            },
            // NULL and "" differ; moving bytes across a field boundary differs.
            Canonical {
                user_agent: None,
                ..sample()
            },
            Canonical {
                before: Some(""),
                ..sample()
            },
            Canonical {
                action: "api_key.create",
                target_type: "dapi_key",
                ..sample()
            },
        ];
        for v in &variants {
            assert_ne!(base, chain.link(&GENESIS, v));
        }
    }
}
