//! Rate-limit response headers (DESIGN §3 "Proxy responses"):
//! `X-RateLimit-Limit/Remaining/Reset` for the headline tier,
//! `RateLimit-Policy` listing every tier and `RateLimit` for the headline
//! tier in the IETF draft syntax, and `Retry-After` on a refusal;
//! `[rate_limits] headers` picks which of the two families go out.
//!
//! [`values`] is the per-response path: the static `RateLimit-Policy` and
//! the limit values come ready from the route's cache
//! ([`crate::route::header_values`]), so only the dynamic numbers are
//! formatted, straight into `HeaderValue`s. Names stay `&'static str`:
//! Pingora's `insert_header` keeps the name's case from a static string
//! without a copy, while a `HeaderName` of a non-standard header is copied
//! into a new buffer for the case map on every insert. [`render`] is the
//! earlier per-request rendering, kept for refusals and the admin API and
//! as the baseline of `benches/hot_path.rs`.

use std::sync::Arc;

use arrayvec::ArrayVec;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

use super::{Decision, TierState};
use crate::config::HeaderStyle;
use crate::route::header_values::{CachedPolicy, PolicyValues};

pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";
pub const RETRY_AFTER: &str = "retry-after";

/// Header name and value pairs, in the order they are sent.
pub type Headers = ArrayVec<(&'static str, String), 6>;

/// [`Headers`] as ready header values.
pub type Values = ArrayVec<(&'static str, HeaderValue), 6>;

/// Whether `style` sends the `X-RateLimit-*` family, and the IETF one.
fn families(style: HeaderStyle) -> (bool, bool) {
    match style {
        HeaderStyle::Both => (true, true),
        HeaderStyle::Legacy => (true, false),
        HeaderStyle::Ietf => (false, true),
        HeaderStyle::None => (false, false),
    }
}

/// Whether `style` sends the header `name`; `Retry-After` always goes.
fn sends(style: HeaderStyle, name: &str) -> bool {
    let (legacy, ietf) = families(style);
    match name {
        RETRY_AFTER => true,
        X_RATELIMIT_LIMIT | X_RATELIMIT_REMAINING | X_RATELIMIT_RESET => legacy,
        _ => ietf,
    }
}

/// The headers `style` sends for `d`, on a response: see the module doc.
/// `cache` is the route's (none only where no route is known: every value
/// is then computed here).
pub fn values(d: &Decision, style: HeaderStyle, cache: Option<&PolicyValues>) -> Values {
    let mut out = Values::new();
    let Some(head) = d.headline() else {
        return out;
    };
    let reset_s = head.reset_seconds();
    let (legacy, ietf) = families(style);
    if legacy || ietf {
        let cached = cached_policy(d, cache);
        if legacy {
            let i = d.tiers.iter().position(|s| std::ptr::eq(s, head));
            let limit = i
                .and_then(|i| cached.limits.get(i))
                .cloned()
                .unwrap_or_else(|| HeaderValue::from(head.tier.limit));
            out.push((X_RATELIMIT_LIMIT, limit));
            out.push((X_RATELIMIT_REMAINING, HeaderValue::from(head.remaining)));
            out.push((
                X_RATELIMIT_RESET,
                HeaderValue::from(head.reset_at(d.now_ms)),
            ));
        }
        if ietf {
            out.push((RATELIMIT_POLICY, cached.policy.clone()));
            out.push((RATELIMIT, current_value(head, reset_s)));
        }
    }
    if !d.admitted {
        out.push((RETRY_AFTER, HeaderValue::from(reset_s)));
    }
    out
}

/// The cached values of `d`'s tier list, added to `cache` on a miss.
fn cached_policy(d: &Decision, cache: Option<&PolicyValues>) -> Arc<CachedPolicy> {
    let key = || d.tiers.iter().map(|s| (s.tier.name(), s.tier.limit));
    if let Some(hit) = cache.and_then(|c| c.find(|e| e.describes(key()))) {
        return hit;
    }
    let policy = HeaderValue::from_maybe_shared(Bytes::from(policy_string(d)))
        // Tier names and digits only: always a valid value.
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let entry = CachedPolicy::new(key().collect(), policy);
    match cache {
        Some(c) => c.insert(entry),
        None => Arc::new(entry),
    }
}

/// `RateLimit: "minute";r=17;t=23`, in one buffer.
fn current_value(head: &TierState, reset_s: u64) -> HeaderValue {
    let name = head.tier.name();
    let mut b = BytesMut::with_capacity(name.len() + 2 + 4 + 10 + 3 + 20);
    b.put_u8(b'"');
    b.put_slice(name.as_bytes());
    b.put_slice(b"\";r=");
    b.put_slice(itoa::Buffer::new().format(head.remaining).as_bytes());
    b.put_slice(b";t=");
    b.put_slice(itoa::Buffer::new().format(reset_s).as_bytes());
    HeaderValue::from_maybe_shared(b.freeze()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// [`render`] limited to what `style` sends: the headers of a refusal.
pub fn render_as(d: &Decision, style: HeaderStyle) -> Headers {
    let mut h = render(d);
    h.retain(|(name, _)| sends(style, name));
    h
}

/// Every header describing `d` as strings, rendered from scratch; none
/// when it names no tier. Numbers go through `itoa`, not `fmt`.
pub fn render(d: &Decision) -> Headers {
    let mut out = Headers::new();
    let Some(head) = d.headline() else {
        return out;
    };
    let reset_s = head.reset_seconds();
    out.push((X_RATELIMIT_LIMIT, number(head.tier.limit)));
    out.push((X_RATELIMIT_REMAINING, number(head.remaining)));
    out.push((X_RATELIMIT_RESET, number(head.reset_at(d.now_ms))));
    out.push((RATELIMIT_POLICY, policy_string(d)));
    let mut current = String::with_capacity(48);
    push_item(&mut current, head.tier.name());
    current.push_str(";r=");
    push_number(&mut current, head.remaining);
    current.push_str(";t=");
    push_number(&mut current, reset_s);
    out.push((RATELIMIT, current));
    if !d.admitted {
        out.push((RETRY_AFTER, number(reset_s)));
    }
    out
}

/// `RateLimit-Policy`: every tier of `d`, in order.
fn policy_string(d: &Decision) -> String {
    let mut policy = String::with_capacity(40 * d.tiers.len());
    for (i, s) in d.tiers.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
        }
        push_item(&mut policy, s.tier.name());
        policy.push_str(";q=");
        push_number(&mut policy, s.tier.limit);
        policy.push_str(";w=");
        push_number(&mut policy, s.tier.window_ms() / 1000);
    }
    policy
}

fn number(n: impl itoa::Integer) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

fn push_number(s: &mut String, n: impl itoa::Integer) {
    s.push_str(itoa::Buffer::new().format(n));
}

/// A structured-field string item: the tier names need no escaping.
fn push_item(s: &mut String, name: &str) {
    s.push('"');
    s.push_str(name);
    s.push('"');
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::limits::window::{state, Counts};
    use crate::limits::{Period, Subject, Tier};

    #[test]
    fn headers_describe_the_tier_closest_to_exhaustion() {
        let id = Uuid::new_v4();
        let now = 1_700_000_040_000 + 37_000; // 37 s into a minute
        let minute = Tier {
            subject: Subject::Key(id),
            period: Period::Minute,
            limit: 600,
        };
        let hour = Tier {
            period: Period::Hour,
            limit: 20_000,
            ..minute
        };
        let route = Tier {
            subject: Subject::KeyRoute(id, 0),
            limit: 30,
            ..minute
        };
        let mut d = Decision {
            admitted: true,
            now_ms: now,
            tiers: ArrayVec::new(),
        };
        d.tiers
            .push(state(minute, Counts { prev: 0, curr: 583 }, now));
        d.tiers
            .push(state(hour, Counts { prev: 0, curr: 583 }, now));
        d.tiers
            .push(state(route, Counts { prev: 0, curr: 13 }, now));
        let h: Vec<_> = render(&d).into_iter().collect();
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("x-ratelimit-limit"), Some("600"));
        assert_eq!(get("x-ratelimit-remaining"), Some("17"));
        assert_eq!(get("x-ratelimit-reset"), Some("1700000100"));
        assert_eq!(
            get("ratelimit-policy"),
            Some("\"minute\";q=600;w=60, \"hour\";q=20000;w=3600, \"route-minute\";q=30;w=60")
        );
        assert_eq!(get("ratelimit"), Some("\"minute\";r=17;t=23"));
        assert_eq!(get("retry-after"), None);

        d.admitted = false;
        d.tiers[2] = state(route, Counts { prev: 0, curr: 30 }, now);
        let h: Vec<_> = render(&d).into_iter().collect();
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        // Room again 2 s into the next minute (30 * 58/60 + 1 = 30), 25 s
        // from now; the rounding up is on the admitting side.
        assert_eq!(get("retry-after"), Some("26"));
        assert_eq!(get("ratelimit"), Some("\"route-minute\";r=0;t=26"));
        assert_eq!(get("x-ratelimit-reset"), Some("1700000103"));
    }

    /// A decision over the default key tiers (600/min, 20000/h) plus a
    /// route tier of `route_limit`, 37 s into a minute.
    fn decision(admitted: bool, minute_limit: u32, route_limit: u32) -> Decision {
        let id = Uuid::from_u128(7);
        let now = 1_700_000_040_000 + 37_000;
        let minute = Tier {
            subject: Subject::Key(id),
            period: Period::Minute,
            limit: minute_limit,
        };
        let hour = Tier {
            period: Period::Hour,
            limit: 20_000,
            ..minute
        };
        let route = Tier {
            subject: Subject::KeyRoute(id, 0),
            limit: route_limit,
            ..minute
        };
        let used = if admitted { 13 } else { u64::from(route_limit) };
        let mut d = Decision {
            admitted,
            now_ms: now,
            tiers: ArrayVec::new(),
        };
        d.tiers
            .push(state(minute, Counts { prev: 0, curr: 583 }, now));
        d.tiers
            .push(state(hour, Counts { prev: 0, curr: 583 }, now));
        d.tiers.push(state(
            route,
            Counts {
                prev: 0,
                curr: used,
            },
            now,
        ));
        d
    }

    fn strings(v: Values) -> Vec<(&'static str, String)> {
        v.into_iter()
            .map(|(n, v)| (n, v.to_str().expect("ascii").to_owned()))
            .collect()
    }

    #[test]
    fn cached_values_equal_the_rendered_headers_in_every_style() {
        let cache = PolicyValues::default();
        for style in [
            HeaderStyle::Both,
            HeaderStyle::Ietf,
            HeaderStyle::Legacy,
            HeaderStyle::None,
        ] {
            for admitted in [true, false] {
                let d = decision(admitted, 600, 30);
                let want: Vec<_> = render_as(&d, style).into_iter().collect();
                // Twice through the cache (a miss, then a hit), once without.
                for cache in [Some(&cache), Some(&cache), None] {
                    assert_eq!(strings(values(&d, style, cache)), want, "{style:?}");
                }
                let names: Vec<_> = want.iter().map(|(n, _)| *n).collect();
                // A refusal always says when to come back.
                assert_eq!(names.contains(&RETRY_AFTER), !admitted, "{style:?}");
                let (legacy, ietf) = families(style);
                assert_eq!(names.contains(&X_RATELIMIT_REMAINING), legacy);
                assert_eq!(names.contains(&RATELIMIT_POLICY), ietf);
            }
        }
        assert_eq!(cache.len(), 1, "one tier list, one entry");
    }

    #[test]
    fn a_key_with_overrides_gets_its_own_policy_not_the_cached_default() {
        let cache = PolicyValues::default();
        let default = decision(true, 600, 30);
        let _ = values(&default, HeaderStyle::Both, Some(&cache));
        let plan = decision(true, 5000, 30);
        let v = strings(values(&plan, HeaderStyle::Both, Some(&cache)));
        let get = |n: &str| v.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get(RATELIMIT_POLICY),
            Some("\"minute\";q=5000;w=60, \"hour\";q=20000;w=3600, \"route-minute\";q=30;w=60")
        );
        assert_eq!(get(X_RATELIMIT_LIMIT), Some("30"));
        assert_eq!(cache.len(), 2);
        // The default list still finds its own entry.
        let v = strings(values(&default, HeaderStyle::Both, Some(&cache)));
        assert_eq!(
            v,
            render_as(&default, HeaderStyle::Both)
                .into_iter()
                .collect::<Vec<_>>()
        );
    }
}
