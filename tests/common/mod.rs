//! Integration-test harness: a private database per test, the demo upstream
//! in-process on a real socket, and real `gateway` processes on free ports.
//!
//! Tests pass configuration in through files; they never change the
//! environment of the test process. Children get a clean environment for
//! `GATEWAY_*`, `DATABASE_URL` and `REDIS_URL` so an operator's shell cannot
//! leak into a test.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PEPPER: &str = "test-pepper-test-pepper-test-pepper-0001";
const DEFAULT_ADMIN_DB_URL: &str = "postgres://gateway@127.0.0.1:55432/postgres";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gateway")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn admin_db_url() -> String {
    std::env::var("GATEWAY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_DB_URL.to_string())
}

/// Replaces the database name of a Postgres URL.
fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("database URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to {url}: {e} (run the tests with scripts/test.sh)")
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own, migrated, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        let mut client = db.client().await;
        gateway::store::migrations::up(&mut client)
            .await
            .expect("migrate");
        db
    }

    /// An empty, unmigrated database.
    pub async fn empty() -> TestDb {
        let admin_url = admin_db_url();
        let name = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        connect(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = with_db(&admin_url, &name);
        TestDb {
            name,
            url,
            admin_url,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Simulates losing the database: new connections are refused and every
    /// existing one except `keep` (a backend pid) is terminated.
    pub async fn cut_off(&self, keep: i32) {
        let admin = connect(&self.admin_url).await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                self.name
            ))
            .await
            .expect("disallow connections");
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
                &[&self.name, &keep],
            )
            .await
            .expect("terminate backends");
    }

    pub async fn restore(&self) {
        connect(&self.admin_url)
            .await
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .await
            .expect("allow connections");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// The demo upstream on a real socket, served by the test's runtime.
pub async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(gateway::demo::serve(listener));
    addr
}

/// The demo upstream on a runtime of its own, for load tests: the test's
/// runtime is busy being the client.
pub fn start_upstream_on_own_thread() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            gateway::demo::serve(listener).await;
        });
    });
    addr
}

/// A port with nothing listening on it.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The routes most tests use, in front of `upstream`.
pub fn default_routes(upstream: SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "echo"
targets = ["{upstream}"]

[[upstreams]]
name = "dead"
targets = ["{dead}"]

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "echo"
scopes = ["read:echo"]
method_scopes = {{ POST = ["write:echo"] }}

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "echo"
auth = "none"

[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"
auth = "none"
"#,
        dead = dead_addr()
    )
}

/// Settings a test may change; the rest of the config is fixed.
pub struct Opts {
    /// Appended to the file: `[[upstreams]]`, `[[routes]]` and any other
    /// section (`[rate_limits]`, `[redis]`).
    pub routes: String,
    /// Extra lines of the `[proxy]` section.
    pub proxy_extra: String,
    pub read_timeout_ms: u64,
    pub grace_seconds: u64,
    /// Extra environment of the gateway process, e.g. `LD_PRELOAD` of
    /// libfaketime and `FAKETIME` for a skewed clock (see [`faketime`]).
    pub env: Vec<(String, String)>,
    /// Extra lines of the `[keys]` section.
    pub keys_extra: String,
}

impl Opts {
    pub fn new(routes: String) -> Opts {
        Opts {
            routes,
            proxy_extra: String::new(),
            read_timeout_ms: 2_000,
            grace_seconds: 5,
            env: Vec::new(),
            keys_extra: String::new(),
        }
    }
}

/// One running `gateway serve` process.
pub struct Gateway {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A command for the gateway binary with a scrubbed environment.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") || k == "DATABASE_URL" || k == "REDIS_URL" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `check-config` on `path`, asserts that it refuses the file naming
/// every one of `wants` and without a panic, and that `serve` refuses the
/// same file with the same message before binding anything. Returns that
/// message (stderr).
pub fn assert_config_refused(path: &std::path::Path, wants: &[&str]) -> String {
    let run = |sub: &str| {
        command()
            .args([sub, "-c"])
            .arg(path)
            .output()
            .expect("run the gateway")
    };
    let check = run("check-config");
    assert!(!check.status.success(), "check-config accepted the file");
    let stderr = String::from_utf8_lossy(&check.stderr).to_string();
    for want in wants {
        assert!(stderr.contains(want), "missing {want} in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let serve = run("serve");
    assert!(!serve.status.success(), "serve accepted the file");
    assert_eq!(
        String::from_utf8_lossy(&serve.stderr),
        stderr,
        "serve and check-config disagree"
    );
    stderr
}

pub fn write_config(
    dir: &std::path::Path,
    db_url: &str,
    proxy: SocketAddr,
    admin: SocketAddr,
    opts: &Opts,
) -> PathBuf {
    let text = format!(
        r#"
[proxy]
listen = "{proxy}"
threads = 1
connect_timeout_ms = 500
read_timeout_ms = {read}
shutdown_grace_seconds = {grace}
upstream_down_seconds = 30
{proxy_extra}

[admin]
listen = "{admin}"

[database]
url = "{db_url}"
pool_size = 2
connect_timeout_ms = 1000

[keys]
pepper = "{PEPPER}"
last_used_flush_ms = 200
{keys_extra}

[log]
level = "info"
format = "json"
{routes}
"#,
        read = opts.read_timeout_ms,
        grace = opts.grace_seconds,
        routes = opts.routes,
        proxy_extra = opts.proxy_extra,
        keys_extra = opts.keys_extra,
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

impl Gateway {
    /// Starts a gateway on `db` and waits until it is ready. Free ports are
    /// picked by binding and releasing them, so another test can take one in
    /// between; a start that fails to bind is retried on fresh ports.
    pub async fn start(db: &TestDb, opts: Opts) -> Gateway {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut gw = Gateway::spawn(db, &opts);
            match gw.wait_ready().await {
                Ok(()) => return gw,
                Err(log) if attempt < 3 && log.contains("cannot listen") => continue,
                Err(log) => panic!("gateway did not become ready; log:\n{log}"),
            }
        }
    }

    /// Starts a gateway and waits only for `/health/live`: for tests of what
    /// happens before readiness.
    pub async fn start_unready(db: &TestDb, opts: Opts) -> Gateway {
        let gw = Gateway::spawn(db, &opts);
        let live = eventually(Duration::from_secs(30), || async {
            let resp = http().get(gw.admin_url("/health/live")).send().await;
            resp.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(live, "gateway never became live; log:\n{}", gw.logs());
        gw
    }

    fn spawn(db: &TestDb, opts: &Opts) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = write_config(dir.path(), &db.url, proxy, admin, opts);
        let log = dir.path().join("gateway.log");
        let child = command()
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn gateway");
        Gateway {
            child: Some(child),
            proxy,
            admin,
            config,
            log,
            _dir: dir,
        }
    }

    /// Waits for `/health/ready` and the proxy port; the log on failure.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = http();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("exited with {status}\n{}", self.logs()));
            }
            let ready = client.get(self.admin_url("/health/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200)
                && std::net::TcpStream::connect(self.proxy).is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("not ready after 30s\n{}", self.logs()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `gateway <args> -c <this config>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        command()
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("run gateway cli")
    }

    /// Creates a key through the CLI and waits until this instance's
    /// snapshot knows it (NOTIFY makes that a matter of milliseconds);
    /// returns (id, plaintext).
    pub async fn create_key(&self, scopes: &str, extra: &[&str]) -> (String, String) {
        let (id, key) = self.create_key_unseen(scopes, extra);
        let known = eventually(Duration::from_secs(5), || async {
            code(&get(&self.url("/echo"), Some(&key)).await.2) != "invalid_api_key"
        })
        .await;
        assert!(
            known,
            "key {id} never reached the snapshot; log:\n{}",
            self.logs()
        );
        (id, key)
    }

    /// Creates a key through the CLI without waiting for the snapshot.
    pub fn create_key_unseen(&self, scopes: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec![
            "keys", "create", "--name", "test", "--scopes", scopes, "--json",
        ];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("keys create --json prints JSON");
        (
            v["id"].as_str().expect("id").to_string(),
            v["key"].as_str().expect("key").to_string(),
        )
    }

    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill -{sig} failed");
        }
    }

    /// Waits for the process to exit; returns how long it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let child = self.child.as_mut()?;
        while started.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Environment that runs the gateway with its clock `offset` from the real
/// one (libfaketime syntax: `"+90s"`, `"-1.5"`), or `None` when libfaketime
/// is not installed (apt package `faketime`; scripts/lib.sh installs it).
/// The environment, not the `faketime` wrapper: the wrapper forks, and
/// killing it would leave the gateway running.
pub fn faketime(offset: &str) -> Option<Vec<(String, String)>> {
    let lib = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.is_file())?;
    Some(vec![
        ("LD_PRELOAD".into(), lib.to_string_lossy().into_owned()),
        ("FAKETIME".into(), offset.into()),
    ])
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address
/// works on loopback): a second client address for per-IP tests.
pub fn http_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// The Redis every test shares (started by scripts/test.sh).
pub fn redis_url() -> String {
    std::env::var("GATEWAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

/// A Redis key prefix of its own, so tests sharing one Redis never meet.
pub fn redis_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// `[redis]` and `[rate_limits]` for the Redis backend on `url`, with a
/// key prefix of its own, the bound `timeout_ms` and `on_backend_error`.
pub fn redis_limits_config(url: &str, timeout_ms: u64, on_error: &str) -> String {
    format!(
        r#"
[redis]
url = "{url}"
timeout_ms = {timeout_ms}
key_prefix = "{prefix}"

[rate_limits]
backend = "redis"
on_backend_error = "{on_error}"
"#,
        prefix = redis_prefix()
    )
}

/// A Redis rate-limit store on the shared Redis with a prefix of its own,
/// connected (its dispatcher running), with `connections` connections.
pub async fn connected_redis_store(
    connections: usize,
) -> std::sync::Arc<gateway::limits::redis::RedisStore> {
    let cfg = gateway::config::RedisConfig {
        url: redis_url(),
        timeout: Duration::from_secs(5),
        key_prefix: redis_prefix(),
        cluster: false,
        connections,
    };
    let store = std::sync::Arc::new(gateway::limits::redis::RedisStore::new(&cfg).expect("store"));
    let s = store.clone();
    tokio::spawn(async move { s.keep_connected().await });
    let up = eventually(Duration::from_secs(5), || async { store.is_connected() }).await;
    assert!(up, "no connection to {}", redis_url());
    store
}

/// GET `url` with an optional bearer key; returns status, headers and JSON body.
pub async fn get(url: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    send(req).await
}

/// Reads one response (headers plus Content-Length body); empty on EOF or
/// a reset before any byte. For raw-socket tests of keep-alive and
/// connection reuse, where HTTP clients would hide what happens.
pub fn read_response(stream: &mut std::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// One admin API call as `key`, with a JSON body or none: status and body.
pub async fn api(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http().request(method, gw.admin_url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (status, _, v) = send(req).await;
    (status, v)
}

pub async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

/// The error code of a JSON error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Polls `check` every 10 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `gw`'s key snapshot knows `key`, without spending any of its
/// quota: the rate-limit status endpoint reads the counters but never counts.
pub async fn wait_known(gw: &Gateway, key: &str) {
    let known = eventually(Duration::from_secs(5), || async {
        get(&gw.admin_url("/api/v1/rate-limits/status"), Some(key))
            .await
            .0
            == 200
    })
    .await;
    assert!(known, "key never reached the snapshot; log:\n{}", gw.logs());
}

/// The `/metrics` text of `gw`.
pub async fn metrics(gw: &Gateway) -> String {
    http()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample whose name and labels are exactly `series`
/// (e.g. `gateway_auth_failures_total{reason="unknown"}`); `None` when the
/// series is absent, so a renamed or lost metric fails the test instead of
/// reading as 0.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// [`sample`], with 0 for an absent series. Only for a counter that may
/// legitimately not exist yet (counters appear on their first increment);
/// a test using it must also see the series present after the event it
/// counts, e.g. through [`counter_delta`].
pub fn sample_or_zero(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

/// How much the counter `series` grew from `before` to `after`: `None` when
/// it is missing from `after` (a counter never disappears once it exists),
/// and 0 before its first increment.
pub fn counter_delta(before: &str, after: &str, series: &str) -> Option<f64> {
    let now = sample(after, series)?;
    Some(now - sample_or_zero(before, series))
}

/// An upstream that counts the requests it receives and answers each with
/// a small JSON body and `headers` (e.g. its own CORS and framing
/// opinions).
pub async fn counting_upstream(
    headers: &'static [(&'static str, &'static str)],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from_static(
                            b"{\"upstream\":true}",
                        )));
                        for (k, v) in headers {
                            resp.headers_mut().insert(*k, v.parse().expect("value"));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}
