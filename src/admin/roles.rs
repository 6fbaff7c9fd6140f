//! `/api/v1/roles`: create, list, get, update and delete roles (`admin`).
//!
//! A role names a set of scopes; keys list roles by name and hold the
//! union of their own scopes and their roles' (DESIGN §3 "JWT and roles").
//! Changes and their audit entries are one transaction in
//! [`crate::store::roles::RoleOps`], shared with the CLI. A change that
//! alters what keys may do answers once this instance's snapshot holds
//! every key it touched, as key writes do.

use std::time::Duration;

use http::{Response, StatusCode};
use uuid::Uuid;

use super::error::ApiError;
use super::input::{Body, Query};
use super::{db, json, page, AdminState, Caller};
use crate::store::roles::{self as repo, NewRole, RoleOps, RoleUpdate, MAX_DESCRIPTION, MAX_NAME};

/// Longest a role change waits for this instance's snapshot to hold every
/// key it touched, as [`super::keys`] waits for one key.
const VISIBILITY_WAIT: Duration = Duration::from_secs(2);

const NO_ROLE: &str = "No role with this id.";

/// A path id that is not a UUID names no role: 404, like an unknown one.
fn role_id(id: Option<&str>) -> Result<Uuid, ApiError> {
    id.and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(ApiError::NotFound(NO_ROLE))
}

fn ops(s: &AdminState) -> RoleOps<'_> {
    RoleOps {
        chain: s.key_service.audit_chain(),
    }
}

/// Waits until this instance's snapshot holds each key at its version, all
/// within one [`VISIBILITY_WAIT`]. The change has committed either way; a
/// timeout is counted and logged like a key write's.
async fn until_all_visible(s: &AdminState, keys: &[(Uuid, i64)]) {
    let wait = async {
        for (id, version) in keys {
            s.keys.wait_for_version(*id, *version).await;
        }
    };
    if tokio::time::timeout(VISIBILITY_WAIT, wait).await.is_err() {
        metrics::counter!("gateway_admin_visibility_timeouts_total").increment(1);
        tracing::warn!(
            keys = keys.len(),
            waited_ms = VISIBILITY_WAIT.as_millis() as u64,
            "role change not in this instance's snapshot yet; answering anyway"
        );
    }
}

pub async fn create_role(
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
    let name = b.finish().finish(name)?.ok_or(ApiError::Internal)?;
    let new = NewRole {
        name,
        description,
        scopes,
    };
    let mut client = db(s).await?;
    let row = ops(s).create(&mut client, &caller.origin, &new).await?;
    Ok(json(StatusCode::CREATED, &row))
}

pub async fn list_roles(
    s: &AdminState,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let mut q = Query::parse(query);
    let limit = q.limit();
    let after_id = q.take("cursor").map(|c| {
        Uuid::parse_str(&c).map_err(|_| q.problems.add("cursor", "Not a cursor from this API."))
    });
    let after_id = q.finish().finish(after_id.and_then(Result::ok))?;
    let client = db(s).await?;
    let rows = repo::list(&**client, after_id, limit + 1).await?;
    Ok(page(rows, limit, |r| r.id.to_string()))
}

pub async fn get_role(s: &AdminState, id: Option<&str>) -> Result<Response<Vec<u8>>, ApiError> {
    let id = role_id(id)?;
    let client = db(s).await?;
    let row = repo::get(&**client, id)
        .await?
        .ok_or(ApiError::NotFound(NO_ROLE))?;
    Ok(json(StatusCode::OK, &row))
}

pub async fn update_role(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = role_id(id)?;
    let mut b = Body::parse(body, false)?;
    if b.is_empty() {
        b.problems.add("", "Give at least one field to change.");
    }
    let change = RoleUpdate {
        name: b.name("name", MAX_NAME),
        description: b.text("description", MAX_DESCRIPTION),
        scopes: b.scopes("scopes"),
    };
    let change = b.finish().finish(change)?;
    let mut client = db(s).await?;
    let changed = ops(s)
        .update(&mut client, &caller.origin, id, change)
        .await?;
    drop(client);
    until_all_visible(s, &changed.keys).await;
    Ok(json(StatusCode::OK, &changed.row))
}

pub async fn delete_role(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = role_id(id)?;
    let mut client = db(s).await?;
    let changed = ops(s).delete(&mut client, &caller.origin, id).await?;
    drop(client);
    until_all_visible(s, &changed.keys).await;
    Ok(super::webhooks::no_content())
}
