//! CORS and security headers at the edge (issue 17, DESIGN §3 "Edge"):
//! preflights answered by the gateway without a key, origins named back
//! only when allowed, the gateway's own denials readable by the page, the
//! upstream's CORS headers replaced by the route's policy, and security
//! headers added only where the upstream did not set them.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";

/// An upstream that allows every origin, with credentials: exactly what
/// the gateway must not pass on.
const SLOPPY: &[(&str, &str)] = &[
    ("access-control-allow-origin", "*"),
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-methods", "GET, POST, DELETE"),
    ("x-frame-options", "SAMEORIGIN"),
    ("vary", "Accept-Encoding"),
];

fn routes(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "api"
targets = ["{upstream}"]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "api"
scopes = ["read:api"]
rate_limit = {{ per_minute = 2 }}
cors = {{ allow_origins = ["{APP}"], allow_methods = ["GET", "POST"], allow_headers = ["authorization", "content-type"], allow_credentials = true, max_age_seconds = 300 }}

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "api"
auth = "none"
cors = {{ allow_origins = ["*"] }}

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "api"
auth = "none"
{extra}
"#
    )
}

fn preflight(
    gw: &Gateway,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::RequestBuilder {
    http()
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn vary(h: &HeaderMap) -> String {
    h.get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
        .to_ascii_lowercase()
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_without_a_key() {
    let db = TestDb::new().await;
    let (upstream, hits) = common::counting_upstream(SLOPPY).await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream, ""))).await;

    // Allowed: 204 from the gateway, no key, nothing upstream.
    let (status, h, _) = send(preflight(
        &gw,
        "/api/items",
        APP,
        "POST",
        "Authorization, Content-Type",
    ))
    .await;
    assert_eq!(status, 204, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&h, "access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(header(&h, "access-control-max-age"), Some("300"));
    let v = vary(&h);
    for part in [
        "origin",
        "access-control-request-method",
        "access-control-request-headers",
    ] {
        assert!(v.contains(part), "vary {v:?} lacks {part}");
    }
    assert!(h.contains_key("x-request-id"));

    // A disallowed origin, method or header: refused, no allow header at
    // all, never the origin named back.
    for (origin, method, headers, why) in [
        (EVIL, "GET", "authorization", "origin"),
        (
            "https://app.example.com.evil.example.net",
            "GET",
            "authorization",
            "origin",
        ),
        ("null", "GET", "authorization", "origin"),
        (APP, "DELETE", "authorization", "method"),
        (APP, "GET", "authorization, x-admin", "header"),
    ] {
        let (status, h, body) = send(preflight(&gw, "/api/items", origin, method, headers)).await;
        assert_eq!(status, 403, "{origin} {method} {headers}: {body}");
        assert_eq!(code(&body), "cors_rejected");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(why)),
            "{body}"
        );
        assert!(
            h.keys()
                .all(|k| !k.as_str().starts_with("access-control-allow")),
            "{origin} {method}: {h:?}"
        );
        assert!(!format!("{h:?}").contains("evil"), "{h:?}");
        assert!(vary(&h).contains("origin"), "{h:?}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a preflight reached the upstream"
    );

    // An OPTIONS that is not a preflight is an ordinary request: it needs
    // a key like any other.
    let (status, _, body) = send(http().request(Method::OPTIONS, gw.url("/api/items"))).await;
    assert_eq!((status, code(&body)), (401, "missing_api_key"));

    // `*` answers `*` to any origin, never paired with credentials.
    let (status, h, _) = send(preflight(&gw, "/open/x", EVIL, "GET", "")).await;
    assert_eq!(status, 204);
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&h, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn preflights_count_against_the_client_ip() {
    let db = TestDb::new().await;
    let (upstream, _) = common::counting_upstream(&[]).await;
    let limits = "\n[rate_limits]\nanonymous = { per_minute = 3 }\n";
    let gw = Gateway::start(&db, Opts::new(format!("{}{limits}", routes(upstream, "")))).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, h, _) = send(preflight(&gw, "/api/items", APP, "GET", "authorization")).await;
        statuses.push(status);
        if status == 429 {
            assert!(h.contains_key("retry-after"), "{h:?}");
        }
    }
    assert_eq!(statuses, [204, 204, 204, 429, 429]);
    // Another client is not affected.
    let (status, _, _) = send(
        http_from("127.0.0.2")
            .request(Method::OPTIONS, gw.url("/api/items"))
            .header("origin", APP)
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn actual_responses_and_denials_carry_the_route_policy() {
    let db = TestDb::new().await;
    let (upstream, _) = common::counting_upstream(SLOPPY).await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream, ""))).await;
    // (`create_key` polls /echo, which this config lacks.)
    let (_, key) = gw.create_key_unseen("read:api", &[]);
    wait_known(&gw, &key).await;
    let from = |origin: &str, key: Option<&str>| {
        let mut req = http().get(gw.url("/api/items")).header("origin", origin);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req
    };

    // Allowed origin, upstream answer: the policy's headers replace the
    // upstream's `*` (which must never meet credentials).
    let (status, h, _) = send(from(APP, Some(&key))).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(h.get_all("access-control-allow-origin").iter().count(), 1);
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&h, "access-control-allow-methods"),
        None,
        "upstream's kept: {h:?}"
    );
    let exposed = header(&h, "access-control-expose-headers").unwrap_or("");
    for name in [
        "x-request-id",
        "x-ratelimit-remaining",
        "retry-after",
        "ratelimit-policy",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let v = vary(&h);
    assert!(v.contains("origin") && v.contains("accept-encoding"), "{v}");

    // A disallowed origin gets the answer but nothing a browser would let
    // the page read; the upstream's `*` is gone too.
    let (status, h, _) = send(from(EVIL, Some(&key))).await;
    assert_eq!(status, 200);
    assert!(
        h.keys().all(|k| !k.as_str().starts_with("access-control-")),
        "{h:?}"
    );
    assert!(vary(&h).contains("origin"));

    // The route's per-key limit is 2 a minute: the second call above used
    // it up. The 429 is readable by the page, with its Retry-After.
    let (status, h, body) = send(from(APP, Some(&key))).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(h.contains_key("retry-after"));
    assert!(header(&h, "access-control-expose-headers").is_some_and(|e| e.contains("retry-after")));

    // A 401 written by the gateway itself: readable by the allowed origin.
    let (status, h, body) = send(from(APP, None)).await;
    assert_eq!((status, code(&body)), (401, "missing_api_key"));
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(vary(&h).contains("origin"));
    let (status, h, _) = send(from(EVIL, None)).await;
    assert_eq!(status, 401);
    assert_eq!(header(&h, "access-control-allow-origin"), None);

    // A route without CORS leaves the upstream's headers alone.
    let (status, h, _) = send(http().get(gw.url("/plain/x")).header("origin", EVIL)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn security_headers_are_added_only_where_missing() {
    let db = TestDb::new().await;
    let (upstream, _) = common::counting_upstream(SLOPPY).await;
    let mut opts = Opts::new(routes(upstream, ""));
    opts.proxy_extra = "security_headers = true".into();
    let gw = Gateway::start(&db, opts).await;

    // The upstream set its own X-Frame-Options: kept, the others added.
    let (status, h, _) = send(http().get(gw.url("/plain/x"))).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(h.get_all("x-frame-options").iter().count(), 1);
    assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&h, "referrer-policy"), Some("no-referrer"));

    // The gateway's own answers: a 401, a 404 and a preflight.
    for req in [
        http().get(gw.url("/api/items")),
        http().get(gw.url("/nowhere")),
        preflight(&gw, "/api/items", APP, "GET", ""),
    ] {
        let (status, h, _) = send(req).await;
        assert!([401, 404, 204].contains(&status), "{status}");
        assert_eq!(header(&h, "x-frame-options"), Some("DENY"), "{status}");
        assert_eq!(
            header(&h, "x-content-type-options"),
            Some("nosniff"),
            "{status}"
        );
        assert_eq!(
            header(&h, "referrer-policy"),
            Some("no-referrer"),
            "{status}"
        );
    }
}

#[tokio::test]
async fn security_headers_are_off_by_default() {
    let db = TestDb::new().await;
    let (upstream, _) = common::counting_upstream(&[]).await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream, ""))).await;
    for path in ["/plain/x", "/api/items"] {
        let (_, h, _) = send(http().get(gw.url(path))).await;
        for name in [
            "x-frame-options",
            "x-content-type-options",
            "referrer-policy",
        ] {
            assert!(!h.contains_key(name), "{path}: {name} added");
        }
    }
}

#[test]
fn star_with_credentials_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cors.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[keys]
pepper = "{PEPPER}"
[[upstreams]]
name = "u"
targets = ["127.0.0.1:1"]
[[routes]]
name = "a"
path_prefix = "/a"
upstream = "u"
cors = {{ allow_origins = ["*"], allow_credentials = true }}
[[routes]]
name = "b"
path_prefix = "/b"
upstream = "u"
cors = {{ allow_origins = ["https://app.example.com/"] }}
"#
        ),
    )
    .expect("write");
    assert_config_refused(
        &path,
        &[
            "routes[0].cors.allow_credentials",
            "routes[1].cors.allow_origins[0]",
        ],
    );
}
