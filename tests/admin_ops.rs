//! The admin listener as an operator and an attacker see it when things go
//! wrong: before the first key load, with the database gone, and under a
//! flood of bad credentials (issue 12 part 8).

mod common;

use common::*;
use serde_json::Value;

/// Text a database driver or server puts in its errors: none of it may
/// reach an unauthenticated caller.
fn assert_no_driver_text(body: &Value, db: &TestDb) {
    let text = body.to_string();
    for leak in [
        db.name.as_str(),
        "FATAL",
        "accepting connections",
        "refused",
        "os error",
        "error connecting",
        "db error",
        "timed out",
        "no answer",
        "127.0.0.1",
        "gateway@",
    ] {
        assert!(!text.contains(leak), "/health leaks {leak:?}: {text}");
    }
}

/// `/health` says the database is down with a stable reason code, and
/// keeps the driver's text for the log.
#[tokio::test(flavor = "multi_thread")]
async fn health_reports_a_database_outage_without_driver_text() {
    // The database refuses this gateway (server-side FATAL) ...
    let db = TestDb::new().await;
    db.cut_off(0).await;
    let gw = Gateway::start_unready(&db, Opts::new(default_routes(dead_addr()))).await;
    let (s, _, body) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(s, 503, "{body}");
    let database = &body["checks"]["database"];
    assert_eq!(database["status"], "down", "{body}");
    assert!(database["reason"].is_string(), "a reason code: {body}");
    assert!(database.get("error").is_none(), "{body}");
    assert_no_driver_text(&body, &db);
    drop(gw);

    // ... or nothing listens where it should be (client-side error).
    let mut db = TestDb::new().await;
    db.url = format!("postgres://gateway@{}/nowhere", dead_addr());
    let gw = Gateway::start_unready(&db, Opts::new(default_routes(dead_addr()))).await;
    let (s, _, body) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["checks"]["database"]["status"], "down", "{body}");
    assert_eq!(
        body["checks"]["database"]["reason"], "unreachable",
        "{body}"
    );
    assert_no_driver_text(&body, &db);
    let logged = eventually(std::time::Duration::from_secs(5), || async {
        gw.logs().contains("health: database probe failed")
    })
    .await;
    assert!(logged, "the detail belongs in the log:\n{}", gw.logs());
}

/// Until the first key snapshot has loaded, a key cannot be judged: the
/// admin API answers 503 `not_ready` with `Retry-After`, not 401.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_503_until_the_key_snapshot_is_loaded() {
    let db = TestDb::new().await;
    db.cut_off(0).await;
    let gw = Gateway::start_unready(&db, Opts::new(default_routes(dead_addr()))).await;
    let (s, _, body) = get(&gw.admin_url("/health/ready"), None).await;
    assert_eq!(s, 503, "the snapshot must not have loaded: {body}");

    let key = gateway::keys::format::generate("gw_live_");
    for path in [
        "/api/v1/keys",
        "/api/v1/rate-limits/status",
        "/api/v1/audit-logs",
    ] {
        let (s, headers, body) = get(&gw.admin_url(path), Some(&key)).await;
        assert_eq!((s, code(&body)), (503, "not_ready"), "{path}: {body}");
        assert!(headers.contains_key("retry-after"), "{path}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
        // Without a key it is the same: nothing can be judged yet.
        let (s, _, body) = get(&gw.admin_url(path), None).await;
        assert_eq!((s, code(&body)), (503, "not_ready"), "{path}: {body}");
    }
    // Public endpoints still answer.
    assert_eq!(get(&gw.admin_url("/health/live"), None).await.0, 200);
}

/// Every `admin.access_denied` entry, all pages.
async fn denied_entries(gw: &Gateway, admin: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/audit-logs?action=admin.access_denied&limit=100".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, _, v) = get(&gw.admin_url(&path), Some(admin)).await;
        assert_eq!(s, 200, "{v}");
        out.extend(v["data"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// A flood of bad credentials on the admin port: real writes still get
/// their connection, and the audit log holds the refusals folded, with
/// counts that add up to what was refused, on an intact chain.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refused_admin_calls_is_audited_folded_without_starving_writes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const FLOOD: usize = 500;
    const CONCURRENCY: usize = 50;
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    // A brute-force guard this loose lets every bad call through to the
    // audit (the guard's own refusals are not audited).
    let routes = format!(
        "{}\n[rate_limits]\nauth_failures = {{ per_minute = 1000000, per_hour = 1000000, per_day = 1000000 }}\n",
        default_routes(upstream)
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;
    let admin = gw.create_key("admin", &[]).await.1;

    let url = gw.admin_url("/api/v1/keys");
    let done = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (url, done, refused, stop) = (url.clone(), done.clone(), refused.clone(), stop.clone());
        flood.spawn(async move {
            let client = http_from(if worker % 2 == 0 {
                "127.0.0.1"
            } else {
                "127.0.0.3"
            });
            // At least FLOOD calls in all, and on until the write is done.
            for i in 0.. {
                if i * CONCURRENCY >= FLOOD && stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut req = client.get(&url);
                if i % 2 == 0 {
                    req = req.bearer_auth(gateway::keys::format::generate("gw_live_"));
                }
                let status = req.send().await.map(|r| r.status().as_u16());
                if status.is_ok_and(|s| s == 401) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // In the middle of the flood, a legitimate write succeeds.
    let started = eventually(std::time::Duration::from_secs(30), || async {
        done.load(Ordering::Relaxed) >= FLOOD / 5
    })
    .await;
    assert!(started, "the flood did not get going");
    let (s, _, created) = send(
        http_from("127.0.0.2")
            .post(gw.admin_url("/api/v1/keys"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"name": "during the flood", "scopes": ["read:echo"]})),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(s, 201, "a real write during the flood: {created}");
    while let Some(r) = flood.join_next().await {
        r.expect("flood worker");
    }
    let total = done.load(Ordering::Relaxed) as u64;
    let refused = refused.load(Ordering::Relaxed) as u64;
    assert!(total >= FLOOD as u64);
    assert_eq!(refused, total, "every flood call is a 401");

    // The refusals reach the audit log, folded.
    let mut entries: Vec<Value>;
    let mut recorded: u64;
    let mut dropped: u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let complete = loop {
        entries = denied_entries(&gw, &admin)
            .await
            .into_iter()
            .filter(|e| e["target"]["id"] == "GET /api/v1/keys")
            .collect();
        recorded = entries
            .iter()
            .map(|e| e["after"]["count"].as_u64().unwrap_or(0))
            .sum::<u64>();
        let text = metrics(&gw).await;
        dropped = ["queue_full", "backlog", "write_failed"]
            .iter()
            .map(|r| {
                sample_or_zero(
                    &text,
                    &format!("gateway_audit_dropped_total{{reason=\"{r}\"}}"),
                )
            })
            .sum::<f64>() as u64;
        if recorded + dropped == refused {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        complete,
        "audited {recorded} + dropped {dropped} != refused {refused}; {} entries",
        entries.len()
    );
    assert!(recorded > 0, "nothing was audited");
    assert!(
        entries.len() < refused as usize / 5,
        "{} entries for {refused} refusals: repeats were not folded",
        entries.len()
    );
    for e in &entries {
        assert_eq!(e["result"], "denied");
        assert!(
            ["missing_api_key", "invalid_api_key"]
                .contains(&e["after"]["code"].as_str().unwrap_or("")),
            "{e}"
        );
        assert!(
            ["127.0.0.1", "127.0.0.3"].contains(&e["client_ip"].as_str().unwrap_or("")),
            "{e}"
        );
    }
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "chain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
