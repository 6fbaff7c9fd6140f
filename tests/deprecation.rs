//! API deprecation and sunset (issue 17, DESIGN §3 "Edge"; RFC 9745
//! `Deprecation`, RFC 8594 `Sunset`): the headers of a deprecated route,
//! its 410 after the sunset without reaching the upstream, the metric of
//! who still calls it, and which `Deprecation` wins when a rotated key
//! calls a deprecated route.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

const LINK: &str = "https://docs.example.com/migrate";
/// 2026-06-01T00:00:00Z.
const DEPRECATED_AT: &str = "@1780272000";

fn routes(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "api"
targets = ["{upstream}"]

[[routes]]
name = "v1"
path_prefix = "/v1"
upstream = "api"
scopes = ["read:api"]
deprecation = {{ deprecated_at = "2026-06-01T00:00:00Z", sunset_at = "2099-01-01T00:00:00Z", link = "{LINK}" }}

[[routes]]
name = "old"
path_prefix = "/old"
upstream = "api"
scopes = ["read:api"]
deprecation = {{ deprecated_at = "2019-01-01T00:00:00Z", sunset_at = "2020-01-01T00:00:00Z", link = "{LINK}" }}

[[routes]]
name = "soft"
path_prefix = "/soft"
upstream = "api"
scopes = ["read:api"]
deprecation = {{ deprecated_at = "2026-06-01T00:00:00Z" }}

[[routes]]
name = "v2"
path_prefix = "/v2"
upstream = "api"
scopes = ["read:api"]
{extra}
"#
    )
}

/// A key the snapshot already holds (`create_key` polls /echo, which this
/// config lacks).
async fn key(gw: &Gateway, scopes: &str) -> (String, String) {
    let (id, key) = gw.create_key_unseen(scopes, &[]);
    wait_known(gw, &key).await;
    (id, key)
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_deprecated_route_announces_its_sunset() {
    let db = TestDb::new().await;
    let (upstream, hits) = common::counting_upstream(&[]).await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream, ""))).await;
    let (_, k) = key(&gw, "read:api").await;

    let (status, h, _) = get(&gw.url("/v1/orders"), Some(&k)).await;
    assert_eq!(status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(header(&h, "deprecation"), Some(DEPRECATED_AT));
    assert_eq!(header(&h, "sunset"), Some("Thu, 01 Jan 2099 00:00:00 GMT"));
    assert_eq!(
        header(&h, "link"),
        Some("<https://docs.example.com/migrate>; rel=\"deprecation\"")
    );
    // The gateway's own answers on the route say it too.
    let (status, h, _) = get(&gw.url("/v1/orders"), None).await;
    assert_eq!(status, 401);
    assert_eq!(header(&h, "deprecation"), Some(DEPRECATED_AT));
    // Other routes say nothing.
    let (status, h, _) = get(&gw.url("/v2/orders"), Some(&k)).await;
    assert_eq!(status, 200);
    assert!(!h.contains_key("deprecation") && !h.contains_key("sunset") && !h.contains_key("link"));
}

#[tokio::test]
async fn after_its_sunset_a_route_answers_410_and_forwards_nothing() {
    let db = TestDb::new().await;
    let (upstream, hits) = common::counting_upstream(&[]).await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream, ""))).await;
    let (_, k) = key(&gw, "read:api").await;

    let requests = [
        http().get(gw.url("/old/orders")),
        http().get(gw.url("/old/orders")).bearer_auth(&k),
        http()
            .get(gw.url("/old"))
            .header("x-api-key", "gw_live_not-a-key"),
        http()
            .request(Method::POST, gw.url("/old/orders"))
            .bearer_auth(&k)
            .body("{\"order\":1}"),
    ];
    for req in requests {
        let (status, h, body) = send(req).await;
        assert_eq!((status, code(&body)), (410, "route_sunset"), "{body}");
        assert_eq!(body["error"]["link"], LINK, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(LINK)),
            "{body}"
        );
        assert_eq!(header(&h, "sunset"), Some("Wed, 01 Jan 2020 00:00:00 GMT"));
        assert_eq!(header(&h, "deprecation"), Some("@1546300800"));
        assert!(h.contains_key("x-request-id"));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a sunset route reached the upstream"
    );
}

#[tokio::test]
async fn who_still_calls_a_deprecated_route_is_counted_by_key() {
    let db = TestDb::new().await;
    let (upstream, _) = common::counting_upstream(&[]).await;
    let logs = "\n[request_logs]\nflush_interval_ms = 100\n";
    let gw = Gateway::start(&db, Opts::new(routes(upstream, logs))).await;
    let series = |route: &str, key: &str| {
        format!(r#"gateway_deprecated_requests_total{{route="{route}",key="{key}"}}"#)
    };
    // Registered at start, before any call.
    let text = metrics(&gw).await;
    assert_eq!(
        sample(&text, &series("v1", "anonymous")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, &series("old", "anonymous")), Some(0.0));

    let (a_id, a) = key(&gw, "read:api").await;
    let (b_id, b) = key(&gw, "read:api").await;
    let (_, admin) = key(&gw, "admin").await;
    for (path, k) in [
        ("/v1/x", Some(&a)),
        ("/v1/x", Some(&a)),
        ("/v1/x", Some(&b)),
        ("/v1/x", None),
        ("/old/x", Some(&a)),
        ("/v2/x", Some(&b)),
    ] {
        get(&gw.url(path), k.map(String::as_str)).await;
    }
    let text = metrics(&gw).await;
    assert_eq!(sample(&text, &series("v1", &a_id)), Some(2.0), "{text}");
    assert_eq!(sample(&text, &series("v1", &b_id)), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &series("v1", "anonymous")),
        Some(1.0),
        "{text}"
    );
    // The sunset 410 still names the key that called.
    assert_eq!(sample(&text, &series("old", &a_id)), Some(1.0), "{text}");
    assert!(
        !text.contains(r#"gateway_deprecated_requests_total{route="v2""#),
        "{text}"
    );

    // The request log answers the same question: stats of the route by key.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let groups = loop {
        let (status, v) = api(
            &gw,
            Method::GET,
            "/api/v1/requests/stats?route=old&group_by=key",
            &admin,
            None,
        )
        .await;
        if (status == 200 && v["total"] == 1) || std::time::Instant::now() >= deadline {
            break v["groups"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(groups[0]["key"], json!(a_id), "{groups}");
    assert_eq!(groups[0]["total"], 1, "{groups}");
}

#[tokio::test]
async fn a_route_deprecation_wins_over_a_rotated_key() {
    let db = TestDb::new().await;
    let (upstream, _) = common::counting_upstream(&[]).await;
    let gw = Gateway::start(&db, Opts::new(routes(upstream, ""))).await;
    let (id, old_secret) = key(&gw, "read:api").await;
    let (_, admin) = key(&gw, "admin").await;
    let (status, r) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/keys/{id}/rotate"),
        &admin,
        Some(json!({"grace_period_seconds": 3600})),
    )
    .await;
    assert_eq!(status, 200, "{r}");

    // On a route that is not deprecated the key's own headers show.
    let (status, h, _) = get(&gw.url("/v2/x"), Some(&old_secret)).await;
    assert_eq!(status, 200);
    let key_deprecation = header(&h, "deprecation")
        .expect("key deprecation")
        .to_string();
    let key_sunset = header(&h, "sunset").expect("key sunset").to_string();
    assert_ne!(key_deprecation, DEPRECATED_AT);

    // On a deprecated route the route's replace them, whole.
    let (status, h, _) = get(&gw.url("/v1/x"), Some(&old_secret)).await;
    assert_eq!(status, 200);
    assert_eq!(h.get_all("deprecation").iter().count(), 1);
    assert_eq!(header(&h, "deprecation"), Some(DEPRECATED_AT));
    assert_eq!(header(&h, "sunset"), Some("Thu, 01 Jan 2099 00:00:00 GMT"));
    assert_ne!(header(&h, "sunset"), Some(key_sunset.as_str()));
    // A route without a sunset does not keep the key's.
    let (status, h, _) = get(&gw.url("/soft/x"), Some(&old_secret)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "deprecation"), Some(DEPRECATED_AT));
    assert_eq!(header(&h, "sunset"), None, "{h:?}");
}
