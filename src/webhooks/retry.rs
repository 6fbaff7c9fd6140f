//! When the next attempt of a failed delivery is due: `retry_schedule_ms`
//! with ±20 % jitter, `Retry-After` on 429/503 honoured up to the
//! schedule's longest step. Pure: the rng and the clock are passed in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// Share of a step by which the jitter moves it either way.
pub const JITTER: f64 = 0.2;

/// What to do after attempt number `attempts` (1-based) failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Try again after this delay.
    RetryIn(Duration),
    /// The schedule is exhausted: the delivery is `failed`.
    GiveUp,
}

/// The delay after the `attempts`-th failed attempt. `retry_after` is the
/// receiver's `Retry-After` (already limited to 429/503 by the caller): the
/// next attempt is never earlier than it asks, nor later than the
/// schedule's longest step because of it.
pub fn next_attempt(
    schedule: &[Duration],
    attempts: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Next {
    let Some(step) = attempts
        .checked_sub(1)
        .and_then(|i| schedule.get(i as usize))
    else {
        return Next::GiveUp;
    };
    let factor = 1.0 + rng.gen_range(-JITTER..=JITTER);
    let jittered = step.mul_f64(factor);
    let longest = schedule.iter().max().copied().unwrap_or_default();
    let delay = match retry_after {
        Some(asked) => jittered.max(asked.min(longest)),
        None => jittered,
    };
    Next::RetryIn(delay)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative
/// to `now`; a date in the past is no delay). None when unreadable.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    fn seed() -> u64 {
        let seed = rand::random();
        eprintln!("seed {seed}");
        seed
    }

    #[test]
    fn steps_follow_the_schedule_within_the_jitter() {
        let schedule = ms(&[1_000, 10_000, 100_000]);
        let mut rng = StdRng::seed_from_u64(seed());
        for _ in 0..1_000 {
            for (i, step) in schedule.iter().enumerate() {
                let Next::RetryIn(d) = next_attempt(&schedule, i as u32 + 1, None, &mut rng) else {
                    panic!("attempt {} should be retried", i + 1);
                };
                assert!(
                    d >= step.mul_f64(0.8) && d <= step.mul_f64(1.2),
                    "{d:?} vs {step:?}"
                );
            }
            assert_eq!(next_attempt(&schedule, 4, None, &mut rng), Next::GiveUp);
        }
        assert_eq!(next_attempt(&[], 1, None, &mut rng), Next::GiveUp);
        assert_eq!(next_attempt(&schedule, 0, None, &mut rng), Next::GiveUp);
    }

    #[test]
    fn the_jitter_spreads_both_ways() {
        let schedule = ms(&[10_000]);
        let mut rng = StdRng::seed_from_u64(seed());
        let delays: Vec<Duration> = (0..200)
            .filter_map(|_| match next_attempt(&schedule, 1, None, &mut rng) {
                Next::RetryIn(d) => Some(d),
                Next::GiveUp => None,
            })
            .collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(9_500)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(10_500)));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_step() {
        let schedule = ms(&[1_000, 60_000]);
        let mut rng = StdRng::seed_from_u64(seed());
        let at_least = |asked: u64, rng: &mut StdRng| match next_attempt(
            &schedule,
            1,
            Some(Duration::from_secs(asked)),
            rng,
        ) {
            Next::RetryIn(d) => d,
            Next::GiveUp => panic!("retried"),
        };
        // Later than the step: waits as asked.
        assert_eq!(at_least(30, &mut rng), Duration::from_secs(30));
        // Beyond the longest step: capped there.
        assert_eq!(at_least(3_600, &mut rng), Duration::from_secs(60));
        // Sooner than the step: the schedule still applies.
        let d = at_least(0, &mut rng);
        assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1_200));
        // The last attempt is not extended past the schedule by Retry-After.
        assert_eq!(
            next_attempt(&schedule, 3, Some(Duration::from_secs(1)), &mut rng),
            Next::GiveUp
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .expect("now")
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for junk in ["", "-5", "soon", "1.5"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk}");
        }
    }
}
