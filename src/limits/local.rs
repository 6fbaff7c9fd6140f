//! The local backend: exact per process, sharded so that concurrent
//! requests for different callers rarely share a lock, and bounded in
//! memory.
//!
//! A check locks the shards of all its tiers (in shard order, so two
//! checks cannot deadlock), decides, counts and unlocks: check-and-count is
//! atomic per process, as the Redis script is across processes.
//!
//! Memory: a counter whose windows have both slid out is equal to no
//! counter and is dropped by [`LocalStore::sweep`] (run every few seconds)
//! or when its shard is full. A shard still full of live counters (a flood
//! of distinct IPs) drops arbitrary ones down to 7/8 of its capacity and
//! counts them in `gateway_rate_limit_evictions_total`: the cost of a flood
//! is a forgotten counter, never unbounded memory.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use arrayvec::ArrayVec;
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use super::window::{self, Counts};
use super::{Decision, Mode, Period, Subject, Tier, MAX_TIERS};

/// Shards of the counter map; a power of two.
const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CounterKey {
    subject: Subject,
    period: Period,
}

/// The counts of one tier's two most recent fixed windows.
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// Index of the fixed window `curr` counts.
    window: u64,
    prev: u32,
    curr: u32,
}

impl Counter {
    /// The counts as of fixed window `idx`.
    fn at(&self, idx: u64) -> Counts {
        let (prev, curr) = if self.window == idx {
            (self.prev, self.curr)
        } else if self.window + 1 == idx {
            (self.curr, 0)
        } else {
            (0, 0)
        };
        Counts {
            prev: u64::from(prev),
            curr: u64::from(curr),
        }
    }

    fn add(&mut self, idx: u64) {
        let c = self.at(idx);
        self.window = idx;
        self.prev = c.prev as u32;
        self.curr = (c.curr as u32).saturating_add(1);
    }

    /// Whether both windows have slid out by window `idx`.
    fn is_idle(&self, idx: u64) -> bool {
        self.window + 2 <= idx
    }
}

/// Counters keyed by a hash computed once per tier and check: the same
/// hash picks the shard (from bits the table does not use) and the slot.
type Shard = HashTable<(CounterKey, Counter)>;

pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl LocalStore {
    /// A store of at most about `max_counters` counters.
    pub fn new(max_counters: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            // Keyed hashing: IP addresses are chosen by clients.
            hasher: RandomState::new(),
            per_shard: (max_counters / SHARDS).max(16),
        }
    }

    fn hash(&self, key: &CounterKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a counter with hash `h`: middle bits, since the
    /// shard's table uses the low bits and the top 7.
    fn shard_of(h: u64) -> usize {
        (h >> 32) as usize & (SHARDS - 1)
    }

    /// Checks `tiers` at `now_ms` and counts as `mode` says.
    pub fn check(&self, tiers: &[Tier], now_ms: u64, mode: Mode) -> Decision {
        // Each tier's counter key, hash, shard and current fixed window.
        let keys: ArrayVec<(CounterKey, u64, usize, u64), MAX_TIERS> = tiers
            .iter()
            .map(|t| {
                let k = CounterKey {
                    subject: t.subject,
                    period: t.period,
                };
                let h = self.hash(&k);
                (
                    k,
                    h,
                    Self::shard_of(h),
                    window::index(now_ms, t.window_ms()),
                )
            })
            .collect();
        let mut order: ArrayVec<usize, MAX_TIERS> = keys.iter().map(|(_, _, s, _)| *s).collect();
        order.sort_unstable();
        let mut locked: ArrayVec<(usize, MutexGuard<'_, Shard>), MAX_TIERS> = ArrayVec::new();
        for s in order {
            if locked.last().is_none_or(|(last, _)| *last != s) {
                locked.push((s, self.shards[s].lock()));
            }
        }
        let counts: ArrayVec<Counts, MAX_TIERS> = keys
            .iter()
            .map(|(k, h, s, idx)| {
                locked_shard(&mut locked, *s)
                    .find(*h, |(key, _)| key == k)
                    .map(|(_, c)| c.at(*idx))
                    .unwrap_or_default()
            })
            .collect();
        let admitted = tiers
            .iter()
            .zip(&counts)
            .all(|(t, c)| window::has_room(t.limit, *c, t.window_ms(), now_ms % t.window_ms()));
        let count = match mode {
            Mode::Count => admitted,
            Mode::Peek => false,
            Mode::Record => true,
        };
        let mut decision = Decision {
            admitted,
            now_ms,
            tiers: ArrayVec::new(),
        };
        for ((t, (k, h, s, idx)), mut c) in tiers.iter().zip(&keys).zip(counts) {
            if count {
                let shard = locked_shard(&mut locked, *s);
                match shard.find_mut(*h, |(key, _)| key == k) {
                    Some((_, counter)) => counter.add(*idx),
                    None => {
                        if shard.len() >= self.per_shard {
                            make_room(shard, self.per_shard, now_ms);
                        }
                        let mut counter = Counter {
                            window: *idx,
                            prev: 0,
                            curr: 0,
                        };
                        counter.add(*idx);
                        shard.insert_unique(*h, (*k, counter), |(key, _)| self.hash(key));
                    }
                }
                c.curr += 1;
            }
            decision.tiers.push(window::state(*t, c, now_ms));
        }
        decision
    }

    /// Drops idle counters; returns how many are left.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            drop_idle(&mut shard, now_ms);
            left += shard.len();
        }
        left
    }

    /// Counters held now (tests; `sweep` reports it in service).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The locked shard `shard` among `locked`, which is sorted by shard.
fn locked_shard<'a>(
    locked: &'a mut [(usize, MutexGuard<'_, Shard>)],
    shard: usize,
) -> &'a mut Shard {
    let i = locked.partition_point(|(s, _)| *s < shard);
    &mut locked[i].1
}

fn drop_idle(shard: &mut Shard, now_ms: u64) {
    shard.retain(|(k, c)| !c.is_idle(window::index(now_ms, k.period.window_ms())));
}

/// Frees room in a full shard: idle counters first, then arbitrary ones
/// down to 7/8 of the capacity, so the next inserts do not sweep again.
fn make_room(shard: &mut Shard, per_shard: usize, now_ms: u64) {
    drop_idle(shard, now_ms);
    let target = per_shard - per_shard / 8;
    if shard.len() <= target {
        return;
    }
    let mut excess = shard.len() - target;
    let evicted = excess;
    shard.retain(|_| {
        let keep = excess == 0;
        excess = excess.saturating_sub(1);
        keep
    });
    metrics::counter!("gateway_rate_limit_evictions_total").increment(evicted as u64);
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use uuid::Uuid;

    use super::*;

    const T0: u64 = 1_700_000_040_000; // 0 s into a minute

    fn key_tier(id: Uuid, period: Period, limit: u32) -> Tier {
        Tier {
            subject: Subject::Key(id),
            period,
            limit,
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_rejected_requests_do_not_count() {
        let store = LocalStore::new(10_000);
        let t = [key_tier(Uuid::new_v4(), Period::Minute, 5)];
        let remaining: Vec<(bool, u32)> = (0..7)
            .map(|i| {
                let d = store.check(&t, T0 + i * 100, Mode::Count);
                (d.admitted, d.tiers[0].remaining)
            })
            .collect();
        assert_eq!(
            remaining,
            [
                (true, 4),
                (true, 3),
                (true, 2),
                (true, 1),
                (true, 0),
                (false, 0),
                (false, 0)
            ]
        );
        // Hammering while full changes nothing: 12 s into the next window
        // the previous 5 weigh 4, so one more fits.
        for i in 0..1000 {
            assert!(!store.check(&t, T0 + 1_000 + i * 70, Mode::Count).admitted);
        }
        assert!(!store.check(&t, T0 + 60_000 + 11_900, Mode::Count).admitted);
        assert!(store.check(&t, T0 + 60_000 + 12_100, Mode::Count).admitted);
    }

    #[test]
    fn every_tier_needs_room_and_only_admitted_requests_count_anywhere() {
        let store = LocalStore::new(10_000);
        let id = Uuid::new_v4();
        let tiers = [
            key_tier(id, Period::Minute, 100),
            Tier {
                subject: Subject::KeyRoute(id, 3),
                period: Period::Minute,
                limit: 2,
            },
        ];
        assert!(store.check(&tiers, T0, Mode::Count).admitted);
        assert!(store.check(&tiers, T0, Mode::Count).admitted);
        let d = store.check(&tiers, T0, Mode::Count);
        assert!(!d.admitted);
        assert_eq!(d.headline().map(|s| s.tier.name()), Some("route-minute"));
        // The refused request did not count in the key tier either.
        let d = store.check(&tiers[..1], T0, Mode::Peek);
        assert_eq!(d.tiers[0].remaining, 98);
    }

    #[test]
    fn record_counts_past_the_limit_and_peek_counts_nothing() {
        let store = LocalStore::new(10_000);
        let t = [Tier {
            subject: Subject::AuthFailures(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            period: Period::Minute,
            limit: 2,
        }];
        for _ in 0..3 {
            store.check(&t, T0, Mode::Record);
        }
        let d = store.check(&t, T0, Mode::Peek);
        assert_eq!(d.tiers[0].remaining, 0);
        assert!(!d.admitted);
        assert_eq!(store.check(&t, T0, Mode::Peek), d);
    }

    #[test]
    fn memory_is_bounded_and_idle_counters_go() {
        let store = LocalStore::new(6_400);
        for i in 0..200_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(i));
            let t = [Tier {
                subject: Subject::Ip(ip),
                period: Period::Minute,
                limit: 10,
            }];
            store.check(&t, T0, Mode::Count);
        }
        assert!(store.len() <= 6_400, "{} counters", store.len());
        assert!(store.len() >= 5_000);
        assert_eq!(
            store.sweep(T0 + 60_000),
            store.len(),
            "previous window still counts"
        );
        assert_eq!(store.sweep(T0 + 120_000), 0);
    }

    #[test]
    fn concurrent_checks_never_admit_more_than_the_limit() {
        let store = std::sync::Arc::new(LocalStore::new(10_000));
        let id = Uuid::new_v4();
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let t = [
                        key_tier(id, Period::Minute, 500),
                        key_tier(id, Period::Hour, 10_000),
                        Tier {
                            subject: Subject::Global(1),
                            period: Period::Minute,
                            limit: 100_000,
                        },
                    ];
                    for _ in 0..1_000 {
                        if store.check(&t, T0 + 5, Mode::Count).admitted {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 500);
    }
}
