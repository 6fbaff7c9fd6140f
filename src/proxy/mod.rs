//! The proxy service: one `ProxyHttp` impl and one typed request context.
//!
//! `request_filter` normalises the path ([`crate::http_path`]), then resolves
//! route → key → scopes → rate limits and answers
//! denials itself (complete JSON responses, keep-alive intact);
//! `upstream_peer` only picks a target; `upstream_request_filter` strips the
//! credential and adds identity headers; `response_filter` stamps the
//! request id and the rate-limit headers; `logging` records metrics.
//! Nothing here waits on Postgres; only the `redis` rate-limit backend
//! makes one bounded call per request.

pub mod cors;
pub mod deprecation;
pub mod edge;
pub mod edge_headers;
pub mod errors;
pub mod log_limit;
pub mod routing;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use self::errors::{write_error, ProxyError};
use self::log_limit::WarnLimiter;
use self::routing::normalize_host;
use crate::config::{AuthMode, Config, JwtConfig};
use crate::http_path;
use crate::identity::{self, auth_reason, bearer_token, client_ip, Authenticator, Credential};
use crate::jwt::{Jwt, JwtIdentity, TokenError};
use crate::keys::format::KeyHasher;
use crate::keys::scope::{first_missing, Scope};
use crate::keys::snapshot::{Authenticated, KeyRecord, KeyStore, PreviousSecret};
use crate::limits::{headers, token_subject, Decision, RateLimiter, Verdict};
use crate::reqlog::capture::{self, BodyCapture, RequestLog};
use crate::reqlog::record::RequestRecord;
use crate::route::{Route, Routes};
use crate::service::last_used::LastUsedTracker;
use crate::service::miss::MissLookups;

/// Counts requests in flight, for a graceful shutdown that ends as soon as
/// the last one finishes.
#[derive(Debug, Default)]
pub struct Inflight(AtomicUsize);

impl Inflight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Decrements [`Inflight`] when the request context is dropped.
pub struct InflightGuard(Arc<Inflight>);

impl InflightGuard {
    fn new(counter: &Arc<Inflight>) -> Self {
        counter.0.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct GatewayProxy {
    /// The published route table; each request loads it once and keeps
    /// its `Arc<Route>`.
    routes: Routes,
    auth: Authenticator,
    /// Verifies bearer tokens that are not gateway keys; disabled (every
    /// token refused) unless [`GatewayProxy::with_jwt`] gave it issuers.
    jwt: Arc<Jwt>,
    last_used: LastUsedTracker,
    inflight: Arc<Inflight>,
    limiter: Arc<RateLimiter>,
    /// Rate limit for the "request failed" warning.
    failure_log: WarnLimiter,
    /// Request-log capture (rollups, sampling, the writer's queue).
    request_log: RequestLog,
    /// `proxy.security_headers`, for [`edge_headers`].
    security_headers: bool,
}

/// Per-request state shared across the filters.
pub struct RequestCtx {
    started: Instant,
    /// The client's `X-Request-ID` or a new one; forwarded and echoed.
    request_id: HeaderValue,
    route: Option<Arc<Route>>,
    key: Option<Arc<KeyRecord>>,
    /// The caller when it came with a verified token instead of a key.
    token: Option<JwtIdentity>,
    /// The rate-limit state the response headers describe.
    limits: Option<Decision>,
    /// Set when the caller used a secret replaced by a rotation, still in
    /// its grace period: answered with `Deprecation` and `Sunset`.
    previous_secret: Option<PreviousSecret>,
    /// Bit set of target indexes already tried for this request.
    tried: u64,
    target: Option<usize>,
    upstream_started: Option<Instant>,
    upstream_header_time: Option<Duration>,
    /// Set when `request_filter` answered the request itself, or to the
    /// code `fail_to_proxy` answered with.
    denied: Option<&'static str>,
    /// Request start on the wall clock: the request log's `ts` and UUIDv7.
    started_at: SystemTime,
    /// The client IP as the limiter sees it (trusted proxies resolved).
    client_ip: Option<IpAddr>,
    /// The first bodies' bytes, only on `log_bodies` routes with request
    /// logs on; `None` everywhere else, so nothing is copied.
    request_body: Option<BodyCapture>,
    response_body: Option<BodyCapture>,
    /// Route options decided for this request (body limit, encoding).
    edge: edge::EdgeState,
    _inflight: InflightGuard,
}

impl RequestCtx {
    fn request_id(&self) -> &str {
        // Only ever a client's validated id or a UUID: visible ASCII.
        self.request_id.to_str().unwrap_or("")
    }
}

impl GatewayProxy {
    pub fn new(
        cfg: &Config,
        routes: Routes,
        keys: Arc<KeyStore>,
        hasher: KeyHasher,
        last_used: LastUsedTracker,
        inflight: Arc<Inflight>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            routes,
            auth: Authenticator::new(keys, hasher, cfg.keys.prefix.clone()),
            jwt: Jwt::new(&JwtConfig::default()),
            last_used,
            inflight,
            limiter,
            failure_log: WarnLimiter::new(log_limit::WARN_EVERY),
            request_log: RequestLog::disabled(),
            security_headers: cfg.proxy.security_headers,
        }
    }

    /// Captures every request into the request log (DESIGN §3 "Request
    /// logs and traffic statistics").
    pub fn with_request_log(mut self, log: RequestLog) -> Self {
        self.request_log = log;
        self
    }

    /// Accepts bearer tokens from `jwt`'s issuers on `auth = "required"`
    /// and `"jwt"` routes (DESIGN §3 "JWT and roles"). The same handle the
    /// JWKS refresher keeps current.
    pub fn with_jwt(mut self, jwt: Arc<Jwt>) -> Self {
        self.jwt = jwt;
        self
    }

    /// Looks keys missing from the snapshot up in Postgres (DESIGN §3
    /// "API keys" → "Visibility").
    pub fn with_miss_lookups(mut self, misses: Arc<MissLookups>) -> Self {
        self.auth = self.auth.with_miss_lookups(misses);
        self
    }

    fn is_trusted(&self, ip: Option<IpAddr>) -> bool {
        let trusted = &self.limiter.policy().trusted_proxies;
        ip.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)))
    }

    /// Resolves the caller (a key or a token, as the route's `auth`
    /// allows) and checks the route's scopes for this method. The error
    /// carries the `gateway_auth_failures_total` reason label. A caller
    /// refused for its scopes is kept in `ctx` for the request log.
    async fn authorize(
        &self,
        req: &RequestHeader,
        route: &Route,
        ctx: &mut RequestCtx,
    ) -> Result<Caller, (&'static str, ProxyError)> {
        let caller = self.authenticate(req, route.auth).await?;
        let held: &[Scope] = match &caller {
            Caller::Key(auth) => &auth.record.scopes,
            Caller::Token(token) => &token.scopes,
        };
        for required in route.required_scopes(&req.method) {
            if let Some(missing) = first_missing(held, required) {
                let missing = missing.clone();
                let err = match caller {
                    Caller::Key(auth) => {
                        ctx.key = Some(auth.record);
                        ProxyError::InsufficientScope(missing)
                    }
                    Caller::Token(token) => {
                        ctx.token = Some(token);
                        ProxyError::TokenInsufficientScope(missing)
                    }
                };
                return Err((auth_reason::INSUFFICIENT_SCOPE, err));
            }
        }
        Ok(caller)
    }

    /// Who is calling, by the credential the request presents and what
    /// `mode` accepts (DESIGN §3 "JWT and roles"):
    /// - `X-API-Key`, or a bearer value with the key prefix, is a key; any
    ///   other bearer value is a token (see [`identity::classify`]);
    /// - `required` takes either (tokens only when an issuer is
    ///   configured), `api_key` only keys: a token there is refused as an
    ///   invalid key without reaching the verifier;
    /// - `jwt` takes only tokens: a key there is refused `invalid_token`,
    ///   and a request without one gets `missing_token`.
    ///
    /// A request carrying two different credentials is refused whatever
    /// the mode, so a caller never picks which one is checked.
    async fn authenticate(
        &self,
        req: &RequestHeader,
        mode: AuthMode,
    ) -> Result<Caller, (&'static str, ProxyError)> {
        let jwt_only = mode == AuthMode::Jwt;
        let takes_tokens = jwt_only || (mode == AuthMode::Required && self.jwt.is_enabled());
        let credential = match self.auth.classify(req) {
            Ok(c) => c,
            Err(_) if jwt_only => {
                return Err((
                    auth_reason::MALFORMED,
                    ProxyError::InvalidToken("Send one bearer token, in one Authorization header."),
                ))
            }
            Err(why) => return Err((auth_reason::MALFORMED, ProxyError::InvalidApiKey(why))),
        };
        match credential {
            None if jwt_only => Err((auth_reason::MISSING, ProxyError::MissingToken)),
            None => Err((auth_reason::MISSING, ProxyError::MissingApiKey)),
            Some(Credential::Key(_)) if jwt_only => Err((
                auth_reason::KEY_ON_JWT_ROUTE,
                ProxyError::InvalidToken(
                    "This route accepts only bearer tokens from a configured issuer, not API keys.",
                ),
            )),
            Some(Credential::Key(key)) => self.auth.authenticate_key(key).await.map(Caller::Key),
            // Boxed: a verification may wait on a JWKS re-fetch, and the
            // key path must not pay to build or move that future.
            Some(Credential::Token(token)) if takes_tokens => {
                match Box::pin(self.jwt.verify(token)).await {
                    Ok(identity) => Ok(Caller::Token(identity)),
                    Err(TokenError::Expired) => {
                        Err((auth_reason::EXPIRED_TOKEN, ProxyError::ExpiredToken))
                    }
                    Err(TokenError::Invalid(why)) => {
                        Err((auth_reason::INVALID_TOKEN, ProxyError::InvalidToken(why)))
                    }
                }
            }
            Some(Credential::Token(_)) => Err((auth_reason::MALFORMED, identity::INVALID_KEY)),
        }
    }
}

/// An authenticated caller.
enum Caller {
    Key(Authenticated),
    Token(JwtIdentity),
}

impl GatewayProxy {
    async fn deny(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: ProxyError,
    ) -> Result<bool> {
        ctx.denied = Some(err.code());
        write_error(session, &err, ctx.request_id(), &[]).await?;
        Ok(true)
    }

    /// Answers 429 for the blocking tier of `d`, with the rate-limit headers.
    async fn deny_limited(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        d: &Decision,
    ) -> Result<bool> {
        let tier = d.headline_name();
        let route: metrics::SharedString = ctx
            .route
            .as_ref()
            .map_or(metrics::SharedString::const_str("none"), |r| {
                r.name.clone().into()
            });
        metrics::counter!("gateway_rate_limited_total", "tier" => tier, "route" => route)
            .increment(1);
        let err = ProxyError::RateLimited(tier);
        ctx.denied = Some(err.code());
        let extra = headers::render_as(d, self.limiter.policy().headers);
        write_error(session, &err, ctx.request_id(), &extra).await?;
        Ok(true)
    }

    /// Checks and counts the request's tiers; true when the request was
    /// refused and answered here.
    async fn enforce_limits(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        ip: Option<std::net::IpAddr>,
    ) -> Result<bool> {
        if let Some(redis) = self.limiter.redis() {
            // From the first request on, Redis I/O runs on this runtime.
            redis.serve_from_this_runtime();
        }
        // The policy guard is dropped before the check awaits.
        let tiers = {
            let policy = self.limiter.policy();
            match (&ctx.key, &ctx.token) {
                (Some(key), _) => policy.key_tiers(key, route),
                (None, Some(t)) => {
                    policy.token_tiers(token_subject(&t.issuer, &t.subject), t.limits, route)
                }
                (None, None) => policy.anonymous_tiers(ip, route),
            }
        };
        if tiers.is_empty() {
            return Ok(false);
        }
        match self.limiter.check(route, &tiers).await {
            Verdict::Admitted(d) => {
                ctx.limits = Some(d);
                Ok(false)
            }
            Verdict::Limited(d) => self.deny_limited(session, ctx, &d).await,
            Verdict::FailedOpen => Ok(false),
            Verdict::FailedClosed => {
                let err = ProxyError::RateLimiterUnavailable;
                ctx.denied = Some(err.code());
                write_error(
                    session,
                    &err,
                    ctx.request_id(),
                    &[("retry-after", "1".to_string())],
                )
                .await?;
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    /// CORS, security and deprecation headers on every response, and our
    /// compression module instead of Pingora's (disabled) default: see
    /// [`edge_headers`] and [`edge::Compression`].
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        edge_headers::init_modules(modules, self.security_headers);
        modules.add_module(edge::CompressionBuilder::module());
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: HeaderValue::from_static(""),
            route: None,
            key: None,
            token: None,
            limits: None,
            previous_secret: None,
            tried: 0,
            target: None,
            upstream_started: None,
            upstream_header_time: None,
            denied: None,
            started_at: SystemTime::now(),
            client_ip: None,
            request_body: None,
            response_body: None,
            edge: edge::EdgeState::default(),
            _inflight: InflightGuard::new(&self.inflight),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        edge_headers::note_tls(session);
        ctx.request_id = identity::request_id_value(session.req_header());
        // Rewritten in place, so routing, scopes, limits, metrics, logs and
        // the request sent upstream (a copy of this header) all see the
        // normalised path.
        if let Err(e) = http_path::normalize_request(session.req_header_mut()) {
            return self
                .deny(session, ctx, ProxyError::BadRequest(e.message()))
                .await;
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .map(normalize_host);
        let path = req.uri.path();
        // One load of the table; the request keeps its route (and so its
        // upstream) even if a reload swaps the table meanwhile.
        let found = self
            .routes
            .load()
            .find_for(host.as_deref(), path, &req.headers)
            .cloned();
        let Some(route) = found else {
            return self.deny(session, ctx, ProxyError::RouteNotFound).await;
        };
        ctx.route = Some(route.clone());
        edge_headers::stamp_route(session, &route);
        if route.log_bodies && self.request_log.config().is_some() {
            ctx.request_body = Some(BodyCapture::default());
            ctx.response_body = Some(BodyCapture::default());
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        ctx.client_ip = client_ip(req, peer, &self.limiter.policy().trusted_proxies);
        // Before authentication: a refused network needs no key, and causes
        // no key lookup.
        if !edge::ip_allowed(&route.options, ctx.client_ip) {
            return self.deny(session, ctx, ProxyError::IpForbidden).await;
        }
        edge::note_accept_encoding(&mut ctx.edge, &route, req);
        let client = self.limiter.client(ctx.client_ip);
        if self.answer_at_edge(session, ctx, &route, &client).await? {
            return Ok(true);
        }
        let req = session.req_header();
        if route.auth.needs_credential() {
            if let Some(d) = self.limiter.guard_blocked(&client) {
                return self.deny_limited(session, ctx, &d).await;
            }
            match self.authorize(req, &route, ctx).await {
                Ok(Caller::Key(auth)) => {
                    self.last_used.record(&auth.record);
                    ctx.key = Some(auth.record);
                    ctx.previous_secret = auth.previous_secret;
                }
                Ok(Caller::Token(token)) => ctx.token = Some(token),
                Err((reason, e)) => {
                    metrics::counter!("gateway_auth_failures_total", "reason" => reason)
                        .increment(1);
                    self.limiter.record_auth_failure(&client, reason);
                    return self.deny(session, ctx, e).await;
                }
            }
        }
        if !client.exempt
            && self
                .enforce_limits(session, ctx, &route, client.bucket)
                .await?
        {
            return Ok(true);
        }
        // Last, so only a caller that may call the route makes us read.
        if edge::body_too_large(session, route.options.max_body_bytes, &mut ctx.edge).await? {
            // The rest of the body is not worth draining.
            session.set_keepalive(None);
            return self.deny(session, ctx, ProxyError::PayloadTooLarge).await;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.as_ref() else {
            return Err(Error::explain(ErrorType::InternalError, "no route chosen"));
        };
        let up = &route.upstream;
        let Some(idx) = up.select(ctx.tried, Instant::now()) else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "every upstream target failed",
            ));
        };
        ctx.tried |= 1 << idx;
        ctx.target = Some(idx);
        let mut peer = HttpPeer::new(up.targets[idx].addr, false, String::new());
        if let Some(t) = &up.tls {
            t.apply(&mut peer);
        }
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(idx)) = (ctx.route.as_ref(), ctx.target) {
            route.upstream.mark_down(idx, Instant::now());
            // Nothing reached the upstream, so any method may go elsewhere.
            let n = route.upstream.targets.len() as u32;
            e.set_retry(ctx.tried.count_ones() < n);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // First, so the gateway's own headers below always win.
        if let Some(route) = ctx.route.as_ref() {
            edge::upstream_request(upstream, route, &ctx.edge)?;
        }
        // The credential never leaves the gateway. On auth = "none" routes an
        // Authorization header of another scheme is the upstream's business.
        upstream.remove_header("x-api-key");
        let auth_required = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.auth.needs_credential());
        let carries_gateway_key = || {
            upstream
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .is_some_and(|token| self.auth.is_gateway_key(token))
        };
        // A token caller's issuer may ask for its token to go on
        // (`forward_token`); a key never does.
        let forward_token = ctx.token.as_ref().is_some_and(|t| t.forward_token);
        if !forward_token && (auth_required || carries_gateway_key()) {
            upstream.remove_header(http::header::AUTHORIZATION.as_str());
        }
        upstream.insert_header("x-request-id", ctx.request_id.clone())?;

        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = self.is_trusted(peer_ip);
        // Every line of a trusted proxy's chain, read as client_ip reads it.
        let prior = trusted
            .then(|| {
                identity::forwarded_for(&upstream.headers)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|chain| !chain.is_empty());
        match (prior, peer_ip) {
            (Some(prior), Some(ip)) => {
                upstream.insert_header("x-forwarded-for", format!("{prior}, {ip}"))?
            }
            (None, Some(ip)) => upstream.insert_header("x-forwarded-for", ip.to_string())?,
            (_, None) => {
                upstream.remove_header("x-forwarded-for");
            }
        }
        // Our own TLS listener is authoritative; on plain HTTP only a
        // trusted proxy may say the client used https.
        if tls::downstream_is_tls(session) {
            upstream.insert_header("x-forwarded-proto", HeaderValue::from_static("https"))?;
        } else if !(trusted && upstream.headers.contains_key("x-forwarded-proto")) {
            upstream.insert_header("x-forwarded-proto", HeaderValue::from_static("http"))?;
        }
        // Other claims about the client or the host it asked for: only a
        // trusted proxy may make them.
        if !trusted {
            for name in ["forwarded", "x-real-ip", "x-forwarded-host"] {
                upstream.remove_header(name);
            }
        }
        // Never let a client claim an identity: whatever it sent under
        // these names is dropped, and only the gateway's own say is added.
        for name in IDENTITY_HEADERS {
            upstream.remove_header(name);
        }
        if let Some(k) = &ctx.key {
            upstream.insert_header("x-gateway-key-id", identity::uuid_value(&k.id))?;
        } else if let Some(t) = &ctx.token {
            upstream.insert_header("x-gateway-subject", identity::subject_value(&t.subject))?;
            upstream.insert_header("x-gateway-issuer", identity::subject_value(&t.issuer))?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(t) = ctx.upstream_started {
            ctx.upstream_header_time = Some(t.elapsed());
        }
        if let (Some(route), Some(idx)) = (ctx.route.as_ref(), ctx.target) {
            route.upstream.mark_up(idx);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Only upstream responses come here, never the gateway's own errors.
        if let Some(route) = ctx.route.as_ref() {
            edge::apply_response_rules(resp, &route.options.response_headers)?;
            edge::compress_response(session, resp, route, &ctx.edge)?;
        }
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(d) = &ctx.limits {
            let cache = ctx.route.as_deref().map(|r| &r.rate_limit_headers);
            for (name, value) in headers::values(d, self.limiter.policy().headers, cache) {
                resp.insert_header(name, value)?;
            }
        }
        if let Some(prev) = &ctx.previous_secret {
            for (name, value) in identity::deprecation_headers(prev) {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        edge::count_body(&mut ctx.edge, body.as_ref())?;
        if let (Some(cap), Some(chunk), Some(cfg)) = (
            ctx.request_body.as_mut(),
            body.as_ref(),
            self.request_log.config(),
        ) {
            cap.push(chunk, cfg.max_body_bytes);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some(cap), Some(chunk), Some(cfg)) = (
            ctx.response_body.as_mut(),
            body.as_ref(),
            self.request_log.config(),
        ) {
            cap.push(chunk, cfg.max_body_bytes);
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `logging` reports failures with the request id instead.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(ProxyError::UpstreamTimeout)
            }
            ErrorType::HTTPStatus(413) => Some(ProxyError::PayloadTooLarge),
            ErrorType::HTTPStatus(code) if (400..500).contains(code) => {
                Some(ProxyError::BadRequest("The request is malformed."))
            }
            _ => match e.esource() {
                ErrorSource::Upstream => Some(ProxyError::UpstreamUnavailable),
                ErrorSource::Downstream => match e.etype() {
                    // The client is gone; nobody to answer.
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(ProxyError::BadRequest("The request is malformed.")),
                },
                ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                    ErrorType::ConnectNoRoute
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectError
                    | ErrorType::SocketError => Some(ProxyError::UpstreamUnavailable),
                    _ => Some(ProxyError::Internal),
                },
            },
        };
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if ctx.request_id.is_empty() {
            ctx.request_id = identity::new_request_id();
        }
        ctx.denied = Some(err.code());
        // Once the upstream's header went out, the response cannot change.
        let mut answered = false;
        if session.response_written().is_none() {
            let style = self.limiter.policy().headers;
            let limits = ctx
                .limits
                .as_ref()
                .map(|d| headers::render_as(d, style))
                .unwrap_or_default();
            match write_error(session, &err, ctx.request_id(), &limits).await {
                Ok(()) => answered = true,
                Err(write_err) => {
                    tracing::debug!(request_id = ctx.request_id(), error = %write_err, "could not send error response")
                }
            }
        }
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: answered && reusable_after(e) && session.is_body_done(),
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let method = &session.req_header().method;
        let m = ctx
            .route
            .as_ref()
            .map_or(crate::route::metrics::no_route(), |r| &r.metrics);
        m.count_request(method, status);
        m.duration().record(ctx.started.elapsed().as_secs_f64());
        if let Some(t) = ctx.upstream_header_time {
            m.upstream_duration().record(t.as_secs_f64());
        }
        deprecation::count_call(session, ctx);
        if self.request_log.config().is_some() {
            let record = self.record(session, status, ctx);
            self.request_log.submit(record);
        }
        let route = ctx.route.as_ref().map_or("none", |r| &*r.name);
        if let Some(e) = e {
            let client_gone = e.esource() == &ErrorSource::Downstream
                && matches!(
                    e.etype(),
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
                );
            if client_gone {
                tracing::debug!(request_id = ctx.request_id(), route, error = %e, "client went away");
            } else if let Some(suppressed) = self.failure_log.admit(route, Instant::now()) {
                tracing::warn!(request_id = ctx.request_id(), route, status, error = %e, suppressed, "request failed");
            } else {
                tracing::debug!(request_id = ctx.request_id(), route, status, error = %e, "request failed");
            }
        }
    }
}

impl GatewayProxy {
    /// The request-log record of a finished request, from its context.
    /// Only the path, query and user agent are copied (bodies aside, and
    /// only on `log_bodies` routes); the rest are clones of shared values.
    fn record(&self, session: &Session, status: u16, ctx: &mut RequestCtx) -> RequestRecord {
        let cfg = self.request_log.config();
        let req = session.req_header();
        let since_epoch = ctx
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            since_epoch.as_secs(),
            since_epoch.subsec_nanos(),
        ));
        // The client IP is resolved in `request_filter`; a request refused
        // before that (a malformed path) is resolved here, the same way.
        let client_ip = ctx.client_ip.or_else(|| {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            client_ip(req, peer, &self.limiter.policy().trusted_proxies)
        });
        let upstream = match (ctx.route.as_ref(), ctx.target) {
            (Some(r), Some(idx)) => r.upstream.targets.get(idx).map(|t| t.addr),
            _ => None,
        };
        let query = req.uri.query().map(|q| {
            let names = cfg.map_or(&[][..], |c| &c.redact_query_params[..]);
            Box::<str>::from(crate::reqlog::redact::query(q, names))
        });
        let user_agent = req.headers.get(http::header::USER_AGENT).map(|v| {
            let ua = String::from_utf8_lossy(v.as_bytes());
            capture::truncate(&ua, capture::MAX_USER_AGENT_BYTES).into()
        });
        let max = cfg.map_or(0, |c| c.max_body_bytes);
        let body = |b: Option<BodyCapture>| {
            b.filter(|b| !b.bytes().is_empty())
                .map(|b| capture::pg_safe(crate::reqlog::redact::body(b.bytes(), max)).into())
        };
        RequestRecord {
            id,
            ts: chrono::DateTime::<chrono::Utc>::from(ctx.started_at),
            request_id: ctx.request_id.clone(),
            key_id: ctx.key.as_ref().map(|k| k.id),
            route: ctx.route.as_ref().map(|r| r.name.clone()),
            method: req.method.clone(),
            path: req.uri.path().into(),
            query,
            status,
            error_code: ctx.denied,
            latency_ms: ctx.started.elapsed().as_secs_f64() * 1e3,
            upstream_latency_ms: ctx.upstream_header_time.map(|t| t.as_secs_f64() * 1e3),
            upstream,
            request_bytes: session.body_bytes_read() as u64,
            response_bytes: session.body_bytes_sent() as u64,
            client_ip,
            user_agent,
            request_body: body(ctx.request_body.take()),
            response_body: body(ctx.response_body.take()),
        }
    }
}

/// The headers that tell the upstream who called; only the gateway sets them.
const IDENTITY_HEADERS: [&str; 3] = ["x-gateway-key-id", "x-gateway-subject", "x-gateway-issuer"];

/// Whether the client connection may serve another request after `e`,
/// given that the error response went out whole and the request body was
/// read to its end. (Pingora asks only for failures before proxying; once
/// proxying started, it decides from the upstream exchange itself.)
/// Pingora's default is never, and we keep it for anything the client's
/// bytes may have caused (a malformed header or body, a protocol error, an
/// error status a module raised): what follows on that connection cannot be
/// trusted to start a new request. Only a failure to reach the upstream
/// leaves the client's stream in a known state.
fn reusable_after(e: &Error) -> bool {
    let connecting = matches!(
        e.etype(),
        ErrorType::ConnectNoRoute
            | ErrorType::ConnectRefused
            | ErrorType::ConnectTimedout
            | ErrorType::ConnectError
    );
    match e.esource() {
        ErrorSource::Downstream => false,
        _ if matches!(e.etype(), ErrorType::HTTPStatus(_)) => false,
        ErrorSource::Upstream => true,
        ErrorSource::Internal | ErrorSource::Unset => connecting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upstream_side_failures_leave_the_connection_reusable() {
        let down = |t: ErrorType| *Error::new(t).into_down();
        let up = |t: ErrorType| *Error::new(t).into_up();
        let invalid_chunk = ErrorType::new("InvalidChunk");
        for e in [
            down(invalid_chunk.clone()),
            down(ErrorType::InvalidHTTPHeader),
            down(ErrorType::ReadError),
            down(ErrorType::ReadTimedout),
            up(ErrorType::HTTPStatus(400)),
            *Error::new(ErrorType::HTTPStatus(413)),
            *Error::new(ErrorType::InternalError),
        ] {
            assert!(!reusable_after(&e), "{e}");
        }
        for e in [
            up(ErrorType::ConnectRefused),
            up(ErrorType::ReadTimedout),
            *Error::new(ErrorType::ConnectNoRoute),
        ] {
            assert!(reusable_after(&e), "{e}");
        }
    }

    /// Every helper that sees raw client input, fed random input: none may
    /// panic. Seeded (`GATEWAY_TEST_SEED` replays a run); a panic names
    /// the seed and the input.
    #[test]
    fn client_input_helpers_never_panic() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("GATEWAY_TEST_SEED").map_or(20_261_129, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("GATEWAY_TEST_SEED={v:?} is not a u64"))
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let alphabet: Vec<char> = "[]:/.%2eE\\ abcAB09_-é\u{0}\u{7f}gw_live_Bearer "
            .chars()
            .collect();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..48);
            let s: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let _guard = PanicNote(format!("GATEWAY_TEST_SEED={seed}, input {s:?}"));
            let _ = routing::normalize_host(&s);
            let _ = http_path::normalize(&s);
            let _ = crate::keys::format::verify(&s, "gw_live_");
            let _ = identity::valid_request_id(s.as_bytes());
            let _ = crate::keys::format::display_prefix(&s, "gw_live_");
            if let Ok(v) = http::HeaderValue::from_str(&s) {
                let mut r = RequestHeader::build("GET", b"/", None).expect("request");
                r.insert_header("authorization", v.clone()).expect("header");
                r.insert_header("x-api-key", v).expect("header");
                let _ = identity::credential(&r);
            }
        }
    }

    /// Prints its note if dropped while the test panics.
    struct PanicNote(String);

    impl Drop for PanicNote {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("panicked with {}", self.0);
            }
        }
    }
}
