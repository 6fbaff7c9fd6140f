//! What the proxy does differently for requests that came in over its own
//! TLS listener (DESIGN §3 "Edge: TLS, HTTP/2, route options, hot
//! reload"): the upstream is told `X-Forwarded-Proto: https`, and with
//! `proxy.security_headers` every response carries HSTS unless the
//! upstream sent its own.
//!
//! HSTS is a Pingora downstream module rather than a line in
//! `response_filter`: modules see every response written to the client,
//! so the gateway's own answers (401, 403, 429, 502 …) carry it as well as
//! proxied ones. The module is only registered when both TLS and security
//! headers are configured, and only turned on for TLS connections, so a
//! plain-HTTP response never carries it and a gateway without TLS pays
//! nothing.

use std::any::Any;

use async_trait::async_trait;
use http::header::STRICT_TRANSPORT_SECURITY;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
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

/// Registers the HSTS module; call only when `proxy.tls` is set and
/// `proxy.security_headers` is true.
pub fn add_hsts_module(modules: &mut HttpModules) {
    modules.add_module(Box::new(HstsBuilder));
}

/// Turns HSTS on for this request's response when the client came over
/// TLS. A no-op when the module is not registered.
pub fn on_request(session: &mut Session) {
    let tls = downstream_is_tls(session);
    if let Some(m) = session.downstream_modules_ctx.get_mut::<Hsts>() {
        m.on = tls;
    }
}

struct HstsBuilder;

impl HttpModuleBuilder for HstsBuilder {
    fn init(&self) -> Module {
        Box::new(Hsts { on: false })
    }
}

/// Per request: whether to add HSTS to the response header.
pub struct Hsts {
    on: bool,
}

#[async_trait]
impl HttpModule for Hsts {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if self.on && !resp.headers.contains_key(STRICT_TRANSPORT_SECURITY) {
            resp.insert_header(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS))?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hsts_only_when_on_and_never_over_the_upstreams_own() {
        let mut m = Hsts { on: false };
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        m.response_header_filter(&mut resp, false)
            .await
            .expect("filter");
        assert!(resp.headers.get(STRICT_TRANSPORT_SECURITY).is_none());
        m.on = true;
        m.response_header_filter(&mut resp, false)
            .await
            .expect("filter");
        assert_eq!(resp.headers[STRICT_TRANSPORT_SECURITY], HSTS);
        let mut own = ResponseHeader::build(200, None).expect("resp");
        own.insert_header(STRICT_TRANSPORT_SECURITY, "max-age=60")
            .expect("header");
        m.response_header_filter(&mut own, false)
            .await
            .expect("filter");
        assert_eq!(
            own.headers
                .get_all(STRICT_TRANSPORT_SECURITY)
                .iter()
                .count(),
            1
        );
        assert_eq!(own.headers[STRICT_TRANSPORT_SECURITY], "max-age=60");
    }
}
