//! Request-log capture and its writer (DESIGN §3 "Request logs and traffic
//! statistics"): every request that reaches the proxy port becomes one row
//! of `request_logs` (checked with SQL), a Postgres outage never slows or
//! breaks the proxy (records are dropped and counted once the queue is
//! full, and logging resumes by itself), and a day without a partition
//! gets one on demand.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// The harness's routes, a route allowing one anonymous request a minute,
/// and `[request_logs]` with `extra` lines.
fn config(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"{}
[[routes]]
name = "tight"
path_prefix = "/tight"
upstream = "echo"
auth = "none"
rate_limit = {{ per_minute = 1 }}

[request_logs]
flush_interval_ms = 100
{extra}
"#,
        default_routes(upstream)
    )
}

/// One stored row, the columns a test looks at.
#[derive(Debug)]
struct Row {
    id: uuid::Uuid,
    ts: chrono::DateTime<chrono::Utc>,
    key_id: Option<uuid::Uuid>,
    route: Option<String>,
    method: String,
    path: String,
    query: Option<String>,
    status: i16,
    error_code: Option<String>,
    latency_ms: f64,
    upstream_latency_ms: Option<f64>,
    upstream: Option<String>,
    response_bytes: i64,
    client_ip: Option<String>,
    user_agent: Option<String>,
}

/// The rows of `request_id`.
async fn rows(db: &tokio_postgres::Client, request_id: &str) -> Vec<Row> {
    db.query(
        "SELECT id, ts, key_id, route, method, path, query, status, error_code, latency_ms,
                upstream_latency_ms, upstream, response_bytes, host(client_ip), user_agent
         FROM request_logs WHERE request_id = $1",
        &[&request_id],
    )
    .await
    .expect("query request_logs")
    .iter()
    .map(|r| Row {
        id: r.get(0),
        ts: r.get(1),
        key_id: r.get(2),
        route: r.get(3),
        method: r.get(4),
        path: r.get(5),
        query: r.get(6),
        status: r.get(7),
        error_code: r.get(8),
        latency_ms: r.get(9),
        upstream_latency_ms: r.get(10),
        upstream: r.get(11),
        response_bytes: r.get(12),
        client_ip: r.get(13),
        user_agent: r.get(14),
    })
    .collect()
}

/// Waits (up to `limit`) until every id in `ids` has its row; returns them.
async fn wait_rows(
    db: &tokio_postgres::Client,
    ids: &[&str],
    limit: Duration,
) -> HashMap<String, Row> {
    let deadline = std::time::Instant::now() + limit;
    let mut found = HashMap::new();
    loop {
        for id in ids {
            if !found.contains_key(*id) {
                if let Some(r) = rows(db, id).await.into_iter().next() {
                    found.insert(id.to_string(), r);
                }
            }
        }
        if found.len() == ids.len() || std::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that opens a connection per request: which requests close
/// their connection is not what these tests are about.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

async fn send_with(req: reqwest::RequestBuilder, request_id: &str) -> u16 {
    req.header("x-request-id", request_id)
        .header("user-agent", "capture-test/1.0")
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A mix of admitted, refused and failed requests: each appears in
/// `request_logs` within 2 s with its fields, the gateway's refusals with
/// their error code, the delayed upstream's time in `upstream_latency_ms`;
/// the credential and the cookie are in no column of any row.
#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_request_is_logged_with_its_fields() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream, ""))).await;
    let (key_id, key) = gw.create_key("read:echo", &[]).await;
    let key_id: uuid::Uuid = key_id.parse().expect("key id");
    let cookie = "session=cookie-secret-5f1c9e";
    let c = client();

    let mut expected = Vec::new();
    let mut check = |id: &'static str, status: u16, want: u16| {
        assert_eq!(status, want, "{id}");
        expected.push(id);
    };
    check(
        "cap-ok",
        send_with(
            c.get(gw.url("/echo/ok?page=2"))
                .header("x-api-key", &key)
                .header("cookie", cookie),
            "cap-ok",
        )
        .await,
        200,
    );
    check(
        "cap-up404",
        send_with(
            c.get(gw.url("/echo/missing?status=404"))
                .header("authorization", format!("Bearer {key}")),
            "cap-up404",
        )
        .await,
        404,
    );
    check(
        "cap-slow",
        send_with(
            c.get(gw.url("/echo/slow?delay_ms=300"))
                .header("x-api-key", &key),
            "cap-slow",
        )
        .await,
        200,
    );
    check(
        "cap-401",
        send_with(c.get(gw.url("/echo/x")).header("cookie", cookie), "cap-401").await,
        401,
    );
    check(
        "cap-403",
        send_with(
            c.post(gw.url("/echo/x"))
                .header("x-api-key", &key)
                .body("{}"),
            "cap-403",
        )
        .await,
        403,
    );
    check(
        "cap-route404",
        send_with(c.get(gw.url("/nowhere")), "cap-route404").await,
        404,
    );
    check(
        "cap-502",
        send_with(c.get(gw.url("/dead/x")), "cap-502").await,
        502,
    );
    // One request a minute: the first or (across a minute boundary) the
    // second is admitted, the next one refused.
    let mut limited = false;
    for i in 0..3 {
        let id = format!("cap-tight-{i}");
        if send_with(c.get(gw.url("/tight")), &id).await == 429 {
            limited = true;
            let id: &'static str = Box::leak(id.into_boxed_str());
            expected.push(id);
            break;
        }
    }
    assert!(limited, "no 429 from a route allowing one request a minute");

    let sql = db.client().await;
    let found = wait_rows(&sql, &expected, Duration::from_secs(2)).await;
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !found.contains_key(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "not in request_logs within 2 s: {missing:?}; log:\n{}",
        gw.logs()
    );
    let tight_id = expected.last().copied().unwrap_or_default();
    let upstream_addr = upstream.to_string();

    for id in &expected {
        let r = &found[*id];
        // One row per request, id a UUIDv7 of the request's start.
        assert_eq!(rows(&sql, id).await.len(), 1, "{id}");
        assert_eq!(r.id.get_version_num(), 7, "{id}");
        let (secs, nanos) = r.id.get_timestamp().expect("v7 timestamp").to_unix();
        let id_ms = secs as i64 * 1000 + nanos as i64 / 1_000_000;
        assert_eq!(id_ms, r.ts.timestamp_millis(), "{id}: id and ts disagree");
        assert_eq!(r.client_ip.as_deref(), Some("127.0.0.1"), "{id}");
        assert_eq!(r.user_agent.as_deref(), Some("capture-test/1.0"), "{id}");
        assert!(r.latency_ms >= 0.0, "{id}");
    }

    let ok = &found["cap-ok"];
    assert_eq!(ok.status, 200);
    assert_eq!(ok.key_id, Some(key_id));
    assert_eq!(ok.route.as_deref(), Some("echo"));
    assert_eq!(ok.method, "GET");
    assert_eq!(ok.path, "/echo/ok");
    assert_eq!(ok.query.as_deref(), Some("page=2"));
    assert_eq!(ok.error_code, None);
    assert_eq!(ok.upstream.as_deref(), Some(upstream_addr.as_str()));
    assert!(ok.upstream_latency_ms.is_some());
    assert!(ok.response_bytes > 0);

    let up404 = &found["cap-up404"];
    assert_eq!(
        (up404.status, up404.error_code.as_deref()),
        (404, None),
        "an upstream's 404 is not the gateway's refusal"
    );
    assert_eq!(up404.key_id, Some(key_id));
    assert_eq!(up404.upstream.as_deref(), Some(upstream_addr.as_str()));

    let slow = &found["cap-slow"];
    let up = slow.upstream_latency_ms.expect("upstream latency");
    assert!(up >= 300.0, "upstream waited 300 ms, logged {up} ms");
    assert!(slow.latency_ms >= up, "{slow:?}");

    for (id, status, code, route, key) in [
        ("cap-401", 401, "missing_api_key", Some("echo"), None),
        (
            "cap-403",
            403,
            "insufficient_scope",
            Some("echo"),
            Some(key_id),
        ),
        ("cap-route404", 404, "route_not_found", None, None),
        ("cap-502", 502, "upstream_unavailable", Some("dead"), None),
        (tight_id, 429, "rate_limited", Some("tight"), None),
    ] {
        let r = &found[id];
        assert_eq!(r.status, status, "{id}");
        assert_eq!(r.error_code.as_deref(), Some(code), "{id}");
        assert_eq!(r.route.as_deref(), route, "{id}");
        assert_eq!(r.key_id, key, "{id}");
        assert_eq!(r.upstream_latency_ms, None, "{id}: never answered upstream");
        if id != "cap-502" {
            assert_eq!(r.upstream, None, "{id}: never forwarded");
        }
    }
    assert_eq!(found["cap-403"].method, "POST");
    assert!(
        found["cap-502"].upstream.is_some(),
        "the target that failed is named"
    );

    // The credential and the cookie are in no column of any row.
    for secret in [key.as_str(), "cookie-secret-5f1c9e"] {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM request_logs r WHERE strpos(r::text, $1) > 0",
                &[&secret],
            )
            .await
            .expect("search rows")
            .get(0);
        assert_eq!(n, 0, "a secret was stored in request_logs");
    }

    let m = metrics(&gw).await;
    let written = sample(&m, "gateway_request_logs_written_total").expect("written_total");
    assert!(written >= expected.len() as f64, "{written}");
}

/// The writer's metrics are exported from start-up, at zero.
#[tokio::test(flavor = "multi_thread")]
async fn request_log_metrics_exist_from_start_up() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream, ""))).await;
    let m = metrics(&gw).await;
    for series in [
        "gateway_request_logs_written_total",
        r#"gateway_request_logs_dropped_total{reason="queue_full"}"#,
        r#"gateway_request_logs_dropped_total{reason="rejected"}"#,
        r#"gateway_request_logs_dropped_total{reason="shutdown"}"#,
        "gateway_request_log_queue_depth",
        "gateway_request_log_batch_size_count",
        "gateway_request_log_batch_seconds_count",
    ] {
        assert!(sample(&m, series).is_some(), "{series} missing:\n{m}");
    }
}

/// Postgres cut off: the proxy keeps answering every request; once the
/// writer's queue is full, records are dropped and counted. After the
/// database is back, new requests are logged again without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_drops_and_counts_then_logging_resumes() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let routes = format!(
        "{}\n[rate_limits]\nanonymous = {{}}\n",
        config(upstream, "queue_capacity = 5")
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;
    let sql = db.client().await;
    let c = client();

    assert_eq!(
        send_with(c.get(gw.url("/public/before")), "out-before").await,
        200
    );
    let found = wait_rows(&sql, &["out-before"], Duration::from_secs(5)).await;
    assert_eq!(
        found.len(),
        1,
        "not logged before the outage; log:\n{}",
        gw.logs()
    );

    let pid: i32 = sql
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    db.cut_off(pid).await;
    let series = r#"gateway_request_logs_dropped_total{reason="queue_full"}"#;
    let before = metrics(&gw).await;
    let mut sent = 0;
    let dropped = eventually(Duration::from_secs(30), || {
        let (c, gw, before) = (&c, &gw, &before);
        sent += 1;
        let id = format!("out-during-{sent}");
        async move {
            let status = send_with(c.get(gw.url("/public/during")), &id).await;
            assert_eq!(status, 200, "the proxy stopped answering during the outage");
            let m = metrics(gw).await;
            counter_delta(before, &m, series).unwrap_or(0.0) > 0.0
        }
    })
    .await;
    assert!(
        dropped,
        "no queue_full drops after {sent} requests with the database down"
    );
    // The gauge is refreshed between the writer's retries.
    let full = eventually(Duration::from_secs(15), || async {
        sample(&metrics(&gw).await, "gateway_request_log_queue_depth") == Some(5.0)
    })
    .await;
    assert!(full, "queue depth never reached the capacity (5)");

    db.restore().await;
    // Requests until one is logged: the first ones after the restore may
    // still meet the full queue (and be dropped, as they should).
    let mut n = 0;
    let resumed = eventually(Duration::from_secs(30), || {
        n += 1;
        let id = format!("out-after-{n}");
        let (c, gw, sql) = (&c, &gw, &sql);
        async move {
            assert_eq!(send_with(c.get(gw.url("/public/after")), &id).await, 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let logged: i64 = sql
                .query_one(
                    "SELECT count(*) FROM request_logs WHERE request_id LIKE 'out-after-%'",
                    &[],
                )
                .await
                .expect("count")
                .get(0);
            logged > 0
        }
    })
    .await;
    assert!(
        resumed,
        "nothing logged after the database came back; log:\n{}",
        gw.logs()
    );
}

/// Today's partition disappears while the gateway runs (dropped by hand):
/// the next batch creates it on demand and is written, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_partition_is_created_on_demand() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream, ""))).await;
    let sql = db.client().await;
    let c = client();

    assert_eq!(send_with(c.get(gw.url("/public/a")), "part-a").await, 200);
    assert_eq!(
        wait_rows(&sql, &["part-a"], Duration::from_secs(5))
            .await
            .len(),
        1
    );

    let today: String = sql
        .query_one(
            "SELECT 'request_logs_' || to_char((now() AT TIME ZONE 'UTC')::date, 'YYYYMMDD')",
            &[],
        )
        .await
        .expect("partition name")
        .get(0);
    sql.batch_execute(&format!("DROP TABLE {today}"))
        .await
        .expect("drop today's partition");

    assert_eq!(send_with(c.get(gw.url("/public/b")), "part-b").await, 200);
    let found = wait_rows(&sql, &["part-b"], Duration::from_secs(10)).await;
    assert_eq!(
        found.len(),
        1,
        "not written after its partition vanished; log:\n{}",
        gw.logs()
    );
    let m = metrics(&gw).await;
    assert_eq!(
        sample(
            &m,
            r#"gateway_request_logs_dropped_total{reason="rejected"}"#
        ),
        Some(0.0)
    );
}

/// Bodies are kept, up to `max_body_bytes`, only on `log_bodies` routes.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_kept_only_on_log_bodies_routes() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let routes = format!(
        r#"{}
[[routes]]
name = "bodies"
path_prefix = "/bodies"
upstream = "echo"
auth = "none"
log_bodies = true
"#,
        config(upstream, "max_body_bytes = 16")
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;
    let sql = db.client().await;
    let c = client();
    let body = "abcdefghijklmnopqrstuvwxyz";
    for (path, id) in [("/bodies/x", "body-on"), ("/public/x", "body-off")] {
        assert_eq!(send_with(c.post(gw.url(path)).body(body), id).await, 200);
    }
    let found = wait_rows(&sql, &["body-on", "body-off"], Duration::from_secs(5)).await;
    assert_eq!(found.len(), 2, "log:\n{}", gw.logs());
    let bodies = |id: &str| {
        let sql = &sql;
        let id = id.to_string();
        async move {
            let r = sql
                .query_one(
                    "SELECT request_body, response_body, request_bytes FROM request_logs
                     WHERE request_id = $1",
                    &[&id],
                )
                .await
                .expect("row");
            let (req, resp, n): (Option<String>, Option<String>, i64) =
                (r.get(0), r.get(1), r.get(2));
            (req, resp, n)
        }
    };
    let (req, resp, n) = bodies("body-on").await;
    assert_eq!(req.as_deref(), Some("abcdefghijklmnop"));
    let resp = resp.expect("response body kept");
    assert!(!resp.is_empty() && resp.len() <= 16, "{resp:?}");
    assert_eq!(n, body.len() as i64);
    let (req, resp, n) = bodies("body-off").await;
    assert_eq!(
        (req, resp),
        (None, None),
        "bodies kept on a route without log_bodies"
    );
    assert_eq!(n, body.len() as i64);
}

/// A graceful shutdown writes what is still queued before the process
/// exits, well before the next periodic flush would have.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_writes_the_last_records() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let mut gw = Gateway::start(
        &db,
        Opts::new(format!(
            "{}\n",
            config(upstream, "").replace("flush_interval_ms = 100", "flush_interval_ms = 60000")
        )),
    )
    .await;
    let c = client();
    let ids = ["shut-1", "shut-2", "shut-3"];
    for id in ids {
        assert_eq!(send_with(c.get(gw.url("/public/x")), id).await, 200);
    }
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(20)).await.is_some(),
        "gateway did not exit"
    );
    let sql = db.client().await;
    let found = wait_rows(&sql, &ids, Duration::from_secs(1)).await;
    assert_eq!(found.len(), 3, "log:\n{}", gw.logs());
}

/// The writer is not woken by every record (a cross-thread wake-up per
/// request), only by its timer or a batch's worth of queued records: with
/// a small queue and a flush interval far beyond the test, more requests
/// than the queue holds are still all logged, none dropped. A writer that
/// waited for its timer alone would drop all but the first 8.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_queue_is_drained_before_it_overflows() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let conf = config(upstream, "queue_capacity = 8")
        .replace("flush_interval_ms = 100", "flush_interval_ms = 60000");
    let mut gw = Gateway::start(&db, Opts::new(format!("{conf}\n"))).await;
    let c = client();
    let ids: Vec<String> = (0..40).map(|i| format!("small-queue-{i}")).collect();
    for id in &ids {
        assert_eq!(send_with(c.get(gw.url("/public/x")), id).await, 200);
    }
    let dropped = sample_or_zero(
        &metrics(&gw).await,
        r#"gateway_request_logs_dropped_total{reason="queue_full"}"#,
    );
    assert_eq!(dropped, 0.0, "log:\n{}", gw.logs());
    // Shutdown writes the batch the writer holds.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(20)).await.is_some(),
        "gateway did not exit"
    );
    let sql = db.client().await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let found = wait_rows(&sql, &ids, Duration::from_secs(1)).await;
    assert_eq!(found.len(), ids.len(), "log:\n{}", gw.logs());
}
