//! A rate limit for per-request warnings: a failing upstream must not
//! turn every request into a warn line. At most one warning per route per
//! interval passes, carrying the number of failures suppressed since the
//! previous one; the rest go to debug.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One warning per route per this interval.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Slot {
    last: Instant,
    suppressed: u64,
}

/// Per-route warning budget. Keyed by route name, so its size is bounded
/// by the route table.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    // Held only for a map lookup, never across an await; taken only on
    // failed requests.
    slots: Mutex<HashMap<String, Slot>>,
}

impl WarnLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a failure on `route` at `now` may be warned,
    /// with the count of failures suppressed since the last warning;
    /// `None` when it should be logged at debug instead.
    pub fn admit(&self, route: &str, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(route) {
            Some(slot) if now.saturating_duration_since(slot.last) < self.every => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                slot.last = now;
                Some(std::mem::take(&mut slot.suppressed))
            }
            None => {
                slots.insert(
                    route.to_string(),
                    Slot {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_route_per_interval_with_the_suppressed_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let l = WarnLimiter::new(Duration::from_secs(10));
        assert_eq!(l.admit("a", at(0)), Some(0));
        assert_eq!(l.admit("a", at(1)), None);
        assert_eq!(l.admit("a", at(9_999)), None);
        // Another route has a budget of its own.
        assert_eq!(l.admit("b", at(5_000)), Some(0));
        assert_eq!(l.admit("a", at(10_000)), Some(2));
        assert_eq!(l.admit("a", at(10_001)), None);
        assert_eq!(l.admit("a", at(30_000)), Some(1));
        assert_eq!(l.admit("b", at(30_000)), Some(0));
    }

    #[test]
    fn a_flood_of_failures_warns_once_per_interval() {
        let t0 = Instant::now();
        let l = WarnLimiter::new(Duration::from_secs(10));
        // 1000 failures a second for a minute.
        let warned = (0..60_000u64)
            .filter(|ms| l.admit("r", t0 + Duration::from_millis(*ms)).is_some())
            .count();
        assert_eq!(warned, 6);
    }

    #[test]
    fn an_earlier_instant_does_not_reopen_the_budget() {
        let t0 = Instant::now();
        let l = WarnLimiter::new(Duration::from_secs(10));
        assert_eq!(l.admit("r", t0 + Duration::from_secs(20)), Some(0));
        assert_eq!(l.admit("r", t0), None);
    }
}
