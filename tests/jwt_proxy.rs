//! JWT callers on the proxy (issue 18, DESIGN §3 "JWT and roles"): route
//! `auth` modes, scopes from the token, per-subject limits (local and
//! Redis), the upstream identity headers and the 401s. Real gateway, real
//! upstream, a real JWKS server on loopback; RS256 keys are made and tokens
//! signed with the openssl CLI, so nothing here shares code with the
//! verifier under test.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::io::Write;

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "api://gateway";

/// An RSA key made once per test binary: its PEM and its public JWK.
struct RsaKey {
    pem: Vec<u8>,
    jwk: Value,
}

fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/lib.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn rsa_key(kid: &str) -> RsaKey {
    let pem = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        b"",
    );
    let modulus = openssl(&["rsa", "-noout", "-modulus"], &pem);
    let hex_n = String::from_utf8(modulus).expect("ascii");
    let n = hex::decode(hex_n.trim().trim_start_matches("Modulus=")).expect("hex modulus");
    RsaKey {
        pem,
        jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                    "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
    }
}

/// The IdP's signing key and a second key nobody published.
fn keys() -> &'static (RsaKey, RsaKey) {
    static KEYS: OnceLock<(RsaKey, RsaKey)> = OnceLock::new();
    KEYS.get_or_init(|| (rsa_key("k1"), rsa_key("k1")))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An RS256 token over `claims`, signed by `key`.
fn sign(key: &RsaKey, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, &key.pem).expect("write key");
    let sig = openssl(
        &["dgst", "-sha256", "-sign", pem.to_str().expect("path")],
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Valid claims for `sub` with `scope`, changed by `extra`.
fn claims(sub: &str, scope: &str, extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
                       "iat": now(), "exp": now() + 600});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// A valid token of the IdP.
fn token(sub: &str, scope: &str) -> String {
    sign(&keys().0, &claims(sub, scope, json!({})))
}

/// A loopback JWKS server publishing the IdP's key.
async fn start_jwks() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind jwks");
    let addr = listener.local_addr().expect("jwks addr");
    let body = json!({"keys": [keys().0.jwk]}).to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=300\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// The harness routes (`/echo` is `auth = "required"`: `read:echo`, POST
/// also `write:echo`), plus `/tok` (jwt only) and `/keys` (api_key only),
/// both needing `read:echo`; an issuer `idp` at a loopback JWKS server, an
/// issuer `fwd` (same keys, another `iss`) that forwards its tokens, and
/// `extra` config.
async fn start_with(extra: &str, issuer_extra: &str) -> (TestDb, Gateway) {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let jwks = start_jwks().await;
    let routes = format!(
        r#"{}
[[routes]]
name = "tok"
path_prefix = "/tok"
upstream = "echo"
auth = "jwt"
scopes = ["read:echo"]

[[routes]]
name = "keys"
path_prefix = "/keys"
upstream = "echo"
auth = "api_key"
scopes = ["read:echo"]

[[jwt.issuers]]
name = "idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_url = "http://{jwks}/jwks.json"
algorithms = ["RS256"]
{issuer_extra}

[[jwt.issuers]]
name = "fwd"
issuer = "https://fwd.test/"
audiences = ["{AUDIENCE}"]
jwks_url = "http://{jwks}/jwks.json"
algorithms = ["RS256"]
forward_token = true
{extra}
"#,
        default_routes(upstream)
    );
    let gw = Gateway::start(&db, Opts::new(routes)).await;
    (db, gw)
}

async fn start() -> (TestDb, Gateway) {
    start_with("", "").await
}

/// The headers the upstream received, from the demo upstream's echo.
fn upstream_headers(body: &Value) -> &serde_json::Map<String, Value> {
    body["headers"].as_object().expect("echoed headers")
}

async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    bearer: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    send(http().request(method, gw.url(path)).bearer_auth(bearer)).await
}

async fn get_with(
    gw: &Gateway,
    path: &str,
    bearer: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    call(gw, reqwest::Method::GET, path, bearer).await
}

fn www_authenticate(h: &reqwest::header::HeaderMap) -> &str {
    h.get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

/// Every token verification so far, all issuers and outcomes; `None`
/// when the metric is missing, so a renamed metric fails instead of
/// reading as unchanged.
async fn verifications(gw: &Gateway) -> Option<f64> {
    let text = metrics(gw).await;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("gateway_jwt_verifications_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A client's claim to be someone never reaches the upstream: not on an
/// anonymous route, not next to a valid key, not next to a valid token.
#[tokio::test(flavor = "multi_thread")]
async fn client_sent_identity_headers_are_stripped() {
    let (_db, gw) = start().await;
    let (key_id, key) = gw.create_key("read:echo", &[]).await;
    let spoof = |req: reqwest::RequestBuilder| {
        req.header("x-gateway-subject", "admin")
            .header("x-gateway-issuer", "idp")
            .header("x-gateway-key-id", "00000000-0000-0000-0000-000000000000")
    };
    let (status, _, body) = send(spoof(http().get(gw.url("/public")))).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    for name in ["x-gateway-subject", "x-gateway-issuer", "x-gateway-key-id"] {
        assert!(!h.contains_key(name), "{name} reached the upstream: {body}");
    }
    let (status, _, body) = send(spoof(http().get(gw.url("/echo")).bearer_auth(&key))).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    assert!(!h.contains_key("x-gateway-subject"), "{body}");
    assert!(!h.contains_key("x-gateway-issuer"), "{body}");
    assert_eq!(h["x-gateway-key-id"], key_id.as_str(), "{body}");

    let t = token("alice", "read:echo");
    let (status, _, body) = send(spoof(http().get(gw.url("/echo")).bearer_auth(&t))).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    assert_eq!(h["x-gateway-subject"], "alice", "{body}");
    assert_eq!(h["x-gateway-issuer"], "idp", "{body}");
    assert!(!h.contains_key("x-gateway-key-id"), "{body}");
}

/// A valid token is forwarded with the caller's subject and issuer, and
/// without the token unless its issuer asks for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_is_forwarded_with_subject_and_issuer() {
    let (_db, gw) = start().await;
    for path in ["/echo", "/tok"] {
        let (status, headers, body) = get_with(&gw, path, &token("user 1/é", "read:echo")).await;
        assert_eq!(status, 200, "{path}: {body}");
        let h = upstream_headers(&body);
        assert_eq!(h["x-gateway-subject"], "user%201/%C3%A9", "{body}");
        assert_eq!(h["x-gateway-issuer"], "idp", "{body}");
        assert!(
            !h.contains_key("authorization"),
            "the token went upstream: {body}"
        );
        // The caller's own tiers: the default limits, per subject.
        assert!(headers.contains_key("x-ratelimit-limit"), "{headers:?}");
    }
    let fwd = sign(
        &keys().0,
        &claims("bob", "read:echo", json!({"iss": "https://fwd.test/"})),
    );
    let (status, _, body) = get_with(&gw, "/tok", &fwd).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    assert_eq!(
        h["authorization"],
        format!("Bearer {fwd}").as_str(),
        "{body}"
    );
    assert_eq!(h["x-gateway-issuer"], "fwd", "{body}");
}

/// Each refused token answers 401 with its code and an RFC 6750
/// challenge, and never echoes the token.
#[tokio::test(flavor = "multi_thread")]
async fn refused_tokens_answer_401_with_a_bearer_challenge() {
    let (_db, gw) = start().await;
    let good = token("alice", "read:echo");
    let mut bad_sig = good.clone();
    let last = bad_sig.pop().expect("non-empty");
    bad_sig.push(if last == 'A' { 'B' } else { 'A' });
    let cases = [
        ("bad signature", bad_sig, "invalid_token"),
        (
            "signed by an unpublished key",
            sign(&keys().1, &claims("alice", "read:echo", json!({}))),
            "invalid_token",
        ),
        (
            "wrong audience",
            sign(
                &keys().0,
                &claims("alice", "read:echo", json!({"aud": "api://other"})),
            ),
            "invalid_token",
        ),
        (
            "expired",
            sign(
                &keys().0,
                &claims(
                    "alice",
                    "read:echo",
                    json!({"iat": now() - 7200, "exp": now() - 3600}),
                ),
            ),
            "expired_token",
        ),
        (
            "not a JWT",
            "definitely-not-a-jwt".to_string(),
            "invalid_token",
        ),
    ];
    for path in ["/echo", "/tok"] {
        for (what, t, want) in &cases {
            let (status, headers, body) = get_with(&gw, path, t).await;
            assert_eq!(status, 401, "{what} on {path}: {body}");
            assert_eq!(code(&body), *want, "{what} on {path}: {body}");
            let challenge = www_authenticate(&headers);
            assert!(
                challenge.starts_with("Bearer ")
                    && challenge.contains(r#"error="invalid_token""#)
                    && challenge.contains("error_description=\""),
                "{what} on {path}: {challenge}"
            );
            assert!(!challenge.contains(t.as_str()) && !body.to_string().contains(t.as_str()));
        }
    }
    // No credential on a jwt-only route: the bare challenge.
    let (status, headers, body) = send(http().get(gw.url("/tok"))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body), "missing_token", "{body}");
    assert_eq!(www_authenticate(&headers), r#"Bearer realm="gateway""#);
}

/// Scopes come from the token's claim (a string or an array) and are
/// checked exactly as a key's: route scopes and method scopes.
#[tokio::test(flavor = "multi_thread")]
async fn scopes_from_the_claim_are_enforced() {
    let (_db, gw) = start().await;
    let none = token("alice", "");
    let (status, _, body) = get_with(&gw, "/echo", &none).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(&body), "insufficient_scope", "{body}");
    assert!(body.to_string().contains("read:echo"), "{body}");

    let reader = token("alice", "read:echo");
    let (status, _, body) = get_with(&gw, "/echo", &reader).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(&gw, reqwest::Method::POST, "/echo", &reader).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("write:echo"), "{body}");

    let writer = token("alice", "read:echo write:echo");
    let (status, _, body) = call(&gw, reqwest::Method::POST, "/echo", &writer).await;
    assert_eq!(status, 200, "{body}");
    let array = sign(
        &keys().0,
        &claims("alice", "", json!({"scope": ["read:*", "write:echo"]})),
    );
    let (status, _, body) = call(&gw, reqwest::Method::POST, "/echo", &array).await;
    assert_eq!(status, 200, "{body}");
}

/// `jwt` routes refuse keys, `api_key` routes refuse tokens (without
/// verifying them), `required` takes both; a request carrying a key and a
/// different token is refused everywhere, so neither lends the other its
/// scopes.
#[tokio::test(flavor = "multi_thread")]
async fn route_modes_decide_which_credential_counts() {
    let (_db, gw) = start().await;
    let (_, key) = gw.create_key("read:echo", &[]).await;
    let (_, weak_key) = gw.create_key("read:other", &[]).await;
    let t = token("alice", "read:echo");

    let (status, headers, body) = get_with(&gw, "/tok", &key).await;
    assert_eq!(status, 401, "a key on a jwt route: {body}");
    assert_eq!(code(&body), "invalid_token", "{body}");
    assert!(www_authenticate(&headers).contains("error=\"invalid_token\""));
    let (status, _, body) = send(http().get(gw.url("/tok")).header("x-api-key", &key)).await;
    assert_eq!(status, 401, "X-API-Key on a jwt route: {body}");
    assert_eq!(code(&body), "invalid_token", "{body}");

    let before = verifications(&gw).await;
    let (status, _, body) = get_with(&gw, "/keys", &t).await;
    assert_eq!(status, 401, "a token on an api_key route: {body}");
    assert_eq!(code(&body), "invalid_api_key", "{body}");
    assert_eq!(
        verifications(&gw).await,
        before,
        "an api_key route sent the token to the verifier"
    );
    // A token in X-API-Key is a (bad) key everywhere.
    let (status, _, body) = send(http().get(gw.url("/echo")).header("x-api-key", &t)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body), "invalid_api_key", "{body}");

    for cred in [&key, &t] {
        let (status, _, body) = get_with(&gw, "/echo", cred).await;
        assert_eq!(status, 200, "required takes either: {body}");
    }
    let (status, _, body) = get_with(&gw, "/keys", &key).await;
    assert_eq!(status, 200, "{body}");

    // Escalation: a weak key beside a strong token, or the reverse.
    for (x_api_key, bearer) in [(&weak_key, &t), (&key, &token("mallory", ""))] {
        for path in ["/echo", "/tok", "/keys"] {
            let (status, _, body) = send(
                http()
                    .get(gw.url(path))
                    .header("x-api-key", x_api_key)
                    .bearer_auth(bearer),
            )
            .await;
            assert_eq!(status, 401, "two credentials on {path}: {body}");
        }
    }
}

/// A token caller's own tiers are per subject: the issuer's limits, 429
/// with the rate-limit headers, another subject unaffected.
async fn per_subject_limits(extra: &str) {
    let (_db, gw) = start_with(extra, "rate_limits = { per_minute = 2 }").await;
    let alice = token("alice", "read:echo");
    for i in 0..2 {
        let (status, headers, body) = get_with(&gw, "/tok", &alice).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(headers["x-ratelimit-limit"], "2", "{headers:?}");
    }
    let (status, headers, body) = get_with(&gw, "/echo", &alice).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(code(&body), "rate_limited", "{body}");
    assert!(body.to_string().contains("`minute`"), "{body}");
    for name in [
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
    ] {
        assert!(headers.contains_key(name), "{name} missing: {headers:?}");
    }
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    // Another subject of the same issuer has its own counters; so does the
    // same `sub` at another issuer (the default limits there).
    let (status, _, body) = get_with(&gw, "/tok", &token("bob", "read:echo")).await;
    assert_eq!(status, 200, "{body}");
    let other_issuer = sign(
        &keys().0,
        &claims("alice", "read:echo", json!({"iss": "https://fwd.test/"})),
    );
    let (status, _, body) = get_with(&gw, "/tok", &other_issuer).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_subject_limits_local() {
    per_subject_limits("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_subject_limits_redis() {
    let extra = format!(
        "[rate_limits]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n",
        redis_url(),
        redis_prefix()
    );
    per_subject_limits(&extra).await;
}

/// Refused tokens count toward the brute-force guard like refused keys:
/// past `auth_failures`, even a valid token from that client waits.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_tokens_count_toward_the_brute_force_guard() {
    let (_db, gw) = start_with("[rate_limits]\nauth_failures = { per_minute = 2 }\n", "").await;
    let expired = sign(
        &keys().0,
        &claims(
            "alice",
            "read:echo",
            json!({"iat": now() - 7200, "exp": now() - 3600}),
        ),
    );
    for t in ["not-a-jwt".to_string(), expired] {
        let (status, _, body) = get_with(&gw, "/tok", &t).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, headers, body) = get_with(&gw, "/tok", &token("alice", "read:echo")).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("auth-failures-minute"), "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
}
