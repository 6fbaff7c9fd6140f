//! Route options at the edge (DESIGN §3 "Edge: TLS, HTTP/2, route options,
//! hot reload"): host lists, prefix rewriting, header-based version
//! matching, header rules, body size, IP rules and compression. CORS and
//! deprecation are in `cors`; TLS in `tls`.

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::cors::{CorsConfig, DeprecationConfig};
use super::validate::parse_cidrs;
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

/// Largest `max_body_bytes` the gateway enforces by reading a chunked body
/// whole before the upstream is contacted (Pingora replays up to 64 KiB of
/// a request body it has already read). Above it, a chunked body is counted
/// as it streams and cut off when it crosses the limit.
pub const BUFFERED_BODY_LIMIT: u64 = 64 * 1024;

/// Headers a route's `request_headers`/`response_headers` may not touch:
/// hop-by-hop and framing headers (they describe one connection, and a
/// wrong `content-length` smuggles requests), `host`, and everything that
/// says who the caller is. A route config must not forge an identity.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "content-length",
    "x-request-id",
    "authorization",
    "x-api-key",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// Why `name` may not appear in a header rule, if it may not.
fn forbidden_header(name: &str) -> Option<&'static str> {
    if name.starts_with("x-gateway-") {
        return Some("x-gateway-* headers are the gateway's identity headers");
    }
    FORBIDDEN_HEADERS
        .contains(&name)
        .then_some("hop-by-hop, framing, host and identity headers are set by the gateway only")
}

fn header_name(raw: &str, path: &str, errs: &mut Errors) -> Option<HeaderName> {
    let lower = raw.to_ascii_lowercase();
    match HeaderName::from_bytes(lower.as_bytes()) {
        Ok(n) => {
            if let Some(why) = forbidden_header(n.as_str()) {
                errs.push(path, format!("{raw:?} cannot be changed by a route: {why}"));
                return None;
            }
            Some(n)
        }
        Err(_) => {
            errs.push(path, format!("{raw:?} is not a valid header name"));
            None
        }
    }
}

fn header_value(raw: &str, path: &str, errs: &mut Errors) -> Option<HeaderValue> {
    match HeaderValue::from_str(raw) {
        Ok(v) => Some(v),
        Err(_) => {
            errs.push(
                path,
                "not a valid header value (visible ASCII, spaces and tabs)",
            );
            None
        }
    }
}

fn build_header_rules(r: Option<file::HeaderRules>, path: &str, errs: &mut Errors) -> HeaderRules {
    let Some(r) = r else {
        return HeaderRules::default();
    };
    let mut rules = HeaderRules::default();
    for (name, value) in r.set.unwrap_or_default() {
        let at = format!("{path}.set.{name}");
        let (n, v) = (
            header_name(&name, &at, errs),
            header_value(&value, &at, errs),
        );
        if let (Some(n), Some(v)) = (n, v) {
            if rules.set.iter().any(|(seen, _)| *seen == n) {
                errs.push(at, "set twice (header names are case-insensitive)");
            } else {
                rules.set.push((n, v));
            }
        }
    }
    for (i, name) in r.remove.unwrap_or_default().iter().enumerate() {
        let at = format!("{path}.remove[{i}]");
        if let Some(n) = header_name(name, &at, errs) {
            if rules.set.iter().any(|(s, _)| *s == n) {
                errs.push(at, format!("{name:?} is both set and removed"));
            } else if !rules.remove.contains(&n) {
                rules.remove.push(n);
            }
        }
    }
    rules
}

/// `strip_prefix`, `rewrite_prefix`, `match_headers`, the header rules,
/// `max_body_bytes`, the IP rules and `compress`.
fn build_routing_options(r: &mut file::Route, path: &str, errs: &mut Errors) -> RouteOptions {
    let strip_prefix = r.strip_prefix.unwrap_or(false);
    let rewrite_prefix = r.rewrite_prefix.take();
    if let Some(p) = &rewrite_prefix {
        let at = format!("{path}.rewrite_prefix");
        if strip_prefix {
            errs.push(
                &at,
                "set either strip_prefix or rewrite_prefix, not both (rewrite_prefix = \"/\" strips)",
            );
        }
        if !p.starts_with('/') {
            errs.push(&at, format!("{p:?} must start with '/'"));
        } else if p.contains(['?', '#']) || p.chars().any(|c| c.is_ascii_control()) {
            errs.push(
                &at,
                "must be a path without query, fragment or control characters",
            );
        } else {
            // The upstream gets exactly this prefix: it must be a path the
            // gateway itself would accept, or the rewrite could smuggle a
            // dot segment or an encoded slash past the normaliser.
            match crate::http_path::normalize(p) {
                Ok(std::borrow::Cow::Borrowed(_)) => {}
                Ok(n) => errs.push(&at, format!("{p:?} must be written normalised, as {n:?}")),
                Err(e) => errs.push(&at, format!("{p:?} is a path the gateway refuses: {e}")),
            }
        }
    }
    let mut match_headers = Vec::new();
    for (name, value) in r.match_headers.take().unwrap_or_default() {
        let at = format!("{path}.match_headers.{name}");
        let lower = name.to_ascii_lowercase();
        let n = match HeaderName::from_bytes(lower.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                errs.push(&at, format!("{name:?} is not a valid header name"));
                None
            }
        };
        let v = header_value(&value, &at, errs);
        if let (Some(n), Some(v)) = (n, v) {
            if match_headers.iter().any(|(seen, _)| *seen == n) {
                errs.push(at, "matched twice (header names are case-insensitive)");
            } else {
                match_headers.push((n, v));
            }
        }
    }
    // Sorted, so two routes with the same conditions compare equal in the
    // duplicate check whatever order the file wrote them in.
    match_headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let max_body_bytes = r.max_body_bytes;
    if max_body_bytes == Some(0) {
        errs.push(format!("{path}.max_body_bytes"), "must be at least 1");
    }
    RouteOptions {
        strip_prefix,
        rewrite_prefix,
        match_headers,
        request_headers: build_header_rules(
            r.request_headers.take(),
            &format!("{path}.request_headers"),
            errs,
        ),
        response_headers: build_header_rules(
            r.response_headers.take(),
            &format!("{path}.response_headers"),
            errs,
        ),
        max_body_bytes,
        allow_ips: parse_cidrs(r.allow_ips.take(), &format!("{path}.allow_ips"), errs),
        deny_ips: parse_cidrs(r.deny_ips.take(), &format!("{path}.deny_ips"), errs),
        compress: r.compress.unwrap_or(false),
        cors: None,
        deprecation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env};
    use crate::config::{Config, Need};

    /// The error paths of `route` appended as `routes[1]`.
    fn errors(route: &str) -> Vec<(String, String)> {
        let text = format!(
            "{}\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"echo\"\n{route}",
            minimal()
        );
        match Config::from_toml(&text, no_env(), Need::Serve) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn paths(route: &str) -> Vec<String> {
        errors(route).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn valid_options_are_built() {
        let text = format!(
            "{}\n[proxy]\nmax_body_bytes = 2048\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"echo\"\nhosts = [\"API.example.com\", \"b.example\"]\nrewrite_prefix = \"/v2/r\"\nmatch_headers = {{ \"API-Version\" = \"2\", \"x-b\" = \"1\" }}\nrequest_headers = {{ set = {{ \"X-Tenant\" = \"acme\" }}, remove = [\"x-debug\"] }}\nresponse_headers = {{ remove = [\"server\"] }}\nallow_ips = [\"10.0.0.0/8\", \"192.0.2.7\"]\ndeny_ips = [\"10.9.0.0/16\"]\ncompress = true\n",
            minimal()
        );
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        let r = &cfg.routes[1];
        assert_eq!(r.hosts, ["api.example.com", "b.example"]);
        let o = &r.options;
        assert_eq!(o.rewrite_prefix.as_deref(), Some("/v2/r"));
        let m: Vec<(&str, &[u8])> = o
            .match_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(m, [("api-version", &b"2"[..]), ("x-b", &b"1"[..])]);
        assert_eq!(o.request_headers.set[0].0.as_str(), "x-tenant");
        assert_eq!(o.request_headers.remove[0].as_str(), "x-debug");
        assert_eq!(o.response_headers.remove[0].as_str(), "server");
        assert_eq!(o.allow_ips.len(), 2);
        assert_eq!(o.deny_ips.len(), 1);
        assert!(o.compress);
        assert_eq!(
            o.max_body_bytes, None,
            "the route's own; the table resolves"
        );
        let old = format!(
            "{}\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"echo\"\nhost = \"One.example\"\n",
            minimal()
        );
        let cfg = Config::from_toml(&old, no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.routes[1].hosts, ["one.example"]);
    }

    #[test]
    fn conflicting_and_malformed_options_are_named_by_key_path() {
        assert_eq!(
            paths("strip_prefix = true\nrewrite_prefix = \"/v2\"\n"),
            ["routes[1].rewrite_prefix"]
        );
        for bad in ["v2", "/v2?x=1", "/v2/../admin", "/v2/%2F", "/v2//x"] {
            assert_eq!(
                paths(&format!("rewrite_prefix = \"{bad}\"\n")),
                ["routes[1].rewrite_prefix"],
                "{bad}"
            );
        }
        assert_eq!(
            paths("host = \"a.example\"\nhosts = [\"b.example\"]\n"),
            ["routes[1].hosts"]
        );
        assert_eq!(
            paths("hosts = [\"ok.example\", \"bad host\", \"OK.example\"]\n"),
            ["routes[1].hosts[1]", "routes[1].hosts[2]"]
        );
        assert_eq!(paths("hosts = []\n"), ["routes[1].hosts"]);
        assert_eq!(
            paths("match_headers = { \"bad name\" = \"1\", \"v\" = \"a\\nb\" }\n"),
            [
                "routes[1].match_headers.bad name",
                "routes[1].match_headers.v"
            ]
        );
        assert_eq!(paths("max_body_bytes = 0\n"), ["routes[1].max_body_bytes"]);
        assert_eq!(
            paths("allow_ips = [\"10.0.0.0/33\"]\ndeny_ips = [\"nope\"]\n"),
            ["routes[1].allow_ips[0]", "routes[1].deny_ips[0]"]
        );
        assert_eq!(
            paths("request_headers = { set = { \"x-ok\" = \"a\\u0007\" }, remove = [\"x y\"] }\n"),
            [
                "routes[1].request_headers.set.x-ok",
                "routes[1].request_headers.remove[0]"
            ]
        );
        assert_eq!(
            paths("request_headers = { set = { \"x-a\" = \"1\" }, remove = [\"X-A\"] }\n"),
            ["routes[1].request_headers.remove[0]"]
        );
    }

    /// A route config must not forge who is calling or break framing: one
    /// case per spelling.
    #[test]
    fn header_rules_cannot_touch_identity_framing_or_hop_by_hop_headers() {
        for name in [
            "X-Gateway-Key-Id",
            "x-gateway-subject",
            "x-gateway-issuer",
            "x-gateway-anything",
            "X-Request-ID",
            "authorization",
            "x-api-key",
            "Host",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
        ] {
            for (key, rule) in [
                ("request_headers", format!("set = {{ \"{name}\" = \"v\" }}")),
                ("request_headers", format!("remove = [\"{name}\"]")),
                (
                    "response_headers",
                    format!("set = {{ \"{name}\" = \"v\" }}"),
                ),
                ("response_headers", format!("remove = [\"{name}\"]")),
            ] {
                let errs = errors(&format!("{key} = {{ {rule} }}\n"));
                assert_eq!(errs.len(), 1, "{key} {rule}: {errs:?}");
                assert!(
                    errs[0].0.starts_with(&format!("routes[1].{key}.")),
                    "{errs:?}"
                );
                assert!(errs[0].1.contains("cannot be changed"), "{errs:?}");
            }
        }
    }

    #[test]
    fn duplicates_consider_hosts_and_header_conditions() {
        let dup = |extra: &str| {
            let text = format!(
                "{}\n[[routes]]\nname = \"a\"\npath_prefix = \"/o\"\nupstream = \"echo\"\n{extra}",
                minimal()
            );
            Config::from_toml(&text, no_env(), Need::Serve)
                .err()
                .map(|e| e.0.into_iter().map(|e| e.path).collect::<Vec<_>>())
        };
        let b = "[[routes]]\nname = \"b\"\npath_prefix = \"/o\"\nupstream = \"echo\"\n";
        assert_eq!(dup(b), Some(vec!["routes[2].path_prefix".to_string()]));
        // Different header conditions, or different hosts: distinct routes.
        assert_eq!(
            dup(&format!(
                "{b}match_headers = {{ \"api-version\" = \"2\" }}\n"
            )),
            None
        );
        assert_eq!(dup(&format!("{b}hosts = [\"x.example\"]\n")), None);
        // Same conditions written in another order and case: duplicate.
        let c = "[[routes]]\nname = \"c\"\npath_prefix = \"/p\"\nupstream = \"echo\"\nmatch_headers = { a = \"1\", B = \"2\" }\n[[routes]]\nname = \"d\"\npath_prefix = \"/p\"\nupstream = \"echo\"\nmatch_headers = { b = \"2\", a = \"1\" }\n";
        assert_eq!(dup(c), Some(vec!["routes[3].path_prefix".to_string()]));
        // Host lists that share one host: duplicate.
        let h = "[[routes]]\nname = \"e\"\npath_prefix = \"/q\"\nupstream = \"echo\"\nhosts = [\"x.example\", \"y.example\"]\n[[routes]]\nname = \"f\"\npath_prefix = \"/q\"\nupstream = \"echo\"\nhosts = [\"z.example\", \"Y.example\"]\n";
        assert_eq!(dup(h), Some(vec!["routes[3].path_prefix".to_string()]));
    }
}
