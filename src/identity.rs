//! Who is calling, and which request this is: the credential of a request
//! (`Authorization: Bearer` / `X-API-Key`), its key in the snapshot
//! ([`Authenticator`]), the client's address behind trusted proxies, the
//! request id, and the headers that announce a rotated secret.
//!
//! Shared by the proxy and the admin API, below both, so both accept and
//! refuse keys in exactly the same way without importing each other.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use http::HeaderValue;
use ipnet::IpNet;
use pingora::http::RequestHeader;

use crate::errors::ProxyError;
use crate::keys::format::{self, KeyHash, KeyHasher};
use crate::keys::snapshot::{Authenticated, KeyRecord, KeyStore, PreviousSecret, Rejection};
use crate::service::miss::MissLookups;

/// The answer to any key that is not one of ours, whatever the reason, so a
/// caller learns nothing about why.
/// `reason` labels of `gateway_auth_failures_total` (and of
/// `gateway_admin_auth_failures_total`, with [`auth_reason::ADMIN_ONLY`]).
/// The call sites use these constants and boot registration uses `ALL`,
/// so the two cannot drift; a new reason goes in here.
pub mod auth_reason {
    pub const MISSING: &str = "missing";
    pub const MALFORMED: &str = "malformed";
    pub const BAD_CHECKSUM: &str = "bad_checksum";
    pub const UNKNOWN: &str = "unknown";
    pub const EXPIRED: &str = "expired";
    pub const REVOKED: &str = "revoked";
    pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";
    /// A JWT that failed verification (signature, claims, unknown key id).
    pub const INVALID_TOKEN: &str = "invalid_token";
    /// A JWT whose `exp` (plus leeway) has passed.
    pub const EXPIRED_TOKEN: &str = "expired_token";
    /// A gateway key presented on an `auth = "jwt"` route.
    pub const KEY_ON_JWT_ROUTE: &str = "key_on_jwt_route";
    /// Admin only: the brute-force guard refused the caller.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Every reason the proxy counts.
    pub const ALL: &[&str] = &[
        MISSING,
        MALFORMED,
        BAD_CHECKSUM,
        UNKNOWN,
        EXPIRED,
        REVOKED,
        INSUFFICIENT_SCOPE,
        INVALID_TOKEN,
        EXPIRED_TOKEN,
        KEY_ON_JWT_ROUTE,
    ];
    /// Reasons only the admin API counts, on top of [`ALL`].
    pub const ADMIN_ONLY: &[&str] = &[RATE_LIMITED];
}

/// Registers the metrics of this module at zero (see [`crate::telemetry`]).
pub fn register_metrics() {
    metrics::counter!("gateway_forwarded_for_unparseable_total").absolute(0);
}

pub(crate) const INVALID_KEY: ProxyError = ProxyError::InvalidApiKey("The API key is not valid.");
/// Longest client `X-Request-ID` kept; longer or odd ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Credentials longer than this are rejected before any parsing.
const MAX_CREDENTIAL_LEN: usize = 256;

/// Resolves presented keys against the current snapshot, and, for a
/// well-formed key it does not hold, against Postgres within the miss
/// lookups' budget.
pub struct Authenticator {
    keys: Arc<KeyStore>,
    hasher: KeyHasher,
    key_prefix: String,
    misses: Option<Arc<MissLookups>>,
}

impl Authenticator {
    pub fn new(keys: Arc<KeyStore>, hasher: KeyHasher, key_prefix: String) -> Self {
        Self {
            keys,
            hasher,
            key_prefix,
            misses: None,
        }
    }

    /// Looks keys missing from the snapshot up through `misses`, shared by
    /// every authenticator of the instance (one budget, one flight per key).
    pub fn with_miss_lookups(mut self, misses: Arc<MissLookups>) -> Self {
        self.misses = Some(misses);
        self
    }

    /// Whether `token` looks like one of our keys (carries our prefix).
    pub fn is_gateway_key(&self, token: &str) -> bool {
        token.starts_with(self.key_prefix.as_str())
    }

    /// The request's credential, sorted into a key or a token by this
    /// gateway's key prefix (see [`classify`]).
    pub fn classify<'r>(
        &self,
        req: &'r RequestHeader,
    ) -> Result<Option<Credential<'r>>, &'static str> {
        classify(req, &self.key_prefix)
    }

    /// The caller's key. The error carries the `gateway_auth_failures_total`
    /// reason label. A bad checksum is refused before any hashing or lookup.
    /// A key in the snapshot never waits: only a well-formed one missing
    /// from it is looked up (see [`crate::service::miss`]).
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
    ) -> Result<Authenticated, (&'static str, ProxyError)> {
        match credential(req) {
            Ok(Some(presented)) => self.authenticate_key(presented).await,
            Ok(None) => Err((auth_reason::MISSING, ProxyError::MissingApiKey)),
            Err(e) => Err((auth_reason::MALFORMED, e)),
        }
    }

    /// [`Authenticator::authenticate`] of a key already taken from the
    /// request (see [`classify`]).
    pub async fn authenticate_key(
        &self,
        presented: &str,
    ) -> Result<Authenticated, (&'static str, ProxyError)> {
        if presented.len() > MAX_CREDENTIAL_LEN {
            return Err((auth_reason::MALFORMED, MALFORMED_KEY));
        }
        match self.check_snapshot(presented) {
            SnapshotAnswer::Answer(found) => found,
            // Boxed: the lookup's future is kilobytes (pool, query, timeout),
            // and a key in the snapshot must not pay to build or move it.
            SnapshotAnswer::Missing(hash, now, misses) => {
                rejection(Box::pin(misses.lookup(&hash, now)).await)
            }
        }
    }

    /// The valid key `req` presents, if the snapshot holds it: no Postgres
    /// lookup, nothing counted, nothing refused. For naming the caller of
    /// a request the gateway answers without authenticating it (a sunset
    /// route's 410) in metrics and the request log.
    pub fn identify(&self, req: &RequestHeader) -> Option<Arc<KeyRecord>> {
        let Ok(Some(Credential::Key(key))) = self.classify(req) else {
            return None;
        };
        if key.len() > MAX_CREDENTIAL_LEN {
            return None;
        }
        match self.check_snapshot(key) {
            SnapshotAnswer::Answer(Ok(auth)) => Some(auth.record),
            _ => None,
        }
    }

    /// What the snapshot alone says: the whole check of a key it holds,
    /// with no await, as before miss lookups existed.
    fn check_snapshot(&self, presented: &str) -> SnapshotAnswer<'_> {
        if let Err(e) = format::verify(presented, &self.key_prefix) {
            return SnapshotAnswer::Answer(Err((e.reason(), INVALID_KEY)));
        }
        let hash = self.hasher.hash(presented);
        let now = crate::now_ms();
        match (self.keys.load().authenticate(&hash, now), &self.misses) {
            (Err(Rejection::Unknown), Some(misses)) => SnapshotAnswer::Missing(hash, now, misses),
            (found, _) => SnapshotAnswer::Answer(rejection(found)),
        }
    }
}

/// The outcome of [`Authenticator::check_snapshot`].
enum SnapshotAnswer<'a> {
    Answer(Result<Authenticated, (&'static str, ProxyError)>),
    /// Well-formed, unknown to the snapshot: look it up.
    Missing(KeyHash, i64, &'a Arc<MissLookups>),
}

fn rejection(
    found: Result<Authenticated, Rejection>,
) -> Result<Authenticated, (&'static str, ProxyError)> {
    found.map_err(|r| match r {
        Rejection::Unknown => (auth_reason::UNKNOWN, INVALID_KEY),
        Rejection::Expired => (auth_reason::EXPIRED, ProxyError::ExpiredApiKey),
        Rejection::Revoked => (auth_reason::REVOKED, ProxyError::RevokedApiKey),
    })
}

/// `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) for a caller that used
/// a secret replaced by a rotation: when it was replaced, when it stops
/// working.
pub fn deprecation_headers(prev: &PreviousSecret) -> [(&'static str, String); 2] {
    let sunset = chrono::DateTime::from_timestamp_millis(prev.expires_at_ms)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default();
    [
        (
            "deprecation",
            format!("@{}", prev.rotated_at_ms.div_euclid(1000)),
        ),
        ("sunset", sunset),
    ]
}

/// The client's `X-Request-ID` if well-formed, else a new UUID, as a
/// header value: the proxy forwards and echoes it without copying.
pub fn request_id_value(req: &RequestHeader) -> HeaderValue {
    match req.headers.get("x-request-id") {
        Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
        _ => new_request_id(),
    }
}

/// [`request_id_value`] as a string, for the admin API.
pub fn request_id(req: &RequestHeader) -> String {
    String::from_utf8_lossy(request_id_value(req).as_bytes()).into_owned()
}

/// A new request id: a lowercase hyphenated UUID (version 8), unique
/// without drawing randomness per request (see [`RequestIds`]).
pub fn new_request_id() -> HeaderValue {
    static IDS: LazyLock<RequestIds> = LazyLock::new(|| RequestIds::new(rand::random()));
    uuid_value(&IDS.next())
}

/// The earlier generator, a random UUIDv4 per request: kept as the
/// baseline of `benches/hot_path.rs`.
pub fn random_request_id() -> HeaderValue {
    uuid_value(&uuid::Uuid::new_v4())
}

/// Request ids of one process: a random 60-bit prefix drawn once, and a
/// counter scrambled by a bijection on 62 bits, laid out as a UUIDv8
/// (RFC 9562: version and variant bits set, the rest ours). Distinct
/// counters give distinct ids, so ids never repeat within a process (until
/// 2^62 requests); processes differ by their prefix, with the odds of two
/// sharing one those of a 60-bit random collision. The scrambling only
/// keeps consecutive ids from looking sequential; ids are not secrets.
/// One relaxed atomic add a request instead of a draw from the thread's
/// CSPRNG.
#[derive(Debug)]
pub struct RequestIds {
    high: u64,
    counter: AtomicU64,
}

const LOW_62: u64 = (1 << 62) - 1;

impl RequestIds {
    pub fn new(prefix: u64) -> RequestIds {
        RequestIds {
            // Version 8 in bits 12-15 of the high half.
            high: (prefix & !0xf000) | 0x8000,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> uuid::Uuid {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Variant `10` in the top two bits of the low half.
        uuid::Uuid::from_u64_pair(self.high, (1 << 63) | scramble62(n))
    }
}

/// A bijection on `0..2^62`: xor-shifts and multiplications by odd
/// constants (the SplitMix64 finaliser), each taken modulo 2^62, where
/// each step is invertible.
fn scramble62(n: u64) -> u64 {
    let mut x = n & LOW_62;
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) & LOW_62;
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb) & LOW_62;
    x ^ (x >> 31)
}

/// `id` as a lowercase hyphenated header value, without going through `fmt`.
pub fn uuid_value(id: &uuid::Uuid) -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = id.hyphenated().encode_lower(&mut buf);
    // Hex digits and hyphens are always a valid header value.
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
}

/// A token's `sub` (or issuer name) as a header value for the upstream:
/// visible ASCII other than `%` as is, every other byte percent-encoded
/// (`%XX`), so any subject an issuer signs fits in one header line and
/// reads back unambiguously.
pub fn subject_value(sub: &str) -> HeaderValue {
    use std::fmt::Write;
    let plain = |b: u8| b.is_ascii_graphic() && b != b'%';
    let value = if sub.bytes().all(plain) {
        HeaderValue::from_str(sub)
    } else {
        let mut out = String::with_capacity(sub.len() * 3);
        for b in sub.bytes() {
            if plain(b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        HeaderValue::from_str(&out)
    };
    // Only visible ASCII by construction.
    value.unwrap_or(HeaderValue::from_static("-"))
}

/// The token of an `Authorization: Bearer <token>` value (scheme
/// case-insensitive), or `None` for any other scheme.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => None,
    }
}

const MALFORMED_KEY: ProxyError = ProxyError::InvalidApiKey("The API key is malformed.");

/// The credential from `X-API-Key` or `Authorization: Bearer`, taken as a
/// key whatever it looks like (the admin API takes only keys). Two
/// different credentials, a repeated header, or a non-Bearer
/// `Authorization` without `X-API-Key` are rejected rather than guessed at.
pub(crate) fn credential(req: &RequestHeader) -> Result<Option<&str>, ProxyError> {
    let key = match presented(req).map_err(ProxyError::InvalidApiKey)? {
        Some((_, key)) => key,
        None => return Ok(None),
    };
    if key.len() > MAX_CREDENTIAL_LEN {
        return Err(MALFORMED_KEY);
    }
    Ok(Some(key))
}

/// What a request presents to the proxy (DESIGN §3 "JWT and roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A gateway key: any `X-API-Key`, or a bearer value carrying the key
    /// prefix (well-formed or not: a mistyped key is still a key, and is
    /// refused as one).
    Key(&'a str),
    /// A bearer value without the key prefix: a JWT, if the route takes one.
    Token(&'a str),
}

/// The request's credential, sorted. `X-API-Key` is always a key. Both
/// headers at once must carry the same value, so a caller never chooses
/// which of two credentials the gateway checks (and a key beside a token
/// cannot lend the token's caller its scopes, nor the reverse). The error
/// is a message safe to show, without the credential.
pub fn classify<'r>(
    req: &'r RequestHeader,
    key_prefix: &str,
) -> Result<Option<Credential<'r>>, &'static str> {
    Ok(match presented(req)? {
        None => None,
        Some((Source::ApiKeyHeader, k)) => Some(Credential::Key(k)),
        Some((Source::Bearer, v)) if v.starts_with(key_prefix) => Some(Credential::Key(v)),
        Some((Source::Bearer, v)) => Some(Credential::Token(v)),
    })
}

/// Which header a credential came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `X-API-Key` (alone, or with an identical bearer value).
    ApiKeyHeader,
    /// `Authorization: Bearer`.
    Bearer,
}

/// The one credential of a request and where it came from; `None` when
/// there is none (or it is empty). The error is a safe message.
fn presented(req: &RequestHeader) -> Result<Option<(Source, &str)>, &'static str> {
    const MALFORMED: &str = "The API key is malformed.";
    const TWICE: &str = "Send the API key only once.";
    let mut api_key = req.headers.get_all("x-api-key").iter();
    let x = match (api_key.next(), api_key.next()) {
        (Some(_), Some(_)) => return Err(TWICE),
        (Some(v), None) => Some(v.to_str().map_err(|_| MALFORMED)?.trim()),
        (None, _) => None,
    };
    let mut auth = req.headers.get_all("authorization").iter();
    let bearer = match (auth.next(), auth.next()) {
        (Some(_), Some(_)) => return Err(TWICE),
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| MALFORMED)?;
            match bearer_token(v) {
                Some(token) => Some(token),
                // Another scheme next to X-API-Key may be meant for someone
                // else; the header is stripped before forwarding anyway.
                None if x.is_some() => None,
                None => return Err("The Authorization header must use the Bearer scheme."),
            }
        }
        (None, _) => None,
    };
    let found = match (x, bearer) {
        (Some(a), Some(b)) if a != b => {
            return Err("Authorization and X-API-Key carry different credentials; send one.")
        }
        (Some(k), _) => (Source::ApiKeyHeader, k),
        (None, Some(t)) => (Source::Bearer, t),
        (None, None) => return Ok(None),
    };
    Ok((!found.1.is_empty()).then_some(found))
}

/// Every `X-Forwarded-For` hop, left to right, across all the header's
/// lines (repeated lines are one comma-separated list, RFC 9110 §5.3),
/// trimmed. A line that is not visible ASCII is one hop, `unknown`, that
/// no address parses from. The client IP and the header forwarded
/// upstream both read the header through here.
pub fn forwarded_for(headers: &http::HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("unknown").split(','))
        .map(str::trim)
}

/// The address of one forwarded hop: `1.2.3.4`, `1.2.3.4:5678`,
/// `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443` (load balancers
/// write all of these). IPv4-mapped IPv6 addresses become IPv4. Anything
/// else (`unknown`, obfuscated identifiers, zone ids, bad ports) is `None`.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    fn port(p: &str) -> bool {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    }
    let ip = if let Some(rest) = hop.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port)) {
            return None;
        }
        IpAddr::V6(v6.parse().ok()?)
    } else if let Ok(ip) = hop.parse::<IpAddr>() {
        ip
    } else {
        // Only IPv4 takes a port without brackets: in `a::b:80` the port
        // cannot be told from the address.
        let (v4, p) = hop.rsplit_once(':')?;
        if !port(p) {
            return None;
        }
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(ip.to_canonical())
}

/// The client's address: the socket peer, or, when the peer is a trusted
/// proxy, the rightmost `X-Forwarded-For` hop that is not itself a trusted
/// proxy. Hops left of that one were written by the client or by proxies
/// nobody vouches for, so they are never used.
///
/// Two chains name no untrusted hop:
/// - every hop is a trusted proxy: the request began inside, and the
///   leftmost hop is where (a health checker, an internal caller);
/// - a trusted proxy wrote a hop that is not an address (`unknown`, an
///   obfuscated name): the walk stops there, since whatever is left of it
///   came from an unknown sender and could be forged, and the client is
///   the trusted proxy that wrote it, the nearest known address. Counted in
///   `gateway_forwarded_for_unparseable_total` so an operator sees clients
///   collapsing into one address.
pub fn client_ip(req: &RequestHeader, peer: Option<IpAddr>, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer?.to_canonical();
    if !is_trusted(&client) {
        return Some(client);
    }
    for hop in forwarded_for(&req.headers).rev() {
        match parse_hop(hop) {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            None => {
                metrics::counter!("gateway_forwarded_for_unparseable_total").increment(1);
                break;
            }
        }
    }
    Some(client)
}

pub(crate) fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  bEaReR   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn credential_sources() {
        assert_eq!(credential(&req(&[])), Ok(None));
        assert_eq!(credential(&req(&[("x-api-key", "k1")])), Ok(Some("k1")));
        assert_eq!(
            credential(&req(&[("authorization", "Bearer k2")])),
            Ok(Some("k2"))
        );
        assert_eq!(
            credential(&req(&[("authorization", "bearer   k2 ")])),
            Ok(Some("k2"))
        );
        assert_eq!(
            credential(&req(&[("authorization", "Bearer k"), ("x-api-key", "k")])),
            Ok(Some("k"))
        );
        assert_eq!(
            credential(&req(&[("authorization", "Basic abc"), ("x-api-key", "k")])),
            Ok(Some("k"))
        );
        assert!(credential(&req(&[("authorization", "Basic abc")])).is_err());
        assert!(credential(&req(&[("authorization", "Bearer a"), ("x-api-key", "b")])).is_err());
        assert!(credential(&req(&[("x-api-key", "a"), ("x-api-key", "a")])).is_err());
        assert!(credential(&req(&[("x-api-key", &"k".repeat(300))])).is_err());
    }

    /// `X-API-Key` is always a key; a bearer value is a key by our prefix,
    /// anything else a token; two different credentials are refused, so a
    /// caller never picks which one is checked.
    #[test]
    fn credentials_are_sorted_into_keys_and_tokens() {
        // Owned, since the credential borrows the request.
        #[derive(Debug, PartialEq)]
        enum Owned {
            Key(String),
            Token(String),
        }
        let c = |h: &[(&str, &str)]| {
            classify(&req(h), "gw_live_").map(|found| {
                found.map(|cred| match cred {
                    super::Credential::Key(k) => Owned::Key(k.into()),
                    super::Credential::Token(t) => Owned::Token(t.into()),
                })
            })
        };
        use Owned as Credential;
        assert_eq!(c(&[]), Ok(None));
        assert_eq!(
            c(&[("authorization", "Bearer gw_live_abc")]),
            Ok(Some(Credential::Key("gw_live_abc".into())))
        );
        assert_eq!(
            c(&[("authorization", "Bearer eyJhbGciOi.x.y")]),
            Ok(Some(Credential::Token("eyJhbGciOi.x.y".into())))
        );
        assert_eq!(
            c(&[("x-api-key", "eyJhbGciOi.x.y")]),
            Ok(Some(Credential::Key("eyJhbGciOi.x.y".into())))
        );
        assert_eq!(
            c(&[
                ("x-api-key", "gw_live_k"),
                ("authorization", "Bearer gw_live_k")
            ]),
            Ok(Some(Credential::Key("gw_live_k".into())))
        );
        // A JWT is far longer than any key: no key length limit on tokens.
        let long = format!("eyJ{}", "a".repeat(2_000));
        assert_eq!(
            c(&[("authorization", &format!("Bearer {long}"))]),
            Ok(Some(Credential::Token(long.clone())))
        );
        for both in [
            [
                ("x-api-key", "gw_live_k"),
                ("authorization", "Bearer eyJ.a.b"),
            ],
            [
                ("x-api-key", "eyJ.a.b"),
                ("authorization", "Bearer eyJ.a.c"),
            ],
            [
                ("authorization", "Bearer eyJ.a.b"),
                ("authorization", "Bearer gw_live_k"),
            ],
        ] {
            assert!(c(&both).is_err(), "{both:?}");
        }
    }

    #[test]
    fn subjects_become_safe_header_values() {
        assert_eq!(subject_value("user-123@idp"), "user-123@idp");
        assert_eq!(subject_value("a b%c\r\nX: y"), "a%20b%25c%0D%0AX:%20y");
        assert_eq!(subject_value("é"), "%C3%A9");
        assert_eq!(subject_value(""), "");
    }

    #[test]
    fn client_ip_trusts_forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let xff = |v: &str| req(&[("x-forwarded-for", v)]);
        let ip =
            |r: &RequestHeader, p: &str| client_ip(r, peer(p), &trusted).map(|i| i.to_string());
        // Untrusted peer: its own address, whatever it claims.
        assert_eq!(
            ip(&xff("1.2.3.4"), "192.0.2.9").as_deref(),
            Some("192.0.2.9")
        );
        // Trusted peer: the rightmost hop that is not a trusted proxy.
        assert_eq!(ip(&xff("1.2.3.4"), "10.0.0.1").as_deref(), Some("1.2.3.4"));
        assert_eq!(
            ip(&xff("6.6.6.6, 1.2.3.4, 10.0.0.7"), "10.0.0.1").as_deref(),
            Some("1.2.3.4")
        );
        let two = req(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "5.5.5.5"),
        ]);
        assert_eq!(ip(&two, "10.0.0.1").as_deref(), Some("5.5.5.5"));
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            ip(&xff("1.2.3.4, junk"), "10.0.0.1").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(ip(&req(&[]), "10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(client_ip(&req(&[]), None, &trusted), None);
    }

    /// Each spelling of a forwarded hop, from a trusted proxy (10.0.0.0/8)
    /// that appended it: the client, never a trusted hop while an
    /// untrusted, parseable one is to be had.
    #[test]
    fn client_ip_reads_every_spelling_of_a_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let from = |r: &RequestHeader| {
            client_ip(r, Some("10.0.0.1".parse().unwrap()), &trusted).map(|i| i.to_string())
        };
        let xff = |v: &str| from(&req(&[("x-forwarded-for", v)]));
        let cases: &[(&str, &str)] = &[
            ("1.2.3.4:5678", "1.2.3.4"),
            (" 1.2.3.4:80 ", "1.2.3.4"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("[::ffff:1.2.3.4]:9", "1.2.3.4"),
            // The rightmost untrusted hop, ports or not, never a proxy.
            ("6.6.6.6:1, 1.2.3.4:2, 10.0.0.7:3", "1.2.3.4"),
            ("9.9.9.9, [2001:db8::2]:1, 10.0.0.7", "2001:db8::2"),
            // Garbage left of the client is the client's own claim.
            ("junk, 1.2.3.4:5", "1.2.3.4"),
            // Every hop trusted: the leftmost, where the request began.
            ("10.0.0.5:1, 10.0.0.7", "10.0.0.5"),
            // Unparseable before any untrusted hop: who wrote it is the
            // client as far as anyone can tell.
            ("1.2.3.4, junk", "10.0.0.1"),
            ("1.2.3.4, 10.0.0.7, unknown", "10.0.0.1"),
            ("1.2.3.4, junk, 10.0.0.7", "10.0.0.7"),
            ("1.2.3.4:99999", "10.0.0.1"),
            ("1.2.3.4:", "10.0.0.1"),
            ("1.2.3.4:+80", "10.0.0.1"),
            ("[2001:db8::1", "10.0.0.1"),
            ("[2001:db8::1]x", "10.0.0.1"),
            ("2001:db8::1:80:x", "10.0.0.1"),
            ("fe80::1%eth0", "10.0.0.1"),
            ("", "10.0.0.1"),
        ];
        for (hops, want) in cases {
            assert_eq!(xff(hops).as_deref(), Some(*want), "X-Forwarded-For: {hops}");
        }
        // Several header lines read as one list, in order.
        let lines = req(&[
            ("x-forwarded-for", "6.6.6.6:1, 5.5.5.5:2"),
            ("x-forwarded-for", "10.0.0.7:3"),
        ]);
        assert_eq!(from(&lines).as_deref(), Some("5.5.5.5"));
        let lines = req(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "[2001:db8::9]:1, 10.0.0.8"),
        ]);
        assert_eq!(from(&lines).as_deref(), Some("2001:db8::9"));
    }

    #[test]
    fn forwarded_for_reads_every_line_in_order() {
        let r = req(&[
            ("x-forwarded-for", " 1.2.3.4:5 ,[::1]:2"),
            ("x-forwarded-for", "10.0.0.7"),
        ]);
        let hops: Vec<&str> = forwarded_for(&r.headers).collect();
        assert_eq!(hops, ["1.2.3.4:5", "[::1]:2", "10.0.0.7"]);
        let mut r = req(&[("x-forwarded-for", "1.2.3.4")]);
        r.append_header(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .unwrap();
        let hops: Vec<&str> = forwarded_for(&r.headers).collect();
        assert_eq!(hops, ["1.2.3.4", "unknown"]);
        assert_eq!(forwarded_for(&req(&[]).headers).count(), 0);
    }

    /// Seeded random hops: parsing never panics, and every address comes
    /// back from each spelling a load balancer might write it in.
    #[test]
    fn parse_hop_round_trips_and_never_panics() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x00c1_1e27);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let alphabet: Vec<char> = "[]:.,%0123456789abcdefABCDEF ffff:é\u{0}".chars().collect();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..48);
            let junk: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let _ = parse_hop(&junk);
            let ip = if rng.gen_bool(0.5) {
                IpAddr::V4(rng.gen::<u32>().into())
            } else {
                IpAddr::V6(rng.gen::<u128>().into())
            };
            let port: u16 = rng.gen();
            let spellings = match ip {
                IpAddr::V4(v4) => vec![v4.to_string(), format!("{v4}:{port}")],
                IpAddr::V6(v6) => vec![v6.to_string(), format!("[{v6}]"), format!("[{v6}]:{port}")],
            };
            for hop in spellings {
                assert_eq!(
                    parse_hop(&hop),
                    Some(ip.to_canonical()),
                    "{hop} (TEST_SEED={seed})"
                );
            }
        }
    }

    #[test]
    fn generated_request_ids_are_unique_across_threads() {
        let ids = Arc::new(RequestIds::new(0x0123_4567_89ab_cdef));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..20_000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().expect("thread") {
                assert!(seen.insert(id), "{id} twice");
                assert_eq!(id.get_version_num(), 8);
                assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            }
        }
        assert_eq!(seen.len(), 160_000);
        // Another process's prefix gives other ids for the same counters.
        let other = RequestIds::new(0x0123_4567_89ab_cdee);
        assert!(!seen.contains(&other.next()));
        let v = new_request_id();
        assert!(valid_request_id(v.as_bytes()));
        assert_ne!(v, new_request_id());
    }

    #[test]
    fn the_counter_scrambling_is_a_bijection() {
        // Distinct inputs, including ones that differ only above bit 31 or
        // near the top of the 62-bit range, stay distinct and in range.
        let inputs = (0..50_000u64)
            .chain((1..1_000).map(|i| i << 31))
            .chain((0..1_000).map(|i| LOW_62 - i));
        let mut seen = std::collections::HashSet::new();
        for n in inputs {
            let x = scramble62(n);
            assert!(x <= LOW_62);
            assert!(seen.insert(x), "{n} collides");
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"quote\""));
        assert!(!valid_request_id("x".repeat(129).as_bytes()));
    }
}
