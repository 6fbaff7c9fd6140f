//! What the proxy does differently for requests that came in over its own
//! TLS listener (DESIGN §3 "Edge: TLS, HTTP/2, route options, hot
//! reload"): the upstream is told `X-Forwarded-Proto: https`, and with
//! `proxy.security_headers` every response carries HSTS unless the
//! upstream sent its own. HSTS is added by the edge-header module with the
//! other security headers ([`super::edge_headers`]), so the gateway's own
//! answers (401, 403, 429, 502 …) carry it as well as proxied ones, and a
//! plain-HTTP response never does.

use pingora::proxy::Session;

/// One year, without `includeSubDomains` or `preload`: those commit
/// hosts the gateway does not serve, which only the operator can decide
/// (an upstream that wants them sends its own header, which wins).
pub const HSTS: &str = "max-age=31536000";

/// Whether the client reached us through our TLS listener (HTTP/1.1 or
/// HTTP/2). A claim in `X-Forwarded-Proto` does not count here.
pub fn downstream_is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}
