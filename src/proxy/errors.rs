//! The one place proxy denials and failures become HTTP responses.
//!
//! Every error is `{"error":{"code","message","request_id"}}` with a stable
//! code (DESIGN §3 "Proxy responses"), written as a complete response with
//! `Content-Length` so the client's connection stays usable.

use std::borrow::Cow;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
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

/// Builds the response header for `err`.
pub fn error_header(
    err: &ProxyError,
    request_id: &str,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    if err.status() == 401 {
        resp.insert_header("www-authenticate", "Bearer realm=\"gateway\"")?;
    }
    Ok(resp)
}

/// Writes `err` as a complete JSON response on the downstream session,
/// with `extra` headers (rate-limit headers on a 429).
pub async fn write_error(
    session: &mut Session,
    err: &ProxyError,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let body = error_body(err.code(), &err.message(), request_id);
    let mut resp = error_header(err, request_id, body.len())?;
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
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
