//! The key snapshot: an immutable index from key hash (and id) to key
//! record, published through `ArcSwap` so the proxy hot path reads it
//! without locks or I/O.
//!
//! The key listener (see [`crate::service::listener`]) publishes changes
//! and full reloads; a miss lookup (see [`crate::service::miss`]) may add one record
//! it found. Publishes are serialised, so none is lost to another's
//! read-modify-write.
//! A change builds a new snapshot from the current one and swaps it in;
//! readers holding the old one finish with it undisturbed.
//!
//! Layout, for the budgets of DESIGN §4 (1,000,000 keys: a change applied
//! in < 50 ms, < 300 bytes per key): each index is split into [`SHARDS`]
//! shared shards, so a change copies only the shards it touches (a few
//! thousand entries) instead of the whole index; and each shard is a
//! `hashbrown::HashTable` of bare `Arc<KeyRecord>` pointers, 8 bytes per
//! slot, whose keys are read from the records themselves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use hashbrown::HashTable;
use uuid::Uuid;

use super::format::KeyHash;
use super::scope::Scope;
use crate::config::Limits;

/// Shards per index: a change copies about 1/256 of an index per record.
const SHARDS: usize = 256;
/// Key ids of recent changes remembered (about 16 bytes each), to tell a
/// miss lookup whether its key changed while it queried. A lookup that
/// began before the oldest remembered change is refused publication (and
/// answered from the snapshot), which is always safe.
const CHANGE_LOG_IDS: usize = 16_384;

/// The secret a key had before its last rotation, valid until `expires_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousSecret {
    pub hash: KeyHash,
    /// End of the grace period: from then on the secret answers `expired_api_key`.
    pub expires_at_ms: i64,
    /// When the rotation that replaced it happened (the `Deprecation` date).
    pub rotated_at_ms: i64,
}

/// What the hot path needs to know about one key. Names, descriptions and
/// metadata stay in Postgres.
#[derive(Debug)]
pub struct KeyRecord {
    pub id: Uuid,
    pub hash: KeyHash,
    /// Shared by every key with the same scope list (see
    /// [`super::scope::ScopeSets`]).
    pub scopes: Arc<[Scope]>,
    /// Per-key overrides of `[rate_limits] default`.
    pub limits: Limits,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// Boxed: few keys are in a rotation's grace period at any time.
    pub previous: Option<Box<PreviousSecret>>,
    /// The row's `version`, raised by every change: tells whether the
    /// snapshot holds a given write (0 when not read from a row).
    pub version: i64,
    /// Set on first use since the last `last_used_at` flush.
    used: AtomicBool,
}

impl KeyRecord {
    pub fn new(
        id: Uuid,
        hash: KeyHash,
        scopes: impl Into<Arc<[Scope]>>,
        limits: Limits,
        expires_at_ms: Option<i64>,
        revoked_at_ms: Option<i64>,
        previous: Option<PreviousSecret>,
    ) -> Self {
        Self {
            id,
            hash,
            scopes: scopes.into(),
            limits,
            expires_at_ms,
            revoked_at_ms,
            previous: previous.map(Box::new),
            version: 0,
            used: AtomicBool::new(false),
        }
    }

    /// Marks the key used; true the first time since the flag was cleared,
    /// i.e. when the caller should queue the id for a `last_used_at` flush.
    pub fn mark_used(&self) -> bool {
        // Plain load first: after the first request this is a read of a
        // shared cache line, not a write.
        !self.used.load(Ordering::Relaxed) && !self.used.swap(true, Ordering::Relaxed)
    }

    pub fn clear_used(&self) {
        self.used.store(false, Ordering::Relaxed);
    }
}

/// Why a presented key hash was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Unknown,
    Expired,
    Revoked,
}

/// A key accepted by [`KeySnapshot::authenticate`].
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub record: Arc<KeyRecord>,
    /// Set when the caller used the pre-rotation secret, still in its grace period.
    pub previous_secret: Option<PreviousSecret>,
}

/// Shard and in-shard hash of an entry.
type Slot = (usize, u64);

/// Where a key hash lives: bytes 0..8 hash it within its shard and byte 8
/// picks the shard. Key hashes are keyed BLAKE3 outputs, uniformly spread
/// and not choosable without the pepper, so hashing them again is wasted
/// work.
fn hash_slot(h: &KeyHash) -> Slot {
    let word = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (usize::from(h[8]) % SHARDS, word)
}

/// Where a key id lives. Ids are made by the server, not chosen by callers,
/// so a multiplicative mix is enough; the shard comes from middle bits,
/// which the table itself does not use (it takes the low bits and the top 7).
fn id_slot(id: &Uuid) -> Slot {
    let x = id.as_u128();
    let h = ((x as u64) ^ ((x >> 64) as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 32) as usize % SHARDS, h)
}

fn current_slot(r: &KeyRecord) -> Slot {
    hash_slot(&r.hash)
}

fn previous_slot(r: &KeyRecord) -> Slot {
    // Only records with a previous secret are put in that index.
    r.previous.as_ref().map_or((0, 0), |p| hash_slot(&p.hash))
}

fn record_id_slot(r: &KeyRecord) -> Slot {
    id_slot(&r.id)
}

/// Records indexed by one key, split into copy-on-write shards.
#[derive(Clone)]
struct Index {
    shards: Box<[Arc<HashTable<Arc<KeyRecord>>>]>,
    /// Where a record belongs in this index.
    slot: fn(&KeyRecord) -> Slot,
}

impl Index {
    fn new(slot: fn(&KeyRecord) -> Slot) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect(),
            slot,
        }
    }

    fn find(
        &self,
        (shard, h): Slot,
        mut eq: impl FnMut(&KeyRecord) -> bool,
    ) -> Option<&Arc<KeyRecord>> {
        self.shards[shard].find(h, |r| eq(r))
    }

    /// Adds `r`; the caller has removed any record with the same key.
    fn insert(&mut self, r: Arc<KeyRecord>) {
        let slot = self.slot;
        let (shard, h) = slot(&r);
        // Copies the shard first if an older snapshot still shares it.
        Arc::make_mut(&mut self.shards[shard]).insert_unique(h, r, |e| slot(e).1);
    }

    /// Removes exactly `r` (the same allocation). Callers only remove
    /// records this index holds, so copying a shared shard first is never
    /// wasted.
    fn remove(&mut self, r: &Arc<KeyRecord>) {
        let (shard, h) = (self.slot)(r);
        if let Ok(entry) =
            Arc::make_mut(&mut self.shards[shard]).find_entry(h, |e| Arc::ptr_eq(e, r))
        {
            entry.remove();
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// One immutable generation of all keys.
#[derive(Clone)]
pub struct KeySnapshot {
    /// Current secrets.
    by_hash: Index,
    /// Previous secrets still in a rotation's grace period; usually few.
    by_previous: Index,
    by_id: Index,
}

/// Adds records one by one, so a full load can index rows as they stream
/// in, without first holding every record in a second, temporary list.
impl Extend<KeyRecord> for KeySnapshot {
    fn extend<I: IntoIterator<Item = KeyRecord>>(&mut self, records: I) {
        for r in records {
            self.insert(Arc::new(r));
        }
    }
}

impl Default for KeySnapshot {
    fn default() -> Self {
        Self {
            by_hash: Index::new(current_slot),
            by_previous: Index::new(previous_slot),
            by_id: Index::new(record_id_slot),
        }
    }
}

/// One change to apply to a snapshot.
#[derive(Debug)]
pub enum KeyChange {
    Upsert(KeyRecord),
    Remove(Uuid),
}

impl KeySnapshot {
    pub fn from_records(records: impl IntoIterator<Item = KeyRecord>) -> Self {
        let mut snap = KeySnapshot::default();
        snap.extend(records);
        snap
    }

    fn insert(&mut self, r: Arc<KeyRecord>) {
        self.remove(&r.id);
        if r.previous.is_some() {
            self.by_previous.insert(r.clone());
        }
        self.by_hash.insert(r.clone());
        self.by_id.insert(r);
    }

    fn remove(&mut self, id: &Uuid) {
        let Some(old) = self.get_by_id(id).cloned() else {
            return;
        };
        self.by_id.remove(&old);
        self.by_hash.remove(&old);
        if old.previous.is_some() {
            self.by_previous.remove(&old);
        }
    }

    /// A new snapshot with `changes` applied; `self` is untouched. Costs a
    /// copy of the shards the changes touch, not of the whole snapshot.
    pub fn with_changes(&self, changes: impl IntoIterator<Item = KeyChange>) -> KeySnapshot {
        let mut next = self.clone();
        for change in changes {
            match change {
                KeyChange::Upsert(r) => next.insert(Arc::new(r)),
                KeyChange::Remove(id) => next.remove(&id),
            }
        }
        next
    }

    /// Number of keys (not secrets) in the snapshot.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<&Arc<KeyRecord>> {
        self.by_id.find(id_slot(id), |r| r.id == *id)
    }

    /// Resolves a key hash at time `now_ms`. Revocation wins over expiry so
    /// the caller learns the stronger reason.
    pub fn authenticate(&self, hash: &KeyHash, now_ms: i64) -> Result<Authenticated, Rejection> {
        let slot = hash_slot(hash);
        let (record, previous_secret) = match self.by_hash.find(slot, |r| r.hash == *hash) {
            Some(r) => (r, None),
            None => {
                let r = self
                    .by_previous
                    .find(slot, |r| {
                        r.previous.as_ref().is_some_and(|p| p.hash == *hash)
                    })
                    .ok_or(Rejection::Unknown)?;
                (r, r.previous.as_deref().copied())
            }
        };
        accept(record, previous_secret, now_ms)
    }
}

/// [`KeySnapshot::authenticate`] for one record, e.g. found by a miss
/// lookup: `hash` may be its current or its previous secret.
pub fn authenticate_record(
    record: &Arc<KeyRecord>,
    hash: &KeyHash,
    now_ms: i64,
) -> Result<Authenticated, Rejection> {
    if record.hash == *hash {
        return accept(record, None, now_ms);
    }
    match record.previous.as_deref() {
        Some(p) if p.hash == *hash => accept(record, Some(*p), now_ms),
        _ => Err(Rejection::Unknown),
    }
}

#[inline]
fn accept(
    record: &Arc<KeyRecord>,
    previous_secret: Option<PreviousSecret>,
    now_ms: i64,
) -> Result<Authenticated, Rejection> {
    if record.revoked_at_ms.is_some() {
        return Err(Rejection::Revoked);
    }
    if record.expires_at_ms.is_some_and(|t| t <= now_ms) {
        return Err(Rejection::Expired);
    }
    if previous_secret.is_some_and(|p| p.expires_at_ms <= now_ms) {
        return Err(Rejection::Expired);
    }
    Ok(Authenticated {
        record: record.clone(),
        previous_secret,
    })
}

/// Which keys recent changes touched, by change sequence number.
#[derive(Default)]
struct ChangeLog {
    /// Sequence number of the last full reload.
    last_reload: u64,
    /// (sequence number, ids) of the changes applied since, oldest first,
    /// without gaps.
    recent: VecDeque<(u64, Vec<Uuid>)>,
    /// Ids in `recent`, at most [`CHANGE_LOG_IDS`].
    ids_held: usize,
}

impl ChangeLog {
    /// Whether a change published after `since` (up to `now`) may have
    /// touched `id`.
    fn touched_since(&self, since: u64, now: u64, id: &Uuid) -> bool {
        if since == now {
            return false;
        }
        if self.last_reload > since {
            return true;
        }
        match self.recent.front() {
            Some((first, _)) if *first <= since + 1 => {}
            // The log no longer reaches back that far.
            _ => return true,
        }
        self.recent
            .iter()
            .any(|(seq, ids)| *seq > since && ids.contains(id))
    }

    fn record(&mut self, seq: u64, ids: Vec<Uuid>) {
        if ids.len() > CHANGE_LOG_IDS {
            // Forget everything: lookups begun before now are refused.
            self.recent.clear();
            self.ids_held = 0;
            return;
        }
        while self.ids_held + ids.len() > CHANGE_LOG_IDS {
            match self.recent.pop_front() {
                Some((_, old)) => self.ids_held -= old.len(),
                None => break,
            }
        }
        self.ids_held += ids.len();
        self.recent.push_back((seq, ids));
    }

    fn reloaded(&mut self, seq: u64) {
        self.last_reload = seq;
        self.recent.clear();
        self.ids_held = 0;
    }
}

/// Where the key listener's link to Postgres stands, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    /// Not connected yet since the process started.
    Starting = 0,
    /// Listening, loaded, and the heartbeat answers.
    Connected = 1,
    /// The link was just lost; the first reconnect is pending.
    Reconnecting = 2,
    /// Reconnecting keeps failing; the snapshot may be out of date.
    Down = 3,
}

impl ListenerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerState::Starting => "starting",
            ListenerState::Connected => "connected",
            ListenerState::Reconnecting => "reconnecting",
            ListenerState::Down => "down",
        }
    }

    fn from_u8(v: u8) -> ListenerState {
        match v {
            1 => ListenerState::Connected,
            2 => ListenerState::Reconnecting,
            3 => ListenerState::Down,
            _ => ListenerState::Starting,
        }
    }
}

/// The published snapshot plus the state `/health` and `/metrics` report.
#[derive(Default)]
pub struct KeyStore {
    current: ArcSwap<KeySnapshot>,
    /// Held while a new snapshot is built and swapped in: publishes are
    /// serialised. Never held across an await.
    publishing: Mutex<ChangeLog>,
    /// Applied changes and full reloads so far (lookup inserts excluded).
    change_seq: AtomicU64,
    /// Counts every publish; wakes [`KeyStore::wait_for_version`].
    published: tokio::sync::watch::Sender<u64>,
    loaded: AtomicBool,
    listener_state: AtomicU8,
    /// When the snapshot was last known to match Postgres: the start of the
    /// last reload, applied change or heartbeat that found nothing pending.
    /// A monotonic instant, so a wall-clock step cannot fake freshness.
    confirmed_at: Mutex<Option<Instant>>,
    /// Unix ms of the last full reload.
    last_full_reload_ms: AtomicI64,
    /// Unix ms of the last applied change or reload.
    last_change_ms: AtomicI64,
    reloads: AtomicU64,
}

impl KeyStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current snapshot. Cheap; hold the guard only for one request.
    pub fn load(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    /// Publishes a complete reload.
    pub fn replace(&self, snap: KeySnapshot) {
        {
            let mut log = self.lock_publishing();
            let seq = self.change_seq.fetch_add(1, Ordering::AcqRel) + 1;
            log.reloaded(seq);
            self.publish(snap);
        }
        let now = crate::now_ms();
        self.last_full_reload_ms.store(now, Ordering::Relaxed);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.loaded.store(true, Ordering::Release);
    }

    /// Publishes an incremental change.
    pub fn apply(&self, changes: Vec<KeyChange>) {
        let ids = changes
            .iter()
            .map(|c| match c {
                KeyChange::Upsert(r) => r.id,
                KeyChange::Remove(id) => *id,
            })
            .collect();
        let mut log = self.lock_publishing();
        let next = self.current.load().with_changes(changes);
        let seq = self.change_seq.fetch_add(1, Ordering::AcqRel) + 1;
        log.record(seq, ids);
        self.publish(next);
    }

    /// Publishes a record a miss lookup found, unless the snapshot may
    /// already know better: a change touching its key, or a full reload,
    /// was published after `seq` (the [`KeyStore::change_seq`] taken before
    /// the query), or the snapshot holds the same or a newer version. A
    /// lookup thus never brings back a key a newer change revoked, changed
    /// or removed. True when published.
    pub fn insert_looked_up(&self, record: Arc<KeyRecord>, seq: u64) -> bool {
        let log = self.lock_publishing();
        let now = self.change_seq.load(Ordering::Acquire);
        if log.touched_since(seq, now, &record.id) {
            return false;
        }
        let current = self.current.load_full();
        if current
            .get_by_id(&record.id)
            .is_some_and(|r| r.version >= record.version)
        {
            return false;
        }
        let mut next = (*current).clone();
        next.insert(record);
        self.publish(next);
        drop(log);
        true
    }

    /// Applied changes and full reloads so far. Lookup inserts do not
    /// count: they add what the database already said.
    pub fn change_seq(&self) -> u64 {
        self.change_seq.load(Ordering::Acquire)
    }

    /// Returns once the snapshot holds key `id` at `version` or later.
    /// Woken by publishes, not by polling; the caller bounds the wait.
    pub async fn wait_for_version(&self, id: Uuid, version: i64) {
        // Subscribe before checking, so a publish in between still wakes us.
        let mut published = self.published.subscribe();
        loop {
            let holds = self
                .current
                .load()
                .get_by_id(&id)
                .is_some_and(|r| r.version >= version);
            if holds {
                return;
            }
            if published.changed().await.is_err() {
                // The sender lives in `self`: cannot happen while borrowed.
                return std::future::pending().await;
            }
        }
    }

    fn lock_publishing(&self) -> std::sync::MutexGuard<'_, ChangeLog> {
        // Every step under this lock leaves the log consistent.
        self.publishing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps `snap` in; callers hold `publishing`.
    fn publish(&self, snap: KeySnapshot) {
        metrics::gauge!("gateway_key_snapshot_keys").set(snap.len() as f64);
        self.current.store(Arc::new(snap));
        self.last_change_ms
            .store(crate::now_ms(), Ordering::Relaxed);
        self.published.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// True once the first full load has completed; stays true afterwards,
    /// also while Postgres is unreachable and the snapshot serves from cache.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_listener_state(&self, state: ListenerState) {
        self.listener_state.store(state as u8, Ordering::Relaxed);
    }

    pub fn listener_state(&self) -> ListenerState {
        ListenerState::from_u8(self.listener_state.load(Ordering::Relaxed))
    }

    pub fn listener_connected(&self) -> bool {
        self.listener_state() == ListenerState::Connected
    }

    /// Records that the snapshot matched Postgres as of `at`; an older
    /// instant than the one held is ignored.
    pub fn confirm_current(&self, at: Instant) {
        // Never held across an await; a poisoned lock still holds a valid instant.
        let mut held = self.confirmed_at.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|t| t < at) {
            *held = Some(at);
        }
    }

    /// Seconds from the last confirmation to `now`; `None` before the first.
    pub fn seconds_since_confirmed(&self, now: Instant) -> Option<f64> {
        let held = *self.confirmed_at.lock().unwrap_or_else(|e| e.into_inner());
        held.map(|t| now.saturating_duration_since(t).as_secs_f64())
    }

    /// Unix ms of the last full reload, if any.
    pub fn last_full_reload_ms(&self) -> Option<i64> {
        Some(self.last_full_reload_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn last_change_ms(&self) -> Option<i64> {
        Some(self.last_change_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn full_reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u128, hash: u8) -> KeyRecord {
        KeyRecord::new(
            Uuid::from_u128(id),
            [hash; 32],
            vec![Scope::parse("read:x").expect("scope")],
            Limits::default(),
            None,
            None,
            None,
        )
    }

    #[test]
    fn authenticate_reports_each_outcome() {
        let mut revoked = rec(2, 2);
        revoked.revoked_at_ms = Some(1);
        let mut expired = rec(3, 3);
        expired.expires_at_ms = Some(1_000);
        let snap = KeySnapshot::from_records([rec(1, 1), revoked, expired]);
        assert!(snap.authenticate(&[1; 32], 5_000).is_ok());
        assert_eq!(
            snap.authenticate(&[9; 32], 5_000).unwrap_err(),
            Rejection::Unknown
        );
        assert_eq!(
            snap.authenticate(&[2; 32], 5_000).unwrap_err(),
            Rejection::Revoked
        );
        assert_eq!(
            snap.authenticate(&[3; 32], 5_000).unwrap_err(),
            Rejection::Expired
        );
        assert!(snap.authenticate(&[3; 32], 999).is_ok());
    }

    #[test]
    fn previous_secret_works_until_its_sunset() {
        let mut r = rec(1, 1);
        r.previous = Some(Box::new(PreviousSecret {
            hash: [7; 32],
            expires_at_ms: 10_000,
            rotated_at_ms: 5_000,
        }));
        let snap = KeySnapshot::from_records([r]);
        let ok = snap.authenticate(&[7; 32], 9_999).expect("grace");
        assert_eq!(ok.previous_secret.map(|p| p.expires_at_ms), Some(10_000));
        assert_eq!(
            snap.authenticate(&[7; 32], 10_000).unwrap_err(),
            Rejection::Expired
        );
        assert!(snap.authenticate(&[1; 32], 10_000).is_ok());
    }

    #[test]
    fn changes_replace_all_secrets_of_a_key_and_leave_the_old_snapshot_alone() {
        let mut rotated = rec(1, 2);
        rotated.previous = Some(Box::new(PreviousSecret {
            hash: [1; 32],
            expires_at_ms: i64::MAX,
            rotated_at_ms: 0,
        }));
        let old = KeySnapshot::from_records([rec(1, 1), rec(5, 5)]);
        let mid = old.with_changes([KeyChange::Upsert(rotated)]);
        assert!(mid.authenticate(&[1; 32], 0).is_ok());
        assert!(mid.authenticate(&[2; 32], 0).is_ok());
        let new = mid.with_changes([
            KeyChange::Upsert(rec(1, 3)),
            KeyChange::Remove(Uuid::from_u128(5)),
        ]);
        assert_eq!(
            new.authenticate(&[1; 32], 0).unwrap_err(),
            Rejection::Unknown
        );
        assert_eq!(
            new.authenticate(&[2; 32], 0).unwrap_err(),
            Rejection::Unknown
        );
        assert!(new.authenticate(&[3; 32], 0).is_ok());
        assert_eq!(
            new.authenticate(&[5; 32], 0).unwrap_err(),
            Rejection::Unknown
        );
        assert_eq!(new.len(), 1);
        // The earlier generation still answers as it did.
        assert!(old.authenticate(&[1; 32], 0).is_ok());
        assert!(old.authenticate(&[5; 32], 0).is_ok());
    }

    /// Random upserts, rotations and removals on a sharded snapshot agree
    /// with a plain map of secret → id, generation after generation, and
    /// earlier generations keep answering as they did.
    #[test]
    fn sharded_snapshot_agrees_with_a_plain_map() {
        use std::collections::HashMap;

        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut random_hash = move || {
            let mut h = [0u8; 32];
            rng.fill(&mut h);
            h
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        // id -> (current, previous) secrets.
        let mut model: HashMap<u128, (KeyHash, Option<KeyHash>)> = HashMap::new();
        let mut snap = KeySnapshot::default();
        let mut kept = Vec::new();
        for round in 0..40 {
            let mut changes = Vec::new();
            for _ in 0..250 {
                let id = rng.gen_range(1..3_000u128);
                match rng.gen_range(0..4) {
                    0 => {
                        model.remove(&id);
                        changes.push(KeyChange::Remove(Uuid::from_u128(id)));
                    }
                    1 if model.contains_key(&id) => {
                        let old = model[&id].0;
                        let new = random_hash();
                        model.insert(id, (new, Some(old)));
                        let mut r = rec(id, 0);
                        r.hash = new;
                        r.previous = Some(Box::new(PreviousSecret {
                            hash: old,
                            expires_at_ms: i64::MAX,
                            rotated_at_ms: 0,
                        }));
                        changes.push(KeyChange::Upsert(r));
                    }
                    _ => {
                        let new = random_hash();
                        model.insert(id, (new, None));
                        let mut r = rec(id, 0);
                        r.hash = new;
                        changes.push(KeyChange::Upsert(r));
                    }
                }
            }
            // The same id twice in one batch must end as the model does.
            let deduped: HashMap<Uuid, KeyChange> = changes
                .into_iter()
                .map(|c| match &c {
                    KeyChange::Upsert(r) => (r.id, c),
                    KeyChange::Remove(id) => (*id, c),
                })
                .collect();
            snap = snap.with_changes(deduped.into_values());
            assert_eq!(snap.len(), model.len(), "round {round}");
            for (id, (current, previous)) in &model {
                let id = Uuid::from_u128(*id);
                assert_eq!(snap.get_by_id(&id).map(|r| r.hash), Some(*current));
                let ok = snap.authenticate(current, 0).expect("current secret");
                assert_eq!((ok.record.id, ok.previous_secret), (id, None));
                if let Some(p) = previous {
                    let ok = snap.authenticate(p, 0).expect("previous secret");
                    assert_eq!(ok.record.id, id);
                    assert!(ok.previous_secret.is_some());
                }
            }
            if round % 10 == 0 {
                kept.push((snap.clone(), model.clone()));
            }
        }
        for (old, model) in kept {
            assert_eq!(old.len(), model.len());
            for (current, _) in model.values() {
                assert!(old.authenticate(current, 0).is_ok());
            }
        }
    }

    #[test]
    fn a_lookup_older_than_the_change_log_is_refused_publication() {
        let store = KeyStore::new();
        store.replace(KeySnapshot::default());
        let since = store.change_seq();
        // Changes to other keys, enough to push `since` out of the log.
        for batch in 0..=(CHANGE_LOG_IDS / 1024) as u128 {
            let other = |j: u128| KeyChange::Remove(Uuid::from_u128(1_000_000 + batch * 1024 + j));
            store.apply((0..1024).map(other).collect());
        }
        assert!(!store.insert_looked_up(Arc::new(rec(1, 1)), since));
        let since = store.change_seq();
        store.apply(vec![KeyChange::Remove(Uuid::from_u128(2))]);
        assert!(store.insert_looked_up(Arc::new(rec(1, 1)), since));
        assert!(store.load().authenticate(&[1; 32], 0).is_ok());
    }

    #[tokio::test]
    async fn a_waiter_wakes_only_once_its_version_is_published() {
        let store = KeyStore::new();
        store.replace(KeySnapshot::default());
        let id = Uuid::from_u128(1);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait_for_version(id, 2).await }
        });
        let at = |version| {
            let mut r = rec(1, 1);
            r.version = version;
            KeyChange::Upsert(r)
        };
        for change in [at(1), KeyChange::Remove(Uuid::from_u128(9))] {
            store.apply(vec![change]);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(!waiter.is_finished(), "version 2 is not published yet");
        }
        store.apply(vec![at(2)]);
        waiter.await.expect("waiter");
        // Already held: returns at once.
        store.wait_for_version(id, 1).await;
    }

    #[test]
    fn mark_used_fires_once_until_cleared() {
        let r = rec(1, 1);
        assert!(r.mark_used());
        assert!(!r.mark_used());
        r.clear_used();
        assert!(r.mark_used());
    }
}
