//! The admin listener: health, metrics, and (next) the `/api/v1` router.
//!
//! The router is plain code, a `match` on method and path segments, as in
//! linkerd2's admin server. Every error is the same JSON shape as the proxy's.

pub mod health;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use http::{Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::keys::snapshot::KeyStore;
use crate::proxy::errors::error_body;

/// Everything the admin handlers read.
pub struct AdminState {
    pub keys: Arc<KeyStore>,
    pub pool: Pool,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    pub redis_configured: bool,
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

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// The JSON error response, with the request id echoed in body and header.
pub fn error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response<Vec<u8>> {
    let mut resp = respond(
        status,
        "application/json",
        error_body(code, message, request_id),
    );
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn method_not_allowed(allow: &'static str, request_id: &str) -> Response<Vec<u8>> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("Use {allow}."),
        request_id,
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let request_id = uuid::Uuid::new_v4().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let s = &self.state;
        let read_only = method == Method::GET || method == Method::HEAD;
        match segments.as_slice() {
            ["health"] if read_only => health::health(s).await,
            ["health", "live"] if read_only => health::live(),
            ["health", "ready"] if read_only => health::ready(s),
            ["metrics"] if read_only => health::metrics(s),
            ["health"] | ["health", "live" | "ready"] | ["metrics"] => {
                method_not_allowed("GET, HEAD", &request_id)
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "No admin endpoint at this path.",
                &request_id,
            ),
        }
    }
}
