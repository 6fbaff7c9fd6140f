//! JSON Web Key Sets: parsing (only signature keys of the types the gateway
//! verifies; never an HMAC key) and fetching (timeouts, a size cap, the
//! `Cache-Control: max-age` that schedules the next refresh).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// Largest JWKS document read; real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys kept from one document (a token without `kid` is tried against
/// each key of its type, so this also bounds that work).
pub const MAX_KEYS: usize = 32;
/// Bounds on the refresh interval taken from `Cache-Control: max-age`.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The refresh interval when the response says nothing usable.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The whole fetch, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What kind of public key a JWK holds; decides which `alg` may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    /// Only from an issuer's `hs256_secret`, never from a JWK.
    Hmac,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be verified with this kind of key.
    pub fn allows(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
                | (KeyKind::Hmac, HS256)
        )
    }
}

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<Arc<str>>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then only that `alg`.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    pub fn hmac(secret: &[u8]) -> Self {
        VerifyKey {
            kid: None,
            kind: KeyKind::Hmac,
            alg: Some(Algorithm::HS256),
            key: DecodingKey::from_secret(secret),
        }
    }

    /// Whether this key may verify a token whose header says `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.kind.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// An issuer's current keys, swapped whole on each successful load.
pub struct KeySet {
    pub by_kid: HashMap<Arc<str>, Arc<VerifyKey>>,
    pub all: Vec<Arc<VerifyKey>>,
    /// When this set was loaded (clock milliseconds).
    pub loaded_at_ms: i64,
    /// How long the source said it may be cached (clamped).
    pub max_age: Duration,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyKey>, loaded_at_ms: i64, max_age: Duration) -> Self {
        let all: Vec<Arc<VerifyKey>> = keys.into_iter().map(Arc::new).collect();
        let mut by_kid = HashMap::new();
        for k in &all {
            if let Some(kid) = &k.kid {
                by_kid.entry(kid.clone()).or_insert_with(|| k.clone());
            }
        }
        KeySet {
            by_kid,
            all,
            loaded_at_ms,
            max_age,
        }
    }
}

/// Why a key set could not be loaded. The strings are stable codes shown
/// in `/health` and logs; they carry no response content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("unreachable")]
    Unreachable,
    #[error("timeout")]
    Timeout,
    #[error("http_status")]
    Status,
    #[error("too_large")]
    TooLarge,
    #[error("not_a_jwks")]
    NotJwks,
    #[error("no_usable_keys")]
    NoUsableKeys,
    #[error("file_unreadable")]
    FileUnreadable,
}

impl JwksError {
    pub fn code(self) -> &'static str {
        match self {
            JwksError::Unreachable => "unreachable",
            JwksError::Timeout => "timeout",
            JwksError::Status => "http_status",
            JwksError::TooLarge => "too_large",
            JwksError::NotJwks => "not_a_jwks",
            JwksError::NoUsableKeys => "no_usable_keys",
            JwksError::FileUnreadable => "file_unreadable",
        }
    }
}

#[derive(Deserialize)]
struct Doc {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64_len(s: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(s).ok().map(|b| b.len())
}

/// One JWK as a verification key, or `None` when the gateway must not or
/// cannot use it: `oct` (an HMAC secret published as a public key is the
/// algorithm-confusion attack), `use` other than `sig`, `key_ops` without
/// `verify`, an `alg` that does not fit the key type, RSA under 2048 bits,
/// curves other than P-256, P-384 and Ed25519.
fn key_from_jwk(j: Jwk) -> Option<VerifyKey> {
    if j.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if j.key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return None;
    }
    let (kind, key) = match (j.kty.as_str(), j.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (j.n.as_deref()?, j.e.as_deref()?);
            let n_bytes = URL_SAFE_NO_PAD.decode(n).ok()?;
            let bits = n_bytes.iter().skip_while(|b| **b == 0).count() * 8;
            if !(2048..=8192).contains(&bits) || b64_len(e)? == 0 {
                return None;
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_components(n, e).ok()?)
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (j.x.as_deref()?, j.y.as_deref()?);
            let (kind, len) = if crv == "P-256" {
                (KeyKind::P256, 32)
            } else {
                (KeyKind::P384, 48)
            };
            if b64_len(x)? != len || b64_len(y)? != len {
                return None;
            }
            (kind, DecodingKey::from_ec_components(x, y).ok()?)
        }
        ("OKP", Some("Ed25519")) => {
            let x = j.x.as_deref()?;
            if b64_len(x)? != 32 {
                return None;
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_components(x).ok()?)
        }
        _ => return None,
    };
    let alg = match j.alg.as_deref() {
        None => None,
        Some(a) => {
            let a: Algorithm = a.parse().ok()?;
            if !kind.allows(a) {
                return None;
            }
            Some(a)
        }
    };
    Some(VerifyKey {
        kid: j.kid.map(Arc::from),
        kind,
        alg,
        key,
    })
}

/// Parses a JWKS document, keeping the usable keys (at most [`MAX_KEYS`]).
/// A document with none is an error, so it never replaces a good set.
pub fn parse(body: &[u8]) -> Result<Vec<VerifyKey>, JwksError> {
    let doc: Doc = serde_json::from_slice(body).map_err(|_| JwksError::NotJwks)?;
    let keys: Vec<VerifyKey> = doc
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(key_from_jwk)
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(keys)
}

/// The refresh interval from a `Cache-Control` value, clamped to
/// [[`MIN_MAX_AGE`], [`MAX_MAX_AGE`]]; [`DEFAULT_MAX_AGE`] without one.
/// `no-cache`/`no-store` ask for the shortest interval.
pub fn max_age(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return DEFAULT_MAX_AGE;
    };
    let mut age = None;
    for d in cc.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return MIN_MAX_AGE;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    match age {
        Some(s) => Duration::from_secs(s).clamp(MIN_MAX_AGE, MAX_MAX_AGE),
        None => DEFAULT_MAX_AGE,
    }
}

/// The HTTP client for JWKS fetches: short timeouts, few redirects.
pub fn client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION"), " jwks"))
        .build()
        .ok()
}

/// Fetches and parses a JWKS; returns its keys and the refresh interval.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
) -> Result<(Vec<VerifyKey>, Duration), JwksError> {
    let classify = |e: reqwest::Error| {
        if e.is_timeout() {
            JwksError::Timeout
        } else {
            JwksError::Unreachable
        }
    };
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(classify)?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(JwksError::Status);
    }
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
    {
        return Err(JwksError::TooLarge);
    }
    let age = max_age(
        resp.headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
    );
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((parse(&body)?, age))
}

/// Reads and parses a JWKS file (blocking; start-up and rare re-reads).
pub fn read_file(path: &str) -> Result<Vec<VerifyKey>, JwksError> {
    let meta = std::fs::metadata(path).map_err(|_| JwksError::FileUnreadable)?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge);
    }
    let body = std::fs::read(path).map_err(|_| JwksError::FileUnreadable)?;
    parse(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn max_age_is_clamped_with_a_default() {
        assert_eq!(max_age(None), DEFAULT_MAX_AGE);
        assert_eq!(
            max_age(Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(max_age(Some("max-age=5")), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=99999999")), MAX_MAX_AGE);
        assert_eq!(max_age(Some("public")), DEFAULT_MAX_AGE);
        assert_eq!(max_age(Some("max-age=junk")), DEFAULT_MAX_AGE);
        assert_eq!(max_age(Some("no-store, max-age=600")), MIN_MAX_AGE);
    }

    fn b64(n: usize, fill: u8) -> String {
        URL_SAFE_NO_PAD.encode(vec![fill; n])
    }

    fn doc(keys: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap_or_default()
    }

    #[test]
    fn hmac_and_unusable_keys_are_never_loaded() {
        let oct = json!({"kty": "oct", "kid": "h", "k": b64(32, 1), "alg": "HS256"});
        let enc = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(32, 2), "use": "enc"});
        let small_rsa = json!({"kty": "RSA", "n": b64(128, 0xff), "e": "AQAB"});
        let wrong_alg = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(32, 2), "alg": "RS256"});
        let hs_on_rsa = json!({"kty": "RSA", "n": b64(256, 0xff), "e": "AQAB", "alg": "HS256"});
        let bad_curve = json!({"kty": "EC", "crv": "P-521", "x": b64(66, 1), "y": b64(66, 1)});
        let short_ec = json!({"kty": "EC", "crv": "P-256", "x": b64(31, 1), "y": b64(32, 1)});
        let no_verify =
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(32, 2), "key_ops": ["sign"]});
        for k in [
            oct, enc, small_rsa, wrong_alg, hs_on_rsa, bad_curve, short_ec, no_verify,
        ] {
            assert_eq!(
                parse(&doc(json!([k.clone()]))).err(),
                Some(JwksError::NoUsableKeys),
                "{k}"
            );
        }
        assert_eq!(parse(b"[]").err(), Some(JwksError::NotJwks));
    }

    #[test]
    fn usable_keys_are_typed() {
        let keys = parse(&doc(json!([
            {"kty": "oct", "k": b64(32, 1)},
            {"kty": "RSA", "kid": "r", "n": b64(256, 0xff), "e": "AQAB", "use": "sig"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(32, 1), "y": b64(32, 1), "alg": "ES256"},
            {"kty": "OKP", "kid": "d", "crv": "Ed25519", "x": b64(32, 2)},
        ])))
        .unwrap_or_default();
        let kinds: Vec<_> = keys.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [KeyKind::Rsa, KeyKind::P256, KeyKind::Ed25519]);
        assert!(keys[0].allows(Algorithm::RS256) && keys[0].allows(Algorithm::PS512));
        assert!(!keys[0].allows(Algorithm::HS256));
        assert!(keys[1].allows(Algorithm::ES256) && !keys[1].allows(Algorithm::ES384));
        assert!(keys[2].allows(Algorithm::EdDSA) && !keys[2].allows(Algorithm::HS256));
    }
}
