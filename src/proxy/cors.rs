//! CORS on routes with a `cors` policy (DESIGN §3 "Edge"): which origin a
//! response may name, the gateway's own answer to a preflight, and the
//! `Access-Control-*` headers of actual responses, the gateway's denials
//! included (applied by [`super::edge_headers`], the one hook every
//! response passes).
//!
//! Rules that keep it safe:
//! - an origin is named back only when the policy lists it, and then as the
//!   policy spells it, never the client's bytes; `*` only for
//!   `allow_origins = ["*"]`, which config refuses with credentials;
//! - a route with an origin list answers `Vary: Origin` on every response,
//!   so a shared cache never serves one origin's answer to another;
//! - on a CORS route the gateway's policy wins: the upstream's own
//!   `Access-Control-*` headers are removed.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{AllowOrigins, CorsConfig};
use crate::errors::ProxyError;

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
/// The `Vary` of a preflight answer, allowed or refused: it depends on
/// these three request headers.
pub const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// Whether `req` is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method` (Fetch §3.2.2). Any other `OPTIONS` is
/// an ordinary request for the upstream.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The `Access-Control-Allow-Origin` value for a request with `origin`:
/// `*` for a policy allowing any origin, the listed origin it matches
/// (ASCII case-insensitively), else none.
pub fn allowed_origin(cors: &CorsConfig, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    match &cors.allow_origins {
        AllowOrigins::Any => Some(ANY),
        AllowOrigins::List(list) => {
            let origin = origin?.as_bytes();
            list.iter()
                .position(|o| o.as_bytes().eq_ignore_ascii_case(origin))
                .and_then(|i| cors.allow_origin_values.get(i).cloned())
        }
    }
}

/// Checks a preflight against the policy: the origin to answer with, or
/// the refusal (a static message that never echoes the request).
pub fn check_preflight(cors: &CorsConfig, req: &RequestHeader) -> Result<HeaderValue, ProxyError> {
    let Some(origin) = allowed_origin(cors, req.headers.get(ORIGIN)) else {
        return Err(ProxyError::CorsRejected(
            "CORS preflight refused: this origin is not allowed to call this route.",
        ));
    };
    // Methods are case-sensitive; browsers upper-case the standard ones.
    let method_ok = req
        .headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .is_some_and(|m| {
            cors.allow_methods
                .iter()
                .any(|a| a.as_str().as_bytes() == m.as_bytes())
        });
    if !method_ok {
        return Err(ProxyError::CorsRejected(
            "CORS preflight refused: the requested method is not allowed on this route.",
        ));
    }
    let headers_ok = req
        .headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .all(|v| requested_headers_allowed(&cors.allow_headers, v.as_bytes()));
    if !headers_ok {
        return Err(ProxyError::CorsRejected(
            "CORS preflight refused: a requested header is not allowed on this route.",
        ));
    }
    Ok(origin)
}

/// Whether every name of an `Access-Control-Request-Headers` value is in
/// `allowed` (names compared case-insensitively; empty items ignored).
fn requested_headers_allowed(allowed: &[HeaderName], value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .all(|name| {
            allowed
                .iter()
                .any(|a| a.as_str().as_bytes().eq_ignore_ascii_case(name))
        })
}

/// The gateway's answer to an allowed preflight: 204 with the policy.
pub fn preflight_response(
    cors: &CorsConfig,
    origin: HeaderValue,
    request_id: &HeaderValue,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(204, Some(9))?;
    resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
    if cors.allow_credentials {
        resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)?;
    }
    resp.insert_header(
        ACCESS_CONTROL_ALLOW_METHODS,
        cors.allow_methods_value.clone(),
    )?;
    if let Some(h) = &cors.allow_headers_value {
        resp.insert_header(ACCESS_CONTROL_ALLOW_HEADERS, h.clone())?;
    }
    resp.insert_header(ACCESS_CONTROL_MAX_AGE, cors.max_age_value.clone())?;
    resp.insert_header(VARY, HeaderValue::from_static(VARY_PREFLIGHT))?;
    resp.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    resp.insert_header("x-request-id", request_id.clone())?;
    Ok(resp)
}

/// Stamps an actual response (the upstream's or the gateway's own) of a
/// CORS route: the upstream's `Access-Control-*` out, the policy's in
/// when `origin` (from [`allowed_origin`]) is allowed, `Vary: Origin` for
/// an origin list.
pub fn stamp_actual(
    cors: &CorsConfig,
    origin: Option<&HeaderValue>,
    resp: &mut ResponseHeader,
) -> pingora::Result<()> {
    let foreign: Vec<HeaderName> = resp
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in foreign {
        resp.remove_header(&name);
    }
    if let Some(origin) = origin {
        resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
        if cors.allow_credentials {
            resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)?;
        }
        resp.insert_header(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            cors.expose_headers_value.clone(),
        )?;
    }
    if matches!(cors.allow_origins, AllowOrigins::List(_)) && !varies_by_origin(&resp.headers) {
        resp.append_header(VARY, HeaderValue::from_static("Origin"))?;
    }
    Ok(())
}

/// Whether `Vary` already names `Origin` (or is `*`).
fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"origin"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Need};

    fn policy(cors: &str) -> CorsConfig {
        let text = format!(
            "[keys]\npepper = \"0123456789abcdef0123456789abcdef\"\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"u\"\ncors = {cors}\n"
        );
        let cfg = Config::from_toml(&text, Vec::new(), Need::Serve).expect("valid");
        cfg.routes[0].options.cors.clone().expect("cors")
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("OPTIONS", b"/r", None).expect("request");
        req.insert_header("origin", origin).expect("origin");
        req.insert_header("access-control-request-method", method)
            .expect("method");
        if let Some(h) = headers {
            req.insert_header("access-control-request-headers", h)
                .expect("headers");
        }
        req
    }

    #[test]
    fn only_listed_origins_are_named_back_as_listed() {
        let cors = policy(r#"{ allow_origins = ["https://app.example.com"] }"#);
        let hv = |s: &str| HeaderValue::from_str(s).expect("value");
        assert_eq!(
            allowed_origin(&cors, Some(&hv("https://app.example.com"))),
            Some(hv("https://app.example.com"))
        );
        assert_eq!(
            allowed_origin(&cors, Some(&hv("HTTPS://APP.example.com"))),
            Some(hv("https://app.example.com"))
        );
        for evil in [
            "https://app.example.com.evil.com",
            "https://evil.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "null",
            "",
        ] {
            assert_eq!(allowed_origin(&cors, Some(&hv(evil))), None, "{evil}");
        }
        assert_eq!(allowed_origin(&cors, None), None);
        let any = policy(r#"{ allow_origins = ["*"] }"#);
        assert_eq!(
            allowed_origin(&any, Some(&hv("https://evil.com"))),
            Some(ANY)
        );
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let cors = policy(
            r#"{ allow_origins = ["https://a.example"], allow_methods = ["GET", "PUT"], allow_headers = ["content-type", "authorization"] }"#,
        );
        assert!(check_preflight(&cors, &preflight("https://a.example", "PUT", None)).is_ok());
        assert!(check_preflight(
            &cors,
            &preflight(
                "https://a.example",
                "GET",
                Some("Authorization, content-type,")
            )
        )
        .is_ok());
        for (req, why) in [
            (preflight("https://b.example", "GET", None), "origin"),
            (preflight("https://a.example", "DELETE", None), "method"),
            (preflight("https://a.example", "put", None), "method"),
            (
                preflight("https://a.example", "GET", Some("authorization, x-admin")),
                "header",
            ),
        ] {
            let err = check_preflight(&cors, &req).expect_err(why);
            assert_eq!(err.code(), "cors_rejected");
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
        assert!(is_preflight(&preflight("https://a.example", "GET", None)));
        let plain = RequestHeader::build("OPTIONS", b"/r", None).expect("request");
        assert!(!is_preflight(&plain));
    }

    #[test]
    fn actual_responses_lose_upstream_cors_and_gain_vary() {
        let cors = policy(r#"{ allow_origins = ["https://a.example"], allow_credentials = true }"#);
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("access-control-allow-origin", "*")
            .expect("h");
        resp.insert_header("access-control-allow-methods", "*")
            .expect("h");
        resp.insert_header("vary", "Accept-Encoding").expect("h");
        stamp_actual(&cors, None, &mut resp).expect("stamp");
        assert!(resp.headers.get("access-control-allow-origin").is_none());
        assert!(resp.headers.get("access-control-allow-methods").is_none());
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        let origin = HeaderValue::from_static("https://a.example");
        let mut resp = ResponseHeader::build(401, None).expect("resp");
        resp.insert_header("vary", "origin").expect("h");
        stamp_actual(&cors, Some(&origin), &mut resp).expect("stamp");
        assert_eq!(
            resp.headers["access-control-allow-origin"],
            "https://a.example"
        );
        assert_eq!(resp.headers["access-control-allow-credentials"], "true");
        assert_eq!(resp.headers.get_all("vary").iter().count(), 1);
    }
}
