//! Operating the gateway: several instances on one database, losing and
//! regaining Postgres, graceful shutdown, and the CLI (check-config,
//! migrate, keys).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_by_the_cli_is_rejected_by_another_instance_within_a_second() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let b = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (id, key) = a.create_key("read:echo", &[]).await;
    // A key created through one instance's config shows up on the other.
    assert!(
        eventually(Duration::from_secs(1), || async {
            get(&b.url("/echo"), Some(&key)).await.0 == 200
        })
        .await
    );

    let out = a.cli(&["keys", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    let seen = eventually(Duration::from_secs(1), || async {
        let (status, _, body) = get(&b.url("/echo"), Some(&key)).await;
        status == 401 && code(&body) == "revoked_api_key"
    })
    .await;
    assert!(
        seen,
        "instance b still accepts the key {:?} after revocation",
        revoked_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_database_keeps_cached_keys_working_and_recovers_on_its_own() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (id, key) = gw.create_key("read:echo", &[]).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(&gw.url("/echo"), Some(&key)).await.0 == 200
        })
        .await
    );
    let (status, _, health) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(status, 200, "{health}");

    // Our own connection survives the cut; everyone else's is terminated and
    // new connections are refused.
    let ours = db.client().await;
    let pid: i32 = ours
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    db.cut_off(pid).await;

    assert!(
        eventually(Duration::from_secs(5), || async {
            let (status, _, body) = get(&gw.admin_url("/health"), None).await;
            status == 503 && body["checks"]["database"]["status"] == "down"
        })
        .await,
        "health did not report the database down"
    );
    let (status, _, _) = get(&gw.admin_url("/health/ready"), None).await;
    assert_eq!(status, 200, "ready must stay 200 while serving from cache");
    // The admin API still authenticates from the snapshot, and says plainly
    // that nothing was written.
    let req = http()
        .post(gw.admin_url("/api/v1/keys"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "during-outage"}));
    let (status, _, body) = send(req).await;
    assert_eq!(
        (status, code(&body)),
        (503, "database_unavailable"),
        "{body}"
    );
    let (status, _, body) = get(&gw.admin_url("/api/v1/keys"), Some(&admin)).await;
    assert_eq!(
        (status, code(&body)),
        (503, "database_unavailable"),
        "{body}"
    );
    let (status, _, _) = get(&gw.admin_url("/api/v1/keys"), Some(&key)).await;
    assert_eq!(status, 403, "authorization needs no database");
    for _ in 0..5 {
        assert_eq!(
            get(&gw.url("/echo"), Some(&key)).await.0,
            200,
            "cached key stopped working"
        );
    }

    // Changes made while the gateway cannot see the database...
    let hasher = gateway::keys::format::KeyHasher::new(PEPPER);
    let new = gateway::store::keys::NewKey {
        name: "made-during-outage".into(),
        description: String::new(),
        scopes: vec![gateway::keys::scope::Scope::parse("read:echo").expect("scope")],
        limits: Default::default(),
        metadata: serde_json::json!({}),
        expires_at: None,
    };
    let created = gateway::store::keys::create(&ours, &hasher, "gw_live_", &new)
        .await
        .expect("create");
    gateway::store::keys::revoke(&ours, uuid::Uuid::parse_str(&id).expect("uuid"))
        .await
        .expect("revoke");
    assert_eq!(
        get(&gw.url("/echo"), Some(&key)).await.0,
        200,
        "nothing can have reached the gateway yet"
    );

    // ...are applied once it returns, without a restart.
    db.restore().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            get(&gw.url("/echo"), Some(&created.key)).await.0 == 200
                && code(&get(&gw.url("/echo"), Some(&key)).await.2) == "revoked_api_key"
        })
        .await,
        "changes made during the outage were not picked up; log:\n{}",
        gw.logs()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&gw.admin_url("/health"), None).await.0 == 200
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_traffic_and_not_ready_until_the_first_full_key_load() {
    let db = TestDb::new().await;
    // pid 0 is no backend: every connection to the database is cut.
    db.cut_off(0).await;
    let upstream = start_upstream().await;
    let gw = Gateway::start_unready(&db, Opts::new(default_routes(upstream))).await;

    let (status, _, body) = get(&gw.admin_url("/health/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    let (status, _, body) = get(&gw.admin_url("/health"), None).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["checks"]["key_snapshot"]["status"], "loading",
        "{body}"
    );
    // Without keys every caller would look unknown: the proxy does not
    // accept connections yet.
    assert!(
        std::net::TcpStream::connect(gw.proxy).is_err(),
        "proxy accepted before the first load"
    );

    db.restore().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            get(&gw.admin_url("/health/ready"), None).await.0 == 200
        })
        .await,
        "never became ready; log:\n{}",
        gw.logs()
    );
    // Ready flips when the snapshot loads; the proxy's listener opens just
    // after (it depends on the key listener), so a connection may still be
    // refused for a moment on a loaded machine.
    assert!(
        eventually(Duration::from_secs(5), || async {
            match http().get(gw.url("/public")).send().await {
                Ok(r) => r.status() == 200,
                Err(_) => false,
            }
        })
        .await
    );
}

/// The JSON fields of the `shutdown complete` log line of an exited `gw`.
fn shutdown_line(gw: &Gateway) -> serde_json::Value {
    let logs = gw.logs();
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "shutdown complete")
        .unwrap_or_else(|| panic!("no `shutdown complete` line; log:\n{logs}"))
}

/// An upstream that reports each request as it arrives and answers it only
/// when told to: the test knows a request is in flight without sleeping.
/// Returns its address, the arrivals and the release.
async fn held_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    std::sync::Arc<tokio::sync::Notify>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = release.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (arrived, go) = (arrived.clone(), go.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = arrived.send(());
                go.notified().await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, arrivals, release)
}

// No durations below: how the shutdown ended is read from the gateway's
// own log line (`ended`), and "within the grace period" from a request
// that outlives the grace period being cut. The upstream tells the test
// when a request is in flight. The waits of 10 to 30 s only catch a
// gateway that never exits.

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits_within_the_grace_period() {
    let db = TestDb::new().await;
    let (upstream, mut arrivals, release) = held_upstream().await;
    let mut opts = Opts::new(default_routes(upstream));
    opts.grace_seconds = 4;
    opts.read_timeout_ms = 60_000;
    let mut gw = Gateway::start(&db, opts).await;

    let url = gw.url("/public/held");
    let in_flight = tokio::spawn(async move { get(&url, None).await });
    arrivals
        .recv()
        .await
        .expect("the request reached the upstream");
    gw.signal("TERM");
    // Answered only after SIGTERM: the gateway must still pass it on.
    release.notify_one();
    let (status, _, body) = in_flight.await.expect("join");
    assert_eq!(status, 200, "in-flight request was cut: {body}");

    if gw.wait_exit(Duration::from_secs(10)).await.is_none() {
        panic!(
            "gateway still running 10s after SIGTERM; log:\n{}",
            gw.logs()
        );
    }
    // It exited because the request finished, not because the grace
    // period ran out.
    let line = shutdown_line(&gw);
    assert_eq!(
        (line["ended"].as_str(), line["in_flight"].as_u64()),
        (Some("drained"), Some(0)),
        "{line}"
    );
    assert!(
        std::net::TcpStream::connect(gw.proxy).is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cuts_a_request_that_outlives_the_grace_period() {
    let db = TestDb::new().await;
    let (upstream, mut arrivals, _release) = held_upstream().await;
    let mut opts = Opts::new(default_routes(upstream));
    opts.grace_seconds = 1;
    // The upstream never answers; only the grace period may end the request.
    opts.read_timeout_ms = 60_000;
    let mut gw = Gateway::start(&db, opts).await;

    let url = gw.url("/public/held");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client")
            .get(url)
            .send()
            .await
    });
    arrivals
        .recv()
        .await
        .expect("the request reached the upstream");
    gw.signal("TERM");
    if gw.wait_exit(Duration::from_secs(20)).await.is_none() {
        panic!(
            "gateway still running 20s after SIGTERM with a 1 s grace period; log:\n{}",
            gw.logs()
        );
    }
    // Gone with the request unanswered: the client sees the connection end
    // without a response.
    match in_flight.await.expect("join") {
        Err(e) => assert!(!e.is_timeout(), "client timed out instead: {e}"),
        Ok(r) => panic!(
            "the request outlived the grace period: {}; log:\n{}",
            r.status(),
            gw.logs()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_when_idle_exits_promptly() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    // A grace period far beyond the wait below: only exiting as soon as
    // nothing is in flight passes.
    let mut opts = Opts::new(default_routes(upstream));
    opts.grace_seconds = 600;
    let mut gw = Gateway::start(&db, opts).await;
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(30)).await.is_some(),
        "idle gateway still running 30 s after SIGTERM (grace 600 s); log:\n{}",
        gw.logs()
    );
    let line = shutdown_line(&gw);
    assert_eq!(
        (line["ended"].as_str(), line["in_flight"].as_u64()),
        (Some("drained"), Some(0)),
        "{line}"
    );
}

#[test]
fn check_config_lists_every_error_and_serve_refuses_the_same_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
[proxy]
listen = "not-an-address"
colour = "blue"
[database]
url = "mysql://nope"
[keys]
pepper = "short"
[rate_limits]
exempt_ips = ["10.0.0.0/33"]
[[upstreams]]
name = "u"
targets = ["127.0.0.1:1"]
[[routes]]
name = "a"
path_prefix = "/a"
upstream = "ghost"
scopes = ["NOT VALID"]
[[routes]]
name = "b"
path_prefix = "/b"
upstream = "u"
[[routes]]
name = "c"
path_prefix = "/b"
upstream = "u"
"#,
    )
    .expect("write");
    assert_config_refused(
        &path,
        &[
            "proxy.listen",
            "proxy.colour",
            "database.url",
            "keys.pepper",
            "rate_limits.exempt_ips[0]",
            "routes[0].upstream",
            "routes[0].scopes[0]",
            "routes[2].path_prefix",
        ],
    );

    // An environment override is checked like the file.
    let env = command()
        .args(["check-config", "-c"])
        .arg(&path)
        .env("GATEWAY_PROXY_THREADS", "zero")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&env.stderr).contains("proxy"),
        "override not validated"
    );

    let missing = command()
        .args(["check-config", "-c", "/nonexistent.toml"])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_up_down_status_checksums_and_concurrent_starts() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, format!("[database]\nurl = \"{}\"\n", db.url)).expect("write");
    let run = |args: &[&str]| {
        command()
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .output()
            .expect("run")
    };

    // Two instances migrating at once: the advisory lock serialises them.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&["migrate", "up"]));
        let b = s.spawn(|| run(&["migrate"]));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let status = String::from_utf8_lossy(&run(&["migrate", "status"]).stdout).to_string();
    assert!(
        status.contains("0001") && status.contains("applied"),
        "{status}"
    );

    let down = run(&["migrate", "down", "1"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let status = String::from_utf8_lossy(&run(&["migrate", "status"]).stdout).to_string();
    assert!(status.contains("pending"), "{status}");
    assert!(run(&["migrate", "up"]).status.success());

    // A changed script is refused.
    db.client()
        .await
        .execute(
            "UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");
    let refused = run(&["migrate", "up"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("changed after it was applied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_cli_create_list_revoke_never_show_secrets_again() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (id, key) = gw
        .create_key("read:echo,write:echo", &["--expires-in", "30d"])
        .await;
    assert!(key.starts_with("gw_live_"));

    let human = gw.cli(&["keys", "create", "--name", "human", "--scopes", "read:echo"]);
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    assert!(human.contains("key:     gw_live_"), "{human}");

    for args in [&["keys", "list"][..], &["keys", "list", "--json"][..]] {
        let out = gw.cli(args);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains(&id), "{text}");
        assert!(text.contains(&key[..12]), "prefix shown");
        assert!(!text.contains(&key), "plaintext key in list");
        assert!(!text.contains("hash"), "hash in list");
    }
    let bad = gw.cli(&["keys", "create", "--name", "x", "--scopes", "Not Valid"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Not Valid"));
    let bad = gw.cli(&["keys", "revoke", "not-a-uuid"]);
    assert!(!bad.status.success());
    // A fixed id no key has: test input is never random.
    let none = gw.cli(&["keys", "revoke", "6f1d3c2a-8b4e-4f7a-9c0d-5e6f7a8b9c0d"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("no key"));
    assert!(!gw.logs().contains(&key), "a key leaked into the logs");
}
