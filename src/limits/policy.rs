//! Which tiers apply to a request, from `[rate_limits]`, the route and the
//! key's own overrides. The route's own limits come with the [`Route`]
//! itself (from the one route table); the policy holds only what is not
//! per route.

use std::net::IpAddr;

use ipnet::IpNet;
use uuid::Uuid;

use super::{Period, Subject, Tier, Tiers};
use crate::config::{Config, HeaderStyle, Limits};
use crate::keys::snapshot::KeyRecord;
use crate::route::Route;

#[derive(Debug, Clone)]
pub struct Policy {
    pub default: Limits,
    pub anonymous: Limits,
    pub auth_failures: Limits,
    exempt: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` names the client (`proxy.trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
    /// Which rate-limit headers responses carry (`rate_limits.headers`).
    pub headers: HeaderStyle,
}

/// Adds one tier per period `limits` sets.
fn push(tiers: &mut Tiers, subject: Subject, limits: Limits) {
    for period in Period::ALL {
        let limit = match period {
            Period::Minute => limits.per_minute,
            Period::Hour => limits.per_hour,
            Period::Day => limits.per_day,
        };
        if let Some(limit) = limit {
            // Capacity is 3 subjects × 3 periods; no caller adds more.
            let _ = tiers.try_push(Tier {
                subject,
                period,
                limit,
            });
        }
    }
}

/// A caller's tiers on `route`: its own (`own`, every route together), its
/// share of the route's per-caller `rate_limit` (`on_route`) and the route's
/// `global_rate_limit`, in that order. Keys, token subjects and anonymous
/// IPs are limited alike through this one function.
fn caller_tiers(own: Subject, own_limits: Limits, on_route: Subject, route: &Route) -> Tiers {
    let mut tiers = Tiers::new();
    push(&mut tiers, own, own_limits);
    push(&mut tiers, on_route, route.rate_limit);
    push(
        &mut tiers,
        Subject::Global(route.id),
        route.global_rate_limit,
    );
    tiers
}

impl Policy {
    pub fn new(cfg: &Config) -> Policy {
        let rl = &cfg.rate_limits;
        Policy {
            default: rl.default,
            anonymous: rl.anonymous,
            auth_failures: rl.auth_failures,
            exempt: rl.exempt_ips.clone(),
            trusted_proxies: cfg.proxy.trusted_proxies.clone(),
            headers: rl.headers,
        }
    }

    /// Whether `ip` bypasses every limit.
    pub fn is_exempt(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.exempt.iter().any(|n| n.contains(&ip)))
    }

    /// A key's own tiers: its overrides, each falling back to the default.
    pub fn key_limits(&self, overrides: Limits) -> Limits {
        overrides.or(self.default)
    }

    /// The tiers of a request by `key` on `route`.
    pub fn key_tiers(&self, key: &KeyRecord, route: &Route) -> Tiers {
        caller_tiers(
            Subject::Key(key.id),
            self.key_limits(key.limits),
            Subject::KeyRoute(key.id, route.id),
            route,
        )
    }

    /// The key's own tiers, shared by all routes.
    pub fn own_tiers(&self, key: &KeyRecord) -> Tiers {
        let mut tiers = Tiers::new();
        push(
            &mut tiers,
            Subject::Key(key.id),
            self.key_limits(key.limits),
        );
        tiers
    }

    /// The key's tiers on `route` only (its `rate_limit`).
    pub fn route_tiers(&self, key: &KeyRecord, route: &Route) -> Tiers {
        let mut tiers = Tiers::new();
        push(
            &mut tiers,
            Subject::KeyRoute(key.id, route.id),
            route.rate_limit,
        );
        tiers
    }

    /// The tiers of a request by a token caller on `route`: its subject's
    /// own tiers (the issuer's `rate_limits`, each unset tier falling back
    /// to `[rate_limits] default`), the route's per-caller tiers and its
    /// global ones, exactly as for a key.
    pub fn token_tiers(
        &self,
        subject: Uuid,
        issuer_limits: Option<Limits>,
        route: &Route,
    ) -> Tiers {
        caller_tiers(
            Subject::Token(subject),
            self.key_limits(issuer_limits.unwrap_or_default()),
            Subject::TokenRoute(subject, route.id),
            route,
        )
    }

    /// The tiers of an anonymous request from `ip` on `route`.
    pub fn anonymous_tiers(&self, ip: Option<IpAddr>, route: &Route) -> Tiers {
        if let Some(ip) = ip {
            return caller_tiers(
                Subject::Ip(ip),
                self.anonymous,
                Subject::IpRoute(ip, route.id),
                route,
            );
        }
        let mut tiers = Tiers::new();
        push(
            &mut tiers,
            Subject::Global(route.id),
            route.global_rate_limit,
        );
        tiers
    }

    /// The anonymous tiers of `ip` alone, without any route's: what a
    /// CORS preflight (answered without a key) counts against.
    pub fn ip_tiers(&self, ip: IpAddr) -> Tiers {
        let mut tiers = Tiers::new();
        push(&mut tiers, Subject::Ip(ip), self.anonymous);
        tiers
    }

    /// The brute-force guard's tiers for `ip`.
    pub fn guard_tiers(&self, ip: IpAddr) -> Tiers {
        let mut tiers = Tiers::new();
        push(&mut tiers, Subject::AuthFailures(ip), self.auth_failures);
        tiers
    }
}
