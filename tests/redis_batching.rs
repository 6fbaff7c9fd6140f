//! Natural batching of Redis checks (issue 16): many requests' checks in
//! one `EVALSHA`, each still checked and counted atomically, in order.
//! Real Redis, real gateways.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway::config::RedisConfig;
use gateway::limits::redis::{RedisStore, SCRIPT};
use gateway::limits::{Mode, Period, Subject, Tier};

/// Runs `redis-cli` against the test Redis; its stdout lines.
fn redis_cli(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(redis_url())
        .args(args)
        .output()
        .expect("redis-cli (apt package redis-server; run the tests with scripts/test.sh)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// One script call carrying `requests` (mode, [(key, limit)]), all tiers
/// per minute; the `admitted` flag of each request.
fn eval_batch(requests: &[(i64, Vec<(&str, u32)>)]) -> Vec<i64> {
    let mut keys = Vec::new();
    let mut args = vec![requests.len().to_string()];
    for (mode, tiers) in requests {
        args.push(mode.to_string());
        args.push(tiers.len().to_string());
        for (key, limit) in tiers {
            keys.push(key.to_string());
            args.push(limit.to_string());
            args.push("60000".into());
        }
    }
    let n = keys.len().to_string();
    let mut cmd: Vec<&str> = vec!["EVAL", SCRIPT, &n];
    cmd.extend(keys.iter().map(String::as_str));
    cmd.extend(args.iter().map(String::as_str));
    let out: Vec<i64> = redis_cli(&cmd)
        .iter()
        .map(|l| l.parse().expect("integer reply"))
        .collect();
    // {now, (admitted, (c, p, at) × tiers) × requests}
    let mut at = 1;
    requests
        .iter()
        .map(|(_, tiers)| {
            let admitted = out[at];
            at += 1 + 3 * tiers.len();
            admitted
        })
        .collect()
}

/// Waits until at least `needed` seconds are left in Redis's current
/// minute, so a burst is not split by a window boundary.
async fn room_in_this_minute(needed: u64) {
    let t = redis_cli(&["TIME"]);
    let now_ms = t[0].parse::<u64>().expect("TIME") * 1000;
    let into = now_ms % 60_000;
    if into + needed * 1000 > 60_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 1_050)).await;
    }
}

/// In one call, request r sees the counts of requests 1..r-1: with room
/// for 3, exactly the first 3 of 6 are admitted; a request refused by one
/// tier counts in none; a peek counts nothing. A script that checked
/// every request before counting any would admit all six.
#[tokio::test(flavor = "multi_thread")]
async fn one_call_checks_and_counts_each_request_in_order() {
    let p = redis_prefix();
    let (a, b) = (format!("{p}{{k:a}}:minute"), format!("{p}{{k:a}}:hour"));
    room_in_this_minute(5).await;
    let count = |limit_b| (1, vec![(a.as_str(), 3), (b.as_str(), limit_b)]);
    let admitted = eval_batch(&[
        (0, vec![(a.as_str(), 3)]),
        count(100),
        count(100),
        // Refused by its second tier: must not count in the first.
        count(0),
        count(100),
        count(100),
        count(100),
        count(100),
    ]);
    assert_eq!(admitted, [1, 1, 1, 0, 1, 0, 0, 0]);
    assert_eq!(redis_cli(&["HGET", &a, "c"]), ["3"]);
    assert_eq!(redis_cli(&["HGET", &b, "c"]), ["3"]);
}

/// Hundreds of concurrent checks on one key, through the batching store:
/// exactly the limit is admitted, with one and with several connections.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_checks_through_batches_admit_exactly_the_limit() {
    for connections in [1, 3] {
        let store = connected_redis_store(connections).await;
        let tier = Tier {
            subject: Subject::Key(uuid::Uuid::new_v4()),
            period: Period::Minute,
            limit: 150,
        };
        room_in_this_minute(10).await;
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.check(None, &[tier], Mode::Count).await })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            if t.await.expect("task").expect("check").admitted {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 150, "{connections} connection(s)");
        let after = store.check(None, &[tier], Mode::Peek).await.expect("peek");
        assert_eq!(after.tiers[0].remaining, 0);
    }
}

/// Two gateways, one key with a limit of 150, 500 concurrent requests
/// split between them: exactly 150 admitted, and the calls did carry
/// several requests each (so this exercised batching).
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_batching_admit_exactly_the_limit() {
    let db = TestDb::new().await;
    let upstream = start_upstream_on_own_thread();
    let extra = redis_limits_config(&redis_url(), 5000, "deny");
    let opts = || {
        let mut o = Opts::new(format!("{}{extra}", default_routes(upstream)));
        o.read_timeout_ms = 20_000;
        o
    };
    let a = Gateway::start(&db, opts()).await;
    let b = Gateway::start(&db, opts()).await;
    let (_, key) = a.create_key_unseen("read:echo", &["--per-minute", "150"]);
    wait_known(&a, &key).await;
    wait_known(&b, &key).await;
    room_in_this_minute(20).await;

    let client = http();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            let req = client.get(gw.url("/echo")).bearer_auth(&key);
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        *counts.entry(t.await.expect("task")).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [(200, 150), (429, 350)].into_iter().collect(),
        "status: count"
    );
    let mut calls = 0.0;
    let mut carried = 0.0;
    for gw in [&a, &b] {
        let m = metrics(gw).await;
        calls += sample(&m, "gateway_rate_limit_batch_size_count").expect("batch histogram");
        carried += sample(&m, "gateway_rate_limit_batch_size_sum").expect("batch histogram");
    }
    // Key lookups (`wait_known`) are calls too.
    assert!(carried >= 500.0, "{carried} requests in {calls} calls");
    assert!(
        calls < carried,
        "no call carried more than one request: {carried} in {calls}"
    );
}

/// A `redis-server` of the test's own, to stop and continue.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (run the tests with scripts/test.sh)");
        let up = eventually(Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "redis-server did not start");
        OwnRedis { child, port }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis hangs (SIGSTOP): one batch is in flight (another every 500 ms,
/// when the one before timed out), the queue holds at most `MAX_QUEUED`
/// checks and the rest fail at once as `queue_full`; the queued checks
/// time out and, never sent, are not counted once Redis answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_bounds_the_queue_and_timed_out_checks_do_not_count() {
    use gateway::limits::batch::{MAX_BATCH, MAX_QUEUED};
    use gateway::limits::BackendError;

    let redis = OwnRedis::start().await;
    let cfg = RedisConfig {
        url: format!("redis://127.0.0.1:{}", redis.port),
        timeout: Duration::from_millis(500),
        key_prefix: redis_prefix(),
        cluster: false,
        connections: 1,
    };
    let store = Arc::new(RedisStore::new(&cfg).expect("store"));
    let s = store.clone();
    tokio::spawn(async move { s.keep_connected().await });
    let up = eventually(Duration::from_secs(5), || async { store.is_connected() }).await;
    assert!(up, "no connection");
    let tier = Tier {
        subject: Subject::Key(uuid::Uuid::new_v4()),
        period: Period::Minute,
        limit: 1_000_000,
    };
    room_in_this_minute(10).await;
    assert!(store.check(None, &[tier], Mode::Count).await.is_ok());

    redis.signal("STOP");
    // Room for a few batches sent while the checks are being submitted.
    let extra = 8 * MAX_BATCH;
    let total = MAX_QUEUED + MAX_BATCH + extra;
    let tasks: Vec<_> = (0..total)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.check(None, &[tier], Mode::Count).await })
        })
        .collect();
    let (mut full, mut timed_out) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Err(BackendError::QueueFull) => full += 1,
            Err(BackendError::Timeout(_)) => timed_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(full > 0, "{full} queue_full, {timed_out} timeouts");
    assert_eq!(full + timed_out, total);

    redis.signal("CONT");
    // Only the batches sent while Redis hung (one per 500 ms) may have
    // counted; the queued rest timed out and was dropped unsent.
    let counted = eventually(Duration::from_secs(10), || async {
        store.check(None, &[tier], Mode::Peek).await.is_ok()
    })
    .await;
    assert!(counted, "Redis never answered again");
    let d = store.check(None, &[tier], Mode::Peek).await.expect("peek");
    let used = 1_000_000 - d.tiers[0].remaining as usize;
    assert!(
        (1..MAX_QUEUED / 2).contains(&used),
        "{used} of {timed_out} timed-out checks counted: queued checks were sent"
    );
}
