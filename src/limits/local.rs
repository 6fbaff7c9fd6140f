//! The local backend: exact per process, sharded so that concurrent
//! requests for different callers rarely share a lock, and bounded in
//! memory.
//!
//! A check locks the shards of all its tiers (in shard order, so two
//! checks cannot deadlock), decides, counts and unlocks: check-and-count is
//! atomic per process, as the Redis script is across processes.
//!
//! Time: a counter never moves back to an older window. The clock is read
//! before the locks, so a check can arrive with a time older than one
//! another check has already counted at (or the clock can step back); such
//! a check is decided as of the start of the counter's own window, where
//! the previous window still weighs fully. Late readings can then only
//! refuse early, never reset a counter and over-admit.
//!
//! Memory: a counter whose windows have both slid out is equal to no
//! counter and is dropped by [`LocalStore::sweep`] (run every few seconds)
//! or when its table is full. Counters live in two classes with separate
//! capacities: subjects named by a client IP (anonymous tiers and the
//! brute-force guard), which any client can create at will, and subjects
//! named by a key, a token subject or a route (key, token, per-route and
//! route-global tiers), which only configuration, issued keys and tokens
//! signed by a configured issuer create. By default each class
//! gets half of `max_local_counters`. A table still full of live counters
//! (a flood of distinct IPs) drops arbitrary counters of its own class
//! down to 7/8 of its capacity and counts them in
//! `gateway_rate_limit_evictions_total{class}`: a flood costs forgotten IP
//! counters, never unbounded memory and never a paying key's quota.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use arrayvec::ArrayVec;
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use super::window::{self, Counts};
use super::{Decision, Mode, Period, Subject, Tier, MAX_TIERS};

/// Shards of the counter map; a power of two.
/// `class` labels of `gateway_rate_limit_evictions_total`: client IPs, or
/// callers (keys and everything else).
pub const EVICTION_CLASSES: &[&str] = &["ip", "caller"];

const SHARDS: usize = 64;
/// Least capacity of one class in one shard.
const MIN_PER_SHARD: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CounterKey {
    subject: Subject,
    period: Period,
}

impl CounterKey {
    /// Whether a client IP names the subject: anyone can make more of them.
    fn is_ip(&self) -> bool {
        matches!(
            self.subject,
            Subject::Ip(_) | Subject::IpRoute(..) | Subject::AuthFailures(_)
        )
    }
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
    /// The counts as of fixed window `idx`, which is not older than
    /// `self.window`.
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

    /// Counts one request in window `idx`, which is not older than
    /// `self.window`.
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
type Table = HashTable<(CounterKey, Counter)>;

/// One shard: a table per class, so IP counters only ever evict IP
/// counters.
#[derive(Default)]
struct Shard {
    ips: Table,
    callers: Table,
}

impl Shard {
    fn table(&mut self, key: &CounterKey) -> &mut Table {
        if key.is_ip() {
            &mut self.ips
        } else {
            &mut self.callers
        }
    }

    fn len(&self) -> usize {
        self.ips.len() + self.callers.len()
    }
}

pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Capacity of one shard's IP table.
    ips_per_shard: usize,
    /// Capacity of one shard's key and route table.
    callers_per_shard: usize,
}

/// One tier of a check: its counter key, hash, shard and the fixed window
/// the caller's clock reading falls in.
struct Slot {
    key: CounterKey,
    hash: u64,
    shard: usize,
    idx: u64,
}

impl LocalStore {
    /// A store of at most about `max_counters` counters, half for each
    /// class.
    pub fn new(max_counters: usize) -> LocalStore {
        let callers = max_counters / 2;
        LocalStore::with_capacity(max_counters - callers, callers)
    }

    /// A store of at most about `ips` counters named by a client IP and
    /// `callers` named by a key or route.
    pub fn with_capacity(ips: usize, callers: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            // Keyed hashing: IP addresses are chosen by clients.
            hasher: RandomState::new(),
            ips_per_shard: (ips / SHARDS).max(MIN_PER_SHARD),
            callers_per_shard: (callers / SHARDS).max(MIN_PER_SHARD),
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

    /// Checks `tiers` at `now_ms` (the caller's clock reading, taken before
    /// any lock) and counts as `mode` says.
    pub fn check(&self, tiers: &[Tier], now_ms: u64, mode: Mode) -> Decision {
        let slots: ArrayVec<Slot, MAX_TIERS> = tiers
            .iter()
            .map(|t| {
                let key = CounterKey {
                    subject: t.subject,
                    period: t.period,
                };
                let hash = self.hash(&key);
                Slot {
                    key,
                    hash,
                    shard: Self::shard_of(hash),
                    idx: window::index(now_ms, t.window_ms()),
                }
            })
            .collect();
        let mut order: ArrayVec<usize, MAX_TIERS> = slots.iter().map(|s| s.shard).collect();
        order.sort_unstable();
        let mut locked: ArrayVec<(usize, MutexGuard<'_, Shard>), MAX_TIERS> = ArrayVec::new();
        for s in order {
            if locked.last().is_none_or(|(last, _)| *last != s) {
                locked.push((s, self.shards[s].lock()));
            }
        }
        // Each tier's counts, the window it is decided in (never older than
        // its counter's) and the time it is decided at.
        let seen: ArrayVec<(Counts, u64, u64), MAX_TIERS> = tiers
            .iter()
            .zip(&slots)
            .map(|(t, s)| {
                let counter = locked_shard(&mut locked, s.shard)
                    .table(&s.key)
                    .find(s.hash, |(key, _)| *key == s.key)
                    .map(|(_, c)| *c);
                let idx = counter.map_or(s.idx, |c| c.window.max(s.idx));
                let at_ms = if idx > s.idx {
                    idx * t.window_ms()
                } else {
                    now_ms
                };
                let counts = counter.map(|c| c.at(idx)).unwrap_or_default();
                (counts, idx, at_ms)
            })
            .collect();
        let admitted = tiers.iter().zip(&seen).all(|(t, (c, _, at_ms))| {
            window::has_room(t.limit, *c, t.window_ms(), at_ms % t.window_ms())
        });
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
        for ((t, s), (mut c, idx, at_ms)) in tiers.iter().zip(&slots).zip(seen) {
            if count {
                let table = locked_shard(&mut locked, s.shard).table(&s.key);
                match table.find_mut(s.hash, |(key, _)| *key == s.key) {
                    Some((_, counter)) => counter.add(idx),
                    None => {
                        let capacity = if s.key.is_ip() {
                            self.ips_per_shard
                        } else {
                            self.callers_per_shard
                        };
                        if table.len() >= capacity {
                            make_room(table, capacity, s.key.is_ip(), now_ms);
                        }
                        let mut counter = Counter {
                            window: idx,
                            prev: 0,
                            curr: 0,
                        };
                        counter.add(idx);
                        table.insert_unique(s.hash, (s.key, counter), |(key, _)| self.hash(key));
                    }
                }
                c.curr += 1;
            }
            decision.tiers.push(window::state_at(*t, c, now_ms, at_ms));
        }
        decision
    }

    /// Drops idle counters; returns how many are left.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            drop_idle(&mut shard.ips, now_ms);
            drop_idle(&mut shard.callers, now_ms);
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

fn drop_idle(table: &mut Table, now_ms: u64) {
    table.retain(|(k, c)| !c.is_idle(window::index(now_ms, k.period.window_ms())));
}

/// Frees room in a full table: idle counters first, then arbitrary ones
/// down to 7/8 of the capacity, so the next inserts do not sweep again.
fn make_room(table: &mut Table, capacity: usize, ips: bool, now_ms: u64) {
    drop_idle(table, now_ms);
    let target = capacity - capacity / 8;
    if table.len() <= target {
        return;
    }
    let mut excess = table.len() - target;
    let evicted = excess;
    table.retain(|_| {
        let keep = excess == 0;
        excess = excess.saturating_sub(1);
        keep
    });
    let class = EVICTION_CLASSES[usize::from(!ips)];
    metrics::counter!("gateway_rate_limit_evictions_total", "class" => class)
        .increment(evicted as u64);
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
        // IP counters get half of the capacity; the other half is kept for
        // keys and routes.
        assert!(store.len() <= 3_200, "{} counters", store.len());
        assert!(store.len() >= 2_500);
        assert_eq!(
            store.sweep(T0 + 60_000),
            store.len(),
            "previous window still counts"
        );
        assert_eq!(store.sweep(T0 + 120_000), 0);
    }

    /// A check whose clock reading is older than a counter's window (read
    /// before the lock, then overtaken) must not reset the counter.
    #[test]
    fn an_older_time_after_a_newer_one_does_not_reset_the_window() {
        let store = LocalStore::new(10_000);
        let t = [key_tier(Uuid::new_v4(), Period::Minute, 10)];
        let (before, after) = (T0 + 59_999, T0 + 60_000);
        let mut admitted = 0;
        for i in 0..100 {
            let now = if i % 2 == 0 { after } else { before };
            if store.check(&t, now, Mode::Count).admitted {
                admitted += 1;
            }
        }
        // At 0 ms into the new window the previous one weighs fully, so
        // across the boundary the limit holds exactly.
        assert_eq!(admitted, 10);
    }

    #[test]
    fn concurrent_checks_straddling_a_boundary_admit_at_most_the_limit() {
        let seed: u64 = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_0004);
        let store = LocalStore::new(10_000);
        let id = Uuid::new_v4();
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for thread in 0..8u64 {
                let (store, admitted) = (&store, &admitted);
                s.spawn(move || {
                    let t = [key_tier(id, Period::Minute, 10)];
                    // A per-thread xorshift stream of clock readings within
                    // 50 ms either side of the minute boundary.
                    let mut x = seed ^ (thread + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    for _ in 0..2_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let now = T0 + 59_950 + x % 100;
                        if store.check(&t, now, Mode::Count).admitted {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // At most the limit, and with this many tries exactly it.
        let n = admitted.into_inner();
        assert_eq!(n, 10, "admitted {n} of 10 (TEST_SEED={seed})");
    }

    #[test]
    fn a_clock_stepping_back_does_not_reset_counts() {
        let store = LocalStore::new(10_000);
        let t = [key_tier(Uuid::new_v4(), Period::Minute, 10)];
        for _ in 0..10 {
            assert!(store.check(&t, T0 + 30_000, Mode::Count).admitted);
        }
        // Half of the previous 10 still weighs 5: 5 more fit.
        for _ in 0..5 {
            assert!(store.check(&t, T0 + 90_000, Mode::Count).admitted);
        }
        assert!(!store.check(&t, T0 + 90_000, Mode::Count).admitted);
        // The wall clock steps back a minute, then an hour: still full.
        for back in [T0 + 30_000, T0 + 59_999, T0 - 3_600_000] {
            let d = store.check(&t, back, Mode::Count);
            assert!(!d.admitted, "admitted at {back}");
            assert_eq!(d.tiers[0].remaining, 0);
        }
    }

    /// A flood of distinct IPs on an anonymous route must not evict the
    /// counters of keys (or routes' global counters).
    #[test]
    fn an_ip_flood_does_not_evict_key_or_global_counters() {
        let store = LocalStore::new(6_400);
        let keys: Vec<[Tier; 2]> = (0..64u32)
            .map(|i| {
                [
                    key_tier(Uuid::new_v4(), Period::Minute, 5),
                    Tier {
                        subject: Subject::Global(i),
                        period: Period::Minute,
                        limit: 5,
                    },
                ]
            })
            .collect();
        for t in &keys {
            for _ in 0..5 {
                assert!(store.check(t, T0, Mode::Count).admitted);
            }
            assert!(!store.check(t, T0, Mode::Count).admitted);
        }
        for i in 0..200_000u128 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (i << 64),
            ));
            let t = [Tier {
                subject: Subject::Ip(ip),
                period: Period::Minute,
                limit: 10,
            }];
            store.check(&t, T0 + 1, Mode::Count);
        }
        for (i, t) in keys.iter().enumerate() {
            let d = store.check(t, T0 + 2, Mode::Peek);
            assert_eq!(
                (d.tiers[0].remaining, d.tiers[1].remaining),
                (0, 0),
                "key/global counters {i} were evicted"
            );
        }
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
