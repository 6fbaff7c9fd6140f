//! Upstream target selection: round robin with passive health. A target
//! that refuses or times out a connection is skipped for
//! `proxy.upstream_down_seconds`; when every target is down the least
//! recently failed one is still tried, since refusing outright helps no one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
pub use crate::config::MAX_TARGETS;

#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Unix ms until which the target is considered down; 0 when up.
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
                })
            })
            .collect()
    }

    /// Picks the next target not in `tried` (a bit set of indexes),
    /// preferring targets that are up. `None` once every target was tried.
    pub fn select(&self, tried: u64, now_ms: i64) -> Option<usize> {
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

    pub fn mark_down(&self, idx: usize, now_ms: i64) {
        if let Some(t) = self.targets.get(idx) {
            let until = now_ms + self.down_for.as_millis() as i64;
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

    fn up(n: usize) -> Upstream {
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
            down_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn round_robin_over_healthy_targets() {
        let u = up(3);
        let picks: Vec<usize> = (0..6).filter_map(|_| u.select(0, 0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn down_targets_are_skipped_until_their_time_is_up() {
        let u = up(3);
        u.mark_down(1, 0);
        let picks: Vec<usize> = (0..4).filter_map(|_| u.select(0, 5_000)).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert!((0..3).filter_map(|_| u.select(0, 10_000)).any(|i| i == 1));
    }

    #[test]
    fn retries_avoid_tried_targets_and_end() {
        let u = up(2);
        let first = u.select(0, 0).expect("one");
        let second = u.select(1 << first, 0).expect("two");
        assert_ne!(first, second);
        assert_eq!(u.select((1 << first) | (1 << second), 0), None);
    }

    #[test]
    fn all_down_still_tries_the_earliest_to_recover() {
        let u = up(2);
        u.mark_down(0, 1_000);
        u.mark_down(1, 0);
        assert_eq!(u.select(0, 2_000), Some(1));
    }
}
