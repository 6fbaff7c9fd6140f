//! Traffic statistics (issue 13): the per-minute rollups, their flusher
//! against a real Postgres (two instances adding up, an outage), and
//! `GET /api/v1/requests/stats` and `GET /api/v1/keys/{id}/usage` on a real
//! gateway process.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use gateway::config::DatabaseConfig;
use gateway::reqlog::histogram::{self, Histogram};
use gateway::reqlog::record::RequestRecord;
use gateway::reqlog::rollup::{RollupFlusher, Rollups};
use gateway::store::request_stats::{self, GroupSums, StatsFilter};
use pingora::services::background::BackgroundService;
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

fn pool(db: &TestDb) -> deadpool_postgres::Pool {
    gateway::store::pool(&DatabaseConfig {
        url: db.url.clone(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(1),
    })
    .expect("pool")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn record(ts: DateTime<Utc>, key: Option<Uuid>, status: u16, latency_ms: f64) -> RequestRecord {
    RequestRecord {
        id: Uuid::now_v7(),
        ts,
        request_id: http::HeaderValue::from_static("r"),
        key_id: key,
        route: Some(Arc::from("echo")),
        method: http::Method::GET,
        path: "/echo".into(),
        query: None,
        status,
        error_code: None,
        latency_ms,
        upstream_latency_ms: None,
        upstream: None,
        request_bytes: 0,
        response_bytes: 100,
        client_ip: None,
        user_agent: None,
        request_body: None,
        response_body: None,
    }
}

fn flusher(rollups: &Arc<Rollups>, db: &TestDb) -> RollupFlusher {
    RollupFlusher::new(
        rollups.clone(),
        pool(db),
        Duration::from_millis(100),
        Box::new(|| true),
    )
}

/// The sums over `[from, to)`, ungrouped.
async fn totals(db: &TestDb, from: DateTime<Utc>, to: DateTime<Utc>) -> GroupSums {
    let p = pool(db);
    let mut client = p.get().await.expect("connection");
    let groups = request_stats::stats(
        &mut client,
        &StatsFilter {
            from,
            to,
            key_id: None,
            route: None,
            group_by: None,
        },
    )
    .await
    .expect("stats");
    groups.into_iter().next().unwrap_or_default()
}

fn quantile(g: &GroupSums, q: f64) -> Option<f64> {
    let mut h = Histogram::default();
    for &(b, c) in &g.hist {
        h.add(b, c);
    }
    h.quantile(q)
}

/// Two instances flushing the same series of the same minute add up, in
/// counts and in histograms; a flush while Postgres refuses connections
/// keeps its counts and a later one writes them, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn rollups_of_two_instances_add_up_and_outlive_an_outage() {
    let db = TestDb::new().await;
    let minute = at("2030-03-01T10:07:12Z");
    let key = Some(Uuid::from_u128(42));
    let (a, b) = (Arc::new(Rollups::default()), Arc::new(Rollups::default()));
    let (fa, fb) = (flusher(&a, &db), flusher(&b, &db));
    for _ in 0..90 {
        a.observe(&record(minute, key, 200, 2.0));
    }
    for _ in 0..10 {
        b.observe(&record(minute, key, 502, 300.0));
    }
    fa.flush_once().await.expect("flush a");
    fb.flush_once().await.expect("flush b");
    // The same series again from a: an update, not a second row.
    a.observe(&record(minute, key, 200, 2.0));
    fa.flush_once().await.expect("flush a again");
    let range = (at("2030-03-01T10:00:00Z"), at("2030-03-01T11:00:00Z"));
    let t = totals(&db, range.0, range.1).await;
    assert_eq!((t.total, t.server_errors, t.client_errors), (101, 10, 0));
    assert_eq!(t.response_bytes, 10_100);
    let p50 = quantile(&t, 0.5).expect("p50");
    let p99 = quantile(&t, 0.99).expect("p99");
    assert!((p50 - 2.0).abs() / 2.0 <= 0.1, "p50 {p50}");
    assert!((p99 - 300.0).abs() / 300.0 <= 0.1, "p99 {p99}");
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM request_rollups", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2, "one row per series: 200 and 502");

    // Postgres gone: the flush fails and keeps the counts.
    db.cut_off(-1).await;
    for _ in 0..7 {
        a.observe(&record(minute, key, 200, 2.0));
    }
    a.observe(&record(minute, None, 401, 0.05));
    assert!(fa.flush_once().await.is_err(), "flush with Postgres gone");
    assert_eq!(fa.pending_series().await, 2);
    a.observe(&record(minute, key, 200, 2.0));
    assert!(fa.flush_once().await.is_err(), "still gone");
    db.restore().await;
    let flushed = eventually(Duration::from_secs(10), || async {
        fa.flush_once().await.is_ok()
    })
    .await;
    assert!(flushed, "the flush resumes once Postgres is back");
    assert_eq!(fa.pending_series().await, 0);
    let t = totals(&db, range.0, range.1).await;
    assert_eq!((t.total, t.client_errors), (110, 1), "each request once");
}

/// The background service flushes on its own, the current minute included,
/// and once more on shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn the_flusher_service_makes_traffic_visible_and_flushes_on_shutdown() {
    let db = TestDb::new().await;
    let rollups = Arc::new(Rollups::default());
    let service = Arc::new(flusher(&rollups, &db));
    let (stop, watch) = tokio::sync::watch::channel(false);
    let running = {
        let s = service.clone();
        tokio::spawn(async move { s.start(watch).await })
    };
    let now = Utc::now();
    for _ in 0..5 {
        rollups.observe(&record(now, None, 200, 1.0));
    }
    let range = (
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    );
    let seen = eventually(Duration::from_secs(10), || async {
        totals(&db, range.0, range.1).await.total == 5
    })
    .await;
    assert!(
        seen,
        "the current minute is flushed without waiting for it to end"
    );
    for _ in 0..3 {
        rollups.observe(&record(now, None, 200, 1.0));
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the service ends")
        .expect("join");
    assert!(service.drained.load(Ordering::Acquire));
    assert_eq!(totals(&db, range.0, range.1).await.total, 8);
}

/// One rollup row, written as the flusher would.
#[allow(clippy::too_many_arguments)]
async fn insert_rollup(
    client: &tokio_postgres::Client,
    minute: &str,
    route: &str,
    key: Uuid,
    method: &str,
    status: i16,
    error_code: &str,
    count: i64,
    latency_ms: f64,
) {
    let mut h = Histogram::default();
    for _ in 0..count {
        h.record(latency_ms);
    }
    let client_errors = i64::from((400..500).contains(&status)) * count;
    let server_errors = i64::from((500..600).contains(&status)) * count;
    client
        .execute(
            "INSERT INTO request_rollups VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12)",
            &[
                &at(minute),
                &route,
                &key,
                &method,
                &status,
                &error_code,
                &count,
                &client_errors,
                &server_errors,
                &(count * 100),
                &(count as f64 * latency_ms),
                &h.to_stored(),
            ],
        )
        .await
        .expect("insert rollup");
}

fn keys_of(v: &Value) -> Vec<Value> {
    v["groups"]
        .as_array()
        .map(|g| g.iter().map(|x| x["key"].clone()).collect())
        .unwrap_or_default()
}

fn totals_of(v: &Value) -> Vec<i64> {
    v["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|x| x["total"].as_i64()).collect())
        .unwrap_or_default()
}

fn fields(v: &Value) -> Vec<String> {
    v["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

const RANGE: &str = "from=2030-03-01T10:00:00Z&to=2030-03-01T12:00:00Z";

/// Every `group_by`, the filters, the minute overlap rule, the null
/// sentinels, percentiles, validation errors naming their parameter, and
/// the scopes of both operations.
#[tokio::test(flavor = "multi_thread")]
async fn stats_and_usage_answer_from_rollups_with_every_grouping() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let (_, reader) = gw.create_key("read:requests", &[]).await;
    let (_, key_reader) = gw.create_key("read:keys", &[]).await;
    let (id, _) = gw.create_key("read:echo", &[]).await;
    let k1 = Uuid::parse_str(&id).expect("uuid");
    let nil = Uuid::nil();
    let c = db.client().await;
    insert_rollup(
        &c,
        "2030-03-01T10:00:00Z",
        "echo",
        k1,
        "GET",
        200,
        "",
        10,
        5.0,
    )
    .await;
    insert_rollup(
        &c,
        "2030-03-01T10:01:00Z",
        "echo",
        k1,
        "POST",
        503,
        "upstream_unavailable",
        2,
        40.0,
    )
    .await;
    insert_rollup(
        &c,
        "2030-03-01T10:05:00Z",
        "public",
        nil,
        "GET",
        404,
        "",
        3,
        1.0,
    )
    .await;
    insert_rollup(
        &c,
        "2030-03-01T11:30:00Z",
        "",
        nil,
        "GET",
        401,
        "missing_api_key",
        5,
        0.05,
    )
    .await;
    // Outside the range: the minute before, and the minute at `to`.
    insert_rollup(
        &c,
        "2030-03-01T09:59:00Z",
        "echo",
        k1,
        "GET",
        200,
        "",
        1000,
        1.0,
    )
    .await;
    insert_rollup(
        &c,
        "2030-03-01T12:00:00Z",
        "echo",
        k1,
        "GET",
        200,
        "",
        1000,
        1.0,
    )
    .await;

    let stats = |query: String| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            api(
                gw,
                Method::GET,
                &format!("/api/v1/requests/stats?{query}"),
                &admin,
                None,
            )
            .await
        }
    };
    let (status, v) = stats(RANGE.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["from"], "2030-03-01T10:00:00Z");
    assert_eq!(v["to"], "2030-03-01T12:00:00Z");
    assert_eq!(v["total"], 20);
    assert_eq!(v["client_errors"], 8);
    assert_eq!(v["server_errors"], 2);
    assert_eq!(v["error_rate"], 0.1);
    assert_eq!(v["response_bytes"], 2000);
    assert_eq!(v["groups"], serde_json::json!([]));
    // avg = (10·5 + 2·40 + 3·1 + 5·0.05) / 20
    let avg = v["latency_ms"]["avg"].as_f64().expect("avg");
    assert!((avg - 6.6625).abs() < 0.001, "avg {avg}");
    let p50 = v["latency_ms"]["p50"].as_f64().expect("p50");
    let p95 = v["latency_ms"]["p95"].as_f64().expect("p95");
    assert!(
        (p50 - 5.0).abs() <= 0.5,
        "p50 {p50}: the 10th of 20 is a 5 ms request"
    );
    assert!((p95 - 40.0).abs() <= 4.0, "p95 {p95}");

    let by = |g: &str| stats(format!("{RANGE}&group_by={g}"));
    let (_, v) = by("route").await;
    assert_eq!(
        keys_of(&v),
        [serde_json::json!("echo"), Value::Null, "public".into()]
    );
    assert_eq!(totals_of(&v), [12, 5, 3]);
    assert_eq!(v["groups"][0]["server_errors"], 2);
    assert_eq!(v["groups"][0]["error_rate"], 0.166667);
    let (_, v) = by("key").await;
    assert_eq!(keys_of(&v), [serde_json::json!(id), Value::Null]);
    assert_eq!(totals_of(&v), [12, 8]);
    let (_, v) = by("status").await;
    assert_eq!(
        keys_of(&v),
        [200, 401, 404, 503].map(|s| serde_json::json!(s))
    );
    let (_, v) = by("method").await;
    assert_eq!(keys_of(&v), ["GET", "POST"].map(|s| serde_json::json!(s)));
    assert_eq!(totals_of(&v), [18, 2]);
    let (_, v) = by("error_code").await;
    assert_eq!(
        keys_of(&v),
        [
            Value::Null,
            "missing_api_key".into(),
            "upstream_unavailable".into()
        ]
    );
    assert_eq!(totals_of(&v), [13, 5, 2]);
    let (_, v) = by("minute").await;
    assert_eq!(
        keys_of(&v),
        [
            "2030-03-01T10:00:00Z",
            "2030-03-01T10:01:00Z",
            "2030-03-01T10:05:00Z",
            "2030-03-01T11:30:00Z"
        ]
        .map(|s| serde_json::json!(s))
    );
    let (_, v) = by("hour").await;
    assert_eq!(
        keys_of(&v),
        ["2030-03-01T10:00:00Z", "2030-03-01T11:00:00Z"].map(|s| serde_json::json!(s))
    );
    assert_eq!(totals_of(&v), [15, 5]);
    let (_, v) = by("day").await;
    assert_eq!(keys_of(&v), [serde_json::json!("2030-03-01T00:00:00Z")]);
    assert_eq!(totals_of(&v), [20]);

    // Filters, and a minute counts when it overlaps the range.
    let (_, v) = stats(format!("{RANGE}&key_id={id}")).await;
    assert_eq!(v["total"], 12);
    let (_, v) = stats(format!("{RANGE}&route=public")).await;
    assert_eq!(v["total"], 3);
    let (_, v) = stats("from=2030-03-01T10:00:30Z&to=2030-03-01T10:01:00Z".into()).await;
    assert_eq!(v["total"], 10, "only the 10:00 minute overlaps");
    let (_, v) =
        stats("from=2030-03-02T10:00:00Z&to=2030-03-02T11:00:00Z&group_by=route".into()).await;
    assert_eq!(
        (v["total"].clone(), v["latency_ms"]["p99"].clone()),
        (0.into(), Value::Null)
    );

    // Validation: 400 naming the parameter.
    for (query, field) in [
        ("group_by=week".to_string(), "group_by"),
        ("from=yesterday".into(), "from"),
        ("to=2030-03-01T25:00:00Z".into(), "to"),
        (
            "from=2030-03-01T12:00:00Z&to=2030-03-01T10:00:00Z".into(),
            "from",
        ),
        (
            "from=2030-01-01T00:00:00Z&to=2030-06-01T00:00:00Z".into(),
            "from",
        ),
        (
            "from=2030-03-01T00:00:00Z&to=2030-03-03T00:00:00Z&group_by=minute".into(),
            "group_by",
        ),
        ("key_id=nope".into(), "key_id"),
        ("route=".into(), "route"),
        ("limit=5".into(), "limit"),
    ] {
        let (status, v) = stats(query.clone()).await;
        assert_eq!(
            (status, code(&v)),
            (400, "validation_failed"),
            "{query}: {v}"
        );
        assert_eq!(fields(&v), [field], "{query}");
    }

    // Usage: one key, by hour or day.
    let usage = |key: &str, query: &str| {
        let gw = &gw;
        let (key, query, id) = (key.to_string(), query.to_string(), id.clone());
        async move {
            api(
                gw,
                Method::GET,
                &format!("/api/v1/keys/{id}/usage?{query}"),
                &key,
                None,
            )
            .await
        }
    };
    let (status, v) = usage(&admin, &format!("{RANGE}&group_by=hour")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["key_id"], serde_json::json!(id));
    assert_eq!(
        (v["total"].clone(), v["server_errors"].clone()),
        (12.into(), 2.into())
    );
    assert_eq!(keys_of(&v), [serde_json::json!("2030-03-01T10:00:00Z")]);
    let (_, v) = usage(&admin, RANGE).await;
    assert_eq!(
        keys_of(&v),
        [serde_json::json!("2030-03-01T00:00:00Z")],
        "by day by default"
    );
    let (status, v) = usage(&admin, "group_by=route").await;
    assert_eq!((status, fields(&v)), (400, vec!["group_by".to_string()]));
    for missing in [Uuid::now_v7().to_string(), "not-a-uuid".to_string()] {
        let (status, v) = api(
            &gw,
            Method::GET,
            &format!("/api/v1/keys/{missing}/usage"),
            &admin,
            None,
        )
        .await;
        assert_eq!((status, code(&v)), (404, "not_found"), "{missing}");
    }

    // Scopes: stats need read:requests, usage read:keys; admin has both.
    let (status, _) = api(&gw, Method::GET, "/api/v1/requests/stats", &reader, None).await;
    assert_eq!(status, 200);
    let (status, v) = api(
        &gw,
        Method::GET,
        "/api/v1/requests/stats",
        &key_reader,
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "insufficient_scope"));
    let (status, _) = usage(&key_reader, "").await;
    assert_eq!(status, 200);
    let (status, v) = usage(&reader, "").await;
    assert_eq!((status, code(&v)), (403, "insufficient_scope"));
}

/// Keep the histogram's stored length honest: the layout is part of the
/// schema.
#[test]
fn the_histogram_layout_is_fixed() {
    assert_eq!(histogram::BUCKETS, 93);
    assert_eq!(histogram::bucket_of(1.0), 27);
}

/// The default routes plus `counted`, which the tests send their traffic
/// to: `create_key` polls `/echo`, and those calls must not count.
fn routes_with_counted(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"{}
[[routes]]
name = "counted"
path_prefix = "/counted"
upstream = "echo"
scopes = ["read:echo"]
{extra}"#,
        default_routes(upstream)
    )
}

/// `/requests/stats?…` as `key`, once its `total` is `want` (polled: the
/// rollups are flushed every second); the last answer either way.
async fn stats_when(gw: &Gateway, key: &str, query: &str, want: i64) -> Value {
    let path = format!("/api/v1/requests/stats?{query}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = api(gw, Method::GET, &path, key, None).await;
        if (status == 200 && v["total"] == want) || std::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hit(gw: &Gateway, path: &str, key: Option<&str>, n: usize) {
    for _ in 0..n {
        let mut req = http().get(gw.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.expect("proxy request");
    }
}

/// `sample_rate = 0.1` on two instances of one database: stats count
/// every request sent to either, errors included, while the raw table
/// holds only a sample of the successes (and every error). An instance
/// stopped right after its traffic flushes it on the way out.
#[tokio::test(flavor = "multi_thread")]
async fn sampled_traffic_of_two_instances_is_counted_in_full() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let routes = routes_with_counted(upstream, "[request_logs]\nsample_rate = 0.1\n");
    let a = Gateway::start(&db, Opts::new(routes.clone())).await;
    let mut b = Gateway::start(&db, Opts::new(routes)).await;
    let (_, admin) = a.create_key("admin", &[]).await;
    let (id, key) = a.create_key("read:echo", &[]).await;
    // b learns of the key through NOTIFY; wait until it admits it.
    let known = eventually(Duration::from_secs(5), || async {
        get(&b.url("/echo"), Some(&key)).await.0 == 200
    })
    .await;
    assert!(known, "instance b never learnt the key");

    hit(&a, "/counted/x", Some(&key), 150).await;
    hit(&a, "/counted/x", None, 10).await;
    hit(&b, "/counted/x", Some(&key), 60).await;
    // Stopped at once: the last requests are in only through the final flush.
    b.signal("TERM");
    assert!(
        b.wait_exit(Duration::from_secs(15)).await.is_some(),
        "instance b did not stop"
    );

    let v = stats_when(&a, &admin, "route=counted&group_by=status", 220).await;
    assert_eq!(v["total"], 220, "{v}");
    assert_eq!(v["client_errors"], 10);
    assert_eq!(keys_of(&v), [200, 401].map(|s| serde_json::json!(s)));
    assert_eq!(totals_of(&v), [210, 10]);
    let (_, u) = api(
        &a,
        Method::GET,
        &format!("/api/v1/keys/{id}/usage?group_by=hour"),
        &admin,
        None,
    )
    .await;
    // Usage also counts create_key's and the visibility check's polls.
    assert!(u["total"].as_i64().is_some_and(|t| t >= 210), "{u}");
    let v = stats_when(&a, &admin, &format!("route=counted&key_id={id}"), 210).await;
    assert_eq!(v["total"], 210, "{v}");

    // Raw rows: every 401, and far fewer than the 210 successes.
    let c = db.client().await;
    let raw = |status: i16| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT count(*) FROM request_logs WHERE route = 'counted' AND status = $1",
                &[&status],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
        }
    };
    let errors_logged =
        eventually(Duration::from_secs(10), || async { raw(401).await == 10 }).await;
    assert!(errors_logged, "every 401 is stored: {}", raw(401).await);
    let sampled = raw(200).await;
    assert!(
        sampled < 80,
        "with sample_rate 0.1, {sampled} of 210 successes were stored"
    );
}

/// Live traffic through the proxy: percentiles from a delayed upstream,
/// groupings of real refusals and upstream failures, usage, and totals
/// that survive the raw partitions being dropped.
#[tokio::test(flavor = "multi_thread")]
async fn live_traffic_percentiles_groups_and_dropped_partitions() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(routes_with_counted(upstream, ""))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let (id, key) = gw.create_key("read:echo", &[]).await;

    hit(&gw, "/counted/slow?delay_ms=200", Some(&key), 10).await;
    hit(&gw, "/counted/fast", Some(&key), 10).await;
    hit(&gw, "/counted/fast", None, 5).await;
    hit(&gw, "/dead/x", None, 3).await;

    let v = stats_when(&gw, &admin, "route=counted", 25).await;
    assert_eq!(v["total"], 25, "{v}");
    // 10 of 25 took at least 200 ms (within the histogram's 10 %).
    let p95 = v["latency_ms"]["p95"].as_f64().expect("p95");
    let p50 = v["latency_ms"]["p50"].as_f64().expect("p50");
    let avg = v["latency_ms"]["avg"].as_f64().expect("avg");
    assert!(p95 >= 180.0, "p95 {p95}");
    assert!(p50 <= p95, "p50 {p50} p95 {p95}");
    assert!(avg >= 10.0 * 200.0 / 25.0, "avg {avg}");

    let v = stats_when(&gw, &admin, "route=counted&group_by=key", 25).await;
    assert_eq!(keys_of(&v), [serde_json::json!(id), Value::Null]);
    assert_eq!(totals_of(&v), [20, 5]);
    let v = stats_when(&gw, &admin, "route=counted&group_by=error_code", 25).await;
    assert_eq!(keys_of(&v), [Value::Null, "missing_api_key".into()]);
    let v = stats_when(&gw, &admin, "route=dead", 3).await;
    assert_eq!(
        (v["total"].clone(), v["server_errors"].clone()),
        (3.into(), 3.into())
    );
    assert_eq!(v["error_rate"], 1.0);
    let (_, v) = api(
        &gw,
        Method::GET,
        "/api/v1/requests/stats?group_by=route",
        &admin,
        None,
    )
    .await;
    let routes = keys_of(&v);
    assert!(
        routes.contains(&"counted".into()) && routes.contains(&"dead".into()),
        "{v}"
    );
    let (_, u) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/keys/{id}/usage?group_by=hour"),
        &admin,
        None,
    )
    .await;
    // The key's traffic on `counted`, plus create_key's polls of `/echo`.
    let usage_total = u["total"].as_i64().expect("usage total");
    assert!(usage_total >= 20, "{u}");

    // Raw partitions dropped (retention): stats come from the rollups only.
    let c = db.client().await;
    let parts: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'request_logs'::regclass",
            &[],
        )
        .await
        .expect("partitions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!parts.is_empty());
    for p in &parts {
        c.batch_execute(&format!("DROP TABLE {p}"))
            .await
            .expect("drop partition");
    }
    let (_, v) = api(
        &gw,
        Method::GET,
        "/api/v1/requests/stats?route=counted",
        &admin,
        None,
    )
    .await;
    assert_eq!(v["total"], 25, "after dropping {parts:?}: {v}");
    assert!(v["latency_ms"]["p95"].as_f64().is_some_and(|p| p >= 180.0));
}
