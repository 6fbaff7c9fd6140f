//! The error catalogue both listeners answer with: [`ProxyError`] (each
//! denial's status, stable code and safe message, DESIGN §3 "Proxy
//! responses") and the JSON body `{"error":{"code","message","request_id"}}`
//! with optional per-field [`FieldError`] details.
//!
//! It sits below `proxy` and `admin` so the two share one catalogue without
//! importing each other; how a response is written is each listener's own
//! business (`proxy::errors::write_error`, `admin::error::ApiError`).

use std::borrow::Cow;

use serde::Serialize;

use crate::keys::scope::Scope;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    MissingApiKey,
    /// The message says what was wrong without echoing the credential.
    InvalidApiKey(&'static str),
    ExpiredApiKey,
    RevokedApiKey,
    InsufficientScope(Scope),
    RouteNotFound,
    BadRequest(&'static str),
    UpstreamUnavailable,
    UpstreamTimeout,
    /// A rate-limit tier (named) has no room.
    RateLimited(&'static str),
    /// The shared rate-limit backend failed and `on_backend_error = "deny"`.
    RateLimiterUnavailable,
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::MissingApiKey
            | ProxyError::InvalidApiKey(_)
            | ProxyError::ExpiredApiKey
            | ProxyError::RevokedApiKey => 401,
            ProxyError::InsufficientScope(_) => 403,
            ProxyError::RouteNotFound => 404,
            ProxyError::BadRequest(_) => 400,
            ProxyError::UpstreamUnavailable => 502,
            ProxyError::UpstreamTimeout => 504,
            ProxyError::RateLimited(_) => 429,
            ProxyError::RateLimiterUnavailable => 503,
            ProxyError::Internal => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingApiKey => "missing_api_key",
            ProxyError::InvalidApiKey(_) => "invalid_api_key",
            ProxyError::ExpiredApiKey => "expired_api_key",
            ProxyError::RevokedApiKey => "revoked_api_key",
            ProxyError::InsufficientScope(_) => "insufficient_scope",
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::RateLimiterUnavailable => "rate_limiter_unavailable",
            ProxyError::Internal => "internal_error",
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        match self {
            ProxyError::MissingApiKey => {
                "An API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."
                    .into()
            }
            ProxyError::InvalidApiKey(why) => (*why).into(),
            ProxyError::ExpiredApiKey => "The API key has expired.".into(),
            ProxyError::RevokedApiKey => "The API key has been revoked.".into(),
            ProxyError::InsufficientScope(s) => {
                format!("The API key lacks the required scope `{s}`.").into()
            }
            ProxyError::RouteNotFound => "No route matches this request.".into(),
            ProxyError::BadRequest(why) => (*why).into(),
            ProxyError::UpstreamUnavailable => "The upstream service is unavailable.".into(),
            ProxyError::UpstreamTimeout => "The upstream service did not answer in time.".into(),
            ProxyError::RateLimited(tier) => {
                format!("Rate limit exceeded: the `{tier}` limit has no room left; retry after the time in Retry-After.").into()
            }
            ProxyError::RateLimiterUnavailable => {
                "The rate limiter is unavailable, and this gateway refuses requests it cannot count.".into()
            }
            ProxyError::Internal => "Internal gateway error.".into(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
}

/// One invalid input field of a `validation_failed` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field: `name`, `scopes[2]`, `rate_limits.per_minute`.
    pub field: String,
    pub message: String,
}

/// The JSON error body shared by the proxy and the admin listener.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    error_body_with_details(code, message, request_id, &[])
}

/// [`error_body`] with per-field `details` (omitted when empty).
pub fn error_body_with_details(
    code: &str,
    message: &str,
    request_id: &str,
    details: &[FieldError],
) -> Vec<u8> {
    serde_json::to_vec(&Body {
        error: Inner {
            code,
            message,
            request_id,
            details,
        },
    })
    .unwrap_or_else(|_| {
        br#"{"error":{"code":"internal_error","message":"","request_id":""}}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_documented_shape_and_escapes() {
        let b = error_body("invalid_api_key", "bad \"key\"", "req-1");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["message"], "bad \"key\"");
        assert_eq!(v["error"]["request_id"], "req-1");
    }

    #[test]
    fn scope_message_names_the_scope() {
        let e = ProxyError::InsufficientScope(Scope::parse("write:orders").expect("scope"));
        assert!(e.message().contains("write:orders"));
        assert_eq!(e.status(), 403);
    }
}
