//! `[request_logs]`: capture, sampling, redaction and retention of the
//! per-request records (DESIGN §3 "Request logs and traffic statistics").

use std::time::Duration;

use super::validate::positive_ms;
use super::{file, Errors};

/// Query parameters whose values are stored as `REDACTED` by default.
pub const DEFAULT_REDACT_QUERY_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "secret",
    "password",
    "signature",
    "sig",
];
/// Largest `queue_capacity` accepted: 4 Mi records of a few hundred bytes.
pub const MAX_QUEUE_CAPACITY: u64 = 4 << 20;
/// Largest `max_body_bytes` accepted: bodies are kept in the record itself.
pub const MAX_LOGGED_BODY_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct RequestLogConfig {
    pub enabled: bool,
    /// Share (0.0–1.0) of requests with status < 400 whose raw record is
    /// stored; errors are always stored, rollups always count everything.
    pub sample_rate: f64,
    /// Daily raw partitions older than this are dropped.
    pub retention_days: u32,
    /// Per-minute rollups older than this are deleted (≥ `retention_days`).
    pub rollup_retention_days: u32,
    /// Records waiting for the writer; a full queue drops and counts.
    pub queue_capacity: usize,
    /// The writer flushes at least this often.
    pub flush_interval: Duration,
    /// Lower-cased query parameter names whose values become `REDACTED`.
    pub redact_query_params: Vec<String>,
    /// Bytes of request and response body kept on `log_bodies` routes.
    pub max_body_bytes: usize,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        let mut errs = Errors::default();
        build_request_logs(file::RequestLogs::default(), &mut errs)
    }
}

pub(super) fn build_request_logs(r: file::RequestLogs, errs: &mut Errors) -> RequestLogConfig {
    let sample_rate = match r.sample_rate {
        Some(v) if (0.0..=1.0).contains(&v) => v,
        Some(_) => {
            errs.push("request_logs.sample_rate", "must be between 0.0 and 1.0");
            1.0
        }
        None => 1.0,
    };
    let days = |v: Option<u64>, default: u32, path: &str, errs: &mut Errors| match v {
        None => default,
        Some(n @ 1..=3650) => n as u32,
        Some(_) => {
            errs.push(path, "must be 1 to 3650 days");
            default
        }
    };
    let retention_days = days(r.retention_days, 14, "request_logs.retention_days", errs);
    let rollup_retention_days = days(
        r.rollup_retention_days,
        90,
        "request_logs.rollup_retention_days",
        errs,
    );
    if rollup_retention_days < retention_days {
        errs.push(
            "request_logs.rollup_retention_days",
            format!("must be at least retention_days ({retention_days}): stats outlive raw logs"),
        );
    }
    let queue_capacity = match r.queue_capacity {
        None => 65_536,
        Some(n @ 1..=MAX_QUEUE_CAPACITY) => n as usize,
        Some(_) => {
            errs.push(
                "request_logs.queue_capacity",
                format!("must be 1 to {MAX_QUEUE_CAPACITY}"),
            );
            65_536
        }
    };
    let flush_interval = positive_ms(
        r.flush_interval_ms,
        500,
        "request_logs.flush_interval_ms",
        errs,
    );
    let redact_query_params = match r.redact_query_params {
        None => DEFAULT_REDACT_QUERY_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(list) => list
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| {
                if s.is_empty() {
                    errs.push(
                        format!("request_logs.redact_query_params[{i}]"),
                        "must not be empty",
                    );
                    return None;
                }
                Some(s.to_ascii_lowercase())
            })
            .collect(),
    };
    let max_body_bytes = match r.max_body_bytes {
        None => 4_096,
        Some(n @ 1..=MAX_LOGGED_BODY_BYTES) => n as usize,
        Some(_) => {
            errs.push(
                "request_logs.max_body_bytes",
                format!("must be 1 to {MAX_LOGGED_BODY_BYTES}"),
            );
            4_096
        }
    };
    RequestLogConfig {
        enabled: r.enabled.unwrap_or(true),
        sample_rate,
        retention_days,
        rollup_retention_days,
        queue_capacity,
        flush_interval,
        redact_query_params,
        max_body_bytes,
    }
}
