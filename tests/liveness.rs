//! Listener liveness: a half-open link to Postgres (no FIN, no RST) must be
//! noticed, shown on `/health`, and healed by a reconnect and full reload,
//! while the proxy keeps serving its cached snapshot and the admin API
//! answers 503 instead of hanging.
//!
//! A TCP relay in front of the real Postgres simulates the link: it can
//! FREEZE (stop forwarding both ways, sockets kept open, so both kernels
//! keep acknowledging and TCP keepalives see nothing wrong), THAW, or KILL
//! (close every relayed connection). It can also STRAND a new connection
//! for good at a given query: the link dies mid-call and never recovers,
//! while later connections work.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RelayState {
    frozen: bool,
    /// Bumped by `kill`: connections of an older epoch close.
    epoch: u64,
    /// A connection opened while this is set goes silent for good once the
    /// client sends bytes containing it.
    strand_on: Option<&'static [u8]>,
}

/// A TCP relay to `target`, driven by the test's runtime.
struct Relay {
    addr: SocketAddr,
    state: watch::Sender<RelayState>,
    /// Connections stranded so far.
    stranded: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (state, rx) = watch::channel(RelayState {
            frozen: false,
            epoch: 0,
            strand_on: None,
        });
        let stranded = Arc::new(AtomicUsize::new(0));
        let count = stranded.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let (epoch, strand_on) = {
                        let s = rx.borrow();
                        (s.epoch, s.strand_on)
                    };
                    // A frozen relay still accepts (the kernel would), but
                    // forwards nothing, the connect to Postgres included.
                    if !wait_flowing(&mut rx.clone(), epoch).await {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let strand = Strand {
                        on: strand_on,
                        done: Arc::new(AtomicBool::new(false)),
                        count,
                    };
                    tokio::join!(
                        pump(cr, sw, rx.clone(), epoch, strand.clone()),
                        pump(sr, cw, rx.clone(), epoch, Strand { on: None, ..strand })
                    );
                });
            }
        });
        Relay {
            addr,
            state,
            stranded,
        }
    }

    fn freeze(&self) {
        self.state.send_modify(|s| s.frozen = true);
    }

    fn thaw(&self) {
        self.state.send_modify(|s| s.frozen = false);
    }

    /// New connections go silent for good once the client sends `pattern`.
    fn strand_on(&self, pattern: Option<&'static [u8]>) {
        self.state.send_modify(|s| s.strand_on = pattern);
    }

    fn stranded(&self) -> usize {
        self.stranded.load(Ordering::SeqCst)
    }

    /// Closes every relayed connection; new ones flow.
    fn kill(&self) {
        self.state.send_modify(|s| {
            s.frozen = false;
            s.epoch += 1;
        });
    }
}

/// Waits until the relay flows; false once connections of `epoch` are killed.
async fn wait_flowing(rx: &mut watch::Receiver<RelayState>, epoch: u64) -> bool {
    loop {
        let s = *rx.borrow_and_update();
        if s.epoch != epoch {
            return false;
        }
        if !s.frozen {
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// One connection's strand: `on` is checked in the client's direction;
/// `done` stops both directions.
#[derive(Clone)]
struct Strand {
    on: Option<&'static [u8]>,
    done: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
}

/// Copies `from` to `to` while the relay flows; holds bytes read just
/// before a freeze until the thaw.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<RelayState>,
    epoch: u64,
    strand: Strand,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_flowing(&mut rx, epoch).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Re-check the state: a freeze stops reading, a kill closes.
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Some(pattern) = strand.on {
            if buf[..n].windows(pattern.len()).any(|w| w == pattern)
                && !strand.done.swap(true, Ordering::SeqCst)
            {
                strand.count.fetch_add(1, Ordering::SeqCst);
            }
        }
        if strand.done.load(Ordering::SeqCst) {
            // Silent for good, sockets open, until killed.
            while wait_flowing(&mut rx, epoch).await {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            return;
        }
        if !wait_flowing(&mut rx, epoch).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn pg_addr(url: &str) -> (SocketAddr, url::Url) {
    let u = url::Url::parse(url).expect("database URL");
    let host = u.host_str().expect("host");
    let port = u.port().unwrap_or(5432);
    let addr = format!("{host}:{port}")
        .parse::<SocketAddr>()
        .unwrap_or_else(|_| panic!("the test database must be at an IP address: {url}"));
    (addr, u)
}

async fn health(gw: &Gateway) -> (u16, Value) {
    let resp = http()
        .get(gw.admin_url("/health"))
        .send()
        .await
        .expect("/health answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("/health is JSON"))
}

fn snapshot_check(body: &Value) -> &Value {
    &body["checks"]["key_snapshot"]
}

fn full_reloads(body: &Value) -> u64 {
    snapshot_check(body)["full_reloads"]
        .as_u64()
        .expect("full_reloads")
}

/// Waits until the listener is connected again after more than `reloads`
/// full reloads. Polling `/health` rather than the proxy with a key not
/// loaded yet, which the brute-force guard would soon block.
async fn reloaded_since(gw: &Gateway, reloads: u64) -> bool {
    eventually(Duration::from_secs(30), || async {
        let (_, body) = health(gw).await;
        snapshot_check(&body)["listener"] == "connected" && full_reloads(&body) > reloads
    })
    .await
}

/// A gateway on `db`, but talking to Postgres through `relay`.
async fn gateway_behind(db: &mut TestDb, relay: &Relay, upstream: SocketAddr) -> Gateway {
    let (_, mut u) = pg_addr(&db.url);
    u.set_ip_host(relay.addr.ip()).expect("ip host");
    u.set_port(Some(relay.addr.port())).expect("port");
    let direct = std::mem::replace(&mut db.url, u.to_string());
    let gw = Gateway::start(db, Opts::new(default_routes(upstream))).await;
    db.url = direct;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_link_is_noticed_served_from_cache_and_healed_by_a_full_reload() {
    let mut db = TestDb::new().await;
    let upstream = start_upstream().await;
    let relay = Relay::start(pg_addr(&db.url).0).await;
    let gw = gateway_behind(&mut db, &relay, upstream).await;
    let (_, key) = gw.create_key("read:echo", &[]).await;
    let (_, admin) = gw.create_key("admin", &[]).await;

    let (_, body) = health(&gw).await;
    assert_eq!(snapshot_check(&body)["listener"], "connected", "{body}");
    let reloads_before = full_reloads(&body);

    relay.freeze();
    let frozen_at = std::time::Instant::now();

    // The heartbeat notices within its bound (6 s); the deadline leaves
    // room for a loaded machine.
    let last = std::sync::Mutex::new(Value::Null);
    let noticed = eventually(Duration::from_secs(20), || async {
        let (_, body) = health(&gw).await;
        let down = snapshot_check(&body)["listener"] != "connected" && body["status"] == "degraded";
        *last.lock().expect("lock") = body;
        down
    })
    .await;
    assert!(
        noticed,
        "/health never showed the frozen listener; last:\n{}\nlog:\n{}",
        last.lock().expect("lock"),
        gw.logs()
    );
    // Printed, not asserted: timings belong in benches.
    eprintln!("frozen link noticed after {:?}", frozen_at.elapsed());
    // A lost listener alone does not fail readiness: the cache serves.
    let ready = http()
        .get(gw.admin_url("/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);

    // An admin write cannot reach Postgres: 503, not a hang.
    create_answers_503(&http(), &gw, &admin, "while-frozen").await;

    // Staleness keeps growing while the link is dead.
    let age = |b: &Value| snapshot_check(b)["seconds_since_confirmed"].as_f64();
    let first = age(&health(&gw).await.1).expect("seconds_since_confirmed while frozen");
    let grows = eventually(Duration::from_secs(10), || async {
        age(&health(&gw).await.1).is_some_and(|a| a > first + 1.0)
    })
    .await;
    assert!(grows, "seconds_since_confirmed stuck at {first}");

    // The proxy keeps serving the cached keys.
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);
    }

    // A key made meanwhile, straight in Postgres...
    let direct = db.client().await;
    let hasher = gateway::keys::format::KeyHasher::new(PEPPER);
    let new = gateway::store::keys::NewKey {
        name: "made-while-frozen".into(),
        description: String::new(),
        scopes: vec![gateway::keys::scope::Scope::parse("read:echo").expect("scope")],
        limits: Default::default(),
        metadata: serde_json::json!({}),
        expires_at: None,
    };
    let created = gateway::store::keys::create(&direct, &hasher, "gw_live_", &new)
        .await
        .expect("create directly");

    // ...works once the link is back: the listener reconnects and reloads.
    relay.thaw();
    assert!(
        reloaded_since(&gw, reloads_before).await,
        "no reconnect and reload after the thaw: {}\nlog:\n{}",
        health(&gw).await.1,
        gw.logs()
    );
    assert_eq!(get(&gw.url("/echo"), Some(&created.key)).await.0, 200);
    let (status, body) = health(&gw).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("ok")),
        "{body}"
    );
    assert_eq!(get(&gw.url("/echo"), Some(&key)).await.0, 200);

    // A link that is cut (connections closed) heals the same way.
    let reloads = full_reloads(&health(&gw).await.1);
    relay.kill();
    assert!(
        reloaded_since(&gw, reloads).await,
        "no reload after the link was cut: {}",
        health(&gw).await.1
    );
}

/// The link dies in the middle of a listener call and never comes back
/// (a half-open connection: no FIN, no RST), while new connections work:
/// first during `LISTEN`, then during the full load. Each call must give
/// up, reconnect and reload, so keys made meanwhile become usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_dies_mid_call_is_abandoned_and_the_keys_reloaded() {
    let mut db = TestDb::new().await;
    let upstream = start_upstream().await;
    let relay = Relay::start(pg_addr(&db.url).0).await;
    let gw = gateway_behind(&mut db, &relay, upstream).await;
    let direct = db.client().await;
    let hasher = gateway::keys::format::KeyHasher::new(PEPPER);

    // `LISTEN` is a simple query; the full load's statement is the only
    // one ending in its join of the keys' role scopes (parse messages end
    // the text with NUL).
    for (call, pattern) in [
        ("LISTEN", &b"LISTEN api_keys_changed"[..]),
        ("the full load", &b"ON rs.key_id = api_keys.id\0"[..]),
    ] {
        let before = relay.stranded();
        let reloads = full_reloads(&health(&gw).await.1);
        relay.strand_on(Some(pattern));
        relay.kill();
        let stuck = eventually(Duration::from_secs(20), || async {
            relay.stranded() > before
        })
        .await;
        assert!(
            stuck,
            "the listener never reached {call}; log:\n{}",
            gw.logs()
        );
        let (_, body) = health(&gw).await;
        assert_ne!(snapshot_check(&body)["listener"], "connected", "{body}");

        let new = gateway::store::keys::NewKey {
            name: format!("made while {call} hung"),
            description: String::new(),
            scopes: vec![gateway::keys::scope::Scope::parse("read:echo").expect("scope")],
            limits: Default::default(),
            metadata: serde_json::json!({}),
            expires_at: None,
        };
        let created = gateway::store::keys::create(&direct, &hasher, "gw_live_", &new)
            .await
            .expect("create directly");
        // New connections work again; the stranded one never will.
        relay.strand_on(None);
        assert!(
            reloaded_since(&gw, reloads).await,
            "the listener stayed stuck in {call}: {}\nlog:\n{}",
            health(&gw).await.1,
            gw.logs()
        );
        assert_eq!(get(&gw.url("/echo"), Some(&created.key)).await.0, 200);
    }
}

/// An admin write whose pooled connection dies in the middle of the
/// statement (checked out fine, then silence for good) answers 503 once
/// the admin call bound passes, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_write_whose_link_dies_mid_statement_answers_503() {
    let mut db = TestDb::new().await;
    let upstream = start_upstream().await;
    let relay = Relay::start(pg_addr(&db.url).0).await;
    let gw = gateway_behind(&mut db, &relay, upstream).await;
    let (_, admin) = gw.create_key("admin", &[]).await;

    relay.strand_on(Some(b"INSERT INTO api_keys"));
    // Pooled connections opened before would not be stranded: close them.
    relay.kill();
    // Longer than the gateway's own bound, so the gateway answers first.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    create_answers_503(&client, &gw, &admin, "stranded").await;
    assert!(relay.stranded() >= 1, "the INSERT never reached the relay");
}

/// A key create through the admin API whose database link is dead: it
/// must answer (within `client`'s timeout) 503 `database_unavailable`.
async fn create_answers_503(client: &reqwest::Client, gw: &Gateway, admin: &str, name: &str) {
    let resp = client
        .post(gw.admin_url("/api/v1/keys"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"name": name, "scopes": ["read:echo"]}))
        .send()
        .await
        .expect("the admin API answers though its database link is dead");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(
        (status, code(&body)),
        (503, "database_unavailable"),
        "{body}"
    );
}
