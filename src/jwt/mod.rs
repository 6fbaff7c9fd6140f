//! JWT access tokens from configured identity providers, accepted beside API
//! keys (DESIGN §3 "JWT and roles").
//!
//! The contract between the verifier (this module: JWKS fetching, caching,
//! rotation, signature and claim checks) and the proxy (route `auth` modes,
//! per-subject limits, upstream headers): [`Jwt::verify`] turns a bearer
//! token into a [`JwtIdentity`] or a [`TokenError`], without I/O on the hot
//! path except a rate-limited, single-flight re-fetch on an unknown `kid`.
//!
//! Hot path: a length check, base64/JSON decoding of header and payload (the
//! payload's `iss` only chooses the issuer), one `ArcSwap` load and a
//! `HashMap` lookup by `kid`, the signature check (ring, through
//! `jsonwebtoken::crypto`), then the claims against the injected clock.

pub mod clock;
pub mod jwks;
mod refresh;
pub mod token;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use metrics::Counter;

use crate::config::{IssuerConfig, JwtConfig, KeySource, Limits};
use crate::keys::scope::Scope;

pub use self::clock::{Clock, ManualClock, SystemClock};
use self::jwks::{JwksError, KeySet, VerifyKey};
pub use self::refresh::JwksRefresher;

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

/// The `outcome` label of `gateway_jwt_verifications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Expired,
    /// Not three base64url JSON parts, too long, `crit` present.
    Malformed,
    /// `iss` missing or not a configured issuer.
    UnknownIssuer,
    /// `alg` not allowed for the issuer (this includes `none`), or no key
    /// of the issuer fits it.
    AlgNotAllowed,
    UnknownKid,
    BadSignature,
    /// `aud`, `nbf`, `iat`, `sub`, or a missing `exp`.
    InvalidClaims,
    /// The issuer has no key set yet.
    NoKeys,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::Expired,
        Outcome::Malformed,
        Outcome::UnknownIssuer,
        Outcome::AlgNotAllowed,
        Outcome::UnknownKid,
        Outcome::BadSignature,
        Outcome::InvalidClaims,
        Outcome::NoKeys,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Expired => "expired",
            Outcome::Malformed => "malformed",
            Outcome::UnknownIssuer => "unknown_issuer",
            Outcome::AlgNotAllowed => "alg_not_allowed",
            Outcome::UnknownKid => "unknown_kid",
            Outcome::BadSignature => "bad_signature",
            Outcome::InvalidClaims => "invalid_claims",
            Outcome::NoKeys => "no_keys",
        }
    }
}

/// A refusal: the metric outcome and the caller-safe description.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub outcome: Outcome,
    pub reason: &'static str,
}

impl Refusal {
    pub(crate) const fn new(outcome: Outcome, reason: &'static str) -> Self {
        Refusal { outcome, reason }
    }

    fn into_error(self) -> TokenError {
        match self.outcome {
            Outcome::Expired => TokenError::Expired,
            _ => TokenError::Invalid(self.reason),
        }
    }
}

/// An unknown `kid` re-fetches an issuer's JWKS at most this often.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long a verification waits for a re-fetch (its own or one in flight)
/// before refusing the token; the fetch itself carries on.
pub const REFETCH_WAIT: Duration = Duration::from_secs(2);
/// A key set older than twice its max-age (at most this) is stale: `/health`
/// says degraded, and the keys keep working.
pub const STALE_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Label value for refusals that name no configured issuer.
pub const UNKNOWN_ISSUER_LABEL: &str = "unknown";

/// Counters per outcome, registered (at zero) when the verifier is built.
struct OutcomeCounters([Counter; 9]);

impl OutcomeCounters {
    fn new(issuer: &str) -> Self {
        OutcomeCounters(Outcome::ALL.map(|o| {
            let c = metrics::counter!(
                "gateway_jwt_verifications_total",
                "issuer" => issuer.to_string(),
                "outcome" => o.as_str()
            );
            c.increment(0);
            c
        }))
    }

    fn record(&self, o: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|x| *x == o) {
            self.0[i].increment(1);
        }
    }
}

/// One issuer's configuration and live key set.
pub(crate) struct Issuer {
    pub cfg: IssuerConfig,
    /// Allowed algorithms, parsed once.
    algorithms: Vec<Algorithm>,
    /// `None` until the first successful load.
    pub keys: ArcSwapOption<KeySet>,
    /// Serialises loads: concurrent unknown-`kid` verifications share one.
    fetch_lock: tokio::sync::Mutex<()>,
    /// When the last load started (clock ms), for the re-fetch rate limit.
    last_attempt_ms: AtomicI64,
    /// The last load's failure, cleared by a success.
    last_error: parking_lot::Mutex<Option<(&'static str, i64)>>,
    counters: OutcomeCounters,
}

/// Verifies tokens for every configured issuer.
pub struct Jwt {
    cfg: JwtConfig,
    pub(crate) issuers: Vec<Arc<Issuer>>,
    clock: Arc<dyn Clock>,
    http: Option<reqwest::Client>,
    unknown: OutcomeCounters,
}

/// One issuer's key-set state, for `/health`.
#[derive(Debug, Clone)]
pub struct IssuerStatus {
    pub name: Arc<str>,
    /// `jwks_url`, `jwks_file` or `hs256_secret`.
    pub source: &'static str,
    /// Keys in the current set; `None` before the first load.
    pub keys: Option<usize>,
    pub age_seconds: Option<f64>,
    pub max_age_seconds: Option<u64>,
    /// Older than twice its max-age (at most 24 h): still used.
    pub stale: bool,
    /// The last load's failure code and how long ago it happened.
    pub last_error: Option<&'static str>,
    pub last_error_seconds_ago: Option<f64>,
}

impl Jwt {
    pub fn new(cfg: &JwtConfig) -> Arc<Self> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// As [`Jwt::new`], with the clock claims, ages and the re-fetch rate
    /// limit are measured by. `hs256_secret` and `jwks_file` issuers are
    /// loaded here; `jwks_url` ones by [`Jwt::refresh_all`] or the
    /// [`JwksRefresher`].
    pub fn with_clock(cfg: &JwtConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        let needs_http = cfg
            .issuers
            .iter()
            .any(|i| matches!(i.keys, KeySource::JwksUrl(_)));
        let http = if needs_http { jwks::client() } else { None };
        if needs_http && http.is_none() {
            tracing::error!("jwt: cannot build the HTTP client for JWKS fetches");
        }
        let issuers = cfg
            .issuers
            .iter()
            .map(|c| {
                let iss = Arc::new(Issuer {
                    algorithms: c.algorithms.iter().filter_map(|a| a.parse().ok()).collect(),
                    cfg: c.clone(),
                    keys: ArcSwapOption::empty(),
                    fetch_lock: tokio::sync::Mutex::new(()),
                    last_attempt_ms: AtomicI64::new(i64::MIN),
                    last_error: parking_lot::Mutex::new(None),
                    counters: OutcomeCounters::new(&c.name),
                });
                let name: &str = &c.name;
                metrics::gauge!("gateway_jwks_keys", "issuer" => name.to_string()).set(0.0);
                metrics::gauge!("gateway_jwks_age_seconds", "issuer" => name.to_string()).set(0.0);
                for result in ["ok", "error"] {
                    metrics::counter!(
                        "gateway_jwks_refreshes_total",
                        "issuer" => name.to_string(),
                        "result" => result
                    )
                    .increment(0);
                }
                iss
            })
            .collect();
        let jwt = Arc::new(Jwt {
            cfg: cfg.clone(),
            issuers,
            clock,
            http,
            unknown: OutcomeCounters::new(UNKNOWN_ISSUER_LABEL),
        });
        for iss in &jwt.issuers {
            match &iss.cfg.keys {
                KeySource::Hs256Secret(s) => {
                    let set = KeySet::new(
                        vec![VerifyKey::hmac(s.expose().as_bytes())],
                        jwt.clock.now_ms(),
                        jwks::MAX_MAX_AGE,
                    );
                    iss.keys.store(Some(Arc::new(set)));
                }
                KeySource::JwksFile(_) => {
                    let _ = jwt.load_sync_file(iss);
                }
                KeySource::JwksUrl(_) => {}
            }
        }
        jwt.update_gauges();
        jwt
    }

    /// Whether any issuer is configured.
    pub fn is_enabled(&self) -> bool {
        self.cfg.is_enabled()
    }

    /// Whether every issuer has a usable key set (readiness).
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.load().is_some())
    }

    /// Verifies `token` (the bearer value, without the scheme).
    pub async fn verify(&self, token: &str) -> Result<JwtIdentity, TokenError> {
        match self.verify_inner(token).await {
            Ok((iss, id)) => {
                iss.counters.record(Outcome::Ok);
                Ok(id)
            }
            Err((iss, r)) => {
                match iss {
                    Some(i) => i.counters.record(r.outcome),
                    None => self.unknown.record(r.outcome),
                }
                Err(r.into_error())
            }
        }
    }

    async fn verify_inner(
        &self,
        token: &str,
    ) -> Result<(&Arc<Issuer>, JwtIdentity), (Option<&Arc<Issuer>>, Refusal)> {
        let u = token::decode(token).map_err(|r| (None, r))?;
        let iss = u
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .and_then(|s| self.issuers.iter().find(|i| i.cfg.issuer == s))
            .ok_or((None, Refusal::new(Outcome::UnknownIssuer, "unknown issuer")))?;
        let fail = |r: Refusal| (Some(iss), r);
        if u.header.crit.is_some() {
            return Err(fail(Refusal::new(
                Outcome::Malformed,
                "unsupported critical header",
            )));
        }
        // `none` is not an `Algorithm`, so it can never be allowed.
        let alg = u
            .header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| iss.algorithms.contains(a))
            .ok_or(fail(Refusal::new(
                Outcome::AlgNotAllowed,
                "algorithm not allowed",
            )))?;

        self.check_signature(iss, alg, u.header.kid.as_deref(), u.message, u.signature)
            .await
            .map_err(fail)?;

        let now_s = self.clock.now_ms().div_euclid(1000);
        let c = token::check_claims(&u.claims, &iss.cfg, now_s).map_err(fail)?;
        Ok((
            iss,
            JwtIdentity {
                issuer: iss.cfg.name.clone(),
                subject: Arc::from(c.subject),
                scopes: Arc::from(c.scopes),
                limits: iss.cfg.rate_limits,
                forward_token: iss.cfg.forward_token,
                expires_at: c.expires_at,
            },
        ))
    }

    /// Finds the key and checks the signature. An unknown `kid` re-fetches
    /// the issuer's JWKS (rate limited, single flight) once before refusing.
    async fn check_signature(
        &self,
        iss: &Arc<Issuer>,
        alg: Algorithm,
        kid: Option<&str>,
        message: &str,
        signature: &str,
    ) -> Result<(), Refusal> {
        let no_keys = Refusal::new(Outcome::NoKeys, "issuer keys not available");
        let unknown_kid = Refusal::new(Outcome::UnknownKid, "unknown key id");
        let no_fit = Refusal::new(Outcome::AlgNotAllowed, "no key for this algorithm");
        let bad_sig = Refusal::new(Outcome::BadSignature, "bad signature");
        let verify = |k: &VerifyKey| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg)
                .unwrap_or(false)
        };

        let set = match iss.keys.load_full() {
            Some(s) => s,
            None => {
                if matches!(iss.cfg.keys, KeySource::Hs256Secret(_)) {
                    return Err(no_keys);
                }
                self.refetch(iss).await;
                iss.keys.load_full().ok_or(no_keys)?
            }
        };

        // A shared secret has no `kid`: whatever the token says, that key.
        if matches!(iss.cfg.keys, KeySource::Hs256Secret(_)) || kid.is_none() {
            let mut fitting = set.all.iter().filter(|k| k.allows(alg)).peekable();
            if fitting.peek().is_none() {
                return Err(no_fit);
            }
            return if fitting.any(|k| verify(k)) {
                Ok(())
            } else {
                Err(bad_sig)
            };
        }
        let kid = kid.unwrap_or_default();
        let key = match set.by_kid.get(kid) {
            Some(k) => k.clone(),
            None => {
                self.refetch(iss).await;
                let fresh = iss.keys.load_full().ok_or(no_keys)?;
                let found = fresh.by_kid.get(kid).cloned();
                found.ok_or(unknown_kid)?
            }
        };
        if !key.allows(alg) {
            return Err(no_fit);
        }
        if verify(&key) {
            Ok(())
        } else {
            Err(bad_sig)
        }
    }

    /// The unknown-`kid` re-fetch: at most one per issuer per
    /// [`REFETCH_MIN_INTERVAL`]; callers arriving while one runs wait for it
    /// (at most [`REFETCH_WAIT`] in all) and then use its result.
    async fn refetch(&self, iss: &Arc<Issuer>) {
        let recent = || {
            let last = iss.last_attempt_ms.load(Ordering::Acquire);
            last != i64::MIN
                && self.clock.now_ms().saturating_sub(last)
                    < REFETCH_MIN_INTERVAL.as_millis() as i64
        };
        // Rate limited and no fetch in flight to wait for: refuse at once,
        // without queueing behind other callers.
        if recent() && iss.fetch_lock.try_lock().is_ok() {
            return;
        }
        let wait = async {
            let _guard = iss.fetch_lock.lock().await;
            if recent() {
                return;
            }
            // In a task of its own, so a caller that gives up waiting does
            // not cancel the fetch other callers will benefit from.
            let (jwt_issuer, this) = (iss.clone(), self.loader());
            let task = tokio::spawn(async move { this.load(&jwt_issuer).await });
            let _ = task.await;
        };
        let _ = tokio::time::timeout(REFETCH_WAIT, wait).await;
    }

    /// What a spawned load needs, without borrowing `self`.
    fn loader(&self) -> Loader {
        Loader {
            clock: self.clock.clone(),
            http: self.http.clone(),
        }
    }

    fn load_sync_file(&self, iss: &Issuer) -> Result<Duration, JwksError> {
        let KeySource::JwksFile(path) = &iss.cfg.keys else {
            return Ok(jwks::DEFAULT_MAX_AGE);
        };
        let now = self.clock.now_ms();
        iss.last_attempt_ms.store(now, Ordering::Release);
        let r = jwks::read_file(path);
        Loader::store(iss, r.map(|k| (k, jwks::DEFAULT_MAX_AGE)), now)
    }

    /// Loads every `jwks_url` and `jwks_file` issuer's keys once, in turn,
    /// ignoring the re-fetch rate limit; returns how many failed.
    pub async fn refresh_all(&self) -> usize {
        let mut failed = 0;
        for iss in &self.issuers {
            if matches!(iss.cfg.keys, KeySource::Hs256Secret(_)) {
                continue;
            }
            let _guard = iss.fetch_lock.lock().await;
            if self.loader().load(iss).await.is_err() {
                failed += 1;
            }
        }
        failed
    }

    /// Each issuer's key-set state (for `/health`).
    pub fn status(&self) -> Vec<IssuerStatus> {
        let now = self.clock.now_ms();
        self.issuers
            .iter()
            .map(|iss| {
                let set = iss.keys.load();
                let age_ms = set
                    .as_ref()
                    .map(|s| now.saturating_sub(s.loaded_at_ms).max(0));
                let (source, stale) = match &iss.cfg.keys {
                    KeySource::JwksUrl(_) => ("jwks_url", true),
                    KeySource::JwksFile(_) => ("jwks_file", false),
                    KeySource::Hs256Secret(_) => ("hs256_secret", false),
                };
                // Only fetched sets go stale: a file or a secret is what
                // the configuration says it is.
                let stale = stale
                    && match (set.as_ref(), age_ms) {
                        (Some(s), Some(age)) => {
                            let limit = (s.max_age * 2).min(STALE_AFTER_MAX);
                            age > limit.as_millis() as i64
                        }
                        _ => false,
                    };
                let err = *iss.last_error.lock();
                IssuerStatus {
                    name: iss.cfg.name.clone(),
                    source,
                    keys: set.as_ref().map(|s| s.all.len()),
                    age_seconds: age_ms.map(|a| a as f64 / 1000.0),
                    max_age_seconds: set.as_ref().map(|s| s.max_age.as_secs()),
                    stale,
                    last_error: err.map(|(code, _)| code),
                    last_error_seconds_ago: err
                        .map(|(_, at)| now.saturating_sub(at).max(0) as f64 / 1000.0),
                }
            })
            .collect()
    }

    /// Sets `gateway_jwks_age_seconds` and `gateway_jwks_keys` (at scrape).
    pub fn update_gauges(&self) {
        for s in self.status() {
            let name = s.name.to_string();
            metrics::gauge!("gateway_jwks_keys", "issuer" => name.clone())
                .set(s.keys.unwrap_or(0) as f64);
            metrics::gauge!("gateway_jwks_age_seconds", "issuer" => name)
                .set(s.age_seconds.unwrap_or(0.0));
        }
    }
}

/// Loads key sets; cloneable into a spawned task.
#[derive(Clone)]
pub(crate) struct Loader {
    clock: Arc<dyn Clock>,
    http: Option<reqwest::Client>,
}

impl Loader {
    /// Loads an issuer's keys from its source and publishes them; on
    /// failure the last good set stays. The caller holds `fetch_lock`.
    /// Returns the refresh interval the source asked for.
    pub(crate) async fn load(&self, iss: &Issuer) -> Result<Duration, JwksError> {
        let now = self.clock.now_ms();
        iss.last_attempt_ms.store(now, Ordering::Release);
        let r = match &iss.cfg.keys {
            KeySource::JwksUrl(url) => match &self.http {
                Some(c) => jwks::fetch(c, url).await,
                None => Err(JwksError::Unreachable),
            },
            KeySource::JwksFile(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || jwks::read_file(&path))
                    .await
                    .unwrap_or(Err(JwksError::FileUnreadable))
                    .map(|k| (k, jwks::DEFAULT_MAX_AGE))
            }
            KeySource::Hs256Secret(_) => return Ok(jwks::MAX_MAX_AGE),
        };
        Self::store(iss, r, self.clock.now_ms())
    }

    fn store(
        iss: &Issuer,
        r: Result<(Vec<VerifyKey>, Duration), JwksError>,
        now: i64,
    ) -> Result<Duration, JwksError> {
        let name = iss.cfg.name.to_string();
        match r {
            Ok((keys, max_age)) => {
                let n = keys.len();
                iss.keys
                    .store(Some(Arc::new(KeySet::new(keys, now, max_age))));
                *iss.last_error.lock() = None;
                metrics::counter!("gateway_jwks_refreshes_total", "issuer" => name.clone(), "result" => "ok")
                    .increment(1);
                metrics::gauge!("gateway_jwks_keys", "issuer" => name).set(n as f64);
                tracing::debug!(issuer = %iss.cfg.name, keys = n, "jwt: key set loaded");
                Ok(max_age)
            }
            Err(e) => {
                *iss.last_error.lock() = Some((e.code(), now));
                metrics::counter!("gateway_jwks_refreshes_total", "issuer" => name, "result" => "error")
                    .increment(1);
                tracing::warn!(issuer = %iss.cfg.name, error = e.code(), "jwt: key set load failed; keeping the last good set");
                Err(e)
            }
        }
    }
}
