//! The one place admin API errors become HTTP responses. Messages are safe
//! and stable; internal causes are logged with the request id, never echoed.

use http::{Response, StatusCode};

use super::respond;
use crate::errors::{error_body_with_details, FieldError, ProxyError};
use crate::service::keys::OpError;
use crate::store::roles::RoleError;
use crate::store::DbError;

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub enum ApiError {
    Validation(Vec<FieldError>),
    /// 422 `invalid_config`: a reload refused the file; every error, with
    /// its key path in `field`, as `gateway check-config` lists them.
    InvalidConfig(Vec<FieldError>),
    InvalidJson(String),
    /// The request path is refused by [`crate::http_path`]: 400 `bad_request`.
    BadRequest(&'static str),
    /// 401 and 403 from authentication and the scope check.
    Auth(ProxyError),
    /// The caller would need this scope to grant it or to act on the key.
    Escalation(String),
    /// The change needs `admin`; says what in it does.
    NeedsAdmin(&'static str),
    NotFound(&'static str),
    /// The SSRF guard refused a webhook URL; the reason, safe to show.
    InvalidWebhookUrl(String),
    MethodNotAllowed(String),
    KeyRevoked,
    /// 409 `conflict`: the write would duplicate something unique (a role
    /// name); says what.
    Conflict(&'static str),
    PayloadTooLarge,
    UnsupportedMediaType,
    DatabaseUnavailable,
    /// The first key snapshot has not loaded: no key can be judged yet.
    NotReady,
    /// The brute-force guard refused the caller's address.
    Limited {
        tier: &'static str,
        headers: Box<crate::limits::headers::Headers>,
    },
    /// The shared rate-limit backend could not answer.
    RateLimiterUnavailable,
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_)
            | ApiError::InvalidJson(_)
            | ApiError::BadRequest(_)
            | ApiError::InvalidWebhookUrl(_) => StatusCode::BAD_REQUEST,
            ApiError::Auth(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ApiError::Escalation(_) | ApiError::NeedsAdmin(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::KeyRevoked | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::DatabaseUnavailable
            | ApiError::RateLimiterUnavailable
            | ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::InvalidConfig(_) => "invalid_config",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Auth(e) => e.code(),
            ApiError::Escalation(_) | ApiError::NeedsAdmin(_) => "insufficient_scope",
            ApiError::NotFound(_) => "not_found",
            ApiError::InvalidWebhookUrl(_) => "invalid_webhook_url",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::KeyRevoked => "key_revoked",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::DatabaseUnavailable => "database_unavailable",
            ApiError::NotReady => "not_ready",
            ApiError::Limited { .. } => "rate_limited",
            ApiError::RateLimiterUnavailable => "rate_limiter_unavailable",
            ApiError::Internal => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Validation(d) => match d.as_slice() {
                [one] if one.field.is_empty() => one.message.clone(),
                [one] => format!("`{}`: {}", one.field, one.message),
                _ => format!("{} fields are invalid; see details.", d.len()),
            },
            ApiError::InvalidConfig(d) => format!(
                "The configuration file has {} error(s); nothing was changed. See details.",
                d.len()
            ),
            ApiError::InvalidJson(m) => m.clone(),
            ApiError::BadRequest(why) => (*why).to_string(),
            ApiError::Auth(e) => e.message().into_owned(),
            ApiError::Escalation(s) => format!(
                "A key can only grant scopes it holds and act on keys whose scopes it holds; \
                 this needs `{s}`."
            ),
            ApiError::NeedsAdmin(what) => format!(
                "{what} needs `admin`: a key can only hand out what it holds, and may only \
                 shorten an expiry."
            ),
            ApiError::NotFound(what) => (*what).to_string(),
            ApiError::InvalidWebhookUrl(why) => format!("`url`: {why}"),
            ApiError::MethodNotAllowed(allow) => format!("Use {allow}."),
            ApiError::KeyRevoked => "The key is revoked; a revoked key cannot change.".into(),
            ApiError::Conflict(what) => (*what).to_string(),
            ApiError::PayloadTooLarge => {
                format!("The body is larger than {MAX_BODY_BYTES} bytes.")
            }
            ApiError::UnsupportedMediaType => "Send the body as application/json.".into(),
            ApiError::DatabaseUnavailable => {
                "The database is unavailable; the change was not made. Retry later.".into()
            }
            ApiError::NotReady => "The gateway has not loaded its keys yet; retry shortly.".into(),
            ApiError::Limited { tier, .. } => ProxyError::RateLimited(tier).message().into_owned(),
            ApiError::RateLimiterUnavailable => {
                "The rate-limit backend is unavailable; retry later.".into()
            }
            ApiError::Internal => {
                "Internal error; the request id identifies it in the logs.".into()
            }
        }
    }

    pub fn response(&self, request_id: &str) -> Response<Vec<u8>> {
        let details = match self {
            ApiError::Validation(d) | ApiError::InvalidConfig(d) => d.as_slice(),
            _ => &[],
        };
        let body = error_body_with_details(self.code(), &self.message(), request_id, details);
        let mut resp = respond(self.status(), "application/json", body);
        let headers = resp.headers_mut();
        if let Ok(v) = request_id.parse() {
            headers.insert("x-request-id", v);
        }
        match self {
            ApiError::MethodNotAllowed(allow) => {
                if let Ok(v) = allow.parse() {
                    headers.insert(http::header::ALLOW, v);
                }
            }
            ApiError::Auth(e) if e.status() == 401 => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
                );
            }
            ApiError::Limited { headers: extra, .. } => {
                for (name, value) in extra.iter() {
                    if let Ok(v) = value.parse() {
                        headers.insert(*name, v);
                    }
                }
            }
            ApiError::RateLimiterUnavailable | ApiError::NotReady => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
            }
            _ => {}
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        // Every database failure here is "could not reach or use Postgres":
        // inputs are validated before they get there, and constraint
        // violations on them would be our bug, logged as such.
        // SQLSTATE classes 08 (connection), 53 (resources) and 57 (operator
        // intervention, e.g. shutdown) mean "unavailable", not "our bug".
        let unavailable_class = |code: &str| matches!(code.get(..2), Some("08" | "53" | "57"));
        match &e {
            DbError::Postgres(pg)
                if pg
                    .as_db_error()
                    .is_some_and(|db| !unavailable_class(db.code().code())) =>
            {
                tracing::error!(error = %e.describe(), "admin database statement failed");
                ApiError::Internal
            }
            _ => {
                tracing::warn!(error = %e.describe(), "admin request: database unavailable");
                ApiError::DatabaseUnavailable
            }
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound => ApiError::NotFound("No key with this id."),
            OpError::Revoked => ApiError::KeyRevoked,
            OpError::Forbidden(scope) => ApiError::Escalation(scope),
            OpError::NeedsAdmin(what) => ApiError::NeedsAdmin(what),
            OpError::Invalid(details) => ApiError::Validation(details),
            OpError::Db(e) => e.into(),
        }
    }
}

impl From<RoleError> for ApiError {
    fn from(e: RoleError) -> Self {
        match e {
            RoleError::NotFound => ApiError::NotFound("No role with this id."),
            RoleError::NameTaken => ApiError::Conflict("A role with this name already exists."),
            RoleError::Db(e) => e.into(),
        }
    }
}
