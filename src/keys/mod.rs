//! API keys: format and hashing, scopes, the in-memory snapshot, the
//! listener that keeps it current, the bounded lookup of keys missing from
//! it, the batched `last_used_at` flush, and the audited lifecycle
//! operations (create, update, revoke, rotate).

pub mod format;
pub mod last_used;
pub mod lifecycle;
pub mod listener;
pub mod miss;
pub mod scope;
pub mod snapshot;
