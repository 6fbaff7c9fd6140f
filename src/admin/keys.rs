//! `/api/v1/keys`: create, list, get, update, revoke and rotate keys.
//!
//! Handlers validate input and map results; the changes themselves and
//! their audit entries live in [`crate::service::keys`], shared with the
//! CLI. A write answers once this instance's snapshot holds it (DESIGN §3
//! "API keys" → "Visibility"), see [`until_visible`].

use std::time::Duration;

use chrono::Utc;
use http::{Response, StatusCode};
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::input::{Body, Query};
use super::{db, json, page, AdminState, Caller};
use crate::keys::scope::Scope;
use crate::service::keys::{KeyUpdate, DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE};
use crate::store::keys::{self as repo, KeyFilter, KeyStatus, NewKey};

/// Longest key name.
const MAX_NAME: usize = 200;
/// Longest key description.
const MAX_DESCRIPTION: usize = 1000;
/// Longest `expires_in_seconds`: 100 years.
const MAX_EXPIRES_IN: i64 = 100 * 365 * 86_400;
/// Longest a write waits for this instance's snapshot to hold it.
const VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// Waits until this instance's snapshot holds `version` of key `id`, woken
/// by each publish (NOTIFY applied, reload, or a miss lookup), for at most
/// [`VISIBILITY_WAIT`]. The write has committed either way, so a timeout
/// still answers success; it is counted and logged, as it means the key
/// listener is behind or disconnected.
pub(super) async fn until_visible(s: &AdminState, id: Uuid, version: i64) {
    let wait = s.keys.wait_for_version(id, version);
    if tokio::time::timeout(VISIBILITY_WAIT, wait).await.is_err() {
        metrics::counter!("gateway_admin_visibility_timeouts_total").increment(1);
        tracing::warn!(
            key_id = %id,
            waited_ms = VISIBILITY_WAIT.as_millis() as u64,
            "key change not in this instance's snapshot yet; answering anyway"
        );
    }
}

/// A path id that is not a UUID names no key: 404, like an unknown one.
pub(super) fn key_id(id: Option<&str>) -> Result<Uuid, ApiError> {
    id.and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(ApiError::NotFound("No key with this id."))
}

/// `expires_at` or `expires_in_seconds` (not both): `Some(None)` clears.
fn expiry(b: &mut Body) -> Option<Option<chrono::DateTime<Utc>>> {
    let at = b.future_time("expires_at");
    let both = at.is_some() && b.has("expires_in_seconds");
    let secs = b.integer("expires_in_seconds", 1, MAX_EXPIRES_IN);
    if both {
        b.problems.add(
            "expires_in_seconds",
            "Give expires_at or expires_in_seconds, not both.",
        );
        return None;
    }
    match secs {
        Some(s) => Some(Some(Utc::now() + chrono::Duration::seconds(s))),
        None => at,
    }
}

pub async fn create_key(
    s: &AdminState,
    caller: &Caller,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let mut b = Body::parse(body, false)?;
    if !b.has("name") {
        b.problems.add("name", "Required.");
    }
    let name = b.name("name", MAX_NAME);
    let description = b.text("description", MAX_DESCRIPTION).unwrap_or_default();
    let scopes = b.scopes("scopes").unwrap_or_default();
    let expires_at = expiry(&mut b).flatten();
    let limits = b.limits("rate_limits").unwrap_or_default();
    let metadata = b.metadata("metadata").unwrap_or_else(|| json!({}));
    let roles = b.role_names("roles", MAX_NAME).unwrap_or_default();
    let name = b.finish().finish(name)?.ok_or(ApiError::Internal)?;
    let new = NewKey {
        name,
        description,
        scopes,
        limits,
        metadata,
        expires_at,
    };
    let mut client = db(s).await?;
    let created = s
        .key_service
        .create_with_roles(&mut client, &caller.origin, &caller.authority, &new, &roles)
        .await?;
    drop(client);
    until_visible(s, created.row.id, created.row.version).await;
    Ok(json(StatusCode::CREATED, &created))
}

pub async fn list_keys(s: &AdminState, query: Option<&str>) -> Result<Response<Vec<u8>>, ApiError> {
    let mut q = Query::parse(query);
    let limit = q.limit();
    let after_id = q.take("cursor").map(|c| {
        Uuid::parse_str(&c).map_err(|_| q.problems.add("cursor", "Not a cursor from this API."))
    });
    let status = q.take("status").map(|v| {
        KeyStatus::parse(&v).ok_or_else(|| {
            q.problems
                .add("status", "Must be one of active, expired, revoked.")
        })
    });
    let scope = q.take("scope").map(|v| {
        Scope::parse(&v)
            .map(|_| v)
            .map_err(|e| q.problems.add("scope", e.to_string()))
    });
    let name_contains = q.text("q", MAX_NAME);
    let filter = KeyFilter {
        status: status.and_then(Result::ok),
        scope: scope.and_then(Result::ok),
        name_contains,
        after_id: after_id.and_then(Result::ok),
    };
    let filter = q.finish().finish(filter)?;
    let client = db(s).await?;
    let rows = repo::list(&**client, &filter, limit + 1).await?;
    Ok(page(rows, limit, |r| r.id.to_string()))
}

pub async fn get_key(s: &AdminState, id: Option<&str>) -> Result<Response<Vec<u8>>, ApiError> {
    let id = key_id(id)?;
    let client = db(s).await?;
    let row = repo::get(&**client, id)
        .await?
        .ok_or(ApiError::NotFound("No key with this id."))?;
    Ok(json(StatusCode::OK, &row))
}

pub async fn update_key(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = key_id(id)?;
    let mut b = Body::parse(body, false)?;
    if b.is_empty() {
        b.problems.add("", "Give at least one field to change.");
    }
    let change = KeyUpdate {
        name: b.name("name", MAX_NAME),
        description: b.text("description", MAX_DESCRIPTION),
        scopes: b.scopes("scopes"),
        expires_at: expiry(&mut b),
        limits: b.limits("rate_limits"),
        metadata: b.metadata("metadata"),
        roles: b.role_names("roles", MAX_NAME),
    };
    let change = b.finish().finish(change)?;
    let mut client = db(s).await?;
    let row = s
        .key_service
        .update(&mut client, &caller.origin, &caller.authority, id, change)
        .await?;
    drop(client);
    until_visible(s, row.id, row.version).await;
    Ok(json(StatusCode::OK, &row))
}

pub async fn revoke_key(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = key_id(id)?;
    let mut client = db(s).await?;
    let row = s
        .key_service
        .revoke(&mut client, &caller.origin, &caller.authority, id)
        .await?;
    drop(client);
    until_visible(s, row.id, row.version).await;
    Ok(json(StatusCode::OK, &row))
}

pub async fn rotate_key(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = key_id(id)?;
    let mut b = Body::parse(body, true)?;
    let max = MAX_ROTATION_GRACE.as_secs() as i64;
    let grace = b
        .integer("grace_period_seconds", 0, max)
        .map_or(DEFAULT_ROTATION_GRACE, |n| Duration::from_secs(n as u64));
    let grace = b.finish().finish(grace)?;
    let mut client = db(s).await?;
    let rotated = s
        .key_service
        .rotate(&mut client, &caller.origin, &caller.authority, id, grace)
        .await?;
    drop(client);
    until_visible(s, rotated.row.id, rotated.row.version).await;
    Ok(json(StatusCode::OK, &rotated))
}
