//! TLS at the edge and to upstreams (DESIGN §3 "Edge: TLS, HTTP/2, route
//! options, hot reload"): real handshakes against real gateway processes,
//! with a test CA and certificates generated here (rcgen).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use gateway::config::{CertificateConfig, TlsListenerConfig};
use gateway::tls::{listener_settings, Certificates};
use http_body_util::Full;
use hyper::service::service_fn;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use reqwest::Version;

/// A test CA, and the files of the certificates it signs.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: tempfile::TempDir,
}

/// One certificate signed by a [`Pki`]: its files and its DER.
#[derive(Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    pem: String,
    key_pem: String,
}

impl Leaf {
    fn config(&self) -> CertificateConfig {
        CertificateConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// `{ cert = "…", key = "…" }` for `proxy.certificates`.
    fn toml(&self) -> String {
        format!("{{ cert = {:?}, key = {:?} }}", self.cert, self.key)
    }
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = params.self_signed(&ca_key).expect("ca");
        Pki {
            ca,
            ca_key,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, self.ca_pem()).expect("write ca");
        p
    }

    /// A certificate for `sans` (DNS names or IPs), in `<stem>.pem`/`.key`.
    fn leaf(&self, stem: &str, sans: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign");
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&leaf.cert, &leaf.pem).expect("write cert");
        std::fs::write(&leaf.key, &leaf.key_pem).expect("write key");
        leaf
    }
}

/// An HTTPS client trusting only `pki`'s CA, resolving each of `names` to
/// `addr`, reporting the peer certificate of every response.
fn client(pki: &Pki, addr: SocketAddr, names: &[&str], h1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).expect("ca pem"),
        )
        .tls_info(true);
    for n in names {
        b = b.resolve(n, addr);
    }
    if h1_only {
        b = b.http1_only();
    }
    b.build().expect("https client")
}

/// The leaf certificate (DER) the client saw for `resp`.
fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .expect("tls info with a peer certificate")
}

/// A gateway with a TLS listener on its own free port, in front of the
/// demo upstream, with `proxy.security_headers` on.
async fn start_tls_gateway(db: &TestDb, certs: &[&Leaf]) -> (Gateway, SocketAddr) {
    let upstream = start_upstream().await;
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let list: Vec<String> = certs.iter().map(|c| c.toml()).collect();
    let mut opts = Opts::new(default_routes(upstream));
    opts.proxy_extra = format!(
        "tls_listen = \"{tls}\"\nsecurity_headers = true\ncertificates = [{}]",
        list.join(", ")
    );
    let gw = Gateway::start(db, opts).await;
    let up = eventually(Duration::from_secs(10), || async {
        TcpStream::connect(tls).is_ok()
    })
    .await;
    assert!(up, "TLS listener never opened; log:\n{}", gw.logs());
    (gw, tls)
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_the_certificate_and_h2_and_h1_are_both_served() {
    let db = TestDb::new().await;
    let pki = Pki::new("sni test CA");
    // The first certificate is the default: also for clients without SNI.
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test", "*.wild.test"]);
    let (gw, tls) = start_tls_gateway(&db, &[&a, &b]).await;
    let names = ["a.test", "b.test", "x.wild.test", "unknown.test"];

    let h2 = client(&pki, tls, &names, false);
    let resp = h2
        .get("https://a.test/public/hi")
        .send()
        .await
        .expect("a.test");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2, "ALPN should pick h2");
    assert_eq!(peer_cert(&resp), a.der, "a.test got a's certificate");
    let resp = h2
        .get("https://b.test/public/hi")
        .send()
        .await
        .expect("b.test");
    assert_eq!(resp.status(), 200);
    assert_eq!(peer_cert(&resp), b.der, "b.test got b's certificate");
    let resp = h2
        .get("https://x.wild.test/public/hi")
        .send()
        .await
        .expect("wildcard");
    assert_eq!(peer_cert(&resp), b.der, "*.wild.test covers x.wild.test");
    // No SNI at all (an IP address): the default certificate.
    let resp = h2
        .get(format!("https://{tls}/public/hi"))
        .send()
        .await
        .expect("no sni");
    assert_eq!(peer_cert(&resp), a.der);
    // An unknown name also gets the default one, which the client then
    // refuses for the wrong name: no certificate is invented.
    let err = h2
        .get("https://unknown.test/public/hi")
        .send()
        .await
        .expect_err("a's certificate is not valid for unknown.test");
    assert!(err.is_connect(), "{err:?}");

    // An HTTP/1.1-only client on the same listener.
    let h1 = client(&pki, tls, &names, true);
    let resp = h1
        .get("https://a.test/public/hi")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .expect("h1");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let body: serde_json::Value = resp.json().await.expect("echo json");
    // Our own TLS listener is authoritative over the client's claim.
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");

    // Over h2 the upstream still sees https, and the gateway's own answers
    // (a 401 here) carry HSTS too.
    let resp = h2.get("https://a.test/public/x").send().await.expect("h2");
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let body: serde_json::Value = resp.json().await.expect("echo json");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    let resp = h2.get("https://a.test/echo").send().await.expect("401");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );

    // Plain HTTP: no HSTS, and the upstream is told http.
    let (status, headers, body) = get(&gw.url("/public/hi"), None).await;
    assert_eq!(status, 200);
    assert!(headers.get("strict-transport-security").is_none());
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
}

/// A TLS ClientHello offering only `version` (no supported_versions
/// extension, so it is the highest version offered), with TLS 1.2 ECDHE
/// suites, the groups and signature algorithms rustls needs.
fn client_hello(version: u16) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut push_ext = |ty: u16, body: &[u8]| {
        ext.extend_from_slice(&ty.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    // supported_groups: x25519, secp256r1
    push_ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    push_ext(0x000b, &[0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    push_ext(0x000d, &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]);
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: [u16; 5] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends a hand-built ClientHello and returns the first 7 bytes of the
/// answer (a record header and the start of its body), fewer on EOF.
fn hello_answer(addr: SocketAddr, version: u16) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&client_hello(version)).expect("hello");
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    while out.len() < 7 {
        match s.read(&mut buf[..7 - out.len()]) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_1_and_older_are_refused() {
    let db = TestDb::new().await;
    let pki = Pki::new("version test CA");
    let a = pki.leaf("a", &["a.test"]);
    let (_gw, tls) = start_tls_gateway(&db, &[&a]).await;

    // The same hello at TLS 1.2 gets a ServerHello: the probe itself is
    // sound, so the refusals below are about the version only.
    let ok = hello_answer(tls, 0x0303);
    assert_eq!(ok.first(), Some(&0x16), "handshake record: {ok:02x?}");
    assert_eq!(ok.get(5), Some(&0x02), "ServerHello: {ok:02x?}");
    for (name, version) in [("TLS 1.1", 0x0302), ("TLS 1.0", 0x0301)] {
        let answer = hello_answer(tls, version);
        // An alert record (21) saying protocol_version (70), or a close:
        // never a ServerHello.
        match answer.first() {
            None => {}
            Some(0x15) => assert_eq!(
                answer.get(6),
                Some(&70),
                "{name}: expected a protocol_version alert, got {answer:02x?}"
            ),
            Some(_) => panic!("{name} was not refused: {answer:02x?}"),
        }
    }
}

/// Serves a small HTTP/1.1 app over TLS with `config` on a free port;
/// answers `tls-upstream <x-forwarded-proto>`. Counts accepted connections.
async fn serve_tls(acceptor: pingora::tls::TlsAcceptor, accepted: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("tls-upstream {proto}"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TLS upstream with one certificate (rustls with ring, as in the tree).
async fn tls_upstream(leaf: &Leaf) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone().into()], key)
    .expect("server config");
    serve_tls(
        pingora::tls::TlsAcceptor::from(Arc::new(config)),
        Arc::new(AtomicUsize::new(0)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_verifies_the_ca_and_the_name() {
    let db = TestDb::new().await;
    let pki = Pki::new("upstream CA");
    let other = Pki::new("some other CA");
    let leaf = pki.leaf("upstream", &["upstream.test"]);
    let upstream = tls_upstream(&leaf).await;
    let (ca, other_ca) = (pki.ca_file(), other.ca_file());
    let routes = format!(
        r#"
[[upstreams]]
name = "secure"
targets = ["{upstream}"]
tls = true
sni = "upstream.test"
ca_file = {ca:?}

[[upstreams]]
name = "wrong-ca"
targets = ["{upstream}"]
tls = true
sni = "upstream.test"
ca_file = {other_ca:?}

[[upstreams]]
name = "wrong-name"
targets = ["{upstream}"]
tls = true
sni = "other.test"
ca_file = {ca:?}

[[upstreams]]
name = "system-roots"
targets = ["{upstream}"]
tls = true
sni = "upstream.test"

[[routes]]
name = "secure"
path_prefix = "/secure"
upstream = "secure"
auth = "none"

[[routes]]
name = "wrong-ca"
path_prefix = "/wrong-ca"
upstream = "wrong-ca"
auth = "none"

[[routes]]
name = "wrong-name"
path_prefix = "/wrong-name"
upstream = "wrong-name"
auth = "none"

[[routes]]
name = "system-roots"
path_prefix = "/system-roots"
upstream = "system-roots"
auth = "none"
"#
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;

    let resp = http()
        .get(gw.url("/secure/x"))
        .send()
        .await
        .expect("secure");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "tls-upstream http");
    // A second request reuses the verified connection and still works.
    let resp = http()
        .get(gw.url("/secure/y"))
        .send()
        .await
        .expect("secure");
    assert_eq!(resp.status(), 200);
    // Verified against the wrong CA, the wrong name, or the system roots
    // (which do not hold the test CA): refused, 502, never proxied. The
    // CA-specific connection pool keeps "secure"'s connection from
    // serving "wrong-ca" too.
    for path in ["/wrong-ca/x", "/wrong-name/x", "/system-roots/x"] {
        let (status, _, body) = get(&gw.url(path), None).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert_eq!(code(&body), "upstream_unavailable", "{path}");
    }
}

/// `Certificates::reload` behind Pingora's own TLS acceptor, built with
/// the listener settings `gateway serve` uses: new handshakes see the new
/// certificate, an established keep-alive connection keeps working on the
/// old one, and a broken file changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn reloaded_certificates_reach_new_handshakes_only() {
    let pki = Pki::new("reload CA");
    let first = pki.leaf("first", &["r.test"]);
    let second = pki.leaf("second", &["r.test"]);
    let listener = |c: &Leaf| TlsListenerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        certificates: vec![c.config()],
    };
    let certs = Certificates::load(&listener(&first)).expect("load");
    let acceptor = listener_settings(certs.clone())
        .expect("settings")
        .build()
        .acceptor;
    let accepted = Arc::new(AtomicUsize::new(0));
    let addr = serve_tls(acceptor, accepted.clone()).await;

    let kept = client(&pki, addr, &["r.test"], true);
    let resp = kept.get("https://r.test/").send().await.expect("first");
    assert_eq!(peer_cert(&resp), first.der);
    assert_eq!(resp.text().await.expect("body"), "tls-upstream -");

    certs.reload(&listener(&second)).expect("reload");
    // The connection made before the reload still serves requests.
    let resp = kept.get("https://r.test/").send().await.expect("kept");
    assert_eq!(resp.status(), 200);
    assert_eq!(peer_cert(&resp), first.der, "same connection, old cert");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no new connection");
    // A new handshake gets the new certificate.
    let fresh = client(&pki, addr, &["r.test"], true);
    let resp = fresh.get("https://r.test/").send().await.expect("fresh");
    assert_eq!(peer_cert(&resp), second.der);

    // A key that is not the certificate's: refused, the old set serves on.
    let broken = TlsListenerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        certificates: vec![CertificateConfig {
            cert: first.cert.clone(),
            key: second.key.clone(),
        }],
    };
    let errs = certs.reload(&broken).expect_err("mismatched key refused");
    assert_eq!(errs.0[0].path, "proxy.certificates[0].key", "{errs}");
    std::fs::write(&second.cert, "not a certificate").expect("overwrite");
    assert!(certs.reload(&listener(&second)).is_err(), "garbage refused");
    let after = client(&pki, addr, &["r.test"], true);
    let resp = after.get("https://r.test/").send().await.expect("after");
    assert_eq!(peer_cert(&resp), second.der, "still the last good set");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_names_bad_certificate_files() {
    let pki = Pki::new("config CA");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let mut opts = Opts::new(
        r#"
[[upstreams]]
name = "ip-target"
targets = ["127.0.0.1:1"]
tls = true

[[routes]]
name = "r"
path_prefix = "/r"
upstream = "ip-target"
"#
        .to_string(),
    );
    opts.proxy_extra = format!(
        "tls_listen = \"127.0.0.1:{}\"\ncertificates = [{{ cert = {missing:?}, key = {:?} }}, {{ cert = {:?}, key = {:?} }}]",
        free_port(),
        a.key,
        a.cert,
        b.key
    );
    let path = write_config(
        dir.path(),
        "postgres://gateway@127.0.0.1:1/unused",
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        &opts,
    );
    // `serve` refuses the same file the same way, before binding anything.
    let stderr = assert_config_refused(
        &path,
        &[
            "proxy.certificates[0].cert",
            "cannot read",
            "proxy.certificates[1].key",
            "is not the private key of",
            "upstreams[0].sni",
        ],
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
