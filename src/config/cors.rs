//! Route `cors` and `deprecation` (DESIGN §3 "Edge: TLS, HTTP/2, route
//! options, hot reload").

use chrono::{DateTime, Utc};
use http::{HeaderName, Method};

use super::{file, Errors};

/// Which origins a route's CORS answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowOrigins {
    /// `*`: any origin, never with credentials.
    Any,
    /// Exact origins (`scheme://host[:port]`, lower-case).
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub allow_origins: AllowOrigins,
    pub allow_methods: Vec<Method>,
    pub allow_headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub allow_credentials: bool,
    pub max_age_seconds: u64,
}

/// RFC 9745 `Deprecation` and RFC 8594 `Sunset` for a route.
#[derive(Debug, Clone)]
pub struct DeprecationConfig {
    pub deprecated_at: DateTime<Utc>,
    /// After this instant the route answers 410 `route_sunset`.
    pub sunset_at: Option<DateTime<Utc>>,
    /// Sent as `Link: <…>; rel="deprecation"` and named in the 410 body.
    pub link: Option<String>,
}

pub(super) fn build_cors(_c: file::Cors, _path: &str, _errs: &mut Errors) -> Option<CorsConfig> {
    // Filled in by the CORS work (issue 17).
    None
}

pub(super) fn build_deprecation(
    _d: file::Deprecation,
    _path: &str,
    _errs: &mut Errors,
) -> Option<DeprecationConfig> {
    // Filled in by the deprecation work (issue 17).
    None
}
