//! The admin API's handle on the dispatcher.

use uuid::Uuid;

/// Shared with the admin API (`/test`, `/retry`).
#[derive(Clone, Default)]
pub struct Dispatch {}

impl Dispatch {
    /// Makes one attempt of `delivery` now, on this instance, and returns
    /// when it is recorded (the delivery row then shows its outcome).
    pub async fn attempt_now(&self, delivery: Uuid) -> anyhow::Result<()> {
        let _ = delivery;
        unimplemented!("webhook dispatcher: attempt_now")
    }

    /// Wakes the dispatcher (e.g. after a retry was scheduled).
    pub fn wake(&self) {}
}
