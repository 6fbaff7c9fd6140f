//! Webhooks (DESIGN §3 "Webhooks"): signed deliveries of key events from a
//! transactional outbox.
//!
//! Events are written by `service::keys::record` through
//! [`crate::store::webhooks::enqueue_event`] in the transaction of the
//! change. The dispatcher (a background service on every instance) fans
//! them out to the endpoints subscribed at dispatch time, claims due
//! deliveries with `FOR UPDATE SKIP LOCKED` and a lease, and POSTs them
//! signed (Standard Webhooks) through a client that follows no redirects and
//! connects only to addresses the SSRF guard passed.
//!
//! - [`secret`]: `whsec_` secrets and their encryption at rest.
//! - [`ssrf`]: which URLs and addresses may be targets.
//! - [`dispatch`]: the handle the admin API uses to attempt a delivery now,
//!   and the attempt itself (sign, POST, record).
//! - [`dispatcher`]: the background service (fan-out, claims, concurrency).
//! - [`signing`]: Standard Webhooks signatures.
//! - [`client`]: the HTTP client (rustls, no redirects, guarded resolver).
//! - [`retry`]: the retry schedule with jitter and `Retry-After`.

pub mod client;
pub mod dispatch;
pub mod dispatcher;
pub mod retry;
pub mod secret;
pub mod signing;
pub mod ssrf;
