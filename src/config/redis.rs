//! `[redis]`: the shared store of the `redis` rate-limit backend.

use std::time::Duration;

use super::validate::{check_url, positive_ms};
use super::{file, Errors};

/// Default bound on one Redis rate-limit call.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 25;
/// Default prefix of the gateway's Redis keys.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "gateway:rl:";

/// `[redis]`: the shared store of the `redis` rate-limit backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Bound on one rate-limit call, network included.
    pub timeout: Duration,
    /// Prepended to every key the gateway writes, so several deployments
    /// (or test runs) can share one Redis.
    pub key_prefix: String,
    /// Use fred's cluster client (`cluster = true` or a `redis-cluster://`
    /// URL).
    pub cluster: bool,
}

pub(super) fn build_redis(r: file::Redis, present: bool, errs: &mut Errors) -> Option<RedisConfig> {
    let url = match (present, r.url) {
        (_, Some(url)) => url,
        (true, None) => {
            errs.push("redis.url", "missing (the [redis] section needs a url)");
            return None;
        }
        (false, None) => return None,
    };
    if url.starts_with("rediss:") {
        errs.push(
            "redis.url",
            "TLS to Redis (rediss://) is not supported yet; use redis:// on a private network",
        );
    } else {
        check_url(&url, &["redis"], "redis.url", errs);
    }
    let timeout = positive_ms(
        r.timeout_ms,
        DEFAULT_REDIS_TIMEOUT_MS,
        "redis.timeout_ms",
        errs,
    );
    if timeout > Duration::from_secs(10) {
        errs.push("redis.timeout_ms", "must be at most 10000");
    }
    let key_prefix = r
        .key_prefix
        .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string());
    if key_prefix.len() > 64
        || key_prefix.contains(['{', '}'])
        || key_prefix.contains(char::is_whitespace)
    {
        errs.push(
            "redis.key_prefix",
            "must be at most 64 characters, without braces or whitespace",
        );
    }
    Some(RedisConfig {
        url,
        timeout,
        key_prefix,
        // `redis-cluster://` URLs are the cluster work's (issue 16).
        cluster: r.cluster.unwrap_or(false),
    })
}
