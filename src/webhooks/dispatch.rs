//! The admin API's handle on webhooks: configuration it needs, the secret
//! box, and the dispatcher.

use uuid::Uuid;

use super::secret::SecretBox;
use crate::config::WebhookConfig;

/// Shared with the admin API (`/test`, `/retry`, secrets, the SSRF guard).
#[derive(Clone)]
pub struct Dispatch {
    pub config: WebhookConfig,
    pub secrets: SecretBox,
}

impl Dispatch {
    pub fn new(config: WebhookConfig, pepper: &str) -> Self {
        Self {
            config,
            secrets: SecretBox::new(pepper),
        }
    }

    /// Makes one attempt of `delivery` now, on this instance, and returns
    /// when it is recorded (the delivery row then shows its outcome).
    pub async fn attempt_now(&self, delivery: Uuid) -> anyhow::Result<()> {
        let _ = delivery;
        unimplemented!("webhook dispatcher: attempt_now")
    }

    /// Wakes the dispatcher (e.g. after a retry was scheduled).
    pub fn wake(&self) {}
}
