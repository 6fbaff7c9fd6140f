//! The SSRF guard at create and update (DESIGN §3 "Webhooks"), with
//! `allow_private_targets` off as in production: one case per spelling of
//! a non-public target, each refused with 400 `invalid_webhook_url` and the
//! reason, nothing stored; a public literal passes.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn start() -> (TestDb, Gateway, String) {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    (db, gw, admin)
}

/// (URL, a word the reason must contain).
const BLOCKED: &[(&str, &str)] = &[
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.0.0.1.:8080/hook", "loopback"),
    ("http://0x7f.1/hook", "loopback"),
    ("http://0x7f000001/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),
    ("http://017700000001/hook", "loopback"),
    ("http://0177.0.0.1/hook", "loopback"),
    ("http://127.1/hook", "loopback"),
    ("http://%31%32%37.0.0.1/hook", "loopback"),
    ("https://127.0.0.1:8443/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "IPv4-mapped"),
    ("http://[::ffff:7f00:1]/hook", "IPv4-mapped"),
    ("http://[::ffff:10.0.0.1]/hook", "IPv4-mapped"),
    ("http://[::127.0.0.1]/hook", "IPv4-compatible"),
    ("http://[64:ff9b::7f00:1]/hook", "NAT64"),
    ("http://[64:ff9b::169.254.169.254]/hook", "NAT64"),
    ("http://[64:ff9b:1::a00:1]/hook", "NAT64"),
    ("http://[2002:7f00:1::1]/hook", "6to4"),
    ("http://[2001::1]/hook", "Teredo"),
    ("http://localhost/hook", "loopback"),
    ("http://localhost:9090/api/v1/keys", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://0/hook", "unspecified"),
    ("http://10.1.2.3/hook", "10.0.0.0/8"),
    ("http://172.16.0.1/hook", "172.16.0.0/12"),
    ("http://192.168.1.1/hook", "192.168.0.0/16"),
    ("http://100.64.0.1/hook", "CGNAT"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fd00::1]/hook", "ULA"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://[ff02::1]/hook", "multicast"),
    ("http://255.255.255.255/hook", "broadcast"),
    ("http://240.0.0.1/hook", "reserved"),
    ("http://192.0.2.10/hook", "documentation"),
    ("http://198.51.100.10/hook", "documentation"),
    ("http://203.0.113.10/hook", "documentation"),
    ("http://[2001:db8::1]/hook", "documentation"),
    ("http://198.18.0.1/hook", "benchmarking"),
    ("ftp://93.184.216.34/hook", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("http://user:pw@93.184.216.34/hook", "credentials"),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_spelling_of_a_private_target_is_refused_at_create_with_its_reason() {
    let (db, gw, admin) = start().await;
    let mut wrong = Vec::new();
    for (url, reason) in BLOCKED {
        let (status, body) = api(
            &gw,
            Method::POST,
            "/api/v1/webhooks",
            &admin,
            Some(json!({"url": url, "events": ["*"]})),
        )
        .await;
        let message = body["error"]["message"].as_str().unwrap_or("");
        if status != 400 || code(&body) != "invalid_webhook_url" || !message.contains(reason) {
            wrong.push(format!("{url}: {status} {body}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as expected:\n{}",
        wrong.join("\n")
    );
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM webhooks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "a refused endpoint was stored");

    // A public literal passes the guard (nothing is sent to it here).
    let (status, ok) = api(
        &gw,
        Method::POST,
        "/api/v1/webhooks",
        &admin,
        Some(json!({"url": "http://93.184.216.34/hook", "events": ["*"]})),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_to_a_blocked_url_is_refused_and_the_url_stays() {
    let (_db, gw, admin) = start().await;
    let (status, w) = api(
        &gw,
        Method::POST,
        "/api/v1/webhooks",
        &admin,
        Some(json!({"url": "https://93.184.216.34/hook", "events": ["*"]})),
    )
    .await;
    assert_eq!(status, 201, "{w}");
    let path = format!("/api/v1/webhooks/{}", w["id"].as_str().expect("id"));
    for (url, reason) in [
        ("http://0x7f.1/hook", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped"),
        ("http://localhost:9090/", "loopback"),
    ] {
        let (status, body) = api(&gw, Method::PUT, &path, &admin, Some(json!({"url": url}))).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_webhook_url"),
            "{url}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(reason),
            "{body}"
        );
    }
    let (_, now) = api(&gw, Method::GET, &path, &admin, None).await;
    assert_eq!(now["url"], Value::from("https://93.184.216.34/hook"));
    // Re-sending the stored URL with another change does not re-resolve it.
    let (status, body) = api(
        &gw,
        Method::PUT,
        &path,
        &admin,
        Some(json!({"url": "https://93.184.216.34/hook", "description": "x"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_applies_the_same_guard() {
    let (_db, gw, _admin) = start().await;
    for (url, reason) in [
        ("http://2130706433/", "loopback"),
        ("http://localhost/", "loopback"),
    ] {
        let out = gw.cli(&["webhooks", "create", "--url", url, "--events", "*"]);
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid webhook url") && err.contains(reason),
            "{url}: {err}"
        );
    }
    let out = gw.cli(&["webhooks", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}
