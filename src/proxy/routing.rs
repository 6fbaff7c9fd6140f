//! Request-side helpers of routing: the host a request is routed by. Its
//! path is normalised by [`crate::http_path`]; the route table itself is
//! [`crate::route`].

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
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        for odd in ["[", "[abc", "]", ":", "", "a:b:c", "[::1"] {
            let _ = normalize_host(odd);
        }
    }
}
