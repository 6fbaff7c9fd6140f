//! The key snapshot: an immutable map from key hash to key record, published
//! through `ArcSwap` so the proxy hot path reads it without locks or I/O.
//!
//! Only the key listener (see [`super::listener`]) publishes new snapshots.
//! A change builds a new map from the current one and swaps it in; readers
//! holding the old one finish with it undisturbed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use uuid::Uuid;

use super::format::KeyHash;
use super::scope::Scope;
use crate::config::Limits;

/// Hashes a [`KeyHash`] by taking its first 8 bytes. The map keys are
/// already keyed BLAKE3 outputs, uniformly spread and not choosable by an
/// attacker without the pepper, so hashing them again is wasted work.
#[derive(Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Mix rather than overwrite so any byte sequence still hashes
        // sensibly; for 32-byte key hashes this is just their first word.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
            if bytes.len() >= 8 {
                break;
            }
        }
    }
    fn write_usize(&mut self, _: usize) {
        // Length prefixes of fixed-size arrays carry no information.
    }
}

type HashIndex = HashMap<KeyHash, Arc<KeyRecord>, BuildHasherDefault<PrehashedHasher>>;

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
    pub scopes: Box<[Scope]>,
    /// Per-key overrides of `[rate_limits] default`.
    pub limits: Limits,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub previous: Option<PreviousSecret>,
    /// Set on first use since the last `last_used_at` flush.
    used: AtomicBool,
}

impl KeyRecord {
    pub fn new(
        id: Uuid,
        hash: KeyHash,
        scopes: Vec<Scope>,
        limits: Limits,
        expires_at_ms: Option<i64>,
        revoked_at_ms: Option<i64>,
        previous: Option<PreviousSecret>,
    ) -> Self {
        Self {
            id,
            hash,
            scopes: scopes.into_boxed_slice(),
            limits,
            expires_at_ms,
            revoked_at_ms,
            previous,
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

/// One immutable generation of all keys.
#[derive(Default)]
pub struct KeySnapshot {
    by_hash: HashIndex,
    by_id: HashMap<Uuid, Arc<KeyRecord>>,
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
        for r in records {
            snap.insert(Arc::new(r));
        }
        snap
    }

    fn insert(&mut self, r: Arc<KeyRecord>) {
        if let Some(old) = self.by_id.remove(&r.id) {
            self.remove_hashes(&old);
        }
        if let Some(prev) = &r.previous {
            self.by_hash.insert(prev.hash, r.clone());
        }
        self.by_hash.insert(r.hash, r.clone());
        self.by_id.insert(r.id, r);
    }

    fn remove_hashes(&mut self, old: &KeyRecord) {
        self.by_hash.remove(&old.hash);
        if let Some(prev) = &old.previous {
            self.by_hash.remove(&prev.hash);
        }
    }

    /// A new snapshot with `changes` applied; `self` is untouched.
    pub fn with_changes(&self, changes: impl IntoIterator<Item = KeyChange>) -> KeySnapshot {
        let mut next = KeySnapshot {
            by_hash: self.by_hash.clone(),
            by_id: self.by_id.clone(),
        };
        for change in changes {
            match change {
                KeyChange::Upsert(r) => next.insert(Arc::new(r)),
                KeyChange::Remove(id) => {
                    if let Some(old) = next.by_id.remove(&id) {
                        next.remove_hashes(&old);
                    }
                }
            }
        }
        next
    }

    /// Number of keys (not secrets) in the snapshot.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<&Arc<KeyRecord>> {
        self.by_id.get(id)
    }

    /// Resolves a key hash at time `now_ms`. Revocation wins over expiry so
    /// the caller learns the stronger reason.
    pub fn authenticate(&self, hash: &KeyHash, now_ms: i64) -> Result<Authenticated, Rejection> {
        let record = self.by_hash.get(hash).ok_or(Rejection::Unknown)?;
        if record.revoked_at_ms.is_some() {
            return Err(Rejection::Revoked);
        }
        if record.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return Err(Rejection::Expired);
        }
        let mut previous_secret = None;
        if record.hash != *hash {
            let prev = record.previous.ok_or(Rejection::Unknown)?;
            if prev.expires_at_ms <= now_ms {
                return Err(Rejection::Expired);
            }
            previous_secret = Some(prev);
        }
        Ok(Authenticated {
            record: record.clone(),
            previous_secret,
        })
    }
}

/// The published snapshot plus the state `/health` and `/metrics` report.
#[derive(Default)]
pub struct KeyStore {
    current: ArcSwap<KeySnapshot>,
    loaded: AtomicBool,
    listener_connected: AtomicBool,
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
        self.publish(snap);
        let now = crate::now_ms();
        self.last_full_reload_ms.store(now, Ordering::Relaxed);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.loaded.store(true, Ordering::Release);
    }

    /// Publishes an incremental change.
    pub fn apply(&self, changes: Vec<KeyChange>) {
        let next = self.current.load().with_changes(changes);
        self.publish(next);
    }

    fn publish(&self, snap: KeySnapshot) {
        metrics::gauge!("gateway_key_snapshot_keys").set(snap.len() as f64);
        self.current.store(Arc::new(snap));
        self.last_change_ms
            .store(crate::now_ms(), Ordering::Relaxed);
    }

    /// True once the first full load has completed; stays true afterwards,
    /// also while Postgres is unreachable and the snapshot serves from cache.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_listener_connected(&self, up: bool) {
        self.listener_connected.store(up, Ordering::Relaxed);
    }

    pub fn listener_connected(&self) -> bool {
        self.listener_connected.load(Ordering::Relaxed)
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
        r.previous = Some(PreviousSecret {
            hash: [7; 32],
            expires_at_ms: 10_000,
            rotated_at_ms: 5_000,
        });
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
        rotated.previous = Some(PreviousSecret {
            hash: [1; 32],
            expires_at_ms: i64::MAX,
            rotated_at_ms: 0,
        });
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

    #[test]
    fn mark_used_fires_once_until_cleared() {
        let r = rec(1, 1);
        assert!(r.mark_used());
        assert!(!r.mark_used());
        r.clear_used();
        assert!(r.mark_used());
    }
}
