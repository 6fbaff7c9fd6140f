//! The `api_keys` repository: the only code that reads or writes key rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{pin_mut, TryStreamExt};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::DbError;
use crate::config::Limits;
use crate::keys::format::{self, KeyHash, KeyHasher};
use crate::keys::scope::{Scope, ScopeSets};
use crate::keys::snapshot::{KeyRecord, PreviousSecret};

/// Columns the snapshot needs, in the order [`record_from_row`] reads them:
/// the last is the scopes the key holds through its roles
/// (`sql/0006_roles.up.sql`), so a record carries its effective scopes.
const RECORD_COLUMNS: &str = "id, key_hash, scopes, rate_limit_per_minute, rate_limit_per_hour, \
     rate_limit_per_day, expires_at, revoked_at, previous_key_hash, previous_key_expires_at, \
     rotated_at, version, key_role_scopes(id)";

/// [`RECORD_COLUMNS`] for many keys at once, the filters being `WHERE …` on
/// `kr.key_id` and `api_keys.id` or nothing: the role scopes come from one
/// hashed join over `key_roles` instead of a function call per key, which
/// would add seconds to loading a million keys, or to re-reading the
/// 100,000 keys a role change re-announced.
macro_rules! records_sql {
    ($roles_filter:literal, $keys_filter:literal) => {
        concat!(
            "SELECT id, key_hash, scopes, rate_limit_per_minute, \
             rate_limit_per_hour, rate_limit_per_day, expires_at, revoked_at, previous_key_hash, \
             previous_key_expires_at, rotated_at, version, coalesce(rs.role_scopes, '{}') \
             FROM api_keys LEFT JOIN ( \
               SELECT kr.key_id, array_agg(DISTINCT s ORDER BY s) AS role_scopes \
               FROM key_roles kr JOIN roles r ON r.id = kr.role_id \
               CROSS JOIN LATERAL unnest(r.scopes) AS s ",
            $roles_filter,
            " GROUP BY kr.key_id) rs ON rs.key_id = api_keys.id",
            $keys_filter
        )
    };
}

/// A key's status, computed in one place for both what a row shows and
/// what `?status=` filters on.
macro_rules! status_sql {
    () => {
        "CASE WHEN revoked_at IS NOT NULL THEN 'revoked' \
         WHEN expires_at <= now() THEN 'expired' ELSE 'active' END"
    };
}

/// Columns shown to operators, in the order [`KeyRow::from_row`] reads them.
pub(super) const ROW_COLUMNS: &str = concat!(
    "id, name, description, prefix, scopes, rate_limit_per_minute, \
     rate_limit_per_hour, rate_limit_per_day, metadata, created_at, updated_at, expires_at, \
     revoked_at, last_used_at, rotated_at, previous_prefix, previous_key_expires_at, ",
    status_sql!(),
    ", version, key_role_names(id), key_role_scopes(id)"
);

/// A key as operators see it: never the secret, never its hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    /// Names of the roles the key holds, sorted.
    pub roles: Vec<String>,
    /// What the key is granted: its own `scopes`, then those of its roles
    /// not already among them (sorted). The proxy checks these.
    pub effective_scopes: Vec<String>,
    /// Per-key overrides; a `None` tier uses `[rate_limits] default`.
    pub rate_limits: Limits,
    pub metadata: serde_json::Value,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The last rotation, or `None` if the key was never rotated.
    pub rotation: Option<Rotation>,
    /// Raised by every change of the row: the admin API answers a write
    /// once the snapshot holds this version. Internal, never shown.
    #[serde(skip)]
    pub version: i64,
}

/// The state left by the last rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    pub rotated_at: DateTime<Utc>,
    /// Display prefix of the secret the rotation replaced.
    pub previous_prefix: Option<String>,
    /// When the replaced secret stops working (the end of the grace period).
    pub previous_key_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

/// The three `rate_limit_per_*` columns starting at `first`.
fn limits_at(r: &Row, first: usize) -> Limits {
    let tier = |i: usize| {
        r.get::<_, Option<i32>>(i)
            .and_then(|n| u32::try_from(n).ok())
    };
    Limits {
        per_minute: tier(first),
        per_hour: tier(first + 1),
        per_day: tier(first + 2),
    }
}

fn limit_param(v: Option<u32>) -> Option<i32> {
    v.map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

/// `own` followed by the scopes of `from_roles` it does not already hold.
fn union<S: PartialEq>(own: Vec<S>, from_roles: Vec<S>) -> Vec<S> {
    let mut all = own;
    for s in from_roles {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all
}

impl KeyRow {
    pub(super) fn from_row(r: &Row) -> KeyRow {
        KeyRow {
            id: r.get(0),
            name: r.get(1),
            description: r.get(2),
            prefix: r.get(3),
            scopes: r.get(4),
            roles: r.get(19),
            effective_scopes: union(r.get(4), r.get(20)),
            rate_limits: limits_at(r, 5),
            metadata: super::json_column(r, 8).unwrap_or_default(),
            // Written by `status_sql!`, so it always parses.
            status: KeyStatus::parse(r.get(17)).unwrap_or(KeyStatus::Active),
            created_at: r.get(9),
            updated_at: r.get(10),
            expires_at: r.get(11),
            revoked_at: r.get(12),
            last_used_at: r.get(13),
            rotation: r
                .get::<_, Option<DateTime<Utc>>>(14)
                .map(|rotated_at| Rotation {
                    rotated_at,
                    previous_prefix: r.get(15),
                    previous_key_expires_at: r.get(16),
                }),
            version: r.get(18),
        }
    }
}

/// What a new key is made of. Scopes are validated by the caller.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub description: String,
    pub scopes: Vec<Scope>,
    pub limits: Limits,
    pub metadata: serde_json::Value,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A freshly created key: the row plus the plaintext, shown once.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub row: KeyRow,
    pub key: String,
}

/// Inserts a key; the NOTIFY trigger announces it in the same transaction.
pub async fn create(
    client: &impl GenericClient,
    hasher: &KeyHasher,
    key_prefix: &str,
    new: &NewKey,
) -> Result<CreatedKey, DbError> {
    let plaintext = format::generate(key_prefix);
    let hash = hasher.hash(&plaintext);
    let scopes: Vec<&str> = new.scopes.iter().map(Scope::as_str).collect();
    let row = client
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, name, description, prefix, key_hash, scopes, \
                 rate_limit_per_minute, rate_limit_per_hour, rate_limit_per_day, metadata, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {ROW_COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &new.name,
                &new.description,
                &format::display_prefix(&plaintext, key_prefix),
                &hash.as_slice(),
                &scopes,
                &limit_param(new.limits.per_minute),
                &limit_param(new.limits.per_hour),
                &limit_param(new.limits.per_day),
                &new.metadata,
                &new.expires_at,
            ],
        )
        .await?;
    Ok(CreatedKey {
        row: KeyRow::from_row(&row),
        key: plaintext,
    })
}

/// Filters of a key listing; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub status: Option<KeyStatus>,
    /// Keys whose scope list contains exactly this scope.
    pub scope: Option<String>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Only keys listed after this id (the cursor): ids are UUIDv7, so
    /// descending id order is newest first, and it is stable.
    pub after_id: Option<Uuid>,
}

impl KeyStatus {
    pub fn parse(s: &str) -> Option<KeyStatus> {
        match s {
            "active" => Some(KeyStatus::Active),
            "expired" => Some(KeyStatus::Expired),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// Keys newest first, at most `limit`, matching `f`.
pub async fn list(
    client: &impl GenericClient,
    f: &KeyFilter,
    limit: i64,
) -> Result<Vec<KeyRow>, DbError> {
    let status = f.status.map(KeyStatus::as_str);
    let rows = client
        .query(
            &format!(
                "SELECT {ROW_COLUMNS} FROM api_keys \
                 WHERE ($1::text IS NULL OR {status_expr} = $1) \
                   AND ($2::text IS NULL OR $2 = ANY(scopes)) \
                   AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0) \
                   AND ($4::uuid IS NULL OR id < $4) \
                 ORDER BY id DESC LIMIT $5",
                status_expr = status_sql!()
            ),
            &[&status, &f.scope, &f.name_contains, &f.after_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(KeyRow::from_row).collect())
}

pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<KeyRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM api_keys WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(KeyRow::from_row))
}

/// Reads a key and locks its row until the transaction ends, so a change is
/// checked against the state it replaces.
pub async fn get_for_update(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<KeyRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(KeyRow::from_row))
}

/// Writes every editable field of `row` (name, description, scopes, limits,
/// metadata, expiry) back to the database.
pub async fn save(client: &impl GenericClient, row: &KeyRow) -> Result<KeyRow, DbError> {
    let updated = client
        .query_one(
            &format!(
                "UPDATE api_keys SET name = $2, description = $3, scopes = $4, \
                 rate_limit_per_minute = $5, rate_limit_per_hour = $6, rate_limit_per_day = $7, \
                 metadata = $8, expires_at = $9 WHERE id = $1 RETURNING {ROW_COLUMNS}"
            ),
            &[
                &row.id,
                &row.name,
                &row.description,
                &row.scopes,
                &limit_param(row.rate_limits.per_minute),
                &limit_param(row.rate_limits.per_hour),
                &limit_param(row.rate_limits.per_day),
                &row.metadata,
                &row.expires_at,
            ],
        )
        .await?;
    Ok(KeyRow::from_row(&updated))
}

/// Revokes a key (soft delete: the row stays for audit). Revoking a revoked
/// key keeps its first `revoked_at`. `None` when there is no such key.
pub async fn revoke(client: &impl GenericClient, id: Uuid) -> Result<Option<KeyRow>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) \
                 WHERE id = $1 RETURNING {ROW_COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(KeyRow::from_row))
}

/// Gives a key a new secret. The current secret becomes the previous one,
/// valid until `now + grace` (then `expired_api_key`); a secret kept from an
/// earlier rotation is dropped. `None` when there is no such key.
///
/// `now` is the gateway's clock, not the database's: the proxy checks the
/// grace against its own clock, so the end of the grace is computed on it
/// too, and a database whose clock is off cannot cut the grace short (or
/// stretch it).
pub async fn rotate(
    client: &impl GenericClient,
    hasher: &KeyHasher,
    key_prefix: &str,
    id: Uuid,
    now: DateTime<Utc>,
    grace: std::time::Duration,
) -> Result<Option<CreatedKey>, DbError> {
    let plaintext = format::generate(key_prefix);
    let hash = hasher.hash(&plaintext);
    let grace_ends = chrono::Duration::from_std(grace)
        .ok()
        .and_then(|g| now.checked_add_signed(g))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let row = client
        .query_opt(
            &format!(
                "UPDATE api_keys SET \
                   previous_key_hash = key_hash, previous_prefix = prefix, \
                   previous_key_expires_at = $4, \
                   rotated_at = $5, key_hash = $2, prefix = $3 \
                 WHERE id = $1 RETURNING {ROW_COLUMNS}"
            ),
            &[
                &id,
                &hash.as_slice(),
                &format::display_prefix(&plaintext, key_prefix),
                &grace_ends,
                &now,
            ],
        )
        .await?;
    Ok(row.map(|r| CreatedKey {
        row: KeyRow::from_row(&r),
        key: plaintext,
    }))
}

/// Sets `last_used_at = now()` for a batch of keys in one statement.
pub async fn touch_last_used(client: &impl GenericClient, ids: &[Uuid]) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1)",
            &[&ids],
        )
        .await?)
}

fn ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn hash_of(bytes: &[u8]) -> Option<KeyHash> {
    bytes.try_into().ok()
}

/// Builds a snapshot record; `None` (and a warning) for a row the proxy
/// cannot use, such as a scope written by hand that does not parse.
fn record_from_row(r: &Row, scope_sets: &mut ScopeSets) -> Option<KeyRecord> {
    let id: Uuid = r.get(0);
    let hash = hash_of(r.get::<_, &[u8]>(1))?;
    let raw_scopes: Vec<&str> = union(r.get(2), r.get(12));
    let mut scopes = Vec::with_capacity(raw_scopes.len());
    for s in raw_scopes {
        match Scope::parse(s) {
            Ok(s) => scopes.push(s),
            // Dropping the scope only ever narrows access.
            Err(e) => tracing::warn!(key_id = %id, error = %e, "ignoring invalid scope on key"),
        }
    }
    let previous = match (r.get::<_, Option<&[u8]>>(8), ms(r.get(9))) {
        (Some(h), Some(expires_at_ms)) => hash_of(h).map(|hash| PreviousSecret {
            hash,
            expires_at_ms,
            rotated_at_ms: ms(r.get(10)).unwrap_or(expires_at_ms),
        }),
        _ => None,
    };
    let mut record = KeyRecord::new(
        id,
        hash,
        scope_sets.intern(scopes),
        limits_at(r, 3),
        ms(r.get(6)),
        ms(r.get(7)),
        previous,
    );
    record.version = r.get(11);
    Some(record)
}

/// Streams every key into `into`, row by row: no full result set, and with
/// the listener passing a fresh snapshot, no second copy of a million
/// records on the way. Returns the number of records.
///
/// Fails with [`DbError::Timeout`] when the query or the next row takes
/// longer than `stall`: a bound on progress rather than on the whole load,
/// so a dead link is noticed within `stall` however many keys there are.
pub async fn load_all(
    client: &impl GenericClient,
    into: &mut impl Extend<KeyRecord>,
    stall: Duration,
) -> Result<usize, DbError> {
    let stream = tokio::time::timeout(
        stall,
        client.query_raw(
            records_sql!("", ""),
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        ),
    )
    .await
    .map_err(|_| DbError::Timeout(stall))??;
    pin_mut!(stream);
    let mut scope_sets = ScopeSets::default();
    let mut count = 0;
    while let Some(row) = tokio::time::timeout(stall, stream.try_next())
        .await
        .map_err(|_| DbError::Timeout(stall))??
    {
        if let Some(record) = record_from_row(&row, &mut scope_sets) {
            into.extend([record]);
            count += 1;
        }
    }
    Ok(count)
}

/// The current records of `ids`; ids without a row are absent from the result.
pub async fn load_by_ids(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<KeyRecord>, DbError> {
    let rows = client
        .query(
            records_sql!("WHERE kr.key_id = ANY($1)", " WHERE api_keys.id = ANY($1)"),
            &[&ids],
        )
        .await?;
    let mut scope_sets = ScopeSets::default();
    Ok(rows
        .iter()
        .filter_map(|r| record_from_row(r, &mut scope_sets))
        .collect())
}

/// The record whose current or previous secret hashes to `hash`, if any:
/// the miss lookup of [`crate::service::miss`]. Both columns are unique, so
/// this is two index probes.
pub async fn find_by_hash(
    client: &impl GenericClient,
    hash: &KeyHash,
) -> Result<Option<KeyRecord>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM api_keys \
                 WHERE key_hash = $1 OR previous_key_hash = $1 LIMIT 1"
            ),
            &[&hash.as_slice()],
        )
        .await?;
    Ok(row.and_then(|r| record_from_row(&r, &mut ScopeSets::default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_scopes_are_own_then_the_roles_new_ones() {
        assert_eq!(
            union(
                vec!["write:b", "read:a"],
                vec!["read:a", "admin", "write:b", "read:c"]
            ),
            ["write:b", "read:a", "admin", "read:c"]
        );
        assert_eq!(union(Vec::<&str>::new(), vec!["read:a"]), ["read:a"]);
        assert_eq!(union(vec!["read:a"], Vec::new()), ["read:a"]);
    }
}
