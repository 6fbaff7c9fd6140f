//! `[redis]`: the shared store of the `redis` rate-limit backend.

use std::time::Duration;

use super::validate::{check_url, positive_ms};
use super::{file, Errors};

/// Default bound on one Redis rate-limit call.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 25;
/// Default number of Redis connections (each with one batch in flight).
pub const DEFAULT_REDIS_CONNECTIONS: usize = 1;
/// Most Redis connections one instance opens.
pub const MAX_REDIS_CONNECTIONS: u64 = 16;
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
    /// Connections (clients) to Redis, each with one batch of checks in
    /// flight at a time. Default 1, at most 16.
    pub connections: usize,
}

pub(super) fn build_redis(r: file::Redis, present: bool, errs: &mut Errors) -> Option<RedisConfig> {
    let url = match (present, r.url) {
        (_, Some(url)) => cluster_seeds(&url),
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
        check_url(&url, &["redis", "redis-cluster"], "redis.url", errs);
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
    let connections = match r.connections {
        None => DEFAULT_REDIS_CONNECTIONS,
        Some(n) if (1..=MAX_REDIS_CONNECTIONS).contains(&n) => n as usize,
        Some(_) => {
            errs.push(
                "redis.connections",
                format!("must be between 1 and {MAX_REDIS_CONNECTIONS}"),
            );
            DEFAULT_REDIS_CONNECTIONS
        }
    };
    let cluster_url = url.starts_with("redis-cluster:");
    if r.cluster == Some(false) && cluster_url {
        errs.push(
            "redis.cluster",
            "is false, but the url is a redis-cluster:// one",
        );
    }
    Some(RedisConfig {
        // fred picks its cluster client by the scheme; `cluster = true`
        // with a redis:// URL means the same.
        url: match r.cluster {
            Some(true) if !cluster_url => url.replacen("redis:", "redis-cluster:", 1),
            _ => url,
        },
        timeout,
        key_prefix,
        cluster: r.cluster.unwrap_or(cluster_url),
        connections,
    })
}

/// `redis-cluster://[auth@]host:port,host:port…` (seed nodes separated by
/// commas) in the form fred reads: the first seed as the host, the others
/// as `node=` query parameters. Anything else is returned unchanged.
fn cluster_seeds(url: &str) -> String {
    let Some(rest) = url.strip_prefix("redis-cluster://") else {
        return url.to_string();
    };
    let (auth, rest) = match rest.rfind('@') {
        Some(at) => rest.split_at(at + 1),
        None => ("", rest),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(end);
    if !hosts.contains(',') {
        return url.to_string();
    }
    let mut seeds = hosts.split(',');
    let first = seeds.next().unwrap_or_default();
    let (path, query) = match tail.split_once('?') {
        Some((path, q)) => (path, format!("{q}&")),
        None => (tail, String::new()),
    };
    let nodes: Vec<String> = seeds.map(|s| format!("node={s}")).collect();
    format!(
        "redis-cluster://{auth}{first}{path}?{query}{}",
        nodes.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::{build_redis, cluster_seeds, file, Errors};

    fn build(
        url: &str,
        cluster: Option<bool>,
        connections: Option<u64>,
    ) -> (Option<super::RedisConfig>, Vec<String>) {
        let mut errs = Errors::default();
        let r = file::Redis {
            url: Some(url.into()),
            cluster,
            connections,
            ..Default::default()
        };
        let cfg = build_redis(r, true, &mut errs);
        (cfg, errs.0.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn cluster_mode_follows_the_url_or_the_flag() {
        let (c, errs) = build("redis-cluster://a:1,b:2", None, None);
        let c = c.unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        assert!(c.cluster);
        assert_eq!(c.url, "redis-cluster://a:1?node=b:2");
        assert_eq!(c.connections, 1);
        let (c, _) = build("redis://a:1", Some(true), None);
        let c = c.unwrap();
        assert!(c.cluster);
        assert_eq!(c.url, "redis-cluster://a:1");
        assert!(!build("redis://a:1", None, Some(4)).0.unwrap().cluster);
        assert_eq!(
            build("redis-cluster://a:1", Some(false), None).1,
            ["redis.cluster"]
        );
        assert_eq!(build("redis://a:1", None, Some(0)).1, ["redis.connections"]);
        assert_eq!(
            build("redis://a:1", None, Some(17)).1,
            ["redis.connections"]
        );
        assert_eq!(
            build("redis://a:1", None, Some(16)).0.unwrap().connections,
            16
        );
    }

    #[test]
    fn cluster_seed_lists_become_node_parameters() {
        assert_eq!(
            cluster_seeds("redis-cluster://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            cluster_seeds("redis-cluster://u:p@a:1,b:2/0?x=y"),
            "redis-cluster://u:p@a:1/0?x=y&node=b:2"
        );
        assert_eq!(cluster_seeds("redis-cluster://a:1"), "redis-cluster://a:1");
        assert_eq!(cluster_seeds("redis://a:1"), "redis://a:1");
    }
}
