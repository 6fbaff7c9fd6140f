//! The service layer: key I/O above the pure `keys` logic and the `store`
//! repositories, below `admin`, `cli`, `proxy` and `server`.
//!
//! - [`keys`]: the key lifecycle the admin API and the CLI share (create,
//!   update, revoke, rotate; who may do what, [`keys::Authority`]), each
//!   operation one transaction with its audit entry.
//! - [`listener`]: the background service that owns the key snapshot,
//!   kept current by `LISTEN`/`NOTIFY` on a dedicated connection.
//! - [`last_used`]: the batched `last_used_at` flush, fed from the hot path
//!   without waiting.
//! - [`housekeeping`]: maintenance jobs (retention, expiry events, purges)
//!   run by one instance at a time under an advisory lock.
//! - [`expiry`]: the housekeeping jobs that send `api_key.expiring` /
//!   `api_key.expired` once per key and purge long-expired keys.
//! - [`miss`]: the bounded Postgres lookup of a well-formed key missing
//!   from the snapshot (budget, single flight, negative cache), used by
//!   [`crate::identity::Authenticator`].
//!
//! `keys` stays free of I/O (format, scopes, the snapshot); everything here
//! talks to Postgres.

pub mod expiry;
pub mod housekeeping;
pub mod keys;
pub mod last_used;
pub mod listener;
pub mod miss;
