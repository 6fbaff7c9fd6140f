//! Request logs and traffic statistics (DESIGN §3 "Request logs and
//! traffic statistics").
//!
//! The proxy fills one [`record::RequestRecord`] per request in `logging`
//! and hands it to the capture side without waiting. Every record counts in
//! the per-minute [`rollup`]s; sampled-in records (every status ≥ 400, a
//! `sample_rate` share of the rest) go to a bounded queue drained by the
//! writer (binary `COPY` into daily partitions of `request_logs`). Values
//! that may hold secrets pass through [`redact`] before they are stored.
//!
//! - [`capture`]: the proxy's handle (rollups, sampling, bounded queue).
//! - [`record`]: the record, as the proxy fills it.
//! - [`redact`]: query-parameter and body redaction (pure).
//! - [`rollup`]: per-minute aggregation and its upsert.
//! - [`histogram`]: the rollups' log-spaced latency histogram.
//! - [`retention`]: the housekeeping job dropping old partitions and
//!   rollups (also `gateway logs prune`).
//! - [`writer`]: the background service that `COPY`s batches to Postgres.

pub mod capture;
pub mod histogram;
pub mod record;
pub mod redact;
pub mod retention;
pub mod rollup;
pub mod writer;
