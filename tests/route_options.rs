//! Route options end to end (issue 17, DESIGN §3 "Edge"): prefix stripping
//! and rewriting as the upstream sees them, header-based version routing,
//! hosts, request/response header rules, the body limit (declared and
//! chunked, without the upstream receiving the request), IP rules on the
//! trusted client IP, and compression.
//!
//! The upstream here is the test's own: it echoes what it received, serves
//! bodies of a requested type and size, and counts requests, so a test can
//! tell that a refused request never reached it.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{code, eventually, http, http_from, Gateway, Opts, TestDb};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// What an upstream has seen.
#[derive(Default)]
struct Seen {
    /// Requests whose header arrived.
    requests: AtomicUsize,
    /// Requests whose body arrived whole.
    complete: AtomicUsize,
    /// Requests whose body broke off.
    broken: AtomicUsize,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Upstream {
    fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }
    fn complete(&self) -> usize {
        self.seen.complete.load(Ordering::SeqCst)
    }
    fn broken(&self) -> usize {
        self.seen.broken.load(Ordering::SeqCst)
    }
}

/// The body `?size=N` asks for: repetitive text, so it compresses.
fn blob(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    let mut i = 0;
    while out.len() < size {
        out.extend_from_slice(format!("line {i} of the upstream's body\n").as_bytes());
        i += 1;
    }
    out.truncate(size);
    out
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `?size=N&type=T[&encoding=gzip]`: N bytes of text as type T (already
/// gzip-encoded with `encoding=gzip`). Anything else: the request echoed
/// as JSON, with `server` and `x-upstream` headers.
async fn handle(
    req: Request<Incoming>,
    name: &'static str,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let query = req.uri().query().unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => {
            seen.complete.fetch_add(1, Ordering::SeqCst);
            b.to_bytes().len()
        }
        Err(_) => {
            seen.broken.fetch_add(1, Ordering::SeqCst);
            0
        }
    };
    if let Some(size) = param(&query, "size").and_then(|s| s.parse::<usize>().ok()) {
        let ty = param(&query, "type").unwrap_or("text/plain");
        let mut body = blob(size);
        let mut resp = Response::builder().header("content-type", ty);
        if param(&query, "encoding") == Some("gzip") {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body).expect("gzip");
            body = enc.finish().expect("gzip");
            resp = resp.header("content-encoding", "gzip");
        }
        return Ok(resp.body(Full::new(Bytes::from(body))).expect("response"));
    }
    let echo = serde_json::json!({
        "upstream": name,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("server", "echo/1.0")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("response"))
}

async fn start_upstream(name: &'static str) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = counters.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, name, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

struct Setup {
    gw: Gateway,
    a: Upstream,
    b: Upstream,
    _db: TestDb,
}

async fn start() -> Setup {
    let db = TestDb::new().await;
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let routes = format!(
        r#"
[[upstreams]]
name = "a"
targets = ["{a}"]

[[upstreams]]
name = "b"
targets = ["{b}"]

[[routes]]
name = "strip"
path_prefix = "/strip"
upstream = "a"
auth = "none"
strip_prefix = true

[[routes]]
name = "rewrite"
path_prefix = "/v1/orders"
upstream = "a"
auth = "none"
rewrite_prefix = "/v2/orders"

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "a"
auth = "none"

[[routes]]
name = "orders-v2"
path_prefix = "/orders"
upstream = "b"
auth = "none"
match_headers = {{ "api-version" = "2" }}

[[routes]]
name = "hosted"
path_prefix = "/site"
upstream = "b"
auth = "none"
hosts = ["api.example.com", "alt.example.com"]

[[routes]]
name = "site"
path_prefix = "/site"
upstream = "a"
auth = "none"

[[routes]]
name = "headers"
path_prefix = "/headers"
upstream = "a"
auth = "none"
request_headers = {{ set = {{ "x-tenant" = "acme" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "x-served-by" = "gateway" }}, remove = ["server"] }}

[[routes]]
name = "small"
path_prefix = "/small"
upstream = "a"
auth = "none"
max_body_bytes = 1000

[[routes]]
name = "large"
path_prefix = "/large"
upstream = "a"
auth = "none"

[[routes]]
name = "allow"
path_prefix = "/allow"
upstream = "a"
allow_ips = ["127.0.0.2/32"]

[[routes]]
name = "deny"
path_prefix = "/deny"
upstream = "a"
auth = "none"
deny_ips = ["127.0.0.4"]

[[routes]]
name = "zip"
path_prefix = "/zip"
upstream = "a"
auth = "none"
compress = true

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "a"
auth = "none"
"#,
        a = a.addr,
        b = b.addr
    );
    let mut opts = Opts::new(routes);
    // The default limit, above the replay buffer: /large streams and counts.
    opts.proxy_extra = "trusted_proxies = [\"127.0.0.3\"]\nmax_body_bytes = 100000\n".into();
    let gw = Gateway::start(&db, opts).await;
    Setup { gw, a, b, _db: db }
}

async fn echo(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    common::send(req).await
}

#[tokio::test]
async fn strip_and_rewrite_are_what_the_upstream_sees() {
    let s = start().await;
    for (sent, seen) in [
        ("/strip/1?x=1&y=2", "/1"),
        ("/strip", "/"),
        ("/strip/a/b", "/a/b"),
        ("/v1/orders/7?page=2", "/v2/orders/7"),
        ("/v1/orders", "/v2/orders"),
        // Normalised first, then rewritten.
        ("/strip//a/%62", "/a/b"),
    ] {
        let (status, _, body) = echo(http().get(s.gw.url(sent))).await;
        assert_eq!(status, 200, "{sent}: {body}");
        assert_eq!(body["path"], seen, "{sent}");
        let query = sent.split_once('?').map_or("", |(_, q)| q);
        assert_eq!(body["query"], query, "{sent}: the query is kept");
    }
    // The request log and metrics keep the client's path: the route is
    // still counted under its own name.
    let text = common::metrics(&s.gw).await;
    assert!(
        text.contains("route=\"strip\"") && text.contains("route=\"rewrite\""),
        "{text}"
    );
}

#[tokio::test]
async fn header_versions_and_hosts_pick_their_upstream() {
    let s = start().await;
    let pick = |req: reqwest::RequestBuilder| async move {
        let (status, _, body) = echo(req).await;
        assert_eq!(status, 200, "{body}");
        body["upstream"].as_str().unwrap_or("").to_string()
    };
    let url = s.gw.url("/orders/1");
    assert_eq!(pick(http().get(&url)).await, "a");
    assert_eq!(pick(http().get(&url).header("api-version", "1")).await, "a");
    assert_eq!(pick(http().get(&url).header("api-version", "2")).await, "b");
    assert_eq!(pick(http().get(&url).header("API-Version", "2")).await, "b");
    assert_eq!(
        pick(http().get(&url).header("api-version", "2.0")).await,
        "a"
    );
    let site = s.gw.url("/site/x");
    assert_eq!(pick(http().get(&site)).await, "a");
    for host in ["api.example.com", "ALT.example.com:8080"] {
        assert_eq!(
            pick(http().get(&site).header("host", host)).await,
            "b",
            "{host}"
        );
    }
    assert_eq!(
        pick(http().get(&site).header("host", "evil.example.com")).await,
        "a"
    );
}

#[tokio::test]
async fn header_rules_set_and_remove() {
    let s = start().await;
    let (status, headers, body) = echo(
        http()
            .get(s.gw.url("/headers"))
            .header("x-debug", "1")
            .header("x-tenant", "evil"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-tenant"], "acme");
    assert!(body["headers"].get("x-debug").is_none(), "{body}");
    // The gateway's identity headers still reach the upstream.
    assert!(body["headers"].get("x-request-id").is_some(), "{body}");
    assert!(headers.get("server").is_none(), "{headers:?}");
    assert_eq!(headers["x-served-by"], "gateway");
    assert_eq!(headers["x-upstream"], "a");
    // Other routes are untouched.
    let (_, headers, body) = echo(http().get(s.gw.url("/plain")).header("x-debug", "1")).await;
    assert_eq!(body["headers"]["x-debug"], "1");
    assert_eq!(headers["server"], "echo/1.0");
}

/// Sends `head` and then `body` on a fresh connection, as the client
/// writes them; returns the response (empty if the gateway closed first).
fn raw(gw: &Gateway, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(gw.proxy).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The gateway may answer and close before all of a refused body is
    // sent; what it answered is still there to read.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    common::read_response(&mut stream)
}

/// `body` in chunks of 700 bytes, without the last chunk: what a client
/// that is still sending looks like. (Sending more than the gateway reads
/// before it refuses would have the kernel reset the connection over the
/// unread bytes, and the client might lose the 413.)
fn chunks(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(700) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `body` chunked, to its end.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = chunks(body);
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn json_of(resp: &str) -> Value {
    resp.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_declared_body_is_refused_before_the_upstream() {
    let s = start().await;
    let body = vec![b'x'; 2000];
    // Refused on the header alone: the body need not be sent.
    let head = "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, b""));
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert_eq!(code(&json_of(&resp)), "payload_too_large", "{resp}");
    assert_eq!(s.a.requests(), 0, "the upstream saw the request");
    // At the limit it goes through, whole.
    let head =
        "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, &body[..1000]));
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(json_of(&resp)["body_bytes"], 1000);
    // The proxy-wide default applies to routes without their own.
    let head = "POST /large HTTP/1.1\r\nHost: t\r\nContent-Length: 100001\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, b""));
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert_eq!(s.a.requests(), 1);
}

/// The attack: no Content-Length, so a check of the declared length alone
/// lets it through; the body must be counted, and the upstream must not
/// receive the request at all.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_chunked_body_never_reaches_the_upstream() {
    let s = start().await;
    let head = "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, &chunks(&[b'x'; 1400])));
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert_eq!(code(&json_of(&resp)), "payload_too_large", "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert_eq!(s.a.requests(), 0, "the upstream saw the request");
    // A chunked body within the limit is read here and still forwarded whole.
    let head = "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, &chunked(&[b'y'; 1000])));
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(json_of(&resp)["body_bytes"], 1000);
    assert_eq!((s.a.requests(), s.a.complete()), (1, 1));
}

/// A client that waits for `100 Continue` before sending its body gets it
/// from the gateway, which reads the body to count it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_expecting_continue_is_told_to_send() {
    let s = start().await;
    let resp = tokio::task::block_in_place(|| {
        let mut stream = TcpStream::connect(s.gw.proxy).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let head = "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).expect("head");
        let mut interim = Vec::new();
        let mut byte = [0u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => interim.push(byte[0]),
                _ => break,
            }
        }
        let interim = String::from_utf8_lossy(&interim).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        stream.write_all(&chunked(&[b'z'; 800])).expect("body");
        common::read_response(&mut stream)
    });
    assert_eq!(status_of(&resp), 200, "{resp}");
    let echo = json_of(&resp);
    assert_eq!(echo["body_bytes"], 800);
    assert!(echo["headers"].get("expect").is_none(), "{echo}");
}

/// Above the 64 KiB replay buffer the body streams, and is cut off when it
/// crosses the limit: the upstream may see the start of it, never all.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_over_the_limit_is_cut_off() {
    let s = start().await;
    let head = "POST /large HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, &chunks(&vec![b'x'; 100_100])));
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert_eq!(code(&json_of(&resp)), "payload_too_large", "{resp}");
    // Whatever reached the upstream broke off.
    let settled = eventually(Duration::from_secs(10), || async {
        s.a.requests() == s.a.broken() + s.a.complete()
    })
    .await;
    assert!(settled);
    assert_eq!(s.a.complete(), 0, "the upstream received the whole body");
    let head = "POST /large HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let resp = tokio::task::block_in_place(|| raw(&s.gw, head, &chunked(&vec![b'y'; 90_000])));
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(json_of(&resp)["body_bytes"], 90_000);
}

#[tokio::test]
async fn ip_rules_use_the_trusted_client_ip_before_authentication() {
    let s = start().await;
    let status = |ip: &'static str, path: &'static str, xff: Option<&'static str>| {
        let url = s.gw.url(path);
        async move {
            let mut req = http_from(ip).get(url);
            if let Some(x) = xff {
                req = req.header("x-forwarded-for", x);
            }
            let (status, _, body) = echo(req).await;
            (status, code(&body).to_string())
        }
    };
    let forbidden = (403, "ip_forbidden".to_string());
    // Refused without a key: the IP rule comes before authentication.
    assert_eq!(status("127.0.0.1", "/allow", None).await, forbidden);
    // The allowed address gets as far as authentication.
    assert_eq!(
        status("127.0.0.2", "/allow", None).await,
        (401, "missing_api_key".to_string())
    );
    // A trusted proxy may say the client is the allowed address...
    assert_eq!(
        status("127.0.0.3", "/allow", Some("127.0.0.2")).await,
        (401, "missing_api_key".to_string())
    );
    // ...an untrusted peer may not.
    assert_eq!(
        status("127.0.0.1", "/allow", Some("127.0.0.2")).await,
        forbidden
    );
    // Deny lists: the denied address, directly or through a trusted proxy,
    // and a forged XFF from the denied address does not launder it.
    assert_eq!(status("127.0.0.4", "/deny", None).await, forbidden);
    assert_eq!(
        status("127.0.0.3", "/deny", Some("127.0.0.4")).await,
        forbidden
    );
    assert_eq!(
        status("127.0.0.4", "/deny", Some("127.0.0.1")).await,
        forbidden
    );
    assert_eq!(
        status("127.0.0.1", "/deny", None).await,
        (200, "<no error code>".to_string())
    );
    // No key was looked at: no auth failure was counted for the refusals.
    let text = common::metrics(&s.gw).await;
    let failures: f64 = text
        .lines()
        .filter(|l| l.starts_with("gateway_auth_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 2.0, "only the two 401s: {text}");
}

/// A GET on a fresh connection with `Connection: close`; the response's
/// header map (lower-case names) and its body, de-chunked.
fn fetch(
    gw: &Gateway,
    path: &str,
    accept: Option<&str>,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut stream = TcpStream::connect(gw.proxy).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let ae = accept.map_or(String::new(), |a| format!("Accept-Encoding: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{ae}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            headers
                .entry(k)
                .and_modify(|e: &mut String| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gunzip");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("unbrotli");
        }
        "zstd" => out = zstd::stream::decode_all(body).expect("unzstd"),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

fn varies_on_encoding(h: &HashMap<String, String>) -> bool {
    h.get("vary").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn compressible_responses_are_compressed_by_accept_encoding() {
    let s = start().await;
    let expected = blob(5000);
    let get = |path: &'static str, ae: Option<&'static str>| {
        tokio::task::block_in_place(|| fetch(&s.gw, path, ae))
    };
    for (ae, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br, zstd", "br"),
        // q-values, not the order listed, decide.
        ("br;q=0.1, zstd;q=0, gzip;q=0.5", "gzip"),
        ("gzip;q=0.2, zstd", "zstd"),
    ] {
        let (status, h, body) = get("/zip?size=5000&type=text/plain", Some(ae));
        assert_eq!(status, 200);
        assert_eq!(
            h.get("content-encoding").map(String::as_str),
            Some(want),
            "{ae}: {h:?}"
        );
        assert!(varies_on_encoding(&h), "{ae}: {h:?}");
        assert!(
            body.len() < expected.len() / 2,
            "{ae}: {} bytes",
            body.len()
        );
        assert_eq!(decode(want, &body), expected, "{ae}");
    }
    let json = get("/zip?size=3000&type=application/json", Some("gzip"));
    assert_eq!(
        json.1.get("content-encoding").map(String::as_str),
        Some("gzip")
    );
    assert_eq!(decode("gzip", &json.2), blob(3000));
}

#[tokio::test(flavor = "multi_thread")]
async fn other_responses_are_left_alone() {
    let s = start().await;
    let get = |path: &'static str, ae: Option<&'static str>| {
        tokio::task::block_in_place(|| fetch(&s.gw, path, ae))
    };
    let untouched = |(status, h, body): (u16, HashMap<String, String>, Vec<u8>), size: usize| {
        assert_eq!(status, 200);
        assert!(!h.contains_key("content-encoding"), "{h:?}");
        assert_eq!(body, blob(size));
    };
    // An incompressible type, a small body, no Accept-Encoding, a refused
    // coding, a route without `compress`.
    let (_, h, _) = get("/zip?size=5000&type=image/png", Some("gzip"));
    assert!(!varies_on_encoding(&h), "{h:?}");
    untouched(get("/zip?size=5000&type=image/png", Some("gzip, br")), 5000);
    untouched(get("/zip?size=1000&type=text/plain", Some("gzip")), 1000);
    let none = get("/zip?size=5000&type=text/plain", None);
    assert!(varies_on_encoding(&none.1), "{:?}", none.1);
    untouched(none, 5000);
    untouched(
        get("/zip?size=5000&type=text/plain", Some("gzip;q=0, identity")),
        5000,
    );
    let plain = get("/plain?size=5000&type=text/plain", Some("gzip"));
    assert!(!varies_on_encoding(&plain.1), "{:?}", plain.1);
    untouched(plain, 5000);
    // An already-encoded response is never encoded again.
    for ae in ["gzip", "br", "gzip, br, zstd"] {
        let (status, h, body) = get("/zip?size=5000&type=text/plain&encoding=gzip", Some(ae));
        assert_eq!(status, 200);
        assert_eq!(
            h.get("content-encoding").map(String::as_str),
            Some("gzip"),
            "{ae}"
        );
        assert_eq!(decode("gzip", &body), blob(5000), "{ae}");
    }
    // The gateway's own errors are not compressed.
    let (status, h, _) = get("/nowhere", Some("gzip"));
    assert_eq!(status, 404);
    assert!(!h.contains_key("content-encoding"), "{h:?}");
    assert_eq!(s.b.requests(), 0);
}
