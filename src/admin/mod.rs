//! The admin listener: `/api/v1` (keys, audit logs), health, metrics and
//! `/openapi.json`.
//!
//! The router is plain code: a table of (path, method, operation) in
//! [`routes`] and one exhaustive `match` on the operation here, as in
//! linkerd2's admin server. Callers authenticate with an API key exactly as
//! on the proxy; every error is the proxy's JSON shape, built in [`error`].

pub mod audit;
pub mod config;
pub mod denials;
pub mod error;
pub mod health;
pub mod input;
pub mod keys;
pub mod rate_limits;
pub mod requests;
pub mod roles;
pub mod routes;
pub mod stats;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use http::{Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use self::denials::{Denial, DenialAudit};
use self::error::{ApiError, MAX_BODY_BYTES};
use self::routes::{Access, Op, Resolved};
use crate::errors::ProxyError;
use crate::identity::{self, Authenticator};
use crate::keys::scope::{first_missing, Scope};
use crate::keys::snapshot::{KeyRecord, KeyStore, PreviousSecret};
use crate::limits::{headers, RateLimiter};
use crate::route::Routes;
use crate::service::keys::{Authority, KeyService};
use crate::service::last_used::LastUsedTracker;
use crate::store::audit::{Actor, Origin};

/// Bound on one admin call once authorised: a link to Postgres that dies
/// mid-call never answers, so the caller gets 503 `database_unavailable`
/// instead of waiting for ever. Above a pool checkout at the default
/// `database.connect_timeout_ms` (wait, recycle and create, 3 s each) plus
/// [`crate::store::STATEMENT_TIMEOUT`].
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest `User-Agent` kept in the audit log.
const MAX_USER_AGENT: usize = 256;

/// The `route` label of admin calls in `gateway_rate_limited_total`.
pub const ADMIN_ROUTE_LABEL: &str = "admin";

/// Registers the admin API's metrics at zero (see [`crate::telemetry`]).
pub fn register_metrics() {
    for reason in identity::auth_reason::ALL
        .iter()
        .chain(identity::auth_reason::ADMIN_ONLY)
    {
        metrics::counter!("gateway_admin_auth_failures_total", "reason" => *reason).absolute(0);
    }
    for tier in crate::limits::AUTH_FAILURE_TIERS {
        metrics::counter!("gateway_rate_limited_total", "tier" => tier, "route" => ADMIN_ROUTE_LABEL)
            .absolute(0);
    }
    metrics::counter!("gateway_admin_visibility_timeouts_total").absolute(0);
    denials::register_metrics();
}

/// Everything the admin handlers read.
pub struct AdminState {
    pub keys: Arc<KeyStore>,
    pub pool: Pool,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    pub redis_configured: bool,
    pub limiter: Arc<RateLimiter>,
    /// The route table the proxy serves, for `/rate-limits/status`.
    pub routes: Routes,
    pub auth: Authenticator,
    pub key_service: KeyService,
    pub last_used: LastUsedTracker,
    /// `admin/openapi.yaml` as JSON, converted once at start.
    pub openapi_json: Result<Vec<u8>, String>,
    /// Webhook secrets, settings and the dispatcher.
    pub webhooks: crate::webhooks::dispatch::Dispatch,
    /// Refused calls go to the one denial writer ([`denials`]).
    denials: DenialAudit,
    /// JWT issuers' key sets, for readiness and `/health`.
    pub jwt: Arc<crate::jwt::Jwt>,
    /// The running configuration and its reloads; `None` outside `serve`.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
}

impl AdminState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: Arc<KeyStore>,
        pool: Pool,
        prometheus: PrometheusHandle,
        redis_configured: bool,
        limiter: Arc<RateLimiter>,
        routes: Routes,
        auth: Authenticator,
        key_service: KeyService,
        last_used: LastUsedTracker,
        denials: DenialAudit,
        webhooks: crate::webhooks::dispatch::Dispatch,
    ) -> Self {
        Self {
            keys,
            pool,
            prometheus,
            started: Instant::now(),
            redis_configured,
            limiter,
            routes,
            auth,
            key_service,
            last_used,
            openapi_json: openapi_json(),
            webhooks,
            denials,
            jwt: crate::jwt::Jwt::new(&crate::config::JwtConfig::default()),
            reloader: None,
        }
    }

    /// The verifier whose issuers readiness and `/health` report on.
    pub fn with_jwt(mut self, jwt: Arc<crate::jwt::Jwt>) -> Self {
        self.jwt = jwt;
        self
    }
}

/// The admin API's OpenAPI document, embedded at build time.
pub const OPENAPI_YAML: &str = include_str!("../../admin/openapi.yaml");

/// The spec as JSON.
pub fn openapi_json() -> Result<Vec<u8>, String> {
    let v: serde_json::Value = serde_yaml_ng::from_str(OPENAPI_YAML)
        .map_err(|e| format!("admin/openapi.yaml does not parse: {e}"))?;
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

/// An authenticated admin caller.
pub struct Caller {
    pub origin: Origin,
    pub authority: Authority,
    pub key: Arc<KeyRecord>,
    /// `METHOD /path`, the target of a denial's audit entry.
    endpoint: String,
    previous_secret: Option<PreviousSecret>,
}

pub struct AdminApp {
    state: Arc<AdminState>,
}

impl AdminApp {
    pub fn new(state: Arc<AdminState>) -> Self {
        Self { state }
    }
}

/// A response with a body of `content_type`.
pub fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Vec<u8>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise admin response");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                br#"{"error":{"code":"internal_error","message":"Internal error.","request_id":""}}"#
                    .to_vec(),
            )
        }
    }
}

/// A list response, `{"data": [...], "next_cursor": ...}`, from rows fetched
/// with `LIMIT limit + 1`: the extra row only tells that another page exists,
/// and the cursor is that of the last row shown.
pub fn page<T: Serialize>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> Response<Vec<u8>> {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more.then(|| rows.last().map(&cursor)).flatten();
    json(
        StatusCode::OK,
        &serde_json::json!({"data": rows, "next_cursor": next_cursor}),
    )
}

/// A pooled connection, or 503 when Postgres cannot be reached.
pub async fn db(s: &AdminState) -> Result<deadpool_postgres::Object, ApiError> {
    Ok(s.pool.get().await.map_err(crate::store::DbError::from)?)
}

/// Reads the request body, refusing more than [`MAX_BODY_BYTES`] and any
/// content type but JSON.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let req = session.req_header();
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Do not read (or drain) what we refuse.
        session.set_keepalive(None);
        return Err(ApiError::PayloadTooLarge);
    }
    let is_json = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    session.set_keepalive(None);
                    return Err(ApiError::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                tracing::debug!(request_id = ?session.req_header().headers.get("x-request-id"), error = %e, "admin body read failed");
                return Err(ApiError::InvalidJson(
                    "The request body could not be read.".into(),
                ));
            }
        }
    }
    if !body.is_empty() && is_json != Some(true) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(body)
}

fn header_string(
    session: &ServerSession,
    name: http::header::HeaderName,
    max: usize,
) -> Option<String> {
    session.req_header().headers.get(name).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(max)
            .collect()
    })
}

impl AdminApp {
    /// Authenticates the caller and checks `scope`, if any. Refusals are
    /// audited in the background, so they answer at once even when
    /// Postgres is slow. The brute-force guard of the proxy applies here
    /// too: an address that keeps presenting bad keys gets 429 before any
    /// key work (miss lookups included) and before anything is audited.
    async fn authorize(
        &self,
        session: &ServerSession,
        scope: Option<&'static str>,
        request_id: &str,
    ) -> Result<Caller, ApiError> {
        let req = session.req_header();
        let s = &self.state;
        // Before the first full load every key would look unknown: 503, so
        // a client retries instead of concluding its key is bad.
        if !s.keys.is_loaded() {
            return Err(ApiError::NotReady);
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let client = s.limiter.client(identity::client_ip(
            req,
            peer,
            &s.limiter.policy().trusted_proxies,
        ));
        if let Some(d) = s.limiter.guard_blocked(&client) {
            let tier = d.headline_name();
            metrics::counter!("gateway_admin_auth_failures_total", "reason" => identity::auth_reason::RATE_LIMITED)
                .increment(1);
            metrics::counter!("gateway_rate_limited_total", "tier" => tier, "route" => ADMIN_ROUTE_LABEL)
                .increment(1);
            return Err(ApiError::Limited {
                tier,
                headers: Box::new(headers::render_as(&d, s.limiter.policy().headers)),
            });
        }
        let mut origin = Origin {
            actor: Actor::Anonymous,
            client_ip: client.ip.map(|ip| ip.to_string()),
            user_agent: header_string(session, http::header::USER_AGENT, MAX_USER_AGENT),
            request_id: request_id.to_string(),
        };
        let endpoint: String = format!("{} {}", req.method, req.uri.path())
            .chars()
            .take(200)
            .collect();
        let authenticated = match s.auth.authenticate(req).await {
            Ok(a) => a,
            Err((reason, e)) => {
                metrics::counter!("gateway_admin_auth_failures_total", "reason" => reason)
                    .increment(1);
                s.limiter.record_auth_failure(&client, reason);
                self.audit_denial(origin, endpoint, e.code(), e.message().into_owned());
                return Err(ApiError::Auth(e));
            }
        };
        origin.actor = Actor::Key(authenticated.record.id);
        s.last_used.record(&authenticated.record);
        let held = &authenticated.record.scopes;
        let authority = Authority::of(held).until(
            authenticated
                .record
                .expires_at_ms
                .and_then(chrono::DateTime::from_timestamp_millis),
        );
        let required = match scope {
            Some(scope) => vec![Scope::parse(scope).map_err(|_| ApiError::Internal)?],
            None => Vec::new(),
        };
        // `admin` satisfies every admin scope (DESIGN §3 "Scopes").
        let missing = match authority {
            Authority::Unrestricted => None,
            Authority::Holds { .. } => first_missing(held, &required),
        };
        if let Some(missing) = missing {
            let e = ProxyError::InsufficientScope(missing.clone());
            metrics::counter!("gateway_admin_auth_failures_total", "reason" => identity::auth_reason::INSUFFICIENT_SCOPE)
                .increment(1);
            self.audit_denial(origin, endpoint, e.code(), e.message().into_owned());
            return Err(ApiError::Auth(e));
        }
        Ok(Caller {
            origin,
            authority,
            key: authenticated.record,
            endpoint,
            previous_secret: authenticated.previous_secret,
        })
    }

    fn audit_denial(&self, origin: Origin, endpoint: String, code: &'static str, message: String) {
        self.state.denials.record(Denial {
            origin,
            endpoint,
            code,
            message,
            at: chrono::Utc::now(),
        });
    }

    async fn handle(
        &self,
        session: &mut ServerSession,
        op: Op,
        (id, sub): (Option<&str>, Option<&str>),
        query: Option<&str>,
        request_id: &str,
    ) -> Result<Response<Vec<u8>>, ApiError> {
        let s = &*self.state;
        let caller = match op.access() {
            Access::Public => None,
            Access::AnyKey => Some(self.authorize(session, None, request_id).await?),
            Access::Scope(scope) => Some(self.authorize(session, Some(scope), request_id).await?),
        };
        let body = match op {
            Op::CreateKey
            | Op::UpdateKey
            | Op::PatchKey
            | Op::RotateKey
            | Op::SetKeyRateLimits
            | Op::CreateWebhook
            | Op::UpdateWebhook
            | Op::RotateWebhookSecret
            | Op::TestWebhook
            | Op::RetryWebhookDelivery
            | Op::CreateRole
            | Op::UpdateRole
            | Op::PatchRole => read_body(session).await?,
            _ => Vec::new(),
        };
        let authed = || caller.as_ref().ok_or(ApiError::Internal);
        let result = tokio::time::timeout(CALL_TIMEOUT, async {
            Ok(match op {
                Op::Health => health::health(s).await,
                Op::HealthLive => health::live(),
                Op::HealthReady => health::ready(s),
                Op::Metrics => health::metrics(s).await,
                Op::GetOpenapi => match &s.openapi_json {
                    Ok(spec) => respond(StatusCode::OK, "application/json", spec.clone()),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serve /openapi.json");
                        return Err(ApiError::Internal);
                    }
                },
                Op::CreateKey => keys::create_key(s, authed()?, &body).await?,
                Op::ListKeys => keys::list_keys(s, query).await?,
                Op::GetKey => keys::get_key(s, id).await?,
                Op::UpdateKey | Op::PatchKey => keys::update_key(s, authed()?, id, &body).await?,
                Op::RevokeKey => keys::revoke_key(s, authed()?, id).await?,
                Op::RotateKey => keys::rotate_key(s, authed()?, id, &body).await?,
                Op::GetRateLimitStatus => rate_limits::get_rate_limit_status(s, authed()?).await?,
                Op::SetKeyRateLimits => {
                    rate_limits::set_key_rate_limits(s, authed()?, id, &body).await?
                }
                Op::ListAuditLogs => audit::list_audit_logs(s, query).await?,
                Op::GetRequestStats => stats::request_stats(s, query).await?,
                Op::GetKeyUsage => stats::key_usage(s, id, query).await?,
                Op::ListRequests => requests::list_requests(s, query).await?,
                Op::GetRequest => requests::get_request(s, id).await?,
                Op::CreateWebhook => webhooks::create_webhook(s, authed()?, &body).await?,
                Op::ListWebhooks => webhooks::list_webhooks(s, query).await?,
                Op::GetWebhook => webhooks::get_webhook(s, id).await?,
                Op::UpdateWebhook => webhooks::update_webhook(s, authed()?, id, &body).await?,
                Op::DeleteWebhook => webhooks::delete_webhook(s, authed()?, id).await?,
                Op::RotateWebhookSecret => {
                    webhooks::rotate_webhook_secret(s, authed()?, id, &body).await?
                }
                Op::TestWebhook => webhooks::test_webhook(s, authed()?, id, &body).await?,
                Op::ListWebhookDeliveries => {
                    webhooks::list_webhook_deliveries(s, id, query).await?
                }
                Op::GetWebhookDelivery => webhooks::get_webhook_delivery(s, id, sub).await?,
                Op::RetryWebhookDelivery => {
                    webhooks::retry_webhook_delivery(s, authed()?, id, sub, &body).await?
                }
                Op::CreateRole => roles::create_role(s, authed()?, &body).await?,
                Op::ListRoles => roles::list_roles(s, query).await?,
                Op::GetRole => roles::get_role(s, id).await?,
                Op::UpdateRole | Op::PatchRole => {
                    roles::update_role(s, authed()?, id, &body).await?
                }
                Op::DeleteRole => roles::delete_role(s, authed()?, id).await?,
                Op::GetConfig => config::get_config(s)?,
                Op::ReloadConfig => config::reload_config(s, authed()?).await?,
            })
        })
        .await
        .unwrap_or_else(|_| {
            tracing::warn!(request_id, op = ?op, "admin call timed out waiting for the database");
            Err(ApiError::DatabaseUnavailable)
        });
        // An attempt to grant or take over more than the caller holds is a
        // denied call too.
        if let (Err(e @ (ApiError::Escalation(_) | ApiError::NeedsAdmin(_))), Some(c)) =
            (&result, &caller)
        {
            self.audit_denial(c.origin.clone(), c.endpoint.clone(), e.code(), e.message());
        }
        let mut resp = result?;
        if let Some(prev) = caller.as_ref().and_then(|c| c.previous_secret) {
            for (name, value) in identity::deprecation_headers(&prev) {
                if let Ok(v) = value.parse() {
                    resp.headers_mut().insert(name, v);
                }
            }
        }
        Ok(resp)
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request_id = identity::request_id(session.req_header());
        // As on the proxy (DESIGN §3 "Paths and routing"): routing and the
        // audit log see the normalised path.
        let normalized = crate::http_path::normalize_request(session.req_header_mut());
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let mut resp = match normalized.map(|()| routes::resolve(&method, &path)) {
            Err(e) => ApiError::BadRequest(e.message()).response(&request_id),
            Ok(Resolved::Found { op, id, sub }) => self
                .handle(session, op, (id, sub), query.as_deref(), &request_id)
                .await
                .unwrap_or_else(|e| e.response(&request_id)),
            Ok(Resolved::MethodNotAllowed(allow)) => {
                ApiError::MethodNotAllowed(allow).response(&request_id)
            }
            Ok(Resolved::NotFound) => {
                ApiError::NotFound("No admin endpoint at this path.").response(&request_id)
            }
        };
        if let Ok(v) = request_id.parse() {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }
}
