//! Hot reload (DESIGN §3 "Edge: TLS, HTTP/2, route options, hot reload"):
//! SIGHUP and `POST /api/v1/config/reload` against a real gateway process,
//! real Postgres and a real upstream; `GET /api/v1/config`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::Value;
use sha2::Digest;

/// High enough that the load never meets the per-IP anonymous limit.
const ANONYMOUS: &str = "[rate_limits]\nanonymous = { per_minute = 10000000 }\n";

fn upstream_and_echo(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "echo"
targets = ["{upstream}"]

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "echo"
scopes = ["read:echo"]
"#
    )
}

fn anon_route(name: &str, prefix: &str, per_minute: Option<u32>) -> String {
    let limit = per_minute
        .map(|n| format!("rate_limit = {{ per_minute = {n} }}\n"))
        .unwrap_or_default();
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"echo\"\nauth = \"none\"\n{limit}"
    )
}

/// Rewrites `gw`'s configuration file in place, on the same ports.
fn rewrite(gw: &Gateway, db: &TestDb, opts: &Opts) {
    let dir = gw.config.parent().expect("config dir");
    write_config(dir, &db.url, gw.proxy, gw.admin, opts);
}

async fn reload(gw: &Gateway, admin: &str) -> (u16, Value) {
    api(gw, Method::POST, "/api/v1/config/reload", admin, None).await
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    get(&gw.url(path), None).await.0
}

/// One keep-alive connection sending `GET path` until `stop`: a request
/// that gets anything but a 200 (an EOF included, since it never
/// reconnects) is a failure, with what it got.
fn keep_alive_client(
    proxy: std::net::SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut stream = match TcpStream::connect(proxy) {
            Ok(s) => s,
            Err(e) => {
                failures.lock().expect("lock").push(format!("connect: {e}"));
                return;
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!("GET {path} HTTP/1.1\r\nHost: load.test\r\n\r\n");
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = stream.write_all(request.as_bytes()) {
                failures.lock().expect("lock").push(format!("write: {e}"));
                return;
            }
            let resp = read_response(&mut stream);
            if resp.starts_with("HTTP/1.1 200") {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                let head: String = resp.chars().take(200).collect();
                failures.lock().expect("lock").push(format!("got {head:?}"));
                if resp.is_empty() {
                    return;
                }
            }
        }
    })
}

/// Under continuous load on keep-alive connections, a reload through the
/// API (adding a route, changing a limit) and one through SIGHUP drop no
/// connection and fail no request; the new route serves and the new limit
/// applies at once, counting what the route had counted before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request_and_applies_routes_and_limits() {
    let db = TestDb::new().await;
    let upstream = start_upstream_on_own_thread();
    let base = format!(
        "{}{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("public", "/public", None),
        anon_route("limited", "/limited", Some(1000)),
    );
    let gw = Gateway::start(&db, Opts::new(base)).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    assert_eq!(status(&gw, "/fresh/x").await, 404, "no such route yet");
    for _ in 0..2 {
        assert_eq!(status(&gw, "/limited/x").await, 200);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            keep_alive_client(
                gw.proxy,
                "/public/load",
                stop.clone(),
                ok.clone(),
                failures.clone(),
            )
        })
        .collect();
    // Load is flowing before the reload.
    assert!(
        eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) > 200
        })
        .await,
        "no load; failures {:?}",
        failures.lock().expect("lock")
    );

    // The new route goes first, so every other route moves down one place.
    let changed = format!(
        "{}{}{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("fresh", "/fresh", None),
        anon_route("public", "/public", None),
        anon_route("limited", "/limited", Some(3)),
    );
    rewrite(&gw, &db, &Opts::new(changed));
    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], true, "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");
    assert_eq!(status(&gw, "/fresh/x").await, 200, "the new route serves");
    // Two counted before the reload, limit now 3: one more, then 429.
    assert_eq!(status(&gw, "/limited/x").await, 200);
    assert_eq!(
        status(&gw, "/limited/x").await,
        429,
        "the new limit applies"
    );

    // The same through SIGHUP, still under load.
    let before = ok.load(Ordering::Relaxed);
    let reloads = metrics(&gw).await;
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            counter_delta(
                &reloads,
                &metrics(&gw).await,
                "gateway_config_reloads_total{result=\"ok\"}",
            ) == Some(1.0)
        })
        .await,
        "SIGHUP did not reload; log:\n{}",
        gw.logs()
    );
    // Load kept flowing after it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) > before + 200
        })
        .await
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed requests out of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(status(&gw, "/fresh/x").await, 200, "still serving");
}

/// Counters belong to a route by name, not by its place in `[[routes]]`:
/// a route inserted in front neither inherits another's counts nor hands
/// its own away, and a changed limit applies at once to the kept count.
#[tokio::test]
async fn counters_follow_the_route_not_its_position() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let first = format!(
        "{}{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("a", "/a", Some(3)),
        anon_route("b", "/b", Some(3)),
    );
    let gw = Gateway::start(&db, Opts::new(first)).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    assert_eq!(status(&gw, "/a").await, 200);
    assert_eq!(status(&gw, "/a").await, 200);

    // `n` takes `a`'s old place; `a` moves to the end.
    let reordered = format!(
        "{}{}{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("n", "/n", Some(3)),
        anon_route("b", "/b", Some(3)),
        anon_route("a", "/a", Some(3)),
    );
    rewrite(&gw, &db, &Opts::new(reordered.clone()));
    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 200, "{body}");
    for i in 0..3 {
        assert_eq!(status(&gw, "/n").await, 200, "new route, request {i}");
    }
    assert_eq!(status(&gw, "/n").await, 429);
    assert_eq!(status(&gw, "/a").await, 200, "a had counted 2 of 3");
    assert_eq!(status(&gw, "/a").await, 429, "a kept its count");

    // Raising a's limit applies at once, to the count it has (3).
    let raised = reordered.replace(
        "name = \"a\"\npath_prefix = \"/a\"\nupstream = \"echo\"\nauth = \"none\"\nrate_limit = { per_minute = 3 }",
        "name = \"a\"\npath_prefix = \"/a\"\nupstream = \"echo\"\nauth = \"none\"\nrate_limit = { per_minute = 5 }",
    );
    assert_ne!(raised, reordered);
    rewrite(&gw, &db, &Opts::new(raised));
    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&gw, "/a").await, 200);
    assert_eq!(status(&gw, "/a").await, 200);
    assert_eq!(status(&gw, "/a").await, 429);
    // b never shared anything with the others.
    for _ in 0..3 {
        assert_eq!(status(&gw, "/b").await, 200);
    }
    assert_eq!(status(&gw, "/b").await, 429);
}

/// A file with errors changes nothing: 422 `invalid_config` with the
/// errors `check-config` lists, the old routes keep serving; the same file
/// through SIGHUP is logged and refused.
#[tokio::test]
async fn a_broken_file_is_refused_whole_and_the_old_routes_keep_serving() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let good = format!(
        "{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("public", "/public", None),
    );
    let gw = Gateway::start(&db, Opts::new(good)).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let reloads = metrics(&gw).await;

    // A valid new route next to two errors: none of it may apply.
    let broken = format!(
        "{}{}{}\n[[routes]]\nname = \"dangling\"\npath_prefix = \"/dangling\"\nupstream = \"nowhere\"\n{ANONYMOUS}anonymous_typo = 1\n",
        upstream_and_echo(upstream),
        anon_route("public", "/public", None),
        anon_route("added", "/added", None),
    );
    rewrite(&gw, &db, &Opts::new(broken));
    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(common::code(&body), "invalid_config", "{body}");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert!(fields.iter().any(|f| f.ends_with(".upstream")), "{body}");
    assert!(fields.len() >= 2, "every error, not the first: {body}");
    // The very list `gateway check-config` prints for the file.
    let check = gw.cli(&["check-config"]);
    assert!(!check.status.success());
    let printed = String::from_utf8_lossy(&check.stderr);
    for f in &fields {
        assert!(printed.contains(f), "{f} not in check-config's {printed}");
    }
    assert_eq!(status(&gw, "/public/x").await, 200, "old routes serve");
    assert_eq!(status(&gw, "/added/x").await, 404, "nothing applied");

    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.logs().contains("configuration reload refused")
        })
        .await,
        "no log line for the refused SIGHUP reload; log:\n{}",
        gw.logs()
    );
    assert!(gw.logs().contains("upstream"), "the errors are in the log");
    assert_eq!(status(&gw, "/public/x").await, 200, "still serving");
    assert_eq!(status(&gw, "/added/x").await, 404);
    let after = metrics(&gw).await;
    assert_eq!(
        counter_delta(
            &reloads,
            &after,
            "gateway_config_reloads_total{result=\"invalid\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        counter_delta(
            &reloads,
            &after,
            "gateway_config_reloads_total{result=\"ok\"}"
        ),
        Some(0.0)
    );
}

/// A changed listen address cannot apply live: it is reported, the rest
/// applies, and the proxy keeps serving where it was.
#[tokio::test]
async fn a_changed_listen_address_is_reported_as_needing_a_restart() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let routes = format!(
        "{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("public", "/public", None),
    );
    let gw = Gateway::start(&db, Opts::new(routes.clone())).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let elsewhere = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let with_added = format!("{routes}{}", anon_route("added", "/added", None));
    let dir = gw.config.parent().expect("dir");
    write_config(dir, &db.url, elsewhere, gw.admin, &Opts::new(with_added));

    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["needs_restart"],
        serde_json::json!(["proxy.listen"]),
        "{body}"
    );
    assert_eq!(status(&gw, "/added/x").await, 200, "the rest applied");
    assert!(TcpStream::connect(elsewhere).is_err(), "no new listener");
    assert!(
        gw.logs().contains("take effect only after a restart"),
        "logged too"
    );
}

/// `GET /api/v1/config` shows the running file with no secret in it, and
/// its SHA-256 is the file's; `gateway_config_info` carries the same hash
/// and drops the old one on a reload.
#[tokio::test]
async fn the_running_config_is_shown_redacted_with_its_sha256() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    const HS256: &str = "hs256-secret-value-that-is-at-least-32-bytes";
    const UPSTREAM_TOKEN: &str = "upstream-credential-9f8e7d";
    const DB_PASSWORD: &str = "db-password-5a4b3c";
    let routes = format!(
        r#"{}{}request_headers = {{ set = {{ x-upstream-token = "Bearer {UPSTREAM_TOKEN}", x-tenant = "acme" }} }}
{ANONYMOUS}
[jwt]
[[jwt.issuers]]
name = "idp"
issuer = "https://idp.example/"
audiences = ["api"]
hs256_secret = "{HS256}"
algorithms = ["HS256"]
"#,
        upstream_and_echo(upstream),
        anon_route("public", "/public", None),
    );
    let gw = Gateway::start(&db, Opts::new(routes.clone())).await;
    let (_, admin) = gw.create_key("admin", &[]).await;

    let sha = |path: &std::path::Path| {
        hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
    };
    let (code, body) = api(&gw, Method::GET, "/api/v1/config", &admin, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["sha256"], sha(&gw.config), "{body}");
    assert!(body["loaded_at"].is_string());
    assert_eq!(body["config"]["proxy"]["listen"], gw.proxy.to_string());
    let first_sha = sha(&gw.config);
    let text = metrics(&gw).await;
    assert_eq!(
        sample(
            &text,
            &format!("gateway_config_info{{sha256=\"{first_sha}\"}}")
        ),
        Some(1.0)
    );

    // A password in the database URL (Postgres ignores it under trust
    // auth; it needs a restart anyway).
    let with_password = db
        .url
        .replacen("://gateway@", &format!("://gateway:{DB_PASSWORD}@"), 1);
    assert_ne!(with_password, db.url, "test URL shape changed: {}", db.url);
    let dir = gw.config.parent().expect("dir");
    write_config(dir, &with_password, gw.proxy, gw.admin, &Opts::new(routes));
    let (code, reloaded) = reload(&gw, &admin).await;
    assert_eq!(code, 200, "{reloaded}");
    assert_eq!(
        reloaded["needs_restart"],
        serde_json::json!(["database.url"])
    );

    let (code, body) = api(&gw, Method::GET, "/api/v1/config", &admin, None).await;
    assert_eq!(code, 200);
    let shown = body.to_string();
    for secret in [PEPPER, HS256, UPSTREAM_TOKEN, DB_PASSWORD] {
        assert!(!shown.contains(secret), "secret leaked: {shown}");
    }
    assert_eq!(body["config"]["keys"]["pepper"], "<redacted>");
    assert!(shown.contains("acme"), "non-secrets stay: {shown}");
    let second_sha = sha(&gw.config);
    assert_ne!(first_sha, second_sha);
    assert_eq!(body["sha256"], second_sha);
    assert_eq!(reloaded["sha256"], second_sha);
    let text = metrics(&gw).await;
    assert_eq!(
        sample(
            &text,
            &format!("gateway_config_info{{sha256=\"{second_sha}\"}}")
        ),
        Some(1.0)
    );
    assert!(!text.contains(&first_sha), "the old hash's series is gone");
    // Nor in the log, nor in the audit entry.
    assert!(!gw.logs().contains(DB_PASSWORD) && !gw.logs().contains(HS256));
    let (code, audit) = api(
        &gw,
        Method::GET,
        "/api/v1/audit-logs?action=config.reloaded",
        &admin,
        None,
    )
    .await;
    assert_eq!(code, 200, "{audit}");
    let entries = audit["data"].as_array().expect("data");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"]["id"], second_sha, "{audit}");
    assert_eq!(entries[0]["target"]["type"], "config", "{audit}");
}

/// Only `admin` may read or reload the configuration.
#[tokio::test]
async fn config_endpoints_need_admin() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(upstream_and_echo(upstream))).await;
    let (_, reader) = gw.create_key("read:echo,read:keys", &[]).await;
    for (method, path) in [
        (Method::GET, "/api/v1/config"),
        (Method::POST, "/api/v1/config/reload"),
    ] {
        let (code, body) = api(&gw, method, path, &reader, None).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert_eq!(common::code(&body), "insufficient_scope");
    }
}

/// A self-signed certificate for `localhost` in `<stem>.pem`/`<stem>.key`
/// under `dir`; returns its DER.
fn self_signed(dir: &std::path::Path, stem: &str) -> Vec<u8> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    std::fs::write(dir.join(format!("{stem}.pem")), cert.cert.pem()).expect("write cert");
    std::fs::write(
        dir.join(format!("{stem}.key")),
        cert.key_pair.serialize_pem(),
    )
    .expect("write key");
    cert.cert.der().to_vec()
}

/// The certificate a new TLS connection to `addr` is served (DER).
async fn served_cert(addr: std::net::SocketAddr) -> Vec<u8> {
    // A fresh client: a new connection, so a new handshake.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .http1_only()
        .resolve("localhost", addr)
        .build()
        .expect("https client");
    let resp = client
        .get(format!("https://localhost:{}/public/x", addr.port()))
        .send()
        .await
        .expect("https request");
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .expect("peer certificate")
}

/// Certificate files replaced on disk (same paths) are re-read by a reload:
/// handshakes after it see the new certificate; a broken one is refused
/// with 422 and the old certificate keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_swaps_the_tls_certificate_for_new_handshakes() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = self_signed(dir.path(), "site");
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut opts = Opts::new(format!(
        "{}{}{ANONYMOUS}",
        upstream_and_echo(upstream),
        anon_route("public", "/public", None),
    ));
    opts.proxy_extra = format!(
        "tls_listen = \"{tls}\"\ncertificates = [{{ cert = {:?}, key = {:?} }}]",
        dir.path().join("site.pem"),
        dir.path().join("site.key"),
    );
    let gw = Gateway::start(&db, opts).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(tls).is_ok()
        })
        .await,
        "TLS listener never opened; log:\n{}",
        gw.logs()
    );
    assert_eq!(served_cert(tls).await, first);

    // New files at the same paths: the configuration file is unchanged.
    let second = self_signed(dir.path(), "site");
    assert_ne!(first, second);
    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    assert_eq!(served_cert(tls).await, second, "new handshakes see it");

    // A key that is not a key: refused whole, the second one stays.
    std::fs::write(dir.path().join("site.key"), "not a key").expect("write");
    let (code, body) = reload(&gw, &admin).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(common::code(&body), "invalid_config");
    assert_eq!(served_cert(tls).await, second);
}
