//! Miss lookups (DESIGN §3 "API keys" → "Visibility"): a well-formed,
//! checksum-valid key that is missing from the snapshot is looked up in
//! Postgres, so a key made by the CLI or on another instance works before
//! its NOTIFY arrives.
//!
//! Misses are what a guessing client produces, so each one is made cheap
//! and bounded before it may reach the database:
//! - a short negative cache, valid only while no change has been applied
//!   to the snapshot since the miss (so a key created after a miss works at
//!   once);
//! - single flight: one query in flight per key hash, the others wait for
//!   it;
//! - a global budget of queries per second; over it the key is unknown
//!   without touching Postgres;
//! - a bounded query time; an error or timeout refuses the key as unknown.
//!
//! A found record goes into the snapshot through
//! [`KeyStore::insert_looked_up`], which refuses it when a change to that
//! key (or a full reload) was published after the query began, so a lookup
//! never brings back a key a newer NOTIFY revoked, changed or removed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::OnceCell;

use crate::keys::format::KeyHash;
use crate::keys::snapshot::{authenticate_record, Authenticated, KeyRecord, KeyStore, Rejection};

/// How long a miss is remembered (unless a change is applied first).
pub const NEGATIVE_TTL_MS: i64 = 3_000;
/// Longest a lookup may take, waiting for a pooled connection included.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections of the lookup pool, apart from the admin API's pool so a
/// flood of misses cannot starve admin writes, nor the reverse.
pub const LOOKUP_POOL_SIZE: usize = 4;
/// Remembered misses at most; a flood of distinct guesses beyond this
/// (more than the budget lets through in a TTL) only costs re-checks.
const NEGATIVE_CAPACITY: usize = 65_536;

/// The outcome of one flight, shared by everyone who waited for it.
#[derive(Clone)]
enum Fetched {
    /// Found and published in the snapshot.
    Found(Arc<KeyRecord>),
    /// Found, but the snapshot changed for this key meanwhile (or already
    /// held it): the snapshot answers.
    Superseded,
    Missing,
    OverBudget,
    Failed,
}

struct Negative {
    /// The store's change sequence when the lookup began.
    seq: u64,
    until_ms: i64,
}

/// A token bucket of `per_second` tokens, refilled continuously, full at
/// start. Time comes in as an argument; a clock stepping back refills
/// nothing.
struct Budget {
    per_second: u32,
    /// (tokens, time of the last refill in ms)
    state: Mutex<(f64, i64)>,
}

impl Budget {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new((f64::from(per_second), i64::MIN)),
        }
    }

    fn try_take(&self, now_ms: i64) -> bool {
        let rate = f64::from(self.per_second);
        let mut s = lock(&self.state);
        let (tokens, last) = *s;
        let elapsed_ms = if last == i64::MIN {
            0
        } else {
            now_ms.saturating_sub(last).max(0)
        };
        let tokens = (tokens + elapsed_ms as f64 * rate / 1000.0).min(rate);
        let last = if last == i64::MIN {
            now_ms
        } else {
            last.max(now_ms)
        };
        if tokens >= 1.0 {
            *s = (tokens - 1.0, last);
            true
        } else {
            *s = (tokens, last);
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent at every await-free step; a panic elsewhere
    // must not take authentication down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `result` labels of `gateway_key_miss_lookups_total`.
const RESULTS: &[&str] = &["hit", "miss", "error", "budget_exhausted"];

/// Registers the miss lookups' metric at zero (see [`crate::telemetry`]).
pub fn register_metrics() {
    for result in RESULTS {
        metrics::counter!("gateway_key_miss_lookups_total", "result" => *result).absolute(0);
    }
}

fn count(result: &'static str) {
    debug_assert!(RESULTS.contains(&result), "unregistered result {result}");
    metrics::counter!("gateway_key_miss_lookups_total", "result" => result).increment(1);
}

/// Miss lookups of one instance, shared by the proxy and the admin API.
pub struct MissLookups {
    store: Arc<KeyStore>,
    budget: Budget,
    negative: Mutex<HashMap<KeyHash, Negative>>,
    flights: Mutex<HashMap<KeyHash, Arc<OnceCell<Fetched>>>>,
    /// Where [`MissLookups::lookup`] queries; `None` in unit tests, which
    /// call [`MissLookups::resolve`] with a fetch of their own.
    pool: Option<Pool>,
}

/// A caller's share of a flight; the last one to leave removes it.
struct Flight<'a> {
    owner: &'a MissLookups,
    hash: KeyHash,
    cell: Arc<OnceCell<Fetched>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = lock(&self.owner.flights);
        if let Some(c) = flights.get(&self.hash) {
            // Counted under the lock every joiner takes: the map and us.
            if Arc::ptr_eq(c, &self.cell) && Arc::strong_count(&self.cell) == 2 {
                flights.remove(&self.hash);
            }
        }
    }
}

impl MissLookups {
    /// `per_second` is `keys.miss_lookups_per_second`; 0 disables lookups.
    pub fn new(store: Arc<KeyStore>, per_second: u32, pool: Option<Pool>) -> Self {
        Self {
            store,
            budget: Budget::new(per_second),
            negative: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            pool,
        }
    }

    /// Looks `hash` up in Postgres (current or previous secret). Call only
    /// for a checksum-valid key the snapshot did not know.
    pub async fn lookup(&self, hash: &KeyHash, now_ms: i64) -> Result<Authenticated, Rejection> {
        let Some(pool) = &self.pool else {
            return Err(Rejection::Unknown);
        };
        self.resolve(hash, now_ms, || async {
            let query = async {
                let client = pool.get().await?;
                crate::store::keys::find_by_hash(&**client, hash).await
            };
            match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
                Ok(found) => found.map_err(|e| e.describe()),
                Err(_) => Err(crate::store::DbError::Timeout(LOOKUP_TIMEOUT).describe()),
            }
        })
        .await
    }

    /// [`MissLookups::lookup`] with the query given: `fetch` runs at most
    /// once per flight, and only within the budget.
    pub async fn resolve<F, Fut, E>(
        &self,
        hash: &KeyHash,
        now_ms: i64,
        fetch: F,
    ) -> Result<Authenticated, Rejection>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<KeyRecord>, E>>,
        E: std::fmt::Display,
    {
        if self.budget.per_second == 0 || self.remembered_missing(hash, now_ms) {
            return Err(Rejection::Unknown);
        }
        let flight = self.join(hash);
        let fetched = flight
            .cell
            .get_or_init(|| self.fetch_once(hash, now_ms, fetch))
            .await
            .clone();
        drop(flight);
        match fetched {
            Fetched::Found(r) => authenticate_record(&r, hash, now_ms),
            Fetched::Superseded => self.store.load().authenticate(hash, now_ms),
            Fetched::Missing | Fetched::OverBudget | Fetched::Failed => Err(Rejection::Unknown),
        }
    }

    fn join(&self, hash: &KeyHash) -> Flight<'_> {
        let mut flights = lock(&self.flights);
        let cell = match flights.get(hash) {
            // A finished flight answered for an earlier moment: start anew.
            Some(c) if !c.initialized() => c.clone(),
            _ => {
                let c = Arc::new(OnceCell::new());
                flights.insert(*hash, c.clone());
                c
            }
        };
        Flight {
            owner: self,
            hash: *hash,
            cell,
        }
    }

    async fn fetch_once<F, Fut, E>(&self, hash: &KeyHash, now_ms: i64, fetch: F) -> Fetched
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<KeyRecord>, E>>,
        E: std::fmt::Display,
    {
        if !self.budget.try_take(now_ms) {
            count("budget_exhausted");
            return Fetched::OverBudget;
        }
        // Before the query: any change published from here on may be newer
        // than what the query reads.
        let seq = self.store.change_seq();
        match fetch().await {
            Ok(Some(record)) => {
                count("hit");
                let record = Arc::new(record);
                if self.store.insert_looked_up(record.clone(), seq) {
                    Fetched::Found(record)
                } else {
                    Fetched::Superseded
                }
            }
            Ok(None) => {
                count("miss");
                self.remember_missing(hash, seq, now_ms);
                Fetched::Missing
            }
            Err(e) => {
                count("error");
                // Debug: during an outage this fires up to the budget per second.
                tracing::debug!(error = %e, "key lookup failed; refusing the key as unknown");
                Fetched::Failed
            }
        }
    }

    fn remembered_missing(&self, hash: &KeyHash, now_ms: i64) -> bool {
        let seq = self.store.change_seq();
        lock(&self.negative)
            .get(hash)
            .is_some_and(|n| n.seq == seq && now_ms < n.until_ms)
    }

    fn remember_missing(&self, hash: &KeyHash, seq: u64, now_ms: i64) {
        let current = self.store.change_seq();
        if seq != current {
            // A change landed during the query: the miss may already be stale.
            return;
        }
        let mut negative = lock(&self.negative);
        if negative.len() >= NEGATIVE_CAPACITY {
            negative.retain(|_, n| n.seq == current && now_ms < n.until_ms);
            if negative.len() >= NEGATIVE_CAPACITY {
                negative.clear();
            }
        }
        negative.insert(
            *hash,
            Negative {
                seq,
                until_ms: now_ms.saturating_add(NEGATIVE_TTL_MS),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use uuid::Uuid;

    use super::*;
    use crate::config::Limits;
    use crate::keys::scope::Scope;
    use crate::keys::snapshot::{KeyChange, KeySnapshot};

    fn rec(id: u128, hash: u8, version: i64) -> KeyRecord {
        let mut r = KeyRecord::new(
            Uuid::from_u128(id),
            [hash; 32],
            vec![Scope::parse("read:x").expect("scope")],
            Limits::default(),
            None,
            None,
            None,
        );
        r.version = version;
        r
    }

    fn loaded_store() -> Arc<KeyStore> {
        let store = KeyStore::new();
        store.replace(KeySnapshot::default());
        store
    }

    type Fetch = std::future::Ready<Result<Option<KeyRecord>, String>>;

    fn found(r: KeyRecord) -> impl FnOnce() -> Fetch {
        move || std::future::ready(Ok(Some(r)))
    }

    #[tokio::test]
    async fn a_found_key_is_answered_and_published() {
        let store = loaded_store();
        let m = MissLookups::new(store.clone(), 10, None);
        let ok = m
            .resolve(&[1; 32], 0, found(rec(1, 1, 1)))
            .await
            .expect("found");
        assert_eq!(ok.record.id, Uuid::from_u128(1));
        // Later requests need no lookup.
        assert!(store.load().authenticate(&[1; 32], 0).is_ok());
        // Revoked and expired rows answer as the snapshot would.
        let mut revoked = rec(2, 2, 1);
        revoked.revoked_at_ms = Some(1);
        assert_eq!(
            m.resolve(&[2; 32], 0, found(revoked)).await.unwrap_err(),
            Rejection::Revoked
        );
        let mut expired = rec(3, 3, 1);
        expired.expires_at_ms = Some(5);
        assert_eq!(
            m.resolve(&[3; 32], 10, found(expired)).await.unwrap_err(),
            Rejection::Expired
        );
    }

    #[tokio::test]
    async fn one_query_per_key_in_flight() {
        let store = loaded_store();
        let m = Arc::new(MissLookups::new(store, 1_000, None));
        let queries = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let (m, queries, mut gate) = (m.clone(), queries.clone(), gate.clone());
            waiters.push(tokio::spawn(async move {
                m.resolve(&[4; 32], 0, || async move {
                    queries.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, String>(Some(rec(4, 4, 1)))
                })
                .await
                .is_ok()
            }));
        }
        // Let every caller join the flight before it may finish (bounded,
        // so a broken single flight fails below instead of hanging).
        for _ in 0..10_000 {
            let joined = m
                .flights
                .lock()
                .unwrap()
                .get(&[4; 32])
                .map_or(0, Arc::strong_count);
            if joined == 21 {
                break;
            }
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        for w in waiters {
            assert!(w.await.expect("task"));
        }
        assert_eq!(queries.load(Ordering::SeqCst), 1);
        assert!(m.flights.lock().unwrap().is_empty(), "flight removed");
    }

    #[tokio::test]
    async fn a_miss_is_remembered_until_a_change_is_applied() {
        let store = loaded_store();
        let m = MissLookups::new(store.clone(), 1_000, None);
        let queries = AtomicUsize::new(0);
        let counted = |r: Option<KeyRecord>| {
            let queries = &queries;
            move || {
                queries.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok::<_, String>(r))
            }
        };
        assert!(m.resolve(&[5; 32], 0, counted(None)).await.is_err());
        assert!(m.resolve(&[5; 32], 1_000, counted(None)).await.is_err());
        assert_eq!(
            queries.load(Ordering::SeqCst),
            1,
            "second miss from the cache"
        );
        // Any applied change invalidates it: the key now exists.
        store.apply(vec![KeyChange::Remove(Uuid::from_u128(99))]);
        assert!(m
            .resolve(&[5; 32], 1_001, counted(Some(rec(5, 5, 1))))
            .await
            .is_ok());
        assert_eq!(queries.load(Ordering::SeqCst), 2);
        // And it expires on its own.
        assert!(m.resolve(&[6; 32], 0, counted(None)).await.is_err());
        assert!(m
            .resolve(&[6; 32], NEGATIVE_TTL_MS, counted(None))
            .await
            .is_err());
        assert_eq!(queries.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_miss_seen_while_a_change_lands_is_not_remembered() {
        let store = loaded_store();
        let m = MissLookups::new(store.clone(), 1_000, None);
        let s = store.clone();
        let r = m
            .resolve(&[7; 32], 0, || async move {
                s.apply(vec![KeyChange::Remove(Uuid::from_u128(99))]);
                Ok::<_, String>(None)
            })
            .await;
        assert!(r.is_err());
        assert!(!m.remembered_missing(&[7; 32], 1));
    }

    #[tokio::test]
    async fn lookups_stay_within_the_budget_and_zero_disables_them() {
        let store = loaded_store();
        let m = MissLookups::new(store.clone(), 3, None);
        let queries = AtomicUsize::new(0);
        let mut guess = 0u8;
        let mut try_at = |now: i64| {
            guess = guess.wrapping_add(1);
            let queries = &queries;
            let hash = [guess; 32];
            let m = &m;
            async move {
                m.resolve(&hash, now, move || {
                    queries.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(Ok::<_, String>(None))
                })
                .await
            }
        };
        for _ in 0..10 {
            assert_eq!(try_at(0).await.unwrap_err(), Rejection::Unknown);
        }
        assert_eq!(queries.load(Ordering::SeqCst), 3, "a full bucket");
        for _ in 0..10 {
            let _ = try_at(500).await;
        }
        assert_eq!(
            queries.load(Ordering::SeqCst),
            4,
            "1.5 tokens back after 500 ms"
        );
        // A clock stepping back refills nothing.
        for _ in 0..10 {
            let _ = try_at(-60_000).await;
        }
        assert_eq!(queries.load(Ordering::SeqCst), 4);
        for _ in 0..10 {
            let _ = try_at(10_000).await;
        }
        assert_eq!(
            queries.load(Ordering::SeqCst),
            7,
            "never more than a bucket"
        );

        let off = MissLookups::new(store, 0, None);
        let before = queries.load(Ordering::SeqCst);
        let r = off
            .resolve(&[1; 32], 0, || {
                queries.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok::<_, String>(None))
            })
            .await;
        assert_eq!(r.unwrap_err(), Rejection::Unknown);
        assert_eq!(queries.load(Ordering::SeqCst), before, "disabled: no query");
    }

    /// The interleaving of a lookup racing a revocation: the query reads the
    /// key while still active, the revocation's NOTIFY is applied before
    /// the lookup publishes. The key must stay revoked.
    #[tokio::test]
    async fn a_lookup_racing_a_revocation_never_resurrects_the_key() {
        let store = loaded_store();
        let m = MissLookups::new(store.clone(), 1_000, None);
        let s = store.clone();
        let r = m
            .resolve(&[8; 32], 0, || async move {
                let active = rec(8, 8, 1);
                let mut revoked = rec(8, 8, 2);
                revoked.revoked_at_ms = Some(1);
                s.apply(vec![KeyChange::Upsert(revoked)]);
                Ok::<_, String>(Some(active))
            })
            .await;
        assert_eq!(r.unwrap_err(), Rejection::Revoked);
        assert_eq!(
            store.load().authenticate(&[8; 32], 0).unwrap_err(),
            Rejection::Revoked
        );

        // Removed (deleted) meanwhile: stays unknown.
        let s = store.clone();
        let r = m
            .resolve(&[9; 32], 0, || async move {
                s.apply(vec![KeyChange::Remove(Uuid::from_u128(9))]);
                Ok::<_, String>(Some(rec(9, 9, 1)))
            })
            .await;
        assert_eq!(r.unwrap_err(), Rejection::Unknown);
        assert!(store.load().get_by_id(&Uuid::from_u128(9)).is_none());

        // A full reload meanwhile: the reload is the truth.
        let s = store.clone();
        let r = m
            .resolve(&[10; 32], 0, || async move {
                s.replace(KeySnapshot::default());
                Ok::<_, String>(Some(rec(10, 10, 1)))
            })
            .await;
        assert_eq!(r.unwrap_err(), Rejection::Unknown);
        assert!(store.load().get_by_id(&Uuid::from_u128(10)).is_none());

        // A change to another key does not stop the insert.
        let s = store.clone();
        let r = m
            .resolve(&[11; 32], 0, || async move {
                s.apply(vec![KeyChange::Remove(Uuid::from_u128(12))]);
                Ok::<_, String>(Some(rec(11, 11, 1)))
            })
            .await;
        assert!(r.is_ok());
        assert!(store.load().get_by_id(&Uuid::from_u128(11)).is_some());

        // An older version than the snapshot holds never replaces it.
        let mut newer = rec(13, 13, 5);
        newer.revoked_at_ms = Some(1);
        store.apply(vec![KeyChange::Upsert(newer)]);
        assert!(!store.insert_looked_up(Arc::new(rec(13, 13, 4)), store.change_seq()));
        assert_eq!(
            store.load().authenticate(&[13; 32], 0).unwrap_err(),
            Rejection::Revoked
        );
    }
}
