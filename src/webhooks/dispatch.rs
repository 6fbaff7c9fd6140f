//! The admin API's handle on webhooks: configuration it needs, the secret
//! box, and the dispatcher (one attempt of a claimed delivery, shared by
//! the background dispatcher and `/test`, `/retry`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::client::{Failure, WebhookClient};
use super::retry::{self, Next};
use super::secret::SecretBox;
use super::signing;
use crate::config::WebhookConfig;
use crate::store::webhooks::{self as repo, After, AttemptRecord, Claimed};
use crate::store::DbError;

/// Added to the attempt timeout for a claim's lease: time to record the
/// attempt before another instance may take the delivery over.
pub const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// A claim whose secret cannot be opened is tried again after this long.
const UNSEALABLE_RETRY: Duration = Duration::from_secs(60);

/// Shared with the admin API (`/test`, `/retry`, secrets, the SSRF guard).
#[derive(Clone)]
pub struct Dispatch {
    pub config: WebhookConfig,
    pub secrets: SecretBox,
    shared: Arc<Shared>,
}

struct Shared {
    wake: Notify,
    pool: Option<Pool>,
    /// None when the TLS stack could not be set up (logged at start).
    client: Option<WebhookClient>,
}

impl Dispatch {
    /// A handle without a database: it can seal secrets and check URLs;
    /// attempts fail. See [`Dispatch::with_pool`].
    pub fn new(config: WebhookConfig, pepper: &str) -> Self {
        Self::build(config, pepper, None)
    }

    /// The handle `gateway serve` uses: attempts go through `pool`.
    pub fn with_pool(config: WebhookConfig, pepper: &str, pool: Pool) -> Self {
        Self::build(config, pepper, Some(pool))
    }

    fn build(config: WebhookConfig, pepper: &str, pool: Option<Pool>) -> Self {
        let client = match WebhookClient::new(config.timeout, config.allow_private_targets) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "webhooks: cannot build the HTTP client; no delivery will be attempted");
                None
            }
        };
        Self {
            secrets: SecretBox::new(pepper),
            shared: Arc::new(Shared {
                wake: Notify::new(),
                pool,
                client,
            }),
            config,
        }
    }

    /// The lease a claim takes: the attempt's bound plus time to record it.
    pub fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN
    }

    pub(crate) fn pool(&self) -> Option<&Pool> {
        self.shared.pool.as_ref()
    }

    pub(crate) async fn woken(&self) {
        self.shared.wake.notified().await
    }

    /// Makes one attempt of `delivery` now, on this instance, and returns
    /// when it is recorded (the delivery row then shows its outcome). When
    /// another attempt of it is in progress, waits for that one instead.
    pub async fn attempt_now(&self, delivery: Uuid) -> anyhow::Result<()> {
        let pool = self
            .pool()
            .ok_or_else(|| anyhow::anyhow!("webhooks: no database"))?;
        let deadline = Instant::now() + self.lease();
        loop {
            if Instant::now() >= deadline {
                anyhow::bail!("webhooks: delivery {delivery} is held by another attempt");
            }
            let client = pool.get().await.map_err(DbError::from)?;
            if let Some(claimed) = repo::claim_one(&**client, delivery, self.lease()).await? {
                drop(client);
                self.attempt(claimed).await?;
                return Ok(());
            }
            match repo::leased(&**client, delivery).await? {
                None => anyhow::bail!("webhooks: no delivery {delivery}"),
                Some(false) => continue,
                Some(true) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Wakes the dispatcher (e.g. after a retry was scheduled).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Signs and POSTs one claimed delivery, then records the attempt,
    /// the delivery's next state and the endpoint's counters.
    pub(crate) async fn attempt(&self, claimed: Claimed) -> Result<(), DbError> {
        let pool = self
            .pool()
            .ok_or_else(|| DbError::Other("webhooks: no database".into()))?;
        let secrets: Result<Vec<String>, _> = claimed
            .secrets
            .iter()
            .map(|s| self.secrets.open(s))
            .collect();
        let (Ok(secrets), Some(client)) = (secrets, self.shared.client.as_ref()) else {
            // Nothing was sent; the operator has to fix the pepper (or TLS).
            tracing::error!(webhook_id = %claimed.webhook_id, delivery_id = %claimed.delivery_id,
                "webhooks: cannot open the endpoint's secret (or no HTTP client); delivery postponed");
            let db = pool.get().await?;
            return repo::release(&**db, claimed.delivery_id, UNSEALABLE_RETRY).await;
        };
        let at = Utc::now();
        let timestamp = at.timestamp();
        let signature = match signing::signature_header(
            &secrets,
            &claimed.event_id,
            timestamp,
            claimed.body.as_bytes(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(webhook_id = %claimed.webhook_id, error = %e, "webhooks: delivery postponed");
                let db = pool.get().await?;
                return repo::release(&**db, claimed.delivery_id, UNSEALABLE_RETRY).await;
            }
        };
        let headers = vec![
            ("webhook-id", claimed.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        let outcome = client.post(&claimed.url, headers, claimed.body).await;

        let outcome_label = outcome.failure.map(Failure::as_str).unwrap_or("success");
        metrics::counter!("gateway_webhook_deliveries_total", "outcome" => outcome_label)
            .increment(1);
        metrics::histogram!("gateway_webhook_delivery_seconds")
            .record(outcome.duration.as_secs_f64());

        let attempts = u32::try_from(claimed.attempts)
            .unwrap_or(0)
            .saturating_add(1);
        let after = match outcome.failure {
            None => After::Succeeded,
            Some(_) => {
                let retry_after = match outcome.status {
                    Some(429 | 503) => outcome
                        .retry_after
                        .as_deref()
                        .and_then(|v| retry::parse_retry_after(v, Utc::now())),
                    _ => None,
                };
                match retry::next_attempt(
                    &self.config.retry_schedule,
                    attempts,
                    retry_after,
                    &mut rand::thread_rng(),
                ) {
                    Next::RetryIn(d) => After::RetryIn(d),
                    Next::GiveUp => After::Failed,
                }
            }
        };
        let record = AttemptRecord {
            delivery_id: claimed.delivery_id,
            webhook_id: claimed.webhook_id,
            at,
            response_status: outcome.status,
            response_body: outcome.body,
            error: outcome.failure.map(Failure::as_str),
            duration_ms: outcome.duration.as_secs_f64() * 1000.0,
            after,
            gone: outcome.status == Some(410),
        };
        let mut db = pool.get().await?;
        let state = repo::record_attempt(
            &mut db,
            &record,
            self.config.disable_after_consecutive_failures,
        )
        .await?;
        if let Some(s) = state.filter(|s| s.just_disabled) {
            tracing::warn!(webhook_id = %claimed.webhook_id, reason = ?s.disabled_reason,
                "webhooks: endpoint disabled");
        }
        tracing::debug!(webhook_id = %claimed.webhook_id, delivery_id = %claimed.delivery_id,
            outcome = outcome_label, status = ?outcome.status, "webhook attempt");
        Ok(())
    }
}
