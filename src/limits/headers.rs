//! Rate-limit response headers (DESIGN §3 "Proxy responses"):
//! `X-RateLimit-Limit/Remaining/Reset` for the headline tier,
//! `RateLimit-Policy` listing every tier and `RateLimit` for the headline
//! tier in the IETF draft syntax, and `Retry-After` on a refusal.

use std::fmt::Write;

use arrayvec::ArrayVec;

use super::Decision;

/// Header name and value pairs, in the order they are sent.
pub type Headers = ArrayVec<(&'static str, String), 6>;

/// The headers describing `d`; none when it names no tier.
pub fn render(d: &Decision) -> Headers {
    let mut out = Headers::new();
    let Some(head) = d.headline() else {
        return out;
    };
    let reset_s = head.reset_seconds();
    out.push(("x-ratelimit-limit", head.tier.limit.to_string()));
    out.push(("x-ratelimit-remaining", head.remaining.to_string()));
    out.push(("x-ratelimit-reset", head.reset_at(d.now_ms).to_string()));
    let mut policy = String::with_capacity(32 * d.tiers.len());
    for (i, s) in d.tiers.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(
            policy,
            "{sep}\"{}\";q={};w={}",
            s.tier.name(),
            s.tier.limit,
            s.tier.window_ms() / 1000
        );
    }
    out.push(("ratelimit-policy", policy));
    out.push((
        "ratelimit",
        format!("\"{}\";r={};t={reset_s}", head.tier.name(), head.remaining),
    ));
    if !d.admitted {
        out.push(("retry-after", reset_s.to_string()));
    }
    out
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
}
