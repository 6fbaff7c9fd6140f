//! The proxy as a client sees it: auth outcomes, scopes, headers, upstream
//! failures, keep-alive and bad input. Real gateway processes, a real
//! Postgres database per test and the demo upstream on a real socket.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

async fn setup() -> (TestDb, Gateway) {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    (db, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_key_reaches_upstream_with_identity_headers_and_without_credentials() {
    let (_db, gw) = setup().await;
    let (id, key) = gw.create_key("read:echo", &[]).await;

    let (status, headers, body) = send(
        http()
            .get(gw.url("/echo/hello?x=1"))
            .bearer_auth(&key)
            .header("x-request-id", "client-req-42")
            .header("x-gateway-key-id", "spoofed")
            .header("x-forwarded-for", "6.6.6.6"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-request-id"], "client-req-42");
    let seen = &body["headers"];
    assert_eq!(body["path"], "/echo/hello");
    assert!(
        seen.get("authorization").is_none(),
        "credential leaked: {seen}"
    );
    assert!(seen.get("x-api-key").is_none(), "credential leaked: {seen}");
    assert_eq!(seen["x-request-id"], "client-req-42");
    assert_eq!(seen["x-gateway-key-id"], id.as_str());
    // The peer is not a trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");

    // Same through X-API-Key; a malformed request id is replaced.
    let (status, headers, body) = send(
        http()
            .get(gw.url("/echo"))
            .header("x-api-key", &key)
            .header("x-request-id", "not ok!"),
    )
    .await;
    assert_eq!(status, 200);
    let rid = headers["x-request-id"].to_str().expect("ascii");
    assert_ne!(rid, "not ok!");
    assert_eq!(body["headers"]["x-request-id"], rid);
    assert!(body["headers"].get("x-api-key").is_none());

    // On an auth = "none" route another scheme is the upstream's business;
    // a gateway key still never leaves the gateway.
    let basic = "Basic dXNlcjpwdw==";
    let (_, _, body) = send(http().get(gw.url("/public")).header("authorization", basic)).await;
    assert_eq!(body["headers"]["authorization"], basic);
    let (_, _, body) = send(http().get(gw.url("/public")).bearer_auth(&key)).await;
    assert!(body["headers"].get("authorization").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_is_a_json_401() {
    let (_db, gw) = setup().await;
    let (status, headers, body) = get(&gw.url("/echo/x"), None).await;
    assert_eq!(status, 401);
    assert_eq!(code(&body), "missing_api_key");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body["error"]["request_id"],
        headers["x-request-id"].to_str().expect("ascii")
    );
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_outcome_has_its_code() {
    let (_db, gw) = setup().await;
    let (_, key) = gw.create_key("read:echo", &[]).await;

    // Bad checksum: rejected as malformed before any lookup.
    let mut bad = key.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).expect("ascii");
    let before = metrics(&gw).await;
    let (status, _, body) = get(&gw.url("/echo"), Some(&bad)).await;
    assert_eq!((status, code(&body)), (401, "invalid_api_key"));
    let after = metrics(&gw).await;
    let bad_checksum = r#"gateway_auth_failures_total{reason="bad_checksum"}"#;
    let unknown = r#"gateway_auth_failures_total{reason="unknown"}"#;
    assert_eq!(
        counter_delta(&before, &after, bad_checksum),
        Some(1.0),
        "{after}"
    );
    // No unknown key was sent yet, so the series may not exist: 0 then.
    // The next step makes it exist, which shows this line reads the
    // series that a lookup miss counts.
    assert_eq!(
        sample_or_zero(&after, unknown),
        sample_or_zero(&before, unknown),
        "a bad checksum must be rejected before the lookup"
    );

    // Well-formed but unknown: counted as `unknown`. The key is random;
    // it is printed so a failure can be replayed.
    let stranger = gateway::keys::format::generate("gw_live_");
    let (status, _, body) = get(&gw.url("/echo"), Some(&stranger)).await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_api_key"),
        "key {stranger}"
    );
    let later = metrics(&gw).await;
    assert_eq!(
        counter_delta(&after, &later, unknown),
        Some(1.0),
        "key {stranger}: {later}"
    );

    // Garbage of every shape.
    for junk in ["x", "gw_live_", &"gw_live_a".repeat(40), "Bearer"] {
        let (status, _, body) = get(&gw.url("/echo"), Some(junk)).await;
        assert_eq!((status, code(&body)), (401, "invalid_api_key"), "{junk}");
    }
    let (status, _, body) = send(
        http()
            .get(gw.url("/echo"))
            .header("authorization", "Basic dXNlcjpwdw=="),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "invalid_api_key"));

    // Expired.
    let (_, short) = gw.create_key("read:echo", &["--expires-in", "1s"]).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (status, _, body) = get(&gw.url("/echo"), Some(&short)).await;
            status == 401 && code(&body) == "expired_api_key"
        })
        .await,
        "key did not expire"
    );

    // Revoked.
    let (id, doomed) = gw.create_key("read:echo", &[]).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(&gw.url("/echo"), Some(&doomed)).await.0 == 200
        })
        .await
    );
    let out = gw.cli(&["keys", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            let (status, _, body) = get(&gw.url("/echo"), Some(&doomed)).await;
            status == 401 && code(&body) == "revoked_api_key"
        })
        .await,
        "revocation not applied"
    );

    // The first key was never affected.
    assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_are_enforced_per_route_and_method() {
    let (_db, gw) = setup().await;
    let (_, reader) = gw.create_key("read:echo", &[]).await;
    let (_, wildcard) = gw.create_key("read:*", &[]).await;
    let (_, star) = gw.create_key("*", &[]).await;
    let (_, other) = gw.create_key("read:other", &[]).await;

    assert_eq!(get(&gw.url("/echo"), Some(&reader)).await.0, 200);
    assert_eq!(get(&gw.url("/echo"), Some(&wildcard)).await.0, 200);
    assert_eq!(get(&gw.url("/echo"), Some(&star)).await.0, 200);

    let (status, _, body) = get(&gw.url("/echo"), Some(&other)).await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("read:echo"),
        "{body}"
    );

    // POST needs write:echo on top of read:echo.
    let (status, _, body) =
        send(http().post(gw.url("/echo")).bearer_auth(&reader).body("{}")).await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("write:echo"),
        "{body}"
    );
    let (status, _, _) = send(http().post(gw.url("/echo")).bearer_auth(&star).body("{}")).await;
    assert_eq!(status, 200);

    // auth = "none" needs no key.
    let (status, _, body) = get(&gw.url("/public/page"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["headers"].get("x-gateway-key-id").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_route_is_a_json_404() {
    let (_db, gw) = setup().await;
    let (status, _, body) = get(&gw.url("/nowhere"), None).await;
    assert_eq!((status, code(&body)), (404, "route_not_found"));
    // Segment boundaries: /echoes is not under /echo.
    let (status, _, body) = get(&gw.url("/echoes"), None).await;
    assert_eq!((status, code(&body)), (404, "route_not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_cannot_walk_from_a_public_route_into_a_protected_one() {
    let (_db, gw) = setup().await;
    // Raw requests: an HTTP client would normalise these paths itself.
    for path in [
        "/public/../echo",
        "/public/%2e%2e/echo",
        "/public/./x",
        "/public\\..\\echo",
    ] {
        let mut s = TcpStream::connect(gw.proxy).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let resp = raw_exchange(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
        assert!(resp.contains("\"code\":\"bad_request\""), "{path}: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_are_json_and_statuses_pass_through() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let mut opts = Opts::new(default_routes(upstream));
    opts.read_timeout_ms = 300;
    let gw = Gateway::start(&db, opts).await;

    let (status, headers, body) = get(&gw.url("/dead/x"), None).await;
    assert_eq!((status, code(&body)), (502, "upstream_unavailable"));
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));

    let (status, _, body) = get(&gw.url("/public/slow?delay_ms=2000"), None).await;
    assert_eq!((status, code(&body)), (504, "upstream_timeout"));

    let (status, _, body) = get(&gw.url("/public/teapot?status=418"), None).await;
    assert_eq!(status, 418);
    assert_eq!(
        body["upstream"], "demo",
        "the upstream's own body passes through"
    );
    let (status, _, _) = get(&gw.url("/public/x?status=503"), None).await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_target_is_skipped_and_the_request_retried() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let routes = format!(
        r#"
[[upstreams]]
name = "pair"
targets = ["{dead}", "{upstream}"]
[[routes]]
name = "pair"
path_prefix = "/"
upstream = "pair"
auth = "none"
"#,
        dead = dead_addr()
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;
    for i in 0..6 {
        // POST too: nothing reached the dead target, so a retry is safe.
        let (status, _, body) = send(http().post(gw.url(&format!("/r{i}"))).body("x")).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let text = metrics(&gw).await;
    assert_eq!(
        sample(
            &text,
            r#"gateway_upstream_marked_down_total{upstream="pair"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

/// Writes raw bytes and reads one response (headers plus Content-Length body).
fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).expect("write");
    read_response(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_keep_the_connection_alive() {
    let (_db, gw) = setup().await;
    let (_, key) = gw.create_key("read:echo", &[]).await;
    let mut s = TcpStream::connect(gw.proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let first = raw_exchange(&mut s, b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    let second = raw_exchange(&mut s, b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");
    let third = raw_exchange(
        &mut s,
        format!("GET /echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n").as_bytes(),
    );
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_input_gets_4xx_never_5xx() {
    let (_db, gw) = setup().await;
    let huge_key = "k".repeat(64 * 1024);
    let big = |name: &str, len: usize| {
        format!(
            "GET /echo HTTP/1.1\r\nHost: t\r\n{name}: {}\r\n\r\n",
            "b".repeat(len)
        )
        .into_bytes()
    };
    // (request, the status it must get). 0 means "a 4xx, or the connection
    // closed without an answer": acceptable only for bytes that are not HTTP.
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            format!("GET /echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {huge_key}\r\n\r\n").into_bytes(),
            401,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: t\r\nX-API-Key: gw_live_\xff\xfe\xfd\r\n\r\n".to_vec(),
            401,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer\r\n\r\n".to_vec(),
            401,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: t\r\nAuthorization: \xc3\x28\r\n\r\n".to_vec(),
            401,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: t\r\nX-API-Key: a\r\nX-API-Key: b\r\n\r\n".to_vec(),
            401,
        ),
        (big("X-Big", 200 * 1024), 401),
        (big("X-Huge", 2 * 1024 * 1024), 400),
        (
            format!(
                "GET /echo HTTP/1.1\r\nHost: t\r\n{}\r\n",
                "X-Many: 1\r\n".repeat(500)
            )
            .into_bytes(),
            400,
        ),
        // Odd hosts and request ids reach the filters: no panic, an answer.
        (b"GET /echo HTTP/1.1\r\nHost: [abc\r\n\r\n".to_vec(), 401),
        (
            b"GET /echo HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".to_vec(),
            401,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: :::\r\nX-Request-ID: \xff\r\n\r\n".to_vec(),
            401,
        ),
        (
            b"GET /public/../echo HTTP/1.1\r\nHost: [\r\n\r\n".to_vec(),
            400,
        ),
        (b"NOT A REQUEST\r\n\r\n".to_vec(), 0),
        (
            b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n".to_vec(),
            0,
        ),
    ];
    for (i, (req, want)) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(gw.proxy).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let resp = raw_exchange(&mut s, req);
        let status: u16 = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        if *want == 0 {
            assert!(
                status == 0 || (400..500).contains(&status),
                "case {i}: {resp}"
            );
        } else {
            assert_eq!(status, *want, "case {i}: {resp}");
        }
    }
    // Still serving.
    let (status, _, _) = get(&gw.url("/public"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_requests_latency_auth_and_snapshot() {
    let (_db, gw) = setup().await;
    let (_, key) = gw.create_key("read:echo", &[]).await;
    let count = r#"gateway_request_duration_seconds_count{route="echo"}"#;
    // create_key's own probes may still be in their logging phase: start
    // from a settled count.
    let mut before = metrics(&gw).await;
    let mut settled = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = metrics(&gw).await;
        let now = sample(&again, count);
        if now.is_some() && now == sample(&before, count) {
            settled = true;
            break;
        }
        before = again;
    }
    assert!(settled, "{count} missing or never settled:\n{before}");
    assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);
    assert_eq!(get(&gw.url("/echo"), None).await.0, 401);
    // Metrics are recorded in the logging phase, after the response went
    // out: wait until both requests are counted.
    let counted = |text: &str| counter_delta(&before, text, count).is_some_and(|d| d >= 2.0);
    let mut after = metrics(&gw).await;
    for _ in 0..200 {
        if counted(&after) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        after = metrics(&gw).await;
    }
    let delta = |series: &str| counter_delta(&before, &after, series);
    assert_eq!(
        delta(r#"gateway_requests_total{route="echo",method="GET",status="200"}"#),
        Some(1.0)
    );
    assert_eq!(
        delta(r#"gateway_requests_total{route="echo",method="GET",status="401"}"#),
        Some(1.0)
    );
    assert_eq!(
        delta(r#"gateway_request_duration_seconds_count{route="echo"}"#),
        Some(2.0)
    );
    assert_eq!(
        delta(r#"gateway_upstream_duration_seconds_count{route="echo"}"#),
        Some(1.0)
    );
    assert_eq!(
        delta(r#"gateway_auth_failures_total{reason="missing"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&after, "gateway_key_snapshot_keys"), Some(1.0));
    for want in [
        r#"gateway_request_duration_seconds_bucket{route="echo",le="0.005"}"#,
        "gateway_key_snapshot_seconds_since_reload ",
        "# TYPE gateway_requests_total counter",
    ] {
        assert!(after.contains(want), "missing {want:?} in\n{after}");
    }
    assert!(!after.contains(&key), "a key leaked into metrics");
}

#[tokio::test(flavor = "multi_thread")]
async fn last_used_at_is_flushed_in_batches() {
    let (db, gw) = setup().await;
    let (id, key) = gw.create_key("read:echo", &[]).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);
    }
    let client = db.client().await;
    let id = uuid::Uuid::parse_str(&id).expect("uuid");
    assert!(
        eventually(Duration::from_secs(5), || async {
            client
                .query_one(
                    "SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1",
                    &[&id],
                )
                .await
                .is_ok_and(|r| r.get::<_, bool>(0))
        })
        .await,
        "last_used_at never written"
    );
}
