//! The baseline of `benches/load`: a Pingora pass-through with no filters.
//!
//! It runs the same Pingora version, allocator, server settings (threads,
//! work stealing, upstream keepalive pool) and peer options (the default
//! connect/read/write timeouts of `[proxy]`, 60 s idle) as `gateway serve`,
//! so the ratio "gateway / bare" measures exactly what the gateway adds:
//! key auth, scopes, rate limits, headers, metrics and request ids.
//!
//! ```text
//! cargo run --release --example bare_pingora -- 127.0.0.1:8180 127.0.0.1:3001 [threads]
//!     [<tls listen addr> <cert.pem> <key.pem>]
//! ```
//!
//! With the last three, it also serves TLS (rustls, TLS 1.2/1.3, h2 and
//! HTTP/1.1 by ALPN, as the gateway's `tls_listen`), for the TLS
//! contenders of `benches/load/run.sh`.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The gateway's allocator too, so the ratio compares proxy work only.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PassThrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.write_timeout = Some(Duration::from_secs(30));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_pingora <listen addr> <upstream addr> [threads] [<tls listen addr> <cert.pem> <key.pem>]";
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bad upstream address {upstream:?}: {e}\n{usage}");
        std::process::exit(2);
    });
    let threads = match args.next().map(|t| t.parse::<usize>()) {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("threads must be a positive integer\n{usage}");
            std::process::exit(2);
        }
    };
    let tls = match (args.next(), args.next(), args.next()) {
        (None, _, _) => None,
        (Some(addr), Some(cert), Some(key)) => Some((addr, cert, key)),
        _ => {
            eprintln!("TLS needs an address, a certificate and a key\n{usage}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads,
        work_stealing: true,
        upstream_keepalive_pool_size: 128,
        // SIGTERM stops within seconds, as `gateway serve` does by default.
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, PassThrough { upstream });
    proxy.add_tcp(&listen);
    if let Some((addr, cert, key)) = tls {
        // The setters check the files, so `build` cannot panic on them.
        let settings = TlsSettings::intermediate(&cert, &key).and_then(|mut s| {
            s.set_certificate_chain_file(&cert)?;
            s.set_private_key_file(&key)?;
            s.enable_h2();
            Ok(s)
        });
        match settings {
            Ok(s) => proxy.add_tls_with_settings(&addr, None, s),
            Err(e) => {
                eprintln!("cannot use {cert} / {key}: {e}");
                std::process::exit(2);
            }
        }
    }
    server.add_service(proxy);
    server.run_forever();
}
