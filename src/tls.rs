//! The TLS listener's certificates, chosen by SNI and swappable at run
//! time, and TLS to upstreams (DESIGN §3 "Edge: TLS, HTTP/2, route
//! options, hot reload").
//!
//! [`Certificates`] is the contract between the TLS listener (which asks it
//! for a certificate on every handshake) and hot reload (which re-reads the
//! files and swaps them in): a reload never rebuilds the listener, so no
//! connection drops, and handshakes after the swap see the new files.
//!
//! The listener is Pingora's rustls one ([`listener_settings`]), given our
//! resolver instead of certificate paths: Pingora's path-based
//! `TlsSettings::build` panics on a bad file and cannot change its
//! certificates afterwards.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::{HttpPeer, Scheme};
use pingora::utils::tls::WrappedX509;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{load_certificates, ConfigError, ConfigErrors, TlsListenerConfig, UpstreamTls};

/// The certificates of the TLS listener.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertSet>,
}

/// One immutable set of certificates, swapped whole by a reload.
struct CertSet {
    /// The first certificate of the config: for clients without SNI, or
    /// with a name no certificate carries.
    default: Arc<CertifiedKey>,
    /// Exact names (lower-case) to their certificate.
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` as `example.com`: matches exactly one more label.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CertSet {
    fn read(cfg: &TlsListenerConfig) -> Result<CertSet, ConfigErrors> {
        let loaded = load_certificates(&cfg.certificates).map_err(ConfigErrors)?;
        let mut loaded = loaded.into_iter();
        let Some(first) = loaded.next() else {
            return Err(ConfigErrors(vec![ConfigError {
                path: "proxy.certificates".into(),
                message: "the TLS listener needs at least one { cert, key } pair".into(),
            }]));
        };
        let mut set = CertSet {
            default: first.key.clone(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        // When two certificates carry one name, the earlier one serves it.
        for c in std::iter::once(first).chain(loaded) {
            for name in &c.names {
                let (map, name) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut set.wildcard, suffix),
                    None => (&mut set.exact, name.as_str()),
                };
                if let Entry::Vacant(e) = map.entry(name.into()) {
                    e.insert(c.key.clone());
                }
            }
        }
        Ok(set)
    }

    /// An exact name beats a wildcard; anything else gets the default.
    /// `name` is lower-case (rustls lower-cases SNI).
    fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl Certificates {
    /// Reads every certificate and key in `cfg`; errors name the file.
    pub fn load(cfg: &TlsListenerConfig) -> Result<Arc<Certificates>, ConfigErrors> {
        Ok(Arc::new(Certificates {
            current: ArcSwap::from_pointee(CertSet::read(cfg)?),
        }))
    }

    /// Re-reads the files of `cfg` and swaps them in whole; on any error
    /// nothing changes. Handshakes already done keep their certificate:
    /// established connections are not touched.
    pub fn reload(&self, cfg: &TlsListenerConfig) -> Result<(), ConfigErrors> {
        let set = CertSet::read(cfg)?;
        self.current.store(Arc::new(set));
        Ok(())
    }

    /// The certificate chain (leaf first, DER) a handshake for `sni`
    /// would get now.
    pub fn chain_for(&self, sni: Option<&str>) -> Vec<Vec<u8>> {
        let lower = sni.map(str::to_ascii_lowercase);
        let set = self.current.load();
        set.pick(lower.as_deref())
            .cert
            .iter()
            .map(|c| c.to_vec())
            .collect()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()).clone())
    }
}

/// Pingora's TLS settings for the listener: certificates from `certs`,
/// TLS 1.2 and 1.3 only (what Pingora's rustls acceptor allows), HTTP/2
/// offered by ALPN with HTTP/1.1 as the fallback.
pub fn listener_settings(certs: Arc<Certificates>) -> pingora::Result<TlsSettings> {
    // No paths: with a resolver set, `build` never reads (or panics on) them.
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(certs);
    settings.enable_h2();
    Ok(settings)
}

/// TLS to one upstream's targets, prepared once per config so picking a
/// peer copies two `Arc`s and a string.
#[derive(Debug, Clone)]
pub struct UpstreamPeerTls {
    sni: String,
    /// `None`: the system roots (Pingora's connector default).
    ca: Option<Arc<CaType>>,
    /// Pingora pools upstream connections by address, SNI and verification
    /// flags, not by CA: without this, a connection verified against one
    /// upstream's CA could be reused for another upstream that trusts a
    /// different one.
    group_key: u64,
}

impl UpstreamPeerTls {
    pub fn new(cfg: &UpstreamTls) -> Self {
        let ca = cfg.ca_file.as_ref().map(|_| {
            // Parsed once already by the config; a certificate that fails
            // now is left out, and an empty list fails every handshake
            // rather than falling back to the system roots.
            let certs: Vec<WrappedX509> = cfg
                .ca_certs
                .0
                .iter()
                .filter_map(|der| WrappedX509::try_new(der.clone(), parse_x509).ok())
                .collect();
            Arc::<CaType>::from(certs)
        });
        let mut h = DefaultHasher::new();
        cfg.sni.hash(&mut h);
        cfg.ca_file.is_some().hash(&mut h);
        cfg.ca_certs.0.hash(&mut h);
        Self {
            sni: cfg.sni.clone(),
            ca,
            group_key: h.finish(),
        }
    }

    /// Turns a plain-HTTP `peer` into a TLS one: SNI, certificate and host
    /// name verified (Pingora skips verification when the SNI is empty, so
    /// it never is), against the CA file when there is one.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.scheme = Scheme::HTTPS;
        peer.sni.clone_from(&self.sni);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.ca.clone_from(&self.ca);
        peer.group_key = self.group_key;
    }
}

// `&Vec<u8>`: the builder `WrappedX509::try_new` (ouroboros) takes is
// given the owned field by reference.
#[allow(clippy::ptr_arg)]
fn parse_x509(
    raw: &Vec<u8>,
) -> Result<X509Certificate<'_>, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    X509Certificate::from_der(raw).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::CertificateConfig;

    fn write_pair(dir: &Path, name: &str, sans: &[&str]) -> CertificateConfig {
        let c = rcgen::generate_simple_self_signed(
            sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("rcgen");
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, c.cert.pem()).expect("write");
        std::fs::write(&key, c.key_pair.serialize_pem()).expect("write");
        CertificateConfig { cert, key }
    }

    fn listener(certificates: Vec<CertificateConfig>) -> TlsListenerConfig {
        TlsListenerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            certificates,
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = write_pair(dir.path(), "default", &["default.test"]);
        let w = write_pair(dir.path(), "wild", &["*.example.com"]);
        let e = write_pair(dir.path(), "exact", &["api.example.com"]);
        let certs = Certificates::load(&listener(vec![d, w, e])).expect("load");
        let leaf = |sni: Option<&str>| certs.chain_for(sni).remove(0);
        let (default, wild, exact) = (
            leaf(None),
            leaf(Some("x.example.com")),
            leaf(Some("api.example.com")),
        );
        assert_ne!(default, wild);
        assert_ne!(wild, exact);
        assert_eq!(leaf(Some("API.Example.com")), exact);
        assert_eq!(leaf(Some("other.example.com")), wild);
        // A wildcard covers one label: not the bare domain, not two labels.
        assert_eq!(leaf(Some("example.com")), default);
        assert_eq!(leaf(Some("a.b.example.com")), default);
        assert_eq!(leaf(Some("unknown.test")), default);
        assert_eq!(leaf(Some("default.test")), default);
    }

    #[test]
    fn a_failed_reload_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_pair(dir.path(), "a", &["a.test"]);
        let certs = Certificates::load(&listener(vec![a.clone()])).expect("load");
        let before = certs.chain_for(Some("a.test"));
        let b = write_pair(dir.path(), "b", &["a.test"]);
        let broken = CertificateConfig {
            cert: b.cert.clone(),
            key: a.key.clone(),
        };
        let errs = certs
            .reload(&listener(vec![broken]))
            .expect_err("mismatched key refused");
        assert_eq!(errs.0[0].path, "proxy.certificates[0].key");
        assert_eq!(certs.chain_for(Some("a.test")), before);
        certs.reload(&listener(vec![b])).expect("reload");
        assert_ne!(certs.chain_for(Some("a.test")), before);
        assert!(certs.reload(&listener(vec![])).is_err());
    }

    #[test]
    fn upstream_ca_is_part_of_the_connection_pool_key() {
        let c = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).expect("rcgen");
        let one = UpstreamTls {
            sni: "api.test".into(),
            ca_file: Some("/a.pem".into()),
            ca_certs: crate::config::CaCerts(vec![c.cert.der().to_vec()]),
        };
        let system = UpstreamTls {
            ca_file: None,
            ca_certs: crate::config::CaCerts::default(),
            ..one.clone()
        };
        let addr: std::net::SocketAddr = "127.0.0.1:443".parse().expect("addr");
        let peer = |t: &UpstreamTls| {
            let mut p = HttpPeer::new(addr, false, String::new());
            UpstreamPeerTls::new(t).apply(&mut p);
            p
        };
        let (a, b) = (peer(&one), peer(&system));
        assert!(a.is_tls() && a.sni == "api.test");
        assert_eq!(a.options.ca.as_ref().map(|c| c.len()), Some(1));
        assert!(b.options.ca.is_none());
        use pingora::upstreams::peer::Peer;
        assert_ne!(a.reuse_hash(), b.reuse_hash());
    }
}
