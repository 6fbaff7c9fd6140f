//! `[jwt]` and `[[jwt.issuers]]`: identity providers whose access tokens the
//! proxy accepts beside API keys (DESIGN §3 "JWT and roles").

use std::sync::Arc;
use std::time::Duration;

use super::rate_limits::{build_limits, Limits};
use super::validate::is_name;
use super::{file, Errors, Secret};

/// Algorithms an issuer may allow. `none` is never one of them.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
];

/// Shortest `hs256_secret`, in bytes: the HMAC-SHA256 output size.
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Fetched over HTTP(S), cached and refreshed in the background.
    JwksUrl(String),
    /// A JWKS document on disk, read at start (and on reload).
    JwksFile(String),
    /// A shared secret; only `HS256` may be allowed with it.
    Hs256Secret(Secret),
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Short name used in metrics, health and `X-Gateway-Issuer`.
    pub name: Arc<str>,
    /// The exact `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Allowed `alg` values (from [`ALGORITHMS`]).
    pub algorithms: Vec<String>,
    /// The claim holding scopes: a space-separated string or an array.
    pub scopes_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Per subject (`sub`) of this issuer; unset tiers fall back to
    /// `[rate_limits] default`.
    pub rate_limits: Option<Limits>,
    /// Whether the upstream still receives the `Authorization` header.
    pub forward_token: bool,
}

#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    pub issuers: Vec<IssuerConfig>,
}

impl JwtConfig {
    pub fn is_enabled(&self) -> bool {
        !self.issuers.is_empty()
    }
}

pub(super) fn build_jwt(j: file::Jwt, errs: &mut Errors) -> JwtConfig {
    let mut issuers = Vec::new();
    for (i, raw) in j.issuers.unwrap_or_default().into_iter().enumerate() {
        if let Some(iss) = build_issuer(raw, &format!("jwt.issuers[{i}]"), errs) {
            issuers.push(iss);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut seen_iss = std::collections::HashSet::new();
    for (i, iss) in issuers.iter().enumerate() {
        if !seen.insert(iss.name.clone()) {
            errs.push(format!("jwt.issuers[{i}].name"), "duplicate issuer name");
        }
        // A token's `iss` chooses the issuer whose keys verify it.
        if !seen_iss.insert(iss.issuer.clone()) {
            errs.push(
                format!("jwt.issuers[{i}].issuer"),
                "another issuer has the same `issuer`",
            );
        }
    }
    JwtConfig { issuers }
}

fn build_issuer(r: file::JwtIssuer, path: &str, errs: &mut Errors) -> Option<IssuerConfig> {
    let name = match r.name {
        Some(n) if is_name(&n) => Some(Arc::<str>::from(n)),
        Some(_) => {
            errs.push(format!("{path}.name"), "must be 1-64 of [A-Za-z0-9_.-]");
            None
        }
        None => {
            errs.push(format!("{path}.name"), "missing");
            None
        }
    };
    let issuer = match r.issuer {
        Some(s) if !s.is_empty() => Some(s),
        _ => {
            errs.push(format!("{path}.issuer"), "missing");
            None
        }
    };
    let audiences = r.audiences.unwrap_or_default();
    if audiences.is_empty() {
        errs.push(
            format!("{path}.audiences"),
            "at least one audience is needed",
        );
    }
    if audiences.iter().any(|a| a.is_empty()) {
        errs.push(format!("{path}.audiences"), "an audience may not be empty");
    }
    let keys = match (r.jwks_url, r.jwks_file, r.hs256_secret) {
        (Some(u), None, None) => match url::Url::parse(&u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {
                Some(KeySource::JwksUrl(u))
            }
            _ => {
                errs.push(format!("{path}.jwks_url"), "must be an http(s) URL");
                None
            }
        },
        (None, Some(f), None) if f.is_empty() => {
            errs.push(format!("{path}.jwks_file"), "must not be empty");
            None
        }
        (None, Some(f), None) => Some(KeySource::JwksFile(f)),
        // HS256 with a short secret is brute-forceable offline from any
        // one token (RFC 7518 §3.2: a key at least as long as the hash).
        (None, None, Some(s)) if s.len() < MIN_HS256_SECRET_LEN => {
            errs.push(
                format!("{path}.hs256_secret"),
                format!("must be at least {MIN_HS256_SECRET_LEN} bytes"),
            );
            None
        }
        (None, None, Some(s)) => Some(KeySource::Hs256Secret(Secret::new(s))),
        _ => {
            errs.push(
                path.to_string(),
                "exactly one of jwks_url, jwks_file or hs256_secret is needed",
            );
            None
        }
    };
    let algorithms = r.algorithms.unwrap_or_else(|| vec!["RS256".into()]);
    if algorithms.is_empty() {
        errs.push(
            format!("{path}.algorithms"),
            "at least one algorithm is needed",
        );
    }
    for (k, a) in algorithms.iter().enumerate() {
        if !ALGORITHMS.contains(&a.as_str()) {
            errs.push(
                format!("{path}.algorithms[{k}]"),
                format!(
                    "unsupported algorithm {a:?}; one of {}",
                    ALGORITHMS.join(", ")
                ),
            );
        }
    }
    let hmac = algorithms.iter().any(|a| a == "HS256");
    match &keys {
        Some(KeySource::Hs256Secret(_)) if algorithms.iter().any(|a| a != "HS256") => errs.push(
            format!("{path}.algorithms"),
            "an hs256_secret issuer may allow only HS256",
        ),
        Some(KeySource::JwksUrl(_) | KeySource::JwksFile(_)) if hmac => errs.push(
            format!("{path}.algorithms"),
            "HS256 needs hs256_secret; a JWKS never supplies HMAC keys",
        ),
        _ => {}
    }
    let leeway = r.leeway_seconds.unwrap_or(30);
    if leeway > 300 {
        errs.push(format!("{path}.leeway_seconds"), "must be 0 to 300");
    }
    let scopes_claim = r.scopes_claim.unwrap_or_else(|| "scope".into());
    if scopes_claim.is_empty() {
        errs.push(format!("{path}.scopes_claim"), "must not be empty");
    }
    let rate_limits = r
        .rate_limits
        .map(|l| build_limits(Some(l), &format!("{path}.rate_limits"), errs));
    Some(IssuerConfig {
        name: name?,
        issuer: issuer?,
        audiences,
        keys: keys?,
        algorithms,
        scopes_claim,
        leeway: Duration::from_secs(leeway.min(300)),
        rate_limits,
        forward_token: r.forward_token.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env};
    use super::super::{Config, Need};

    fn errors(issuers: &str) -> Vec<String> {
        match Config::from_toml(&format!("{}\n{issuers}", minimal()), no_env(), Need::Serve) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            }
        }
    }

    const GOOD: &str = r#"
[[jwt.issuers]]
name = "idp"
issuer = "https://idp.example/"
audiences = ["api"]
jwks_url = "https://idp.example/jwks.json"
algorithms = ["RS256", "EdDSA"]
"#;

    #[test]
    fn a_jwks_issuer_is_accepted_with_defaults() {
        let cfg = Config::from_toml(&format!("{}\n{GOOD}", minimal()), no_env(), Need::Serve)
            .expect("valid");
        let iss = &cfg.jwt.issuers[0];
        assert_eq!(iss.scopes_claim, "scope");
        assert_eq!(iss.leeway.as_secs(), 30);
        assert!(!iss.forward_token);
    }

    #[test]
    fn unsafe_or_ambiguous_issuers_are_refused() {
        let cases = [
            // HMAC keys never come from a JWKS.
            (
                GOOD.replace(r#"["RS256", "EdDSA"]"#, r#"["RS256", "HS256"]"#),
                "HS256 needs hs256_secret",
            ),
            (
                GOOD.replace(r#"["RS256", "EdDSA"]"#, r#"["none"]"#),
                "unsupported algorithm",
            ),
            (
                GOOD.replace(r#"["RS256", "EdDSA"]"#, "[]"),
                "at least one algorithm",
            ),
            (
                GOOD.replace("https://idp.example/jwks.json", "file:///etc/passwd"),
                "must be an http(s) URL",
            ),
            (
                GOOD.replace(
                    r#"jwks_url = "https://idp.example/jwks.json""#,
                    r#"hs256_secret = "short""#,
                )
                .replace(r#"["RS256", "EdDSA"]"#, r#"["HS256"]"#),
                "at least 32 bytes",
            ),
            (
                GOOD.replace(r#"["api"]"#, r#"[""]"#),
                "audience may not be empty",
            ),
            (
                format!(
                    "{GOOD}\n{}",
                    GOOD.replace(r#"name = "idp""#, r#"name = "idp2""#)
                ),
                "same `issuer`",
            ),
            (
                format!("{GOOD}\nscopes_claim = \"\""),
                "scopes_claim: must not be empty",
            ),
        ];
        for (text, want) in cases {
            let errs = errors(&text);
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "want {want:?} in {errs:?}"
            );
        }
    }
}
