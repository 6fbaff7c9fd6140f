//! The route table: one immutable [`RouteTable`] built from `[[routes]]`
//! and `[[upstreams]]`, each [`Route`] carrying everything about it (what
//! it matches, its upstream, scopes, auth mode, metrics handles and its
//! own rate limits), published behind one `ArcSwap` ([`Routes`]).
//!
//! The proxy, the limiter (and its Redis backend) and the admin API all
//! read the same table, so a reload builds a new table and swaps one thing.
//! A request holds its `Arc<Route>` for its whole life, so requests in
//! flight finish on the route (and upstream) they started with.
//!
//! Matching: a route for the request's host beats a host-less one, then
//! the longest `path_prefix` wins, then a route whose `match_headers` all
//! hold beats one of the same prefix without conditions (more conditions
//! first); prefixes match on segment boundaries (`/orders` matches `/orders` and `/orders/7`, not `/ordersx`;
//! a prefix ending in `/` matches anything below it). [`RouteTable::find`]
//! is given the path already normalised by [`crate::http_path`], so every
//! spelling of a path finds the route of its normalised form.
//!
//! Below `proxy`, `limits` and `admin`; uses only `config` and `keys`.

pub mod header_values;
pub mod metrics;
pub mod upstream;

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use http::{HeaderMap, Method};

use self::header_values::PolicyValues;
use self::metrics::RouteMetrics;
use self::upstream::Upstream;
use crate::config::{AuthMode, Config, Limits, RouteConfig, RouteOptions};
use crate::keys::scope::Scope;

/// A route's identity in the local rate-limit store, stable across
/// reloads: a route keeps its id as long as it keeps its name, so its
/// counters keep counting through a reload that inserts, removes or
/// reorders other routes, and a new route never inherits another's counts.
pub type RouteId = u32;

/// One `[[routes]]` entry, resolved: everything the proxy, the limiter and
/// the admin API need to know about it.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration's `[[routes]]`.
    pub index: u16,
    /// Names the route's counters in the local rate-limit store (the Redis
    /// backend names them by `name`); see [`RouteId`].
    pub id: RouteId,
    pub name: Arc<str>,
    pub path_prefix: String,
    /// Lower-case hosts; empty matches any host.
    pub hosts: Vec<String>,
    pub upstream: Arc<Upstream>,
    pub scopes: Vec<Scope>,
    pub method_scopes: Vec<(Method, Vec<Scope>)>,
    pub auth: AuthMode,
    pub metrics: RouteMetrics,
    /// Per caller (key, or client IP on `auth = "none"` routes) on this
    /// route (`rate_limit`); unset tiers do not apply.
    pub rate_limit: Limits,
    /// Across all callers of this route (`global_rate_limit`).
    pub global_rate_limit: Limits,
    /// Request and response bodies go into the request log (redacted).
    pub log_bodies: bool,
    /// Edge options: rewriting, header rules, body limit, IP rules,
    /// compression, CORS, deprecation. `max_body_bytes` already holds
    /// `proxy.max_body_bytes` when the route has none.
    pub options: RouteOptions,
    /// `RateLimit-Policy` and limit values of this route's tier lists,
    /// computed on first use instead of per response.
    pub rate_limit_headers: PolicyValues,
}

impl Route {
    fn matches_path(&self, path: &str) -> bool {
        let p = &self.path_prefix;
        path.starts_with(p.as_str())
            && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
    }

    /// Every `match_headers` condition holds: the header is present and
    /// each of its values is the expected one, so a request carrying two
    /// versions does not pick the route the gateway prefers while the
    /// upstream reads the other.
    fn matches_headers(&self, headers: &HeaderMap) -> bool {
        self.options.match_headers.iter().all(|(name, want)| {
            let mut values = headers.get_all(name).iter().peekable();
            values.peek().is_some() && values.all(|v| v == want)
        })
    }

    /// Scopes needed for `method`: the route's own, then the method's.
    /// `HEAD` also needs `GET`'s: it is a `GET` without the body, and
    /// upstreams answer it as one.
    pub fn required_scopes<'a>(&'a self, method: &'a Method) -> impl Iterator<Item = &'a [Scope]> {
        let head = *method == Method::HEAD;
        std::iter::once(self.scopes.as_slice()).chain(
            self.method_scopes
                .iter()
                .filter(move |(m, _)| m == method || (head && *m == Method::GET))
                .map(|(_, s)| s.as_slice()),
        )
    }
}

/// Every route of one configuration. Immutable: a new configuration makes
/// a new table.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// In match order: host-specific first, then longest prefix, then
    /// most header conditions.
    matching: Vec<Arc<Route>>,
    /// In configuration order.
    routes: Vec<Arc<Route>>,
    /// The id the next route never seen before gets.
    next_id: RouteId,
}

impl RouteTable {
    /// Builds the table with new upstreams (and their passive health).
    pub fn from_config(cfg: &Config) -> RouteTable {
        RouteTable::new(cfg, &Upstream::from_config(cfg))
    }

    /// Builds the table; `upstreams` must hold every route's upstream, which
    /// config validation guarantees.
    pub fn new(cfg: &Config, upstreams: &[Arc<Upstream>]) -> RouteTable {
        RouteTable::after(&RouteTable::default(), cfg, upstreams)
    }

    /// Builds the table that replaces `previous` on a reload: a route whose
    /// name `previous` knows keeps its [`RouteId`]; a new name gets an id
    /// no route of `previous` (nor of any table before it) ever had.
    pub fn after(previous: &RouteTable, cfg: &Config, upstreams: &[Arc<Upstream>]) -> RouteTable {
        let mut next_id = previous.next_id;
        let routes: Vec<Arc<Route>> = cfg
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, r): (usize, &RouteConfig)| {
                let upstream = upstreams.iter().find(|u| u.name == r.upstream)?.clone();
                let id = match previous.routes.iter().find(|p| p.name == r.name) {
                    Some(p) => p.id,
                    None => {
                        let id = next_id;
                        // 2^32 routes never seen before within one process:
                        // out of reach; saturating keeps it panic-free.
                        next_id = next_id.saturating_add(1);
                        id
                    }
                };
                Some(Arc::new(Route {
                    metrics: RouteMetrics::new(r.name.clone()),
                    index: u16::try_from(index).ok()?,
                    id,
                    name: r.name.clone(),
                    path_prefix: r.path_prefix.clone(),
                    hosts: r.hosts.clone(),
                    upstream,
                    scopes: r.scopes.clone(),
                    method_scopes: r
                        .method_scopes
                        .iter()
                        .filter_map(|(m, s)| {
                            Some((Method::from_bytes(m.as_bytes()).ok()?, s.clone()))
                        })
                        .collect(),
                    auth: r.auth,
                    rate_limit: r.rate_limit.unwrap_or_default(),
                    global_rate_limit: r.global_rate_limit.unwrap_or_default(),
                    log_bodies: r.log_bodies,
                    options: RouteOptions {
                        // Resolved here, so the proxy reads one value and a
                        // reload that changes the default swaps it too.
                        max_body_bytes: r.options.max_body_bytes.or(cfg.proxy.max_body_bytes),
                        ..r.options.clone()
                    },
                    rate_limit_headers: PolicyValues::default(),
                }))
            })
            .collect();
        let mut matching = routes.clone();
        matching.sort_by(|a, b| {
            (!b.hosts.is_empty())
                .cmp(&!a.hosts.is_empty())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
                .then(
                    b.options
                        .match_headers
                        .len()
                        .cmp(&a.options.match_headers.len()),
                )
        });
        RouteTable {
            matching,
            routes,
            next_id,
        }
    }

    /// The route for `host` (lower-case, no port) and `path`, among routes
    /// without header conditions.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.find_for(host, path, &HeaderMap::new())
    }

    /// The route for `host` (lower-case, no port), `path` and the request's
    /// `headers` (for `match_headers`).
    pub fn find_for(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Arc<Route>> {
        self.matching.iter().find(|r| {
            r.matches_path(path)
                && (r.hosts.is_empty() || host.is_some_and(|h| r.hosts.iter().any(|x| x == h)))
                && r.matches_headers(headers)
        })
    }

    /// Every route, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

/// The published route table: one `ArcSwap` shared by everyone who reads
/// routes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    pub fn new(table: RouteTable) -> Routes {
        Routes(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// The current table: one atomic load, no allocation. Hold the guard
    /// only for a lookup; a request keeps its `Arc<Route>` instead.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.0.load()
    }

    /// The current table as an `Arc`, for a holder that awaits while it
    /// reads it (the admin API).
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Publishes `table`; readers see it from their next [`Routes::load`].
    /// Returns the table it replaced.
    pub fn swap(&self, table: RouteTable) -> Arc<RouteTable> {
        self.0.swap(Arc::new(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Need};

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            "[keys]\npepper = \"0123456789abcdef0123456789abcdef\"\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:1\"]\n{routes}"
        );
        let cfg = Config::from_toml(&text, Vec::new(), Need::Serve).expect("valid config");
        RouteTable::from_config(&cfg)
    }

    fn name(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.find(host, path).map(|r| r.name.to_string())
    }

    #[test]
    fn longest_prefix_on_segment_boundaries_wins() {
        let t = table(
            r#"
[[routes]]
name = "root"
path_prefix = "/"
upstream = "u"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "u"
[[routes]]
name = "order-items"
path_prefix = "/orders/items"
upstream = "u"
"#,
        );
        assert_eq!(name(&t, None, "/orders").as_deref(), Some("orders"));
        assert_eq!(name(&t, None, "/orders/7").as_deref(), Some("orders"));
        assert_eq!(
            name(&t, None, "/orders/items/1").as_deref(),
            Some("order-items")
        );
        assert_eq!(name(&t, None, "/ordersx").as_deref(), Some("root"));
        assert_eq!(name(&t, None, "/other").as_deref(), Some("root"));
    }

    #[test]
    fn host_specific_route_wins_and_others_do_not_match_it() {
        let t = table(
            r#"
[[routes]]
name = "any"
path_prefix = "/api"
upstream = "u"
[[routes]]
name = "tenant"
path_prefix = "/api"
host = "Tenant.example.com"
upstream = "u"
"#,
        );
        assert_eq!(
            name(&t, Some("tenant.example.com"), "/api/x").as_deref(),
            Some("tenant")
        );
        assert_eq!(
            name(&t, Some("other.example.com"), "/api/x").as_deref(),
            Some("any")
        );
        assert_eq!(name(&t, None, "/nope"), None);
    }

    #[test]
    fn method_scopes_add_to_route_scopes() {
        let t = table(
            r#"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "u"
scopes = ["read:orders"]
method_scopes = { post = ["write:orders"] }
"#,
        );
        let r = t.find(None, "/orders").expect("route");
        let get: Vec<&str> = r
            .required_scopes(&Method::GET)
            .flatten()
            .map(Scope::as_str)
            .collect();
        let post: Vec<&str> = r
            .required_scopes(&Method::POST)
            .flatten()
            .map(Scope::as_str)
            .collect();
        assert_eq!(get, ["read:orders"]);
        assert_eq!(post, ["read:orders", "write:orders"]);
    }

    /// Requests are matched on their normalised path, so a prefix written
    /// any other way could never match: config validation refuses it.
    #[test]
    fn a_prefix_must_be_written_normalised() {
        for (prefix, says) in [
            ("/orders/%61dmin", "\"/orders/admin\""),
            ("/orders//admin", "\"/orders/admin\""),
            ("/caf%c3%a9", "\"/caf%C3%A9\""),
            ("/orders/../admin", "segments"),
            ("/orders;v=1", "parameters"),
            ("/orders%2Fadmin", "encoded"),
        ] {
            let text = format!(
                "[keys]\npepper = \"0123456789abcdef0123456789abcdef\"\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"u\"\n"
            );
            let errs = Config::from_toml(&text, Vec::new(), Need::Serve)
                .err()
                .unwrap_or_else(|| panic!("{prefix} accepted"));
            let e = errs
                .0
                .iter()
                .find(|e| e.path == "routes[0].path_prefix")
                .unwrap_or_else(|| panic!("{prefix}: {errs}"));
            assert!(e.message.contains(says), "{prefix}: {}", e.message);
        }
        // Already normalised prefixes are fine, trailing `/` included.
        table("[[routes]]\npath_prefix = \"/orders/%C3%A9/\"\nupstream = \"u\"\n");
    }

    #[test]
    fn head_needs_the_method_scopes_of_get() {
        let t = table(
            r#"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "u"
scopes = ["read:orders"]
method_scopes = { get = ["export:orders"], head = ["peek:orders"], post = ["write:orders"] }
"#,
        );
        let r = t.find(None, "/orders").expect("route");
        let needed = |m: Method| -> Vec<String> {
            r.required_scopes(&m)
                .flatten()
                .map(|s| s.as_str().to_string())
                .collect()
        };
        assert_eq!(needed(Method::GET), ["read:orders", "export:orders"]);
        assert_eq!(
            needed(Method::HEAD),
            ["read:orders", "export:orders", "peek:orders"]
        );
        assert_eq!(needed(Method::POST), ["read:orders", "write:orders"]);
        assert_eq!(needed(Method::OPTIONS), ["read:orders"]);
    }

    /// The routes of the attack in issue 12: a wide route and a stricter one
    /// below it, a public catch-all, and a sibling that shares a prefix.
    const ESCAPE_ROUTES: &str = r#"
[[routes]]
name = "root"
path_prefix = "/"
upstream = "u"
auth = "none"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "u"
[[routes]]
name = "orders-admin"
path_prefix = "/orders/admin"
upstream = "u"
[[routes]]
name = "orders-admin-dir"
path_prefix = "/orders/admin/"
host = "dir.example"
upstream = "u"
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "u"
auth = "none"
"#;

    /// What an upstream that decodes everything would make of `raw`: the
    /// whole path percent-decoded once (bytes, so `%2F` is a `/` and `%00` a
    /// NUL), backslashes read as `/`, runs of `/` merged, `;params` cut
    /// from each segment, then dot segments resolved as RFC 3986 §5.2.4
    /// does. The most permissive reading among common frameworks, so a
    /// path this agrees on is safe for the stricter ones too.
    fn upstream_view(raw: &str) -> String {
        let b = raw.as_bytes();
        let mut decoded = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
                (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                    decoded.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                    i += 3;
                }
                (c, _, _) => {
                    decoded.push(c);
                    i += 1;
                }
            }
        }
        let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        // Whether the last segment leaves a directory: `/x/`, `/x/.`, `/x/..`.
        let mut trailing_slash = false;
        // The decoded path starts with `/`: the first piece is empty.
        for seg in text.split('/').skip(1) {
            let seg = seg.split(';').next().unwrap_or("");
            trailing_slash = matches!(seg, "" | "." | "..");
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                _ => out.push(seg),
            }
        }
        let mut path = format!("/{}", out.join("/"));
        if trailing_slash && !out.is_empty() {
            path.push('/');
        }
        path
    }

    #[test]
    fn the_upstream_model_decodes_like_a_permissive_framework() {
        for (raw, seen) in [
            ("/orders/%61dmin/users", "/orders/admin/users"),
            ("/orders//admin/users", "/orders/admin/users"),
            ("/orders/admin;x/users", "/orders/admin/users"),
            ("/orders/admin%2Fusers", "/orders/admin/users"),
            ("/orders/x/../admin", "/orders/admin"),
            ("/orders/x/%2e%2e/admin/", "/orders/admin/"),
            ("/orders\\admin", "/orders/admin"),
            ("/orders/x/..", "/orders/"),
            ("/orders/x/..;p", "/orders/"),
            ("//", "/"),
            ("/orders/", "/orders/"),
        ] {
            assert_eq!(upstream_view(raw), seen, "{raw}");
        }
    }

    proptest::proptest! {
        // Fixed seed and no persistence file: every run, locally and in CI,
        // tries the same inputs, and a failure prints the shrunk path.
        #![proptest_config(proptest::test_runner::Config {
            cases: 20_000,
            failure_persistence: None,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x1212_0001),
            ..proptest::test_runner::Config::default()
        })]

        /// For any path, the route chosen for our normalised path is the
        /// route an upstream's reading of the raw path would choose, or the
        /// path is refused. Never a third outcome.
        #[test]
        fn normalised_and_upstream_routes_agree_or_the_path_is_refused(
            start in proptest::sample::select(vec![
                "/", "/orders", "/orders/", "/orders/admin", "/public/", "//", "/%6Frders",
            ]),
            tail in proptest::collection::vec(
                proptest::sample::select(vec![
                    "/", "/", "/", ".", ".", "%", "2", "e", "E", "f", "F", "5", "c", "C",
                    "3", "b", "B", "0", ";", "\\", "a", "d", "m", "i", "n", "6", "1",
                    "4", "%2e", "%2E", "%2F", "%2f", "%5C", "%3B", "%00", "%61", "%41",
                    "%6", "%zz", "admin", "orders", "/admin", "/..", "/.", "x", "\u{e9}",
                    "%C3%A9", "%25", "%3F",
                ]),
                0..12,
            ),
            host in proptest::sample::select(vec![None, Some("dir.example")]),
        ) {
            static T: std::sync::LazyLock<RouteTable> =
                std::sync::LazyLock::new(|| table(ESCAPE_ROUTES));
            let t = &*T;
            let raw: String = std::iter::once(start).chain(tail).collect();
            let upstream = upstream_view(&raw);
            let seen_by_upstream = name(t, host, &upstream);
            if let Ok(ours) = crate::http_path::normalize(&raw) {
                proptest::prop_assert_eq!(
                    name(t, host, &ours),
                    seen_by_upstream,
                    "raw {:?}, normalised {:?}, upstream reads {:?}",
                    raw,
                    ours,
                    upstream
                );
            }
        }
    }

    #[test]
    fn routes_carry_their_limits_in_configuration_order() {
        let t = table(
            r#"
[[routes]]
name = "a"
path_prefix = "/"
upstream = "u"
rate_limit = { per_minute = 5 }
[[routes]]
name = "b"
path_prefix = "/b/long"
upstream = "u"
global_rate_limit = { per_hour = 7 }
"#,
        );
        let names: Vec<(&str, u16)> = t.iter().map(|r| (&*r.name, r.index)).collect();
        assert_eq!(names, [("a", 0), ("b", 1)]);
        let b = t.find(None, "/b/long/x").expect("route");
        assert_eq!(b.global_rate_limit.per_hour, Some(7));
        assert_eq!(b.rate_limit, Limits::default());
        let a = t.find(None, "/x").expect("route");
        assert_eq!(a.rate_limit.per_minute, Some(5));
    }

    /// Local counters are keyed by the route's id: a reload that inserts
    /// a route before others must not hand their ids (and counts) around.
    #[test]
    fn a_route_keeps_its_id_across_a_rebuild_and_new_routes_get_new_ones() {
        let before = table(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"u\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"u\"\n",
        );
        let text = "[keys]\npepper = \"0123456789abcdef0123456789abcdef\"\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"new\"\npath_prefix = \"/n\"\nupstream = \"u\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"u\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"u\"\n";
        let cfg = Config::from_toml(text, Vec::new(), Need::Serve).expect("valid config");
        let after = RouteTable::after(&before, &cfg, &Upstream::from_config(&cfg));
        let id = |t: &RouteTable, n: &str| t.iter().find(|r| &*r.name == n).map(|r| r.id);
        assert_eq!(id(&after, "a"), id(&before, "a"));
        assert_eq!(id(&after, "b"), id(&before, "b"));
        let new = id(&after, "new").expect("new route");
        assert!(before.iter().all(|r| r.id != new), "new route reuses an id");
        // Rebuilding once more keeps the id given on the first rebuild.
        let again = RouteTable::after(&after, &cfg, &Upstream::from_config(&cfg));
        assert_eq!(id(&again, "new"), Some(new));
    }

    #[test]
    fn a_swap_leaves_routes_in_use_intact() {
        let routes = Routes::new(table(
            "[[routes]]\nname = \"old\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        ));
        let in_flight = routes.load().find(None, "/x").cloned().expect("route");
        let old = routes.swap(table(
            "[[routes]]\nname = \"new\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        ));
        assert_eq!(&*in_flight.name, "old");
        assert_eq!(old.iter().count(), 1);
        let now = routes.load().find(None, "/x").map(|r| r.name.to_string());
        assert_eq!(now.as_deref(), Some("new"));
    }

    fn found(t: &RouteTable, host: Option<&str>, path: &str, headers: &[(&str, &str)]) -> String {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        t.find_for(host, path, &h)
            .map_or("none".to_string(), |r| r.name.to_string())
    }

    #[test]
    fn host_then_prefix_then_header_conditions_decide() {
        let t = table(
            r#"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "u"
[[routes]]
name = "orders-v2"
path_prefix = "/orders"
upstream = "u"
match_headers = { "api-version" = "2" }
[[routes]]
name = "orders-v2-beta"
path_prefix = "/orders"
upstream = "u"
match_headers = { "api-version" = "2", "x-beta" = "1" }
[[routes]]
name = "orders-items"
path_prefix = "/orders/items"
upstream = "u"
[[routes]]
name = "tenant-root"
path_prefix = "/"
upstream = "u"
hosts = ["tenant.example", "other.example"]
"#,
        );
        assert_eq!(found(&t, None, "/orders/1", &[]), "orders");
        assert_eq!(
            found(&t, None, "/orders/1", &[("api-version", "1")]),
            "orders"
        );
        assert_eq!(
            found(&t, None, "/orders/1", &[("api-version", "2")]),
            "orders-v2"
        );
        assert_eq!(
            found(
                &t,
                None,
                "/orders/1",
                &[("api-version", "2"), ("x-beta", "1")]
            ),
            "orders-v2-beta"
        );
        // Values are exact; a second, different value does not match.
        assert_eq!(
            found(&t, None, "/orders", &[("api-version", "2.0")]),
            "orders"
        );
        assert_eq!(
            found(
                &t,
                None,
                "/orders",
                &[("api-version", "2"), ("api-version", "1")]
            ),
            "orders"
        );
        // A longer prefix beats header conditions on a shorter one.
        assert_eq!(
            found(&t, None, "/orders/items/1", &[("api-version", "2")]),
            "orders-items"
        );
        // A host-specific route beats every host-less one, whatever its prefix.
        assert_eq!(
            found(&t, Some("tenant.example"), "/orders/items/1", &[]),
            "tenant-root"
        );
        assert_eq!(found(&t, Some("other.example"), "/x", &[]), "tenant-root");
        assert_eq!(found(&t, Some("else.example"), "/x", &[]), "none");
        assert_eq!(found(&t, None, "/x", &[]), "none");
    }

    #[test]
    fn the_proxy_body_limit_is_the_default_of_routes_without_one() {
        let t = table(
            "[proxy]\nmax_body_bytes = 100\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"u\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"u\"\nmax_body_bytes = 7\n",
        );
        let limit = |p: &str| t.find(None, p).and_then(|r| r.options.max_body_bytes);
        assert_eq!(limit("/a"), Some(100));
        assert_eq!(limit("/b"), Some(7));
        let t = table("[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n");
        assert_eq!(
            t.find(None, "/").and_then(|r| r.options.max_body_bytes),
            None
        );
    }

    #[test]
    fn strip_and_rewrite_replace_the_matched_prefix() {
        let t = table(
            r#"
[[routes]]
name = "strip"
path_prefix = "/orders"
upstream = "u"
strip_prefix = true
[[routes]]
name = "strip-dir"
path_prefix = "/dir/"
upstream = "u"
strip_prefix = true
[[routes]]
name = "rewrite"
path_prefix = "/v1/orders"
upstream = "u"
rewrite_prefix = "/v2/orders"
[[routes]]
name = "to-root"
path_prefix = "/api"
upstream = "u"
rewrite_prefix = "/"
[[routes]]
name = "to-dir"
path_prefix = "/d2/"
upstream = "u"
rewrite_prefix = "/new/"
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "u"
"#,
        );
        let up = |p: &str| {
            let r = t.find(None, p).expect("route");
            crate::proxy::edge::upstream_path(r, p)
        };
        assert_eq!(up("/orders/1").as_deref(), Some("/1"));
        assert_eq!(up("/orders").as_deref(), Some("/"));
        assert_eq!(up("/orders/").as_deref(), Some("/"));
        assert_eq!(up("/dir/x/y").as_deref(), Some("/x/y"));
        assert_eq!(up("/dir/").as_deref(), Some("/"));
        assert_eq!(up("/v1/orders/7").as_deref(), Some("/v2/orders/7"));
        assert_eq!(up("/v1/orders").as_deref(), Some("/v2/orders"));
        assert_eq!(up("/api/x").as_deref(), Some("/x"));
        assert_eq!(up("/api").as_deref(), Some("/"));
        assert_eq!(up("/d2/x").as_deref(), Some("/new/x"));
        assert_eq!(up("/d2/").as_deref(), Some("/new/"));
        assert_eq!(up("/plain/x"), None);
    }
}
