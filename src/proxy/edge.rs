//! Per-request route options (DESIGN §3 "Edge: TLS, HTTP/2, route options,
//! hot reload"): IP rules, the body limit, prefix rewriting, header rules
//! and response compression. The proxy's filters make one short call into
//! each; the options themselves are validated in `config::edge`.

use std::net::IpAddr;

use bytes::Bytes;
use std::io::Write;

use async_trait::async_trait;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, EXPECT, TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module, ModuleBuilder};
use pingora::protocols::http::compression::{Algorithm, Encode};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, OrErr, Result};

use crate::config::{HeaderRules, RouteOptions, BUFFERED_BODY_LIMIT};
use crate::route::Route;

/// Responses shorter than this are sent as they are: below about a KiB the
/// encoding's framing eats most of the saving, and the bytes fit in one
/// packet anyway.
pub const MIN_COMPRESS_BYTES: u64 = 1024;

/// Compression levels: the fast end of each algorithm's range, where most
/// of the ratio is already had (benches/compression.rs measures them).
/// Brotli is a quality (0–11), zstd a level (1–22).
pub const GZIP_LEVEL: u32 = 6;
pub const BROTLI_LEVEL: u32 = 4;
pub const ZSTD_LEVEL: u32 = 3;

/// What the edge options decided for one request.
#[derive(Debug, Default)]
pub struct EdgeState {
    /// Set when the body is counted as it streams (a chunked body on a
    /// route whose limit is above [`BUFFERED_BODY_LIMIT`]).
    streaming_limit: Option<u64>,
    streamed: u64,
    /// The body was read here: the upstream gets it whole, with no
    /// `Expect` to answer.
    buffered: bool,
    /// The encoding the client prefers, on `compress` routes.
    encoding: Option<Encoding>,
}

/// A response encoding the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// Server preference when the client weighs several equally: best
    /// ratio on text first.
    const PREFERENCE: [Encoding; 3] = [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip];

    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    pub fn level(self) -> u32 {
        match self {
            Encoding::Gzip => GZIP_LEVEL,
            Encoding::Brotli => BROTLI_LEVEL,
            Encoding::Zstd => ZSTD_LEVEL,
        }
    }
}

/// Whether `ip` may call a route with `opts`: `deny_ips` first, then, when
/// `allow_ips` is set, only those networks. An unknown client IP passes
/// only a route without `allow_ips`.
pub fn ip_allowed(opts: &RouteOptions, ip: Option<IpAddr>) -> bool {
    match ip {
        Some(ip) => {
            !opts.deny_ips.iter().any(|n| n.contains(&ip))
                && (opts.allow_ips.is_empty() || opts.allow_ips.iter().any(|n| n.contains(&ip)))
        }
        None => opts.allow_ips.is_empty(),
    }
}

/// Checks the request body against `limit` before anything goes upstream;
/// true when it is too large. A declared `Content-Length` is compared
/// directly (framing keeps the body to it). A body of unknown length is
/// read here, whole, when the limit is small enough for Pingora to replay
/// it to the upstream ([`BUFFERED_BODY_LIMIT`]); above that it is counted
/// as it streams ([`count_body`]).
pub async fn body_too_large(
    session: &mut Session,
    limit: Option<u64>,
    state: &mut EdgeState,
) -> Result<bool> {
    let Some(limit) = limit else {
        return Ok(false);
    };
    let declared = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared {
        return Ok(len > limit);
    }
    if session.is_body_empty() || session.is_body_done() {
        return Ok(false);
    }
    if limit > BUFFERED_BODY_LIMIT {
        state.streaming_limit = Some(limit);
        return Ok(false);
    }
    // A client waiting for 100 Continue would otherwise wait for a timeout
    // before it sends what we are about to read.
    let expects_continue = session
        .req_header()
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    state.buffered = true;
    // Pingora keeps what is read from here on and sends it upstream as the
    // body once the upstream is connected (its retry buffer).
    session.enable_retry_buffering();
    let mut read: u64 = 0;
    while let Some(chunk) = session.read_request_body().await? {
        read = read.saturating_add(chunk.len() as u64);
        if read > limit {
            return Ok(true);
        }
    }
    if session.retry_buffer_truncated() {
        // Cannot happen below BUFFERED_BODY_LIMIT; never forward half a body.
        return Err(Error::explain(
            ErrorType::InternalError,
            "request body larger than the replay buffer",
        ));
    }
    Ok(false)
}

/// Counts a streamed body chunk; an error (413) once the body crosses the
/// limit, which aborts the upstream request before its end: the upstream
/// never receives a complete oversized request.
pub fn count_body(state: &mut EdgeState, chunk: Option<&Bytes>) -> Result<()> {
    let (Some(limit), Some(chunk)) = (state.streaming_limit, chunk) else {
        return Ok(());
    };
    state.streamed = state.streamed.saturating_add(chunk.len() as u64);
    if state.streamed > limit {
        return Err(Error::explain(
            ErrorType::HTTPStatus(413),
            "request body crossed max_body_bytes",
        ));
    }
    Ok(())
}

/// The path the upstream receives for the client's normalised `path` on
/// `route`: the matched prefix removed (`strip_prefix`) or replaced
/// (`rewrite_prefix`); `None` when the route forwards the path as it is.
pub fn upstream_path(route: &Route, path: &str) -> Option<String> {
    let o = &route.options;
    if !o.strip_prefix && o.rewrite_prefix.is_none() {
        return None;
    }
    let prefix = route.path_prefix.as_str();
    // What follows the prefix, starting with `/` or empty; a prefix ending
    // in `/` gives its slash back to the rest.
    let cut = if prefix.ends_with('/') {
        prefix.len() - 1
    } else {
        prefix.len()
    };
    let rest = path.get(cut..).unwrap_or("");
    let base = o.rewrite_prefix.as_deref().unwrap_or("");
    Some(match (base, rest) {
        ("", "") => "/".to_string(),
        (base, "") => base.to_string(),
        (base, rest) => format!("{}{rest}", base.trim_end_matches('/')),
    })
}

/// Rewrites the upstream request's path for `route`, keeping the query.
/// Only the copy sent upstream changes: logs and metrics keep the client's
/// (normalised) path.
pub fn rewrite_upstream_path(req: &mut RequestHeader, route: &Route) -> Result<()> {
    let Some(mut target) = upstream_path(route, req.uri.path()) else {
        return Ok(());
    };
    if let Some(q) = req.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    // Built from a normalised path and a validated prefix, so it parses;
    // refuse rather than send something else.
    let uri = http::Uri::try_from(target)
        .map_err(|_| Error::explain(ErrorType::InternalError, "rewritten path is not a URI"))?;
    req.set_uri(uri);
    Ok(())
}

/// Everything the route options change on the request sent upstream:
/// the header rules, the path, and `Expect` once the body was read here.
pub fn upstream_request(req: &mut RequestHeader, route: &Route, state: &EdgeState) -> Result<()> {
    apply_request_rules(req, &route.options.request_headers)?;
    rewrite_upstream_path(req, route)?;
    if state.buffered {
        req.remove_header(&EXPECT);
    }
    Ok(())
}

/// Applies a route's `request_headers`: removals, then sets.
pub fn apply_request_rules(req: &mut RequestHeader, rules: &HeaderRules) -> Result<()> {
    for name in &rules.remove {
        req.remove_header(name);
    }
    for (name, value) in &rules.set {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Applies a route's `response_headers` to an upstream response.
pub fn apply_response_rules(resp: &mut ResponseHeader, rules: &HeaderRules) -> Result<()> {
    for name in &rules.remove {
        resp.remove_header(name);
    }
    for (name, value) in &rules.set {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// The encoding to answer `accept` (an `Accept-Encoding` value) with:
/// the supported coding with the highest q-value (`*` stands for those
/// not named), server preference between equals; `None` when the client
/// sent none or refused them all (q=0).
pub fn choose_encoding(accept: Option<&HeaderValue>) -> Option<Encoding> {
    let text = accept?.to_str().ok()?;
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    for item in text.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            continue;
        }
        let mut q = Some(1000);
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_qvalue(v.trim());
                }
            }
        }
        // A malformed q-value makes the item unusable, not preferred.
        let Some(q) = q else { continue };
        if coding == "*" {
            star = Some(q);
        } else if let Some(i) = Encoding::PREFERENCE
            .iter()
            .position(|e| coding.eq_ignore_ascii_case(e.token()))
        {
            named[i] = Some(q);
        }
    }
    let mut best: Option<(u16, Encoding)> = None;
    for (i, e) in Encoding::PREFERENCE.iter().enumerate() {
        let q = named[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, *e));
        }
    }
    best.map(|(_, e)| e)
}

/// An RFC 9110 qvalue in thousandths: `0`, `1`, `0.xyz`, `1.000`.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{frac:0<3}");
    let thousandths: u16 = digits.parse().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Content types worth compressing: text, JSON, XML, JavaScript, SVG.
/// Already-compressed media (images, video, archives) gain nothing, and
/// an event stream must not be held back by an encoder's buffer.
pub fn compressible_type(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = mime.split_once('/') else {
        return false;
    };
    match kind {
        "text" => sub != "event-stream",
        "application" => {
            matches!(
                sub,
                "json" | "xml" | "javascript" | "x-javascript" | "ecmascript" | "graphql"
            ) || sub.ends_with("+json")
                || sub.ends_with("+xml")
        }
        "image" => sub == "svg+xml",
        _ => false,
    }
}

/// Whether an upstream response may be compressed: a final response with
/// a body, not already encoded or partial, of a compressible type, and not
/// known to be smaller than [`MIN_COMPRESS_BYTES`].
fn eligible(resp: &ResponseHeader) -> bool {
    let status = resp.status;
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        )
    {
        return false;
    }
    let h = &resp.headers;
    if h.contains_key(CONTENT_ENCODING) || h.contains_key(CONTENT_RANGE) {
        return false;
    }
    let typed = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible_type);
    let big_enough = match h.get(CONTENT_LENGTH) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= MIN_COMPRESS_BYTES),
    };
    typed && big_enough
}

/// On `compress` routes, remembers which encoding the client prefers.
pub fn note_accept_encoding(state: &mut EdgeState, route: &Route, req: &RequestHeader) {
    // HTTP/1.0 has no chunked encoding to stream an encoded body with.
    let streams = req.version >= http::Version::HTTP_11;
    if route.options.compress && req.method != Method::HEAD && streams {
        state.encoding = choose_encoding(req.headers.get(ACCEPT_ENCODING));
    }
}

/// Arms the [`Compression`] module for this response when it is eligible
/// and the client accepts an encoding; adds `Vary: Accept-Encoding` to
/// every eligible response, compressed or not, so a cache keeps the
/// variants apart. Unarmed (the default) on every other route and
/// response, the gateway's own errors included.
pub fn compress_response(
    session: &mut Session,
    resp: &mut ResponseHeader,
    route: &Route,
    state: &EdgeState,
) -> Result<()> {
    if !route.options.compress || !eligible(resp) {
        return Ok(());
    }
    let has_vary = resp.headers.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !has_vary {
        resp.append_header(VARY, HeaderValue::from_static("accept-encoding"))?;
    }
    if let (Some(enc), Some(module)) = (
        state.encoding,
        session.downstream_modules_ctx.get_mut::<Compression>(),
    ) {
        module.armed = Some(enc);
    }
    Ok(())
}

/// The response compression module, one per request (registered in the
/// proxy's `init_downstream_modules` instead of Pingora's default one).
/// It runs after `response_filter`, which arms it for one response; it
/// then rewrites that response's header and streams its body through the
/// encoder.
///
/// gzip and zstd are Pingora's own encoders (`protocols::http::compression`).
/// Brotli is ours: Pingora 0.9's brotli encoder only flushes at the end and
/// never writes the final meta-block, so a strict decoder refuses what it
/// sends. And Pingora's module picks the first coding the client lists,
/// ignoring q-values; [`choose_encoding`] decides here instead.
#[derive(Default)]
pub struct Compression {
    armed: Option<Encoding>,
    encoder: Option<Box<dyn Encode + Send + Sync>>,
}

/// Builds [`Compression`] for each request.
pub struct CompressionBuilder;

impl CompressionBuilder {
    pub fn module() -> ModuleBuilder {
        Box::new(CompressionBuilder)
    }
}

impl HttpModuleBuilder for CompressionBuilder {
    fn init(&self) -> Module {
        Box::new(Compression::default())
    }

    fn order(&self) -> i16 {
        // Late, after other modules changed the body, as Pingora's does.
        i16::MIN / 2
    }
}

/// A fresh encoder for one response body in `enc`, at the gateway's level.
pub fn encoder(enc: Encoding) -> Option<Box<dyn Encode + Send + Sync>> {
    match enc {
        Encoding::Brotli => Some(Box::new(BrotliEncoder::new(BROTLI_LEVEL))),
        Encoding::Gzip => Algorithm::Gzip.compressor(GZIP_LEVEL),
        Encoding::Zstd => Algorithm::Zstd.compressor(ZSTD_LEVEL),
    }
}

#[async_trait]
impl HttpModule for Compression {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Result<()> {
        let Some(enc) = self.armed.take() else {
            return Ok(());
        };
        if end_of_stream {
            return Ok(());
        }
        self.encoder = encoder(enc);
        if self.encoder.is_none() {
            return Ok(());
        }
        // The length is unknown until the encoder is done, and ranges of
        // the encoded body are not the upstream's ranges.
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"))?;
        resp.insert_header(CONTENT_ENCODING, HeaderValue::from_static(enc.token()))?;
        // Another representation: a strong validator becomes weak (RFC 9110
        // §8.8.1), as nginx's gzip filter does; a malformed one goes.
        if let Some(etag) = resp.headers.get(ETAG) {
            let b = etag.as_bytes();
            if b.starts_with(b"\"") {
                let weak = HeaderValue::from_bytes(&[b"W/", b].concat()).ok();
                match weak {
                    Some(v) => resp.insert_header(ETAG, v)?,
                    None => {
                        resp.remove_header(&ETAG);
                    }
                }
            } else if !b.starts_with(b"W/") {
                resp.remove_header(&ETAG);
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        let input = body.as_deref().unwrap_or(&[]);
        *body = Some(encoder.encode(input, end_of_stream)?);
        if end_of_stream {
            self.encoder = None;
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        // The response ended without a last body chunk: finish the stream.
        match self.encoder.take() {
            Some(mut encoder) => encoder.encode(&[], true).map(Some),
            None => Ok(None),
        }
    }
}

/// A brotli stream that ends with its final meta-block.
struct BrotliEncoder {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    spent: std::time::Duration,
}

impl BrotliEncoder {
    /// Window of 2^19 bytes, as Pingora's: the body streams through it.
    fn new(level: u32) -> Self {
        BrotliEncoder {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            total_in: 0,
            total_out: 0,
            spent: std::time::Duration::ZERO,
        }
    }
}

impl Encode for BrotliEncoder {
    fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes> {
        let started = std::time::Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        writer
            .write_all(input)
            .or_err(ErrorType::InternalError, "while compressing brotli")?;
        let out = if end {
            // Consuming the writer finishes the stream.
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        self.total_out += out.len();
        self.spent += started.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        ("brotli", self.total_in, self.total_out, self.spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> Option<Encoding> {
        choose_encoding(Some(&HeaderValue::from_str(v).expect("value")))
    }

    #[test]
    fn accept_encoding_q_values_decide() {
        assert_eq!(enc("gzip"), Some(Encoding::Gzip));
        assert_eq!(enc("gzip, br"), Some(Encoding::Brotli));
        assert_eq!(enc("br;q=0.5, gzip"), Some(Encoding::Gzip));
        assert_eq!(enc("br;q=0, gzip;q=0.1"), Some(Encoding::Gzip));
        assert_eq!(enc("zstd;q=1.0, br;q=0.9"), Some(Encoding::Zstd));
        assert_eq!(enc("*"), Some(Encoding::Brotli));
        assert_eq!(enc("*;q=0.5, br;q=0, zstd;q=0"), Some(Encoding::Gzip));
        assert_eq!(enc("gzip;q=0"), None);
        assert_eq!(enc("identity"), None);
        assert_eq!(enc("deflate, compress"), None);
        assert_eq!(enc("gzip;q=2"), None);
        assert_eq!(enc("gzip;q=0.1234"), None);
        assert_eq!(enc(""), None);
        assert_eq!(choose_encoding(None), None);
    }

    #[test]
    fn only_text_like_types_are_compressible() {
        for t in [
            "text/html",
            "text/plain; charset=utf-8",
            "application/json",
            "application/problem+json",
            "application/xml",
            "application/atom+xml",
            "application/javascript",
            "image/svg+xml",
        ] {
            assert!(compressible_type(t), "{t}");
        }
        for t in [
            "image/png",
            "application/zip",
            "application/octet-stream",
            "video/mp4",
            "text/event-stream",
            "",
            "json",
        ] {
            assert!(!compressible_type(t), "{t}");
        }
    }

    #[test]
    fn ip_rules_deny_first_then_allow() {
        let opts = RouteOptions {
            allow_ips: vec!["10.0.0.0/8".parse().expect("net")],
            deny_ips: vec!["10.1.0.0/16".parse().expect("net")],
            ..RouteOptions::default()
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert!(ip_allowed(&opts, ip("10.2.3.4")));
        assert!(!ip_allowed(&opts, ip("10.1.3.4")));
        assert!(!ip_allowed(&opts, ip("192.0.2.1")));
        assert!(!ip_allowed(&opts, None));
        let open = RouteOptions::default();
        assert!(ip_allowed(&open, None));
        assert!(ip_allowed(&open, ip("192.0.2.1")));
    }

    #[test]
    fn streamed_body_is_refused_when_it_crosses_the_limit() {
        let mut s = EdgeState {
            streaming_limit: Some(10),
            ..EdgeState::default()
        };
        assert!(count_body(&mut s, Some(&Bytes::from_static(b"0123456789"))).is_ok());
        assert!(count_body(&mut s, None).is_ok());
        let e = count_body(&mut s, Some(&Bytes::from_static(b"x"))).expect_err("over");
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(413));
    }
}
