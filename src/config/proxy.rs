//! `[proxy]`: the proxy listener, its timeouts and trusted proxies.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::file;
use super::tls::{build_tls_listener, TlsListenerConfig};
use super::validate::{parse_addr, parse_cidrs, positive_ms};
use super::Errors;

/// Default proxy listener.
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8080";

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long a target that refused a connection is skipped.
    pub upstream_down_for: Duration,
    pub upstream_keepalive_pool_size: usize,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// The TLS listener and its certificates (`tls_listen`, `certificates`).
    pub tls: Option<TlsListenerConfig>,
    /// Largest request body on any route without its own `max_body_bytes`;
    /// `None`: unbounded.
    pub max_body_bytes: Option<u64>,
    /// Add `nosniff`, frame-options and referrer-policy (HSTS on TLS) where
    /// the upstream did not.
    pub security_headers: bool,
}

/// Longest `proxy.upstream_down_seconds`: an hour; a target skipped for
/// longer is better removed from the config.
const MAX_UPSTREAM_DOWN_SECONDS: u64 = 3600;

pub(super) fn build_proxy(mut p: file::Proxy, errs: &mut Errors) -> Option<ProxyConfig> {
    let tls = build_tls_listener(&mut p, errs);
    if p.max_body_bytes == Some(0) {
        errs.push("proxy.max_body_bytes", "must be at least 1");
    }
    let listen = parse_addr(
        p.listen.as_deref().unwrap_or(DEFAULT_PROXY_LISTEN),
        "proxy.listen",
        errs,
    );
    let threads = match p.threads {
        Some(0) => {
            errs.push("proxy.threads", "must be at least 1");
            1
        }
        Some(n) if n > 1024 => {
            errs.push("proxy.threads", "must be at most 1024");
            1
        }
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let grace = match p.shutdown_grace_seconds {
        Some(s) if s > 3600 => {
            errs.push("proxy.shutdown_grace_seconds", "must be at most 3600");
            5
        }
        Some(s) => s,
        None => 5,
    };
    let pool = p.upstream_keepalive_pool_size.unwrap_or(128);
    if pool > 1_000_000 {
        errs.push(
            "proxy.upstream_keepalive_pool_size",
            "must be at most 1000000",
        );
    }
    let down_seconds = match p.upstream_down_seconds {
        Some(s) if s > MAX_UPSTREAM_DOWN_SECONDS => {
            errs.push(
                "proxy.upstream_down_seconds",
                format!("must be at most {MAX_UPSTREAM_DOWN_SECONDS}"),
            );
            10
        }
        Some(s) => s,
        None => 10,
    };
    Some(ProxyConfig {
        listen: listen?,
        threads,
        connect_timeout: positive_ms(
            p.connect_timeout_ms,
            2_000,
            "proxy.connect_timeout_ms",
            errs,
        ),
        read_timeout: positive_ms(p.read_timeout_ms, 30_000, "proxy.read_timeout_ms", errs),
        write_timeout: positive_ms(p.write_timeout_ms, 30_000, "proxy.write_timeout_ms", errs),
        upstream_down_for: Duration::from_secs(down_seconds),
        upstream_keepalive_pool_size: pool as usize,
        shutdown_grace: Duration::from_secs(grace),
        trusted_proxies: parse_cidrs(p.trusted_proxies, "proxy.trusted_proxies", errs),
        tls,
        max_body_bytes: p.max_body_bytes,
        security_headers: p.security_headers.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{minimal, no_env};
    use crate::config::{Config, Need};

    #[test]
    fn a_huge_upstream_down_time_is_refused_by_name() {
        let text = format!(
            "{}\n[proxy]\nupstream_down_seconds = 9223372036854775807\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        let e = errs
            .0
            .iter()
            .find(|e| e.path == "proxy.upstream_down_seconds");
        assert!(
            e.is_some_and(|e| e.to_string().contains("at most 3600")),
            "{errs}"
        );
        let text = format!("{}\n[proxy]\nupstream_down_seconds = 3600\n", minimal());
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.proxy.upstream_down_for, Duration::from_secs(3600));
    }
}
