//! Route options at the edge (DESIGN §3 "Edge: TLS, HTTP/2, route options,
//! hot reload"): host lists, prefix rewriting, header-based version
//! matching, header rules, body size, IP rules and compression. CORS and
//! deprecation are in `cors`; TLS in `tls`.

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::cors::{CorsConfig, DeprecationConfig};
use super::{file, Errors};

/// Headers to set (replacing any the message carries) and to remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Everything a route does at the edge besides auth and limits. Defaults
/// change nothing.
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    /// Forward the path without the matched prefix (`/orders/1` → `/1`).
    pub strip_prefix: bool,
    /// Replace the matched prefix with this one.
    pub rewrite_prefix: Option<String>,
    /// Header conditions (lower-case name, exact value), all required.
    pub match_headers: Vec<(HeaderName, HeaderValue)>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// Largest request body; `None` falls back to `proxy.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// When non-empty, only these client networks may call the route.
    pub allow_ips: Vec<IpNet>,
    /// These client networks are refused (checked before `allow_ips`).
    pub deny_ips: Vec<IpNet>,
    /// Compress responses by `Accept-Encoding`.
    pub compress: bool,
    pub cors: Option<CorsConfig>,
    pub deprecation: Option<DeprecationConfig>,
}

/// Builds the edge options of `routes[i]` (`path` is `routes[i]`).
pub(super) fn build_route_options(
    r: &mut file::Route,
    path: &str,
    errs: &mut Errors,
) -> RouteOptions {
    let mut o = build_routing_options(r, path, errs);
    o.cors = r
        .cors
        .take()
        .and_then(|c| super::cors::build_cors(c, &format!("{path}.cors"), errs));
    o.deprecation = r
        .deprecation
        .take()
        .and_then(|d| super::cors::build_deprecation(d, &format!("{path}.deprecation"), errs));
    o
}

/// `strip_prefix`, `rewrite_prefix`, `match_headers`, the header rules,
/// `max_body_bytes`, the IP rules and `compress`.
fn build_routing_options(_r: &mut file::Route, _path: &str, _errs: &mut Errors) -> RouteOptions {
    // Filled in by the route-options work (issue 17).
    RouteOptions::default()
}
