//! Request-path normalisation (DESIGN §3 "Paths and routing"), shared by
//! the proxy and the admin listener.
//!
//! The path is normalised before anything looks at it, and the normalised
//! path is what routing, scopes, limits, metrics, logs and the upstream all
//! see. So `/orders/%61dmin` and `/orders//admin` are `/orders/admin`
//! everywhere, and a path that an upstream could resolve to somewhere other
//! than where the route table put it is refused instead:
//!
//! - escapes of unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded;
//!   other escapes are kept, with upper-case hex (`%c3` → `%C3`);
//! - runs of `/` become one `/` (a trailing `/` is kept);
//! - refused ([`PathError`]): `.` and `..` segments, also encoded;
//!   backslashes; encoded `/` and `\` (`%2F`, `%5C`); encoded NUL (`%00`);
//!   `;` path parameters, and an encoded `;` (`%3B`), which some upstreams
//!   decode before they strip parameters; a `%` not followed by two hex
//!   digits (`%zz`, a trailing `%`), which upstreams read in different
//!   ways; raw bytes outside printable ASCII (clients percent-encode
//!   UTF-8, and upstreams disagree on raw bytes); a path that does not
//!   start with `/`.
//!
//! The query string is not part of the path and is never touched.
//!
//! Runs on every request: a path that is already normalised is checked in
//! one pass and returned borrowed, without allocating.

use std::borrow::Cow;
use std::fmt;

use pingora::http::RequestHeader;

/// Why a path is refused. The message is safe to show to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (e.g. `OPTIONS *`).
    NotAbsolute,
    /// A `.` or `..` segment, possibly percent-encoded.
    DotSegment,
    /// A raw `\`.
    Backslash,
    /// `%2F` or `%5C`.
    EncodedSeparator,
    /// `%00`.
    EncodedNul,
    /// `;` or `%3B`.
    Parameter,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// A raw byte outside printable ASCII (non-ASCII or a control).
    RawByte,
}

impl PathError {
    /// The client-facing explanation.
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "The path must start with `/`.",
            PathError::DotSegment => {
                "The path must not contain `.` or `..` segments, also not percent-encoded."
            }
            PathError::Backslash => "The path must not contain backslashes.",
            PathError::EncodedSeparator => {
                "The path must not contain an encoded `/` or `\\` (%2F, %5C)."
            }
            PathError::EncodedNul => "The path must not contain an encoded NUL (%00).",
            PathError::Parameter => "The path must not contain `;` parameters (nor %3B).",
            PathError::MalformedEscape => {
                "The path contains a `%` that is not followed by two hex digits."
            }
            PathError::RawByte => {
                "The path must be printable ASCII; percent-encode other characters."
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PathError {}

/// The output, allocated only at the first byte that differs from the
/// input. Until then the output is exactly `src[..i]` for the current
/// input position `i`.
struct Out<'a> {
    src: &'a str,
    buf: Option<String>,
}

impl Out<'_> {
    /// Copies `src[at..at + len]` unchanged.
    fn keep(&mut self, at: usize, len: usize) {
        if let Some(buf) = &mut self.buf {
            buf.push_str(&self.src[at..at + len]);
        }
    }

    /// Replaces the input from `at` on by `with` (which may be empty).
    fn replace(&mut self, at: usize, with: &[u8]) {
        let src = self.src;
        let buf = self.buf.get_or_insert_with(|| {
            let mut s = String::with_capacity(src.len());
            s.push_str(&src[..at]);
            s
        });
        // Only ASCII is ever written.
        buf.extend(with.iter().map(|&b| char::from(b)));
    }
}

/// In the current segment: how many `.` it holds so far, or [`OTHER`] once
/// it holds anything else.
const OTHER: u8 = u8::MAX;

fn after(dots: u8, byte: u8) -> u8 {
    if byte == b'.' && dots < 2 {
        dots + 1
    } else {
        OTHER
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Normalises a request path (without its query), or says why it is
/// refused; see the module documentation for the rules. Borrowed when the
/// path is already normalised.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let src = path.as_bytes();
    if src.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths hold no byte that needs a closer look: one tight scan.
    let plain = |b: &u8| b.is_ascii_graphic() && !matches!(b, b'%' | b'\\' | b';' | b'.');
    if src.iter().all(plain) && !src.windows(2).any(|w| w == b"//") {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = Out {
        src: path,
        buf: None,
    };
    let mut dots = 0u8;
    let mut after_slash = false;
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        match b {
            b'/' => {
                if dots == 1 || dots == 2 {
                    return Err(PathError::DotSegment);
                }
                dots = 0;
                if after_slash {
                    out.replace(i, b"");
                } else {
                    out.keep(i, 1);
                }
                after_slash = true;
                i += 1;
            }
            b'%' => {
                let (Some(&h), Some(&l)) = (src.get(i + 1), src.get(i + 2)) else {
                    return Err(PathError::MalformedEscape);
                };
                let (Some(hv), Some(lv)) = (hex(h), hex(l)) else {
                    return Err(PathError::MalformedEscape);
                };
                let v = hv << 4 | lv;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    b';' => return Err(PathError::Parameter),
                    _ if is_unreserved(v) => {
                        out.replace(i, &[v]);
                        dots = after(dots, v);
                    }
                    _ => {
                        if h.is_ascii_lowercase() || l.is_ascii_lowercase() {
                            out.replace(
                                i,
                                &[b'%', UPPER_HEX[usize::from(hv)], UPPER_HEX[usize::from(lv)]],
                            );
                        } else {
                            out.keep(i, 3);
                        }
                        dots = OTHER;
                    }
                }
                after_slash = false;
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameter),
            0x00..=0x20 | 0x7f..=0xff => return Err(PathError::RawByte),
            _ => {
                dots = after(dots, b);
                out.keep(i, 1);
                after_slash = false;
                i += 1;
            }
        }
    }
    if dots == 1 || dots == 2 {
        return Err(PathError::DotSegment);
    }
    Ok(match out.buf {
        None => Cow::Borrowed(path),
        Some(s) => Cow::Owned(s),
    })
}

/// Normalises the path of `req` in place, keeping its query; afterwards
/// `req.uri.path()` is the normalised path and the request target is its
/// origin form, which is what a proxied request sends upstream. A target
/// in another form (`GET http://host/path`) is rewritten to origin form
/// too, so the upstream never reads a target the route table did not see.
/// Allocates only when the target changes.
pub fn normalize_request(req: &mut RequestHeader) -> Result<(), PathError> {
    let origin_form = req
        .uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path());
    let mut target = match normalize(req.uri.path())? {
        Cow::Borrowed(_) if origin_form => return Ok(()),
        path => path.into_owned(),
    };
    if let Some(q) = req.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    // A normalised path holds only bytes the URI already held, plus
    // unreserved characters, so this parses; refuse rather than panic.
    let uri = http::Uri::try_from(target).map_err(|_| PathError::MalformedEscape)?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normalised_paths_are_borrowed() {
        for p in [
            "/",
            "/orders",
            "/orders/",
            "/orders/admin/users",
            "/a/.well-known",
            "/a/..b",
            "/a/b.",
            "/a/...",
            "/a/%20b",
            "/a/%C3%A9",
            "/a/%3F%23%25",
            "/a-b_c~d.e",
            "/a:b@c!$&'()*+,=",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(n)) if n == p),
                "{p}: {:?}",
                normalize(p)
            );
        }
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded() {
        assert_eq!(norm("/orders/%61dmin").as_deref(), Ok("/orders/admin"));
        assert_eq!(
            norm("/orders/%61%64%6d%69%6e").as_deref(),
            Ok("/orders/admin")
        );
        assert_eq!(
            norm("/orders/%61%64%6D%69%6E").as_deref(),
            Ok("/orders/admin")
        );
        assert_eq!(norm("/orders/%41dmin").as_deref(), Ok("/orders/Admin"));
        assert_eq!(norm("/%6frders").as_deref(), Ok("/orders"));
        assert_eq!(norm("/x%7e%7E").as_deref(), Ok("/x~~"));
        assert_eq!(norm("/%2D%2d%5F%5f%30%39").as_deref(), Ok("/--__09"));
        // A decoded dot that does not make a dot segment.
        assert_eq!(norm("/a%2Eb").as_deref(), Ok("/a.b"));
        assert_eq!(norm("/a/%2e%2e%2e").as_deref(), Ok("/a/..."));
        assert_eq!(norm("/a/.%2Ewell").as_deref(), Ok("/a/..well"));
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(norm("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(norm("/a%3f").as_deref(), Ok("/a%3F"));
        assert_eq!(norm("/a%2a%2A").as_deref(), Ok("/a%2A%2A"));
        assert_eq!(norm("/a%20b").as_deref(), Ok("/a%20b"));
        // An escaped `%` stays escaped: decoded once, never twice.
        assert_eq!(norm("/%2561dmin").as_deref(), Ok("/%2561dmin"));
        assert_eq!(norm("/%0a%7f").as_deref(), Ok("/%0A%7F"));
    }

    #[test]
    fn runs_of_slashes_are_merged() {
        assert_eq!(norm("//orders").as_deref(), Ok("/orders"));
        assert_eq!(norm("/orders//admin").as_deref(), Ok("/orders/admin"));
        assert_eq!(norm("/orders///admin//").as_deref(), Ok("/orders/admin/"));
        assert_eq!(norm("///").as_deref(), Ok("/"));
        assert_eq!(norm("//x%7e").as_deref(), Ok("/x~"));
    }

    #[test]
    fn each_refused_spelling_names_its_reason() {
        use PathError::*;
        for (p, why) in [
            ("", NotAbsolute),
            ("*", NotAbsolute),
            ("orders", NotAbsolute),
            ("/orders/admin;x/users", Parameter),
            ("/orders;x", Parameter),
            ("/orders/;", Parameter),
            ("/orders/admin%3Bx", Parameter),
            ("/orders/admin%3bx", Parameter),
            ("/orders/admin%2Fusers", EncodedSeparator),
            ("/orders/admin%2fusers", EncodedSeparator),
            ("/orders%5Cadmin", EncodedSeparator),
            ("/orders%5cadmin", EncodedSeparator),
            ("/orders\\admin", Backslash),
            ("\\", NotAbsolute),
            ("/a/../b", DotSegment),
            ("/a/./b", DotSegment),
            ("/a/..", DotSegment),
            ("/a/.", DotSegment),
            ("/..", DotSegment),
            ("/.", DotSegment),
            ("/%2e%2e/x", DotSegment),
            ("/%2E%2E/x", DotSegment),
            ("/%2e%2E/x", DotSegment),
            ("/a/.%2E/b", DotSegment),
            ("/a/%2e./", DotSegment),
            ("/%2E", DotSegment),
            ("/a//../b", DotSegment),
            ("/a/%00", EncodedNul),
            ("/a/%00/b", EncodedNul),
            ("/a/%zz", MalformedEscape),
            ("/a/%", MalformedEscape),
            ("/a/%6", MalformedEscape),
            ("/a/%6/b", MalformedEscape),
            ("/a/%g1", MalformedEscape),
            ("/a/%%41", MalformedEscape),
            ("/caf\u{e9}", RawByte),
            ("/a\u{0}b", RawByte),
            ("/a b", RawByte),
            ("/a\tb", RawByte),
            ("/a\u{7f}", RawByte),
            ("/\u{fffd}", RawByte),
        ] {
            assert_eq!(normalize(p), Err(why), "{p:?}");
        }
    }

    #[test]
    fn the_request_keeps_its_query_and_is_left_alone_when_normalised() {
        let mut req =
            RequestHeader::build("GET", b"/orders//%61dmin?q=%2F..;x%2e", None).expect("request");
        assert_eq!(normalize_request(&mut req), Ok(()));
        assert_eq!(req.uri.path(), "/orders/admin");
        assert_eq!(req.uri.query(), Some("q=%2F..;x%2e"));
        assert_eq!(req.raw_path(), b"/orders/admin?q=%2F..;x%2e");

        let mut req = RequestHeader::build("GET", b"/orders/x?y=1", None).expect("request");
        assert_eq!(normalize_request(&mut req), Ok(()));
        assert_eq!(req.raw_path(), b"/orders/x?y=1");

        let mut req = RequestHeader::build("GET", b"/a/../b?y=1", None).expect("request");
        assert_eq!(normalize_request(&mut req), Err(PathError::DotSegment));

        // Absolute form: the upstream gets the origin form the route saw.
        for (target, sent) in [
            (&b"http://h/orders/x?y=1"[..], &b"/orders/x?y=1"[..]),
            (b"http://h/orders//%61dmin", b"/orders/admin"),
            (b"http://h", b"/"),
        ] {
            let mut req = RequestHeader::build("GET", target, None).expect("request");
            assert_eq!(normalize_request(&mut req), Ok(()));
            assert_eq!(req.raw_path(), sent);
        }
    }

    /// Normalising twice changes nothing, and the result is always
    /// borrowed the second time: what the upstream receives is a fixed
    /// point.
    #[test]
    fn normalisation_is_idempotent() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = 0x5eed_0012;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let alphabet = b"/./%2eEfF5cC3bB0aA7e;\\xz9";
        for _ in 0..50_000 {
            let len = rng.gen_range(0..24);
            let mut s = String::from("/");
            for _ in 0..len {
                s.push(char::from(alphabet[rng.gen_range(0..alphabet.len())]));
            }
            if let Ok(once) = normalize(&s) {
                assert!(
                    matches!(normalize(&once), Ok(Cow::Borrowed(_))),
                    "seed {seed}: {s:?} -> {once:?} -> {:?}",
                    normalize(&once)
                );
            }
        }
    }
}
