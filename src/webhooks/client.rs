//! The HTTP client of webhook deliveries: reqwest with rustls (so `https`
//! endpoints work), no redirects, no proxies, a bound on each attempt, and
//! a DNS resolver that applies the SSRF guard to every address a host
//! resolves to and hands reqwest only those checked addresses, so the
//! connection goes where the guard looked (no second resolution a DNS
//! rebinding could turn). Literal IP hosts never reach a resolver; they are
//! checked before the request. Only the first [`BODY_LIMIT`] bytes of a
//! response are read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::ssrf;

/// Bytes of a response body kept (and read at all).
pub const BODY_LIMIT: usize = 1024;

/// Why an attempt failed: the `error` of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Connect,
    UnsafeTarget,
    Redirect,
    HttpStatus,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Connect => "connect",
            Failure::UnsafeTarget => "unsafe_target",
            Failure::Redirect => "redirect",
            Failure::HttpStatus => "http_status",
        }
    }
}

/// What one POST came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The response status, when one arrived.
    pub status: Option<u16>,
    /// The first [`BODY_LIMIT`] bytes of the response body (lossy UTF-8).
    pub body: Option<String>,
    /// None on a 2xx.
    pub failure: Option<Failure>,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    pub duration: Duration,
}

/// Refusal by the SSRF guard; found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("the target address is not allowed: {0}")]
struct UnsafeTarget(&'static str);

/// Resolves, refuses the host if any address is forbidden, and returns
/// exactly the addresses it checked.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err("the host resolves to no address".into());
            }
            if !allow_private {
                if let Some(reason) = addrs.iter().find_map(|a| ssrf::is_forbidden(a.ip())) {
                    return Err(Box::new(UnsafeTarget(reason)) as _);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// One client for all deliveries of an instance (connections are pooled
/// per host).
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
}

impl WebhookClient {
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect on our behalf to
            // addresses the guard never saw.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .connect_timeout(timeout)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("gateway-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            allow_private,
            timeout,
        })
    }

    /// Whether the URL's literal IP host (if it is one) may be a target.
    fn literal_host_allowed(&self, url: &url::Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return true,
            None => return false,
        };
        self.allow_private || ssrf::is_forbidden(ip).is_none()
    }

    /// POSTs `body` to `url` with `headers`, within the attempt timeout.
    pub async fn post(
        &self,
        url: &str,
        headers: Vec<(&'static str, String)>,
        body: String,
    ) -> Outcome {
        let started = Instant::now();
        let failed = |failure: Failure, started: Instant| Outcome {
            status: None,
            body: None,
            failure: Some(failure),
            retry_after: None,
            duration: started.elapsed(),
        };
        let Ok(parsed) = url::Url::parse(url) else {
            return failed(Failure::UnsafeTarget, started);
        };
        if !self.literal_host_allowed(&parsed) {
            return failed(Failure::UnsafeTarget, started);
        }
        let mut req = self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let attempt = async {
            let resp = req.body(body).send().await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = read_prefix(resp).await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => failed(Failure::Timeout, started),
            Ok(Err(e)) => failed(classify(&e), started),
            Ok(Ok((status, retry_after, body))) => Outcome {
                status: Some(status.as_u16()),
                body: Some(body),
                failure: if status.is_success() {
                    None
                } else if status.is_redirection() {
                    Some(Failure::Redirect)
                } else {
                    Some(Failure::HttpStatus)
                },
                retry_after,
                duration: started.elapsed(),
            },
        }
    }
}

/// Reads at most [`BODY_LIMIT`] bytes; the rest is never read.
async fn read_prefix(mut resp: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut buf = Vec::with_capacity(BODY_LIMIT);
    while buf.len() < BODY_LIMIT {
        match resp.chunk().await? {
            Some(chunk) => {
                let room = BODY_LIMIT - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            None => break,
        }
    }
    Ok(text_column(&buf))
}

/// Bytes as text Postgres accepts: lossy UTF-8 without NUL.
pub fn text_column(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

fn classify(e: &reqwest::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<UnsafeTarget>() {
            return Failure::UnsafeTarget;
        }
        source = err.source();
    }
    if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_text_is_safe_for_postgres() {
        assert_eq!(text_column(b"ok"), "ok");
        assert_eq!(text_column(b"a\0b"), "a\u{FFFD}b");
        assert_eq!(text_column(&[0xff, b'x']), "\u{FFFD}x");
    }

    #[test]
    fn only_http_and_https_are_targets() {
        let c = WebhookClient::new(Duration::from_secs(1), true).expect("client");
        for bad in ["ftp://example.com/", "file:///etc/passwd", "data:,x"] {
            let u = url::Url::parse(bad).expect(bad);
            assert!(!c.literal_host_allowed(&u), "{bad}");
        }
        let u = url::Url::parse("http://127.0.0.1:1/").expect("url");
        assert!(
            c.literal_host_allowed(&u),
            "allowed with allow_private_targets"
        );
    }
}
