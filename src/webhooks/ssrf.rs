//! The SSRF guard: which webhook URLs and addresses may be targets.
//!
//! A webhook makes the gateway send requests to a URL an API caller chose,
//! from inside the operator's network. Unless
//! `webhooks.allow_private_targets` is set, a target must be a public
//! address: [`is_forbidden`] names the range of any other (loopback,
//! RFC 1918, CGNAT, link-local and cloud metadata, multicast, broadcast,
//! ULA, documentation and benchmarking ranges, and every IPv6 form that
//! embeds an IPv4 address: mapped, compatible, translated, NAT64, 6to4,
//! Teredo). The ranges are `ipnet` networks, not hand-written masks.
//!
//! Spellings do not matter: hosts are parsed by the `url` crate (WHATWG
//! rules), which turns `0x7f.1`, `2130706433`, `017700000001`, `127.1`,
//! `%31%32%37.0.0.1` and `127.0.0.1.` into the one address `127.0.0.1` before
//! any check, and the check is on addresses, never on the text. A DNS name
//! is resolved and every address it resolves to must pass; the dispatcher
//! checks again at each connect on the address it then connects to (a name
//! may resolve differently later), so the check here is the early, friendly
//! refusal, not the only one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

/// Bound on resolving a webhook host at create/update.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges that are not public, most specific first so the reason is
/// the narrowest (broadcast before 240/4). IANA IPv4 Special-Purpose
/// Address Registry, the entries not marked "globally reachable".
const V4_FORBIDDEN: &[(Ipv4Net, &str)] = &[
    (v4(255, 255, 255, 255, 32), "broadcast (255.255.255.255)"),
    (v4(0, 0, 0, 0, 32), "unspecified (0.0.0.0)"),
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918, 10.0.0.0/8)"),
    (v4(100, 64, 0, 0, 10), "shared/CGNAT (100.64.0.0/10)"),
    (v4(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (
        v4(169, 254, 0, 0, 16),
        "link-local, cloud metadata (169.254.0.0/16)",
    ),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918, 172.16.0.0/12)"),
    (
        v4(192, 0, 0, 0, 24),
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (v4(192, 0, 2, 0, 24), "documentation (192.0.2.0/24)"),
    (
        v4(192, 88, 99, 0, 24),
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918, 192.168.0.0/16)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"),
    (v4(198, 51, 100, 0, 24), "documentation (198.51.100.0/24)"),
    (v4(203, 0, 113, 0, 24), "documentation (203.0.113.0/24)"),
    (v4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (v4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges that are not public. Every form that carries an IPv4
/// address inside is refused whole: the gateway would reach that IPv4
/// address (or a translator would), and a public IPv4 target can be given
/// as itself.
const V6_FORBIDDEN: &[(Ipv6Net, &str)] = &[
    (v6(0, 0, 0, 0, 0, 0, 0, 0, 128), "unspecified (::)"),
    (v6(0, 0, 0, 0, 0, 0, 0, 1, 128), "loopback (::1)"),
    (
        v6(0, 0, 0, 0, 0, 0xffff, 0, 0, 96),
        "IPv4-mapped IPv6 (::ffff:0:0/96)",
    ),
    (
        v6(0, 0, 0, 0, 0xffff, 0, 0, 0, 96),
        "IPv4-translated IPv6 (::ffff:0:0:0/96)",
    ),
    (
        v6(0, 0, 0, 0, 0, 0, 0, 0, 96),
        "IPv4-compatible IPv6 (::/96)",
    ),
    (
        v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0, 96),
        "NAT64 (64:ff9b::/96)",
    ),
    (
        v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0, 48),
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (
        v6(0x100, 0, 0, 0, 0, 0, 0, 0, 64),
        "discard-only (100::/64)",
    ),
    (v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 32), "Teredo (2001::/32)"),
    (
        v6(0x2001, 2, 0, 0, 0, 0, 0, 0, 48),
        "benchmarking (2001:2::/48)",
    ),
    (
        v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0, 32),
        "documentation (2001:db8::/32)",
    ),
    (v6(0x2002, 0, 0, 0, 0, 0, 0, 0, 16), "6to4 (2002::/16)"),
    (
        v6(0x3fff, 0, 0, 0, 0, 0, 0, 0, 20),
        "documentation (3fff::/20)",
    ),
    (
        v6(0xfc00, 0, 0, 0, 0, 0, 0, 0, 7),
        "unique local (ULA, fc00::/7)",
    ),
    (
        v6(0xfe80, 0, 0, 0, 0, 0, 0, 0, 10),
        "link-local (fe80::/10)",
    ),
    (
        v6(0xfec0, 0, 0, 0, 0, 0, 0, 0, 10),
        "site-local (deprecated, fec0::/10)",
    ),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0, 8), "multicast (ff00::/8)"),
];

/// Why `ip` may not be a webhook target (loopback, private, …), or None
/// when it is public. Used again at every connect, on the resolved address.
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => V4_FORBIDDEN
            .iter()
            .find(|(net, _)| net.contains(&a))
            .map(|(_, why)| *why),
        IpAddr::V6(a) => V6_FORBIDDEN
            .iter()
            .find(|(net, _)| net.contains(&a))
            .map(|(_, why)| *why),
    }
}

/// Checks `url` when an endpoint is created or updated: `http`/`https`
/// with a host, and (unless `allow_private`) every address the host
/// resolves to is public. `Err` is the reason, for 400 `invalid_webhook_url`.
pub async fn check_url(url: &str, allow_private: bool) -> Result<url::Url, String> {
    check_url_with(url, allow_private, RESOLVE_TIMEOUT).await
}

/// [`check_url`] with the resolution bound given.
pub async fn check_url_with(
    url: &str,
    allow_private: bool,
    resolve_timeout: Duration,
) -> Result<url::Url, String> {
    let parsed = check_form(url)?;
    if allow_private {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    match parsed.host() {
        Some(url::Host::Ipv4(a)) => literal(IpAddr::V4(a))?,
        Some(url::Host::Ipv6(a)) => literal(IpAddr::V6(a))?,
        Some(url::Host::Domain(name)) => {
            let addrs = tokio::time::timeout(
                resolve_timeout,
                tokio::net::lookup_host((name.to_string(), port)),
            )
            .await
            .map_err(|_| format!("The host {name} did not resolve within {resolve_timeout:?}."))?
            .map_err(|_| format!("The host {name} does not resolve."))?;
            let mut any = false;
            for a in addrs {
                any = true;
                if let Some(why) = is_forbidden(a.ip()) {
                    return Err(format!(
                        "The host {name} resolves to {}, which is not a public address: {why}.",
                        a.ip()
                    ));
                }
            }
            if !any {
                return Err(format!("The host {name} resolves to no address."));
            }
        }
        None => return Err("The URL needs a host.".into()),
    }
    Ok(parsed)
}

fn literal(ip: IpAddr) -> Result<(), String> {
    match is_forbidden(ip) {
        Some(why) => Err(format!("The address {ip} is not a public address: {why}.")),
        None => Ok(()),
    }
}

/// The checks that need no resolution: an absolute `http`/`https` URL with
/// a host and no credentials. Credentials are refused because the URL is
/// stored and listed in clear; a receiver that needs a secret verifies the
/// signature instead.
pub fn check_form(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("Not a valid URL: {e}."))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("The URL must use http or https.".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("The URL must not contain credentials (user:password@).".into());
    }
    match parsed.host() {
        None => Err("The URL needs a host.".into()),
        Some(url::Host::Domain("")) => Err("The URL needs a host.".into()),
        Some(_) => Ok(parsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect(s)
    }

    fn why(s: &str) -> Option<&'static str> {
        is_forbidden(ip(s))
    }

    /// One address inside, and the edges of, each forbidden range.
    #[test]
    fn each_ipv4_range_is_forbidden_with_its_reason() {
        for (addr, reason) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.0", "10.0.0.0/8"),
            ("10.255.255.255", "10.0.0.0/8"),
            ("100.64.0.0", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.0", "172.16.0.0/12"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.0.0.8", "IETF protocol"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            let got = why(addr).unwrap_or_else(|| panic!("{addr} must be forbidden"));
            assert!(got.contains(reason), "{addr}: {got}");
        }
    }

    #[test]
    fn each_ipv6_range_is_forbidden_with_its_reason() {
        for (addr, reason) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::ffff:8.8.8.8", "IPv4-mapped"),
            ("::ffff:0:7f00:1", "IPv4-translated"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "NAT64"),
            ("64:ff9b::a00:1", "NAT64"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("100::1", "discard"),
            ("2001::7f00:1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:db8::1", "documentation"),
            ("2002:7f00:1::", "6to4"),
            ("2002:c0a8:101::1", "6to4"),
            ("3fff::1", "documentation"),
            ("fc00::1", "ULA"),
            ("fdff:ffff::1", "ULA"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
        ] {
            let got = why(addr).unwrap_or_else(|| panic!("{addr} must be forbidden"));
            assert!(got.contains(reason), "{addr}: {got}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:2800:220:1:248:1893:25c8:1946",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
        ] {
            assert_eq!(why(addr), None, "{addr}");
        }
    }

    /// How the `url` crate parses the spellings of an IPv4 address: each
    /// becomes the one address, so the guard never sees the spelling.
    #[test]
    fn url_crate_normalises_every_spelling_of_an_ipv4_host() {
        let loopback = url::Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1));
        for spelling in [
            "http://127.0.0.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.1/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
            "http://0x7F.0x0.0x0.0x1/",
            "HTTP://127.0.0.1:80/",
        ] {
            let u = check_form(spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert_eq!(u.host(), Some(loopback.clone()), "{spelling}");
        }
        let mapped = check_form("http://[::ffff:127.0.0.1]/").expect("parses");
        assert_eq!(
            mapped.host(),
            Some(url::Host::Ipv6("::ffff:7f00:1".parse().expect("v6")))
        );
    }

    #[test]
    fn form_needs_http_or_https_a_host_and_no_credentials() {
        for (bad, reason) in [
            ("ftp://example.com/", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("gopher://example.com/", "http or https"),
            ("javascript:alert(1)", "http or https"),
            ("http://user:pw@example.com/", "credentials"),
            ("http://user@example.com/", "credentials"),
            ("/relative", "Not a valid URL"),
            ("", "Not a valid URL"),
            ("http://1.2.3.4.5/", "Not a valid URL"),
        ] {
            let got = check_form(bad).expect_err(bad);
            assert!(got.contains(reason), "{bad}: {got}");
        }
        assert!(check_form("https://example.com:8443/hook?x=1").is_ok());
    }

    #[tokio::test]
    async fn literals_are_checked_without_resolution() {
        assert!(check_url("http://93.184.216.34/hook", false).await.is_ok());
        assert!(check_url("http://[2606:2800:220:1::1]/", false)
            .await
            .is_ok());
        let e = check_url("http://0x7f.1/", false)
            .await
            .expect_err("loopback");
        assert!(e.contains("127.0.0.1") && e.contains("loopback"), "{e}");
        // With allow_private, anything well formed passes.
        assert!(check_url("http://127.0.0.1:9/", true).await.is_ok());
        assert!(check_url("ftp://127.0.0.1/", true).await.is_err());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        let e = check_url("http://localhost:8080/hook", false)
            .await
            .expect_err("localhost");
        assert!(e.contains("localhost") && e.contains("loopback"), "{e}");
    }
}
