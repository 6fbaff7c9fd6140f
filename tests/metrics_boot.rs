//! Every metric is in `/metrics` from start-up, zero-valued, before any
//! traffic: a dashboard panel or an alert on a series that does not exist
//! yet shows "no data" and never fires (issue 15). Also the DB pool and
//! process metrics.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Every metric name the gateway's code emits. The names used by the
/// dashboard and the alert rules are added from their files, parsed below.
const EMITTED: &[&str] = &[
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_upstream_duration_seconds",
    "gateway_auth_failures_total",
    "gateway_admin_auth_failures_total",
    "gateway_admin_visibility_timeouts_total",
    "gateway_audit_dropped_total",
    "gateway_audit_denials_recorded_total",
    "gateway_key_snapshot_keys",
    "gateway_key_snapshot_seconds_since_reload",
    "gateway_key_snapshot_seconds_since_change",
    "gateway_key_snapshot_seconds_since_confirmed",
    "gateway_key_listener_connected",
    "gateway_key_listener_errors_total",
    "gateway_key_snapshot_load_seconds",
    "gateway_key_snapshot_apply_seconds",
    "gateway_key_miss_lookups_total",
    "gateway_key_expiry_events_total",
    "gateway_keys_purged_total",
    "gateway_queue_dropped_total",
    "gateway_last_used_flushed_total",
    "gateway_upstream_marked_down_total",
    "gateway_rate_limited_total",
    "gateway_forwarded_for_unparseable_total",
    "gateway_rate_limit_backend_errors_total",
    "gateway_rate_limit_backend_duration_seconds",
    "gateway_rate_limit_batch_size",
    "gateway_rate_limit_fallback_total",
    "gateway_rate_limit_local_counters",
    "gateway_rate_limit_evictions_total",
    "gateway_request_logs_written_total",
    "gateway_request_logs_dropped_total",
    "gateway_request_log_queue_depth",
    "gateway_request_log_batch_size",
    "gateway_request_log_batch_seconds",
    "gateway_request_log_partitions_dropped_total",
    "gateway_request_rollups_deleted_total",
    "gateway_request_rollups_dropped_total",
    "gateway_request_rollup_flushes_total",
    "gateway_request_rollup_rows_total",
    "gateway_request_rollup_pending_series",
    "gateway_housekeeping_runs_total",
    "gateway_webhook_deliveries_total",
    "gateway_webhook_delivery_seconds",
    "gateway_webhook_pending",
    "gateway_webhook_oldest_due_seconds",
    "gateway_database_up",
    "gateway_db_pool_max_size",
    "gateway_db_pool_size",
    "gateway_db_pool_in_use",
    "gateway_db_pool_waiting",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
];

/// Series with their label values, at zero from start-up: one per label
/// value the code emits (a few of each list; the lists are shared by the
/// call sites and the registration, so one per list proves the wiring).
const ZERO_SERIES: &[&str] = &[
    r#"gateway_auth_failures_total{reason="unknown"}"#,
    r#"gateway_auth_failures_total{reason="insufficient_scope"}"#,
    r#"gateway_auth_failures_total{reason="bad_checksum"}"#,
    r#"gateway_admin_auth_failures_total{reason="rate_limited"}"#,
    r#"gateway_rate_limited_total{tier="minute",route="echo"}"#,
    r#"gateway_rate_limited_total{tier="ip-minute",route="public"}"#,
    r#"gateway_rate_limited_total{tier="auth-failures-minute",route="admin"}"#,
    r#"gateway_requests_total{route="echo",method="GET",status="200"}"#,
    r#"gateway_requests_total{route="none",method="GET",status="200"}"#,
    r#"gateway_request_duration_seconds_count{route="dead"}"#,
    r#"gateway_upstream_duration_seconds_count{route="public"}"#,
    r#"gateway_upstream_marked_down_total{upstream="dead"}"#,
    r#"gateway_request_logs_dropped_total{reason="queue_full"}"#,
    r#"gateway_webhook_deliveries_total{outcome="timeout"}"#,
    r#"gateway_rate_limit_backend_errors_total{kind="timeout"}"#,
    r#"gateway_rate_limit_fallback_total{decision="deny"}"#,
    r#"gateway_rate_limit_evictions_total{class="ip"}"#,
    r#"gateway_audit_dropped_total{reason="write_failed"}"#,
    r#"gateway_key_miss_lookups_total{result="error"}"#,
    r#"gateway_key_expiry_events_total{type="api_key.expired"}"#,
    r#"gateway_housekeeping_runs_total{job="purge_expired_keys",outcome="error"}"#,
    r#"gateway_request_rollups_dropped_total{reason="series_cap"}"#,
    r#"gateway_request_rollup_flushes_total{result="error"}"#,
    r#"gateway_queue_dropped_total{queue="last_used"}"#,
    "gateway_key_listener_errors_total",
    "gateway_rate_limit_backend_duration_seconds_count",
    "gateway_request_log_batch_seconds_count",
];

/// Metric names in `text` matching `gateway_[a-z0-9_]+` or `process_[a-z_]+`,
/// with a histogram's `_bucket`/`_sum`/`_count` suffix removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["gateway_", "process_"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let start = from + i;
            let word_start = start == 0 || {
                let b = bytes[start - 1];
                !(b.is_ascii_alphanumeric() || b == b'_')
            };
            let end = start
                + text[start..]
                    .find(|c: char| {
                        !(c.is_ascii_lowercase()
                            || c == '_'
                            || (prefix == "gateway_" && c.is_ascii_digit()))
                    })
                    .unwrap_or(text.len() - start);
            from = end.max(start + 1);
            if !word_start {
                continue;
            }
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(n) = name.strip_suffix(suffix) {
                    name = n;
                }
            }
            if name.len() > prefix.len() {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The exported metric names of a scrape (histogram suffixes stripped).
fn scraped_names(text: &str) -> BTreeSet<String> {
    metric_names(
        &text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The names the alert rules and the dashboard use.
fn names_used_by_deploy() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/gateway.json",
    ] {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
        let found = metric_names(&text);
        assert!(found.len() >= 5, "{file}: only {found:?}; parser broken?");
        names.extend(found);
    }
    names
}

#[test]
fn metric_names_are_parsed_from_promql() {
    let names = metric_names(
        r#"sum(rate(gateway_requests_total{status=~"5.."}[5m])) / histogram_quantile(0.99, rate(gateway_request_duration_seconds_bucket[5m])) + process_cpu_seconds_total and my_gateway_x"#,
    );
    let want: BTreeSet<String> = [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "process_cpu_seconds_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
}

#[tokio::test]
async fn every_metric_is_exported_from_start_up_at_zero() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    // No traffic at all: only the scrape.
    let text = metrics(&gw).await;

    let scraped = scraped_names(&text);
    let mut expected: BTreeSet<String> = EMITTED.iter().map(|s| s.to_string()).collect();
    expected.extend(names_used_by_deploy());
    let missing: Vec<&String> = expected.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "metrics missing from /metrics at start-up: {missing:?}\n--- scrape ---\n{text}"
    );

    for series in ZERO_SERIES {
        assert_eq!(
            sample(&text, series),
            Some(0.0),
            "{series} is not exported at 0 from start-up\n--- scrape ---\n{text}"
        );
    }

    // The pools as configured: [database] pool_size = 2 in the harness.
    assert_eq!(
        sample(&text, r#"gateway_db_pool_max_size{pool="main"}"#),
        Some(2.0),
        "{text}"
    );
    for pool in ["key_lookups", "webhooks"] {
        let max = sample(
            &text,
            &format!(r#"gateway_db_pool_max_size{{pool="{pool}"}}"#),
        );
        assert!(max.is_some_and(|m| m >= 1.0), "pool {pool}: {text}");
    }
    // The process metrics hold real values.
    for (series, at_least) in [
        ("process_resident_memory_bytes", 1_000_000.0),
        ("process_open_fds", 3.0),
        ("process_max_fds", 1.0),
        ("process_start_time_seconds", 1_600_000_000.0),
        ("process_threads", 1.0),
    ] {
        let v = sample(&text, series);
        assert!(
            v.is_some_and(|v| v >= at_least),
            "{series} = {v:?}, want >= {at_least}"
        );
    }
}

#[tokio::test]
async fn db_pool_gauges_follow_the_pool() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    // An admin call checks a connection out of the main pool and returns
    // it: the pool keeps it open, and the sampler (every few seconds) sees
    // one open connection that is not in use.
    let (status, _) = api(&gw, reqwest::Method::GET, "/api/v1/keys", &admin, None).await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (seen, last) = loop {
        let text = metrics(&gw).await;
        let size = sample(&text, r#"gateway_db_pool_size{pool="main"}"#).unwrap_or(0.0);
        let in_use = sample(&text, r#"gateway_db_pool_in_use{pool="main"}"#);
        let waiting = sample(&text, r#"gateway_db_pool_waiting{pool="main"}"#);
        let ok =
            (1.0..=2.0).contains(&size) && in_use.is_some_and(|u| u <= size) && waiting.is_some();
        if ok || std::time::Instant::now() >= deadline {
            break (ok, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(seen, "main pool never showed its open connection:\n{last}");
}
