//! Rate limits as a client sees them: counting down, 429 with the tier
//! and Retry-After, exact limits across two instances sharing Redis,
//! refused requests not counting, Redis outages under `allow` and `deny`,
//! per-IP tiers, the brute-force guard, and overrides set through the
//! admin API. Real gateways, real Postgres, real Redis.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

/// The harness's routes (`echo` needs a key with `read:echo`, `public` is
/// anonymous) in front of `upstream`, plus `extra` TOML.
fn config(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!("{}{extra}", default_routes(upstream))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Waits until at least `needed` seconds are left in the current minute,
/// so a burst is not split by a window boundary.
async fn room_in_this_minute(needed: u64) {
    let into = unix_ms() % 60_000;
    if into + needed * 1000 > 60_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 50)).await;
    }
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> u64 {
    header(h, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {h:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_counts_down_to_zero_then_gets_429_naming_the_tier() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream, ""))).await;
    let (_, key) = gw.create_key_unseen("read:echo", &["--per-minute", "5"]);
    wait_known(&gw, &key).await;
    room_in_this_minute(10).await;

    let mut seen = Vec::new();
    // The wall clock just before and just after each request brackets the
    // gateway's clock when it answered (same machine), however slow it was.
    let mut brackets = Vec::new();
    for _ in 0..7 {
        let sent = unix_ms();
        let (status, h, body) = get(&gw.url("/echo"), Some(&key)).await;
        brackets.push((sent, unix_ms()));
        seen.push((status, h, body));
    }
    let statuses: Vec<u16> = seen.iter().map(|s| s.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let remaining: Vec<&str> = seen
        .iter()
        .map(|s| header(&s.1, "x-ratelimit-remaining"))
        .collect();
    assert_eq!(remaining, ["4", "3", "2", "1", "0", "0", "0"]);
    for ((status, h, body), (sent, received)) in seen.iter().zip(&brackets) {
        assert_eq!(header(h, "x-ratelimit-limit"), "5", "{status} {h:?}");
        let policy = header(h, "ratelimit-policy");
        assert!(
            policy.starts_with(
                "\"minute\";q=5;w=60, \"hour\";q=20000;w=3600, \"day\";q=200000;w=86400"
            ),
            "{policy}"
        );
        assert!(header(h, "ratelimit").starts_with("\"minute\";r="), "{h:?}");
        if *status == 429 {
            assert_eq!(code(body), "rate_limited");
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains("`minute`"), "{message}");
            let retry = header_u64(h, "retry-after");
            assert!((1..=72).contains(&retry), "Retry-After {retry}");
            // Both round up, so X-RateLimit-Reset - Retry-After is within
            // a second of the gateway's clock, which lies in the bracket.
            let reset = header_u64(h, "x-ratelimit-reset");
            let at_ms = (reset - retry) * 1000;
            assert!(
                at_ms + 1000 > *sent && at_ms < received + 1000,
                "X-RateLimit-Reset {reset} - Retry-After {retry} is not the time of \
                 the answer, between {sent} and {received} ms"
            );
            assert_eq!(header(h, "ratelimit"), format!("\"minute\";r=0;t={retry}"));
            assert!(!h["x-request-id"].is_empty());
        } else {
            assert!(h.get("retry-after").is_none());
        }
    }
    let m = metrics(&gw).await;
    assert_eq!(
        sample(
            &m,
            r#"gateway_rate_limited_total{tier="minute",route="echo"}"#
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sharing_redis_admit_exactly_the_limit() {
    let db = TestDb::new().await;
    let upstream = start_upstream_on_own_thread();
    // A generous timeout and `deny`: this test is about exactness, so a
    // slow call must show up as a 503, never as an uncounted admission.
    let extra = redis_limits_config(&redis_url(), 5_000, "deny");
    let opts = || {
        let mut o = Opts::new(config(upstream, &extra));
        o.read_timeout_ms = 20_000;
        o
    };
    let a = Gateway::start(&db, opts()).await;
    let b = Gateway::start(&db, opts()).await;
    let (_, key) = a.create_key_unseen("read:echo", &["--per-minute", "200"]);
    wait_known(&a, &key).await;
    wait_known(&b, &key).await;
    room_in_this_minute(20).await;

    let client = http();
    let mut tasks = Vec::new();
    for i in 0..600 {
        let url = if i % 2 == 0 {
            a.url("/echo")
        } else {
            b.url("/echo")
        };
        let req = client.get(url).bearer_auth(&key);
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
        [(200, 200), (429, 400)].into_iter().collect(),
        "status: count"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_do_not_count() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let extra = redis_limits_config(&redis_url(), 5_000, "deny");
    let gw = Gateway::start(&db, Opts::new(config(upstream, &extra))).await;
    let (_, key) = gw.create_key_unseen("read:echo", &["--per-minute", "10"]);
    wait_known(&gw, &key).await;
    room_in_this_minute(5).await;
    for i in 0..10 {
        assert_eq!(
            get(&gw.url("/echo"), Some(&key)).await.0,
            200,
            "request {i}"
        );
    }
    // Keep knocking while full. `X-RateLimit-Reset` is the moment room
    // returns, in Unix seconds on the backend's clock (Redis `TIME`),
    // computed from the counters: a refusal that counted would push it
    // later. So every refusal names the same moment, and the key gets
    // through at that moment. No client-side clock is read.
    let (status, h, _) = get(&gw.url("/echo"), Some(&key)).await;
    assert_eq!(status, 429);
    let promised = header_u64(&h, "x-ratelimit-reset");
    let retry = header_u64(&h, "retry-after");
    let mut refused = 1;
    let knocking = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (status, h, body) = get(&gw.url("/echo"), Some(&key)).await;
            match status {
                429 => refused += 1,
                200 => break h,
                other => panic!("unexpected {other}: {body}"),
            }
            assert_eq!(
                header_u64(&h, "x-ratelimit-reset"),
                promised,
                "refusal {refused} moved the moment room returns: refusals are counted"
            );
        }
    };
    // Only catches a key that is never admitted again.
    let admitted = tokio::time::timeout(Duration::from_secs(retry + 60), knocking)
        .await
        .unwrap_or_else(|_| panic!("still refused {retry} + 60 s after Retry-After {retry}"));
    assert!(refused > 10, "only {refused} refusals");
    // The backend's clock at admission, from the answer's own headers:
    // X-RateLimit-Reset minus its reset-in-seconds `t`, each rounded up,
    // is within a second of it. Room returned in the second before
    // `promised` at the earliest.
    let reset_at = header_u64(&admitted, "x-ratelimit-reset");
    let reset_in: u64 = header(&admitted, "ratelimit")
        .rsplit(";t=")
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no t= in RateLimit: {admitted:?}"));
    assert!(
        reset_at - reset_in + 1 >= promised,
        "admitted at about {} s, before room returned at {promised} s",
        reset_at - reset_in
    );
}

/// A Redis server of the test's own, to kill, stop and restart.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    /// A port and a directory for a Redis that is not running yet.
    fn reserve() -> OwnRedis {
        OwnRedis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn start() -> OwnRedis {
        let mut r = OwnRedis::reserve();
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run the tests with scripts/test.sh)");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill -{sig}");
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

async fn health(gw: &Gateway) -> (u16, Value) {
    let (status, _, body) = get(&gw.admin_url("/health"), None).await;
    (status, body)
}

/// The `kind` labels of `gateway_rate_limit_backend_errors_total`.
const BACKEND_ERROR_KINDS: [&str; 3] = ["timeout", "disconnected", "error"];

/// Sends `n` requests with `key` while the rate-limit backend fails. Each
/// must be decided by `on_backend_error` after exactly one failed backend
/// call: 200 without rate-limit headers (`allow`) or 503
/// `rate_limiter_unavailable` with `Retry-After: 1` (`deny`), and one
/// `gateway_rate_limit_fallback_total` of that decision. Returns the error
/// kind of each request.
///
/// No durations: how a call ended is its kind. `timeout` is the
/// `redis.timeout_ms` bound, `disconnected` failing at once while the
/// connection is down; a call left to the client library's own 2 s
/// backstop would be `error`. The HTTP client's 20 s timeout still fails a
/// request that hangs.
async fn each_falls_back(gw: &Gateway, key: &str, n: usize, want: u16) -> Vec<&'static str> {
    let decision = if want == 200 { "allow" } else { "deny" };
    let fallback = format!(r#"gateway_rate_limit_fallback_total{{decision="{decision}"}}"#);
    let kind = |k: &str| format!(r#"gateway_rate_limit_backend_errors_total{{kind="{k}"}}"#);
    let mut kinds = Vec::new();
    for i in 0..n {
        let before = metrics(gw).await;
        let (status, h, body) = get(&gw.url("/echo"), Some(key)).await;
        let after = metrics(gw).await;
        assert_eq!(status, want, "request {i}: {body}");
        if want == 200 {
            assert!(
                h.get("x-ratelimit-limit").is_none(),
                "no headers without counters"
            );
        } else {
            assert_eq!(code(&body), "rate_limiter_unavailable", "request {i}");
            assert_eq!(header(&h, "retry-after"), "1", "request {i}");
        }
        assert_eq!(
            counter_delta(&before, &after, &fallback),
            Some(1.0),
            "request {i}: {after}"
        );
        // A kind that never failed may have no series; the one that did
        // must be there.
        let failed: Vec<(&'static str, f64)> = BACKEND_ERROR_KINDS
            .iter()
            .filter_map(|k| Some((*k, counter_delta(&before, &after, &kind(k))?)))
            .filter(|(_, d)| *d != 0.0)
            .collect();
        assert!(
            matches!(failed[..], [(_, d)] if d == 1.0),
            "request {i}: not one failed backend call: {failed:?}\n{after}"
        );
        kinds.push(failed[0].0);
    }
    kinds
}

/// Polls until `key` gets an answer with rate-limit headers again, then
/// checks that the limit of 3 holds on the fresh counters.
async fn limits_apply_again(gw: &Gateway, key: &str) {
    let back = eventually(Duration::from_secs(15), || async {
        let (_, h, _) = get(&gw.url("/echo"), Some(key)).await;
        h.get("x-ratelimit-limit").is_some()
    })
    .await;
    assert!(back, "limits never came back; log:\n{}", gw.logs());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&gw.url("/echo"), Some(key)).await.0);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_with_allow_keeps_serving_fast_and_recovers() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let mut redis = OwnRedis::start().await;
    let extra = redis_limits_config(&redis.url(), 25, "allow");
    let gw = Gateway::start(&db, Opts::new(config(upstream, &extra))).await;
    let (_, key) = gw.create_key_unseen("read:echo", &["--per-minute", "3"]);
    wait_known(&gw, &key).await;
    room_in_this_minute(5).await;
    let (status, body) = health(&gw).await;
    assert_eq!(
        (status, body["checks"]["redis"]["status"].as_str()),
        (200, Some("up")),
        "{body}"
    );

    for _ in 0..3 {
        assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);
    }
    assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 429);

    // Hung Redis: every call ends at the 25 ms timeout; the key is over
    // its limit, but `allow` admits.
    redis.signal("STOP");
    let kinds = each_falls_back(&gw, &key, 10, 200).await;
    // The first call waits for a reply that never comes: the bound ends it.
    // Later ones may find the connection already given up on.
    assert_eq!(kinds[0], "timeout", "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| ["timeout", "disconnected"].contains(k)),
        "{kinds:?}"
    );
    redis.signal("CONT");
    limits_apply_again(&gw, &key).await;

    // Dead Redis.
    redis.kill();
    let kinds = each_falls_back(&gw, &key, 20, 200).await;
    // Once the loss is noticed, calls fail at once instead of queueing.
    assert_eq!(kinds.last(), Some(&"disconnected"), "{kinds:?}");
    let (status, body) = health(&gw).await;
    assert_eq!(status, 200, "Redis is not required with allow: {body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"]["status"], "down");
    assert_eq!(body["checks"]["redis"]["required"], false);
    let m = metrics(&gw).await;
    assert!(
        sample(&m, r#"gateway_rate_limit_fallback_total{decision="allow"}"#)
            .is_some_and(|v| v >= 30.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            r#"gateway_rate_limit_backend_errors_total{kind="timeout"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // Back: limits apply again without restarting the gateway.
    redis.restart().await;
    limits_apply_again(&gw, &key).await;
    let (status, body) = health(&gw).await;
    assert_eq!(
        (status, body["checks"]["redis"]["status"].as_str()),
        (200, Some("up")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_with_deny_answers_503_and_recovers() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let mut redis = OwnRedis::start().await;
    let extra = redis_limits_config(&redis.url(), 25, "deny");
    let gw = Gateway::start(&db, Opts::new(config(upstream, &extra))).await;
    let (_, key) = gw.create_key_unseen("read:echo", &["--per-minute", "3"]);
    wait_known(&gw, &key).await;
    room_in_this_minute(5).await;
    assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);

    redis.kill();
    let kinds = each_falls_back(&gw, &key, 10, 503).await;
    assert_eq!(kinds.last(), Some(&"disconnected"), "{kinds:?}");
    let (status, body) = health(&gw).await;
    assert_eq!(status, 503, "Redis is required with deny: {body}");
    assert_eq!(body["checks"]["redis"]["required"], true);
    // The status endpoint says so too, rather than inventing counters.
    let (status, _, body) = get(&gw.admin_url("/api/v1/rate-limits/status"), Some(&key)).await;
    assert_eq!((status, code(&body)), (503, "rate_limiter_unavailable"));
    let m = metrics(&gw).await;
    assert!(
        sample(&m, r#"gateway_rate_limit_fallback_total{decision="deny"}"#)
            .is_some_and(|v| v >= 10.0),
        "{m}"
    );

    redis.restart().await;
    // One request was counted before the outage; the counters were lost
    // with the server, so three fit again.
    limits_apply_again(&gw, &key).await;
    assert_eq!(health(&gw).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_started_without_redis_serves_and_connects_when_redis_comes_up() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let mut redis = OwnRedis::reserve();
    let extra = redis_limits_config(&redis.url(), 25, "allow");
    let gw = Gateway::start(&db, Opts::new(config(upstream, &extra))).await;
    // Waits through the proxy: nothing is counted while Redis is away.
    let (_, key) = gw.create_key("read:echo", &["--per-minute", "3"]).await;
    let (status, body) = health(&gw).await;
    assert_eq!(
        (status, body["checks"]["redis"]["status"].as_str()),
        (200, Some("down")),
        "{body}"
    );
    // Never connected: every call fails at once.
    let kinds = each_falls_back(&gw, &key, 5, 200).await;
    assert!(kinds.iter().all(|k| *k == "disconnected"), "{kinds:?}");

    redis.restart().await;
    room_in_this_minute(5).await;
    limits_apply_again(&gw, &key).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_routes_are_limited_per_client_ip_and_bad_keys_hit_the_guard() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let extra = r#"
[rate_limits]
anonymous = { per_minute = 3 }
auth_failures = { per_minute = 4 }
exempt_ips = ["127.0.0.3"]
"#;
    let mut opts = Opts::new(config(upstream, extra));
    opts.proxy_extra = r#"trusted_proxies = ["127.0.0.1/32"]"#.into();
    let gw = Gateway::start(&db, opts).await;
    let (_, key) = gw.create_key_unseen("read:echo", &[]);
    wait_known(&gw, &key).await;
    room_in_this_minute(10).await;
    let (one, two, exempt) = (
        http_from("127.0.0.1"),
        http_from("127.0.0.2"),
        http_from("127.0.0.3"),
    );
    let public = gw.url("/public");

    // Per IP: 127.0.0.2 uses up its 3, another address still passes.
    for i in 0..3 {
        let (status, h, _) = send(two.get(&public)).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-ratelimit-remaining"), (2 - i).to_string());
        assert_eq!(header(&h, "ratelimit-policy"), "\"ip-minute\";q=3;w=60");
    }
    let (status, h, body) = send(two.get(&public)).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    assert!(header_u64(&h, "retry-after") >= 1);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("`ip-minute`"));
    assert_eq!(send(one.get(&public)).await.0, 200);
    // An untrusted peer cannot pose as someone else.
    let (status, _, _) = send(two.get(&public).header("x-forwarded-for", "198.51.100.1")).await;
    assert_eq!(status, 429);
    // A trusted proxy's X-Forwarded-For names the client.
    for _ in 0..3 {
        let req = one.get(&public).header("x-forwarded-for", "203.0.113.7");
        assert_eq!(send(req).await.0, 200);
    }
    let req = one.get(&public).header("x-forwarded-for", "203.0.113.7");
    assert_eq!(send(req).await.0, 429);
    let req = one.get(&public).header("x-forwarded-for", "203.0.113.8");
    assert_eq!(send(req).await.0, 200);
    // Exempt addresses bypass every limit and get no headers.
    for _ in 0..10 {
        let (status, h, _) = send(exempt.get(&public)).await;
        assert_eq!(status, 200);
        assert!(h.get("x-ratelimit-limit").is_none());
    }

    // Brute-force guard: four refused keys from 127.0.0.2, then 429 before
    // any key work, even for a valid key; on the admin port too.
    // The key with its last character changed (to one it is not), so the
    // checksum no longer matches.
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let bad = format!("{}{last}", &key[..key.len() - 1]);
    assert_ne!(bad, key);
    for _ in 0..4 {
        let (status, _, body) = send(two.get(gw.url("/echo")).bearer_auth(&bad)).await;
        assert_eq!((status, code(&body)), (401, "invalid_api_key"));
    }
    let (status, h, body) = send(two.get(gw.url("/echo")).bearer_auth(&bad)).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("auth-failures-minute"));
    assert!(header_u64(&h, "retry-after") >= 1);
    let (status, _, _) = send(two.get(gw.url("/echo")).bearer_auth(&key)).await;
    assert_eq!(
        status, 429,
        "the guard refuses the address, whatever it sends"
    );
    let (status, _, body) = send(two.get(gw.admin_url("/api/v1/keys")).bearer_auth(&bad)).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    // Other addresses are unaffected; a missing key is not guessing.
    assert_eq!(
        send(one.get(gw.url("/echo")).bearer_auth(&key)).await.0,
        200
    );
    for _ in 0..8 {
        let (status, _, body) = send(one.get(gw.url("/echo"))).await;
        assert_eq!((status, code(&body)), (401, "missing_api_key"));
    }
    assert_eq!(
        send(one.get(gw.url("/echo")).bearer_auth(&key)).await.0,
        200
    );
    let m = metrics(&gw).await;
    assert!(
        sample(
            &m,
            r#"gateway_rate_limited_total{tier="auth-failures-minute",route="echo"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_and_global_tiers_apply_on_top_of_the_key_tiers() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let routes = format!(
        r#"
[[upstreams]]
name = "echo"
targets = ["{upstream}"]

[[routes]]
name = "search"
path_prefix = "/echo/search"
upstream = "echo"
scopes = ["read:echo"]
rate_limit = {{ per_minute = 2 }}

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "echo"
scopes = ["read:echo"]
global_rate_limit = {{ per_minute = 5 }}
"#
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;
    let (_, k1) = gw.create_key_unseen("read:echo", &[]);
    let (_, k2) = gw.create_key_unseen("read:echo", &[]);
    wait_known(&gw, &k1).await;
    wait_known(&gw, &k2).await;
    room_in_this_minute(10).await;

    // Per key on the route: two each.
    for k in [&k1, &k2] {
        for _ in 0..2 {
            assert_eq!(get(&gw.url("/echo/search"), Some(k)).await.0, 200);
        }
        let (status, h, body) = get(&gw.url("/echo/search"), Some(k)).await;
        assert_eq!(status, 429);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("`route-minute`"));
        assert_eq!(header(&h, "x-ratelimit-limit"), "2");
    }
    // Global across keys: five in all on /echo.
    let mut statuses = Vec::new();
    for i in 0..7 {
        let k = if i % 2 == 0 { &k1 } else { &k2 };
        statuses.push(get(&gw.url("/echo"), Some(k)).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let (_, h, body) = get(&gw.url("/echo"), Some(&k1)).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("`global-minute`"));
    assert!(header(&h, "ratelimit-policy").contains("\"global-minute\";q=5;w=60"));

    // The status endpoint shows the key's own tiers (2 search requests
    // + 4 or 3 on /echo counted) and its per-route tier, without counting.
    for _ in 0..2 {
        let (status, _, body) = get(&gw.admin_url("/api/v1/rate-limits/status"), Some(&k1)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["backend"], "local");
        let minute = &body["tiers"][0];
        assert_eq!(minute["name"], "minute");
        assert_eq!(minute["limit"], 600);
        assert_eq!(minute["remaining"], 600 - 2 - 3);
        assert_eq!(minute["window_seconds"], 60);
        assert_eq!(body["routes"][0]["route"], "search");
        assert_eq!(body["routes"][0]["tiers"][0]["name"], "route-minute");
        assert_eq!(body["routes"][0]["tiers"][0]["remaining"], 0);
        let reset = body["routes"][0]["tiers"][0]["reset_after_seconds"]
            .as_u64()
            .unwrap_or(0);
        assert!(reset >= 1, "{body}");
    }
    let (status, _, body) = get(&gw.admin_url("/api/v1/rate-limits/status"), None).await;
    assert_eq!((status, code(&body)), (401, "missing_api_key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_override_set_on_one_instance_applies_on_another_within_a_second() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, Opts::new(config(upstream, ""))).await;
    let b = Gateway::start(&db, Opts::new(config(upstream, ""))).await;
    let (_, admin) = a.create_key_unseen("admin", &[]);
    let (id, key) = a.create_key_unseen("read:echo", &[]);
    wait_known(&a, &admin).await;
    wait_known(&b, &key).await;

    let (_, h, _) = get(&b.url("/echo"), Some(&key)).await;
    assert_eq!(header(&h, "x-ratelimit-limit"), "600");

    let put = |body: Value, who: &str| {
        http()
            .put(a.admin_url(&format!("/api/v1/rate-limits/keys/{id}")))
            .bearer_auth(who)
            .json(&body)
    };
    let started = Instant::now();
    let (status, _, body) = send(put(json!({"per_minute": 7, "per_day": null}), &admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["overrides"],
        json!({"per_minute": 7, "per_hour": null, "per_day": null})
    );
    assert_eq!(
        body["effective"],
        json!({"per_minute": 7, "per_hour": 20000, "per_day": 200000})
    );
    let applied = eventually(Duration::from_secs(1), || async {
        let (_, h, _) = get(&b.url("/echo"), Some(&key)).await;
        header(&h, "x-ratelimit-limit") == "7"
            && header(&h, "ratelimit-policy").starts_with("\"minute\";q=7;w=60")
    })
    .await;
    assert!(applied, "not applied on B after {:?}", started.elapsed());

    // Audited as a key update, with the limits before and after.
    let (_, _, log) = get(
        &a.admin_url(&format!("/api/v1/audit-logs?target_id={id}")),
        Some(&admin),
    )
    .await;
    let entry = &log["data"][0];
    assert_eq!(entry["action"], "api_key.updated", "{log}");
    assert_eq!(entry["after"]["rate_limits"]["per_minute"], 7);
    assert_eq!(entry["before"]["rate_limits"]["per_minute"], Value::Null);

    // `{}` clears the overrides.
    let (status, _, body) = send(put(json!({}), &admin)).await;
    assert_eq!(status, 200, "{body}");
    let cleared = eventually(Duration::from_secs(1), || async {
        let (_, h, _) = get(&b.url("/echo"), Some(&key)).await;
        header(&h, "x-ratelimit-limit") == "600"
    })
    .await;
    assert!(cleared);

    // Bad input and callers.
    let (status, _, body) = send(put(json!({"per_minute": 0, "burst": 3}), &admin)).await;
    assert_eq!((status, code(&body)), (400, "validation_failed"));
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert_eq!(fields, ["per_minute", "burst"]);
    let (status, _, body) = send(put(json!({"per_minute": 5}), &key)).await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));
    let (status, _, body) = send(
        http()
            // A fixed id no key has: test input is never random.
            .put(a.admin_url("/api/v1/rate-limits/keys/6f1d3c2a-8b4e-4f7a-9c0d-5e6f7a8b9c0d"))
            .bearer_auth(&admin)
            .json(&json!({"per_minute": 5})),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}
