//! TLS settings: `proxy.tls_listen` with its SNI certificates, and TLS to
//! upstreams (DESIGN §3 "Edge: TLS, HTTP/2, route options, hot reload").
//!
//! Certificate and CA files are read and checked here, so `check-config`
//! (and a reload) reports a missing file, a file that is not PEM or a key
//! that does not belong to its certificate by key path, like any other
//! error. [`load_certificates`] is also what the running listener's
//! `crate::tls::Certificates` reads its files with, so the two never
//! disagree about what a valid file is.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::validate::parse_addr;
use super::{file, ConfigError, Errors};

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
    /// The certificates of `ca_file`, read when the config was loaded
    /// (empty without `ca_file`): the proxy trusts exactly these.
    pub ca_certs: CaCerts,
}

/// DER certificates of a CA file; `Debug` shows only how many.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct CaCerts(pub Vec<Vec<u8>>);

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCerts({} certificate(s))", self.0.len())
    }
}

/// Whether two listen addresses would collide: the same port on the same
/// IP, or on any IP when either is the unspecified address.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn build_tls_listener(
    p: &mut file::Proxy,
    errs: &mut Errors,
) -> Option<TlsListenerConfig> {
    let certificates = p.certificates.take();
    let Some(listen) = p.tls_listen.take() else {
        if certificates.is_some_and(|c| !c.is_empty()) {
            errs.push(
                "proxy.certificates",
                "certificates are only used by the TLS listener: set proxy.tls_listen",
            );
        }
        return None;
    };
    let before = errs.0.len();
    let listen = parse_addr(&listen, "proxy.tls_listen", errs);
    // `proxy.listen` is parsed (and its own errors reported) by the caller.
    let plain = p
        .listen
        .as_deref()
        .unwrap_or(super::DEFAULT_PROXY_LISTEN)
        .parse::<SocketAddr>()
        .ok();
    if let (Some(tls), Some(plain)) = (listen, plain) {
        if overlaps(tls, plain) {
            errs.push(
                "proxy.tls_listen",
                format!("{tls} overlaps proxy.listen ({plain})"),
            );
        }
    }
    let list = certificates.unwrap_or_default();
    if list.is_empty() {
        errs.push(
            "proxy.certificates",
            "the TLS listener needs at least one { cert, key } pair",
        );
    }
    let mut configs = Vec::with_capacity(list.len());
    for (i, c) in list.into_iter().enumerate() {
        let path = |field: &str| format!("proxy.certificates[{i}].{field}");
        match (c.cert, c.key) {
            (Some(cert), Some(key)) => configs.push(CertificateConfig {
                cert: cert.into(),
                key: key.into(),
            }),
            (cert, key) => {
                for (field, v) in [("cert", cert), ("key", key)] {
                    if v.is_none() {
                        errs.push(path(field), "missing (a PEM file path)");
                    }
                }
            }
        }
    }
    if errs.0.len() == before {
        // Read every file now, so a bad one fails `check-config` and a
        // reload instead of the first handshake.
        if let Err(e) = load_certificates(&configs) {
            errs.0.extend(e);
        }
    }
    // Built even when a certificate is bad (the whole config is refused
    // then anyway), so the caller can still check the address against
    // `admin.listen`.
    Some(TlsListenerConfig {
        listen: listen?,
        certificates: configs,
    })
}

/// A certificate chain with its key, ready to serve, and the DNS names of
/// its subjectAltName (lower-case; a wildcard keeps its `*.`).
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

/// Reads and checks every pair of `list` (the index in the error paths is
/// the index in `list`, as in the file). Every problem is reported; no
/// partial result.
pub fn load_certificates(
    list: &[CertificateConfig],
) -> Result<Vec<LoadedCertificate>, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let mut loaded = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        match load_pair(c, i) {
            Ok(l) => loaded.push(l),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(loaded)
    } else {
        Err(errs)
    }
}

fn load_pair(c: &CertificateConfig, i: usize) -> Result<LoadedCertificate, ConfigError> {
    let cert_path = format!("proxy.certificates[{i}].cert");
    let key_path = format!("proxy.certificates[{i}].key");
    let err = |path: &str, message: String| ConfigError {
        path: path.to_string(),
        message,
    };
    let chain = read_certs(&c.cert).map_err(|m| err(&cert_path, m))?;
    let names = chain
        .first()
        .map(|leaf| dns_names(leaf))
        .transpose()
        .map_err(|m| err(&cert_path, format!("{}: {m}", c.cert.display())))?
        .unwrap_or_default();
    let key_pem = read(&c.key).map_err(|m| err(&key_path, m))?;
    // The parser's own errors can quote a line of the file: never echo
    // anything of a private key.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        err(
            &key_path,
            format!(
                "{}: no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) in it",
                c.key.display()
            ),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|_| {
        err(
            &key_path,
            format!(
                "{}: unsupported private key (RSA, ECDSA P-256/P-384 or Ed25519)",
                c.key.display()
            ),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(err(
                &key_path,
                format!(
                    "{} is not the private key of {} (proxy.certificates[{i}].cert)",
                    c.key.display(),
                    c.cert.display()
                ),
            ))
        }
        Err(e) => {
            return Err(err(
                &key_path,
                format!(
                    "{}: cannot check it against {}: {e}",
                    c.key.display(),
                    c.cert.display()
                ),
            ))
        }
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates of a PEM file, in order; at least one, each one a
/// parseable X.509 certificate.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        let der = item.map_err(|e| format!("{}: not a valid PEM file: {e}", path.display()))?;
        if let Err(e) = X509Certificate::from_der(&der) {
            return Err(format!(
                "{}: certificate {} is not valid X.509: {e}",
                path.display(),
                certs.len() + 1
            ));
        }
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (BEGIN CERTIFICATE) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The DNS names of a certificate's subjectAltName, lower-case.
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

pub(super) fn build_upstream_tls(
    u: &mut file::Upstream,
    path: &str,
    errs: &mut Errors,
) -> Option<UpstreamTls> {
    let sni = u.sni.take();
    let ca_file = u.ca_file.take();
    if u.tls != Some(true) {
        for (key, set) in [("sni", sni.is_some()), ("ca_file", ca_file.is_some())] {
            if set {
                errs.push(format!("{path}.{key}"), "only used with tls = true");
            }
        }
        return None;
    }
    let sni = match sni {
        Some(s) => match rustls::pki_types::ServerName::try_from(s.as_str()) {
            Ok(_) => Some(s.to_ascii_lowercase()),
            Err(_) => {
                errs.push(
                    format!("{path}.sni"),
                    format!("{s:?} is not a DNS name or IP address"),
                );
                None
            }
        },
        None => default_sni(u.targets.as_deref().unwrap_or_default(), path, errs),
    };
    let (ca_file, ca_certs) = match ca_file {
        None => (None, CaCerts::default()),
        Some(f) => {
            let p = PathBuf::from(f);
            match read_certs(&p) {
                Ok(certs) => (
                    Some(p),
                    CaCerts(certs.into_iter().map(|c| c.to_vec()).collect()),
                ),
                Err(m) => {
                    errs.push(format!("{path}.ca_file"), m);
                    (None, CaCerts::default())
                }
            }
        }
    };
    Some(UpstreamTls {
        sni: sni?,
        ca_file,
        ca_certs,
    })
}

/// Without `sni`, the host name the targets are written with; the targets
/// must agree on one, and an IP address is no name to verify.
fn default_sni(targets: &[String], path: &str, errs: &mut Errors) -> Option<String> {
    let hosts: Vec<&str> = targets
        .iter()
        .filter_map(|t| t.rsplit_once(':').map(|(h, _)| h))
        .collect();
    let named = |h: &&str| {
        matches!(
            rustls::pki_types::ServerName::try_from(*h),
            Ok(rustls::pki_types::ServerName::DnsName(_))
        )
    };
    match hosts.first() {
        Some(first) if named(first) && hosts.iter().all(|h| h.eq_ignore_ascii_case(first)) => {
            Some(first.to_ascii_lowercase())
        }
        Some(_) if hosts.iter().all(named) => {
            errs.push(
                format!("{path}.sni"),
                "required: the targets name different hosts, so set the name to verify",
            );
            None
        }
        Some(_) => {
            errs.push(
                format!("{path}.sni"),
                "required with tls = true when a target is an IP address: the name the upstream's certificate is verified against",
            );
            None
        }
        // `targets` reports its own error.
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env};
    use super::*;
    use crate::config::{Config, Need};

    /// A self-signed certificate for `names` and its key, as PEM.
    fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    }

    fn with_tls(certs: &str) -> String {
        format!(
            "{}\n[proxy]\nlisten = \"127.0.0.1:8080\"\ntls_listen = \"127.0.0.1:8443\"\ncertificates = [{certs}]\n",
            minimal()
        )
    }

    fn paths(e: &crate::config::ConfigErrors) -> Vec<&str> {
        e.0.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn certificates_load_with_their_san_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, ak) = self_signed(&["A.example.com", "*.api.example.com"]);
        let cert = write(dir.path(), "a.pem", &a);
        let key = write(dir.path(), "a.key", &ak);
        let text = with_tls(&format!("{{ cert = {cert:?}, key = {key:?} }}"));
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        let tls = cfg.proxy.tls.expect("tls listener");
        assert_eq!(tls.listen.to_string(), "127.0.0.1:8443");
        let loaded = load_certificates(&tls.certificates).expect("load");
        assert_eq!(loaded[0].names, ["a.example.com", "*.api.example.com"]);
    }

    #[test]
    fn bad_files_are_reported_by_key_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, ak) = self_signed(&["a.example.com"]);
        let (_, bk) = self_signed(&["b.example.com"]);
        let cert = write(dir.path(), "a.pem", &a);
        let key = write(dir.path(), "a.key", &ak);
        let other_key = write(dir.path(), "b.key", &bk);
        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        );
        let missing = dir.path().join("missing.pem").display().to_string();
        let text = with_tls(&format!(
            "{{ cert = {cert:?}, key = {key:?} }}, {{ cert = {cert:?} }}"
        ));
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(paths(&errs), ["proxy.certificates[1].key"], "{errs}");
        let text = with_tls(
            &format!(
                "{{ cert = {cert:?}, key = {key:?} }}, {{ cert = {missing:?}, key = {key:?} }}, \
                 {{ cert = {cert:?}, key = {other_key:?} }}, {{ cert = {garbage:?}, key = {key:?} }}, \
                 {{ cert = {cert:?}, key = {cert:?} }}"
            ),
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(
            paths(&errs),
            [
                "proxy.certificates[1].cert",
                "proxy.certificates[2].key",
                "proxy.certificates[3].cert",
                "proxy.certificates[4].key",
            ],
            "{errs}"
        );
        let msg = errs.to_string();
        assert!(msg.contains("cannot read"), "{msg}");
        assert!(msg.contains("is not the private key of"), "{msg}");
        assert!(
            !msg.contains("PRIVATE KEY-----"),
            "no key material in errors: {msg}"
        );
    }

    #[test]
    fn tls_listen_needs_certificates_and_its_own_port() {
        let text = format!(
            "{}\n[proxy]\nlisten = \"0.0.0.0:8443\"\ntls_listen = \"127.0.0.1:8443\"\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(
            paths(&errs),
            ["proxy.tls_listen", "proxy.certificates"],
            "{errs}"
        );
        let text = format!(
            "{}\n[proxy]\ntls_listen = \"127.0.0.1:9090\"\ncertificates = []\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert!(paths(&errs).contains(&"admin.listen"), "{errs}");
        let text = format!(
            "{}\n[proxy]\ncertificates = [{{ cert = \"a\", key = \"b\" }}]\n",
            minimal()
        );
        let errs = Config::from_toml(&text, no_env(), Need::Serve).unwrap_err();
        assert_eq!(paths(&errs), ["proxy.certificates"], "{errs}");
    }

    /// Env variables take TOML values, so even the array of tables can be
    /// set from the environment as an inline array.
    #[test]
    fn certificates_can_come_from_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, ak) = self_signed(&["a.example.com"]);
        let cert = write(dir.path(), "a.pem", &a);
        let key = write(dir.path(), "a.key", &ak);
        let env = vec![
            (
                "GATEWAY_PROXY_TLS_LISTEN".to_string(),
                "127.0.0.1:8443".to_string(),
            ),
            (
                "GATEWAY_PROXY_CERTIFICATES".to_string(),
                format!("[{{ cert = {cert:?}, key = {key:?} }}]"),
            ),
        ];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.proxy.tls.expect("tls").certificates.len(), 1);
    }

    fn upstream(extra: &str) -> String {
        format!("{}\n[[upstreams]]\nname = \"secure\"\n{extra}\n", minimal())
    }

    #[test]
    fn upstream_tls_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, _) = self_signed(&["ca.example"]);
        let ca = write(dir.path(), "ca.pem", &ca);
        let text = upstream(&format!(
            "targets = [\"127.0.0.1:443\"]\ntls = true\nsni = \"API.example.com\"\nca_file = {ca:?}"
        ));
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        let tls = cfg
            .upstream("secure")
            .and_then(|u| u.tls.clone())
            .expect("tls");
        assert_eq!(tls.sni, "api.example.com");
        assert_eq!(tls.ca_certs.0.len(), 1);
        // The target's host name is the default SNI.
        let text = upstream("targets = [\"localhost:443\"]\ntls = true");
        let cfg = Config::from_toml(&text, no_env(), Need::Serve).expect("valid");
        let tls = cfg
            .upstream("secure")
            .and_then(|u| u.tls.clone())
            .expect("tls");
        assert_eq!(tls.sni, "localhost");
        assert!(tls.ca_file.is_none() && tls.ca_certs.0.is_empty());
        // Plain upstreams have no TLS.
        assert!(cfg.upstream("echo").is_some_and(|u| u.tls.is_none()));
    }

    #[test]
    fn upstream_tls_errors_name_the_key() {
        let cases = [
            ("targets = [\"127.0.0.1:443\"]\ntls = true", "upstreams[1].sni"),
            ("targets = [\"127.0.0.1:443\"]\nsni = \"a.example\"", "upstreams[1].sni"),
            ("targets = [\"127.0.0.1:443\"]\nca_file = \"/x\"", "upstreams[1].ca_file"),
            (
                "targets = [\"127.0.0.1:443\"]\ntls = true\nsni = \"a.example\"\nca_file = \"/nonexistent/ca.pem\"",
                "upstreams[1].ca_file",
            ),
            ("targets = [\"127.0.0.1:443\"]\ntls = true\nsni = \"not a name\"", "upstreams[1].sni"),
        ];
        for (extra, want) in cases {
            let errs = Config::from_toml(&upstream(extra), no_env(), Need::Serve).unwrap_err();
            assert_eq!(paths(&errs), [want], "{extra}: {errs}");
        }
    }

    #[test]
    fn listener_overlap() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(overlaps(a("0.0.0.0:1"), a("127.0.0.1:1")));
        assert!(overlaps(a("127.0.0.1:1"), a("127.0.0.1:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.1:2")));
    }
}
