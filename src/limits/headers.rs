//! Rate-limit response headers (DESIGN §3 "Proxy responses"):
//! `X-RateLimit-Limit/Remaining/Reset` for the headline tier,
//! `RateLimit-Policy` listing every tier and `RateLimit` for the headline
//! tier in the IETF draft syntax, and `Retry-After` on a refusal.

use arrayvec::ArrayVec;

use super::Decision;

/// Header name and value pairs, in the order they are sent.
pub type Headers = ArrayVec<(&'static str, String), 6>;

/// The headers describing `d`; none when it names no tier. Numbers go
/// through `itoa`, not `fmt`: this runs for every proxied request.
pub fn render(d: &Decision) -> Headers {
    let mut out = Headers::new();
    let Some(head) = d.headline() else {
        return out;
    };
    let reset_s = head.reset_seconds();
    out.push(("x-ratelimit-limit", number(head.tier.limit)));
    out.push(("x-ratelimit-remaining", number(head.remaining)));
    out.push(("x-ratelimit-reset", number(head.reset_at(d.now_ms))));
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
    out.push(("ratelimit-policy", policy));
    let mut current = String::with_capacity(48);
    push_item(&mut current, head.tier.name());
    current.push_str(";r=");
    push_number(&mut current, head.remaining);
    current.push_str(";t=");
    push_number(&mut current, reset_s);
    out.push(("ratelimit", current));
    if !d.admitted {
        out.push(("retry-after", number(reset_s)));
    }
    out
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
}
