//! Key-expiry housekeeping (ISSUE 14 "Key-expiry events", DESIGN §3
//! "Webhooks" → Housekeeping): `api_key.expiring` / `api_key.expired` are
//! emitted once per key and expiry date, however many rounds and instances
//! run; long-expired keys are purged with an audit entry and leave every
//! instance's snapshot; housekeeping never holds up admin writes.

mod common;
mod webhook_receiver;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use gateway::service::expiry::{ExpiryEvents, PurgeExpired, BATCH};
use reqwest::Method;
use serde_json::{json, Value};
use webhook_receiver::Receiver;

/// Housekeeping every 200 ms, receivers on loopback allowed.
fn opts(upstream: std::net::SocketAddr, purge_after_days: Option<u32>) -> Opts {
    let mut o = Opts::new(format!(
        "{}\n[housekeeping]\ninterval_ms = 200\n\n[webhooks]\nallow_private_targets = true\n",
        default_routes(upstream)
    ));
    if let Some(days) = purge_after_days {
        o.keys_extra = format!("purge_expired_after_days = {days}");
    }
    o
}

/// Rounds a housekeeping job has completed on `gw` (`outcome="ok"`), or
/// `None` when the series is missing.
async fn rounds(gw: &Gateway, job: &str) -> Option<f64> {
    let text = metrics(gw).await;
    let job = format!("job=\"{job}\"");
    let lines: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("gateway_housekeeping_runs_total{"))
        .filter(|l| l.contains(&job) && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    lines.first().copied()
}

/// Rounds of `job` that `gws` have completed together.
async fn total_rounds(gws: &[&Gateway], job: &str) -> f64 {
    let mut sum = 0.0;
    for g in gws {
        sum += rounds(g, job).await.unwrap_or(0.0);
    }
    sum
}

/// Waits until `gws` together have run `job` at least `n` more times than
/// they had when called: "many rounds" without measuring time.
async fn wait_rounds(gws: &[&Gateway], job: &str, n: f64) {
    let start = total_rounds(gws, job).await;
    let ran = eventually(Duration::from_secs(30), || async {
        total_rounds(gws, job).await >= start + n
    })
    .await;
    assert!(
        ran,
        "housekeeping job {job} did not run {n} more rounds; log:\n{}",
        gws[0].logs()
    );
}

/// The outbox events of `event_type` about key `id`: their payloads.
async fn events(db: &TestDb, event_type: &str, id: &str) -> Vec<Value> {
    db.client()
        .await
        .query(
            "SELECT payload FROM webhook_events WHERE type = $1 AND payload->'data'->>'id' = $2 \
             ORDER BY created_at, id",
            &[&event_type, &id],
        )
        .await
        .expect("read outbox")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Moves a key's expiry to `now() + offset` (a Postgres interval).
async fn set_expiry(db: &TestDb, id: &str, offset: &str) {
    let id: uuid::Uuid = id.parse().expect("key id");
    let n = db
        .client()
        .await
        .execute(
            &format!("UPDATE api_keys SET expires_at = now() + interval '{offset}' WHERE id = $1"),
            &[&id],
        )
        .await
        .expect("move expiry");
    assert_eq!(n, 1, "key {id} exists");
}

fn assert_no_secret(payload: &Value, key: &str) {
    let text = payload.to_string();
    assert!(!text.contains(key), "the key's secret is in {text}");
    for field in ["key", "key_hash", "previous_key_hash"] {
        assert!(payload["data"].get(field).is_none(), "{field} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_notices_are_emitted_once_across_rounds_and_instances() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, opts(upstream, None)).await;
    let b = Gateway::start(&db, opts(upstream, None)).await;
    let receiver = Receiver::start().await;
    let (_, admin_key) = a.create_key("admin", &[]).await;
    let (status, body) = api(
        &a,
        Method::POST,
        "/api/v1/webhooks",
        &admin_key,
        Some(json!({"url": receiver.url(), "events": ["api_key.expiring", "api_key.expired"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Within the default 7-day notice; outside it; no expiry at all.
    let (soon, soon_key) = a.create_key("read:echo", &["--expires-in", "1h"]).await;
    let (later, _) = a.create_key("read:echo", &["--expires-in", "30d"]).await;
    let (never, _) = a.create_key("read:echo", &[]).await;

    let one = eventually(Duration::from_secs(15), || async {
        events(&db, "api_key.expiring", &soon).await.len() == 1
    })
    .await;
    assert!(one, "no api_key.expiring for {soon}; log:\n{}", a.logs());
    wait_rounds(&[&a, &b], "key_expiry_events", 10.0).await;
    let expiring = events(&db, "api_key.expiring", &soon).await;
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    let e = &expiring[0];
    assert_eq!(e["type"], "api_key.expiring");
    assert_eq!(e["data"]["id"], soon.as_str());
    assert_eq!(e["data"]["status"], "active");
    assert!(e["data"]["expires_at"].is_string(), "{e}");
    assert_no_secret(e, &soon_key);
    for id in [&later, &never] {
        assert!(events(&db, "api_key.expiring", id).await.is_empty(), "{id}");
    }
    assert!(events(&db, "api_key.expired", &soon).await.is_empty());

    // Its expiry passes: one api_key.expired, and no second expiring.
    set_expiry(&db, &soon, "-1 second").await;
    let one = eventually(Duration::from_secs(15), || async {
        events(&db, "api_key.expired", &soon).await.len() == 1
    })
    .await;
    assert!(one, "no api_key.expired for {soon}; log:\n{}", a.logs());
    wait_rounds(&[&a, &b], "key_expiry_events", 10.0).await;
    let expired = events(&db, "api_key.expired", &soon).await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["data"]["status"], "expired");
    assert_no_secret(&expired[0], &soon_key);
    assert_eq!(events(&db, "api_key.expiring", &soon).await.len(), 1);
    for id in [&later, &never] {
        assert!(events(&db, "api_key.expired", id).await.is_empty(), "{id}");
    }

    // An extended expiry is a new date to announce: one more notice each.
    set_expiry(&db, &soon, "2 days").await;
    let two = eventually(Duration::from_secs(15), || async {
        events(&db, "api_key.expiring", &soon).await.len() == 2
    })
    .await;
    assert!(two, "the extended expiry was not announced");
    wait_rounds(&[&a, &b], "key_expiry_events", 5.0).await;
    assert_eq!(events(&db, "api_key.expiring", &soon).await.len(), 2);
    assert_eq!(events(&db, "api_key.expired", &soon).await.len(), 1);

    // The subscribed receiver got each of them, signed with the event id.
    let delivered = eventually(Duration::from_secs(15), || async {
        receiver.hits_for("api_key.expiring", &soon).len() == 2
            && receiver.hits_for("api_key.expired", &soon).len() == 1
    })
    .await;
    assert!(delivered, "receiver got {:?}", receiver.hits());
    for h in receiver.hits() {
        assert!(h.webhook_id.starts_with("msg_"), "{h:?}");
        assert_eq!(
            h.body["data"]["id"],
            soon.as_str(),
            "only the key in the window: {h:?}"
        );
        assert_no_secret(&h.body, &soon_key);
    }
    assert_eq!(receiver.count(), 3, "{:?}", receiver.hits());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_keys_get_no_expiry_notices() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, opts(upstream, None)).await;
    // Outside the notice window until they expire, so nothing is due
    // before the revocation.
    let (revoked, _) = a.create_key("read:echo", &["--expires-in", "30d"]).await;
    let (expired, _) = a.create_key("read:echo", &["--expires-in", "30d"]).await;
    let out = a.cli(&["keys", "revoke", &revoked]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set_expiry(&db, &revoked, "-1 second").await;
    set_expiry(&db, &expired, "-1 second").await;
    // The unrevoked key is the witness that rounds ran.
    let seen = eventually(Duration::from_secs(15), || async {
        events(&db, "api_key.expired", &expired).await.len() == 1
    })
    .await;
    assert!(seen, "no api_key.expired for {expired}; log:\n{}", a.logs());
    wait_rounds(&[&a], "key_expiry_events", 5.0).await;
    for t in ["api_key.expiring", "api_key.expired"] {
        assert!(events(&db, t, &revoked).await.is_empty(), "{t}");
    }
    // It went from outside the window straight to expired: only `expired`.
    assert!(events(&db, "api_key.expiring", &expired).await.is_empty());
}

/// `GET /api/v1/audit-logs?action=api_key.purged&target_id=<id>` entries.
async fn purge_entries(gw: &Gateway, admin: &str, id: &str) -> Vec<Value> {
    let (status, body) = api(
        gw,
        Method::GET,
        &format!("/api/v1/audit-logs?action=api_key.purged&target_id={id}"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_expired_keys_are_purged_with_an_audit_entry_and_leave_every_snapshot() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, opts(upstream, Some(30))).await;
    let b = Gateway::start(&db, opts(upstream, Some(30))).await;
    let (admin, admin_key) = a.create_key("admin", &[]).await;
    let (old, old_key) = a.create_key("read:echo", &["--expires-in", "1h"]).await;
    let (recent, recent_key) = a.create_key("read:echo", &["--expires-in", "1h"]).await;
    for key in [&old_key, &recent_key] {
        let ok = eventually(Duration::from_secs(5), || async {
            get(&b.url("/echo"), Some(key)).await.0 == 200
        })
        .await;
        assert!(ok, "instance b never accepted the key");
    }

    // Expired, but not for long enough: b answers expired_api_key.
    set_expiry(&db, &old, "-1 day").await;
    set_expiry(&db, &recent, "-29 days").await;
    let expired = eventually(Duration::from_secs(5), || async {
        let (status, _, body) = get(&b.url("/echo"), Some(&old_key)).await;
        status == 401 && code(&body) == "expired_api_key"
    })
    .await;
    assert!(expired, "instance b never saw the key expire");

    // Past the 30 days: purged, and gone from b's snapshot too.
    set_expiry(&db, &old, "-31 days").await;
    let gone = eventually(Duration::from_secs(15), || async {
        let (status, _, body) = get(&b.url("/echo"), Some(&old_key)).await;
        status == 401 && code(&body) == "invalid_api_key"
    })
    .await;
    assert!(
        gone,
        "instance b still knows the purged key; log:\n{}",
        a.logs()
    );
    let (status, _, body) = get(&a.url("/echo"), Some(&old_key)).await;
    assert_eq!((status, code(&body)), (401, "invalid_api_key"));
    let (status, body) = api(
        &a,
        Method::GET,
        &format!("/api/v1/keys/{old}"),
        &admin_key,
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // One audit entry, naming housekeeping, with the key as it was.
    wait_rounds(&[&a, &b], "purge_expired_keys", 5.0).await;
    let entries = purge_entries(&a, &admin_key, &old).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["actor"], json!({"type": "cli", "key_id": null}));
    assert!(
        e["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("gateway-housekeeping/")),
        "{e}"
    );
    assert_eq!(e["target"], json!({"type": "api_key", "id": old}));
    assert_eq!(e["before"]["id"], old.as_str());
    assert_eq!(e["before"]["status"], "expired");
    assert!(e["after"].is_null(), "{e}");
    assert!(e["before"].get("key_hash").is_none(), "{e}");
    assert!(!e.to_string().contains(&old_key), "{e}");

    // The key expired 29 days ago stays, as do active keys.
    assert!(purge_entries(&a, &admin_key, &recent).await.is_empty());
    let (status, _, body) = get(&b.url("/echo"), Some(&recent_key)).await;
    assert_eq!((status, code(&body)), (401, "expired_api_key"));
    let (status, body) = api(
        &a,
        Method::GET,
        &format!("/api/v1/keys/{recent}"),
        &admin_key,
        None,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("expired")),
        "{body}"
    );
    let (status, _) = api(
        &a,
        Method::GET,
        &format!("/api/v1/keys/{admin}"),
        &admin_key,
        None,
    )
    .await;
    assert_eq!(status, 200);

    let out = a.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains("intact"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_after_zero_days_never_purges() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, opts(upstream, Some(0))).await;
    let (id, key) = a.create_key("read:echo", &["--expires-in", "1h"]).await;
    set_expiry(&db, &id, "-3650 days").await;
    let expired = eventually(Duration::from_secs(5), || async {
        code(&get(&a.url("/echo"), Some(&key)).await.2) == "expired_api_key"
    })
    .await;
    assert!(expired);
    wait_rounds(&[&a], "purge_expired_keys", 10.0).await;
    let sql = db.client().await;
    let uid: uuid::Uuid = id.parse().expect("id");
    let left: i64 = sql
        .query_one("SELECT count(*) FROM api_keys WHERE id = $1", &[&uid])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 1, "purge_expired_after_days = 0 purged a key");
    let purges: i64 = sql
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'api_key.purged'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(purges, 0);
}

/// Regression: the housekeeping lock was the audit log's append lock (the
/// same advisory-lock number), so while one instance ran housekeeping every
/// admin write on every instance waited for it, and failed on the statement
/// timeout if a round outlasted it.
#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_do_not_wait_for_housekeeping() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, opts(upstream, None)).await;
    let (_, admin_key) = a.create_key("admin", &[]).await;
    // Stands in for an instance in the middle of a long round.
    // The gateway's own rounds take it too: try until it is free.
    let holder = db.client().await;
    let locked = eventually(Duration::from_secs(10), || async {
        holder
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&gateway::service::housekeeping::LOCK_ID],
            )
            .await
            .expect("lock")
            .get::<_, bool>(0)
    })
    .await;
    assert!(locked, "never got the housekeeping lock");
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

/// Inserts `n` keys straight into the table, expiring at `now() + offset`.
async fn bulk_keys(db: &TestDb, n: i64, offset: &str) {
    db.client()
        .await
        .execute(
            &format!(
                "INSERT INTO api_keys (id, name, prefix, key_hash, expires_at) \
                 SELECT gen_random_uuid(), 'bulk', 'gw_live_bulk', \
                        decode(md5(i::text || '{offset}') || md5('x' || i::text || '{offset}'), 'hex'), \
                        now() + interval '{offset}' \
                 FROM generate_series(1, $1::bigint) AS i"
            ),
            &[&n],
        )
        .await
        .expect("bulk insert");
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

/// More keys than one batch: every one is handled, in several batches, and
/// a second pass finds nothing left to do.
#[tokio::test(flavor = "multi_thread")]
async fn backlogs_larger_than_a_batch_are_worked_through() {
    let db = TestDb::new().await;
    let n = BATCH * 2 + 7;
    bulk_keys(&db, n, "1 hour").await;
    bulk_keys(&db, n, "-40 days").await;
    let now: DateTime<Utc> = Utc::now();
    let mut client = db.client().await;

    let job = ExpiryEvents::new(Duration::from_secs(7 * 86_400));
    let emitted = job.emit_due(&mut client, now).await.expect("emit");
    assert_eq!(emitted, 2 * n as u64, "expiring + expired");
    assert_eq!(job.emit_due(&mut client, now).await.expect("emit"), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT dedupe_key) FROM webhook_events WHERE type = 'api_key.expiring'"
        )
        .await,
        n
    );

    let purge = PurgeExpired::new(30, PEPPER);
    assert_eq!(
        purge.purge_due(&mut client, now).await.expect("purge"),
        n as u64
    );
    assert_eq!(purge.purge_due(&mut client, now).await.expect("purge"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM api_keys").await, n);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE action = 'api_key.purged'"
        )
        .await,
        n
    );
    let chain = gateway::store::audit::AuditChain::new(PEPPER);
    let verdict = gateway::store::audit::verify(&client, &chain)
        .await
        .expect("verify");
    assert!(
        matches!(verdict, gateway::store::audit::Verdict::Intact { entries, .. } if entries == n as u64),
        "{verdict:?}"
    );
}
