//! The response headers a route's edge policy adds to EVERY response of a
//! request, the upstream's and the gateway's own alike: CORS
//! ([`super::cors`]), deprecation ([`super::deprecation`]) and the
//! security headers of `proxy.security_headers`; and the requests the
//! gateway answers at the edge before any authentication: CORS preflights
//! and a sunset route's 410.
//!
//! The hook is a Pingora downstream module ([`EdgeHeaders`]), not
//! `response_filter`: denials are written by `write_error` straight from
//! `request_filter` or `fail_to_proxy` and never pass `response_filter`,
//! but every response header, whoever wrote it, passes the downstream
//! modules (`Session::write_response_header` and the proxied response
//! alike). `request_filter` tells the module the request's route and
//! allowed origin ([`stamp_route`]); the module does the rest.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use http::header::{ORIGIN, STRICT_TRANSPORT_SECURITY};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora::proxy::Session;

use super::errors::write_error;
use super::tls::HSTS;
use super::{cors, deprecation, GatewayProxy, RequestCtx};
use crate::limits::{Client, Verdict};
use crate::route::Route;

/// The security headers of `proxy.security_headers`, each added only when
/// the response does not carry that header already (the upstream knows
/// better, e.g. a page meant to be framed). HSTS ([`HSTS`]) is added the
/// same way, only for clients of the TLS listener.
const SECURITY_HEADERS: [(&str, HeaderValue); 3] = [
    (
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    ),
    ("x-frame-options", HeaderValue::from_static("DENY")),
    ("referrer-policy", HeaderValue::from_static("no-referrer")),
];

/// Per-request state of the edge-header module.
pub struct EdgeHeaders {
    security: bool,
    /// The route, when it has a CORS policy or a deprecation.
    route: Option<Arc<Route>>,
    /// `Access-Control-Allow-Origin` for actual responses (see
    /// [`cors::allowed_origin`]).
    origin: Option<HeaderValue>,
    /// The response is the gateway's own preflight answer, complete as
    /// written: only the security headers are added.
    preflight: bool,
    /// The client came over our TLS listener: with `security`, HSTS too.
    tls: bool,
}

#[async_trait]
impl HttpModule for EdgeHeaders {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        // 1xx are interim: the final response gets the headers.
        if resp.status.is_informational() {
            return Ok(());
        }
        if let (Some(route), false) = (&self.route, self.preflight) {
            if let Some(c) = &route.options.cors {
                cors::stamp_actual(c, self.origin.as_ref(), resp)?;
            }
            if let Some(d) = &route.options.deprecation {
                deprecation::stamp(d, resp)?;
            }
        }
        if self.security {
            for (name, value) in &SECURITY_HEADERS {
                if !resp.headers.contains_key(*name) {
                    resp.insert_header(*name, value.clone())?;
                }
            }
            if self.tls && !resp.headers.contains_key(STRICT_TRANSPORT_SECURITY) {
                resp.insert_header(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS))?;
            }
        }
        Ok(())
    }
}

struct EdgeHeadersBuilder {
    security: bool,
}

impl HttpModuleBuilder for EdgeHeadersBuilder {
    fn init(&self) -> Module {
        Box::new(EdgeHeaders {
            security: self.security,
            route: None,
            origin: None,
            preflight: false,
            tls: false,
        })
    }
}

/// Adds [`EdgeHeaders`] to the proxy's downstream modules (compression is
/// `proxy::edge`'s own module, added beside it).
pub fn init_modules(modules: &mut HttpModules, security_headers: bool) {
    modules.add_module(Box::new(EdgeHeadersBuilder {
        security: security_headers,
    }));
}

/// Tells the module whether the client came over our TLS listener (HSTS
/// with `proxy.security_headers`); call first thing, so every response of
/// the request, a 404 included, is covered.
pub fn note_tls(session: &mut Session) {
    let tls = super::tls::downstream_is_tls(session);
    if let Some(m) = session.downstream_modules_ctx.get_mut::<EdgeHeaders>() {
        m.tls = tls;
    }
}

/// Tells the module which route the request took: call as soon as the
/// route is known, so every later response, denials included, carries
/// the route's CORS and deprecation headers.
pub fn stamp_route(session: &mut Session, route: &Arc<Route>) {
    let opts = &route.options;
    if opts.cors.is_none() && opts.deprecation.is_none() {
        return;
    }
    let origin = opts
        .cors
        .as_ref()
        .and_then(|c| cors::allowed_origin(c, session.req_header().headers.get(ORIGIN)));
    if let Some(m) = session.downstream_modules_ctx.get_mut::<EdgeHeaders>() {
        m.route = Some(route.clone());
        m.origin = origin;
    }
}

impl GatewayProxy {
    /// Answers what the gateway answers itself before authentication:
    /// a CORS preflight on a route with a `cors` policy (204 with the
    /// policy, 403 `cors_rejected`, or 429 when the client's per-IP
    /// anonymous tiers are used up), and 410 `route_sunset` on a route
    /// past its sunset. True when answered.
    pub(super) async fn answer_at_edge(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        client: &Client,
    ) -> pingora::Result<bool> {
        if let Some(c) = &route.options.cors {
            if cors::is_preflight(session.req_header()) {
                if let Some(m) = session.downstream_modules_ctx.get_mut::<EdgeHeaders>() {
                    m.preflight = true;
                }
                return self.answer_preflight(session, ctx, c, client).await;
            }
        }
        if let Some(err) = deprecation::sunset_error(route, chrono::Utc::now()) {
            // No key needed to learn a route is gone; a key the snapshot
            // holds still names the caller in the metric and the log.
            ctx.key = self.auth.identify(session.req_header());
            ctx.denied = Some(err.code());
            write_error(session, &err, ctx.request_id(), &[]).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A preflight costs no key, so it is bounded like an anonymous call:
    /// it counts against the client IP's own `[rate_limits] anonymous`
    /// tiers (not the route's, which a flood of preflights could exhaust
    /// for everyone).
    async fn answer_preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        c: &crate::config::CorsConfig,
        client: &Client,
    ) -> pingora::Result<bool> {
        if let (false, Some(ip), Some(route)) = (client.exempt, client.bucket, ctx.route.clone()) {
            let tiers = self.limiter.policy().ip_tiers(ip);
            if !tiers.is_empty() {
                // A backend failure lets the preflight through whatever
                // `on_backend_error` says: it reaches nothing, and the
                // actual request is decided on its own.
                if let Verdict::Limited(d) = self.limiter.check(&route, &tiers).await {
                    return self.deny_limited(session, ctx, &d).await;
                }
            }
        }
        match cors::check_preflight(c, session.req_header()) {
            Ok(origin) => {
                let resp = cors::preflight_response(c, origin, &ctx.request_id)?;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
            Err(err) => {
                // No allow header at all, and the preflight's `Vary`.
                ctx.denied = Some(err.code());
                let vary = [("vary", cors::VARY_PREFLIGHT.to_string())];
                write_error(session, &err, ctx.request_id(), &vary).await?;
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(security: bool, tls: bool) -> EdgeHeaders {
        EdgeHeaders {
            security,
            route: None,
            origin: None,
            preflight: false,
            tls,
        }
    }

    #[tokio::test]
    async fn hsts_only_over_tls_with_security_headers_and_never_over_the_upstreams_own() {
        for (security, tls) in [(false, false), (false, true), (true, false)] {
            let mut resp = ResponseHeader::build(200, None).expect("resp");
            module(security, tls)
                .response_header_filter(&mut resp, false)
                .await
                .expect("filter");
            assert!(resp.headers.get(STRICT_TRANSPORT_SECURITY).is_none());
        }
        let mut m = module(true, true);
        let mut resp = ResponseHeader::build(200, None).expect("resp");
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
