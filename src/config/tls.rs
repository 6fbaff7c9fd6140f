//! TLS settings: `proxy.tls_listen` with its SNI certificates, and TLS to
//! upstreams (DESIGN §3 "Edge: TLS, HTTP/2, route options, hot reload").

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{file, Errors};

/// One certificate chain and its private key (PEM files). Which names it
/// serves is read from the certificate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS listener; `None` in `ProxyConfig.tls` when `tls_listen` is unset.
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    pub listen: SocketAddr,
    /// The first one is the default for clients without (or with an
    /// unknown) SNI name.
    pub certificates: Vec<CertificateConfig>,
}

/// TLS from the gateway to one upstream's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Name sent as SNI and verified against the target's certificate.
    pub sni: String,
    /// Extra CA bundle (PEM); the system roots when `None`.
    pub ca_file: Option<PathBuf>,
}

pub(super) fn build_tls_listener(
    _p: &mut file::Proxy,
    _errs: &mut Errors,
) -> Option<TlsListenerConfig> {
    // Filled in by the TLS work (issue 17).
    None
}

pub(super) fn build_upstream_tls(
    _u: &mut file::Upstream,
    _path: &str,
    _errs: &mut Errors,
) -> Option<UpstreamTls> {
    // Filled in by the TLS work (issue 17).
    None
}
