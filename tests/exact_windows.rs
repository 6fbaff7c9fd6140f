//! Exact windows in `redis` mode (issue 12 part 4): every instance counts on
//! Redis's clock, whatever its own says, and a counter whose stored window
//! is ahead of Redis's clock (a failover to a lagging replica) is never
//! reset. Real gateways with skewed clocks (libfaketime), real Redis.

mod common;

use std::time::Duration;

use common::*;
use gateway::limits::{Mode, Period, Subject, Tier};

/// Runs `redis-cli` against the test Redis; its stdout, trimmed.
fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(redis_url())
        .args(args)
        .output()
        .expect("redis-cli (apt package redis-tools; run the tests with scripts/test.sh)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Redis's own clock, Unix ms.
fn redis_now_ms() -> u64 {
    let t = redis_cli(&["TIME"]);
    let mut parts = t
        .split_whitespace()
        .map(|p| p.parse::<u64>().expect("TIME"));
    let (s, us) = (parts.next().expect("seconds"), parts.next().expect("µs"));
    s * 1000 + us / 1000
}

/// Waits until at least `needed` seconds are left in Redis's current
/// minute, so a burst is not split by a window boundary.
async fn room_in_this_minute(needed: u64) {
    let into = redis_now_ms() % 60_000;
    if into + needed * 1000 > 60_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 50)).await;
    }
}

/// A counter written in a window after the one Redis's clock is in now
/// (written by a primary whose clock was ahead, before a failover) keeps
/// its counts: the check is decided as of that window, not reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_window_ahead_of_the_redis_clock_is_not_reset() {
    let store = connected_redis_store(1).await;
    for ahead in [1u64, 30] {
        let tier = Tier {
            subject: Subject::Key(uuid::Uuid::new_v4()),
            period: Period::Minute,
            limit: 5,
        };
        let key = store.key(&tier, None);
        let w = redis_now_ms() / 60_000 + ahead;
        redis_cli(&["HSET", &key, "w", &w.to_string(), "c", "5", "p", "0"]);
        redis_cli(&["PEXPIRE", &key, "600000"]);
        let d = store
            .check(None, &[tier], Mode::Count)
            .await
            .expect("check");
        assert!(!d.admitted, "stored window {ahead} ahead was reset: {d:?}");
        assert_eq!(d.tiers[0].remaining, 0);
        // Retry-After reaches past the stored window's start.
        assert!(
            d.tiers[0].reset_ms > (w * 60_000).saturating_sub(d.now_ms),
            "{d:?}"
        );
        assert_eq!(
            redis_cli(&["HGET", &key, "c"]),
            "5",
            "refused, so not counted"
        );
        // The counter is still that window's, with its counts.
        assert_eq!(redis_cli(&["HGET", &key, "w"]), w.to_string());
    }
}

/// The first JSON log line's timestamp minus the real time it was read at
/// (upper bound), in seconds: how far the gateway's clock is off.
fn log_clock_offset_s(gw: &Gateway) -> f64 {
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("\"timestamp\""))
        .unwrap_or_else(|| panic!("no JSON log line with a timestamp:\n{logs}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    let ts = v["timestamp"].as_str().expect("timestamp");
    let logged = chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");
    (logged.timestamp_millis() - chrono::Utc::now().timestamp_millis()) as f64 / 1000.0
}

/// Two instances whose clocks are 90 s apart (so they always disagree on
/// the minute), one Redis, one key limited to N per minute, half of N
/// through one, then a concurrent burst split across both: exactly N
/// admitted.
#[tokio::test(flavor = "multi_thread")]
async fn instances_with_skewed_clocks_admit_exactly_the_limit() {
    let (Some(behind), Some(ahead)) = (faketime("-1.5"), faketime("+90s")) else {
        panic!("libfaketime is missing: apt-get install faketime (scripts/lib.sh does)");
    };
    let db = TestDb::new().await;
    let upstream = start_upstream_on_own_thread();
    let extra = redis_limits_config(&redis_url(), 5000, "deny");
    let opts = |env: Vec<(String, String)>| {
        let mut o = Opts::new(format!("{}{extra}", default_routes(upstream)));
        o.read_timeout_ms = 20_000;
        o.env = env;
        o
    };
    let a = Gateway::start(&db, opts(behind)).await;
    let b = Gateway::start(&db, opts(ahead)).await;
    // The skew is real: b logs 90 s ahead of a.
    let skew = log_clock_offset_s(&b) - log_clock_offset_s(&a);
    assert!((85.0..=95.0).contains(&skew), "clock skew {skew} s");

    let (_, key) = a.create_key_unseen("read:echo", &["--per-minute", "100"]);
    for gw in [&a, &b] {
        let known = eventually(Duration::from_secs(5), || async {
            get(&gw.admin_url("/api/v1/rate-limits/status"), Some(&key))
                .await
                .0
                == 200
        })
        .await;
        assert!(known, "key never reached the snapshot; log:\n{}", gw.logs());
    }
    room_in_this_minute(20).await;

    // Half the quota through the instance that is behind first: on any
    // clock but Redis's, the instance ahead would find that count in an
    // older window (weighted down, or reset) and admit more than the rest.
    let client = http();
    for i in 0..50 {
        let (status, _, body) = send(client.get(a.url("/echo")).bearer_auth(&key)).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let mut tasks = Vec::new();
    for i in 0..250 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let req = client.get(gw.url("/echo")).bearer_auth(&key);
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        *counts.entry(t.await.expect("task")).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [(200, 50), (429, 200)].into_iter().collect(),
        "status: count after 50 admitted"
    );
}
