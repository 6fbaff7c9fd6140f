//! Request-side helpers of routing: what path and host a request is routed
//! by. The route table itself is [`crate::route`].

/// False for paths an upstream might resolve to somewhere other than where
/// the route table matched them: `.`/`..` segments (also percent-encoded)
/// and backslashes. `/public/../admin` would otherwise match an
/// `auth = "none"` route and reach `/admin` upstream. Such requests are
/// refused rather than normalised, so the gateway and the upstream can
/// never disagree about the path.
pub fn is_canonical_path(path: &str) -> bool {
    // Runs on every request: no allocation, and most paths leave at once.
    let bytes = path.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return true;
    }
    let encoded_backslash = bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'));
    !bytes.contains(&b'\\') && !encoded_backslash && !path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E`.
fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// The request's host without port, lower-cased only when needed.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // [v6]:port; an unterminated bracket is kept as it is.
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_backslashes_are_not_canonical() {
        for ok in [
            "/",
            "/a/b",
            "/a/.well-known",
            "/a/..b",
            "/a/b.",
            "/a%2Fb",
            "/a/...",
            "/a%20b",
            "/a%2e",
        ] {
            assert!(is_canonical_path(ok), "{ok}");
        }
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/%2e%2e/x",
            "/a/.%2E/b",
            "/%2E",
            "/a/%2e./",
            "/a\\b",
            "/a%5Cb",
        ] {
            assert!(!is_canonical_path(bad), "{bad}");
        }
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        for odd in ["[", "[abc", "]", ":", "", "a:b:c", "[::1"] {
            let _ = normalize_host(odd);
        }
    }
}
