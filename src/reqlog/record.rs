//! One request, as stored in `request_logs` and counted in the rollups.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{HeaderValue, Method};
use uuid::Uuid;

/// Filled by the proxy's `logging` phase from the request context. Fields
/// shared with the context (route name, request id) are reference-counted
/// clones; the strings that must be copied (path, query, user agent) are
/// the record's only allocations, bodies aside.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// UUIDv7 from the request start: sortable, and its first 48 bits name
    /// the day partition.
    pub id: Uuid,
    /// Request start.
    pub ts: DateTime<Utc>,
    pub request_id: HeaderValue,
    pub key_id: Option<Uuid>,
    pub route: Option<Arc<str>>,
    pub method: Method,
    /// The normalised path.
    pub path: Box<str>,
    /// The query string, already redacted ([`super::redact::query`]).
    pub query: Option<Box<str>>,
    pub status: u16,
    /// The gateway's own error code (`rate_limited`, `upstream_timeout`…).
    pub error_code: Option<&'static str>,
    pub latency_ms: f64,
    /// Time to the upstream's response header; None when not forwarded.
    pub upstream_latency_ms: Option<f64>,
    pub upstream: Option<SocketAddr>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<Box<str>>,
    /// Only on `log_bodies` routes: the first `max_body_bytes`, redacted.
    pub request_body: Option<Box<str>>,
    pub response_body: Option<Box<str>>,
}
