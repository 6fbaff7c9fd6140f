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
    for (i, iss) in issuers.iter().enumerate() {
        if !seen.insert(iss.name.clone()) {
            errs.push(format!("jwt.issuers[{i}].name"), "duplicate issuer name");
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
    let keys = match (r.jwks_url, r.jwks_file, r.hs256_secret) {
        (Some(u), None, None) => Some(KeySource::JwksUrl(u)),
        (None, Some(f), None) => Some(KeySource::JwksFile(f)),
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
    let rate_limits = r
        .rate_limits
        .map(|l| build_limits(Some(l), &format!("{path}.rate_limits"), errs));
    Some(IssuerConfig {
        name: name?,
        issuer: issuer?,
        audiences,
        keys: keys?,
        algorithms,
        scopes_claim: r.scopes_claim.unwrap_or_else(|| "scope".into()),
        leeway: Duration::from_secs(leeway.min(300)),
        rate_limits,
        forward_token: r.forward_token.unwrap_or(false),
    })
}
