//! API keys, the pure parts: format and hashing, scopes, and the in-memory
//! snapshot the hot path reads. No I/O here: the listener that keeps the
//! snapshot current, the bounded lookup of keys missing from it, the batched
//! `last_used_at` flush and the audited lifecycle operations live in
//! [`crate::service`], over [`crate::store`].

pub mod format;
pub mod scope;
pub mod snapshot;
