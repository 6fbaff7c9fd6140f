//! The error catalogue both listeners answer with: [`ProxyError`] (each
//! denial's status, stable code and safe message, DESIGN §3 "Proxy
//! responses") and the JSON body `{"error":{"code","message","request_id"}}`
//! with optional per-field [`FieldError`] details.
//!
//! It sits below `proxy` and `admin` so the two share one catalogue without
//! importing each other; how a response is written is each listener's own
//! business (`proxy::errors::write_error`, `admin::error::ApiError`).

use std::borrow::Cow;
use std::sync::Arc;

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
    /// No credential on an `auth = "jwt"` route.
    MissingToken,
    /// A bearer token refused: malformed, bad signature, wrong issuer or
    /// audience, not yet valid, unknown `kid`, or a credential the route
    /// does not take. The text is safe to show and never echoes the token;
    /// it is also the `WWW-Authenticate` `error_description`.
    InvalidToken(&'static str),
    /// A bearer token whose `exp` (plus leeway) has passed.
    ExpiredToken,
    /// A token caller lacking a scope the route needs (`insufficient_scope`).
    TokenInsufficientScope(Scope),
    RouteNotFound,
    BadRequest(&'static str),
    /// The request body is larger than the route's `max_body_bytes`.
    PayloadTooLarge,
    /// The client IP is refused by the route's `allow_ips`/`deny_ips`.
    IpForbidden,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// A rate-limit tier (named) has no room.
    RateLimited(&'static str),
    /// The shared rate-limit backend failed and `on_backend_error = "deny"`.
    RateLimiterUnavailable,
    /// A CORS preflight the route's policy refuses (origin, method or a
    /// request header not allowed); the text says which, never echoing it.
    CorsRejected(&'static str),
    /// The route's `deprecation.sunset_at` has passed; `link` (the route's
    /// `deprecation.link`) is named in the message and the body.
    RouteSunset(Option<Arc<str>>),
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::MissingApiKey
            | ProxyError::InvalidApiKey(_)
            | ProxyError::ExpiredApiKey
            | ProxyError::RevokedApiKey
            | ProxyError::MissingToken
            | ProxyError::InvalidToken(_)
            | ProxyError::ExpiredToken => 401,
            ProxyError::InsufficientScope(_) | ProxyError::TokenInsufficientScope(_) => 403,
            ProxyError::RouteNotFound => 404,
            ProxyError::BadRequest(_) => 400,
            ProxyError::PayloadTooLarge => 413,
            ProxyError::IpForbidden => 403,
            ProxyError::UpstreamUnavailable => 502,
            ProxyError::UpstreamTimeout => 504,
            ProxyError::RateLimited(_) => 429,
            ProxyError::RateLimiterUnavailable => 503,
            ProxyError::CorsRejected(_) => 403,
            ProxyError::RouteSunset(_) => 410,
            ProxyError::Internal => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingApiKey => "missing_api_key",
            ProxyError::InvalidApiKey(_) => "invalid_api_key",
            ProxyError::ExpiredApiKey => "expired_api_key",
            ProxyError::RevokedApiKey => "revoked_api_key",
            ProxyError::InsufficientScope(_) | ProxyError::TokenInsufficientScope(_) => {
                "insufficient_scope"
            }
            ProxyError::MissingToken => "missing_token",
            ProxyError::InvalidToken(_) => "invalid_token",
            ProxyError::ExpiredToken => "expired_token",
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::IpForbidden => "ip_forbidden",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::RateLimiterUnavailable => "rate_limiter_unavailable",
            ProxyError::CorsRejected(_) => "cors_rejected",
            ProxyError::RouteSunset(_) => "route_sunset",
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
            ProxyError::TokenInsufficientScope(s) => {
                format!("The token lacks the required scope `{s}`.").into()
            }
            ProxyError::MissingToken => {
                "A bearer token is required: send `Authorization: Bearer <token>`.".into()
            }
            ProxyError::InvalidToken(why) => (*why).into(),
            ProxyError::ExpiredToken => "The token has expired.".into(),
            ProxyError::RouteNotFound => "No route matches this request.".into(),
            ProxyError::BadRequest(why) => (*why).into(),
            ProxyError::PayloadTooLarge => {
                "The request body is larger than this route accepts.".into()
            }
            ProxyError::IpForbidden => "This route does not accept requests from your address.".into(),
            ProxyError::UpstreamUnavailable => "The upstream service is unavailable.".into(),
            ProxyError::UpstreamTimeout => "The upstream service did not answer in time.".into(),
            ProxyError::RateLimited(tier) => {
                format!("Rate limit exceeded: the `{tier}` limit has no room left; retry after the time in Retry-After.").into()
            }
            ProxyError::RateLimiterUnavailable => {
                "The rate limiter is unavailable, and this gateway refuses requests it cannot count.".into()
            }
            ProxyError::CorsRejected(why) => (*why).into(),
            ProxyError::RouteSunset(Some(link)) => {
                format!("This route has been retired; see {link} for its replacement.").into()
            }
            ProxyError::RouteSunset(None) => "This route has been retired.".into(),
            ProxyError::Internal => "Internal gateway error.".into(),
        }
    }

    /// The URL a `route_sunset` body names as `error.link`.
    pub fn link(&self) -> Option<&str> {
        match self {
            ProxyError::RouteSunset(link) => link.as_deref(),
            _ => None,
        }
    }
}

impl ProxyError {
    /// The `WWW-Authenticate` value of a 401 (RFC 6750 §3): the bare
    /// challenge when no credential came, `error="invalid_token"` with a
    /// description for a refused token. `None` for other statuses.
    pub fn www_authenticate(&self) -> Option<String> {
        const CHALLENGE: &str = "Bearer realm=\"gateway\"";
        let description = match self {
            ProxyError::InvalidToken(why) => *why,
            ProxyError::ExpiredToken => "The token has expired.",
            _ if self.status() == 401 => return Some(CHALLENGE.to_string()),
            _ => return None,
        };
        Some(format!(
            "{CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
            quoted_string(description)
        ))
    }
}

/// `text` as the inside of an RFC 9110 quoted-string restricted to RFC
/// 6750's `error_description` characters: `"` and `\` escaped, anything
/// outside printable ASCII replaced by `?`, so no header can be split or
/// smuggled whatever a description holds.
fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
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
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'a str>,
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
    to_body(Inner {
        code,
        message,
        request_id,
        details,
        link: None,
    })
}

/// The body of a proxy denial: [`error_body`] of `err`, with `error.link`
/// when it names one (a sunset route's replacement).
pub fn proxy_error_body(err: &ProxyError, request_id: &str) -> Vec<u8> {
    to_body(Inner {
        code: err.code(),
        message: &err.message(),
        request_id,
        details: &[],
        link: err.link(),
    })
}

fn to_body(error: Inner<'_>) -> Vec<u8> {
    serde_json::to_vec(&Body { error }).unwrap_or_else(|_| {
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
    fn token_errors_challenge_with_an_escaped_description() {
        assert_eq!(
            ProxyError::MissingToken.www_authenticate().as_deref(),
            Some("Bearer realm=\"gateway\"")
        );
        assert_eq!(
            ProxyError::MissingApiKey.www_authenticate().as_deref(),
            Some("Bearer realm=\"gateway\"")
        );
        assert_eq!(
            ProxyError::ExpiredToken.www_authenticate().as_deref(),
            Some("Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"The token has expired.\"")
        );
        let hostile = ProxyError::InvalidToken("a \"quote\", a \\ and\r\nx: y é");
        let v = hostile.www_authenticate().expect("401");
        assert!(
            v.ends_with(r#"error_description="a \"quote\", a \\ and??x: y ?""#),
            "{v}"
        );
        assert!(http::HeaderValue::from_str(&v).is_ok());
        assert_eq!(ProxyError::RouteNotFound.www_authenticate(), None);
        assert_eq!(ProxyError::ExpiredToken.code(), "expired_token");
        assert_eq!(ProxyError::InvalidToken("x").status(), 401);
    }

    #[test]
    fn a_sunset_body_names_the_link() {
        let e = ProxyError::RouteSunset(Some("https://docs.example.com/v2".into()));
        assert_eq!((e.status(), e.code()), (410, "route_sunset"));
        let v: serde_json::Value =
            serde_json::from_slice(&proxy_error_body(&e, "req-1")).expect("json");
        assert_eq!(v["error"]["link"], "https://docs.example.com/v2");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("https://docs.example.com/v2")));
        let v: serde_json::Value =
            serde_json::from_slice(&proxy_error_body(&ProxyError::RouteSunset(None), "r"))
                .expect("json");
        assert!(v["error"].get("link").is_none(), "{v}");
        let v: serde_json::Value =
            serde_json::from_slice(&proxy_error_body(&ProxyError::RouteNotFound, "r"))
                .expect("json");
        assert!(v["error"].get("link").is_none(), "{v}");
    }

    #[test]
    fn scope_message_names_the_scope() {
        let e = ProxyError::InsufficientScope(Scope::parse("write:orders").expect("scope"));
        assert!(e.message().contains("write:orders"));
        assert_eq!(e.status(), 403);
    }
}
