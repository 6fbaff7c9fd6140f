//! `/api/v1/rate-limits`: a key's own view of its tiers, and an admin's
//! way to set a key's overrides.

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::input::Body;
use super::keys::{key_id, until_visible};
use super::{db, json, AdminState, Caller};
use crate::config::Limits;
use crate::limits::{Decision, Mode, Tier, TierState};
use crate::route::Route;
use crate::service::keys::KeyUpdate;

/// One tier as the status endpoint shows it.
#[derive(Serialize)]
struct TierView {
    name: &'static str,
    limit: u32,
    remaining: u32,
    window_seconds: u64,
    /// Unix seconds: when the tier admits again if it has no room, else
    /// when its current window ends (the `X-RateLimit-Reset` rule).
    reset: u64,
    reset_after_seconds: u64,
}

fn views(d: &Decision) -> Vec<TierView> {
    d.tiers
        .iter()
        .map(|s: &TierState| TierView {
            name: s.tier.name(),
            limit: s.tier.limit,
            remaining: s.remaining,
            window_seconds: s.tier.window_ms() / 1000,
            reset: s.reset_at(d.now_ms),
            reset_after_seconds: s.reset_seconds(),
        })
        .collect()
}

async fn peek(s: &AdminState, route: Option<&Route>, tiers: &[Tier]) -> Result<Decision, ApiError> {
    s.limiter
        .query(route, tiers, Mode::Peek)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "rate-limit status: backend failed");
            ApiError::RateLimiterUnavailable
        })
}

/// `GET /api/v1/rate-limits/status`: the calling key's tiers, and its
/// per-route tiers on routes that set `rate_limit`. Reading counts nothing.
pub async fn get_rate_limit_status(
    s: &AdminState,
    caller: &Caller,
) -> Result<Response<Vec<u8>>, ApiError> {
    let policy = s.limiter.policy_full();
    let key = &caller.key;
    let own = peek(s, None, &policy.own_tiers(key)).await?;
    let mut routes = Vec::new();
    // One table for the whole answer, even if a reload swaps it meanwhile.
    let table = s.routes.load_full();
    for r in table.iter() {
        if !r.auth.needs_credential() {
            continue;
        }
        let tiers = policy.route_tiers(key, r);
        if tiers.is_empty() {
            continue;
        }
        let d = peek(s, Some(r), &tiers).await?;
        routes.push(json!({"route": &*r.name, "tiers": views(&d)}));
    }
    Ok(json(
        StatusCode::OK,
        &json!({
            "key_id": key.id,
            "backend": s.limiter.backend_name(),
            "tiers": views(&own),
            "routes": routes,
        }),
    ))
}

/// `PUT /api/v1/rate-limits/keys/{id}`: replaces the key's overrides with
/// the body's `per_minute`, `per_hour` and `per_day` (absent or null: the
/// configured default). Audited as a key update; every instance applies it
/// through the key snapshot, this one before it answers.
pub async fn set_key_rate_limits(
    s: &AdminState,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = key_id(id)?;
    let mut b = Body::parse(body, true)?;
    let limits = b.tiers();
    let limits = b.finish().finish(limits)?;
    let mut client = db(s).await?;
    let change = KeyUpdate {
        limits: Some(limits),
        ..KeyUpdate::default()
    };
    let row = s
        .key_service
        .update(&mut client, &caller.origin, &caller.authority, id, change)
        .await?;
    drop(client);
    until_visible(s, row.id, row.version).await;
    Ok(json(
        StatusCode::OK,
        &limits_view(s, row.id, row.rate_limits),
    ))
}

fn limits_view(s: &AdminState, id: uuid::Uuid, overrides: Limits) -> serde_json::Value {
    json!({
        "key_id": id,
        "overrides": overrides,
        "effective": s.limiter.policy().key_limits(overrides),
    })
}
