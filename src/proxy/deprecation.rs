//! Deprecated and sunset routes (DESIGN §3 "Edge"; RFC 9745 `Deprecation`,
//! RFC 8594 `Sunset`): the headers of a deprecated route's responses, the
//! 410 `route_sunset` after its `sunset_at`, and
//! `gateway_deprecated_requests_total{route, key}`, the answer to "who
//! still calls v1".
//!
//! A route's deprecation is about the API and wins over a rotated key's
//! `Deprecation`/`Sunset` (which are about the credential): on a
//! deprecated route the route's headers replace the key's, a route
//! without `sunset_at` removing the key's `Sunset` so the two never mix.

use chrono::{DateTime, Utc};
use http::header::LINK;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::config::DeprecationConfig;
use crate::errors::ProxyError;
use crate::route::{Route, RouteTable};

/// The `key` label of a caller that is not a key.
pub mod caller {
    /// A caller authenticated by a bearer token (JWT).
    pub const TOKEN: &str = "token";
    /// No caller identified: an `auth = "none"` route, a refused
    /// credential, or a sunset 410 whose credential is not a key the
    /// snapshot holds.
    pub const ANONYMOUS: &str = "anonymous";
}

/// Registers, at zero, one series per deprecated route (as its anonymous
/// caller), so a dashboard of deprecated traffic has its series before the
/// first call. Series per key appear with each key's first call: a key id
/// is not known at start, and only deprecated routes make any.
pub fn register_metrics(routes: &RouteTable) {
    for route in routes.iter() {
        if route.options.deprecation.is_some() {
            metrics::counter!("gateway_deprecated_requests_total", "route" => route.name.to_string(), "key" => caller::ANONYMOUS)
                .absolute(0);
        }
    }
}

/// The 410 for `route` if it is past its sunset at `now`.
pub fn sunset_error(route: &Route, now: DateTime<Utc>) -> Option<ProxyError> {
    let d = route.options.deprecation.as_ref()?;
    d.is_sunset(now)
        .then(|| ProxyError::RouteSunset(d.link.as_deref().map(Into::into)))
}

/// Adds the route's `Deprecation`, `Sunset` and `Link` to a response,
/// replacing a rotated key's (see the module doc). An upstream's own
/// `Link` values stay; ours is added beside them.
pub fn stamp(d: &DeprecationConfig, resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.insert_header("deprecation", d.deprecation_value.clone())?;
    match &d.sunset_value {
        Some(v) => resp.insert_header("sunset", v.clone())?,
        None => {
            resp.remove_header("sunset");
        }
    }
    if let Some(link) = &d.link_value {
        resp.append_header(LINK, link.clone())?;
    }
    Ok(())
}

/// Counts a finished request on a deprecated route by its caller: the
/// key id, [`caller::TOKEN`] or [`caller::ANONYMOUS`]. Preflights are
/// browser mechanics, not calls, and are not counted.
pub fn count_call(session: &Session, ctx: &RequestCtx) {
    let Some(route) = ctx
        .route
        .as_ref()
        .filter(|r| r.options.deprecation.is_some())
    else {
        return;
    };
    if route.options.cors.is_some() && super::cors::is_preflight(session.req_header()) {
        return;
    }
    let key: metrics::SharedString = match (&ctx.key, &ctx.token) {
        (Some(k), _) => k.id.to_string().into(),
        (None, Some(_)) => caller::TOKEN.into(),
        (None, None) => caller::ANONYMOUS.into(),
    };
    metrics::counter!("gateway_deprecated_requests_total", "route" => route.name.clone(), "key" => key)
        .increment(1);
}
