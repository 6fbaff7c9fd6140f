//! The route table: longest `path_prefix` wins, a host-specific route beats
//! a host-less one of the same length, and prefixes match on segment
//! boundaries (`/orders` matches `/orders` and `/orders/7`, not `/ordersx`;
//! a prefix ending in `/` matches anything below it).

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
    pub fn required_scopes<'a>(&'a self, method: &'a Method) -> impl Iterator<Item = &'a [Scope]> {
        std::iter::once(self.scopes.as_slice()).chain(
            self.method_scopes
                .iter()
                .filter(move |(m, _)| m == method)
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

/// False for paths an upstream might resolve to somewhere other than where
/// the route table matched them: `.`/`..` segments (also percent-encoded)
/// and backslashes. `/public/../admin` would otherwise match an
/// `auth = "none"` route and reach `/admin` upstream. Such requests are
/// refused rather than normalised, so the gateway and the upstream can
/// never disagree about the path.
pub fn is_canonical_path(path: &str) -> bool {
    // Runs on every request: no allocation, and most paths leave at once.
    let bytes = path.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return true;
    }
    let encoded_backslash = bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'));
    !bytes.contains(&b'\\') && !encoded_backslash && !path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E`.
fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
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

    #[test]
    fn dot_segments_and_backslashes_are_not_canonical() {
        for ok in [
            "/",
            "/a/b",
            "/a/.well-known",
            "/a/..b",
            "/a/b.",
            "/a%2Fb",
            "/a/...",
            "/a%20b",
            "/a%2e",
        ] {
            assert!(is_canonical_path(ok), "{ok}");
        }
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/%2e%2e/x",
            "/a/.%2E/b",
            "/%2E",
            "/a/%2e./",
            "/a\\b",
            "/a%5Cb",
        ] {
            assert!(!is_canonical_path(bad), "{bad}");
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
