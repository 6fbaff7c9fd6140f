//! Upstream target selection: round robin with passive health. A target
//! that refuses or times out a connection is skipped for
//! `proxy.upstream_down_seconds`; when every target is down the least
//! recently failed one is still tried, since refusing outright helps no one.
//! Down times run on a monotonic clock (the caller passes `now` as an
//! [`Instant`]), so a wall-clock step neither revives nor prolongs them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
pub use crate::config::MAX_TARGETS;

#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Until when the target is considered down, in ms since the
    /// upstream's `epoch`; 0 when up.
    down_until_ms: AtomicI64,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    next: AtomicUsize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    down_for: Duration,
    /// Origin of the monotonic ms in `down_until_ms`.
    epoch: Instant,
    /// TLS to the targets (`tls = true`); `None`: plain HTTP.
    pub tls: Option<crate::tls::UpstreamPeerTls>,
}

impl Upstream {
    pub fn from_config(cfg: &Config) -> Vec<Arc<Upstream>> {
        cfg.upstreams
            .iter()
            .map(|u| {
                Arc::new(Upstream {
                    name: u.name.clone(),
                    targets: u
                        .targets
                        .iter()
                        .take(MAX_TARGETS)
                        .map(|a| Target {
                            addr: *a,
                            down_until_ms: AtomicI64::new(0),
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                    connect_timeout: u.connect_timeout,
                    read_timeout: u.read_timeout,
                    write_timeout: cfg.proxy.write_timeout,
                    down_for: cfg.proxy.upstream_down_for,
                    epoch: Instant::now(),
                    tls: u.tls.as_ref().map(crate::tls::UpstreamPeerTls::new),
                })
            })
            .collect()
    }

    /// Picks the next target not in `tried` (a bit set of indexes),
    /// preferring targets that are up. `None` once every target was tried.
    pub fn select(&self, tried: u64, now: Instant) -> Option<usize> {
        let now_ms = self.ms_at(now);
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback: Option<(usize, i64)> = None;
        for i in 0..n {
            let idx = (start + i) % n;
            if tried & (1 << idx) != 0 {
                continue;
            }
            let down_until = self.targets[idx].down_until_ms.load(Ordering::Relaxed);
            if down_until <= now_ms {
                return Some(idx);
            }
            if fallback.is_none_or(|(_, t)| down_until < t) {
                fallback = Some((idx, down_until));
            }
        }
        fallback.map(|(idx, _)| idx)
    }

    /// Milliseconds from `epoch` to `now`; 0 for an instant before it.
    fn ms_at(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }

    pub fn mark_down(&self, idx: usize, now: Instant) {
        if let Some(t) = self.targets.get(idx) {
            let down_for = i64::try_from(self.down_for.as_millis()).unwrap_or(i64::MAX);
            // At least 1: 0 means "up".
            let until = self.ms_at(now).saturating_add(down_for).max(1);
            t.down_until_ms.store(until, Ordering::Relaxed);
            metrics::counter!("gateway_upstream_marked_down_total", "upstream" => self.name.to_string())
                .increment(1);
        }
    }

    pub fn mark_up(&self, idx: usize) {
        if let Some(t) = self.targets.get(idx) {
            if t.down_until_ms.load(Ordering::Relaxed) != 0 {
                t.down_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up_for(n: usize, down_for: Duration, epoch: Instant) -> Upstream {
        Upstream {
            name: "u".into(),
            targets: (0..n)
                .map(|i| Target {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    down_until_ms: AtomicI64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            down_for,
            epoch,
            tls: None,
        }
    }

    /// A clock for the tests: `at(ms)` is `ms` after a fixed start.
    fn clock() -> (Instant, impl Fn(u64) -> Instant) {
        let t0 = Instant::now();
        (t0, move |ms| t0 + Duration::from_millis(ms))
    }

    fn up(n: usize) -> (Upstream, impl Fn(u64) -> Instant) {
        let (t0, at) = clock();
        (up_for(n, Duration::from_secs(10), t0), at)
    }

    #[test]
    fn round_robin_over_healthy_targets() {
        let (u, at) = up(3);
        let picks: Vec<usize> = (0..6).filter_map(|_| u.select(0, at(0))).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn down_targets_are_skipped_until_their_time_is_up() {
        let (u, at) = up(3);
        u.mark_down(1, at(0));
        let picks: Vec<usize> = (0..4).filter_map(|_| u.select(0, at(5_000))).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert!((0..3)
            .filter_map(|_| u.select(0, at(10_000)))
            .any(|i| i == 1));
    }

    #[test]
    fn retries_avoid_tried_targets_and_end() {
        let (u, at) = up(2);
        let first = u.select(0, at(0)).expect("one");
        let second = u.select(1 << first, at(0)).expect("two");
        assert_ne!(first, second);
        assert_eq!(u.select((1 << first) | (1 << second), at(0)), None);
    }

    #[test]
    fn all_down_still_tries_the_earliest_to_recover() {
        let (u, at) = up(2);
        u.mark_down(0, at(1_000));
        u.mark_down(1, at(0));
        assert_eq!(u.select(0, at(2_000)), Some(1));
    }

    /// The down time is counted on the instants passed in, from the
    /// moment of failure: a wall-clock step (which `Instant` never sees)
    /// cannot end it early or make it last longer.
    #[test]
    fn down_time_runs_on_the_monotonic_clock() {
        let (u, at) = up(2);
        u.mark_down(0, at(60_000));
        for ms in [60_000, 65_000, 69_999] {
            assert!(
                (0..4).filter_map(|_| u.select(0, at(ms))).all(|i| i == 1),
                "target 0 picked at {ms} ms"
            );
        }
        assert!((0..2)
            .filter_map(|_| u.select(0, at(70_000)))
            .any(|i| i == 0));
    }

    /// `now_ms + down_for` once wrapped for a huge down time, so the
    /// target was never skipped.
    #[test]
    fn a_huge_down_time_saturates_instead_of_wrapping() {
        let (t0, at) = clock();
        let u = up_for(2, Duration::from_secs(u64::MAX), t0);
        u.mark_down(0, at(1_000));
        let picks: Vec<usize> = (0..4).filter_map(|_| u.select(0, at(2_000))).collect();
        assert_eq!(picks, [1, 1, 1, 1]);
    }

    #[test]
    fn an_instant_before_the_epoch_counts_as_the_epoch() {
        let (t0, at) = clock();
        let u = up_for(1, Duration::from_secs(10), at(1_000));
        u.mark_down(0, t0);
        assert_eq!(u.select(0, at(1_000)), Some(0), "fallback still tries it");
        assert_eq!(u.targets[0].down_until_ms.load(Ordering::Relaxed), 10_000);
    }
}
