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
//!   that stops answering is dropped and redialled. In a cluster fred
//!   redials the whole cluster when one node's connection drops, reading
//!   its layout again (`CLUSTER SLOTS`), so a promoted replica is found on
//!   the first redial after the takeover; until then every call fails.
//! - **Scripts.** `NOSCRIPT` (a restarted or flushed Redis) loads the
//!   script and retries, inside the same time bound.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use fred::prelude::*;
use fred::types::scripts::Script;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::batch::{
    call_args, group_by_slot, split_reply, Job, Reply, MAX_BATCH, MAX_QUEUED, MODE_COUNT,
    MODE_PEEK, MODE_RECORD, MODE_REFUND,
};
use super::window::{self, Counts};
use super::{BackendError, Decision, Mode, Subject, Tier, TierState, MAX_TIERS};
use crate::config::RedisConfig;
use crate::route::Route;

/// The check-and-count script, for a batch of requests. `estimate`
/// mirrors [`window::estimate`] operation for operation.
pub const SCRIPT: &str = r#"
-- A batch of requests, checked and counted one after the other: request
-- r sees the counts of requests 1..r-1.
-- KEYS: the counter hash of each tier of each request, request by request.
-- ARGV[1]: the number of requests. Then per request: its mode, its tier
-- count n, and n pairs (limit, window ms).
-- Modes: 1 = count if every tier has room, 0 = report only,
--        2 = count whether or not there is room,
--        3 = refund: take back one count from each tier if it is still in
--            the window it went into (the pair is (window index, window)).
-- Returns {now_ms, then per request: admitted, c1, p1, at1, c2, ...}:
-- counts after the request and the time (ms) each tier was decided at,
-- later than now_ms only when its stored window is ahead of this clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local a = 2
local k = 0
for r = 1, tonumber(ARGV[1]) do
  local mode = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  if mode == '3' then
    for i = 1, n do
      local key = KEYS[k + i]
      local h = redis.call('HMGET', key, 'w', 'c')
      local c = tonumber(h[2]) or 0
      if tonumber(h[1]) == tonumber(ARGV[a + 2 * i - 2]) and c > 0 then
        redis.call('HSET', key, 'c', c - 1)
      end
    end
    out[#out + 1] = 1
    for i = 1, n do
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = now
    end
  else
    local admitted = 1
    local st = {}
    for i = 1, n do
      local limit = tonumber(ARGV[a + 2 * i - 2])
      local win = tonumber(ARGV[a + 2 * i - 1])
      local idx = math.floor(now / win)
      local h = redis.call('HMGET', KEYS[k + i], 'w', 'c', 'p')
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
    out[#out + 1] = admitted
    for i = 1, n do
      local s = st[i]
      if count then
        s[2] = s[2] + 1
        redis.call('HSET', KEYS[k + i], 'w', s[1], 'c', s[2], 'p', s[3])
        -- Relative to the stored window's end, whichever clock is ahead.
        redis.call('PEXPIRE', KEYS[k + i], 2 * s[4] + (s[5] - now))
      end
      out[#out + 1] = s[2]
      out[#out + 1] = s[3]
      out[#out + 1] = s[5]
    end
  end
  a = a + 2 * n
  k = k + n
end
return out
"#;

/// Reconnect backoff, doubling from the first to the second.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

pub struct RedisStore {
    /// `redis.connections` clients; each carries one batch at a time.
    clients: Vec<Client>,
    /// Round-robin over `clients`.
    next: AtomicUsize,
    script: Script,
    prefix: String,
    timeout: Duration,
    cluster: bool,
    queue: mpsc::Sender<Job>,
    /// The queue's receiving end, until the dispatcher takes it.
    waiting: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    /// The same clients and dispatcher again, connected from the proxy's
    /// own runtime by [`RedisStore::serve_from_this_runtime`]; checks go
    /// there once it is connected. `None` inside that copy.
    proxy_side: Option<Arc<RedisStore>>,
    proxy_side_started: AtomicBool,
    /// Whether this copy logs connection errors (the other copy would
    /// repeat every line).
    logs_errors: bool,
}

impl RedisStore {
    /// Builds the clients; nothing connects until [`RedisStore::keep_connected`].
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<RedisStore> {
        let proxy_side = Self::build(cfg, None, false)?;
        Self::build(cfg, Some(Arc::new(proxy_side)), true)
    }

    fn build(
        cfg: &RedisConfig,
        proxy_side: Option<Arc<RedisStore>>,
        logs_errors: bool,
    ) -> anyhow::Result<RedisStore> {
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
                // After a failover, ask the cluster for its new layout
                // rather than waiting for a MOVED.
                c.cluster_cache_update_delay = Duration::from_millis(100);
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
        let clients = (0..cfg.connections.max(1))
            .map(|_| builder.build())
            .collect::<Result<Vec<_>, _>>()?;
        let (queue, waiting) = mpsc::channel(MAX_QUEUED);
        Ok(RedisStore {
            clients,
            next: AtomicUsize::new(0),
            script: Script::from_lua(SCRIPT),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            cluster: cfg.cluster,
            queue,
            waiting: std::sync::Mutex::new(Some(waiting)),
            proxy_side,
            proxy_side_started: AtomicBool::new(false),
            logs_errors,
        })
    }

    /// Connects the proxy-side copy from the runtime this is called on
    /// (once; later calls are one atomic load). Call it from a request.
    ///
    /// The clients [`RedisStore::keep_connected`] connects live on the
    /// background service's runtime, its own thread: a check handed to
    /// them wakes that thread, and its answer wakes the proxy's again,
    /// about 0.75 context switches per request under load (profile.sh).
    /// Connected from the proxy's runtime, the dispatcher and fred's I/O
    /// tasks run beside the requests. Until that copy is connected (and
    /// whenever it is not), checks use the background clients, which
    /// also keep answering `/health`.
    pub fn serve_from_this_runtime(&self) {
        let Some(side) = &self.proxy_side else {
            return;
        };
        if self.proxy_side_started.load(Ordering::Relaxed) {
            return;
        }
        // Outside a runtime there is nothing to connect from (and
        // `tokio::spawn` would panic): the background copy serves.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.proxy_side_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let side = side.clone();
        runtime.spawn(async move { side.keep_connected().await });
    }

    /// Runs the batch dispatcher and keeps every client connected, for as
    /// long as the process runs (call it once; a second call only keeps
    /// connecting).
    pub async fn keep_connected(&self) {
        let waiting = self.waiting.lock().ok().and_then(|mut w| w.take());
        let dispatch = async {
            match waiting {
                Some(rx) => self.dispatch(rx).await,
                None => std::future::pending().await,
            }
        };
        let connect = futures_util::future::join_all(
            self.clients
                .iter()
                .map(|c| keep_client_connected(c, self.logs_errors)),
        );
        tokio::join!(dispatch, connect);
    }

    /// Whether some client of either copy is connected (all of a
    /// cluster's masters known, for a cluster client): whether the
    /// gateway reaches Redis, as `/health` reports it. The copy that
    /// carries the checks may recover from an outage before the idle one.
    pub fn is_connected(&self) -> bool {
        self.connected_here() || self.proxy_side.as_ref().is_some_and(|s| s.connected_here())
    }

    /// Whether some client of this copy is connected.
    fn connected_here(&self) -> bool {
        self.clients.iter().any(|c| c.is_connected())
    }

    fn client(&self) -> &Client {
        let n = self.clients.len();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Skip a client that is reconnecting when another can serve.
        (0..n)
            .map(|d| &self.clients[(i + d) % n])
            .find(|c| c.is_connected())
            .unwrap_or(&self.clients[i])
    }

    /// Round trip of a `PING`, for `/health`.
    pub async fn ping(&self, limit: Duration) -> Result<Duration, BackendError> {
        let copy = match &self.proxy_side {
            _ if self.connected_here() => self,
            Some(side) if side.connected_here() => side,
            _ => return Err(BackendError::Disconnected),
        };
        let started = Instant::now();
        match tokio::time::timeout(limit, copy.client().ping::<String>(None)).await {
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

    /// The hash slot of `key`; 0 outside a cluster, so every job of one
    /// batch goes in one call.
    fn slot(&self, key: &str) -> u16 {
        if self.cluster {
            fred::util::redis_keyslot(key.as_bytes())
        } else {
            0
        }
    }

    /// Checks `tiers` and counts as `mode` says. The check joins the next
    /// batch; it is bounded by `redis.timeout_ms` from here, queueing
    /// included.
    ///
    /// Outside a cluster (or when every tier shares one slot) all tiers go
    /// in one job, decided atomically. In a cluster a route's global tier
    /// lives in its own slot, so its job is separate: both are counted
    /// only if each had room, and a part that counted while the other
    /// refused (or failed) is refunded. Two instances can then briefly
    /// see one request counted in one part only: never more admissions
    /// than a limit, at worst a refusal that a one-slot check would have
    /// admitted.
    pub async fn check(
        &self,
        route: Option<&Route>,
        tiers: &[Tier],
        mode: Mode,
    ) -> Result<Decision, BackendError> {
        match &self.proxy_side {
            Some(side) if side.connected_here() => side.check_here(route, tiers, mode).await,
            _ => self.check_here(route, tiers, mode).await,
        }
    }

    /// [`RedisStore::check`] on this copy's clients.
    async fn check_here(
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
        if !self.connected_here() {
            return Err(BackendError::Disconnected);
        }
        let mode = match mode {
            Mode::Peek => MODE_PEEK,
            Mode::Count => MODE_COUNT,
            Mode::Record => MODE_RECORD,
        };
        // Tier indexes by slot, in tier order.
        let keys: ArrayVec<String, MAX_TIERS> = tiers.iter().map(|t| self.key(t, route)).collect();
        let slots: ArrayVec<u16, MAX_TIERS> = keys.iter().map(|k| self.slot(k)).collect();
        let mut parts: ArrayVec<(u16, ArrayVec<usize, MAX_TIERS>), MAX_TIERS> = ArrayVec::new();
        for (i, slot) in slots.iter().enumerate() {
            match parts.iter_mut().find(|(s, _)| s == slot) {
                Some((_, idx)) => idx.push(i),
                None => parts.push((*slot, std::iter::once(i).collect())),
            }
        }
        let mut waits = ArrayVec::<_, MAX_TIERS>::new();
        for (slot, idx) in &parts {
            let (tx, rx) = oneshot::channel();
            let mut job = Job {
                keys: idx.iter().map(|&i| keys[i].clone()).collect(),
                args: ArrayVec::new(),
                slot: *slot,
                reply: Some(tx),
            };
            job.args.push(mode);
            job.args.push(idx.len() as i64);
            for &i in idx {
                job.args.push(i64::from(tiers[i].limit));
                job.args.push(tiers[i].window_ms() as i64);
            }
            self.submit(job)?;
            waits.push(rx);
        }
        let answers =
            tokio::time::timeout(self.timeout, futures_util::future::join_all(waits)).await;
        let answers: Vec<Reply> = match answers {
            Ok(a) => a
                .into_iter()
                .map(|r| r.unwrap_or(Err(BackendError::Disconnected)))
                .collect(),
            // The jobs not yet sent are dropped unsent; one already sent
            // is counted, and its late answer ignored.
            Err(_) => return Err(BackendError::Timeout(self.timeout)),
        };
        if let [only] = &answers[..] {
            return match only {
                Ok(out) => decision(tiers, out),
                Err(e) => Err(e.clone()),
            };
        }
        self.merge(tiers, &keys, &parts, answers, mode)
    }

    /// One decision from the answers of a request's per-slot parts;
    /// refunds the parts that counted when the request as a whole was
    /// refused or failed.
    fn merge(
        &self,
        tiers: &[Tier],
        keys: &[String],
        parts: &[(u16, ArrayVec<usize, MAX_TIERS>)],
        answers: Vec<Reply>,
        mode: i64,
    ) -> Result<Decision, BackendError> {
        let mut decisions = Vec::with_capacity(parts.len());
        let mut first_err = None;
        for ((slot, idx), answer) in parts.iter().zip(answers) {
            let part: ArrayVec<Tier, MAX_TIERS> = idx.iter().map(|&i| tiers[i]).collect();
            match answer.and_then(|out| decision(&part, &out).map(|d| (d, out))) {
                Ok((d, out)) => decisions.push(Some((d, *slot, out))),
                Err(e) => {
                    first_err.get_or_insert(e);
                    decisions.push(None);
                }
            }
        }
        let admitted = first_err.is_none() && decisions.iter().flatten().all(|(d, ..)| d.admitted);
        if mode == MODE_COUNT && !admitted {
            for ((_, idx), part) in parts.iter().zip(&decisions) {
                if let Some((_, slot, out)) = part.as_ref().filter(|(d, ..)| d.admitted) {
                    self.refund(*slot, idx, keys, tiers, out);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut states: [Option<TierState>; MAX_TIERS] = [None; MAX_TIERS];
        let mut now_ms = 0;
        for ((_, idx), (d, ..)) in parts.iter().zip(decisions.into_iter().flatten()) {
            now_ms = now_ms.max(d.now_ms);
            for (&i, s) in idx.iter().zip(d.tiers) {
                states[i] = Some(s);
            }
        }
        Ok(Decision {
            admitted,
            now_ms,
            tiers: states.into_iter().flatten().collect(),
        })
    }

    /// Takes back the count one request's part put in the tiers `idx`
    /// (`out`: that part's reply), without waiting for the answer.
    fn refund(&self, slot: u16, idx: &[usize], keys: &[String], tiers: &[Tier], out: &[i64]) {
        let mut job = Job {
            keys: idx.iter().map(|&i| keys[i].clone()).collect(),
            args: ArrayVec::new(),
            slot,
            reply: None,
        };
        job.args.push(MODE_REFUND);
        job.args.push(idx.len() as i64);
        for (n, &i) in idx.iter().enumerate() {
            // The window the count went into: the one its tier was decided in.
            let win = tiers[i].window_ms() as i64;
            let at = out.get(2 + 3 * n + 2).copied().unwrap_or(0);
            job.args.push(at / win);
            job.args.push(win);
        }
        if self.submit(job).is_err() {
            tracing::debug!("rate-limit refund dropped: queue full");
        }
    }

    fn submit(&self, job: Job) -> Result<(), BackendError> {
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackendError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => BackendError::Disconnected,
        })
    }

    /// Sends the waiting jobs, one batch per free connection: a batch
    /// forms only while every connection has one in flight, so an idle
    /// gateway sends each check at once.
    async fn dispatch(&self, mut rx: mpsc::Receiver<Job>) {
        let mut in_flight = FuturesUnordered::new();
        let connections = self.clients.len();
        loop {
            tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                first = rx.recv(), if in_flight.len() < connections => {
                    let Some(first) = first else { return };
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    // Requests that timed out in the queue were decided
                    // by on_backend_error: they must not count.
                    jobs.retain(|j| !j.abandoned());
                    for group in group_by_slot(jobs) {
                        in_flight.push(self.send(group));
                    }
                }
            }
        }
    }

    /// One script call carrying `jobs` (all of one slot); answers each.
    async fn send(&self, jobs: Vec<Job>) {
        metrics::histogram!("gateway_rate_limit_batch_size").record(jobs.len() as f64);
        let (keys, args) = call_args(&jobs);
        // Every caller in the batch stops waiting by now; an answer after
        // this would be ignored (but still counted by Redis).
        let result = tokio::time::timeout(self.timeout, self.evalsha(keys, args)).await;
        let replies = match result {
            Ok(Ok(out)) => split_reply(&jobs, &out),
            Ok(Err(e)) => Err(BackendError::Redis(e.details().to_string())),
            Err(_) => Err(BackendError::Timeout(self.timeout)),
        };
        match replies {
            Ok(replies) => {
                for (job, r) in jobs.into_iter().zip(replies) {
                    job.answer(Ok(r));
                }
            }
            Err(e) => {
                for job in jobs {
                    job.answer(Err(e.clone()));
                }
            }
        }
    }

    /// `EVALSHA`; on `NOSCRIPT` (a restarted or flushed Redis, a replica
    /// promoted after a failover) loads the script on every master and
    /// retries once.
    async fn evalsha(&self, keys: Vec<String>, args: Vec<i64>) -> Result<Vec<i64>, Error> {
        let client = self.client();
        let sha = self.script.sha1().clone();
        match client
            .evalsha::<Vec<i64>, _, _, _>(sha.clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.script_load_cluster::<String, _>(SCRIPT).await?;
                client.evalsha(sha, keys, args).await
            }
            result => result,
        }
    }
}

/// How often the same Redis connection error is logged at `warn`.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// Keeps `client` connected for as long as the process runs. Once
/// connected, fred's reconnect policy redials a lost connection; a
/// connection that could not be made in the first place ends fred's task,
/// so this loop starts it again, with backoff.
async fn keep_client_connected(client: &Client, logs_errors: bool) {
    if logs_errors {
        tokio::join!(connect_forever(client), log_errors(client));
    } else {
        connect_forever(client).await;
    }
}

async fn connect_forever(client: &Client) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let ended = client.connect().await;
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

/// Logs the client's connection errors, which fred reports only at
/// `debug` when a redial fails. While a cluster cannot be joined (a slot
/// with no master: every node answers `cluster_state:fail`) that is why
/// checks keep following `on_backend_error`. The same error is logged at
/// `warn` at most every [`ERROR_LOG_EVERY`].
async fn log_errors(client: &Client) {
    let mut errors = client.error_rx();
    let mut last: Option<(String, Instant)> = None;
    loop {
        let (error, server) = match errors.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            // Only `quit` swaps the channel; follow the new one.
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                // Never a busy loop, should the new channel be closed too.
                tokio::time::sleep(RECONNECT_MIN).await;
                errors = client.error_rx();
                continue;
            }
        };
        let why = error.details().to_string();
        let server = server.map_or_else(|| "-".to_string(), |s| s.to_string());
        let repeated = last
            .as_ref()
            .is_some_and(|(w, at)| *w == why && at.elapsed() < ERROR_LOG_EVERY);
        if repeated {
            tracing::debug!(error = %why, %server, "Redis connection error");
        } else {
            tracing::warn!(error = %why, %server, "Redis connection error; checks follow on_backend_error until it reconnects");
            last = Some((why, Instant::now()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RedisStore {
        RedisStore::new(&RedisConfig {
            // Nothing listens here, and nothing connects in these tests.
            url: "redis://127.0.0.1:1".into(),
            timeout: Duration::from_millis(25),
            key_prefix: "test:".into(),
            cluster: false,
            connections: 1,
        })
        .expect("store")
    }

    /// Called where no runtime runs (a caller outside the proxy), it must
    /// neither panic (`tokio::spawn` would) nor use up the one start: the
    /// first call from a runtime still connects the proxy-side copy.
    #[test]
    fn serving_from_no_runtime_is_a_no_op_and_a_runtime_still_starts_it() {
        let store = store();
        store.serve_from_this_runtime();
        assert!(!store.proxy_side_started.load(Ordering::Acquire));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async { store.serve_from_this_runtime() });
        assert!(store.proxy_side_started.load(Ordering::Acquire));
        // Nothing listens: neither copy is connected, and a check fails
        // at once (on_backend_error decides) instead of waiting.
        assert!(!store.is_connected());
        let tier = Tier {
            subject: Subject::Key(uuid::Uuid::nil()),
            period: super::super::Period::Minute,
            limit: 1,
        };
        let got = rt.block_on(store.check(None, &[tier], Mode::Count));
        assert!(matches!(got, Err(BackendError::Disconnected)), "{got:?}");
    }
}
