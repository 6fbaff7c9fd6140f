//! `/api/v1/webhooks`: endpoints (create, list, get, update, delete,
//! rotate the secret, send a test event) and their deliveries (list, get
//! with attempts, retry).
//!
//! Handlers validate input and map results; the changes and their audit
//! entries live in [`crate::store::webhook_admin`], shared with the CLI.
//! A URL passes the SSRF guard ([`crate::webhooks::ssrf`]) on create and
//! whenever an update changes it; the dispatcher checks again at connect.
//! The signing secret appears only in the create and rotate-secret answers.

use std::time::Duration;

use chrono::Utc;
use http::{Response, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::input::{Body, Query};
use super::{db, json, page, AdminState, Caller};
use crate::store::webhook_admin::{
    self as repo, DeliveryFilter, NewWebhook, WebhookOps, WebhookUpdate, DEFAULT_SECRET_GRACE,
    MAX_DESCRIPTION, MAX_SECRET_GRACE, MAX_URL,
};
use crate::webhooks::ssrf;

const NO_WEBHOOK: &str = "No webhook with this id.";
const NO_DELIVERY: &str = "No delivery with this id for this webhook.";
/// Longest `event_type` filter.
const MAX_EVENT_TYPE: usize = 100;

fn ops(s: &AdminState) -> WebhookOps<'_> {
    WebhookOps {
        secrets: &s.webhooks.secrets,
        chain: s.key_service.audit_chain(),
    }
}

/// A path id that is not a UUID names nothing: 404, like an unknown one.
fn path_id(id: Option<&str>, missing: &'static str) -> Result<Uuid, ApiError> {
    id.and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(ApiError::NotFound(missing))
}

/// `events`: an array of event names, `api_key.*` or `*`.
fn events(b: &mut Body, field: &str) -> Option<Vec<String>> {
    let v = b.take(field)?;
    let Value::Array(items) = v else {
        b.problems.add(
            field,
            "Must be an array of event names, `api_key.*` or `*`.",
        );
        return None;
    };
    let mut list = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::String(s) => list.push(s),
            _ => {
                b.problems.add(format!("{field}[{i}]"), "Must be a string.");
                return None;
            }
        }
    }
    match repo::check_events(&list) {
        Ok(list) => Some(list),
        Err((at, why)) => {
            let at = at.map_or(field.to_string(), |i| format!("{field}[{i}]"));
            b.problems.add(at, why);
            None
        }
    }
}

fn boolean(b: &mut Body, field: &str) -> Option<bool> {
    match b.take(field)? {
        Value::Bool(v) => Some(v),
        _ => {
            b.problems.add(field, "Must be true or false.");
            None
        }
    }
}

/// `url`: a string of at most [`MAX_URL`] characters (checked by the
/// guard afterwards, once every field problem is known).
fn url_field(b: &mut Body) -> Option<String> {
    let url = b.text("url", MAX_URL)?;
    if url.trim().is_empty() {
        b.problems.add("url", "Must not be empty.");
        return None;
    }
    Some(url)
}

/// The SSRF guard: the normalised URL, or 400 `invalid_webhook_url`.
async fn guarded(s: &AdminState, url: &str) -> Result<String, ApiError> {
    ssrf::check_url(url, s.webhooks.config.allow_private_targets)
        .await
        .map(|u| u.to_string())
        .map_err(ApiError::InvalidWebhookUrl)
}

pub async fn create_webhook(
    s: &AdminState,
    caller: &Caller,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let mut b = Body::parse(body, false)?;
    for required in ["url", "events"] {
        if !b.has(required) {
            b.problems.add(required, "Required.");
        }
    }
    let url = url_field(&mut b);
    let events = events(&mut b, "events");
    let description = b.text("description", MAX_DESCRIPTION).unwrap_or_default();
    let enabled = boolean(&mut b, "enabled").unwrap_or(true);
    let (url, events) = b.finish().finish((url, events))?;
    let (Some(url), Some(events)) = (url, events) else {
        return Err(ApiError::Internal);
    };
    let url = guarded(s, &url).await?;
    let new = NewWebhook {
        url,
        description,
        events,
        enabled,
    };
    let mut client = db(s).await?;
    let created = ops(s).create(&mut client, &caller.origin, &new).await?;
    Ok(json(StatusCode::CREATED, &created))
}

pub async fn list_webhooks(
    s: &AdminState,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let mut q = Query::parse(query);
    let limit = q.limit();
    let after_id = cursor(&mut q);
    let after_id = q.finish().finish(after_id)?;
    let client = db(s).await?;
    let rows = repo::list(&**client, after_id, limit + 1).await?;
    Ok(page(rows, limit, |r| r.id.to_string()))
}

/// `cursor`: the id of the last row of the previous page.
fn cursor(q: &mut Query) -> Option<Uuid> {
    let c = q.take("cursor")?;
    match Uuid::parse_str(&c) {
        Ok(id) => Some(id),
        Err(_) => {
            q.problems.add("cursor", "Not a cursor from this API.");
            None
        }
    }
}

pub async fn get_webhook(s: &AdminState, id: Option<&str>) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let client = db(s).await?;
    let row = repo::get(&**client, id)
        .await?
        .ok_or(ApiError::NotFound(NO_WEBHOOK))?;
    Ok(json(StatusCode::OK, &row))
}

pub async fn update_webhook(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let mut b = Body::parse(body, false)?;
    if b.is_empty() {
        b.problems.add("", "Give at least one field to change.");
    }
    let change = WebhookUpdate {
        url: url_field(&mut b),
        description: b.text("description", MAX_DESCRIPTION),
        events: events(&mut b, "events"),
        enabled: boolean(&mut b, "enabled"),
    };
    let mut change = b.finish().finish(change)?;
    let mut client = db(s).await?;
    if let Some(url) = change.url.take() {
        let current = repo::get(&**client, id)
            .await?
            .ok_or(ApiError::NotFound(NO_WEBHOOK))?;
        // The guard runs again only when the URL changes; the dispatcher
        // checks the stored URL at every connect anyway.
        let unchanged = url::Url::parse(&url).is_ok_and(|u| u.as_str() == current.url);
        change.url = Some(if unchanged {
            current.url
        } else {
            guarded(s, &url).await?
        });
    }
    let row = ops(s)
        .update(&mut client, &caller.origin, id, change)
        .await?
        .ok_or(ApiError::NotFound(NO_WEBHOOK))?;
    drop(client);
    if row.enabled {
        // Deliveries that waited for a re-enable are due now.
        s.webhooks.wake();
    }
    Ok(json(StatusCode::OK, &row))
}

pub async fn delete_webhook(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let mut client = db(s).await?;
    if !ops(s).delete(&mut client, &caller.origin, id).await? {
        return Err(ApiError::NotFound(NO_WEBHOOK));
    }
    Ok(no_content())
}

/// 204: no body, no content type.
pub(super) fn no_content() -> Response<Vec<u8>> {
    let mut resp = Response::new(Vec::new());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

pub async fn rotate_webhook_secret(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let mut b = Body::parse(body, true)?;
    let max = MAX_SECRET_GRACE.as_secs() as i64;
    let grace = b
        .integer("grace_seconds", 0, max)
        .map_or(DEFAULT_SECRET_GRACE, |n| Duration::from_secs(n as u64));
    let grace = b.finish().finish(grace)?;
    let mut client = db(s).await?;
    let rotated = ops(s)
        .rotate_secret(&mut client, &caller.origin, id, grace, Utc::now())
        .await?
        .ok_or(ApiError::NotFound(NO_WEBHOOK))?;
    Ok(json(StatusCode::OK, &rotated))
}

pub async fn list_webhook_deliveries(
    s: &AdminState,
    id: Option<&str>,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let mut q = Query::parse(query);
    let limit = q.limit();
    let after_id = cursor(&mut q);
    let status = q.take("status").and_then(|v| {
        if matches!(v.as_str(), "pending" | "succeeded" | "failed") {
            Some(v)
        } else {
            q.problems
                .add("status", "Must be one of pending, succeeded, failed.");
            None
        }
    });
    let event_type = q.text("event_type", MAX_EVENT_TYPE);
    let filter = DeliveryFilter {
        status,
        event_type,
        after_id,
    };
    let filter = q.finish().finish(filter)?;
    let client = db(s).await?;
    if repo::get(&**client, id).await?.is_none() {
        return Err(ApiError::NotFound(NO_WEBHOOK));
    }
    let rows = repo::list_deliveries(&**client, id, &filter, limit + 1).await?;
    Ok(page(rows, limit, |r| r.id.to_string()))
}

pub async fn get_webhook_delivery(
    s: &AdminState,
    id: Option<&str>,
    delivery: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let delivery = path_id(delivery, NO_DELIVERY)?;
    let client = db(s).await?;
    let detail = repo::get_delivery_detail(&**client, id, delivery)
        .await?
        .ok_or(ApiError::NotFound(NO_DELIVERY))?;
    Ok(json(StatusCode::OK, &detail))
}

pub async fn retry_webhook_delivery(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    delivery: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    let delivery = path_id(delivery, NO_DELIVERY)?;
    Body::parse(body, true)?.finish().finish(())?;
    let mut client = db(s).await?;
    let row = ops(s)
        .retry_delivery(&mut client, &caller.origin, id, delivery)
        .await?
        .ok_or(ApiError::NotFound(NO_DELIVERY))?;
    drop(client);
    s.webhooks.wake();
    Ok(json(StatusCode::ACCEPTED, &row))
}

/// One `webhook.test` event for this endpoint only, attempted now on this
/// instance; answers with the delivery and its attempt, failed or not.
pub async fn test_webhook(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = path_id(id, NO_WEBHOOK)?;
    Body::parse(body, true)?.finish().finish(())?;
    let mut client = db(s).await?;
    let delivery = ops(s)
        .create_test(&mut client, &caller.origin, id, s.webhooks.lease())
        .await?
        .ok_or(ApiError::NotFound(NO_WEBHOOK))?;
    drop(client);
    if let Err(e) = s.webhooks.attempt_now(delivery).await {
        // The delivery stays pending; the dispatcher attempts it later.
        tracing::warn!(webhook_id = %id, delivery_id = %delivery, error = format!("{e:#}"),
            "webhook test: attempt not made now");
    }
    let client = db(s).await?;
    let detail = repo::get_delivery_detail(&**client, id, delivery)
        .await?
        .ok_or(ApiError::NotFound(NO_WEBHOOK))?;
    Ok(json(StatusCode::OK, &detail))
}
