//! `[webhooks]`: delivery, retries, the SSRF guard and key-expiry notices
//! (DESIGN §3 "Webhooks"); `[housekeeping]`: how often the one-at-a-time
//! maintenance jobs run.

use std::time::Duration;

use super::validate::positive_ms;
use super::{file, Errors};

/// Default retry schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_RETRY_SCHEDULE_MS: &[u64] = &[
    5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
];
/// Longest single retry step accepted: 7 days.
pub const MAX_RETRY_STEP_MS: u64 = 7 * 24 * 3_600_000;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// When false, no dispatcher runs; events still go to the outbox.
    pub enabled: bool,
    /// Skips the SSRF guard: only for local development and tests.
    pub allow_private_targets: bool,
    /// Bound on one delivery attempt (connect, send, response head, 1 KiB).
    pub timeout: Duration,
    /// Delay before attempt n+2 after attempt n+1 failed; its length is the
    /// number of retries.
    pub retry_schedule: Vec<Duration>,
    /// Failed attempts in a row that disable an endpoint.
    pub disable_after_consecutive_failures: u32,
    /// `api_key.expiring` is sent this long before `expires_at`.
    pub expiring_notice: Duration,
    /// Attempts in flight on this instance, all endpoints together.
    pub max_in_flight: usize,
    /// Attempts in flight on this instance to one endpoint.
    pub max_in_flight_per_endpoint: usize,
    /// Fallback poll for due deliveries when no NOTIFY arrives.
    pub poll_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        build_webhooks(file::Webhooks::default(), &mut Errors::default())
    }
}

fn count(v: Option<u64>, default: u64, max: u64, path: &str, errs: &mut Errors) -> u64 {
    match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(_) => {
            errs.push(path, format!("must be 1 to {max}"));
            default
        }
    }
}

pub(super) fn build_webhooks(w: file::Webhooks, errs: &mut Errors) -> WebhookConfig {
    let retry_schedule = match w.retry_schedule_ms {
        None => DEFAULT_RETRY_SCHEDULE_MS
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
        Some(list) if list.len() > 50 => {
            errs.push("webhooks.retry_schedule_ms", "at most 50 retries");
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, ms)| {
                if (1..=MAX_RETRY_STEP_MS).contains(ms) {
                    Some(Duration::from_millis(*ms))
                } else {
                    errs.push(
                        format!("webhooks.retry_schedule_ms[{i}]"),
                        format!("must be 1 to {MAX_RETRY_STEP_MS} ms"),
                    );
                    None
                }
            })
            .collect(),
    };
    let timeout = positive_ms(w.timeout_ms, 10_000, "webhooks.timeout_ms", errs);
    if timeout > Duration::from_secs(300) {
        errs.push("webhooks.timeout_ms", "must be at most 300000 (5 min)");
    }
    let expiring_notice_days = match w.expiring_notice_days {
        None => 7,
        Some(n @ 0..=365) => n,
        Some(_) => {
            errs.push("webhooks.expiring_notice_days", "must be 0 to 365");
            7
        }
    };
    WebhookConfig {
        enabled: w.enabled.unwrap_or(true),
        allow_private_targets: w.allow_private_targets.unwrap_or(false),
        timeout,
        retry_schedule,
        disable_after_consecutive_failures: count(
            w.disable_after_consecutive_failures,
            50,
            1_000_000,
            "webhooks.disable_after_consecutive_failures",
            errs,
        ) as u32,
        expiring_notice: Duration::from_secs(expiring_notice_days * 86_400),
        max_in_flight: count(w.max_in_flight, 32, 1_024, "webhooks.max_in_flight", errs) as usize,
        max_in_flight_per_endpoint: count(
            w.max_in_flight_per_endpoint,
            4,
            256,
            "webhooks.max_in_flight_per_endpoint",
            errs,
        ) as usize,
        poll_interval: positive_ms(w.poll_interval_ms, 1_000, "webhooks.poll_interval_ms", errs),
    }
}

#[derive(Debug, Clone)]
pub struct HousekeepingConfig {
    /// How often one instance (by advisory lock) runs the jobs: retention,
    /// key-expiry events, purges.
    pub interval: Duration,
}

impl Default for HousekeepingConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
        }
    }
}

pub(super) fn build_housekeeping(h: file::Housekeeping, errs: &mut Errors) -> HousekeepingConfig {
    HousekeepingConfig {
        interval: positive_ms(h.interval_ms, 60_000, "housekeeping.interval_ms", errs),
    }
}
