//! JWT callers on the proxy (issue 18, DESIGN §3 "JWT and roles"): route
//! `auth` modes, scopes from the token, per-subject limits (local and
//! Redis), the upstream identity headers and the 401s. Real gateway, real
//! upstream, real loopback JWKS server.

mod common;

use common::*;
use serde_json::Value;

/// The headers the upstream received, from the demo upstream's echo.
fn upstream_headers(body: &Value) -> &serde_json::Map<String, Value> {
    body["headers"].as_object().expect("echoed headers")
}

/// A client's claim to be someone never reaches the upstream: not on an
/// anonymous route, not next to a valid key.
#[tokio::test(flavor = "multi_thread")]
async fn client_sent_identity_headers_are_stripped() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (key_id, key) = gw.create_key("read:echo", &[]).await;
    let spoof = |req: reqwest::RequestBuilder| {
        req.header("x-gateway-subject", "admin")
            .header("x-gateway-issuer", "idp")
            .header("x-gateway-key-id", "00000000-0000-0000-0000-000000000000")
    };
    let (status, _, body) = send(spoof(http().get(gw.url("/public")))).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    for name in ["x-gateway-subject", "x-gateway-issuer", "x-gateway-key-id"] {
        assert!(!h.contains_key(name), "{name} reached the upstream: {body}");
    }
    let (status, _, body) = send(spoof(http().get(gw.url("/echo")).bearer_auth(&key))).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    assert!(!h.contains_key("x-gateway-subject"), "{body}");
    assert!(!h.contains_key("x-gateway-issuer"), "{body}");
    assert_eq!(h["x-gateway-key-id"], key_id.as_str(), "{body}");
}
