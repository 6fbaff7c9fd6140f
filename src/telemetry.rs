//! Logs and metrics set-up. Logs are structured JSON via `tracing` (Pingora's
//! own `log` records are bridged in); metrics go to a Prometheus recorder
//! that the admin listener renders on `/metrics`.
//!
//! Every metric is in `/metrics` from start-up, at zero: the exporter
//! renders a series only once it was registered, and an alert on the rate
//! of a series that does not exist yet never fires. [`register_at_boot`]
//! is the one list of registrations; each module registers its own
//! metrics, with the label values its call sites use (from one constant
//! list per label), in a `register_metrics` function. A module that adds a
//! metric registers it there and adds its function to the list.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use metrics::Gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};
use crate::route::RouteTable;

/// Latency buckets in seconds: sub-millisecond gateway work up to slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Records per request-log batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0];

/// Requests per Redis rate-limit script call (at most `limits::batch::MAX_BATCH`).
const REDIS_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

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
        .set_buckets_for_metric(
            Matcher::Full("gateway_rate_limit_batch_size".into()),
            REDIS_BATCH_BUCKETS,
        )?
        .install_recorder()?;
    let _ = STARTED.set(Instant::now());
    describe();
    Ok(handle)
}

/// When the metrics were installed, i.e. about when the process started.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Seconds since [`install_metrics`] (0 if it was not called). A snapshot
/// age that is "never" is reported as this, so a staleness alert fires
/// for an instance that never loaded its keys.
pub fn uptime_seconds() -> f64 {
    STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64())
}

/// Registers, at zero, every metric the gateway exports whose label values
/// are known at start: per configured route and upstream, per reason,
/// tier, outcome… (see the module doc). Call after [`install_metrics`].
pub fn register_at_boot(cfg: &Config, routes: &RouteTable) {
    crate::identity::register_metrics();
    crate::admin::register_metrics();
    crate::limits::register_metrics();
    crate::service::listener::register_metrics();
    crate::service::last_used::register_metrics();
    crate::service::miss::register_metrics();
    crate::service::expiry::register_metrics();
    crate::reqlog::capture::register_metrics();
    crate::reqlog::writer::register_metrics();
    crate::reqlog::retention::register_metrics();
    crate::reqlog::rollup::register_metrics();
    crate::webhooks::dispatcher::export_metrics();
    crate::proxy::deprecation::register_metrics(routes);

    // Proxy: per route (and for requests that matched none), through the
    // handles the proxy records into.
    use crate::identity::auth_reason;
    use crate::route::metrics::no_route;
    for reason in auth_reason::ALL {
        metrics::counter!("gateway_auth_failures_total", "reason" => *reason).absolute(0);
    }
    no_route().register();
    register_route_metrics(cfg, routes);
}

/// Registers the per-route and per-upstream series of `routes`: at zero
/// at boot, and for the routes a configuration reload adds. Adds 0 rather
/// than setting 0, so a reload leaves the series of kept routes counting.
pub fn register_route_metrics(cfg: &Config, routes: &RouteTable) {
    for route in routes.iter() {
        route.metrics.register();
        for tier in crate::limits::TIER_NAMES.iter().flatten() {
            metrics::counter!("gateway_rate_limited_total", "tier" => *tier, "route" => route.name.to_string())
                .increment(0);
        }
    }
    for upstream in &cfg.upstreams {
        metrics::counter!("gateway_upstream_marked_down_total", "upstream" => upstream.name.to_string())
            .increment(0);
    }
}

/// How often histogram samples are folded into their buckets, and the DB
/// pools and the process sampled.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The `gateway_db_pool_*` gauges of one connection pool.
struct PoolGauges {
    pool: Pool,
    max_size: Gauge,
    size: Gauge,
    in_use: Gauge,
    waiting: Gauge,
}

impl PoolGauges {
    fn new(name: &'static str, pool: Pool) -> Self {
        Self {
            pool,
            max_size: metrics::gauge!("gateway_db_pool_max_size", "pool" => name),
            size: metrics::gauge!("gateway_db_pool_size", "pool" => name),
            in_use: metrics::gauge!("gateway_db_pool_in_use", "pool" => name),
            waiting: metrics::gauge!("gateway_db_pool_waiting", "pool" => name),
        }
    }

    /// `Pool::status` only reads counters under a short lock: no I/O.
    fn sample(&self) {
        let s = self.pool.status();
        self.max_size.set(s.max_size as f64);
        self.size.set(s.size as f64);
        self.in_use.set(s.size.saturating_sub(s.available) as f64);
        self.waiting.set(s.waiting as f64);
    }
}

/// Every few seconds: folds recorded histogram samples into buckets, and
/// samples the DB pools and the process (CPU, memory, fds).
///
/// The recorder queues every histogram sample until upkeep; without it
/// that queue is drained only by a `/metrics` scrape, so an instance nobody
/// scrapes would grow by every request's samples, and pushes slow down as
/// it grows. Pools and process are sampled here rather than per request
/// or per checkout: nothing on the hot path pays for them.
pub struct MetricsUpkeep {
    handle: PrometheusHandle,
    pools: Vec<PoolGauges>,
    process: metrics_process::Collector,
}

impl MetricsUpkeep {
    /// Takes a first sample at once, so the gauges are in `/metrics` from
    /// start-up, before the service's first tick.
    pub fn new(handle: PrometheusHandle) -> Self {
        let process = metrics_process::Collector::default();
        process.describe();
        let upkeep = Self {
            handle,
            pools: Vec::new(),
            process,
        };
        upkeep.process.collect();
        upkeep
    }

    /// Adds a connection pool, exported as `gateway_db_pool_*{pool=name}`.
    pub fn with_pool(mut self, name: &'static str, pool: Pool) -> Self {
        let gauges = PoolGauges::new(name, pool);
        gauges.sample();
        self.pools.push(gauges);
        self
    }

    fn run(&self) {
        self.handle.run_upkeep();
        for p in &self.pools {
            p.sample();
        }
        self.process.collect();
    }
}

#[async_trait]
impl BackgroundService for MetricsUpkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.run(),
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
        "gateway_deprecated_requests_total",
        "Requests to routes with a deprecation (sunset 410s included, CORS preflights not), by route and caller: key id, token or anonymous."
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
        "Failed calls to the Redis rate-limit backend, by kind (timeout, disconnected, error, queue_full)."
    );
    describe_histogram!(
        "gateway_rate_limit_batch_size",
        "Requests carried by one Redis rate-limit script call (natural batching)."
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
    describe_gauge!(
        "gateway_db_pool_max_size",
        "Connections a Postgres pool may open, by pool (main, key_lookups, webhooks)."
    );
    describe_gauge!(
        "gateway_db_pool_size",
        "Connections a Postgres pool holds open, by pool."
    );
    describe_gauge!(
        "gateway_db_pool_in_use",
        "Connections of a Postgres pool checked out, by pool."
    );
    describe_gauge!(
        "gateway_db_pool_waiting",
        "Callers waiting for a connection of a Postgres pool, by pool."
    );
    describe_counter!(
        "gateway_rate_limit_evictions_total",
        "Live local counters dropped because their class's share of the counter bound was reached (class = ip | caller)."
    );
}
