//! A route's request metrics as ready handles. The `metrics` macros build
//! a label set and look it up in the registry on every call; at tens of
//! thousands of requests per second per core that was a measurable share
//! of the proxy's CPU (issue 5 profile), so each route resolves its
//! handles once. [`RouteMetrics::register`] resolves some at boot, so each
//! route's series exist (at zero) from start-up; other method × status
//! pairs still appear only once they happen.

use std::sync::{Arc, LazyLock, OnceLock};

use http::Method;
use metrics::{Counter, Histogram, SharedString};

/// Method labels, bounded: anything unusual is `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// Statuses with a cached counter; others go through the macro.
const STATUSES: [u16; 23] = [
    0, 200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 409, 413, 429,
    500, 502, 503, 504,
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The metrics of requests that matched no route (`route="none"`).
pub fn no_route() -> &'static RouteMetrics {
    static NO_ROUTE: LazyLock<RouteMetrics> =
        LazyLock::new(|| RouteMetrics::new(NO_ROUTE_LABEL.into()));
    &NO_ROUTE
}

/// The `route` label of requests that matched no route.
pub const NO_ROUTE_LABEL: &str = "none";

pub struct RouteMetrics {
    route: Arc<str>,
    duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    /// `gateway_requests_total`, indexed by method × position in [`STATUSES`].
    requests: Box<[OnceLock<Counter>]>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish()
    }
}

impl RouteMetrics {
    pub fn new(route: Arc<str>) -> Self {
        Self {
            route,
            duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            requests: (0..METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Registers the route's series at zero through the same handles the
    /// proxy records into: both histograms, and `gateway_requests_total`
    /// for `GET` 200 only, so the route is in `/metrics` (and in a `route`
    /// selector) from start-up without fabricating every method × status.
    pub fn register(&self) {
        let _ = self.duration();
        let _ = self.upstream_duration();
        self.count_request_n(&Method::GET, 200, 0);
    }

    fn label(&self) -> SharedString {
        self.route.clone().into()
    }

    /// Counts one request in `gateway_requests_total{route, method, status}`.
    pub fn count_request(&self, method: &Method, status: u16) {
        self.count_request_n(method, status, 1);
    }

    fn count_request_n(&self, method: &Method, status: u16, n: u64) {
        let m = method_index(method);
        let register = || {
            metrics::counter!("gateway_requests_total",
                "route" => self.label(), "method" => METHODS[m], "status" => status.to_string())
        };
        match STATUSES.iter().position(|s| *s == status) {
            Some(s) => self.requests[m * STATUSES.len() + s]
                .get_or_init(register)
                .increment(n),
            None => register().increment(n),
        }
    }

    /// `gateway_request_duration_seconds{route}`.
    pub fn duration(&self) -> &Histogram {
        self.duration.get_or_init(
            || metrics::histogram!("gateway_request_duration_seconds", "route" => self.label()),
        )
    }

    /// `gateway_upstream_duration_seconds{route}`.
    pub fn upstream_duration(&self) -> &Histogram {
        self.upstream_duration.get_or_init(
            || metrics::histogram!("gateway_upstream_duration_seconds", "route" => self.label()),
        )
    }
}
