//! Webhook delivery end to end: key changes (admin API and CLI) reach real
//! receivers on loopback, signed so the official `standardwebhooks` library
//! verifies them; filters, retries, disabling, redirects, rotation grace,
//! durability across a restart, two instances, and the guard at connect.
//!
//! Endpoints are created and re-enabled through the admin API; only the
//! guard-at-connect test writes its endpoints straight into the table,
//! since creation refuses them.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use gateway::webhooks::secret::{self, SecretBox};

/// How long a test waits for eventual state (not a budget: see benches/).
const WAIT: Duration = Duration::from_secs(10);

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: String,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// Held this long before answering (a slow receiver).
    delay: Duration,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

#[derive(Default)]
struct ReceiverState {
    hits: Vec<Hit>,
    /// Replies to give in order; then `default`.
    script: VecDeque<Reply>,
    default: Option<Reply>,
}

/// A real HTTP server on loopback that records what it receives.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Receiver::serve(listener)
    }

    async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver on its old port");
        Receiver::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("receiver addr");
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let body = req.into_body().collect().await?.to_bytes();
                            let r = {
                                let mut s = st.lock();
                                s.hits.push(Hit {
                                    headers,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                s.script
                                    .pop_front()
                                    .or_else(|| s.default.clone())
                                    .unwrap_or_else(|| reply(200))
                            };
                            tokio::time::sleep(r.delay).await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::from("ok")));
                            *resp.status_mut() =
                                hyper::StatusCode::from_u16(r.status).expect("status");
                            for (k, v) in r.headers {
                                resp.headers_mut().insert(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes())
                                        .expect("name"),
                                    hyper::header::HeaderValue::from_str(&v).expect("value"),
                                );
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn script(&self, replies: Vec<Reply>) {
        self.state.lock().script = replies.into();
    }

    fn set_default(&self, r: Reply) {
        self.state.lock().default = Some(r);
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.lock().hits.clone()
    }

    /// Hits whose event is about key `key_id`.
    fn hits_for(&self, key_id: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.json()["data"]["id"] == key_id)
            .collect()
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// The `[webhooks]` section of the tests: loopback receivers allowed,
/// a short retry schedule and poll.
fn webhooks_config(extra: &str) -> String {
    let timeout = if extra.contains("timeout_ms") {
        ""
    } else {
        "timeout_ms = 3000\n"
    };
    format!(
        "\n[webhooks]\nallow_private_targets = true\n{timeout}poll_interval_ms = 200\n{extra}\n"
    )
}

fn opts(upstream: SocketAddr, webhooks: &str) -> Opts {
    let mut routes = default_routes(upstream);
    routes.push_str(webhooks);
    Opts::new(routes)
}

/// Creates an endpoint through the admin API: (id, secret).
async fn add_endpoint(gw: &Gateway, admin: &str, url: &str, events: &[&str]) -> (Uuid, String) {
    let (status, body) = api(
        gw,
        Method::POST,
        "/api/v1/webhooks",
        admin,
        Some(json!({"url": url, "events": events})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    (id, body["secret"].as_str().expect("secret").to_string())
}

/// Inserts an endpoint as the admin API would store it, bypassing its
/// create-time guard, and returns its id.
async fn insert_endpoint(db: &TestDb, url: &str, events: &[&str], secret: &str) -> Uuid {
    let sealed = SecretBox::new(PEPPER).seal(secret);
    let id = Uuid::now_v7();
    let events: Vec<String> = events.iter().map(|s| s.to_string()).collect();
    db.client()
        .await
        .execute(
            "INSERT INTO webhooks (id, url, events, secret) VALUES ($1, $2, $3, $4)",
            &[&id, &url, &events, &sealed],
        )
        .await
        .expect("insert endpoint");
    id
}

/// Creates an admin key and waits until its own `api_key.created` event
/// is fanned out (to no endpoint yet), so it never reaches a receiver.
async fn admin_key(gw: &Gateway, db: &TestDb) -> String {
    let (_, admin) = gw.create_key("admin", &[]).await;
    let settled = eventually(WAIT, || async {
        db.client()
            .await
            .query_one(
                "SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL",
                &[],
            )
            .await
            .expect("outbox")
            .get::<_, i64>(0)
            == 0
    })
    .await;
    assert!(settled, "the admin key's event was never dispatched");
    admin
}

/// Verifies `hit` with the official library; Ok(payload) or Err(reason).
fn verify(hit: &Hit, secret: &str) -> Result<Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify-webhook.sh");
    let input = json!({"headers": hit.headers, "body": hit.body}).to_string();
    let mut child = std::process::Command::new(script)
        .arg(secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/verify-webhook.sh");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write delivery");
    }
    let out = child.wait_with_output().expect("verify output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => serde_json::from_str(&stdout).map_err(|e| e.to_string()),
        Some(1) => Err(stdout),
        _ => panic!(
            "verify-webhook.sh could not run: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A delivery row, as JSON, for assertions.
async fn delivery_of(db: &TestDb, webhook: Uuid, key_id: &str) -> Option<Value> {
    let row = db
        .client()
        .await
        .query_opt(
            "SELECT d.status, d.attempts, d.error, d.response_status::int4, d.event_id,
                    (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id)
             FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
             WHERE d.webhook_id = $1 AND e.payload->'data'->>'id' = $2
             ORDER BY d.created_at LIMIT 1",
            &[&webhook, &key_id],
        )
        .await
        .expect("delivery query")?;
    Some(json!({
        "status": row.get::<_, String>(0),
        "attempts": row.get::<_, i32>(1),
        "error": row.get::<_, Option<String>>(2),
        "response_status": row.get::<_, Option<i32>>(3),
        "event_id": row.get::<_, String>(4),
        "attempt_rows": row.get::<_, i64>(5),
    }))
}

async fn wait_delivery(
    db: &TestDb,
    webhook: Uuid,
    key_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    let mut last;
    loop {
        last = delivery_of(db, webhook, key_id).await;
        if last.as_ref().is_some_and(&done) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery never reached the expected state: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last.expect("delivery")
}

async fn endpoint_state(db: &TestDb, id: Uuid) -> (bool, Option<String>, i32) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT enabled, disabled_reason, consecutive_failures FROM webhooks WHERE id = $1",
            &[&id],
        )
        .await
        .expect("endpoint");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn key_changes_from_the_api_and_the_cli_reach_subscribers_signed() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, opts(upstream, &webhooks_config(""))).await;
    let admin = admin_key(&gw, &db).await;

    let all = Receiver::start().await;
    let revoked_only = Receiver::start().await;
    let (ep_all, secret) = add_endpoint(&gw, &admin, &all.url(), &["api_key.*"]).await;
    let (ep_revoked, revoked_secret) =
        add_endpoint(&gw, &admin, &revoked_only.url(), &["api_key.revoked"]).await;

    // Through the admin API.
    let (status, created) = api(
        &gw,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({"name": "billing", "scopes": ["read:echo"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let api_id = created["id"].as_str().expect("id").to_string();
    let plaintext = created["key"].as_str().expect("key").to_string();
    // Through the CLI.
    let out = gw.cli(&[
        "keys",
        "create",
        "--name",
        "cli",
        "--scopes",
        "read:echo",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).expect("cli json");
    let cli_id = cli["id"].as_str().expect("id").to_string();
    let cli_plaintext = cli["key"].as_str().expect("key").to_string();

    let both = eventually(WAIT, || async {
        !all.hits_for(&api_id).is_empty() && !all.hits_for(&cli_id).is_empty()
    })
    .await;
    assert!(both, "deliveries missing; log:\n{}", gw.logs());

    let hashes: Vec<Vec<u8>> = db
        .client()
        .await
        .query("SELECT key_hash FROM api_keys", &[])
        .await
        .expect("hashes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (id, key) in [(&api_id, &plaintext), (&cli_id, &cli_plaintext)] {
        let hits = all.hits_for(id);
        assert_eq!(hits.len(), 1, "one delivery per event");
        let hit = &hits[0];
        assert_eq!(hit.header("content-type"), "application/json");
        assert!(hit.header("webhook-id").starts_with("msg_"));
        let payload = verify(hit, &secret).expect("standardwebhooks verifies the signature");
        assert_eq!(payload["type"], "api_key.created");
        assert_eq!(payload["data"]["id"], id.as_str());
        assert_eq!(
            payload["data"]["name"],
            if id == &api_id { "billing" } else { "cli" }
        );
        assert!(payload["timestamp"]
            .as_str()
            .is_some_and(|t| t.contains('T')));
        // Never the key, nor its hash in any encoding.
        assert!(!hit.body.contains(key.as_str()), "{}", hit.body);
        for h in &hashes {
            assert!(!hit.body.contains(&hex::encode(h)), "{}", hit.body);
        }
        for field in ["key", "key_hash", "hash", "secret"] {
            assert!(
                payload["data"].get(field).is_none(),
                "{field} in {}",
                hit.body
            );
        }
        // A wrong secret does not verify.
        assert!(verify(hit, &secret::generate()).is_err());
    }

    // The revoked-only endpoint got nothing for the creates...
    let rows: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1",
            &[&ep_revoked],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0);
    assert!(revoked_only.hits().is_empty());
    // ...and gets the revocation.
    let (status, _) = api(
        &gw,
        Method::DELETE,
        &format!("/api/v1/keys/{api_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let got = eventually(WAIT, || async {
        !revoked_only.hits_for(&api_id).is_empty()
    })
    .await;
    assert!(got, "revocation not delivered; log:\n{}", gw.logs());
    let hit = &revoked_only.hits_for(&api_id)[0];
    assert_eq!(hit.json()["type"], "api_key.revoked");
    assert_eq!(hit.json()["data"]["status"], "revoked");
    verify(hit, &revoked_secret).expect("verifies");
    assert!(
        verify(hit, &secret).is_err(),
        "each endpoint has its own secret"
    );
    let d = wait_delivery(&db, ep_all, &api_id, |d| d["status"] == "succeeded").await;
    assert_eq!(d["attempts"], 1);
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_the_same_id() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    // Steps over a second apart (jitter included), so each attempt's
    // timestamp is later than the one before.
    let gw = Gateway::start(
        &db,
        opts(
            upstream,
            &webhooks_config("retry_schedule_ms = [1500, 1500, 1500]"),
        ),
    )
    .await;
    let admin = admin_key(&gw, &db).await;
    let rx = Receiver::start().await;
    rx.script(vec![reply(500), reply(500)]);
    let (ep, secret) = add_endpoint(&gw, &admin, &rx.url(), &["*"]).await;
    let (id, _) = gw.create_key_unseen("read:echo", &[]);

    let d = wait_delivery(&db, ep, &id, |d| d["status"] == "succeeded").await;
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["attempt_rows"], 3, "{d}");
    assert_eq!(d["response_status"], 200);
    assert_eq!(d["error"], Value::Null);
    let hits = rx.hits_for(&id);
    assert_eq!(hits.len(), 3);
    let ids: HashSet<&str> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "the same webhook-id on every attempt");
    assert_eq!(ids.iter().next().copied(), d["event_id"].as_str());
    let ts: Vec<i64> = hits
        .iter()
        .map(|h| h.header("webhook-timestamp").parse().expect("unix seconds"))
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "timestamps grow: {ts:?}"
    );
    for h in &hits {
        assert_eq!(h.body, hits[0].body, "the same body on every attempt");
        verify(h, &secret).expect("every attempt verifies");
    }
    assert_eq!(endpoint_state(&db, ep).await, (true, None, 0));
}

#[tokio::test]
async fn gone_and_consecutive_failures_disable_and_reenabling_resumes() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(
        &db,
        opts(
            upstream,
            &webhooks_config(
                "retry_schedule_ms = [50, 50, 50, 50, 50, 50]\ndisable_after_consecutive_failures = 3",
            ),
        ),
    )
    .await;
    let admin = admin_key(&gw, &db).await;

    // 410: disabled at once, after one attempt.
    let gone = Receiver::start().await;
    gone.set_default(reply(410));
    let ep_gone = add_endpoint(&gw, &admin, &gone.url(), &["api_key.created"])
        .await
        .0;
    // 500s: disabled after three in a row.
    let failing = Receiver::start().await;
    failing.set_default(reply(500));
    let ep_failing = add_endpoint(&gw, &admin, &failing.url(), &["api_key.created"])
        .await
        .0;

    let (id, _) = gw.create_key_unseen("read:echo", &[]);
    let ok = eventually(WAIT, || async {
        !endpoint_state(&db, ep_gone).await.0 && !endpoint_state(&db, ep_failing).await.0
    })
    .await;
    assert!(ok, "endpoints not disabled; log:\n{}", gw.logs());
    assert_eq!(
        endpoint_state(&db, ep_gone).await,
        (false, Some("gone".into()), 1)
    );
    assert_eq!(
        endpoint_state(&db, ep_failing).await,
        (false, Some("consecutive_failures".into()), 3)
    );
    let d = delivery_of(&db, ep_gone, &id).await.expect("delivery");
    assert_eq!(
        (d["status"].clone(), d["attempts"].clone()),
        (json!("pending"), json!(1))
    );
    let d = delivery_of(&db, ep_failing, &id).await.expect("delivery");
    assert_eq!(
        (d["status"].clone(), d["attempts"].clone()),
        (json!("pending"), json!(3))
    );
    assert_eq!(d["error"], "http_status");

    // A disabled endpoint's deliveries wait: nothing more is attempted.
    let (id2, _) = gw.create_key_unseen("read:echo", &[]);
    let fanned = eventually(WAIT, || async {
        delivery_of(&db, ep_failing, &id2).await.is_some()
    })
    .await;
    assert!(fanned);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(failing.hits().len(), 3, "no attempt while disabled");

    // Re-enabled: the pending ones go out.
    failing.set_default(reply(204));
    let (status, body) = api(
        &gw,
        Method::PUT,
        &format!("/api/v1/webhooks/{ep_failing}"),
        &admin,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for key in [&id, &id2] {
        let d = wait_delivery(&db, ep_failing, key, |d| d["status"] == "succeeded").await;
        assert_eq!(d["response_status"], 204);
    }
    assert_eq!(failing.hits_for(&id2).len(), 1);
    assert_eq!(endpoint_state(&db, ep_failing).await, (true, None, 0));
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(
        &db,
        opts(upstream, &webhooks_config("retry_schedule_ms = [60000]")),
    )
    .await;
    let admin = admin_key(&gw, &db).await;
    let target = Receiver::start().await;
    let redirecting = Receiver::start().await;
    redirecting.set_default(Reply {
        status: 302,
        headers: vec![("location".into(), target.url())],
        delay: Duration::ZERO,
    });
    let (ep, _) = add_endpoint(&gw, &admin, &redirecting.url(), &["*"]).await;
    let (id, _) = gw.create_key_unseen("read:echo", &[]);
    let d = wait_delivery(&db, ep, &id, |d| d["attempts"] == 1).await;
    assert_eq!(d["error"], "redirect");
    assert_eq!(d["response_status"], 302);
    assert_eq!(d["status"], "pending", "retried later");
    assert_eq!(redirecting.hits_for(&id).len(), 1);
    assert!(target.hits().is_empty(), "the redirect target got nothing");
}

#[tokio::test]
async fn both_secrets_verify_during_a_rotation_grace() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, opts(upstream, &webhooks_config(""))).await;
    let admin = admin_key(&gw, &db).await;
    let rx = Receiver::start().await;
    let (ep, old) = add_endpoint(&gw, &admin, &rx.url(), &["*"]).await;
    let (status, rotated) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/webhooks/{ep}/rotate-secret"),
        &admin,
        Some(json!({"grace_seconds": 3600})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("secret").to_string();
    assert_ne!(new, old);
    let (id, _) = gw.create_key_unseen("read:echo", &[]);
    assert!(eventually(WAIT, || async { !rx.hits_for(&id).is_empty() }).await);
    let hit = &rx.hits_for(&id)[0];
    assert_eq!(hit.header("webhook-signature").split(' ').count(), 2);
    verify(hit, &new).expect("the new secret verifies");
    verify(hit, &old).expect("the old secret verifies during the grace");

    // After the grace, only the new secret signs.
    db.client()
        .await
        .execute(
            "UPDATE webhooks SET previous_secret_expires_at = now() - interval '1 second' WHERE id = $1",
            &[&ep],
        )
        .await
        .expect("grace over");
    let (id2, _) = gw.create_key_unseen("read:echo", &[]);
    assert!(eventually(WAIT, || async { !rx.hits_for(&id2).is_empty() }).await);
    let hit = &rx.hits_for(&id2)[0];
    assert_eq!(hit.header("webhook-signature").split(' ').count(), 1);
    verify(hit, &new).expect("the new secret verifies");
    assert!(
        verify(hit, &old).is_err(),
        "the old secret no longer verifies"
    );
}

#[tokio::test]
async fn an_event_survives_a_down_receiver_and_a_gateway_restart() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let cfg =
        webhooks_config("retry_schedule_ms = [200, 200, 200, 200, 200, 200, 200, 200, 200, 200]");
    let gw = Gateway::start(&db, opts(upstream, &cfg)).await;
    let admin = admin_key(&gw, &db).await;
    let down = dead_addr();
    let (ep, secret) = add_endpoint(&gw, &admin, &format!("http://{down}/hook"), &["*"]).await;
    let (id, _) = gw.create_key_unseen("read:echo", &[]);
    let d = wait_delivery(&db, ep, &id, |d| d["attempts"].as_i64() >= Some(1)).await;
    assert_eq!(d["error"], "connect");
    drop(gw);

    let rx = Receiver::start_on(down).await;
    let gw = Gateway::start(&db, opts(upstream, &cfg)).await;
    let d = wait_delivery(&db, ep, &id, |d| d["status"] == "succeeded").await;
    assert!(d["attempts"].as_i64() >= Some(2), "{d}");
    let hits = rx.hits_for(&id);
    assert_eq!(hits.len(), 1, "log:\n{}", gw.logs());
    verify(&hits[0], &secret).expect("verifies");
    rx.stop();
}

#[tokio::test]
async fn two_instances_deliver_every_event_exactly_once() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let cfg = webhooks_config("");
    let a = Gateway::start(&db, opts(upstream, &cfg)).await;
    let b = Gateway::start(&db, opts(upstream, &cfg)).await;
    let admin = admin_key(&a, &db).await;
    let rx = Receiver::start().await;
    let (ep, _) = add_endpoint(&b, &admin, &rx.url(), &["api_key.created"]).await;
    const KEYS: usize = 12;
    let mut ids = Vec::new();
    for i in 0..KEYS {
        let gw = if i % 2 == 0 { &a } else { &b };
        ids.push(gw.create_key_unseen("read:echo", &[]).0);
    }
    let all = eventually(Duration::from_secs(30), || async {
        ids.iter().all(|id| !rx.hits_for(id).is_empty())
    })
    .await;
    assert!(all, "logs:\n{}\n{}", a.logs(), b.logs());
    // Give a duplicate time to show up, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        assert_eq!(
            rx.hits_for(id).len(),
            1,
            "key {id} delivered more than once"
        );
        let d = delivery_of(&db, ep, id).await.expect("delivery");
        assert_eq!(
            (d["attempts"].clone(), d["attempt_rows"].clone()),
            (json!(1), json!(1))
        );
    }
}

#[tokio::test]
async fn the_guard_refuses_private_targets_at_connect() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    // The guard on (the default): these endpoints got past creation only
    // because they were written straight into the table.
    let gw = Gateway::start(
        &db,
        opts(
            upstream,
            "\n[webhooks]\npoll_interval_ms = 200\nretry_schedule_ms = [60000]\n",
        ),
    )
    .await;
    let rx = Receiver::start().await;
    let secret = secret::generate();
    let port = rx.addr.port();
    let mut endpoints = Vec::new();
    for url in [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
    ] {
        endpoints.push((insert_endpoint(&db, &url, &["*"], &secret).await, url));
    }
    let (id, _) = gw.create_key_unseen("read:echo", &[]);
    for (ep, url) in &endpoints {
        let d = wait_delivery(&db, *ep, &id, |d| d["attempts"] == 1).await;
        assert_eq!(d["error"], "unsafe_target", "{url}: {d}");
        assert_eq!(d["response_status"], Value::Null, "{url}");
    }
    assert!(rx.hits().is_empty(), "the receiver got nothing");
}

#[tokio::test]
async fn metrics_and_health_show_the_webhook_backlog() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, opts(upstream, &webhooks_config(""))).await;
    let text = metrics(&gw).await;
    for series in [
        "gateway_webhook_pending",
        "gateway_webhook_deliveries_total{outcome=\"success\"}",
        "gateway_webhook_deliveries_total{outcome=\"http_status\"}",
        "gateway_webhook_delivery_seconds_count",
    ] {
        assert_eq!(
            sample(&text, series),
            Some(0.0),
            "{series} from start-up:\n{text}"
        );
    }
    let (status, _, health) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(status, 200);
    let w = &health["checks"]["webhooks"];
    assert_eq!(w["status"], "up", "{health}");
    assert_eq!(w["outbox_backlog"], 0);
    assert_eq!(w["oldest_due_seconds"], Value::Null);

    // A disabled endpoint with a due delivery: the backlog shows, /health stays 200.
    let admin = admin_key(&gw, &db).await;
    let text = metrics(&gw).await;
    let rx = Receiver::start().await;
    let (ep, _) = add_endpoint(&gw, &admin, &rx.url(), &["*"]).await;
    let (id, _) = gw.create_key_unseen("read:echo", &[]);
    wait_delivery(&db, ep, &id, |d| d["status"] == "succeeded").await;
    let after = metrics(&gw).await;
    assert_eq!(
        counter_delta(
            &text,
            &after,
            "gateway_webhook_deliveries_total{outcome=\"success\"}"
        ),
        Some(1.0)
    );
    let (status, body) = api(
        &gw,
        Method::PUT,
        &format!("/api/v1/webhooks/{ep}"),
        &admin,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (id2, _) = gw.create_key_unseen("read:echo", &[]);
    assert!(
        eventually(WAIT, || async {
            delivery_of(&db, ep, &id2).await.is_some()
        })
        .await
    );
    let (status, _, health) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(status, 200);
    let w = &health["checks"]["webhooks"];
    assert_eq!(w["pending_deliveries"], 1, "{health}");
    assert_eq!(w["required"], false);
}

#[tokio::test]
async fn with_webhooks_disabled_events_queue_in_the_outbox() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, opts(upstream, &webhooks_config("enabled = false"))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let rx = Receiver::start().await;
    add_endpoint(&gw, &admin, &rx.url(), &["*"]).await;
    gw.create_key_unseen("read:echo", &[]);
    let (status, _, health) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(status, 200);
    let w = &health["checks"]["webhooks"];
    assert_eq!(w["dispatcher"], "disabled", "{health}");
    assert_eq!(w["outbox_backlog"], 2, "{health}");
    let undispatched: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(undispatched, 2, "the events wait for a dispatcher");
    assert!(rx.hits().is_empty());
}

#[tokio::test]
async fn a_dead_instances_claim_is_taken_over_after_its_lease() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, opts(upstream, &webhooks_config(""))).await;
    let admin = admin_key(&gw, &db).await;
    let rx = Receiver::start().await;
    let (ep, secret) = add_endpoint(&gw, &admin, &rx.url(), &["*"]).await;
    // A delivery claimed by an instance that died mid-attempt: due, but
    // leased for another two seconds.
    let c = db.client().await;
    let event = gateway::store::webhooks::new_event_id();
    c.execute(
        "INSERT INTO webhook_events (id, type, payload, dispatched_at)
         VALUES ($1, 'api_key.created', '{\"type\":\"api_key.created\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"data\":{\"id\":\"leased\"}}', now())",
        &[&event],
    )
    .await
    .expect("event");
    let lease_until: i64 = c
        .query_one(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, next_attempt_at, lease_until)
             VALUES ($1, $2, $3, 'api_key.created', now(), now() + interval '2 seconds')
             RETURNING floor(extract(epoch FROM lease_until))::int8",
            &[&Uuid::now_v7(), &ep, &event],
        )
        .await
        .expect("delivery")
        .get(0);
    let d = wait_delivery(&db, ep, "leased", |d| d["status"] == "succeeded").await;
    assert_eq!(d["attempts"], 1);
    let hits = rx.hits_for("leased");
    assert_eq!(hits.len(), 1);
    let at: i64 = hits[0]
        .header("webhook-timestamp")
        .parse()
        .expect("timestamp");
    assert!(
        at >= lease_until,
        "attempted at {at}, before the lease ran out at {lease_until}"
    );
    verify(&hits[0], &secret).expect("verifies");
}

#[tokio::test]
async fn a_slow_endpoint_does_not_starve_the_others() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(
        &db,
        opts(
            upstream,
            &webhooks_config(
                "timeout_ms = 20000\nmax_in_flight = 2\nmax_in_flight_per_endpoint = 1",
            ),
        ),
    )
    .await;
    let admin = admin_key(&gw, &db).await;
    let slow = Receiver::start().await;
    slow.set_default(Reply {
        status: 200,
        headers: Vec::new(),
        delay: Duration::from_secs(4),
    });
    let fast = Receiver::start().await;
    add_endpoint(&gw, &admin, &slow.url(), &["*"]).await;
    add_endpoint(&gw, &admin, &fast.url(), &["*"]).await;
    let ids: Vec<String> = (0..3)
        .map(|_| gw.create_key_unseen("read:echo", &[]).0)
        .collect();
    // The slow endpoint holds one of the two slots at a time; the fast one
    // gets every event through the other while the slow one is still on
    // its first.
    let slow_hits = std::cell::Cell::new(usize::MAX);
    let all_fast = eventually(WAIT, || async {
        // Read first: a slow hit counted before the fast check cannot be
        // one that started after it.
        slow_hits.set(slow.hits().len());
        ids.iter().all(|id| !fast.hits_for(id).is_empty())
    })
    .await;
    assert!(
        all_fast,
        "the fast endpoint was starved; log:\n{}",
        gw.logs()
    );
    let slow_hits = slow_hits.get();
    assert!(
        slow_hits <= 1,
        "the slow endpoint took more than its cap: {slow_hits}"
    );
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM webhook_events", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn the_outbox_row_commits_and_rolls_back_with_the_change() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let tx = client.transaction().await.expect("tx");
    let id =
        gateway::store::webhooks::enqueue_event(&tx, "api_key.created", json!({"id": "x"}), None)
            .await
            .expect("enqueue");
    assert!(id.is_some());
    tx.rollback().await.expect("rollback");
    assert_eq!(
        count(&client).await,
        0,
        "a rolled-back change emits nothing"
    );

    let tx = client.transaction().await.expect("tx");
    let first =
        gateway::store::webhooks::enqueue_event(&tx, "api_key.expiring", json!({}), Some("k:1"))
            .await
            .expect("enqueue");
    let again =
        gateway::store::webhooks::enqueue_event(&tx, "api_key.expiring", json!({}), Some("k:1"))
            .await
            .expect("enqueue");
    tx.commit().await.expect("commit");
    assert!(first.is_some());
    assert_eq!(again, None, "a dedupe key emits once");
    assert_eq!(count(&client).await, 1);
    let payload: Value = client
        .query_one("SELECT payload FROM webhook_events", &[])
        .await
        .expect("payload")
        .get(0);
    assert_eq!(payload["type"], "api_key.expiring");
    assert!(payload["timestamp"].is_string());
    assert_eq!(payload["data"], json!({}));
}
