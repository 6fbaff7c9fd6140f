//! `[rate_limits]`: the backend, its failure mode, the default, anonymous
//! and brute-force tiers, exempt networks; and [`Limits`], the per-minute,
//! per-hour and per-day tiers that keys and routes set too.

use ipnet::IpNet;

use super::validate::parse_cidrs;
use super::{file, Errors};

/// Default bound on local rate-limit counters (about 100 MB at most).
pub const DEFAULT_MAX_LOCAL_COUNTERS: u64 = 1_000_000;
/// Default prefix length IPv6 clients are counted under: a /64, what one
/// subscriber usually gets.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Per-key or per-IP limits for one caller; `None` means "no such tier"
/// (for a key's overrides: "use the configured default").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

impl Limits {
    /// Each tier of `self`, or of `fallback` where `self` leaves it unset.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            per_minute: self.per_minute.or(fallback.per_minute),
            per_hour: self.per_hour.or(fallback.per_hour),
            per_day: self.per_day.or(fallback.per_day),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    Allow,
    Deny,
}

impl OnBackendError {
    /// The configuration value: `"allow"` or `"deny"`.
    pub fn name(self) -> &'static str {
        match self {
            OnBackendError::Allow => "allow",
            OnBackendError::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub backend: LimitBackend,
    pub on_backend_error: OnBackendError,
    /// Per-key tiers of keys without overrides.
    pub default: Limits,
    /// Per client IP on `auth = "none"` routes.
    pub anonymous: Limits,
    /// Brute-force guard: failed authentications per client IP.
    pub auth_failures: Limits,
    /// Clients in these networks bypass every limit.
    pub exempt_ips: Vec<IpNet>,
    /// Bound on the local backend's counters (and the guard's).
    pub max_local_counters: usize,
    /// IPv6 clients are counted per network of this prefix length (1-128,
    /// default [`DEFAULT_IPV6_PREFIX`]): one host usually holds a whole /64.
    pub ipv6_prefix: u8,
    /// Which rate-limit headers responses carry (`headers`).
    pub headers: HeaderStyle,
}

/// `rate_limits.headers`: which rate-limit headers go on responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `X-RateLimit-*` and the IETF `RateLimit`/`RateLimit-Policy`.
    #[default]
    Both,
    /// Only `RateLimit` and `RateLimit-Policy`.
    Ietf,
    /// Only `X-RateLimit-*`.
    Legacy,
    /// None (a 429 still carries `Retry-After`).
    None,
}

pub(super) fn build_limits(l: Option<file::Limits>, path: &str, errs: &mut Errors) -> Limits {
    let Some(l) = l else {
        return Limits::default();
    };
    let mut one = |v: Option<i64>, name: &str| -> Option<u32> {
        match v {
            Some(n) if n <= 0 => {
                errs.push(format!("{path}.{name}"), "must be a positive integer");
                None
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.push(format!("{path}.{name}"), "must be at most 4294967295");
                    None
                }
            },
            None => None,
        }
    };
    Limits {
        per_minute: one(l.per_minute, "per_minute"),
        per_hour: one(l.per_hour, "per_hour"),
        per_day: one(l.per_day, "per_day"),
    }
}

pub(super) fn build_rate_limits(
    r: file::RateLimits,
    have_redis: bool,
    errs: &mut Errors,
) -> Option<RateLimitConfig> {
    let backend = match r.backend.as_deref() {
        None | Some("local") => LimitBackend::Local,
        Some("redis") => {
            if !have_redis {
                errs.push(
                    "rate_limits.backend",
                    "\"redis\" needs [redis] url (or REDIS_URL)",
                );
            }
            LimitBackend::Redis
        }
        Some(other) => {
            errs.push(
                "rate_limits.backend",
                format!("must be \"local\" or \"redis\", got {other:?}"),
            );
            LimitBackend::Local
        }
    };
    let on_backend_error = match r.on_backend_error.as_deref() {
        None | Some("allow") => OnBackendError::Allow,
        Some("deny") => OnBackendError::Deny,
        Some(other) => {
            errs.push(
                "rate_limits.on_backend_error",
                format!("must be \"allow\" or \"deny\", got {other:?}"),
            );
            OnBackendError::Allow
        }
    };
    let default = match r.default {
        Some(l) => build_limits(Some(l), "rate_limits.default", errs),
        None => Limits {
            per_minute: Some(600),
            per_hour: Some(20_000),
            per_day: Some(200_000),
        },
    };
    let anonymous = match r.anonymous {
        Some(l) => build_limits(Some(l), "rate_limits.anonymous", errs),
        None => Limits {
            per_minute: Some(60),
            ..Limits::default()
        },
    };
    let auth_failures = match r.auth_failures {
        Some(l) => build_limits(Some(l), "rate_limits.auth_failures", errs),
        None => Limits {
            per_minute: Some(20),
            ..Limits::default()
        },
    };
    let max_local_counters = match r.max_local_counters {
        None => DEFAULT_MAX_LOCAL_COUNTERS,
        Some(n) if (1_000..=100_000_000).contains(&n) => n,
        Some(_) => {
            errs.push(
                "rate_limits.max_local_counters",
                "must be between 1000 and 100000000",
            );
            DEFAULT_MAX_LOCAL_COUNTERS
        }
    };
    let ipv6_prefix = match r.ipv6_prefix {
        None => DEFAULT_IPV6_PREFIX,
        Some(n @ 1..=128) => n as u8,
        Some(n) => {
            errs.push(
                "rate_limits.ipv6_prefix",
                format!("must be a prefix length between 1 and 128, got {n}"),
            );
            DEFAULT_IPV6_PREFIX
        }
    };
    let headers = match r.headers.as_deref() {
        None | Some("both") => HeaderStyle::Both,
        Some("ietf") => HeaderStyle::Ietf,
        Some("legacy") => HeaderStyle::Legacy,
        Some("none") => HeaderStyle::None,
        Some(other) => {
            errs.push(
                "rate_limits.headers",
                format!("must be \"both\", \"ietf\", \"legacy\" or \"none\", got {other:?}"),
            );
            HeaderStyle::Both
        }
    };
    Some(RateLimitConfig {
        backend,
        on_backend_error,
        default,
        anonymous,
        auth_failures,
        exempt_ips: parse_cidrs(r.exempt_ips, "rate_limits.exempt_ips", errs),
        max_local_counters: max_local_counters as usize,
        ipv6_prefix,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env};
    use crate::config::{Config, Need};

    #[test]
    fn redis_backend_needs_redis_url() {
        let text = format!("{}\n[rate_limits]\nbackend = \"redis\"\n", minimal());
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "rate_limits.backend");
    }

    #[test]
    fn headers_takes_four_styles_and_defaults_to_both() {
        use super::HeaderStyle;
        let cfg = Config::from_toml(&minimal(), no_env(), Need::Serve).expect("minimal");
        assert_eq!(cfg.rate_limits.headers, HeaderStyle::Both);
        for (text, style) in [
            ("both", HeaderStyle::Both),
            ("ietf", HeaderStyle::Ietf),
            ("legacy", HeaderStyle::Legacy),
            ("none", HeaderStyle::None),
        ] {
            let toml = format!("{}\n[rate_limits]\nheaders = \"{text}\"\n", minimal());
            let cfg = Config::from_toml(&toml, no_env(), Need::Serve).expect(text);
            assert_eq!(cfg.rate_limits.headers, style);
        }
        let toml = format!("{}\n[rate_limits]\nheaders = \"IETF\"\n", minimal());
        let errs = Config::from_toml(&toml, no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "rate_limits.headers");
    }
}
