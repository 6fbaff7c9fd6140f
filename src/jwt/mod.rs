//! JWT access tokens from configured identity providers, accepted beside API
//! keys (DESIGN §3 "JWT and roles").
//!
//! The contract between the verifier (this module: JWKS fetching, caching,
//! rotation, signature and claim checks) and the proxy (route `auth` modes,
//! per-subject limits, upstream headers): [`Jwt::verify`] turns a bearer
//! token into a [`JwtIdentity`] or a [`TokenError`], without I/O on the hot
//! path except a rate-limited, single-flight re-fetch on an unknown `kid`.

use std::sync::Arc;

use crate::config::{JwtConfig, Limits};
use crate::keys::scope::Scope;

/// A verified token's caller.
#[derive(Debug, Clone)]
pub struct JwtIdentity {
    /// The issuer's configured `name` (not the `iss` URL).
    pub issuer: Arc<str>,
    /// The `sub` claim.
    pub subject: Arc<str>,
    /// Parsed from the issuer's `scopes_claim`; unparseable entries dropped.
    pub scopes: Arc<[Scope]>,
    /// The issuer's per-subject limits, if it sets any.
    pub limits: Option<Limits>,
    /// Whether the upstream still receives the token.
    pub forward_token: bool,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

/// Why a token was refused. Maps to 401 `invalid_token` / `expired_token`
/// with `WWW-Authenticate: Bearer error="invalid_token", error_description=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, bad signature, wrong `iss`/`aud`, not yet valid, unknown
    /// `kid`, disallowed `alg`. The text is safe to show the caller and never
    /// echoes the token.
    Invalid(&'static str),
    /// `exp` (plus leeway) has passed.
    Expired,
}

/// Verifies tokens for every configured issuer.
pub struct Jwt {
    cfg: JwtConfig,
}

impl Jwt {
    pub fn new(cfg: &JwtConfig) -> Arc<Self> {
        Arc::new(Self { cfg: cfg.clone() })
    }

    /// Whether any issuer is configured.
    pub fn is_enabled(&self) -> bool {
        self.cfg.is_enabled()
    }

    /// Whether every issuer has a usable key set (readiness).
    pub fn is_ready(&self) -> bool {
        !self.is_enabled()
    }

    /// Verifies `token` (the bearer value, without the scheme).
    pub async fn verify(&self, _token: &str) -> Result<JwtIdentity, TokenError> {
        Err(TokenError::Invalid(
            "JWT verification is not implemented yet",
        ))
    }
}
