//! The Redis backend: one `EVALSHA` per request checks and counts every
//! tier atomically, so any number of gateway instances together admit no
//! more than a tier's limit within its window.
//!
//! - **Clock.** The script reads Redis's own `TIME` and nothing else: no
//!   gateway clock takes part in a decision, so instances with skewed
//!   clocks still agree on window boundaries. A counter never moves back
//!   to an older window: if Redis's clock is behind a stored window (a
//!   failover to a replica whose clock lags), the tier is decided as of
//!   the start of the stored window instead of being reset.
//! - **Keys.** One hash per tier (`w` window index, `c` its count, `p` the
//!   previous window's count) with a TTL of two windows. Per-caller keys
//!   share the hash tag `{k:<key id>}`, `{t:<token subject hash>}` or
//!   `{ip:<address>}`, so all tiers of
//!   one caller live in one Redis Cluster slot; a route's global counter is
//!   tagged `{g:<route>}`.
//! - **Failure.** Every call is bounded by `redis.timeout_ms`. While the
//!   connection is down, calls fail at once instead of queueing: the
//!   client reconnects in the background with backoff, and a connection
//!   that stops answering is dropped and redialled.
//! - **Scripts.** `NOSCRIPT` (a restarted or flushed Redis) loads the
//!   script and retries, inside the same time bound.

use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use fred::prelude::*;
use fred::types::scripts::Script;

use super::window::{self, Counts};
use super::{BackendError, Decision, Mode, Subject, Tier};
use crate::config::RedisConfig;
use crate::route::Route;

/// The check-and-count script. `estimate` mirrors [`window::estimate`]
/// operation for operation.
pub const SCRIPT: &str = r#"
-- KEYS[i]: the counter hash of tier i.
-- ARGV[1]: 1 = count if every tier has room, 0 = report only,
--          2 = count whether or not there is room.
-- ARGV[2i], ARGV[2i+1]: limit and window (ms) of tier i.
-- Returns {admitted, now_ms, c1, p1, at1, c2, p2, at2, ...}: counts after
-- this call and the time (ms) each tier was decided at, later than now_ms
-- only when its stored window is ahead of this clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local admitted = 1
local st = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local idx = math.floor(now / win)
  local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
  local w = tonumber(h[1])
  local c = tonumber(h[2]) or 0
  local p = tonumber(h[3]) or 0
  local at = now
  if w and w > idx then
    -- Never back to an older window: decide at the start of the stored one.
    idx = w
    at = w * win
  end
  if w == idx - 1 then
    p = c
    c = 0
  elseif w ~= idx then
    p = 0
    c = 0
  end
  local elapsed = at - idx * win
  local estimate = p * ((win - elapsed) / win) + c
  if estimate + 1 > limit then
    admitted = 0
  end
  st[i] = {idx, c, p, win, at}
end
local count = mode == '2' or (mode == '1' and admitted == 1)
local out = {admitted, now}
for i = 1, #KEYS do
  local s = st[i]
  if count then
    s[2] = s[2] + 1
    redis.call('HSET', KEYS[i], 'w', s[1], 'c', s[2], 'p', s[3])
    -- Relative to the stored window's end, whichever clock is ahead.
    redis.call('PEXPIRE', KEYS[i], 2 * s[4] + (s[5] - now))
  end
  out[#out + 1] = s[2]
  out[#out + 1] = s[3]
  out[#out + 1] = s[5]
end
return out
"#;

/// Reconnect backoff, doubling from the first to the second.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

pub struct RedisStore {
    client: Client,
    script: Script,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// Builds the client; nothing connects until [`RedisStore::keep_connected`].
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<RedisStore> {
        let config = Config::from_url(&cfg.url)
            .map_err(|e| anyhow::anyhow!("redis.url: {}", e.details()))?;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.internal_command_timeout = Duration::from_secs(1);
                // A call that failed was already decided by on_backend_error;
                // replaying it later would count a request twice.
                c.max_command_attempts = 1;
                c.unresponsive.max_timeout = Some(Duration::from_secs(2));
                c.unresponsive.interval = Duration::from_millis(500);
            })
            .with_performance_config(|p| {
                // Backstop for commands whose caller stopped waiting.
                p.default_command_timeout = Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                RECONNECT_MIN.as_millis() as u32,
                RECONNECT_MAX.as_millis() as u32,
                2,
            ));
        Ok(RedisStore {
            client: builder.build()?,
            script: Script::from_lua(SCRIPT),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
        })
    }

    /// Keeps the client connected for as long as the process runs. Once
    /// connected, fred's reconnect policy redials a lost connection; a
    /// connection that could not be made in the first place ends fred's
    /// task, so this loop starts it again, with backoff.
    pub async fn keep_connected(&self) {
        let mut backoff = RECONNECT_MIN;
        loop {
            let ended = self.client.connect().await;
            let why = match ended {
                Ok(Ok(())) => "closed".to_string(),
                Ok(Err(e)) => e.details().to_string(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(error = %why, retry_in_ms = backoff.as_millis() as u64, "Redis connection attempt ended");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Round trip of a `PING`, for `/health`.
    pub async fn ping(&self, limit: Duration) -> Result<Duration, BackendError> {
        if !self.is_connected() {
            return Err(BackendError::Disconnected);
        }
        let started = Instant::now();
        match tokio::time::timeout(limit, self.client.ping::<String>(None)).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(BackendError::Redis(e.details().to_string())),
            Err(_) => Err(BackendError::Timeout(limit)),
        }
    }

    /// The Redis key of `tier`'s counter. Per-route counters are named by
    /// `route`'s name (the route the tiers were built for), so they survive
    /// a reordering of `[[routes]]`.
    pub fn key(&self, tier: &Tier, route: Option<&Route>) -> String {
        let (p, per) = (&self.prefix, tier.period.name());
        let r = route.map_or("?", |r| &*r.name);
        match tier.subject {
            Subject::Key(id) => format!("{p}{{k:{id}}}:{per}"),
            Subject::KeyRoute(id, _) => format!("{p}{{k:{id}}}:route:{r}:{per}"),
            Subject::Ip(ip) => format!("{p}{{ip:{ip}}}:{per}"),
            Subject::IpRoute(ip, _) => format!("{p}{{ip:{ip}}}:route:{r}:{per}"),
            Subject::Global(_) => format!("{p}{{g:{r}}}:{per}"),
            Subject::AuthFailures(ip) => format!("{p}{{ip:{ip}}}:auth:{per}"),
            // The subject's hash, never the `sub` itself: bounded length,
            // and no client-controlled bytes in a Redis key.
            Subject::Token(id) => format!("{p}{{t:{id}}}:{per}"),
            Subject::TokenRoute(id, _) => format!("{p}{{t:{id}}}:route:{r}:{per}"),
        }
    }

    /// Checks `tiers` and counts as `mode` says, in one round trip.
    pub async fn check(
        &self,
        route: Option<&Route>,
        tiers: &[Tier],
        mode: Mode,
    ) -> Result<Decision, BackendError> {
        if tiers.is_empty() {
            return Ok(Decision {
                admitted: true,
                now_ms: crate::now_ms() as u64,
                tiers: ArrayVec::new(),
            });
        }
        if !self.is_connected() {
            return Err(BackendError::Disconnected);
        }
        let keys: Vec<String> = tiers.iter().map(|t| self.key(t, route)).collect();
        let mut args: Vec<i64> = Vec::with_capacity(1 + 2 * tiers.len());
        args.push(match mode {
            Mode::Peek => 0,
            Mode::Count => 1,
            Mode::Record => 2,
        });
        for t in tiers {
            args.push(i64::from(t.limit));
            args.push(t.window_ms() as i64);
        }
        let call = async {
            let sha = self.script.sha1().clone();
            match self
                .client
                .evalsha::<Vec<i64>, _, _, _>(sha.clone(), keys.clone(), args.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    self.client.script_load::<String, _>(SCRIPT).await?;
                    self.client.evalsha(sha, keys, args).await
                }
                result => result,
            }
        };
        let out = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| BackendError::Timeout(self.timeout))?
            .map_err(|e| BackendError::Redis(e.details().to_string()))?;
        decision(tiers, &out)
    }
}

/// Reads the script's reply.
fn decision(tiers: &[Tier], out: &[i64]) -> Result<Decision, BackendError> {
    let malformed =
        || BackendError::Redis(format!("unexpected script reply of {} values", out.len()));
    if out.len() != 2 + 3 * tiers.len() {
        return Err(malformed());
    }
    let now_ms = u64::try_from(out[1]).map_err(|_| malformed())?;
    let mut d = Decision {
        admitted: out[0] == 1,
        now_ms,
        tiers: ArrayVec::new(),
    };
    for (t, tier) in tiers.iter().zip(out[2..].chunks_exact(3)) {
        let c = Counts {
            curr: tier[0].max(0) as u64,
            prev: tier[1].max(0) as u64,
        };
        let at_ms = u64::try_from(tier[2]).map_err(|_| malformed())?;
        d.tiers.push(window::state_at(*t, c, now_ms, at_ms));
    }
    Ok(d)
}
