//! API keys: format and hashing, scopes, the in-memory snapshot, the
//! listener that keeps it current, and the batched `last_used_at` flush.

pub mod format;
pub mod last_used;
pub mod listener;
pub mod scope;
pub mod snapshot;
