//! `[[upstreams]]`: named groups of targets, resolved once at start-up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::proxy::ProxyConfig;
use super::tls::{build_upstream_tls, UpstreamTls};
use super::validate::{is_name, positive_ms};
use super::{file, Errors};

/// Most targets per upstream: the proxy keeps a request's "already tried"
/// targets in a u64 bit set.
pub const MAX_TARGETS: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: Arc<str>,
    pub targets: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// TLS to the targets (`tls = true`, `sni`, `ca_file`).
    pub tls: Option<UpstreamTls>,
}

pub(super) fn build_upstream(
    mut u: file::Upstream,
    i: usize,
    proxy: Option<&ProxyConfig>,
    errs: &mut Errors,
) -> Option<UpstreamConfig> {
    let path = format!("upstreams[{i}]");
    let tls = build_upstream_tls(&mut u, &path, errs);
    let name = match u.name {
        Some(n) if is_name(&n) => Some(n),
        Some(n) => {
            errs.push(
                format!("{path}.name"),
                format!("{n:?} must be 1-64 characters of A-Z, a-z, 0-9, _ - ."),
            );
            None
        }
        None => {
            errs.push(format!("{path}.name"), "missing");
            None
        }
    };
    let targets = u.targets.unwrap_or_default();
    if targets.is_empty() {
        errs.push(format!("{path}.targets"), "needs at least one host:port");
    } else if targets.len() > MAX_TARGETS {
        errs.push(
            format!("{path}.targets"),
            format!("at most {MAX_TARGETS} targets"),
        );
    }
    let mut addrs = Vec::new();
    for (j, t) in targets.iter().enumerate() {
        // Hostnames resolve once, at start-up: the hot path never resolves.
        match t.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => addrs.push(a),
            Ok(None) | Err(_) => errs.push(
                format!("{path}.targets[{j}]"),
                format!("{t:?} is not a resolvable host:port"),
            ),
        }
    }
    let (dc, dr) = proxy.map_or((2_000, 30_000), |p| {
        (
            p.connect_timeout.as_millis() as u64,
            p.read_timeout.as_millis() as u64,
        )
    });
    let connect_timeout = positive_ms(
        u.connect_timeout_ms,
        dc,
        &format!("{path}.connect_timeout_ms"),
        errs,
    );
    let read_timeout = positive_ms(
        u.read_timeout_ms,
        dr,
        &format!("{path}.read_timeout_ms"),
        errs,
    );
    Some(UpstreamConfig {
        name: name?.into(),
        targets: addrs,
        connect_timeout,
        read_timeout,
        tls,
    })
}
