//! The background refresh of `jwks_url` issuers: a first fetch at start
//! (readiness waits for it), then again after each set's `max-age`, with
//! exponential backoff while the IdP is unreachable (the last good set keeps
//! serving meanwhile).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rand::Rng;

use super::{Issuer, Jwt};
use crate::config::KeySource;

/// First retry after a failed fetch; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Runs the refresh loops until shutdown.
pub struct JwksRefresher(pub Arc<Jwt>);

impl JwksRefresher {
    pub fn new(jwt: Arc<Jwt>) -> Self {
        Self(jwt)
    }

    /// The loops, for callers outside a Pingora server (tests).
    pub async fn run(&self, shutdown: ShutdownWatch) {
        let loops = self
            .0
            .issuers
            .iter()
            .filter(|i| matches!(i.cfg.keys, KeySource::JwksUrl(_)))
            .map(|i| refresh_loop(self.0.clone(), i.clone(), shutdown.clone()));
        futures_util::future::join_all(loops).await;
    }
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await
    }
}

async fn refresh_loop(jwt: Arc<Jwt>, iss: Arc<Issuer>, mut shutdown: ShutdownWatch) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = {
            let _guard = iss.fetch_lock.lock().await;
            jwt.loader().load(&iss).await
        };
        let wait = match result {
            Ok(max_age) => {
                backoff = BACKOFF_MIN;
                // Up to 10% early, so instances spread their fetches.
                let jitter = rand::thread_rng().gen_range(0..=max_age.as_millis() as u64 / 10);
                max_age.saturating_sub(Duration::from_millis(jitter))
            }
            Err(_) => {
                let w = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
