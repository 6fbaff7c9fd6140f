//! `[[routes]]`: what a route matches, where it goes, who may call it and
//! its own limits.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::edge::{build_route_options, RouteOptions};
use super::rate_limits::{build_limits, Limits};
use super::validate::is_name;
use super::{file, Errors};
use crate::keys::scope::Scope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A gateway key or a JWT from a configured issuer.
    Required,
    /// Only a gateway key.
    ApiKey,
    /// Only a JWT from a configured issuer.
    Jwt,
    /// No credential; callers are limited per client IP.
    None,
}

impl AuthMode {
    /// Whether the route needs some credential.
    pub fn needs_credential(self) -> bool {
        self != AuthMode::None
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: Arc<str>,
    pub path_prefix: String,
    /// Lower-cased hosts without port (`hosts`, or the older single
    /// `host`); empty matches any host.
    pub hosts: Vec<String>,
    pub upstream: Arc<str>,
    pub scopes: Vec<Scope>,
    /// Extra scopes required for one method (upper-case method name).
    pub method_scopes: BTreeMap<String, Vec<Scope>>,
    pub auth: AuthMode,
    /// Per caller (key, or client IP on `auth = "none"` routes), this route only.
    pub rate_limit: Option<Limits>,
    /// Across all callers of this route.
    pub global_rate_limit: Option<Limits>,
    /// Keep the first `request_logs.max_body_bytes` of request and response
    /// bodies in the request log, secrets redacted.
    pub log_bodies: bool,
    /// Rewriting, header rules, body limit, IP rules, compression, CORS
    /// and deprecation (see `edge`).
    pub options: RouteOptions,
}

pub(super) fn parse_scopes(list: &[String], path: &str, errs: &mut Errors) -> Vec<Scope> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| match Scope::parse(s) {
            Ok(scope) => Some(scope),
            Err(e) => {
                errs.push(format!("{path}[{i}]"), e.to_string());
                None
            }
        })
        .collect()
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// `hosts`, or the older single `host` as a one-element list (both set is
/// an error): lower-cased, each a hostname, no repeats.
fn build_hosts(
    host: Option<String>,
    hosts: Option<Vec<String>>,
    path: &str,
    errs: &mut Errors,
) -> Vec<String> {
    let (list, key) = match (host, hosts) {
        (Some(_), Some(_)) => {
            errs.push(
                format!("{path}.hosts"),
                "set either host or hosts, not both",
            );
            return Vec::new();
        }
        (Some(h), None) => (vec![h], "host".to_string()),
        (None, Some(l)) => {
            if l.is_empty() {
                errs.push(
                    format!("{path}.hosts"),
                    "must name at least one host (leave it out to match any host)",
                );
            }
            (l, "hosts".to_string())
        }
        (None, None) => return Vec::new(),
    };
    let single = key == "host";
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, h) in list.into_iter().enumerate() {
        let at = if single {
            format!("{path}.host")
        } else {
            format!("{path}.hosts[{i}]")
        };
        let h = h.to_ascii_lowercase();
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !ok {
            errs.push(at, format!("{h:?} is not a hostname"));
        } else if out.contains(&h) {
            errs.push(at, format!("{h:?} is listed twice"));
        } else {
            out.push(h);
        }
    }
    out
}

pub(super) fn build_route(
    mut r: file::Route,
    i: usize,
    upstreams: &HashSet<String>,
    errs: &mut Errors,
) -> Option<RouteConfig> {
    let path = format!("routes[{i}]");
    let before = errs.0.len();
    let options = build_route_options(&mut r, &path, errs);
    let name = r.name.unwrap_or_else(|| format!("route{i}"));
    if !is_name(&name) {
        errs.push(
            format!("{path}.name"),
            format!("{name:?} must be 1-64 characters of A-Z, a-z, 0-9, _ - ."),
        );
    }
    let prefix = r.path_prefix.unwrap_or_default();
    if !prefix.starts_with('/') {
        errs.push(
            format!("{path}.path_prefix"),
            format!("{prefix:?} must start with '/'"),
        );
    } else if prefix.contains(['?', '#']) || prefix.chars().any(|c| c.is_ascii_control()) {
        errs.push(
            format!("{path}.path_prefix"),
            "must be a path without query, fragment or control characters",
        );
    } else {
        // Requests are routed on their normalised path, so a prefix in any
        // other spelling would never match.
        match crate::http_path::normalize(&prefix) {
            Ok(std::borrow::Cow::Borrowed(_)) => {}
            Ok(n) => errs.push(
                format!("{path}.path_prefix"),
                format!("{prefix:?} must be written normalised, as {n:?}"),
            ),
            Err(e) => errs.push(
                format!("{path}.path_prefix"),
                format!("{prefix:?} is a path the gateway refuses: {e}"),
            ),
        }
    }
    let hosts = build_hosts(r.host.take(), r.hosts.take(), &path, errs);
    let upstream = match r.upstream {
        Some(u) if upstreams.contains(u.as_str()) => Some(u),
        Some(u) => {
            errs.push(
                format!("{path}.upstream"),
                format!("no [[upstreams]] entry named {u:?}"),
            );
            None
        }
        None => {
            errs.push(format!("{path}.upstream"), "missing");
            None
        }
    };
    let auth = match r.auth.as_deref() {
        None | Some("required") => AuthMode::Required,
        Some("api_key") => AuthMode::ApiKey,
        Some("jwt") => AuthMode::Jwt,
        Some("none") => AuthMode::None,
        Some(other) => {
            errs.push(
                format!("{path}.auth"),
                format!("must be \"required\", \"api_key\", \"jwt\" or \"none\", got {other:?}"),
            );
            AuthMode::Required
        }
    };
    let scopes = parse_scopes(
        &r.scopes.unwrap_or_default(),
        &format!("{path}.scopes"),
        errs,
    );
    let mut method_scopes = BTreeMap::new();
    for (method, list) in r.method_scopes.unwrap_or_default() {
        let upper = method.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            errs.push(
                format!("{path}.method_scopes.{method}"),
                "not an HTTP method",
            );
            continue;
        }
        let s = parse_scopes(&list, &format!("{path}.method_scopes.{method}"), errs);
        method_scopes.insert(upper, s);
    }
    if auth == AuthMode::None && (!scopes.is_empty() || !method_scopes.is_empty()) {
        errs.push(
            format!("{path}.scopes"),
            "a route with auth = \"none\" cannot require scopes",
        );
    }
    let rate_limit = r
        .rate_limit
        .map(|l| build_limits(Some(l), &format!("{path}.rate_limit"), errs));
    let global_rate_limit = r
        .global_rate_limit
        .map(|l| build_limits(Some(l), &format!("{path}.global_rate_limit"), errs));
    if errs.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        name: name.into(),
        path_prefix: prefix,
        hosts,
        upstream: upstream?.into(),
        scopes,
        method_scopes,
        auth,
        rate_limit,
        global_rate_limit,
        log_bodies: r.log_bodies.unwrap_or(false),
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env};
    use crate::config::{Config, Need};

    #[test]
    fn auth_none_with_scopes_is_rejected() {
        let text = format!(
            "{}\n[[routes]]\nname = \"pub\"\npath_prefix = \"/pub\"\nupstream = \"echo\"\nauth = \"none\"\nscopes = [\"read:x\"]\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "routes[1].scopes");
    }

    #[test]
    fn a_jwt_route_needs_an_issuer() {
        let route = "\n[[routes]]\nname = \"tok\"\npath_prefix = \"/tok\"\nupstream = \"echo\"\nauth = \"jwt\"\n";
        let text = format!("{}{route}", minimal());
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs:?}");
        assert_eq!(errs.0[0].path, "routes[1].auth");
        let issuer = "\n[[jwt.issuers]]\nname = \"idp\"\nissuer = \"https://idp.example/\"\naudiences = [\"api\"]\njwks_file = \"/dev/null\"\n";
        let text = format!("{}{route}{issuer}", minimal());
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.routes[1].auth, crate::config::AuthMode::Jwt);
    }
}
