//! Rate limits: which tiers apply to a request ([`policy`]), the
//! sliding-window arithmetic every backend shares ([`window`]), the local
//! and Redis backends ([`local`], [`redis`]), the response headers
//! ([`headers`]) and the [`RateLimiter`] the proxy and admin API call.
//! A route's own limits live on its [`Route`] in the one route table
//! ([`crate::route`]); the policy holds the rest.
//!
//! A tier is one counter with one limit over one window: "key K, per
//! minute, 600". A request names every tier that applies to it and is
//! admitted only if all of them have room; only admitted requests count
//! (DESIGN §3 "Rate-limit semantics").

pub mod batch;
pub mod headers;
pub mod local;
pub mod policy;
pub mod redis;
pub mod window;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use arrayvec::ArrayVec;
use uuid::Uuid;

use self::local::LocalStore;
use self::policy::Policy;
use self::redis::RedisStore;
use crate::config::{Config, LimitBackend, OnBackendError};
use crate::route::{Route, RouteId};

/// Most tiers one request can name: 3 per key, 3 per route, 3 global.
pub const MAX_TIERS: usize = 9;

/// The tiers of one request.
pub type Tiers = ArrayVec<Tier, MAX_TIERS>;

/// A window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Minute,
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Minute, Period::Hour, Period::Day];

    pub fn window_ms(self) -> u64 {
        match self {
            Period::Minute => 60_000,
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }
}

/// Whose requests a tier counts. Routes are identified by their
/// [`Route::id`], stable across reloads; the Redis backend names their
/// keys by the route's name instead, from the route it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// One key, across all routes.
    Key(Uuid),
    /// One key on one route (the route's `rate_limit`).
    KeyRoute(Uuid, RouteId),
    /// One client IP across all `auth = "none"` routes (`anonymous`).
    Ip(IpAddr),
    /// One client IP on one `auth = "none"` route (the route's `rate_limit`).
    IpRoute(IpAddr, RouteId),
    /// All callers of one route (the route's `global_rate_limit`).
    Global(RouteId),
    /// Failed authentications from one client IP (the brute-force guard).
    AuthFailures(IpAddr),
    /// One token subject (`sub` of one issuer, see [`token_subject`]),
    /// across all routes.
    Token(Uuid),
    /// One token subject on one route (the route's `rate_limit`).
    TokenRoute(Uuid, RouteId),
}

/// The counter id of a token caller: `sub` of the issuer named `issuer`,
/// hashed (BLAKE3, domain-separated) to a fixed 128 bits. Fixed length, so
/// a long `sub` makes no long Redis key; deterministic, so every instance
/// counts one subject in the same Redis counter; collision-resistant, so
/// no subject can be chosen to share another's counter. The same `sub`
/// from two issuers is two callers. Issuer names never hold a NUL (config
/// validation), so the encoding is unambiguous.
pub fn token_subject(issuer: &str, sub: &str) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"gateway token subject\0");
    h.update(issuer.as_bytes());
    h.update(b"\0");
    h.update(sub.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Uuid::from_bytes(id)
}

/// One counter with its limit.
/// Every tier name, by subject class (key, route, ip, global, auth
/// failures) and period: the `tier` label values of
/// `gateway_rate_limited_total`, registered at boot from this same table.
pub const TIER_NAMES: [[&str; 3]; 5] = [
    ["minute", "hour", "day"],
    ["route-minute", "route-hour", "route-day"],
    ["ip-minute", "ip-hour", "ip-day"],
    ["global-minute", "global-hour", "global-day"],
    [
        "auth-failures-minute",
        "auth-failures-hour",
        "auth-failures-day",
    ],
];

/// The tiers of the brute-force guard, the only ones the admin API counts.
pub const AUTH_FAILURE_TIERS: [&str; 3] = TIER_NAMES[4];

/// `kind` labels of `gateway_rate_limit_backend_errors_total` ([`BackendError::kind`]).
pub const BACKEND_ERROR_KINDS: &[&str] = &["timeout", "disconnected", "error", "queue_full"];

/// `decision` labels of `gateway_rate_limit_fallback_total`.
const FALLBACK_ALLOW: &str = "allow";
const FALLBACK_DENY: &str = "deny";

/// Registers the rate limiter's own metrics at zero, so they are exported
/// from start-up (also without Redis: an alert on them then stays quiet
/// rather than having no series). `gateway_rate_limited_total` is
/// registered with the routes, by [`crate::telemetry::register_at_boot`].
pub fn register_metrics() {
    for kind in BACKEND_ERROR_KINDS {
        metrics::counter!("gateway_rate_limit_backend_errors_total", "kind" => *kind).absolute(0);
    }
    for decision in [FALLBACK_ALLOW, FALLBACK_DENY] {
        metrics::counter!("gateway_rate_limit_fallback_total", "decision" => decision).absolute(0);
    }
    let _ = metrics::histogram!("gateway_rate_limit_backend_duration_seconds");
    let _ = metrics::histogram!("gateway_rate_limit_batch_size");
    metrics::gauge!("gateway_rate_limit_local_counters").set(0.0);
    for class in local::EVICTION_CLASSES {
        metrics::counter!("gateway_rate_limit_evictions_total", "class" => *class).absolute(0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub subject: Subject,
    pub period: Period,
    pub limit: u32,
}

impl Tier {
    /// The tier's name in headers, 429 messages and the `tier` metric label:
    /// `minute`, `route-hour`, `global-minute`, `ip-day`, `auth-failures-minute`…
    pub fn name(&self) -> &'static str {
        let class = match self.subject {
            Subject::Key(_) | Subject::Token(_) => 0,
            Subject::KeyRoute(..) | Subject::IpRoute(..) | Subject::TokenRoute(..) => 1,
            Subject::Ip(_) => 2,
            Subject::Global(_) => 3,
            Subject::AuthFailures(_) => 4,
        };
        TIER_NAMES[class][self.period as usize]
    }

    pub fn window_ms(&self) -> u64 {
        self.period.window_ms()
    }
}

/// Where one tier stands after a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierState {
    pub tier: Tier,
    /// Requests the tier would still admit right now.
    pub remaining: u32,
    /// Milliseconds until the tier admits again when it has no room;
    /// otherwise until its current window ends.
    pub reset_ms: u64,
}

impl TierState {
    /// Whole seconds until `reset_ms`, at least 1: the `Retry-After` value.
    pub fn reset_seconds(&self) -> u64 {
        self.reset_ms.div_ceil(1000).max(1)
    }

    /// Unix seconds of the reset, rounded up: `X-RateLimit-Reset`.
    pub fn reset_at(&self, now_ms: u64) -> u64 {
        (now_ms + self.reset_ms).div_ceil(1000)
    }
}

/// The outcome of checking (and, when admitted, counting) a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub admitted: bool,
    /// The backend's clock when it decided, Unix ms.
    pub now_ms: u64,
    pub tiers: ArrayVec<TierState, MAX_TIERS>,
}

impl Decision {
    /// The tier the `X-RateLimit-*` headers describe: when refused, the
    /// blocking tier that frees up last; otherwise the one closest to
    /// exhaustion.
    /// The headline tier's name: the tier a 429 names.
    pub fn headline_name(&self) -> &'static str {
        self.headline().map_or("unknown", |s| s.tier.name())
    }

    pub fn headline(&self) -> Option<&TierState> {
        if self.admitted {
            self.tiers
                .iter()
                .min_by_key(|s| (s.remaining, std::cmp::Reverse(s.reset_ms)))
        } else {
            self.tiers
                .iter()
                .filter(|s| s.remaining == 0)
                .max_by_key(|s| s.reset_ms)
        }
    }
}

/// Why the shared backend could not decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("no connection to Redis")]
    Disconnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Redis(String),
    /// Too many checks already wait for a Redis call ([`batch::MAX_QUEUED`]).
    #[error("too many rate-limit checks waiting for Redis")]
    QueueFull,
}

impl BackendError {
    /// The `kind` label of `gateway_rate_limit_backend_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Timeout(_) => BACKEND_ERROR_KINDS[0],
            BackendError::Disconnected => BACKEND_ERROR_KINDS[1],
            BackendError::Redis(_) => BACKEND_ERROR_KINDS[2],
            BackendError::QueueFull => BACKEND_ERROR_KINDS[3],
        }
    }
}

/// What the proxy does with a request after the limits were checked.
#[derive(Debug)]
pub enum Verdict {
    Admitted(Decision),
    Limited(Decision),
    /// The backend failed and `on_backend_error = "allow"`: admitted, with
    /// no headers since nothing is known about the counters.
    FailedOpen,
    /// The backend failed and `on_backend_error = "deny"`.
    FailedClosed,
}

/// A client as the limits see it: its address (see
/// [`crate::identity::client_ip`]), the address its requests are
/// counted under, and whether `exempt_ips` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's own address: for logs, the audit log and `exempt_ips`.
    pub ip: Option<IpAddr>,
    /// What per-IP tiers and the brute-force guard count: `ip`, with IPv6
    /// addresses cut to their `rate_limits.ipv6_prefix` network, since one
    /// host usually holds a whole /64 and could otherwise rotate through it.
    pub bucket: Option<IpAddr>,
    pub exempt: bool,
}

/// The network of `ip` that its requests are counted under: an IPv6
/// address cut to its first `ipv6_prefix` bits (1-128); IPv4 unchanged.
pub fn ip_bucket(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// How a check treats the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Admit if every tier has room, and then count the request in each.
    Count,
    /// Report only; count nothing.
    Peek,
    /// Count in every tier whether or not it has room (failed
    /// authentications, which are counted because they happened).
    Record,
}

enum Backend {
    Local(LocalStore),
    Redis(RedisStore),
}

/// The local stores' clock: the wall clock at start-up plus the monotonic
/// time since. It never steps back, so a wall clock stepped back (by an
/// operator or NTP) neither resets local counters nor freezes them until
/// it catches up; it stays close enough to Unix time for
/// `X-RateLimit-Reset`. (The Redis backend reads Redis's own clock.)
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    anchor_ms: u64,
    started: Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            anchor_ms: crate::now_ms().max(0) as u64,
            started: Instant::now(),
        }
    }

    /// Unix-scale milliseconds, never less than an earlier reading.
    pub fn now_ms(&self) -> u64 {
        let since = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.anchor_ms.saturating_add(since)
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

/// The rate limiter of one gateway process, shared by the proxy and the
/// admin API.
pub struct RateLimiter {
    /// Swapped whole by a configuration reload; read through
    /// [`RateLimiter::policy`].
    policy: ArcSwap<Policy>,
    backend: Backend,
    /// Failed authentications per IP. Always local: the guard sits before
    /// any key work and must not cost a Redis round trip per request.
    guard: LocalStore,
    on_backend_error: OnBackendError,
    /// The clock of the local stores.
    clock: MonotonicClock,
    /// `rate_limits.ipv6_prefix`.
    ipv6_prefix: u8,
}

impl RateLimiter {
    pub fn new(cfg: &Config) -> anyhow::Result<Arc<RateLimiter>> {
        let rl = &cfg.rate_limits;
        let backend = match (rl.backend, &cfg.redis) {
            (LimitBackend::Redis, Some(redis)) => Backend::Redis(RedisStore::new(redis)?),
            _ => Backend::Local(LocalStore::new(rl.max_local_counters)),
        };
        Ok(Arc::new(RateLimiter {
            policy: ArcSwap::from_pointee(Policy::new(cfg)),
            backend,
            guard: LocalStore::with_capacity((rl.max_local_counters / 4).max(1_000), 0),
            on_backend_error: rl.on_backend_error,
            clock: MonotonicClock::new(),
            ipv6_prefix: rl.ipv6_prefix,
        }))
    }

    /// The policy in force: one atomic load. Hold it for one decision; a
    /// reload publishes a new one with [`RateLimiter::set_policy`].
    pub fn policy(&self) -> Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The policy in force as an `Arc`, for a holder that awaits while it
    /// reads it (the admin API).
    pub fn policy_full(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Publishes `policy` (a configuration reload); checks after this
    /// return use it, counters are untouched.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        }
    }

    /// The Redis backend, if that is the one in use.
    pub fn redis(&self) -> Option<&RedisStore> {
        match &self.backend {
            Backend::Redis(r) => Some(r),
            Backend::Local(_) => None,
        }
    }

    pub fn on_backend_error(&self) -> OnBackendError {
        self.on_backend_error
    }

    /// Whether a failing backend refuses requests (and so is a required
    /// dependency for `/health`).
    pub fn fails_closed(&self) -> bool {
        self.on_backend_error == OnBackendError::Deny
    }

    /// Checks and counts `tiers` of a request on `route`. Backend failures
    /// are decided by `on_backend_error` and counted.
    pub async fn check(&self, route: &Route, tiers: &[Tier]) -> Verdict {
        match self.query(Some(route), tiers, Mode::Count).await {
            Ok(d) if d.admitted => Verdict::Admitted(d),
            Ok(d) => Verdict::Limited(d),
            Err(_) => match self.on_backend_error {
                OnBackendError::Allow => {
                    metrics::counter!("gateway_rate_limit_fallback_total", "decision" => FALLBACK_ALLOW)
                        .increment(1);
                    Verdict::FailedOpen
                }
                OnBackendError::Deny => {
                    metrics::counter!("gateway_rate_limit_fallback_total", "decision" => FALLBACK_DENY)
                        .increment(1);
                    Verdict::FailedClosed
                }
            },
        }
    }

    /// Runs one query against the backend, with its metrics. `route` is the
    /// route the tiers' per-route subjects belong to, if any.
    pub async fn query(
        &self,
        route: Option<&Route>,
        tiers: &[Tier],
        mode: Mode,
    ) -> Result<Decision, BackendError> {
        match &self.backend {
            Backend::Local(store) => Ok(store.check(tiers, self.clock.now_ms(), mode)),
            Backend::Redis(store) => {
                let started = Instant::now();
                let result = store.check(route, tiers, mode).await;
                metrics::histogram!("gateway_rate_limit_backend_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = &result {
                    metrics::counter!("gateway_rate_limit_backend_errors_total", "kind" => e.kind())
                        .increment(1);
                    tracing::debug!(error = %e, "rate-limit backend failed");
                }
                result
            }
        }
    }

    /// The client at `ip`, as every limit sees it: exempt by its own
    /// address, counted under its IPv6 network.
    pub fn client(&self, ip: Option<IpAddr>) -> Client {
        Client {
            ip,
            bucket: ip.map(|ip| ip_bucket(ip, self.ipv6_prefix)),
            exempt: self.policy().is_exempt(ip),
        }
    }

    /// `Some` with the guard's state when `client` has used up its failed
    /// authentications: the request is refused before any key work.
    pub fn guard_blocked(&self, client: &Client) -> Option<Decision> {
        if client.exempt {
            return None;
        }
        let tiers = self.policy().guard_tiers(client.bucket?);
        if tiers.is_empty() {
            return None;
        }
        let d = self.guard.check(&tiers, self.clock.now_ms(), Mode::Peek);
        d.tiers
            .iter()
            .any(|s| s.remaining == 0)
            .then_some(Decision {
                admitted: false,
                ..d
            })
    }

    /// Counts a failed authentication from `client` (the `reason` label
    /// of `gateway_auth_failures_total`) if it is one the guard counts: a
    /// credential presented and refused. No credential, or a valid key
    /// lacking a scope, is not guessing.
    pub fn record_auth_failure(&self, client: &Client, reason: &str) {
        if client.exempt || matches!(reason, "missing" | "insufficient_scope") {
            return;
        }
        if let Some(ip) = client.bucket {
            let tiers = self.policy().guard_tiers(ip);
            self.guard.check(&tiers, self.clock.now_ms(), Mode::Record);
        }
    }

    /// Drops idle counters; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let mut left = self.guard.sweep(now);
        if let Backend::Local(store) = &self.backend {
            left += store.sweep(now);
        }
        left
    }
}

/// How often idle local counters are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long start-up waits for the first Redis connection before the proxy
/// opens anyway (and `on_backend_error` decides until Redis is reached).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// Background upkeep: connects the Redis backend (and keeps it connected)
/// and drops idle local counters.
pub struct LimitsService {
    limiter: Arc<RateLimiter>,
}

impl LimitsService {
    pub fn new(limiter: Arc<RateLimiter>) -> LimitsService {
        LimitsService { limiter }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LimitsService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: pingora::server::ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        if let Some(redis) = self.limiter.redis() {
            let limiter = self.limiter.clone();
            // Runs on this service's runtime until the process ends.
            tokio::spawn(async move {
                if let Some(redis) = limiter.redis() {
                    redis.keep_connected().await;
                }
            });
            let waited = tokio::time::timeout(FIRST_CONNECT_WAIT, async {
                while !redis.is_connected() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if waited.is_err() {
                tracing::warn!(
                    on_backend_error = self.limiter.on_backend_error().name(),
                    "Redis is not reachable yet; rate limits follow on_backend_error until it is"
                );
            }
        }
        ready.notify_ready();
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let left = self.limiter.sweep();
                    metrics::gauge!("gateway_rate_limit_local_counters").set(left as f64);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_network() {
        let b = |ip: &str, prefix| ip_bucket(ip.parse().unwrap(), prefix).to_string();
        assert_eq!(b("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64), "2001:db8:1:2::");
        assert_eq!(b("2001:db8:1:2::1", 64), b("2001:db8:1:2:ffff::9", 64));
        assert_ne!(b("2001:db8:1:2::1", 64), b("2001:db8:1:3::1", 64));
        assert_eq!(b("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::");
        assert_eq!(b("2001:db8::1", 128), "2001:db8::1");
        assert_eq!(b("ffff::1", 1), "8000::");
        assert_eq!(b("192.0.2.7", 64), "192.0.2.7");
    }

    #[test]
    fn token_subjects_are_per_issuer_and_fixed_length() {
        let a = token_subject("idp", "alice");
        assert_eq!(a, token_subject("idp", "alice"));
        assert_ne!(a, token_subject("idp", "bob"));
        assert_ne!(a, token_subject("other", "alice"));
        // The separator keeps the split between issuer and subject.
        assert_ne!(token_subject("id", "palice"), token_subject("idp", "alice"));
        let long = "x".repeat(10_000);
        assert_eq!(token_subject("idp", &long).to_string().len(), 36);
        let tier = |subject| Tier {
            subject,
            period: Period::Minute,
            limit: 1,
        };
        assert_eq!(tier(Subject::Token(a)).name(), "minute");
        assert_eq!(tier(Subject::TokenRoute(a, 0)).name(), "route-minute");
    }

    #[test]
    fn the_local_clock_never_goes_back() {
        let clock = MonotonicClock::new();
        let mut last = clock.now_ms();
        for _ in 0..10_000 {
            let now = clock.now_ms();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
    }
}
