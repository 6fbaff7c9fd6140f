//! The one place proxy denials and failures become HTTP responses: the
//! catalogue entry ([`ProxyError`], from [`crate::errors`]) written as a
//! complete JSON response with `Content-Length`, so the client's connection
//! stays usable.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::errors::proxy_error_body;
pub use crate::errors::ProxyError;

/// Builds the response header for `err`.
pub fn error_header(
    err: &ProxyError,
    request_id: &str,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    if let Some(challenge) = err.www_authenticate() {
        resp.insert_header("www-authenticate", challenge)?;
    }
    Ok(resp)
}

/// Writes `err` as a complete JSON response on the downstream session,
/// with `extra` headers (rate-limit headers on a 429).
pub async fn write_error(
    session: &mut Session,
    err: &ProxyError,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let body = proxy_error_body(err, request_id);
    let mut resp = error_header(err, request_id, body.len())?;
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}
