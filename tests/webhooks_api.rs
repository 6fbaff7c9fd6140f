//! The webhooks admin API and `gateway webhooks` CLI (DESIGN §3
//! "Webhooks"): CRUD, scopes, validation, secrets shown once and sealed at
//! rest, rotation, audit entries, and `/test` and `/retry` against a real
//! receiver on loopback (`allow_private_targets = true`; the guard itself is
//! tested in tests/webhooks_ssrf.rs).

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `[webhooks]` for these tests: private targets allowed (the receiver is
/// on loopback) and no retries unless a test says otherwise.
fn opts(upstream: SocketAddr, webhooks: &str) -> Opts {
    Opts::new(format!(
        "{}\n[webhooks]\nallow_private_targets = true\n{webhooks}\n",
        default_routes(upstream)
    ))
}

async fn start(webhooks: &str) -> (TestDb, Gateway, String) {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, opts(upstream, webhooks)).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    (db, gw, admin)
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A webhook receiver on loopback: answers each request with the next
/// status of `statuses` (then 200) and records what it got.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(
            statuses.iter().copied().collect::<VecDeque<_>>(),
        ));
        let (got2, plan2) = (got.clone(), plan.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (got, plan) = (got2.clone(), plan2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())
                                        .flatten()
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break (head.to_string(), body.to_string());
                            }
                        }
                    };
                    let status = plan.lock().unwrap().pop_front().unwrap_or(200);
                    got.lock().unwrap().push(Received { head, body });
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Receiver { addr, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

async fn create(gw: &Gateway, key: &str, body: Value) -> (u16, Value) {
    api(gw, Method::POST, "/api/v1/webhooks", key, Some(body)).await
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_shows_the_secret_once_seals_it_and_audits_every_change() {
    let (db, gw, admin) = start("").await;
    let (status, created) = create(
        &gw,
        &admin,
        json!({"url": "http://127.0.0.1:9/hook", "events": ["api_key.*", "api_key.revoked"],
               "description": "billing"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["events"], json!(["api_key.*", "api_key.revoked"]));
    assert_eq!(created["enabled"], json!(true));
    assert_eq!(created["disabled_reason"], Value::Null);
    assert_eq!(created["stats"]["consecutive_failures"], json!(0));

    // At rest: sealed, never the plaintext.
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT secret FROM webhooks WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    let sealed: Vec<u8> = row.get(0);
    assert!(!sealed.windows(6).any(|w| w == b"whsec_"));
    assert!(!String::from_utf8_lossy(&sealed).contains(&secret[6..]));

    // Never again in a read or a list.
    let (status, one) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/webhooks/{id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["description"], json!("billing"));
    assert!(one.get("secret").is_none());
    let (status, list) = api(&gw, Method::GET, "/api/v1/webhooks", &admin, None).await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains(&secret[6..]));
    assert!(!list.to_string().contains("secret"));
    assert_eq!(list["data"][0]["id"], json!(id));

    // Disabling by PUT is `manual`; enabling resets the failure count.
    let path = format!("/api/v1/webhooks/{id}");
    let (status, off) = api(
        &gw,
        Method::PUT,
        &path,
        &admin,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{off}");
    assert_eq!(off["disabled_reason"], json!("manual"));
    assert_eq!(off["description"], json!("billing"), "fields not sent stay");
    client
        .execute(
            "UPDATE webhooks SET consecutive_failures = 7, disabled_reason = 'consecutive_failures' \
             WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("update");
    let (status, on) = api(
        &gw,
        Method::PUT,
        &path,
        &admin,
        Some(json!({"enabled": true, "events": ["*"], "url": "http://127.0.0.1:10/other"})),
    )
    .await;
    assert_eq!(status, 200, "{on}");
    assert_eq!(on["enabled"], json!(true));
    assert_eq!(on["disabled_reason"], Value::Null);
    assert_eq!(on["stats"]["consecutive_failures"], json!(0));
    assert_eq!(on["events"], json!(["*"]));
    assert_eq!(on["url"], json!("http://127.0.0.1:10/other"));

    // Rotation: a new secret, the old one kept for the grace.
    let (status, rotated) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
        &admin,
        Some(json!({"grace_seconds": 60})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("secret").to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let row = client
        .query_one(
            "SELECT previous_secret IS NOT NULL, previous_secret_expires_at > now() \
             FROM webhooks WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
    // The default grace without a body.
    let (status, again) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{again}");

    // Every change is audited, and no entry holds a secret.
    let (status, audit) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/audit-logs?target_id={id}&limit=100"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in [
        "webhook.created",
        "webhook.updated",
        "webhook.secret_rotated",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let text = audit.to_string();
    for s in [
        &secret,
        &new_secret,
        &again["secret"].as_str().unwrap_or("x").to_string(),
    ] {
        assert!(!text.contains(&s[6..]), "audit log holds a secret");
    }
    assert!(!gw.logs().contains(&secret[6..]) && !gw.logs().contains(&new_secret[6..]));

    // Delete: 204, then 404.
    let resp = http()
        .delete(gw.admin_url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.expect("body").is_empty());
    let (status, gone) = api(&gw, Method::GET, &path, &admin, None).await;
    assert_eq!((status, code(&gone)), (404, "not_found"));
    let (status, _) = api(&gw, Method::DELETE, &path, &admin, None).await;
    assert_eq!(status, 404);
    let (status, audit) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/audit-logs?target_id={id}&action=webhook.deleted"),
        &admin,
        None,
    )
    .await;
    assert_eq!(
        (status, audit["data"].as_array().map(Vec::len)),
        (200, Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_with_a_cursor() {
    let (_db, gw, admin) = start("").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, w) = create(
            &gw,
            &admin,
            json!({"url": format!("http://127.0.0.1:9/{i}"), "events": ["*"]}),
        )
        .await;
        assert_eq!(status, 201);
        ids.push(w["id"].as_str().expect("id").to_string());
    }
    let (status, first) = api(&gw, Method::GET, "/api/v1/webhooks?limit=2", &admin, None).await;
    assert_eq!(status, 200);
    let cursor = first["next_cursor"].as_str().expect("cursor").to_string();
    let (status, second) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/webhooks?limit=2&cursor={cursor}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seen: Vec<&str> = first["data"]
        .as_array()
        .into_iter()
        .chain(second["data"].as_array())
        .flatten()
        .filter_map(|w| w["id"].as_str())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(seen, newest_first);
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_read_and_write_webhooks() {
    let (_db, gw, admin) = start("").await;
    let (_, reader) = gw.create_key("read:webhooks", &[]).await;
    let (_, writer) = gw.create_key("write:webhooks", &[]).await;
    let (_, keys_only) = gw.create_key("read:keys,write:keys", &[]).await;
    let (_, wildcard) = gw.create_key("read:*,write:*", &[]).await;
    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]});

    let (status, w) = create(&gw, &writer, body.clone()).await;
    assert_eq!(status, 201, "{w}");
    let id = w["id"].as_str().expect("id");
    let (status, denied) = create(&gw, &reader, body.clone()).await;
    assert_eq!((status, code(&denied)), (403, "insufficient_scope"));
    assert!(denied["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("write:webhooks"));
    let (status, _) = create(&gw, &keys_only, body.clone()).await;
    assert_eq!(status, 403);
    let (status, _) = create(&gw, &wildcard, body.clone()).await;
    assert_eq!(status, 201);

    for path in [
        "/api/v1/webhooks".to_string(),
        format!("/api/v1/webhooks/{id}"),
        format!("/api/v1/webhooks/{id}/deliveries"),
    ] {
        let (status, _) = api(&gw, Method::GET, &path, &reader, None).await;
        assert_eq!(status, 200, "{path}");
        let (status, _) = api(&gw, Method::GET, &path, &admin, None).await;
        assert_eq!(status, 200, "{path}");
        let (status, _) = api(&gw, Method::GET, &path, &writer, None).await;
        assert_eq!(status, 403, "{path}: write does not include read");
        let (status, _) = api(&gw, Method::GET, &path, &keys_only, None).await;
        assert_eq!(status, 403, "{path}");
    }
    for (method, path) in [
        (Method::PUT, format!("/api/v1/webhooks/{id}")),
        (Method::DELETE, format!("/api/v1/webhooks/{id}")),
        (Method::POST, format!("/api/v1/webhooks/{id}/rotate-secret")),
        (Method::POST, format!("/api/v1/webhooks/{id}/test")),
        (
            Method::POST,
            format!("/api/v1/webhooks/{id}/deliveries/{}/retry", uuid_like()),
        ),
    ] {
        let (status, _) = api(&gw, method.clone(), &path, &reader, None).await;
        assert_eq!(status, 403, "{method} {path}");
    }
    let (status, _) = api(&gw, Method::GET, "/api/v1/webhooks", "gw_live_nope", None).await;
    assert_eq!(status, 401);
}

fn uuid_like() -> &'static str {
    "0192f0c4-7d5e-7b1a-9c3e-1a2b3c4d5e6f"
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_names_the_field_and_unknown_ids_are_404() {
    let (_db, gw, admin) = start("").await;
    for (body, want) in [
        (json!({}), vec!["url", "events"]),
        (
            json!({"url": "http://127.0.0.1:9/", "events": []}),
            vec!["events"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["api_key.created", "api_key.nope"]}),
            vec!["events[1]"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["webhook.test"]}),
            vec!["events[0]"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": "*"}),
            vec!["events"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": [3]}),
            vec!["events[0]"],
        ),
        (json!({"url": 5, "events": ["*"]}), vec!["url"]),
        (json!({"url": "", "events": ["*"]}), vec!["url"]),
        (
            json!({"url": format!("http://127.0.0.1:9/{}", "a".repeat(2100)), "events": ["*"]}),
            vec!["url"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["*"], "description": "d".repeat(1001)}),
            vec!["description"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["*"], "enabled": "yes"}),
            vec!["enabled"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["*"], "secret": "whsec_mine"}),
            vec!["secret"],
        ),
    ] {
        let (status, err) = create(&gw, &admin, body.clone()).await;
        assert_eq!(
            (status, code(&err)),
            (400, "validation_failed"),
            "{body}: {err}"
        );
        assert_eq!(fields(&err), want, "{body}");
    }
    // A URL the guard refuses even with private targets allowed.
    for bad in ["ftp://127.0.0.1/", "http://u:p@127.0.0.1/", "not a url"] {
        let (status, err) = create(&gw, &admin, json!({"url": bad, "events": ["*"]})).await;
        assert_eq!(
            (status, code(&err)),
            (400, "invalid_webhook_url"),
            "{bad}: {err}"
        );
    }
    let (_, w) = create(
        &gw,
        &admin,
        json!({"url": "http://127.0.0.1:9/", "events": ["*"]}),
    )
    .await;
    let id = w["id"].as_str().expect("id");
    let path = format!("/api/v1/webhooks/{id}");
    let (status, err) = api(&gw, Method::PUT, &path, &admin, Some(json!({}))).await;
    assert_eq!((status, code(&err)), (400, "validation_failed"));
    let (status, err) = api(
        &gw,
        Method::PUT,
        &path,
        &admin,
        Some(json!({"events": ["x"]})),
    )
    .await;
    assert_eq!((status, fields(&err)), (400, vec!["events[0]".to_string()]));
    let (status, err) = api(
        &gw,
        Method::POST,
        &format!("{path}/rotate-secret"),
        &admin,
        Some(json!({"grace_seconds": 604801})),
    )
    .await;
    assert_eq!(
        (status, fields(&err)),
        (400, vec!["grace_seconds".to_string()])
    );
    for q in [
        "status=bogus",
        "limit=0",
        "cursor=x",
        "event_type=",
        "other=1",
    ] {
        let (status, err) = api(
            &gw,
            Method::GET,
            &format!("{path}/deliveries?{q}"),
            &admin,
            None,
        )
        .await;
        assert_eq!((status, code(&err)), (400, "validation_failed"), "{q}");
    }

    let unknown = format!("/api/v1/webhooks/{}", uuid_like());
    for (method, p) in [
        (Method::GET, unknown.clone()),
        (Method::GET, "/api/v1/webhooks/not-a-uuid".to_string()),
        (Method::DELETE, unknown.clone()),
        (Method::POST, format!("{unknown}/rotate-secret")),
        (Method::POST, format!("{unknown}/test")),
        (Method::GET, format!("{unknown}/deliveries")),
        (Method::GET, format!("{path}/deliveries/{}", uuid_like())),
        (Method::GET, format!("{path}/deliveries/nope")),
        (
            Method::POST,
            format!("{path}/deliveries/{}/retry", uuid_like()),
        ),
    ] {
        let (status, err) = api(&gw, method.clone(), &p, &admin, None).await;
        assert_eq!((status, code(&err)), (404, "not_found"), "{method} {p}");
    }
    let (status, err) = api(
        &gw,
        Method::PUT,
        &unknown,
        &admin,
        Some(json!({"url": "http://127.0.0.1:9/"})),
    )
    .await;
    assert_eq!((status, code(&err)), (404, "not_found"), "{err}");
}

/// `/test` answers with the attempt's result; `/retry` replays an exhausted
/// delivery (no retries configured, so the first failure exhausts it).
#[tokio::test(flavor = "multi_thread")]
async fn test_returns_the_attempt_and_retry_delivers_an_exhausted_delivery() {
    let (_db, gw, admin) = start("retry_schedule_ms = []").await;
    let receiver = Receiver::start(&[500]).await;
    let (status, w) = create(&gw, &admin, json!({"url": receiver.url(), "events": ["*"]})).await;
    assert_eq!(status, 201, "{w}");
    let id = w["id"].as_str().expect("id");

    let (status, tested) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/test"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["event_type"], json!("webhook.test"));
    assert_eq!(tested["status"], json!("failed"), "{tested}\n{}", gw.logs());
    assert_eq!(tested["response_status"], json!(500));
    assert_eq!(tested["error"], json!("http_status"));
    let attempts = tested["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["response_status"], json!(500));
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let event_id = tested["event_id"].as_str().expect("event id");
    assert_eq!(got[0].header("webhook-id").as_deref(), Some(event_id));
    assert!(got[0]
        .header("webhook-signature")
        .is_some_and(|s| s.starts_with("v1,")));
    let body: Value = serde_json::from_str(&got[0].body).expect("json body");
    assert_eq!(body["type"], json!("webhook.test"));

    // The failed delivery is listed (the dead-letter view)...
    let delivery = tested["id"].as_str().expect("delivery id");
    let (status, failed) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/webhooks/{id}/deliveries?status=failed"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(failed["data"][0]["id"], json!(delivery));
    assert_eq!(failed["data"][0]["attempts"], json!(1));

    // ...and a retry delivers it (the receiver now answers 200).
    let (status, retried) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/deliveries/{delivery}/retry"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["status"], json!("pending"));
    let path = format!("/api/v1/webhooks/{id}/deliveries/{delivery}");
    let delivered = eventually(Duration::from_secs(10), || async {
        let (_, d) = api(&gw, Method::GET, &path, &admin, None).await;
        d["status"] == json!("succeeded")
    })
    .await;
    let (_, d) = api(&gw, Method::GET, &path, &admin, None).await;
    assert!(delivered, "retry never delivered: {d}\n{}", gw.logs());
    assert_eq!(d["attempts"].as_array().map(Vec::len), Some(2), "{d}");
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].header("webhook-id").as_deref(),
        Some(event_id),
        "same id on a retry"
    );
    let (status, ok) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/webhooks/{id}/deliveries?status=succeeded&event_type=webhook.test"),
        &admin,
        None,
    )
    .await;
    assert_eq!(
        (status, ok["data"].as_array().map(Vec::len)),
        (200, Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_creates_lists_tests_and_lists_deliveries() {
    let (_db, gw, _admin) = start("retry_schedule_ms = []").await;
    let receiver = Receiver::start(&[]).await;
    let url = receiver.url();
    let out = gw.cli(&[
        "webhooks",
        "create",
        "--url",
        &url,
        "--events",
        "api_key.created,api_key.revoked",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"));

    let out = gw.cli(&["webhooks", "list", "--json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id) && !text.contains(&secret[6..]) && !text.contains("secret"));
    let out = gw.cli(&["webhooks", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    let out = gw.cli(&["webhooks", "test", &id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tested: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(tested["status"], json!("succeeded"), "{tested}");
    assert_eq!(receiver.received().len(), 1);

    let out = gw.cli(&[
        "webhooks",
        "deliveries",
        &id,
        "--status",
        "succeeded",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list[0]["id"], tested["id"]);

    for bad in [
        vec!["webhooks", "create", "--url", &url, "--events", "nope"],
        vec![
            "webhooks",
            "create",
            "--url",
            "ftp://127.0.0.1/",
            "--events",
            "*",
        ],
        vec!["webhooks", "test", "0192f0c4-7d5e-7b1a-9c3e-1a2b3c4d5e6f"],
        vec!["webhooks", "deliveries", "not-an-id"],
    ] {
        let out = gw.cli(&bad);
        assert!(!out.status.success(), "{bad:?} must fail");
    }
    // The receiver rejecting the test makes `webhooks test` fail.
    let failing = Receiver::start(&[503]).await;
    let out = gw.cli(&[
        "webhooks",
        "create",
        "--url",
        &failing.url(),
        "--events",
        "*",
        "--json",
    ]);
    let w: Value = serde_json::from_slice(&out.stdout).expect("json");
    let out = gw.cli(&["webhooks", "test", w["id"].as_str().expect("id")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("503"));
}
