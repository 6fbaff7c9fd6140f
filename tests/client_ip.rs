//! Client IPs behind a trusted proxy (issue 12 part 7): `ip:port` and
//! `[v6]:port` hops name their own clients instead of collapsing into the
//! proxy's address, IPv6 clients are counted per /64, and an untrusted
//! peer's claims about the client never reach the upstream. Real gateway,
//! real upstream; 127.0.0.1 is the trusted proxy, 127.0.0.2 is not.

mod common;

use common::*;
use gateway::config::{Config, Need};
use serde_json::Value;

/// The harness routes (`/public` is anonymous) with 3 anonymous requests
/// and 2 refused credentials per minute per client, one exempt IPv6
/// address, behind a trusted proxy at 127.0.0.1.
async fn start() -> (TestDb, Gateway) {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let mut opts = Opts::new(format!(
        r#"{}
[rate_limits]
anonymous = {{ per_minute = 3 }}
auth_failures = {{ per_minute = 2 }}
exempt_ips = ["2001:db8:9:9::1/128"]
"#,
        default_routes(upstream)
    ));
    opts.proxy_extra = r#"trusted_proxies = ["127.0.0.1"]"#.into();
    let gw = Gateway::start(&db, opts).await;
    (db, gw)
}

/// GET /public from the trusted proxy on behalf of `xff`.
async fn public_via_proxy(gw: &Gateway, xff: &str) -> (u16, Value) {
    let (status, _, body) = send(
        http_from("127.0.0.1")
            .get(gw.url("/public"))
            .header("x-forwarded-for", xff),
    )
    .await;
    (status, body)
}

/// Uses up `xff`'s anonymous minute: 3 admitted, then 429 `ip-minute`.
async fn exhaust(gw: &Gateway, xff: &str) {
    for i in 0..3 {
        let (status, body) = public_via_proxy(gw, xff).await;
        assert_eq!(status, 200, "request {i} of {xff}: {body}");
    }
    let (status, body) = public_via_proxy(gw, xff).await;
    assert_eq!(status, 429, "{xff} over its limit: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`ip-minute`")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_written_as_ip_port_get_buckets_of_their_own() {
    let (_db, gw) = start().await;
    exhaust(&gw, "203.0.113.7:5555").await;
    // Another client of the same load balancer is not limited with it.
    let (status, body) = public_via_proxy(&gw, "203.0.113.8:6666").await;
    assert_eq!(status, 200, "{body}");
    // The same client on another source port is the same client.
    let (status, _) = public_via_proxy(&gw, "203.0.113.7:7777").await;
    assert_eq!(status, 429);

    exhaust(&gw, "[2001:db8:a::1]:443").await;
    let (status, body) = public_via_proxy(&gw, "[2001:db8:b::1]:443").await;
    assert_eq!(status, 200, "{body}");
    // A chain: the rightmost untrusted hop is the client, ports or not.
    let (status, body) = public_via_proxy(&gw, "198.51.100.1, 203.0.113.9:1, 127.0.0.1:2").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_clients_share_a_bucket_per_64() {
    let (_db, gw) = start().await;
    exhaust(&gw, "2001:db8:1:2::1").await;
    // Another address of the same /64: the same bucket.
    let (status, body) = public_via_proxy(&gw, "2001:db8:1:2:ffff:eeee:dddd:cccc").await;
    assert_eq!(status, 429, "{body}");
    // Another /64: a bucket of its own.
    let (status, body) = public_via_proxy(&gw, "2001:db8:1:3::1").await;
    assert_eq!(status, 200, "{body}");

    // The brute-force guard counts per /64 too.
    let bad_key = |xff: &'static str| {
        send(
            http_from("127.0.0.1")
                .get(gw.url("/echo"))
                .header("x-forwarded-for", xff)
                .bearer_auth("gw_live_not_a_key"),
        )
    };
    for xff in ["2001:db8:5:6::1", "2001:db8:5:6::2"] {
        let (status, _, body) = bad_key(xff).await;
        assert_eq!(status, 401, "{xff}: {body}");
    }
    let (status, _, body) = bad_key("2001:db8:5:6::3").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`auth-failures-minute`")),
        "{body}"
    );
    let (status, _, body) = bad_key("2001:db8:5:7::1").await;
    assert_eq!(status, 401, "another /64: {body}");

    // exempt_ips sees the full address: its /64 neighbour is limited, the
    // exempt address is not.
    exhaust(&gw, "2001:db8:9:9::2").await;
    for _ in 0..5 {
        let (status, body) = public_via_proxy(&gw, "2001:db8:9:9::1").await;
        assert_eq!(status, 200, "exempt address: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_peer_cannot_claim_a_client_or_host() {
    let (_db, gw) = start().await;
    let claims = [
        (
            "forwarded",
            "for=198.51.100.7;host=evil.example;proto=https",
        ),
        ("x-real-ip", "198.51.100.7"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let mut req = http_from("127.0.0.2").get(gw.url("/public"));
    for (k, v) in claims {
        req = req.header(k, v);
    }
    let (status, _, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let seen = &body["headers"];
    for name in ["forwarded", "x-real-ip", "x-forwarded-host"] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.2", "{seen}");

    // From the trusted proxy they pass, and every X-Forwarded-For line is
    // part of the chain the upstream gets.
    let mut req = http_from("127.0.0.1")
        .get(gw.url("/public"))
        .header("x-forwarded-for", "192.0.2.1:1");
    for (k, v) in claims {
        req = req.header(k, v);
    }
    let (status, _, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let seen = &body["headers"];
    assert_eq!(seen["x-real-ip"], "198.51.100.7", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "evil.example", "{seen}");
    assert_eq!(
        seen["x-forwarded-for"], "192.0.2.1:1, 198.51.100.7, 127.0.0.1",
        "{seen}"
    );
}

#[test]
fn ipv6_prefix_is_validated() {
    let cfg = |prefix: &str| {
        let text = format!(
            r#"
[keys]
pepper = "{PEPPER}"
[[upstreams]]
name = "echo"
targets = ["127.0.0.1:3001"]
[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "echo"
[rate_limits]
{prefix}
"#
        );
        Config::from_toml(&text, Vec::new(), Need::Serve)
    };
    let prefix = |c: Result<Config, _>| c.expect("valid").rate_limits.ipv6_prefix;
    assert_eq!(prefix(cfg("")), 64);
    assert_eq!(prefix(cfg("ipv6_prefix = 48")), 48);
    assert_eq!(prefix(cfg("ipv6_prefix = 128")), 128);
    for bad in ["0", "129", "-1"] {
        let errs = cfg(&format!("ipv6_prefix = {bad}")).expect_err(bad);
        assert_eq!(errs.0[0].path, "rate_limits.ipv6_prefix", "{bad}: {errs:?}");
    }
    let errs = cfg("ipv6_prefix = \"64\"").expect_err("a string");
    assert!(errs.0[0].message.contains("ipv6_prefix"), "{errs:?}");
    let errs = cfg("ipv6_prefix = 0").expect_err("0");
    assert!(
        errs.0[0].message.contains("between 1 and 128"),
        "{:?}",
        errs.0[0]
    );
}
