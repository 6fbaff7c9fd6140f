//! Wiring for `gateway serve`: the Pingora server, its services, and a
//! graceful shutdown bounded by `proxy.shutdown_grace_seconds`.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::{denials, AdminApp, AdminState};
use crate::config::Config;
use crate::identity::Authenticator;
use crate::jwt::{JwksRefresher, Jwt};
use crate::keys::format::KeyHasher;
use crate::keys::snapshot::KeyStore;
use crate::limits::{LimitsService, RateLimiter};
use crate::proxy::{GatewayProxy, Inflight};
use crate::reload::{ConfigSource, Loaded, Reloader, SighupReloads};
use crate::reqlog::capture::RequestLog;
use crate::reqlog::retention::Retention;
use crate::reqlog::rollup::{RollupFlusher, Rollups, FLUSH_INTERVAL};
use crate::reqlog::writer::RequestLogWriter;
use crate::route::{RouteTable, Routes};
use crate::service::expiry::{ExpiryEvents, PurgeExpired};
use crate::service::housekeeping::Housekeeping;
use crate::service::keys::KeyService;
use crate::service::last_used;
use crate::service::listener::KeyListener;
use crate::service::miss::{self, MissLookups};
use crate::tls::Certificates;
use crate::webhooks::dispatch::Dispatch;
use crate::webhooks::dispatcher::Dispatcher;
use crate::{store, telemetry};

/// Fails early, with the address, when a listener cannot bind; Pingora would
/// otherwise fail later with a less helpful message.
fn check_bindable(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("cannot listen on {what} {addr}"))
}

/// Runs the gateway until SIGTERM (graceful) or SIGINT (fast). Never returns.
/// `loaded` was read from `source`, which SIGHUP and the admin API re-read.
pub fn run(source: ConfigSource, loaded: Loaded) -> anyhow::Result<()> {
    let cfg: Config = loaded.config.clone();
    telemetry::init_logging(&cfg.log_level, cfg.log_format);
    let prometheus = telemetry::install_metrics()?;
    check_bindable(cfg.proxy.listen, "proxy.listen")?;
    check_bindable(cfg.admin_listen, "admin.listen")?;
    // The TLS listener's certificates, read before anything starts. Hot
    // reload calls `Certificates::reload` on this same handle: the listener
    // asks it on every handshake, so nothing is rebuilt and no connection
    // drops.
    let certificates: Option<Arc<Certificates>> = match &cfg.proxy.tls {
        Some(t) => {
            check_bindable(t.listen, "proxy.tls_listen")?;
            Some(Certificates::load(t).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        None => None,
    };

    let grace = cfg.proxy.shutdown_grace;
    let conf = ServerConf {
        threads: cfg.proxy.threads,
        work_stealing: true,
        upstream_keepalive_pool_size: cfg.proxy.upstream_keepalive_pool_size,
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let keys = KeyStore::new();
    let pool = store::pool(&cfg.database)?;
    let hasher = KeyHasher::new(cfg.keys.pepper.expose());
    let inflight = Arc::new(Inflight::default());
    let limiter = RateLimiter::new(&cfg)?;
    let routes = Routes::new(RouteTable::from_config(&cfg));
    // `jwks_file` and `hs256_secret` issuers load here; `jwks_url` ones in
    // the refresher, and `/health/ready` waits for them.
    let jwt = Jwt::new(&cfg.jwt);
    if jwt.is_enabled() {
        server.add_service(background_service(
            "jwks refresher",
            JwksRefresher::new(jwt.clone()),
        ));
    }
    // A pool of its own, so misses and admin writes never wait on each other.
    let lookup_pool = store::pool(&crate::config::DatabaseConfig {
        pool_size: miss::LOOKUP_POOL_SIZE,
        ..cfg.database.clone()
    })?;
    let misses = Arc::new(MissLookups::new(
        keys.clone(),
        cfg.keys.miss_lookups_per_second,
        Some(lookup_pool.clone()),
    ));

    let listener = server.add_service(background_service(
        "key listener",
        KeyListener::new(keys.clone(), cfg.database.clone()),
    ));
    let (tracker, flusher) =
        last_used::channel(pool.clone(), keys.clone(), cfg.keys.last_used_flush);
    let drained = flusher.drained.clone();
    server.add_service(background_service("last-used flusher", flusher));
    let limits = server.add_service(background_service(
        "rate limits",
        LimitsService::new(limiter.clone()),
    ));

    // Request logs: every request counts in the rollups; sampled-in
    // records go to the writer's queue (nothing at all when disabled).
    let rollups = Arc::new(Rollups::default());
    let (request_log, request_log_rx) = RequestLog::new(&cfg.request_logs, rollups.clone());
    let mut drained = vec![drained];
    if let Some(rx) = request_log_rx {
        let writer = RequestLogWriter::new(
            rx,
            cfg.database.clone(),
            cfg.request_logs.flush_interval,
            inflight.clone(),
        );
        drained.push(writer.drained.clone());
        server.add_service(background_service("request-log writer", writer));
    }
    // The rollups' flusher stops only once no request is in flight.
    let idle = inflight.clone();
    let rollup_flusher = RollupFlusher::new(
        rollups.clone(),
        pool.clone(),
        FLUSH_INTERVAL,
        Box::new(move || idle.get() == 0),
    );
    drained.push(rollup_flusher.drained.clone());
    server.add_service(background_service("request rollups", rollup_flusher));

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        GatewayProxy::new(
            &cfg,
            routes.clone(),
            keys.clone(),
            hasher.clone(),
            tracker.clone(),
            inflight.clone(),
            limiter.clone(),
        )
        .with_miss_lookups(misses.clone())
        .with_request_log(request_log)
        .with_jwt(jwt.clone()),
        "proxy",
    );
    proxy.add_tcp(&cfg.proxy.listen.to_string());
    // One service for both listeners: the same proxy logic, threads and
    // upstream pool; the proxy tells TLS requests apart by their digest.
    if let (Some(t), Some(certs)) = (&cfg.proxy.tls, &certificates) {
        let settings = crate::tls::listener_settings(certs.clone())
            .map_err(|e| anyhow::anyhow!("TLS listener: {e}"))?;
        proxy.add_tls_with_settings(&t.listen.to_string(), None, settings);
    }
    // No traffic before the first full key load (every key would look
    // unknown) nor before the first try at reaching Redis.
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&listener);
    proxy.add_dependency(&limits);

    // Jobs are added by the features that need them (retention, expiry
    // events, purges).
    let housekeeping = Housekeeping::new(pool.clone(), cfg.housekeeping.interval)
        .with_job(Retention::new(&cfg.request_logs))
        .with_job(ExpiryEvents::new(cfg.webhooks.expiring_notice))
        .with_job(PurgeExpired::new(
            cfg.keys.purge_expired_after_days,
            cfg.keys.pepper.expose(),
        ));
    housekeeping.register_metrics();
    server.add_service(background_service("housekeeping", housekeeping));

    // The admin API's `/test` and `/retry` attempt through the same handle
    // the dispatcher uses, so a wake-up from either reaches it. A pool of
    // its own, so a delivery burst never makes admin calls wait.
    let webhook_pool = store::pool(&crate::config::DatabaseConfig {
        pool_size: crate::webhooks::dispatcher::POOL_SIZE,
        ..cfg.database.clone()
    })?;
    let webhooks = Dispatch::with_pool(
        cfg.webhooks.clone(),
        cfg.keys.pepper.expose(),
        webhook_pool.clone(),
    );
    if cfg.webhooks.enabled {
        server.add_service(background_service(
            "webhook dispatcher",
            Dispatcher::new(webhooks.clone(), cfg.database.clone()),
        ));
    }

    // Every metric at zero from start-up; the pools' and the process's
    // gauges get their first sample now, then every few seconds.
    telemetry::register_at_boot(&cfg, &routes.load());
    server.add_service(background_service(
        "metrics upkeep",
        telemetry::MetricsUpkeep::new(prometheus.clone())
            .with_pool("main", pool.clone())
            .with_pool("key_lookups", lookup_pool.clone())
            .with_pool("webhooks", webhook_pool),
    ));

    // Hot reload: SIGHUP here, `POST /api/v1/config/reload` on the admin
    // listener; both swap the same route table and limiter policy.
    let mut reloader = Reloader::new(source, loaded, routes.clone(), limiter.clone());
    if let Some(certs) = &certificates {
        reloader = reloader.with_certificates(certs.clone());
    }
    let reloader = Arc::new(reloader);
    crate::reload::register_metrics();
    server.add_service(background_service(
        "sighup reloads",
        SighupReloads(reloader.clone()),
    ));

    let (denial_audit, denial_writer) = denials::channel(pool.clone(), KeyService::new(&cfg));
    server.add_service(background_service("denial audit", denial_writer));
    let mut admin_state = AdminState::new(
        keys.clone(),
        pool,
        prometheus,
        cfg.redis.is_some(),
        limiter,
        routes,
        Authenticator::new(keys, hasher, cfg.keys.prefix.clone()).with_miss_lookups(misses),
        KeyService::new(&cfg),
        tracker,
        denial_audit,
        webhooks,
    );
    admin_state.jwt = jwt.clone();
    admin_state.reloader = Some(reloader);
    let state = Arc::new(admin_state);
    let mut admin = Service::new(
        "admin".to_string(),
        HttpServer::new_app(AdminApp::new(state)),
    );
    admin.add_tcp(&cfg.admin_listen.to_string());
    server.add_service(admin);

    spawn_shutdown_watch(&server, grace, inflight, drained);
    tracing::info!(
        proxy = %cfg.proxy.listen,
        proxy_tls = cfg.proxy.tls.as_ref().map(|t| t.listen.to_string()),
        admin = %cfg.admin_listen,
        routes = cfg.routes.len(),
        threads = cfg.proxy.threads,
        "gateway starting"
    );
    server.run_forever();
}

/// Pingora's graceful shutdown always sleeps the whole grace period. This
/// watcher ends the process as soon as the last in-flight request finished
/// and the final flushes (`last_used_at`, request logs, rollups) ran, or
/// when the grace period is up, whichever comes first.
fn spawn_shutdown_watch(
    server: &Server,
    grace: Duration,
    inflight: Arc<Inflight>,
    drained: Vec<Arc<std::sync::atomic::AtomicBool>>,
) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        let deadline = Instant::now() + grace;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            in_flight = inflight.get(),
            "draining"
        );
        // `ended` tells an operator (and the tests) whether the requests
        // drained or the grace period cut them off.
        let mut ended = "grace_expired";
        while Instant::now() < deadline {
            if inflight.get() == 0 && drained.iter().all(|d| d.load(Ordering::Acquire)) {
                ended = "drained";
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(in_flight = inflight.get(), ended, "shutdown complete");
        std::process::exit(0);
    });
}
