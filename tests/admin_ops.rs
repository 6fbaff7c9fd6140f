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
