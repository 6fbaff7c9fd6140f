//! Route `cors` and `deprecation` (DESIGN §3 "Edge: TLS, HTTP/2, route
//! options, hot reload").
//!
//! Both are validated here and carry their header values precomputed, so
//! the proxy answers a preflight or stamps a deprecated route's response
//! without formatting anything per request.

use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, Method};

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
    /// Methods a preflight may ask for; default `GET`, `HEAD`, `POST`.
    pub allow_methods: Vec<Method>,
    /// Request headers a preflight may ask for (lower-case); default none.
    pub allow_headers: Vec<HeaderName>,
    /// Response headers the browser may show the page, on top of the
    /// gateway's own (request id, rate-limit, deprecation headers).
    pub expose_headers: Vec<HeaderName>,
    /// `Access-Control-Allow-Credentials: true` (cookies, client
    /// certificates, `Authorization` sent by the browser itself).
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer; default 600 s.
    pub max_age_seconds: u64,
    /// The `List` origins as header values, in the same order: what the
    /// proxy sends back, so it never echoes the client's own bytes.
    pub allow_origin_values: Vec<HeaderValue>,
    /// `allow_methods`, comma-joined.
    pub allow_methods_value: HeaderValue,
    /// `allow_headers`, comma-joined; `None` when empty.
    pub allow_headers_value: Option<HeaderValue>,
    /// `expose_headers` plus the gateway's own, comma-joined.
    pub expose_headers_value: HeaderValue,
    pub max_age_value: HeaderValue,
}

/// Default `max_age_seconds`: ten minutes (Chromium caps it at two hours).
pub const DEFAULT_CORS_MAX_AGE_SECONDS: u64 = 600;
/// Largest `max_age_seconds`: a day, Firefox's own cap.
pub const MAX_CORS_MAX_AGE_SECONDS: u64 = 86_400;
/// The CORS-safelisted methods, the default `allow_methods`.
const DEFAULT_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];
/// Headers the gateway itself adds to responses, always exposed to pages
/// on a CORS route so a browser client can read its request id, its
/// remaining quota and when to retry (none is CORS-safelisted).
pub const GATEWAY_EXPOSED_HEADERS: &[&str] = &[
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
    "retry-after",
    "deprecation",
    "sunset",
    "link",
    "www-authenticate",
];

/// RFC 9745 `Deprecation` and RFC 8594 `Sunset` for a route.
#[derive(Debug, Clone)]
pub struct DeprecationConfig {
    pub deprecated_at: DateTime<Utc>,
    /// After this instant the route answers 410 `route_sunset`.
    pub sunset_at: Option<DateTime<Utc>>,
    /// Sent as `Link: <…>; rel="deprecation"` and named in the 410 body.
    pub link: Option<String>,
    /// `@<unix seconds>` of `deprecated_at`.
    pub deprecation_value: HeaderValue,
    /// `sunset_at` as an IMF-fixdate.
    pub sunset_value: Option<HeaderValue>,
    /// `<link>; rel="deprecation"`.
    pub link_value: Option<HeaderValue>,
}

impl DeprecationConfig {
    /// Whether the route is past its sunset at `now` (the wall clock in
    /// the proxy; any instant in tests).
    pub fn is_sunset(&self, now: DateTime<Utc>) -> bool {
        self.sunset_at.is_some_and(|s| now >= s)
    }
}

pub(super) fn build_cors(c: file::Cors, path: &str, errs: &mut Errors) -> Option<CorsConfig> {
    let before = errs.0.len();
    let credentials = c.allow_credentials.unwrap_or(false);
    let origins = c.allow_origins.unwrap_or_default();
    let allow_origins = if origins.is_empty() {
        errs.push(
            format!("{path}.allow_origins"),
            "list at least one origin, or \"*\"",
        );
        AllowOrigins::List(Vec::new())
    } else if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            errs.push(
                format!("{path}.allow_origins"),
                "\"*\" allows every origin: list it alone",
            );
        }
        if credentials {
            errs.push(
                format!("{path}.allow_credentials"),
                "cannot be true with allow_origins = [\"*\"]: browsers refuse the pair, and echoing every origin instead would hand any site the caller's credentials; list the origins",
            );
        }
        AllowOrigins::Any
    } else {
        let mut list = Vec::with_capacity(origins.len());
        for (i, o) in origins.iter().enumerate() {
            match normalize_origin(o) {
                Ok(n) if list.contains(&n) => errs.push(
                    format!("{path}.allow_origins[{i}]"),
                    format!("{n:?} is listed twice"),
                ),
                Ok(n) => list.push(n),
                Err(why) => errs.push(format!("{path}.allow_origins[{i}]"), why),
            }
        }
        AllowOrigins::List(list)
    };
    let allow_methods = match c.allow_methods {
        None => DEFAULT_METHODS.to_vec(),
        Some(list) => {
            let mut methods = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(_) if upper == "*" => errs.push(
                        format!("{path}.allow_methods[{i}]"),
                        "\"*\" is not supported: list the methods",
                    ),
                    Ok(method) if !methods.contains(&method) => methods.push(method),
                    Ok(_) => {}
                    Err(_) => errs.push(
                        format!("{path}.allow_methods[{i}]"),
                        format!("{m:?} is not an HTTP method token"),
                    ),
                }
            }
            if list.is_empty() {
                errs.push(
                    format!("{path}.allow_methods"),
                    "list at least one method, or leave it out for GET, HEAD, POST",
                );
            }
            methods
        }
    };
    let allow_headers = header_names(c.allow_headers, &format!("{path}.allow_headers"), errs);
    let expose_headers = header_names(c.expose_headers, &format!("{path}.expose_headers"), errs);
    let max_age_seconds = c.max_age_seconds.unwrap_or(DEFAULT_CORS_MAX_AGE_SECONDS);
    if max_age_seconds > MAX_CORS_MAX_AGE_SECONDS {
        errs.push(
            format!("{path}.max_age_seconds"),
            format!("at most {MAX_CORS_MAX_AGE_SECONDS} (a day); browsers cap it lower anyway"),
        );
    }
    if errs.0.len() > before {
        return None;
    }
    let join = |names: &mut dyn Iterator<Item = &str>| {
        let s = names.collect::<Vec<_>>().join(", ");
        // Tokens and header names only: always a valid value.
        HeaderValue::from_str(&s).ok()
    };
    let allow_methods_value = join(&mut allow_methods.iter().map(Method::as_str))?;
    let allow_headers_value = if allow_headers.is_empty() {
        None
    } else {
        join(&mut allow_headers.iter().map(HeaderName::as_str))
    };
    let mut exposed: Vec<&str> = GATEWAY_EXPOSED_HEADERS.to_vec();
    for h in &expose_headers {
        if !exposed.contains(&h.as_str()) {
            exposed.push(h.as_str());
        }
    }
    let expose_headers_value = join(&mut exposed.into_iter())?;
    let allow_origin_values = match &allow_origins {
        AllowOrigins::Any => Vec::new(),
        // Normalised ASCII serialisations: always valid values.
        AllowOrigins::List(list) => list
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect(),
    };
    Some(CorsConfig {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials: credentials,
        max_age_seconds,
        allow_origin_values,
        allow_methods_value,
        allow_headers_value,
        expose_headers_value,
        max_age_value: HeaderValue::from(max_age_seconds),
    })
}

/// `list` as header names (lower-cased, deduplicated); `*` is refused:
/// it does not cover `Authorization`, and with credentials it is the
/// literal name `*`, so lists say what they mean.
fn header_names(list: Option<Vec<String>>, path: &str, errs: &mut Errors) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for (i, h) in list.unwrap_or_default().iter().enumerate() {
        if h == "*" {
            errs.push(
                format!("{path}[{i}]"),
                "\"*\" is not supported: list the header names",
            );
            continue;
        }
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if !names.contains(&name) => names.push(name),
            Ok(_) => {}
            Err(_) => errs.push(
                format!("{path}[{i}]"),
                format!("{h:?} is not a header name"),
            ),
        }
    }
    names
}

/// An origin as browsers send it: `http(s)://host[:port]`, lower-case,
/// without the scheme's default port; anything else is refused with why.
fn normalize_origin(raw: &str) -> Result<String, String> {
    let shape = "an origin is scheme://host[:port] with an http or https scheme and nothing after the host or port (no path, not even \"/\")";
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(format!("{raw:?}: {shape}"));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', '\\'])
        || rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{raw:?}: {shape}"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?}: {e}"))?;
    if url.host().is_none() {
        return Err(format!("{raw:?}: {shape}"));
    }
    // `Url` lower-cases, punycodes the host and drops a default port: the
    // form a browser's `Origin` header has.
    Ok(url.origin().ascii_serialization())
}

pub(super) fn build_deprecation(
    d: file::Deprecation,
    path: &str,
    errs: &mut Errors,
) -> Option<DeprecationConfig> {
    let before = errs.0.len();
    let instant = |v: Option<&str>, field: &str, errs: &mut Errors| -> Option<DateTime<Utc>> {
        let v = v?;
        match DateTime::parse_from_rfc3339(v) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                errs.push(
                    format!("{path}.{field}"),
                    format!("{v:?} is not an RFC 3339 instant (2026-06-01T00:00:00Z): {e}"),
                );
                None
            }
        }
    };
    let deprecated_at = instant(d.deprecated_at.as_deref(), "deprecated_at", errs);
    if d.deprecated_at.is_none() {
        errs.push(
            format!("{path}.deprecated_at"),
            "required: when the route was (or will be) deprecated",
        );
    }
    let sunset_at = instant(d.sunset_at.as_deref(), "sunset_at", errs);
    if let (Some(dep), Some(sun)) = (deprecated_at, sunset_at) {
        if sun <= dep {
            errs.push(format!("{path}.sunset_at"), "must be after deprecated_at");
        }
    }
    let link_value = d.link.as_deref().and_then(|link| {
        let ok =
            super::validate::check_url(link, &["http", "https"], &format!("{path}.link"), errs);
        // `<` `>` and controls would end or split the `Link` value.
        if ok
            && link
                .bytes()
                .any(|b| matches!(b, b'<' | b'>' | b'"' | b' ') || b.is_ascii_control())
        {
            errs.push(
                format!("{path}.link"),
                "must not contain spaces, quotes, '<' or '>': percent-encode them",
            );
            return None;
        }
        HeaderValue::from_str(&format!("<{link}>; rel=\"deprecation\"")).ok()
    });
    if errs.0.len() > before {
        return None;
    }
    let deprecated_at = deprecated_at?;
    Some(DeprecationConfig {
        deprecated_at,
        sunset_at,
        deprecation_value: HeaderValue::from_str(&format!("@{}", deprecated_at.timestamp()))
            .ok()?,
        sunset_value: sunset_at.and_then(|s| HeaderValue::from_str(&imf_fixdate(s)).ok()),
        link: d.link,
        link_value,
    })
}

/// `t` as an RFC 9110 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn imf_fixdate(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env};
    use super::*;
    use crate::config::{Config, ConfigErrors, Need};

    fn with_route(extra: &str) -> Result<Config, ConfigErrors> {
        let text = format!(
            "{}\n[[routes]]\nname = \"v1\"\npath_prefix = \"/v1\"\nupstream = \"echo\"\n{extra}\n",
            minimal()
        );
        Config::from_toml(&text, no_env(), Need::Serve)
    }

    fn paths(errs: &ConfigErrors) -> Vec<&str> {
        errs.0.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn star_with_credentials_is_a_config_error() {
        let errs = with_route(r#"cors = { allow_origins = ["*"], allow_credentials = true }"#)
            .unwrap_err();
        assert_eq!(paths(&errs), ["routes[1].cors.allow_credentials"], "{errs}");
        let cfg = with_route(r#"cors = { allow_origins = ["*"] }"#).expect("valid");
        let cors = cfg.routes[1].options.cors.as_ref().expect("cors");
        assert_eq!(cors.allow_origins, AllowOrigins::Any);
        assert!(!cors.allow_credentials);
    }

    #[test]
    fn origins_are_normalised_and_malformed_ones_refused() {
        let cfg = with_route(
            r#"cors = { allow_origins = ["HTTPS://App.Example.com:443", "http://localhost:3000"] }"#,
        )
        .expect("valid");
        let cors = cfg.routes[1].options.cors.as_ref().expect("cors");
        assert_eq!(
            cors.allow_origins,
            AllowOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ])
        );
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "null",
            "ftp://files.example.com",
            "https://user@app.example.com",
            "https://app.example.com?x=1",
            "https://",
            "https://a b.com",
        ] {
            let errs = with_route(&format!("cors = {{ allow_origins = [{bad:?}] }}")).unwrap_err();
            assert_eq!(
                paths(&errs),
                ["routes[1].cors.allow_origins[0]"],
                "{bad}: {errs}"
            );
        }
        let errs = with_route(r#"cors = { allow_origins = [] }"#).unwrap_err();
        assert_eq!(paths(&errs), ["routes[1].cors.allow_origins"]);
        let errs =
            with_route(r#"cors = { allow_origins = ["*", "https://a.example"] }"#).unwrap_err();
        assert_eq!(paths(&errs), ["routes[1].cors.allow_origins"]);
    }

    #[test]
    fn methods_and_headers_must_be_tokens() {
        let errs = with_route(
            r#"cors = { allow_origins = ["https://a.example"], allow_methods = ["GET", "BAD METHOD", "*"], allow_headers = ["x-ok", "bad header", "*"], expose_headers = ["x:y"] }"#,
        )
        .unwrap_err();
        assert_eq!(
            paths(&errs),
            [
                "routes[1].cors.allow_methods[1]",
                "routes[1].cors.allow_methods[2]",
                "routes[1].cors.allow_headers[1]",
                "routes[1].cors.allow_headers[2]",
                "routes[1].cors.expose_headers[0]"
            ],
            "{errs}"
        );
        let cfg = with_route(
            r#"cors = { allow_origins = ["https://a.example"], allow_methods = ["get", "DELETE"], allow_headers = ["Content-Type", "Authorization"], expose_headers = ["X-Trace", "x-request-id"], max_age_seconds = 60 }"#,
        )
        .expect("valid");
        let cors = cfg.routes[1].options.cors.as_ref().expect("cors");
        assert_eq!(cors.allow_methods_value, "GET, DELETE");
        assert_eq!(
            cors.allow_headers_value.as_ref().expect("headers"),
            "content-type, authorization"
        );
        let exposed = cors.expose_headers_value.to_str().expect("ascii");
        assert!(
            exposed.starts_with("x-request-id, x-ratelimit-limit"),
            "{exposed}"
        );
        assert!(exposed.ends_with(", x-trace"), "{exposed}");
        assert_eq!(exposed.matches("x-request-id").count(), 1, "{exposed}");
        assert_eq!(cors.max_age_value, "60");
        let errs = with_route(
            r#"cors = { allow_origins = ["https://a.example"], max_age_seconds = 86401 }"#,
        )
        .unwrap_err();
        assert_eq!(paths(&errs), ["routes[1].cors.max_age_seconds"]);
    }

    #[test]
    fn cors_defaults() {
        let cfg = with_route(r#"cors = { allow_origins = ["https://a.example"] }"#).expect("valid");
        let cors = cfg.routes[1].options.cors.as_ref().expect("cors");
        assert_eq!(cors.allow_methods_value, "GET, HEAD, POST");
        assert!(cors.allow_headers_value.is_none());
        assert_eq!(cors.max_age_seconds, DEFAULT_CORS_MAX_AGE_SECONDS);
        assert!(cfg.routes[0].options.cors.is_none());
    }

    #[test]
    fn deprecation_headers_are_precomputed() {
        let cfg = with_route(
            r#"deprecation = { deprecated_at = "2026-06-01T00:00:00Z", sunset_at = "2027-01-01T02:00:00+02:00", link = "https://docs.example.com/migrate" }"#,
        )
        .expect("valid");
        let d = cfg.routes[1]
            .options
            .deprecation
            .as_ref()
            .expect("deprecation");
        assert_eq!(d.deprecation_value, "@1780272000");
        assert_eq!(
            d.sunset_value.as_ref().expect("sunset"),
            "Fri, 01 Jan 2027 00:00:00 GMT"
        );
        assert_eq!(
            d.link_value.as_ref().expect("link"),
            "<https://docs.example.com/migrate>; rel=\"deprecation\""
        );
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("instant")
                .with_timezone(&Utc)
        };
        assert!(!d.is_sunset(at("2026-12-31T23:59:59Z")));
        assert!(d.is_sunset(at("2027-01-01T00:00:00Z")));
        assert!(d.is_sunset(at("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn deprecation_is_validated() {
        for (extra, want) in [
            (
                r#"deprecation = { sunset_at = "2027-01-01T00:00:00Z" }"#,
                "routes[1].deprecation.deprecated_at",
            ),
            (
                r#"deprecation = { deprecated_at = "2026-06-01" }"#,
                "routes[1].deprecation.deprecated_at",
            ),
            (
                r#"deprecation = { deprecated_at = "2026-06-01T00:00:00Z", sunset_at = "2026-06-01T00:00:00Z" }"#,
                "routes[1].deprecation.sunset_at",
            ),
            (
                r#"deprecation = { deprecated_at = "2026-06-01T00:00:00Z", link = "/docs/migrate" }"#,
                "routes[1].deprecation.link",
            ),
            (
                r#"deprecation = { deprecated_at = "2026-06-01T00:00:00Z", link = "javascript:alert(1)" }"#,
                "routes[1].deprecation.link",
            ),
            (
                r#"deprecation = { deprecated_at = "2026-06-01T00:00:00Z", link = "https://x.example/a>; rel=x" }"#,
                "routes[1].deprecation.link",
            ),
        ] {
            let errs = with_route(extra).unwrap_err();
            assert_eq!(paths(&errs), [want], "{extra}: {errs}");
        }
        let cfg = with_route(r#"deprecation = { deprecated_at = "2026-06-01T00:00:00Z" }"#)
            .expect("valid");
        let d = cfg.routes[1]
            .options
            .deprecation
            .as_ref()
            .expect("deprecation");
        assert!(d.sunset_value.is_none() && d.link_value.is_none());
        assert!(!d.is_sunset(Utc::now()));
    }
}
