//! Rate-limit header values computed once per route and shared by every
//! response on it: the static `RateLimit-Policy` of one list of tiers and
//! each tier's limit as a ready `HeaderValue` (`X-RateLimit-Limit`).
//!
//! An entry is keyed by what the value is a function of: the tiers' names
//! and limits, in order (a name fixes the window). So an entry is reused
//! only when it describes exactly the tiers of the decision at hand, and a
//! reload that changes default limits, or a key with overrides, can never
//! be answered with another tier list's value; it finds or adds its own.
//! Filled on first use by [`crate::limits::headers`] (this module sits
//! below `limits` and knows nothing of tiers), bounded per route.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

/// Most distinct tier lists one route caches: default-limit keys,
/// anonymous callers, token callers and a few override plans. Lists past
/// this are rendered per request, as before, so a flood of keys with
/// unusual overrides cannot grow the table.
pub const MAX_CACHED: usize = 16;

/// One tier as the cache key sees it: its name (`minute`, `route-hour`…)
/// and its limit.
pub type TierKey = (&'static str, u32);

/// The header values of one tier list.
#[derive(Debug)]
pub struct CachedPolicy {
    tiers: Box<[TierKey]>,
    /// `RateLimit-Policy`.
    pub policy: HeaderValue,
    /// Each tier's limit, in the order of `tiers`: `X-RateLimit-Limit`.
    pub limits: Box<[HeaderValue]>,
}

impl CachedPolicy {
    pub fn new(tiers: Box<[TierKey]>, policy: HeaderValue) -> CachedPolicy {
        let limits = tiers.iter().map(|(_, l)| HeaderValue::from(*l)).collect();
        CachedPolicy {
            tiers,
            policy,
            limits,
        }
    }

    /// Whether this entry describes exactly `tiers`, in order.
    pub fn describes(&self, tiers: impl ExactSizeIterator<Item = TierKey>) -> bool {
        self.tiers.len() == tiers.len() && self.tiers.iter().zip(tiers).all(|(a, b)| *a == b)
    }
}

/// The cache of one route. Readers take one atomic load and scan a few
/// entries; a miss adds its entry by copy-on-write, so nothing locks.
#[derive(Debug, Default)]
pub struct PolicyValues(ArcSwap<Vec<Arc<CachedPolicy>>>);

impl PolicyValues {
    /// The first entry `is` accepts (see [`CachedPolicy::describes`]).
    pub fn find(&self, is: impl Fn(&CachedPolicy) -> bool) -> Option<Arc<CachedPolicy>> {
        self.0.load().iter().find(|e| is(e)).cloned()
    }

    /// Caches `entry` unless the route holds [`MAX_CACHED`] entries
    /// already or another thread added the same one meanwhile; returns
    /// the entry to use either way.
    pub fn insert(&self, entry: CachedPolicy) -> Arc<CachedPolicy> {
        let entry = Arc::new(entry);
        self.0.rcu(|cached| {
            let same = cached
                .iter()
                .any(|e| e.describes(entry.tiers.iter().copied()));
            let mut next = Vec::clone(cached);
            if !same && next.len() < MAX_CACHED {
                next.push(entry.clone());
            }
            next
        });
        entry
    }

    /// Entries cached so far.
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tiers: &[TierKey]) -> CachedPolicy {
        CachedPolicy::new(tiers.into(), HeaderValue::from_static("p"))
    }

    #[test]
    fn an_entry_serves_only_its_own_tier_list() {
        let cache = PolicyValues::default();
        let a: &[TierKey] = &[("minute", 600), ("hour", 20_000)];
        assert!(cache.find(|e| e.describes(a.iter().copied())).is_none());
        cache.insert(entry(a));
        assert!(cache.find(|e| e.describes(a.iter().copied())).is_some());
        // Another limit, another order, a prefix, a longer list: all misses.
        for other in [
            &[("minute", 601), ("hour", 20_000)][..],
            &[("hour", 20_000), ("minute", 600)][..],
            &[("minute", 600)][..],
            &[("minute", 600), ("hour", 20_000), ("day", 1)][..],
            &[("ip-minute", 600), ("hour", 20_000)][..],
        ] {
            assert!(
                cache.find(|e| e.describes(other.iter().copied())).is_none(),
                "{other:?}"
            );
        }
        let hit = cache
            .find(|e| e.describes(a.iter().copied()))
            .expect("cached");
        assert_eq!(hit.limits[0], "600");
        assert_eq!(hit.limits[1], "20000");
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_one_entry_per_list() {
        let cache = PolicyValues::default();
        let a: &[TierKey] = &[("minute", 1)];
        cache.insert(entry(a));
        cache.insert(entry(a));
        assert_eq!(cache.len(), 1);
        for limit in 2..100 {
            let l: &[TierKey] = &[("minute", limit)];
            cache.insert(entry(l));
        }
        assert_eq!(cache.len(), MAX_CACHED);
        // A list past the bound is still answered, just not kept.
        let late: &[TierKey] = &[("day", 5)];
        assert_eq!(cache.insert(entry(late)).limits[0], "5");
        assert!(cache.find(|e| e.describes(late.iter().copied())).is_none());
    }
}
