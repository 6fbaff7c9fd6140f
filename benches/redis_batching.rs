//! Redis checks per second, Redis script calls and Redis CPU per check: one
//! `EVALSHA` per check (fred pipelining them over one connection, what the
//! gateway did before issue 16) against natural batching over 1, 2 and 4
//! connections. Each contender runs `CONCURRENCY` tasks looping on checks
//! of three tiers (a key's minute, hour and day), every task its own key,
//! against a `redis-server` of its own on a free port.
//!
//!   cargo bench --bench redis_batching     # 5 s per contender
//!
//! `cargo test --all-targets` runs it for 0.3 s per contender only to keep
//! it working; its figures mean nothing. The client side is this build's
//! (debug under `cargo test`), so compare contenders within one run.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use gateway::config::RedisConfig;
use gateway::limits::redis::{RedisStore, SCRIPT};
use gateway::limits::{Mode, Period, Subject, Tier};

const CONCURRENCY: usize = 64;

struct OwnRedis(Child, u16);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> OwnRedis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/lib.sh ensure_packages installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    OwnRedis(child, port)
}

/// `EVALSHA` calls Redis has served so far.
fn evalsha_calls(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds Redis has used so far (user + system).
fn redis_cpu_seconds(port: u16) -> f64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "cpu"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .sum()
}

fn tiers(i: usize) -> [Tier; 3] {
    let id = uuid::Uuid::from_u128(i as u128 + 1);
    Period::ALL.map(|period| Tier {
        subject: Subject::Key(id),
        period,
        limit: u32::MAX,
    })
}

/// Runs `CONCURRENCY` loops of `check` for `run`; checks per second and
/// checks done.
async fn drive<F, Fut>(run: Duration, check: F) -> (f64, u64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let check = Arc::new(check);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (check, stop, done) = (check.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if check(i).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let done = done.load(Ordering::Relaxed);
    (done as f64 / started.elapsed().as_secs_f64(), done)
}

async fn unbatched(port: u16, run: Duration) -> (f64, u64) {
    let client =
        Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{port}")).expect("url"))
            .build()
            .expect("client");
    client.init().await.expect("connect");
    let sha: String = client.script_load(SCRIPT).await.expect("script load");
    drive(run, move |i| {
        let (client, sha) = (client.clone(), sha.clone());
        async move {
            let keys: Vec<String> = tiers(i)
                .iter()
                .map(|t| format!("bench:{{k:{i}}}:{}", t.period.name()))
                .collect();
            let mut args: Vec<i64> = vec![1, 1, 3];
            for t in tiers(i) {
                args.push(i64::from(t.limit));
                args.push(t.window_ms() as i64);
            }
            client
                .evalsha::<Vec<i64>, _, _, _>(sha, keys, args)
                .await
                .is_ok()
        }
    })
    .await
}

async fn batched(port: u16, connections: usize, run: Duration) -> (f64, u64) {
    let store = Arc::new(
        RedisStore::new(&RedisConfig {
            url: format!("redis://127.0.0.1:{port}"),
            timeout: Duration::from_secs(1),
            key_prefix: "bench:".into(),
            cluster: false,
            connections,
        })
        .expect("store"),
    );
    let s = store.clone();
    tokio::spawn(async move { s.keep_connected().await });
    while !store.is_connected() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drive(run, move |i| {
        let store = store.clone();
        async move { store.check(None, &tiers(i), Mode::Count).await.is_ok() }
    })
    .await
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let run = if full {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(300)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("contender                     checks/s   EVALSHA per check   Redis CPU µs per check");
    for (name, connections) in [
        ("one EVALSHA per check", 0),
        ("batched, 1 connection", 1),
        ("batched, 2 connections", 2),
        ("batched, 4 connections", 4),
    ] {
        let redis = start_redis();
        let port = redis.1;
        let (rate, checks) = rt.block_on(async {
            if connections == 0 {
                unbatched(port, run).await
            } else {
                batched(port, connections, run).await
            }
        });
        let calls = evalsha_calls(port) as f64;
        let cpu = redis_cpu_seconds(port);
        let checks = (checks as f64).max(1.0);
        println!(
            "{name:<28} {rate:>9.0}   {:>17.3}   {:>22.1}",
            calls / checks,
            cpu * 1e6 / checks
        );
        drop(redis);
    }
}
