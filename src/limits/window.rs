//! The sliding-window counter (DESIGN §3): the previous fixed window,
//! weighted by the share of it still inside the sliding window, plus the
//! current fixed window. The Redis script (`redis.rs`) repeats
//! [`estimate`] operation for operation, so both backends decide alike.

use super::{Tier, TierState};

/// The two fixed windows of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub prev: u64,
    pub curr: u64,
}

/// Index of the fixed window `now_ms` falls in.
pub fn index(now_ms: u64, window_ms: u64) -> u64 {
    now_ms / window_ms
}

/// Weighted count at `elapsed_ms` into the current window.
pub fn estimate(c: Counts, window_ms: u64, elapsed_ms: u64) -> f64 {
    let w = window_ms as f64;
    c.prev as f64 * ((w - elapsed_ms as f64) / w) + c.curr as f64
}

/// Whether one more request fits under `limit`.
pub fn has_room(limit: u32, c: Counts, window_ms: u64, elapsed_ms: u64) -> bool {
    estimate(c, window_ms, elapsed_ms) + 1.0 <= f64::from(limit)
}

/// Milliseconds from `elapsed_ms` until one more request fits, assuming no
/// other request is admitted meanwhile; 0 when it fits now.
pub fn until_room(limit: u32, c: Counts, window_ms: u64, elapsed_ms: u64) -> u64 {
    if has_room(limit, c, window_ms, elapsed_ms) {
        return 0;
    }
    let (w, e, l) = (window_ms as f64, elapsed_ms as f64, f64::from(limit));
    let (p, cur) = (c.prev as f64, c.curr as f64);
    let wait = if cur + 1.0 <= l && p > 0.0 {
        // Later in this window, once enough of the previous one slid out:
        // p * (w - e - d) / w + cur + 1 <= l.
        (w - e) - (l - 1.0 - cur) * w / p
    } else {
        // Only in the next window, where the current one is the previous:
        // cur * (w - e2) / w + 1 <= l.
        let e2 = if cur > 0.0 {
            w - (l - 1.0) * w / cur
        } else {
            0.0
        };
        (w - e) + e2.max(0.0)
    };
    // One extra millisecond keeps float rounding on the admitting side.
    (wait.max(0.0).ceil() as u64).saturating_add(1)
}

/// Where `tier` stands with counts `c` (already including this request if
/// it was counted) at `now_ms`.
pub fn state(tier: Tier, c: Counts, now_ms: u64) -> TierState {
    let window = tier.window_ms();
    let elapsed = now_ms % window;
    let left = f64::from(tier.limit) - estimate(c, window, elapsed);
    let remaining = if left >= 1.0 {
        left.floor().min(f64::from(u32::MAX)) as u32
    } else {
        0
    };
    let reset_ms = if remaining == 0 {
        until_room(tier.limit, c, window, elapsed)
    } else {
        window - elapsed
    };
    TierState {
        tier,
        remaining,
        reset_ms,
    }
}

/// [`state`] decided at `at_ms`, which may be later than the caller's
/// `now_ms` (a counter is never moved back to an older window): the reset
/// is reported from `now_ms`, so it includes the difference.
pub fn state_at(tier: Tier, c: Counts, now_ms: u64, at_ms: u64) -> TierState {
    let mut s = state(tier, c, at_ms);
    s.reset_ms = s.reset_ms.saturating_add(at_ms.saturating_sub(now_ms));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Period, Subject};

    const MIN: u64 = 60_000;

    fn tier(limit: u32) -> Tier {
        Tier {
            subject: Subject::Global(0),
            period: Period::Minute,
            limit,
        }
    }

    #[test]
    fn previous_window_weighs_what_is_left_of_it() {
        let c = Counts { prev: 10, curr: 2 };
        assert_eq!(estimate(c, MIN, 0), 12.0);
        assert_eq!(estimate(c, MIN, 30_000), 7.0);
        assert_eq!(estimate(c, MIN, 54_000), 3.0);
    }

    #[test]
    fn room_is_exact_at_the_limit() {
        assert!(has_room(5, Counts { prev: 0, curr: 4 }, MIN, 0));
        assert!(!has_room(5, Counts { prev: 0, curr: 5 }, MIN, 59_999));
        // Half of 4 still counts: 2 + 2 + 1 = 5 fits, 2 + 3 + 1 does not.
        assert!(has_room(5, Counts { prev: 4, curr: 2 }, MIN, 30_000));
        assert!(!has_room(5, Counts { prev: 4, curr: 3 }, MIN, 30_000));
    }

    #[test]
    fn remaining_counts_down_and_reset_is_when_room_returns() {
        let t = tier(5);
        for curr in 1..=5u64 {
            let s = state(t, Counts { prev: 0, curr }, 10 * MIN + 20_000);
            assert_eq!(s.remaining, 5 - curr as u32);
            if curr < 5 {
                assert_eq!(s.reset_ms, 40_000, "end of the window");
            }
        }
        // Full: room returns 12 s into the next window (5 * 48/60 + 1 = 5).
        let s = state(t, Counts { prev: 0, curr: 5 }, 10 * MIN + 20_000);
        assert_eq!(s.remaining, 0);
        assert_eq!(s.reset_ms, 40_000 + 12_000 + 1);
        assert_eq!(s.reset_seconds(), 53);
    }

    #[test]
    fn until_room_is_the_first_moment_with_room() {
        let cases = [
            (5, Counts { prev: 5, curr: 0 }, 0),
            (5, Counts { prev: 5, curr: 3 }, 10_000),
            (5, Counts { prev: 0, curr: 5 }, 59_000),
            (10, Counts { prev: 7, curr: 9 }, 1_000),
            (200, Counts { prev: 200, curr: 0 }, 0),
            (1, Counts { prev: 1, curr: 1 }, 30_000),
        ];
        for (limit, c, elapsed) in cases {
            let wait = until_room(limit, c, MIN, elapsed);
            assert!(wait > 0, "{c:?}");
            let at = elapsed + wait;
            let later = if at < MIN {
                has_room(limit, c, MIN, at)
            } else {
                let next = Counts {
                    prev: c.curr,
                    curr: 0,
                };
                has_room(limit, next, MIN, at - MIN)
            };
            assert!(later, "room after {wait} ms for {c:?}");
            // And not much earlier than that.
            let before = at.saturating_sub(50);
            let earlier = if before < MIN {
                has_room(limit, c, MIN, before)
            } else {
                has_room(
                    limit,
                    Counts {
                        prev: c.curr,
                        curr: 0,
                    },
                    MIN,
                    before - MIN,
                )
            };
            assert!(!earlier, "already room 50 ms earlier for {c:?}");
        }
    }
}
