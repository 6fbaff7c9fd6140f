//! The request-log read API (`GET /api/v1/requests`, `/requests/{id}`) and
//! `gateway logs tail`, against a real gateway and rows seeded with SQL.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// One row of `request_logs`, with every column.
#[derive(Clone)]
struct Row {
    id: Uuid,
    ts: DateTime<Utc>,
    request_id: String,
    key_id: Option<Uuid>,
    route: Option<&'static str>,
    method: &'static str,
    path: String,
    query: Option<&'static str>,
    status: i16,
    error_code: Option<&'static str>,
    latency_ms: f64,
    upstream_latency_ms: Option<f64>,
    upstream: Option<&'static str>,
    request_bytes: i64,
    response_bytes: i64,
    client_ip: Option<&'static str>,
    user_agent: Option<&'static str>,
    request_body: Option<&'static str>,
    response_body: Option<&'static str>,
}

/// A UUIDv7 whose time is `ts`, as the capture side makes them.
fn v7(ts: DateTime<Utc>) -> Uuid {
    let ms = ts.timestamp_millis() as u64;
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        (ms % 1000) as u32 * 1_000_000,
    ))
}

/// Now, to the microsecond Postgres keeps.
fn now_us() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).expect("time")
}

impl Row {
    /// A plain 200 through route `echo`, `secs_ago` seconds ago.
    fn at(ts: DateTime<Utc>) -> Row {
        Row {
            id: v7(ts),
            ts,
            request_id: Uuid::new_v4().to_string(),
            key_id: None,
            route: Some("echo"),
            method: "GET",
            path: "/echo/x".into(),
            query: None,
            status: 200,
            error_code: None,
            latency_ms: 1.5,
            upstream_latency_ms: Some(1.0),
            upstream: Some("127.0.0.1:3001"),
            request_bytes: 10,
            response_bytes: 20,
            client_ip: Some("127.0.0.1"),
            user_agent: Some("test"),
            request_body: None,
            response_body: None,
        }
    }

    /// The record as the API shows it in a list (no bodies).
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "request_id": self.request_id,
            "timestamp": self.ts,
            "key_id": self.key_id,
            "route": self.route,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": self.latency_ms,
            "upstream_latency_ms": self.upstream_latency_ms,
            "upstream": self.upstream,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
        })
    }
}

/// Inserts `rows`, creating the partitions of their days first.
async fn seed(db: &TestDb, rows: &[Row]) {
    let client = db.client().await;
    let days: BTreeSet<chrono::NaiveDate> = rows.iter().map(|r| r.ts.date_naive()).collect();
    for day in days {
        client
            .execute("SELECT request_logs_ensure_partition($1)", &[&day])
            .await
            .expect("partition");
    }
    let stmt = client
        .prepare(
            "INSERT INTO request_logs (id, ts, request_id, key_id, route, method, path, query, \
             status, error_code, latency_ms, upstream_latency_ms, upstream, request_bytes, \
             response_bytes, client_ip, user_agent, request_body, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             $16::text::inet, $17, $18, $19)",
        )
        .await
        .expect("prepare");
    for r in rows {
        client
            .execute(
                &stmt,
                &[
                    &r.id,
                    &r.ts,
                    &r.request_id,
                    &r.key_id,
                    &r.route,
                    &r.method,
                    &r.path,
                    &r.query,
                    &r.status,
                    &r.error_code,
                    &r.latency_ms,
                    &r.upstream_latency_ms,
                    &r.upstream,
                    &r.request_bytes,
                    &r.response_bytes,
                    &r.client_ip,
                    &r.user_agent,
                    &r.request_body,
                    &r.response_body,
                ],
            )
            .await
            .expect("insert request_logs row");
    }
}

async fn start(db: &TestDb) -> Gateway {
    let upstream = start_upstream().await;
    Gateway::start(db, Opts::new(default_routes(upstream))).await
}

/// `GET /api/v1/requests?<query>` as `key`: status and body.
async fn list(gw: &Gateway, key: &str, query: &str) -> (u16, Value) {
    api(
        gw,
        Method::GET,
        &format!("/api/v1/requests?{query}"),
        key,
        None,
    )
    .await
}

/// The ids of a successful list call, in order.
async fn ids(gw: &Gateway, key: &str, query: &str) -> Vec<Uuid> {
    let (status, body) = list(gw, key, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["id"].as_str().and_then(|s| s.parse().ok()).expect("id"))
        .collect()
}

fn enc(t: DateTime<Utc>) -> String {
    url::form_urlencoded::byte_serialize(t.to_rfc3339().as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_selects_exactly_its_records() {
    let db = TestDb::new().await;
    let gw = start(&db).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let key_a = Uuid::now_v7();
    let key_b = Uuid::now_v7();
    let base = now_us() - chrono::Duration::minutes(10);
    let at = |s: i64| base + chrono::Duration::seconds(s);

    let plain = Row {
        key_id: Some(key_a),
        ..Row::at(at(0))
    };
    let limited = Row {
        key_id: Some(key_a),
        status: 429,
        error_code: Some("rate_limited"),
        upstream_latency_ms: None,
        upstream: None,
        client_ip: Some("203.0.113.7"),
        ..Row::at(at(1))
    };
    let not_found = Row {
        key_id: Some(key_b),
        status: 404,
        path: "/echo/missing".into(),
        ..Row::at(at(2))
    };
    let posted = Row {
        key_id: Some(key_b),
        method: "POST",
        route: Some("public"),
        path: "/public/orders/7".into(),
        query: Some("token=REDACTED&page=2"),
        client_ip: Some("203.0.113.200"),
        ..Row::at(at(3))
    };
    let slow = Row {
        status: 504,
        error_code: Some("upstream_timeout"),
        route: Some("dead"),
        path: "/dead/x".into(),
        latency_ms: 2500.25,
        upstream_latency_ms: None,
        client_ip: Some("2001:db8::5"),
        ..Row::at(at(4))
    };
    let unrouted = Row {
        route: None,
        status: 404,
        error_code: Some("route_not_found"),
        path: "/nowhere_x%y".into(),
        upstream: None,
        upstream_latency_ms: None,
        client_ip: None,
        user_agent: None,
        ..Row::at(at(5))
    };
    // Outside the default window (the last 24 h): only an explicit one finds it.
    let old = Row::at(now_us() - chrono::Duration::days(3));
    let rows = [
        plain.clone(),
        limited.clone(),
        not_found.clone(),
        posted.clone(),
        slow.clone(),
        unrouted.clone(),
        old.clone(),
    ];
    seed(&db, &rows).await;

    // No filter: the last day, newest first, with every field.
    let (status, body) = list(&gw, &admin, "").await;
    assert_eq!(status, 200, "{body}");
    let want: Vec<Value> = [&unrouted, &slow, &posted, &not_found, &limited, &plain]
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(body["data"], Value::Array(want));
    assert_eq!(body["next_cursor"], Value::Null);

    let cases: Vec<(String, Vec<&Row>)> = vec![
        (format!("key_id={key_a}"), vec![&limited, &plain]),
        (format!("key_id={key_b}"), vec![&posted, &not_found]),
        ("route=public".into(), vec![&posted]),
        ("route=dead".into(), vec![&slow]),
        ("method=post".into(), vec![&posted]),
        (
            "method=GET".into(),
            vec![&unrouted, &slow, &not_found, &limited, &plain],
        ),
        ("status=429".into(), vec![&limited]),
        ("status=4xx".into(), vec![&unrouted, &not_found, &limited]),
        ("status=5XX".into(), vec![&slow]),
        ("status=2xx".into(), vec![&posted, &plain]),
        ("error_code=rate_limited".into(), vec![&limited]),
        ("error_code=route_not_found".into(), vec![&unrouted]),
        (
            "path_prefix=/echo".into(),
            vec![&not_found, &limited, &plain],
        ),
        ("path_prefix=/echo/mi".into(), vec![&not_found]),
        ("path_prefix=/public/orders/".into(), vec![&posted]),
        // LIKE wildcards in the prefix are literal.
        ("path_prefix=/nowhere_x%25".into(), vec![&unrouted]),
        ("path_prefix=/nowhere%25y".into(), vec![]),
        ("path_prefix=/nowhere_x_".into(), vec![]),
        ("client_ip=203.0.113.7".into(), vec![&limited]),
        ("client_ip=203.0.113.0/24".into(), vec![&posted, &limited]),
        ("client_ip=2001:db8::/32".into(), vec![&slow]),
        ("client_ip=198.51.100.1".into(), vec![]),
        (format!("request_id={}", posted.request_id), vec![&posted]),
        ("min_latency_ms=2500.25".into(), vec![&slow]),
        ("min_latency_ms=2500.3".into(), vec![]),
        (
            "min_latency_ms=0".into(),
            vec![&unrouted, &slow, &posted, &not_found, &limited, &plain],
        ),
        (
            format!("from={}&to={}", enc(at(1)), enc(at(3))),
            vec![&not_found, &limited],
        ),
        (
            format!(
                "from={}&to={}",
                enc(old.ts - chrono::Duration::hours(1)),
                enc(old.ts + chrono::Duration::hours(1))
            ),
            vec![&old],
        ),
        (
            format!("to={}", enc(old.ts + chrono::Duration::seconds(1))),
            vec![&old],
        ),
        (
            format!("key_id={key_b}&status=4xx&method=GET"),
            vec![&not_found],
        ),
    ];
    for (query, want) in cases {
        let want: Vec<Uuid> = want.iter().map(|r| r.id).collect();
        assert_eq!(ids(&gw, &admin, &query).await, want, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_over_250_records_have_no_duplicates_and_no_gaps() {
    let db = TestDb::new().await;
    let gw = start(&db).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let key = Uuid::now_v7();
    let base = now_us() - chrono::Duration::minutes(30);
    // Three records share each timestamp, so the order within a timestamp
    // (by id) matters for the cursor; every fifth one is another key's.
    let rows: Vec<Row> = (0..250)
        .map(|i| {
            let ts = base + chrono::Duration::milliseconds(i / 3);
            Row {
                key_id: Some(if i % 5 == 0 { Uuid::nil() } else { key }),
                status: if i % 2 == 0 { 200 } else { 503 },
                ..Row::at(ts)
            }
        })
        .collect();
    seed(&db, &rows).await;

    let by_key = format!("key_id={key}&");
    for (filter, limit) in [("", 37), ("", 100), (by_key.as_str(), 9)] {
        let mut want: Vec<&Row> = rows
            .iter()
            .filter(|r| filter.is_empty() || r.key_id == Some(key))
            .collect();
        want.sort_by_key(|r| std::cmp::Reverse((r.ts, r.id)));
        let mut got: Vec<Uuid> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let query = match &cursor {
                Some(c) => format!("{filter}limit={limit}&cursor={c}"),
                None => format!("{filter}limit={limit}"),
            };
            let (status, body) = list(&gw, &admin, &query).await;
            assert_eq!(status, 200, "{query}: {body}");
            let data = body["data"].as_array().expect("data");
            assert!(data.len() <= limit, "page larger than limit");
            got.extend(
                data.iter()
                    .map(|r| r["id"].as_str().unwrap().parse::<Uuid>().unwrap()),
            );
            pages += 1;
            assert!(pages <= 300, "pagination does not end");
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let unique: HashSet<&Uuid> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "duplicates across pages ({filter})"
        );
        let want_ids: Vec<Uuid> = want.iter().map(|r| r.id).collect();
        assert_eq!(got, want_ids, "gaps or wrong order ({filter}limit={limit})");
        assert_eq!(pages, want.len().div_ceil(limit), "{filter}limit={limit}");
    }

    // A cursor keeps the first page's filters only if they are passed
    // again: the status filter narrows the rest of the walk.
    let (_, first) = list(&gw, &admin, "limit=10").await;
    let c = first["next_cursor"].as_str().expect("cursor").to_string();
    let rest = ids(&gw, &admin, &format!("limit=100&status=5xx&cursor={c}")).await;
    assert!(!rest.is_empty());
    let statuses: HashSet<i16> = rows
        .iter()
        .filter(|r| rest.contains(&r.id))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, HashSet::from([503]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_filters_are_400_naming_the_parameter() {
    let db = TestDb::new().await;
    let gw = start(&db).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let cases = [
        ("status=6xx", "status"),
        ("status=four", "status"),
        ("key_id=not-a-uuid", "key_id"),
        ("from=yesterday", "from"),
        ("to=2030-02-30T00:00:00Z", "to"),
        ("from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", "from"),
        ("from=2030-01-01T00:00:00Z&to=2030-02-01T00:00:01Z", "from"),
        ("limit=101", "limit"),
        ("cursor=nope", "cursor"),
        ("client_ip=999.0.0.1", "client_ip"),
        ("min_latency_ms=-5", "min_latency_ms"),
        ("path_prefix=echo", "path_prefix"),
        ("colour=red", "colour"),
    ];
    for (query, field) in cases {
        let (status, body) = list(&gw, &admin, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(code(&body), "validation_failed", "{query}");
        let fields: Vec<&str> = body["error"]["details"]
            .as_array()
            .expect("details")
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert_eq!(fields, [field], "{query}: {body}");
    }
    // 31 days exactly is fine.
    let (status, body) = list(
        &gw,
        &admin,
        "from=2030-01-01T00:00:00Z&to=2030-02-01T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_request_logs_needs_read_requests() {
    let db = TestDb::new().await;
    let gw = start(&db).await;
    let row = Row::at(now_us() - chrono::Duration::seconds(5));
    seed(&db, std::slice::from_ref(&row)).await;
    let one = format!("/api/v1/requests/{}", row.id);
    let (_, admin) = gw.create_key("admin", &[]).await;
    let (_, reader) = gw.create_key("read:requests", &[]).await;
    let (_, wildcard) = gw.create_key("read:*", &[]).await;
    let (_, keys_only) = gw.create_key("read:keys,write:keys", &[]).await;
    for key in [&admin, &reader, &wildcard] {
        assert_eq!(ids(&gw, key, "").await, [row.id]);
        let (status, body) = api(&gw, Method::GET, &one, key, None).await;
        assert_eq!(status, 200, "{body}");
    }
    for path in ["/api/v1/requests", one.as_str()] {
        let (status, body) = api(&gw, Method::GET, path, &keys_only, None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(code(&body), "insufficient_scope");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("read:requests")),
            "{body}"
        );
        let (status, body) = api(&gw, Method::GET, path, "gw_live_nope", None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_record_by_id_with_its_bodies() {
    let db = TestDb::new().await;
    let gw = start(&db).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let with_bodies = Row {
        method: "POST",
        request_body: Some(r#"{"password":"REDACTED","item":3}"#),
        response_body: Some(r#"{"ok":true}"#),
        ..Row::at(now_us() - chrono::Duration::seconds(30))
    };
    let plain = Row::at(now_us() - chrono::Duration::seconds(20));
    seed(&db, &[with_bodies.clone(), plain.clone()]).await;

    let get = |id: String| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            api(
                gw,
                Method::GET,
                &format!("/api/v1/requests/{id}"),
                &admin,
                None,
            )
            .await
        }
    };
    let (status, body) = get(with_bodies.id.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let mut want = with_bodies.json();
    want["request_body"] = json!(with_bodies.request_body);
    want["response_body"] = json!(with_bodies.response_body);
    assert_eq!(body, want);
    // Absent bodies are left out, not null.
    let (status, body) = get(plain.id.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, plain.json());
    // The list never carries bodies.
    let (_, page) = list(&gw, &admin, "").await;
    assert_eq!(page["data"][1], with_bodies.json());

    // Unknown, of another UUID version, or not a UUID: 404 like /keys/{id}.
    for id in [
        v7(now_us()).to_string(),
        Uuid::new_v4().to_string(),
        "not-a-uuid".to_string(),
        with_bodies.id.simple().to_string().to_uppercase(),
    ] {
        let (status, body) = get(id.clone()).await;
        let expect = if id.len() == 32 { 200 } else { 404 };
        assert_eq!(status, expect, "{id}: {body}");
        if expect == 404 {
            assert_eq!(code(&body), "not_found", "{id}");
        }
    }
}

/// `gateway logs tail` as a child process; its stdout lines arrive on a channel.
struct Tail {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(gw: &Gateway, args: &[&str]) -> Tail {
        let mut child = command()
            .args(["logs", "tail"])
            .args(args)
            .arg("-c")
            .arg(&gw.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway logs tail");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines }
    }

    /// Lines printed until `n` have arrived or `limit` passes.
    fn take(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn printed_ids(lines: &[String]) -> Vec<Uuid> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            v["id"].as_str().and_then(|s| s.parse().ok()).expect("id")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_tail_prints_each_new_record_once() {
    let db = TestDb::new().await;
    let gw = start(&db).await;
    let key = Uuid::now_v7();
    // There before the tail starts: not printed without --since.
    let before = Row {
        key_id: Some(key),
        ..Row::at(now_us() - chrono::Duration::seconds(2))
    };
    seed(&db, std::slice::from_ref(&before)).await;
    let tail = Tail::start(&gw, &["--json", "--key", &key.to_string()]);
    let plain = Tail::start(&gw, &["--route", "public"]);
    // Let both take their starting point.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let first = Row {
        key_id: Some(key),
        ..Row::at(now_us())
    };
    let other_key = Row::at(now_us());
    seed(&db, &[first.clone(), other_key]).await;
    let got = tail.take(1, Duration::from_secs(10));
    assert_eq!(printed_ids(&got), [first.id]);
    assert_eq!(
        serde_json::from_str::<Value>(&got[0]).expect("json"),
        first.json()
    );

    // A record written late, stamped before the last one printed (a long
    // request), still shows, once; the earlier ones are not repeated.
    let late = Row {
        key_id: Some(key),
        ..Row::at(first.ts - chrono::Duration::seconds(3))
    };
    let next = Row {
        key_id: Some(key),
        ..Row::at(now_us())
    };
    seed(&db, &[late.clone(), next.clone()]).await;
    let got = tail.take(2, Duration::from_secs(10));
    assert_eq!(printed_ids(&got), [late.id, next.id]);
    // Several more polls pass: nothing is printed twice.
    let again = tail.take(1, Duration::from_millis(2500));
    assert!(again.is_empty(), "printed again: {again:?}");

    // The text form: one line with the status, method, path and query.
    let routed = Row {
        route: Some("public"),
        path: "/public/a".into(),
        query: Some("page=2"),
        status: 201,
        method: "POST",
        ..Row::at(now_us())
    };
    seed(&db, std::slice::from_ref(&routed)).await;
    let got = plain.take(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains(" 201 POST /public/a?page=2 ")
            && got[0].contains(" route=public ")
            && got[0].contains(&format!("request_id={}", routed.request_id)),
        "{}",
        got[0]
    );

    // --since prints what is already there, oldest first; --limit stops.
    let out = gw.cli(&[
        "logs",
        "tail",
        "--json",
        "--key",
        &key.to_string(),
        "--since",
        "5m",
        "--limit",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed_ids(&lines), [before.id, late.id, first.id, next.id]);

    let bad = gw.cli(&["logs", "tail", "--key", "nope"]);
    assert!(!bad.status.success());
}
