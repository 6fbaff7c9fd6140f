//! The `redis` backend on a real Redis Cluster (issue 16): three masters
//! and three replicas on loopback, started by the test. Two gateways
//! never admit more than a limit in total, a route's global limit (its
//! own slot) included; a master killed mid-run is decided by
//! `on_backend_error`, and the gateways recover on the promoted replica
//! without a restart.

mod common;

use std::cell::Cell;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs `redis-cli` with `args`; its stdout.
fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli (apt package redis-tools; run the tests with scripts/test.sh)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A port free for a cluster node and for its bus (the port + 10000).
fn node_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Six `redis-server`s in cluster mode, three masters with a replica
/// each; every process is killed on drop.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            ports: Vec::new(),
            children: Vec::new(),
            _dir: tempfile::tempdir().expect("tempdir"),
        };
        for i in 0..6 {
            let port = node_port();
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--save", "", "--appendonly", "no"])
                // Stream the first sync to a replica at once, not after
                // Redis 7's default 5 s wait for more replicas.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (run the tests with scripts/test.sh)");
            cluster.ports.push(port);
            cluster.children.push(Some(child));
        }
        cluster._dir = dir;
        for &port in &cluster.ports {
            let up = eventually(Duration::from_secs(10), || async move {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .await;
            assert!(up, "redis-server on {port} did not start");
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(&args);
        cluster.wait_ok(&cluster.ports.clone()).await;
        cluster.wait_replicas_synced().await;
        cluster
    }

    /// Waits until three nodes are replicas that finished their first sync
    /// with their master. `cluster_state:ok` comes before that, and a
    /// replica that never synced refuses to take over ("Disconnected from
    /// master for longer than allowed"): its slots would stay down.
    async fn wait_replicas_synced(&self) {
        let ports = self.ports.clone();
        let synced = eventually(Duration::from_secs(30), || {
            let ports = &ports;
            async move {
                let up = ports.iter().filter(|p| {
                    let info = redis_cli(&["-p", &p.to_string(), "INFO", "replication"]);
                    info.contains("role:slave") && info.contains("master_link_status:up")
                });
                up.count() == 3
            }
        })
        .await;
        assert!(synced, "the replicas did not finish their first sync");
    }

    /// Waits until every node in `ports` reports `cluster_state:ok`.
    async fn wait_ok(&self, ports: &[u16]) {
        for &port in ports {
            let ok = eventually(Duration::from_secs(30), || async move {
                redis_cli(&["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })
            .await;
            assert!(ok, "cluster not ok on {port}");
        }
    }

    /// `redis-cluster://` with the masters as seeds.
    fn url(&self) -> String {
        let seeds: Vec<String> = self.ports[..3]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// The port of the master serving `slot`, as a live node sees it.
    fn master_of(&self, slot: u16) -> u16 {
        self.serving(slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The port of the master serving `slot`, as a live node sees it; none
    /// while the slot's master has failed and no replica took over.
    fn serving(&self, slot: u16) -> Option<u16> {
        let live = self.live_ports()[0];
        let nodes = redis_cli(&["-p", &live.to_string(), "CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let mut ends = range.splitn(2, '-').map(|s| s.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let addr = f[1].split('@').next().unwrap_or("");
                return Some(
                    addr.rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("node port"),
                );
            }
        }
        None
    }

    fn slot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0].to_string();
        redis_cli(&["-p", &port, "CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("slot")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// SIGKILLs the node on `port`.
    fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).expect("node");
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn routes(upstream: std::net::SocketAddr, url: &str, prefix: &str, on_error: &str) -> String {
    format!(
        r#"{routes}
[[routes]]
name = "glob"
path_prefix = "/glob"
upstream = "echo"
scopes = ["read:echo"]
global_rate_limit = {{ per_minute = 60 }}

[redis]
url = "{url}"
timeout_ms = {timeout}
key_prefix = "{prefix}"

[rate_limits]
backend = "redis"
on_backend_error = "{on_error}"
"#,
        routes = default_routes(upstream),
        // Exactness needs no 25 ms bound; failover wants a short one.
        timeout = if on_error == "deny" { 2_000 } else { 250 },
    )
}

/// A gateway's settings; gateways that share `prefix` share counters.
fn opts(upstream: std::net::SocketAddr, url: &str, prefix: &str, on_error: &str) -> Opts {
    let mut o = Opts::new(routes(upstream, url, prefix, on_error));
    o.read_timeout_ms = 20_000;
    o
}

/// Waits until at least `needed` seconds are left in the current minute
/// (on this machine's clock, which is the cluster's), so a burst is not
/// split by a window boundary.
async fn room_in_this_minute(needed: u64) {
    let into = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 60_000) as u64;
    if into + needed * 1000 > 60_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 1_050)).await;
    }
}

/// Sends `n` concurrent GETs of `path`, alternating gateways and keys;
/// the count of each status and the 200s per key.
async fn burst(
    gws: [&Gateway; 2],
    path: &str,
    keys: &[&str],
    n: usize,
) -> (
    std::collections::BTreeMap<u16, usize>,
    std::collections::BTreeMap<String, usize>,
) {
    let client = http();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let key = keys[i % keys.len()].to_string();
            let req = client.get(gws[i % 2].url(path)).bearer_auth(&key);
            tokio::spawn(async move {
                let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                (status, key)
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    let mut admitted = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, key) = t.await.expect("task");
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            *admitted.entry(key).or_insert(0) += 1;
        }
    }
    (statuses, admitted)
}

/// The tests here run one at a time: each starts six Redis nodes and two
/// gateways, and a failover timed against another cluster's start-up on a
/// loaded 2-core machine is what made one of them miss its deadline.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_on_a_cluster_admit_exactly_the_limit() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let db = TestDb::new().await;
    let upstream = start_upstream_on_own_thread();
    let url = cluster.url();
    let prefix = redis_prefix();
    let a = Gateway::start(&db, opts(upstream, &url, &prefix, "deny")).await;
    let b = Gateway::start(&db, opts(upstream, &url, &prefix, "deny")).await;
    let (_, k1) = a.create_key_unseen("read:echo", &["--per-minute", "100"]);
    let (_, k2) = a.create_key_unseen("read:echo", &[]);
    let (_, k3) = a.create_key_unseen("read:echo", &[]);
    for k in [&k1, &k2, &k3] {
        wait_known(&a, k).await;
        wait_known(&b, k).await;
    }
    room_in_this_minute(25).await;

    // One key's limit: all its tiers in one slot, one call per request.
    let (statuses, _) = burst([&a, &b], "/echo", &[&k1], 300).await;
    assert_eq!(
        statuses,
        [(200, 100), (429, 200)].into_iter().collect(),
        "one key, status: count"
    );

    // A route's global limit lives in its own slot, checked apart from
    // the keys' tiers: still exactly 60 across two keys and two gateways.
    let (statuses, admitted) = burst([&a, &b], "/glob", &[&k2, &k3], 200).await;
    assert_eq!(
        statuses,
        [(200, 60), (429, 140)].into_iter().collect(),
        "global limit, status: count"
    );
    // Requests the global tier refused were refunded from the keys' own
    // tiers: each key counts exactly its admitted requests.
    for k in [&k2, &k3] {
        let (status, _, body) = get(&a.admin_url("/api/v1/rate-limits/status"), Some(k)).await;
        assert_eq!(status, 200, "{body}");
        let minute = &body["tiers"][0];
        assert_eq!(minute["name"], "minute", "{body}");
        let limit = minute["limit"].as_u64().expect("limit");
        let used = admitted.get(k.as_str()).copied().unwrap_or(0) as u64;
        assert_eq!(minute["remaining"].as_u64(), Some(limit - used), "{body}");
    }
    let m = metrics(&a).await;
    assert!(
        sample(&m, "gateway_rate_limit_batch_size_count").is_some_and(|c| c > 0.0),
        "no batch metric"
    );
}

/// Whether the response carries rate-limit headers (decided by Redis).
fn decided_by_redis(h: &reqwest::header::HeaderMap) -> bool {
    h.contains_key("ratelimit-policy") || h.contains_key("x-ratelimit-limit")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_failover_follows_on_backend_error_then_recovers() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let db = TestDb::new().await;
    let upstream = start_upstream_on_own_thread();
    let url = cluster.url();
    let prefix = redis_prefix();
    let open = Gateway::start(&db, opts(upstream, &url, &prefix, "allow")).await;
    let closed = Gateway::start(&db, opts(upstream, &url, &prefix, "deny")).await;
    let (id, key) = open.create_key_unseen("read:echo", &["--per-minute", "5"]);
    wait_known(&open, &key).await;
    wait_known(&closed, &key).await;
    room_in_this_minute(50).await;

    for i in 0..5 {
        let gw = if i % 2 == 0 { &open } else { &closed };
        assert_eq!(
            get(&gw.url("/echo"), Some(&key)).await.0,
            200,
            "request {i}"
        );
    }
    for gw in [&open, &closed] {
        assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 429);
    }
    let before = metrics(&open).await;

    // Kill the master of the key's slot.
    let slot = cluster.slot(&format!("{{k:{id}}}"));
    let master = cluster.master_of(slot);
    cluster.kill(master);

    // While the slot has no master: `allow` lets the used-up key through
    // without headers, `deny` answers 503, and /health says Redis is down.
    let (saw_open, saw_closed) = (Cell::new(false), Cell::new(false));
    let saw_health = Cell::new(false);
    let outage = eventually(Duration::from_secs(30), || {
        let (open, closed, key) = (&open, &closed, &key);
        let (so, sc, sh) = (&saw_open, &saw_closed, &saw_health);
        async move {
            let (s1, h1, _) = get(&open.url("/echo"), Some(key)).await;
            if s1 == 200 && !decided_by_redis(&h1) {
                so.set(true);
            }
            let (s2, _, body) = get(&closed.url("/echo"), Some(key)).await;
            if s2 == 503 {
                assert_eq!(code(&body), "rate_limiter_unavailable");
                sc.set(true);
            }
            let (_, _, health) = get(&open.admin_url("/health"), None).await;
            if health["status"] == "degraded" && health["checks"]["redis"]["status"] == "down" {
                sh.set(true);
            }
            so.get() && sc.get() && sh.get()
        }
    })
    .await;
    assert!(
        outage,
        "outage not seen (allow: {}, deny: {}, health: {})\n{}",
        saw_open.get(),
        saw_closed.get(),
        saw_health.get(),
        open.logs()
    );
    let after = metrics(&open).await;
    assert!(
        counter_delta(
            &before,
            &after,
            r#"gateway_rate_limit_fallback_total{decision="allow"}"#
        )
        .is_some_and(|d| d >= 1.0),
        "no fallback counted"
    );

    // The replica takes over. Wait for that itself: right after the kill
    // every node still says `cluster_state:ok`, as none has noticed yet.
    let promoted = eventually(Duration::from_secs(30), || {
        let cluster = &cluster;
        async move { cluster.serving(slot).is_some_and(|p| p != master) }
    })
    .await;
    assert!(promoted, "no replica took over slot {slot} from {master}");
    let live = cluster.live_ports();
    cluster.wait_ok(&live).await;

    // Both gateways enforce the limit again without a restart (the counts
    // replicated, or re-counted if the last writes were lost: either way
    // at most 5 more admissions), and /health says Redis is up.
    for (name, gw) in [("allow", &open), ("deny", &closed)] {
        let admitted = Cell::new(0);
        let last = Cell::new((0, false));
        // fred redials within its reconnect backoff (at most 2 s).
        let enforced = eventually(Duration::from_secs(30), || {
            let (gw, key, admitted, last) = (gw, &key, &admitted, &last);
            async move {
                let (status, h, _) = get(&gw.url("/echo"), Some(key)).await;
                if status == 200 && decided_by_redis(&h) {
                    admitted.set(admitted.get() + 1);
                }
                last.set((status, decided_by_redis(&h)));
                status == 429
            }
        })
        .await;
        assert!(
            enforced,
            "limit not enforced again by the {name} gateway (last answer {:?}, \
             status and whether Redis decided it)\n{}",
            last.get(),
            gw.logs()
        );
        assert!(
            admitted.get() <= 5,
            "{} admitted after the failover",
            admitted.get()
        );
        let (_, _, health) = get(&gw.admin_url("/health"), None).await;
        assert_eq!(
            health["checks"]["redis"]["status"], "up",
            "{name}: {health}"
        );
    }
}
