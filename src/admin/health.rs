//! `/health`, `/health/live`, `/health/ready` and `/metrics`.

use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use serde_json::json;

use super::{json, respond, AdminState};

/// Bound on the database probe, so `/health` answers even when Postgres hangs.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on the Redis probe.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// 200 while the process runs.
pub fn live() -> Response<Vec<u8>> {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

/// 200 once the key snapshot has loaded and every JWT issuer has a key set;
/// stays 200 while serving from cache.
pub fn ready(s: &AdminState) -> Response<Vec<u8>> {
    if !s.keys.is_loaded() {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": "key snapshot not loaded yet"}),
        )
    } else if !s.jwt.is_ready() {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": "JWT issuer keys not loaded yet"}),
        )
    } else {
        json(StatusCode::OK, &json!({"status": "ready"}))
    }
}

/// Each JWT issuer's key set. A stale set (its JWKS unreachable for twice
/// its max-age) degrades `/health` but keeps working; an issuer with no set
/// yet makes it 503, like an unloaded key snapshot. Returns the check, then
/// whether every issuer has keys, then whether any set is stale (a failed
/// refresh alone shows in `last_error` only: the set is still fresh).
fn jwt_check(s: &AdminState) -> (serde_json::Value, bool, bool) {
    let mut issuers = serde_json::Map::new();
    let (mut loaded, mut degraded) = (true, false);
    for st in s.jwt.status() {
        let status = match (st.keys, st.stale) {
            (None, _) => "loading",
            (Some(_), true) => "stale",
            (Some(_), false) => "up",
        };
        loaded &= st.keys.is_some();
        degraded |= st.stale;
        issuers.insert(
            st.name.to_string(),
            json!({
                "status": status,
                "source": st.source,
                "keys": st.keys,
                "age_seconds": st.age_seconds,
                "max_age_seconds": st.max_age_seconds,
                "last_error": st.last_error,
                "last_error_seconds_ago": st.last_error_seconds_ago,
            }),
        );
    }
    let status = match (s.jwt.is_enabled(), loaded, degraded) {
        (false, _, _) => "not_configured",
        (true, false, _) => "loading",
        (true, true, true) => "degraded",
        (true, true, false) => "up",
    };
    (
        json!({"status": status, "issuers": issuers}),
        loaded,
        degraded,
    )
}

/// Probes Postgres. A failure is a stable reason code for the response;
/// the driver's text (host, database and user names, server messages) goes
/// to the log only, since `/health` answers anyone.
async fn probe_database(s: &AdminState) -> Result<Duration, &'static str> {
    let started = Instant::now();
    let probe = async {
        let client = s.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "health: database probe failed: no connection");
            "unreachable"
        })?;
        client.simple_query("SELECT 1").await.map_err(|e| {
            tracing::warn!(error = %e, "health: database probe failed: query");
            "query_failed"
        })?;
        Ok::<_, &'static str>(())
    };
    match tokio::time::timeout(DB_PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => {
            tracing::warn!(timeout = ?DB_PROBE_TIMEOUT, "health: database probe failed: no answer");
            Err("timeout")
        }
    }
}

fn age_seconds(unix_ms: Option<i64>) -> Option<f64> {
    unix_ms.map(|t| (crate::now_ms() - t).max(0) as f64 / 1000.0)
}

/// The webhook backlog: events not yet fanned out and the age of the
/// oldest due delivery. Informational only: webhooks are not a dependency
/// of the proxy, so this never turns `/health` into a 503.
async fn webhook_check(s: &AdminState) -> serde_json::Value {
    let probe = async {
        let client = s.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "health: webhook backlog: no connection");
            "unreachable"
        })?;
        crate::store::webhooks::backlog(&**client)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e.describe(), "health: webhook backlog query failed");
                "query_failed"
            })
    };
    let dispatcher = if s.webhooks.config.enabled {
        "running"
    } else {
        "disabled"
    };
    match tokio::time::timeout(DB_PROBE_TIMEOUT, probe).await {
        Ok(Ok(b)) => json!({
            "status": "up",
            "required": false,
            "dispatcher": dispatcher,
            "outbox_backlog": b.outbox,
            "pending_deliveries": b.pending,
            "due_deliveries": b.due,
            "oldest_due_seconds": b.oldest_due_seconds,
        }),
        Ok(Err(reason)) => {
            json!({"status": "unknown", "required": false, "dispatcher": dispatcher, "reason": reason})
        }
        Err(_) => {
            json!({"status": "unknown", "required": false, "dispatcher": dispatcher, "reason": "timeout"})
        }
    }
}

/// Per-dependency detail; 503 when a required dependency is down.
pub async fn health(s: &AdminState) -> Response<Vec<u8>> {
    // Side by side, so a hung database costs one probe timeout, not two.
    let (db, webhooks) = tokio::join!(probe_database(s), webhook_check(s));
    let db_up = db.is_ok();
    let database = match db {
        Ok(latency) => json!({"status": "up", "latency_ms": latency.as_secs_f64() * 1000.0}),
        Err(reason) => json!({"status": "down", "reason": reason}),
    };
    let snap = s.keys.load();
    let key_snapshot = json!({
        "status": if s.keys.is_loaded() { "up" } else { "loading" },
        "keys": snap.len(),
        "listener": s.keys.listener_state().as_str(),
        "seconds_since_confirmed": s.keys.seconds_since_confirmed(Instant::now()),
        "seconds_since_full_reload": age_seconds(s.keys.last_full_reload_ms()),
        "full_reloads": s.keys.full_reloads(),
    });
    let limiter = &s.limiter;
    let (redis, redis_down) = match limiter.redis() {
        Some(r) => {
            let probe = r.ping(REDIS_PROBE_TIMEOUT).await;
            let mut check = match &probe {
                Ok(latency) => {
                    json!({"status": "up", "latency_ms": latency.as_secs_f64() * 1000.0})
                }
                Err(e) => {
                    // As for the database: the detail in the log, a code out.
                    tracing::warn!(error = %e, "health: redis probe failed");
                    json!({"status": "down", "reason": e.kind()})
                }
            };
            check["required"] = json!(limiter.fails_closed());
            check["on_backend_error"] = json!(limiter.on_backend_error().name());
            (check, probe.is_err())
        }
        None if s.redis_configured => (
            json!({"status": "not_used", "detail": "configured, but rate_limits.backend is \"local\""}),
            false,
        ),
        None => (json!({"status": "not_configured"}), false),
    };
    let (jwt, jwt_loaded, jwt_degraded) = jwt_check(s);
    // Redis is required only when its failure refuses requests.
    let healthy =
        db_up && s.keys.is_loaded() && jwt_loaded && !(redis_down && limiter.fails_closed());
    // A lost listener degrades but does not fail: the proxy serves the
    // cached snapshot, which only goes stale. Likewise cached JWKS.
    let listening = s.keys.listener_connected();
    let body = json!({
        "status": if healthy && !redis_down && listening && !jwt_degraded { "ok" } else { "degraded" },
        "uptime_seconds": s.started.elapsed().as_secs(),
        "checks": {
            "database": database,
            "key_snapshot": key_snapshot,
            "redis": redis,
            "rate_limiter": {"backend": limiter.backend_name()},
            "webhooks": webhooks,
            "jwt": jwt,
        },
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

/// Sets `gateway_database_up` from a probe of Postgres. Probed on every
/// scrape (one `SELECT 1`, bounded by [`DB_PROBE_TIMEOUT`]) because nothing
/// else touches the database on a fixed schedule on every instance: the
/// `GatewayDatabaseDown` alert needs a signal that is fresh whenever
/// Prometheus looks.
async fn export_database_up(s: &AdminState) {
    let up = probe_database(s).await.is_ok();
    metrics::gauge!("gateway_database_up").set(if up { 1.0 } else { 0.0 });
}

/// Prometheus text exposition.
pub async fn metrics(s: &AdminState) -> Response<Vec<u8>> {
    export_database_up(s).await;
    // Before the first load an age is "never": exported as the process's
    // uptime, so the series exist from start-up and a staleness alert
    // fires for an instance that cannot load its keys.
    let never = crate::telemetry::uptime_seconds;
    metrics::gauge!("gateway_key_snapshot_seconds_since_reload")
        .set(age_seconds(s.keys.last_full_reload_ms()).unwrap_or_else(never));
    metrics::gauge!("gateway_key_snapshot_seconds_since_change")
        .set(age_seconds(s.keys.last_change_ms()).unwrap_or_else(never));
    metrics::gauge!("gateway_key_snapshot_seconds_since_confirmed").set(
        s.keys
            .seconds_since_confirmed(Instant::now())
            .unwrap_or_else(never),
    );
    metrics::gauge!("gateway_key_listener_connected").set(if s.keys.listener_connected() {
        1.0
    } else {
        0.0
    });
    s.jwt.update_gauges();
    s.prometheus.run_upkeep();
    let mut text = s.prometheus.render();
    if let Some(r) = &s.reloader {
        text.push_str(&r.info_metric());
    }
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    )
}
