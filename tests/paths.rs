//! Paths that try to escape a stricter route (issue 12 part 1, DESIGN §3
//! "Paths and routing"): routes `/orders` (`read:orders`) and
//! `/orders/admin` (`admin:orders`) in front of the echo upstream, which
//! reports the path it received. Every spelling of `/orders/admin/…` must
//! either reach the `/orders/admin` route (403 for a `read:orders` key) or
//! be refused (400); none may pass through `/orders`. Requests are written
//! on raw sockets, because HTTP clients normalise some of these paths
//! themselves.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use common::*;

fn routes(upstream: SocketAddr) -> String {
    format!(
        r#"{defaults}
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "echo"
scopes = ["read:orders"]

[[routes]]
name = "orders-admin"
path_prefix = "/orders/admin"
upstream = "echo"
scopes = ["admin:orders"]

[[routes]]
name = "reports"
path_prefix = "/reports"
upstream = "echo"
method_scopes = {{ get = ["read:reports"] }}
"#,
        defaults = default_routes(upstream)
    )
}

/// One request on a fresh connection, the target written byte for byte.
/// Returns the status and the body (JSON when it parses).
fn raw(addr: SocketAddr, method: &str, target: &[u8], key: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.extend_from_slice(format!("Authorization: Bearer {k}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).expect("write");
    let mut buf = Vec::new();
    // The server closes after the response (Connection: close).
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.into()));
    (status, body)
}

/// Spellings of `/orders/admin/...` that an upstream decodes to the admin
/// path: after normalisation they are routed to `/orders/admin`.
const DECODED_TO_ADMIN: &[&str] = &[
    "/orders/%61dmin/users",
    "/orders//admin/users",
    "//orders/admin/users",
    "/orders///admin",
    "/orders/admin//users",
    "/orders/%61%64%6d%69%6e",
    "/orders/%61%64%6D%69%6E/users",
    "/orders/adm%69n",
    "/%6frders/admin",
    // Absolute form: routed, and forwarded, on the normalised path.
    "http://t/orders/%61dmin/users",
    "http://t//orders/admin",
];

/// Spellings the gateway refuses with 400 `bad_request`.
const REFUSED: &[&[u8]] = &[
    // `;` path parameters, raw and encoded.
    b"/orders/admin;x/users",
    b"/orders;x/admin",
    b"/orders/admin;/users",
    b"/orders/admin%3Bx/users",
    b"/orders/admin%3bx/users",
    // Encoded separators, either case.
    b"/orders/admin%2Fusers",
    b"/orders/admin%2fusers",
    b"/orders%2Fadmin",
    b"/orders%2fadmin",
    b"/orders/admin%5Cusers",
    b"/orders/admin%5cusers",
    // Backslashes.
    b"/orders\\admin",
    b"/orders/x\\..\\admin",
    // Dot segments, raw, encoded and mixed.
    b"/orders/x/../admin",
    b"/orders/./admin",
    b"/orders/x/%2e%2e/admin",
    b"/orders/x/%2E%2E/admin",
    b"/orders/x/%2e%2E/admin",
    b"/orders/x/.%2e/admin",
    b"/orders/x/%2E./admin",
    b"/orders/%2e/admin",
    b"/orders/x/..",
    b"/orders/x/%2e%2e",
    b"/orders/x/..%2Fadmin",
    // NUL.
    b"/orders/admin%00",
    b"/orders/%00/admin",
    // Malformed escapes.
    b"/orders/%zz/admin",
    b"/orders/admin%",
    b"/orders/admin%6",
    b"/orders/%6/admin",
    // Raw non-ASCII.
    b"/orders/caf\xc3\xa9",
    b"/orders/\xff",
    b"http://t/orders/admin;x/users",
    b"http://t/orders/x/../admin",
];

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_the_admin_path_passes_through_the_wider_route() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream))).await;
    let (_, key) = gw.create_key("read:orders,read:echo", &[]).await;
    let (_, admin) = gw
        .create_key("read:orders,admin:orders,read:echo", &[])
        .await;

    let addr = gw.proxy;
    let key2 = key.clone();
    let outcomes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for path in DECODED_TO_ADMIN {
            out.push((
                path.as_bytes().to_vec(),
                raw(addr, "GET", path.as_bytes(), Some(&key2)),
            ));
        }
        for path in REFUSED {
            out.push((path.to_vec(), raw(addr, "GET", path, Some(&key2))));
        }
        out
    })
    .await
    .expect("requests");
    let mut wrong = Vec::new();
    for (path, (status, body)) in &outcomes {
        let shown = String::from_utf8_lossy(path).into_owned();
        let routed_to_admin = DECODED_TO_ADMIN.iter().any(|p| p.as_bytes() == path);
        let message = body["error"]["message"].as_str().unwrap_or("");
        let ok = match (*status, code(body)) {
            (403, "insufficient_scope") => routed_to_admin && message.contains("admin:orders"),
            (400, "bad_request") => {
                !routed_to_admin
                    && !message.is_empty()
                    && body["error"]["request_id"]
                        .as_str()
                        .is_some_and(|r| !r.is_empty())
            }
            // Bytes that are not UTF-8 never reach the gateway's code:
            // Pingora refuses the request line with its own plain 400.
            (400, _) => std::str::from_utf8(path).is_err(),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{shown}: {status} {body}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "paths not refused nor routed to /orders/admin as they should be:\n{}",
        wrong.join("\n")
    );

    // A key that holds admin:orders reaches the admin path, and the upstream
    // receives the normalised path (never the spelling the client sent).
    let addr = gw.proxy;
    let admin2 = admin.clone();
    let seen = tokio::task::spawn_blocking(move || {
        DECODED_TO_ADMIN
            .iter()
            .map(|p| (p, raw(addr, "GET", p.as_bytes(), Some(&admin2))))
            .collect::<Vec<_>>()
    })
    .await
    .expect("requests");
    for (path, (status, body)) in seen {
        assert_eq!(status, 200, "{path}: {body}");
        let got = body["path"].as_str().unwrap_or("");
        assert!(
            got == "/orders/admin" || got.starts_with("/orders/admin/"),
            "{path}: upstream saw {got:?}"
        );
        assert!(!got.contains("//") && !got.contains('%'), "{path}: {got}");
    }

    // Scopes, limits and metrics see the route of the normalised path.
    let text = metrics(&gw).await;
    let admin_403 = text.lines().any(|l| {
        l.starts_with("gateway_requests_total{")
            && l.contains("route=\"orders-admin\"")
            && l.contains("status=\"403\"")
    });
    assert!(admin_403, "no 403 counted for route orders-admin:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_normalised_path_and_the_query_untouched() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream))).await;
    let (_, key) = gw.create_key("read:orders,read:echo", &[]).await;
    let addr = gw.proxy;
    let cases: &[(&str, &str, &str)] = &[
        ("/orders//x%7e", "/orders/x~", ""),
        ("/orders/%7Ex?q=%2F..;a%2e", "/orders/~x", "q=%2F..;a%2e"),
        ("/orders/caf%c3%a9", "/orders/caf%C3%A9", ""),
        ("/orders/a%20b%3f", "/orders/a%20b%3F", ""),
        ("/orders/%41dmin", "/orders/Admin", ""),
        ("/orders/x/", "/orders/x/", ""),
        ("/orders/x//", "/orders/x/", ""),
        ("/orders/...", "/orders/...", ""),
        ("/orders/.well-known", "/orders/.well-known", ""),
        ("/orders/x?a=1&b=/../%00", "/orders/x", "a=1&b=/../%00"),
        ("http://t/orders//x%7e", "/orders/x~", ""),
        ("http://t/orders/x?q=1", "/orders/x", "q=1"),
    ];
    for (sent, path, query) in cases {
        let (sent, key) = (sent.to_string(), key.clone());
        let (status, body) =
            tokio::task::spawn_blocking(move || raw(addr, "GET", sent.as_bytes(), Some(&key)))
                .await
                .expect("request");
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["path"], *path, "{body}");
        assert_eq!(body["query"], *query, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auth_none_route_is_not_a_way_around_a_protected_one() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream))).await;
    let addr = gw.proxy;
    let (statuses, ok) = tokio::task::spawn_blocking(move || {
        let refused: Vec<_> = [
            &b"/public/..%2Fecho"[..],
            b"/public%2F..%2Fecho",
            b"/public/%2e%2e/echo",
            b"/public;/../echo",
            b"/public\\..\\echo",
        ]
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(p).into_owned(),
                raw(addr, "GET", p, None),
            )
        })
        .collect();
        let ok = raw(addr, "GET", b"/%70ublic//x", None);
        (refused, ok)
    })
    .await
    .expect("requests");
    for (path, (status, body)) in statuses {
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{path}: {body}"
        );
    }
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(ok.1["path"], "/public/x");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_needs_the_method_scopes_of_get() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream))).await;
    let (_, without) = gw.create_key("read:echo", &[]).await;
    let (_, with) = gw.create_key("read:echo,read:reports", &[]).await;
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp = http()
            .request(method.clone(), gw.url("/reports/q"))
            .bearer_auth(&without)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 403, "{method} without read:reports");
        let resp = http()
            .request(method.clone(), gw.url("/reports/q"))
            .bearer_auth(&with)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{method} with read:reports");
    }
    // Other methods do not need GET's scopes.
    let resp = http()
        .post(gw.url("/reports/q"))
        .bearer_auth(&without)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_port_normalises_and_refuses_the_same_paths() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let addr = gw.admin;
    let results = tokio::task::spawn_blocking(move || {
        let refused: Vec<_> = [
            &b"/api/v1/keys/..%2Fkeys"[..],
            b"/api/v1/keys/%2e%2e",
            b"/api/v1/keys;x",
            b"/api/v1/keys/%00",
            b"/api/v1/keys\\x",
            b"/api/v1/keys/%zz",
            b"/health/../metrics",
        ]
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(p).into_owned(),
                raw(addr, "GET", p, Some(&admin)),
            )
        })
        .collect::<Vec<_>>();
        let normalised = [
            raw(addr, "GET", b"//health", None),
            raw(addr, "GET", b"/%68ealth/live", None),
            raw(addr, "GET", b"/api//v1/%6Beys", Some(&admin)),
        ];
        (refused, normalised)
    })
    .await
    .expect("requests");
    let (refused, normalised) = results;
    for (path, (status, body)) in refused {
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{path}: {body}"
        );
        assert!(
            body["error"]["request_id"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{path}: {body}"
        );
    }
    for (status, body) in normalised {
        assert_eq!(status, 200, "{body}");
    }
}
