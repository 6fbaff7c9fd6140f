//! Logs and metrics set-up. Logs are structured JSON via `tracing` (Pingora's
//! own `log` records are bridged in); metrics go to a Prometheus recorder
//! that the admin listener renders on `/metrics`.

use std::time::Duration;

use async_trait::async_trait;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Latency buckets in seconds: sub-millisecond gateway work up to slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Records per request-log batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0];

/// Installs the global subscriber. `level` is an `EnvFilter` directive.
pub fn init_logging(level: &str, format: LogFormat) {
    let mut filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora's HTTP app (our admin listener) logs the raw request, with its
    // Authorization header, at error level when a request does not parse.
    // Keys must never reach the logs, so that target stays silent.
    if let Ok(d) = "pingora_core::apps::http_app=off".parse() {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the global Prometheus recorder and returns the handle to render it.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("gateway_request_log_batch_size".into()),
            BATCH_SIZE_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into buckets every few seconds. The
/// recorder queues every sample until then; without upkeep that queue is
/// drained only by a `/metrics` scrape, so an instance nobody scrapes would
/// grow by every request's samples, and pushes slow down as it grows.
pub struct MetricsUpkeep(pub PrometheusHandle);

#[async_trait]
impl BackgroundService for MetricsUpkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.run_upkeep(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "gateway_requests_total",
        "Proxied requests by route, method and status."
    );
    describe_histogram!(
        "gateway_request_duration_seconds",
        Unit::Seconds,
        "Time from request start to end of response, by route."
    );
    describe_histogram!(
        "gateway_upstream_duration_seconds",
        Unit::Seconds,
        "Time from choosing the upstream to its response header, by route."
    );
    describe_counter!(
        "gateway_auth_failures_total",
        "Rejected credentials by reason."
    );
    describe_counter!(
        "gateway_admin_auth_failures_total",
        "Refused admin API calls by reason."
    );
    describe_counter!(
        "gateway_audit_dropped_total",
        "Refused admin calls whose audit was dropped, by reason (queue_full, backlog, write_failed)."
    );
    describe_counter!(
        "gateway_audit_denials_recorded_total",
        "Refused admin calls written to the audit log (folded entries count each call)."
    );
    describe_gauge!(
        "gateway_key_snapshot_keys",
        "Keys in the in-memory snapshot."
    );
    describe_gauge!(
        "gateway_key_snapshot_seconds_since_reload",
        Unit::Seconds,
        "Seconds since the last full snapshot reload."
    );
    describe_gauge!(
        "gateway_key_snapshot_seconds_since_change",
        Unit::Seconds,
        "Seconds since the snapshot last changed."
    );
    describe_gauge!(
        "gateway_key_snapshot_seconds_since_confirmed",
        Unit::Seconds,
        "Seconds since the snapshot was last confirmed current (heartbeat, change or reload)."
    );
    describe_gauge!(
        "gateway_key_listener_connected",
        "1 while the key listener holds its Postgres connection and its heartbeat answers."
    );
    describe_gauge!(
        "gateway_database_up",
        "1 when the probe of Postgres (SELECT 1 within 1 s) made at this scrape answered, else 0."
    );
    describe_counter!(
        "gateway_key_listener_errors_total",
        "Key listener connection losses."
    );
    describe_histogram!(
        "gateway_key_snapshot_load_seconds",
        Unit::Seconds,
        "Duration of full snapshot loads."
    );
    describe_histogram!(
        "gateway_key_snapshot_apply_seconds",
        Unit::Seconds,
        "Duration of incremental snapshot updates."
    );
    describe_counter!(
        "gateway_queue_dropped_total",
        "Items dropped because a background queue was full."
    );
    describe_counter!(
        "gateway_last_used_flushed_total",
        "Keys whose last_used_at was written."
    );
    describe_counter!(
        "gateway_upstream_marked_down_total",
        "Upstream targets marked down after a failed connect."
    );
    describe_counter!(
        "gateway_rate_limited_total",
        "Requests refused with 429, by tier and route."
    );
    describe_counter!(
        "gateway_forwarded_for_unparseable_total",
        "Requests from a trusted proxy whose X-Forwarded-For had an unparseable hop before any untrusted one; the client is counted as that proxy."
    );
    describe_counter!(
        "gateway_rate_limit_backend_errors_total",
        "Failed calls to the Redis rate-limit backend, by kind (timeout, disconnected, error)."
    );
    describe_histogram!(
        "gateway_rate_limit_backend_duration_seconds",
        Unit::Seconds,
        "Duration of calls to the Redis rate-limit backend."
    );
    describe_counter!(
        "gateway_rate_limit_fallback_total",
        "Requests decided by on_backend_error after a backend failure (decision allow or deny)."
    );
    describe_gauge!(
        "gateway_rate_limit_local_counters",
        "Counters held in memory by the local backend and the brute-force guard."
    );
    describe_counter!(
        "gateway_request_logs_written_total",
        "Request-log records written to Postgres."
    );
    describe_counter!(
        "gateway_request_logs_dropped_total",
        "Request-log records dropped, by reason (queue_full: the writer's queue was full; rejected: Postgres refused the batch for a data reason; shutdown: not written before exit)."
    );
    describe_gauge!(
        "gateway_request_log_queue_depth",
        "Request-log records waiting for the writer."
    );
    describe_histogram!(
        "gateway_request_log_batch_size",
        "Records per request-log COPY batch written."
    );
    describe_histogram!(
        "gateway_request_log_batch_seconds",
        Unit::Seconds,
        "Duration of one request-log COPY batch."
    );
    describe_counter!(
        "gateway_webhook_deliveries_total",
        "Webhook delivery attempts by outcome (success, http_status, timeout, connect, unsafe_target, redirect)."
    );
    describe_histogram!(
        "gateway_webhook_delivery_seconds",
        Unit::Seconds,
        "Duration of webhook delivery attempts."
    );
    describe_gauge!(
        "gateway_webhook_oldest_due_seconds",
        Unit::Seconds,
        "Age of the oldest webhook delivery due now on an enabled endpoint (0 when none), as of the dispatcher's last poll."
    );
    describe_gauge!(
        "gateway_webhook_pending",
        "Webhook deliveries pending (due, waiting for a retry, or for a disabled endpoint)."
    );
    describe_counter!(
        "gateway_rate_limit_evictions_total",
        "Live local counters dropped because their class's share of the counter bound was reached (class = ip | caller)."
    );
}
