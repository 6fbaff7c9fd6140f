//! The route table: longest `path_prefix` wins, a host-specific route beats
//! a host-less one of the same length, and prefixes match on segment
//! boundaries (`/orders` matches `/orders` and `/orders/7`, not `/ordersx`;
//! a prefix ending in `/` matches anything below it). [`RouteTable::find`]
//! is given the path already normalised by [`crate::http_path`], so every
//! spelling of a path finds the route of its normalised form.

use std::sync::Arc;

use http::Method;

use super::route_metrics::RouteMetrics;
use super::upstream::Upstream;
use crate::config::{AuthMode, Config, RouteConfig};
use crate::keys::scope::Scope;

#[derive(Debug)]
pub struct Route {
    /// Position in the configuration's `[[routes]]`, which names the
    /// route's rate-limit tiers.
    pub index: u16,
    pub name: Arc<str>,
    pub path_prefix: String,
    pub host: Option<String>,
    pub upstream: Arc<Upstream>,
    pub scopes: Vec<Scope>,
    pub method_scopes: Vec<(Method, Vec<Scope>)>,
    pub auth: AuthMode,
    pub metrics: RouteMetrics,
}

impl Route {
    fn matches_path(&self, path: &str) -> bool {
        let p = &self.path_prefix;
        path.starts_with(p.as_str())
            && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
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

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table; `upstreams` must hold every route's upstream, which
    /// config validation guarantees.
    pub fn new(cfg: &Config, upstreams: &[Arc<Upstream>]) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = cfg
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, r): (usize, &RouteConfig)| {
                let upstream = upstreams.iter().find(|u| u.name == r.upstream)?.clone();
                Some(Arc::new(Route {
                    metrics: RouteMetrics::new(r.name.clone()),
                    index: u16::try_from(index).ok()?,
                    name: r.name.clone(),
                    path_prefix: r.path_prefix.clone(),
                    host: r.host.clone(),
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
                }))
            })
            .collect();
        routes.sort_by(|a, b| {
            b.path_prefix
                .len()
                .cmp(&a.path_prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        RouteTable { routes }
    }

    /// The route for `host` (lower-case, no port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.matches_path(path) && r.host.as_deref().is_none_or(|h| Some(h) == host))
    }
}

/// The request's host without port, lower-cased only when needed.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // [v6]:port; an unterminated bracket is kept as it is.
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
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
        let ups = Upstream::from_config(&cfg);
        RouteTable::new(&cfg, &ups)
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
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        for odd in ["[", "[abc", "]", ":", "", "a:b:c", "[::1"] {
            let _ = normalize_host(odd);
        }
    }
}
