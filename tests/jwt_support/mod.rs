//! JWT test support shared by the verifier and proxy tests: keys generated in
//! the test (RSA 2048, P-256, Ed25519), JWKS documents, tokens minted with any
//! header and claims (including the attacks: `alg: none`, HS256 signed with
//! an RSA public key), and a loopback JWKS server whose key set can be
//! swapped, that can be stopped and restarted, counts its fetches and sets
//! `Cache-Control`.
//!
//! Use with `mod jwt_support;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, KeyPair};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const ISSUER: &str = "https://idp.test/";
pub const AUDIENCE: &str = "api://gateway";

/// RSA key generation is the slow part; each test binary makes these once.
fn rsa_keys() -> &'static [rsa::RsaPrivateKey] {
    static KEYS: OnceLock<Vec<rsa::RsaPrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        (0..2)
            .map(|_| rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation"))
            .collect()
    })
}

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK (with `kid`, `alg` and `use: sig`).
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo) and DER: what an
    /// attacker would use as an HMAC secret.
    pub public_pem: String,
    pub public_der: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    /// RSA 2048 for RS256; `which` (0 or 1) picks one of the two keys made
    /// per test binary.
    pub fn rsa(kid: &str, which: usize) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;
        let key = &rsa_keys()[which % 2];
        let der = key.to_pkcs1_der().expect("PKCS#1 DER");
        let public = key.to_public_key();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64(&public.n().to_bytes_be()),
                "e": b64(&public.e().to_bytes_be()),
            }),
            public_pem: public
                .to_public_key_pem(LineEnding::LF)
                .expect("public PEM"),
            public_der: public
                .to_public_key_der()
                .expect("public DER")
                .as_bytes()
                .to_vec(),
        }
    }

    /// P-256 for ES256.
    pub fn ec(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &rsig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = rsig::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let pair = rsig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256 key");
        let point = pair.public_key().as_ref().to_vec(); // 0x04 || x || y
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
            public_pem: String::new(),
            public_der: point,
        }
    }

    /// Ed25519 for EdDSA.
    pub fn ed(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = rsig::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let pair = rsig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
        let public = pair.public_key().as_ref().to_vec();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                "x": b64(&public),
            }),
            public_pem: String::new(),
            public_der: public,
        }
    }

    /// The same key material under another `kid`.
    pub fn with_kid(&self, kid: &str) -> TestKey {
        let mut k = self.clone();
        k.kid = kid.into();
        k.jwk["kid"] = json!(kid);
        k
    }

    /// A token with header `{alg, typ, kid}` and `claims`.
    pub fn mint(&self, claims: &Value) -> String {
        let header = json!({"alg": alg_name(self.alg), "typ": "JWT", "kid": self.kid});
        self.mint_with_header(&header, claims)
    }

    /// A token with any header, signed by this key with its algorithm.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        sign_with(header, claims, &self.encoding, self.alg)
    }
}

pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// `b64(header).b64(claims)` signed with `key` under `alg` (whatever the
/// header says).
pub fn sign_with(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signing");
    format!("{message}.{sig}")
}

/// HS256 with `secret` as the HMAC key (e.g. an RSA public key's bytes).
pub fn mint_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    sign_with(
        &header,
        claims,
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
}

/// A token with the given header and claims and a literal signature part
/// (`alg: none` uses an empty one).
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Valid claims for [`ISSUER`]/[`AUDIENCE`], issued now, valid 10 minutes.
pub fn claims(sub: &str, scope: &str) -> Value {
    let now = now_s();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
        "iat": now, "nbf": now, "exp": now + 600,
    })
}

/// A JWKS document of the keys' public JWKs.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

/// An issuer of `iss` accepting [`AUDIENCE`], with keys from `keys`, the
/// `scope` claim, 30 s leeway and no limits of its own.
pub fn issuer_config(
    name: &str,
    iss: &str,
    keys: gateway::config::KeySource,
    algorithms: &[&str],
) -> gateway::config::IssuerConfig {
    gateway::config::IssuerConfig {
        name: name.into(),
        issuer: iss.into(),
        audiences: vec![AUDIENCE.into()],
        keys,
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        scopes_claim: "scope".into(),
        leeway: Duration::from_secs(30),
        rate_limits: None,
        forward_token: false,
    }
}

/// A `[[jwt.issuers]]` table for a gateway config file.
pub fn issuer_toml(name: &str, jwks_url: &str, algorithms: &[&str], extra: &str) -> String {
    let algs: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[jwt.issuers]]\nname = {name:?}\nissuer = {ISSUER:?}\naudiences = [{AUDIENCE:?}]\n\
         jwks_url = {jwks_url:?}\nalgorithms = [{}]\n{extra}\n",
        algs.join(", ")
    )
}

struct ServerState {
    body: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    status: AtomicU16,
    delay_ms: AtomicUsize,
    fetches: AtomicUsize,
}

/// A loopback JWKS server on a real socket (`GET` any path).
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<ServerState>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl JwksServer {
    pub async fn start(jwks: &Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(ServerState {
            body: Mutex::new(jwks.to_string()),
            cache_control: Mutex::new(Some("public, max-age=300".into())),
            status: AtomicU16::new(200),
            delay_ms: AtomicUsize::new(0),
            fetches: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        JwksServer {
            addr,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Replaces the served key set (rotation at the IdP).
    pub fn set_jwks(&self, jwks: &Value) {
        *self.state.body.lock().expect("lock") = jwks.to_string();
    }

    /// Replaces the body with anything (e.g. not JSON).
    pub fn set_body(&self, body: &str) {
        *self.state.body.lock().expect("lock") = body.to_string();
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().expect("lock") = value.map(str::to_string);
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Holds each response this long (to make concurrent fetches overlap).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    /// Requests answered (or started) so far.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are refused until [`Self::restart`].
    pub async fn stop(&self) {
        let task = self.task.lock().expect("lock").take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        let task = tokio::spawn(serve(listener, self.state.clone()));
        *self.task.lock().expect("lock") = Some(task);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conns.spawn(answer(stream, state.clone()));
        while conns.try_join_next().is_some() {}
    }
}

async fn answer(mut stream: TcpStream, state: Arc<ServerState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let body = state.body.lock().expect("lock").clone();
    let cc = state.cache_control.lock().expect("lock").clone();
    let status = state.status.load(Ordering::SeqCst);
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(cc) = cc {
        head.push_str(&format!("cache-control: {cc}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
