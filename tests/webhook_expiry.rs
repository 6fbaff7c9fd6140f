//! Key-expiry housekeeping (ISSUE 14 "Key-expiry events", DESIGN §3
//! "Webhooks" → Housekeeping): `api_key.expiring` / `api_key.expired` are
//! emitted once per key and expiry date, however many rounds and instances
//! run; long-expired keys are purged with an audit entry and leave every
//! instance's snapshot; housekeeping never holds up admin writes.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

fn opts(upstream: std::net::SocketAddr) -> Opts {
    Opts::new(format!(
        "{}\n[housekeeping]\ninterval_ms = 200\n",
        default_routes(upstream)
    ))
}

/// Regression: the housekeeping lock was the audit log's append lock (the
/// same advisory-lock number), so while one instance ran housekeeping every
/// admin write on every instance waited for it, and failed on the statement
/// timeout if a round outlasted it.
#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_do_not_wait_for_housekeeping() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, opts(upstream)).await;
    let (_, admin_key) = a.create_key("admin", &[]).await;
    // Stands in for an instance in the middle of a long round.
    let holder = db.client().await;
    let locked: bool = holder
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&gateway::service::housekeeping::LOCK_ID],
        )
        .await
        .expect("lock")
        .get(0);
    assert!(locked);
    let (status, body) = api(
        &a,
        Method::POST,
        "/api/v1/keys",
        &admin_key,
        Some(json!({"name": "during-housekeeping", "scopes": ["read:echo"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}
