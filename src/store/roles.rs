//! The `roles` repository and its audited changes (DESIGN §3 "JWT and
//! roles"): a role names a set of scopes, and keys hold roles through
//! `key_roles`.
//!
//! Propagation lives in the schema (`sql/0006_roles.up.sql`): a change of a
//! role's scopes, a role's deletion (which cascades to `key_roles`), and a
//! key gaining or losing a role all raise the `version` of every key
//! concerned in the same transaction, so the `api_keys` NOTIFY trigger
//! announces them and every instance's key listener re-reads exactly those
//! keys, with their new effective scopes, as for any key change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use super::audit::{self, AuditChain, Event, Origin, Outcome};
use super::DbError;
use crate::errors::FieldError;
use crate::keys::scope::Scope;

/// Longest role name (as for keys).
pub const MAX_NAME: usize = 200;
/// Longest role description.
pub const MAX_DESCRIPTION: usize = 1000;
/// Most roles one key may hold.
pub const MAX_ROLES_PER_KEY: usize = 50;

/// Columns shown to operators, in the order [`RoleRow::from_row`] reads them.
const ROW_COLUMNS: &str = "id, name, description, scopes, created_at, updated_at, \
     (SELECT count(*) FROM key_roles kr WHERE kr.role_id = roles.id)";

/// A role as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct RoleRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    /// How many keys hold the role (revoked ones included): the keys a
    /// change of its scopes re-announces.
    pub key_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RoleRow {
    fn from_row(r: &Row) -> RoleRow {
        RoleRow {
            id: r.get(0),
            name: r.get(1),
            description: r.get(2),
            scopes: r.get(3),
            created_at: r.get(4),
            updated_at: r.get(5),
            key_count: r.get(6),
        }
    }
}

/// A validated new role.
#[derive(Debug, Clone)]
pub struct NewRole {
    pub name: String,
    pub description: String,
    pub scopes: Vec<Scope>,
}

/// The fields of an update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RoleUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<Scope>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("no role with this id")]
    NotFound,
    #[error("a role with this name already exists")]
    NameTaken,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for RoleError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The only unique constraint a role write can break is the name.
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return RoleError::NameTaken;
        }
        RoleError::Db(e.into())
    }
}

/// Roles newest first (ids are UUIDv7), after the cursor id, at most `limit`.
pub async fn list(
    client: &impl GenericClient,
    after_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RoleRow>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {ROW_COLUMNS} FROM roles WHERE ($1::uuid IS NULL OR id < $1) \
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&after_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(RoleRow::from_row).collect())
}

pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<RoleRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM roles WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(RoleRow::from_row))
}

pub async fn get_by_name(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<RoleRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM roles WHERE name = $1"),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(RoleRow::from_row))
}

async fn get_for_update(client: &impl GenericClient, id: Uuid) -> Result<Option<RoleRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {ROW_COLUMNS} FROM roles WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(RoleRow::from_row))
}

/// A role a key is being given: what the authority check needs.
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
}

/// The roles named `names` (the `field` of the request, for errors),
/// share-locked until the transaction ends so their scopes cannot change
/// between the authority check and the commit. `Err` lists every unknown
/// name as `field[i]`.
///
/// Lock order: callers take these role locks before any key row lock, as
/// a role change does (role row, then its keys), so the two never deadlock.
pub async fn resolve_for_grant(
    client: &impl GenericClient,
    field: &str,
    names: &[String],
) -> Result<Result<Vec<Grant>, Vec<FieldError>>, DbError> {
    if names.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let rows = client
        .query(
            "SELECT id, name, scopes FROM roles WHERE name = ANY($1) ORDER BY id FOR SHARE",
            &[&names],
        )
        .await?;
    let grants: Vec<Grant> = rows
        .iter()
        .map(|r| Grant {
            id: r.get(0),
            name: r.get(1),
            scopes: r.get(2),
        })
        .collect();
    let unknown: Vec<FieldError> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| !grants.iter().any(|g| &g.name == *n))
        .map(|(i, n)| FieldError {
            field: format!("{field}[{i}]"),
            message: format!("No role named {n:?}."),
        })
        .collect();
    Ok(if unknown.is_empty() {
        Ok(grants)
    } else {
        Err(unknown)
    })
}

/// Makes `roles` the exact set of roles key `key_id` holds. Rows that stay
/// are not touched, so an unchanged set announces nothing; the triggers
/// raise the key's version (and so announce it) when the set changes.
pub async fn set_key_roles(
    client: &impl GenericClient,
    key_id: Uuid,
    roles: &[Uuid],
) -> Result<(), DbError> {
    client
        .execute(
            "DELETE FROM key_roles WHERE key_id = $1 AND NOT (role_id = ANY($2))",
            &[&key_id, &roles],
        )
        .await?;
    client
        .execute(
            "INSERT INTO key_roles (key_id, role_id) SELECT $1, unnest($2::uuid[]) \
             ON CONFLICT DO NOTHING",
            &[&key_id, &roles],
        )
        .await?;
    Ok(())
}

/// (id, version) of every key holding role `role_id`.
async fn keys_holding(
    client: &impl GenericClient,
    role_id: Uuid,
) -> Result<Vec<(Uuid, i64)>, DbError> {
    let rows = client
        .query(
            "SELECT k.id, k.version FROM key_roles kr JOIN api_keys k ON k.id = kr.key_id \
             WHERE kr.role_id = $1",
            &[&role_id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// (id, version) of the keys among `ids` that still exist.
async fn versions(client: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>, DbError> {
    let rows = client
        .query(
            "SELECT id, version FROM api_keys WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A role change and the keys it re-announced, each with the version that
/// holds the change: the admin API answers once its snapshot holds them.
#[derive(Debug, Clone)]
pub struct Changed<T> {
    pub row: T,
    pub keys: Vec<(Uuid, i64)>,
}

fn role_event<'a>(
    action: &'a str,
    id: Uuid,
    before: Option<&RoleRow>,
    after: Option<&RoleRow>,
) -> Event<'a> {
    Event {
        action,
        target_type: "role",
        target_id: id.to_string(),
        before: before.and_then(|r| serde_json::to_value(r).ok()),
        after: after.and_then(|r| serde_json::to_value(r).ok()),
        outcome: Outcome::Success,
    }
}

fn scope_strings(scopes: &[Scope]) -> Vec<&str> {
    scopes.iter().map(Scope::as_str).collect()
}

/// The audited role changes, each one transaction with its audit entry.
/// Only `admin` callers (and the CLI) reach them: a role's scopes are
/// granted to every key holding it.
pub struct RoleOps<'a> {
    pub chain: &'a AuditChain,
}

impl RoleOps<'_> {
    pub async fn create(
        &self,
        client: &mut Client,
        origin: &Origin,
        new: &NewRole,
    ) -> Result<RoleRow, RoleError> {
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO roles (id, name, description, scopes) VALUES ($1, $2, $3, $4) \
                     RETURNING {ROW_COLUMNS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &new.name,
                    &new.description,
                    &scope_strings(&new.scopes),
                ],
            )
            .await?;
        let row = RoleRow::from_row(&row);
        audit::append(
            &tx,
            self.chain,
            origin,
            &role_event("role.created", row.id, None, Some(&row)),
        )
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Applies `change`; a change of scopes re-announces every key holding
    /// the role (one set-based UPDATE in the schema's trigger).
    pub async fn update(
        &self,
        client: &mut Client,
        origin: &Origin,
        id: Uuid,
        change: RoleUpdate,
    ) -> Result<Changed<RoleRow>, RoleError> {
        let tx = client.transaction().await?;
        let before = get_for_update(&tx, id).await?.ok_or(RoleError::NotFound)?;
        let scopes: Vec<String> = match &change.scopes {
            Some(s) => scope_strings(s).into_iter().map(str::to_string).collect(),
            None => before.scopes.clone(),
        };
        let row = tx
            .query_one(
                &format!(
                    "UPDATE roles SET name = $2, description = $3, scopes = $4, \
                     updated_at = now() WHERE id = $1 RETURNING {ROW_COLUMNS}"
                ),
                &[
                    &id,
                    change.name.as_ref().unwrap_or(&before.name),
                    change.description.as_ref().unwrap_or(&before.description),
                    &scopes,
                ],
            )
            .await?;
        let after = RoleRow::from_row(&row);
        let keys = if after.scopes != before.scopes {
            keys_holding(&tx, id).await?
        } else {
            Vec::new()
        };
        audit::append(
            &tx,
            self.chain,
            origin,
            &role_event("role.updated", id, Some(&before), Some(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(Changed { row: after, keys })
    }

    /// Deletes a role; it is removed from every key holding it (the schema
    /// cascades), and those keys are re-announced.
    pub async fn delete(
        &self,
        client: &mut Client,
        origin: &Origin,
        id: Uuid,
    ) -> Result<Changed<()>, RoleError> {
        let tx = client.transaction().await?;
        let before = get_for_update(&tx, id).await?.ok_or(RoleError::NotFound)?;
        let holders: Vec<Uuid> = keys_holding(&tx, id)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        tx.execute("DELETE FROM roles WHERE id = $1", &[&id])
            .await?;
        let keys = versions(&tx, &holders).await?;
        audit::append(
            &tx,
            self.chain,
            origin,
            &role_event("role.deleted", id, Some(&before), None),
        )
        .await?;
        tx.commit().await?;
        Ok(Changed { row: (), keys })
    }
}
