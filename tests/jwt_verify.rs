//! The JWT verifier driven directly against a loopback JWKS server: tokens
//! accepted per algorithm, each attack refused with its error, unknown `kid`
//! re-fetch (rate limited, single flight), rotation, an unreachable JWKS,
//! readiness.

mod common;
mod jwt_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::{IssuerConfig, JwtConfig, KeySource, Secret};
use gateway::jwt::{JwksRefresher, Jwt, ManualClock, TokenError};
use jwt_support::*;
use serde_json::json;

fn issuer(name: &str, keys: KeySource, algorithms: &[&str]) -> IssuerConfig {
    let mut cfg = issuer_config(name, ISSUER, keys, algorithms);
    cfg.audiences.push("second-audience".into());
    cfg
}

fn config(issuers: Vec<IssuerConfig>) -> JwtConfig {
    JwtConfig { issuers }
}

/// A verifier on a manual clock for one `jwks_url` issuer, keys loaded.
async fn verifier(server: &JwksServer, algorithms: &[&str]) -> (Arc<Jwt>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::now());
    let jwt = Jwt::with_clock(
        &config(vec![issuer(
            "idp",
            KeySource::JwksUrl(server.url()),
            algorithms,
        )]),
        clock.clone(),
    );
    assert!(!jwt.is_ready(), "no keys before the first fetch");
    assert_eq!(jwt.refresh_all().await, 0, "the first fetch works");
    assert!(jwt.is_ready());
    (jwt, clock)
}

fn invalid(r: Result<gateway::jwt::JwtIdentity, TokenError>) -> Option<&'static str> {
    match r {
        Err(TokenError::Invalid(why)) => Some(why),
        _ => None,
    }
}

#[tokio::test]
async fn valid_tokens_are_accepted_for_each_algorithm() {
    let (rsa, ec, ed) = (TestKey::rsa("r1", 0), TestKey::ec("e1"), TestKey::ed("d1"));
    let server = JwksServer::start(&jwks(&[&rsa, &ec, &ed])).await;
    let (jwt, _clock) = verifier(&server, &["RS256", "ES256", "EdDSA"]).await;
    for key in [&rsa, &ec, &ed] {
        let mut c = claims("user-1", "read:orders write:orders Not/A:Scope");
        // An array of audiences, one of them ours.
        c["aud"] = json!(["someone-else", AUDIENCE]);
        let id = jwt.verify(&key.mint(&c)).await;
        let id = id.unwrap_or_else(|e| panic!("{:?} refused: {e:?}", key.alg));
        assert_eq!(&*id.issuer, "idp");
        assert_eq!(&*id.subject, "user-1");
        let scopes: Vec<&str> = id.scopes.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            scopes,
            ["read:orders", "write:orders"],
            "the invalid scope is dropped"
        );
        assert!(!id.forward_token);
    }
    // Scopes as an array of strings.
    let mut c = claims("user-2", "");
    c["scope"] = json!(["admin", "read:x"]);
    let id = jwt.verify(&rsa.mint(&c)).await.expect("array scopes");
    assert_eq!(id.scopes.len(), 2);
}

#[tokio::test]
async fn refused_tokens_get_the_right_error() {
    let rsa = TestKey::rsa("r1", 0);
    let ec = TestKey::ec("e1");
    let server = JwksServer::start(&jwks(&[&rsa, &ec])).await;
    let (jwt, _clock) = verifier(&server, &["RS256"]).await;
    let good = claims("user-1", "read:a");
    let now = now_s();

    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().map(|o| o.remove(k));
        c
    };
    let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
        (
            "wrong aud",
            rsa.mint(&with("aud", json!("api://other"))),
            Err(TokenError::Invalid("audience not accepted")),
        ),
        (
            "no aud",
            rsa.mint(&without("aud")),
            Err(TokenError::Invalid("audience not accepted")),
        ),
        (
            "wrong iss",
            rsa.mint(&with("iss", json!("https://evil.test/"))),
            Err(TokenError::Invalid("unknown issuer")),
        ),
        (
            "iss differs by a slash",
            rsa.mint(&with("iss", json!("https://idp.test"))),
            Err(TokenError::Invalid("unknown issuer")),
        ),
        (
            "expired",
            rsa.mint(&with("exp", json!(now - 31))),
            Err(TokenError::Expired),
        ),
        (
            "expired within leeway",
            rsa.mint(&with("exp", json!(now - 5))),
            Ok(()),
        ),
        (
            "no exp",
            rsa.mint(&without("exp")),
            Err(TokenError::Invalid("missing exp")),
        ),
        (
            "not yet valid",
            rsa.mint(&with("nbf", json!(now + 120))),
            Err(TokenError::Invalid("token not yet valid")),
        ),
        (
            "iat in the future",
            rsa.mint(&with("iat", json!(now + 120))),
            Err(TokenError::Invalid("token issued in the future")),
        ),
        (
            "missing sub",
            rsa.mint(&without("sub")),
            Err(TokenError::Invalid("missing sub")),
        ),
        (
            "sub not a string",
            rsa.mint(&with("sub", json!(7))),
            Err(TokenError::Invalid("invalid sub")),
        ),
        (
            "alg not allowed for the issuer",
            ec.mint(&good),
            Err(TokenError::Invalid("algorithm not allowed")),
        ),
        (
            "kid of an EC key on an RS256 token",
            rsa.with_kid("e1").mint(&good),
            Err(TokenError::Invalid("no key for this algorithm")),
        ),
        (
            "oversized",
            rsa.mint(&with("pad", json!("x".repeat(9000)))),
            Err(TokenError::Invalid("token too long")),
        ),
        (
            "garbage",
            "not-a-token".into(),
            Err(TokenError::Invalid("malformed token")),
        ),
        (
            "crit header",
            rsa.mint_with_header(
                &json!({"alg": "RS256", "kid": "r1", "crit": ["exp"], "exp": 1}),
                &good,
            ),
            Err(TokenError::Invalid("unsupported critical header")),
        ),
    ];
    for (what, token, want) in cases {
        let got = jwt.verify(&token).await.map(|_| ());
        assert_eq!(got, want, "{what}");
    }
}

/// A valid token with its signature replaced by another key's, or bit-flipped.
#[tokio::test]
async fn bad_signatures_are_refused() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    let (jwt, _clock) = verifier(&server, &["RS256"]).await;
    let c = claims("user-1", "");
    // Same kid, another private key.
    let forged = TestKey::rsa("r1", 1).mint(&c);
    assert_eq!(invalid(jwt.verify(&forged).await), Some("bad signature"));
    // Claims changed after signing.
    let token = rsa.mint(&c);
    let parts: Vec<&str> = token.split('.').collect();
    let mut c2 = c.clone();
    c2["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            c2.to_string()
        ),
        parts[2]
    );
    assert_eq!(invalid(jwt.verify(&tampered).await), Some("bad signature"));
    // No signature at all.
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(invalid(jwt.verify(&stripped).await), Some("bad signature"));
    assert!(jwt.verify(&token).await.is_ok());
}

/// `alg: none`, in every spelling, with and without a signature part.
#[tokio::test]
async fn alg_none_is_refused() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    let (jwt, _clock) = verifier(&server, &["RS256"]).await;
    let c = claims("user-1", "admin");
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        for sig in ["", "e30"] {
            let t = unsigned(&json!({"alg": alg, "kid": "r1"}), &c, sig);
            assert_eq!(
                invalid(jwt.verify(&t).await),
                Some("algorithm not allowed"),
                "alg {alg:?} sig {sig:?}"
            );
        }
    }
    let t = unsigned(&json!({"typ": "JWT"}), &c, "");
    assert_eq!(invalid(jwt.verify(&t).await), Some("malformed token"));
}

/// Algorithm confusion: HS256 "signed" with the issuer's public RSA key.
#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    let (jwt, _clock) = verifier(&server, &["RS256"]).await;
    let c = claims("user-1", "admin");
    let jwk_n = rsa.jwk["n"].as_str().unwrap_or_default().to_string();
    let secrets: [&[u8]; 3] = [rsa.public_pem.as_bytes(), &rsa.public_der, jwk_n.as_bytes()];
    for secret in secrets {
        for kid in [Some("r1"), None] {
            let t = mint_hs256(secret, kid, &c);
            assert_eq!(invalid(jwt.verify(&t).await), Some("algorithm not allowed"));
        }
    }

    // Even an issuer (mis)configured to allow HS256 beside a JWKS, which
    // config validation refuses, never gets an HMAC key from a JWK.
    let clock = Arc::new(ManualClock::now());
    let lax = Jwt::with_clock(
        &config(vec![issuer(
            "lax",
            KeySource::JwksUrl(server.url()),
            &["RS256", "HS256"],
        )]),
        clock,
    );
    assert_eq!(lax.refresh_all().await, 0);
    for secret in secrets {
        for kid in [Some("r1"), None] {
            let t = mint_hs256(secret, kid, &c);
            assert_eq!(
                invalid(lax.verify(&t).await),
                Some("no key for this algorithm"),
                "kid {kid:?}"
            );
        }
    }
    // Nor from an `oct` JWK the IdP (or an attacker on its path) publishes.
    server.set_jwks(&json!({"keys": [
        rsa.jwk.clone(),
        {"kty": "oct", "kid": "h1", "alg": "HS256", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
    ]}));
    assert_eq!(lax.refresh_all().await, 0);
    let t = mint_hs256(b"secretsecretsecretsecretsecret", Some("h1"), &c);
    assert_eq!(invalid(lax.verify(&t).await), Some("unknown key id"));
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_refuses() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    let (jwt, clock) = verifier(&server, &["RS256"]).await;
    assert_eq!(server.fetches(), 1);
    let stranger = rsa.with_kid("nobody").mint(&claims("u", ""));
    // Within the rate-limit window of the first fetch: no re-fetch.
    assert_eq!(invalid(jwt.verify(&stranger).await), Some("unknown key id"));
    assert_eq!(server.fetches(), 1);
    clock.advance(Duration::from_secs(11));
    assert_eq!(invalid(jwt.verify(&stranger).await), Some("unknown key id"));
    assert_eq!(server.fetches(), 2, "one re-fetch");
    for _ in 0..5 {
        assert_eq!(invalid(jwt.verify(&stranger).await), Some("unknown key id"));
    }
    assert_eq!(server.fetches(), 2, "rate limited");
}

#[tokio::test]
async fn rotation_at_the_idp_is_picked_up_without_restart() {
    let old = TestKey::rsa("2024", 0);
    let server = JwksServer::start(&jwks(&[&old])).await;
    let (jwt, clock) = verifier(&server, &["RS256"]).await;
    assert!(jwt.verify(&old.mint(&claims("u", ""))).await.is_ok());
    let new = TestKey::rsa("2025", 1);
    server.set_jwks(&jwks(&[&new]));
    clock.advance(Duration::from_secs(11));
    let id = jwt.verify(&new.mint(&claims("u", ""))).await;
    assert_eq!(id.map(|i| i.subject.to_string()), Ok("u".to_string()));
    // The old key left the set with that fetch.
    assert_eq!(
        invalid(jwt.verify(&old.mint(&claims("u", ""))).await),
        Some("unknown key id")
    );
}

#[tokio::test]
async fn an_unreachable_jwks_keeps_the_last_good_set() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    server.set_cache_control(Some("max-age=600"));
    let (jwt, clock) = verifier(&server, &["RS256"]).await;
    // Valid for a day, so stepping the clock below leaves it unexpired.
    let mut c = claims("u", "");
    c["exp"] = json!(now_s() + 86_400);
    let token = rsa.mint(&c);
    server.stop().await;
    assert_eq!(jwt.refresh_all().await, 1, "the refresh fails");
    clock.advance(Duration::from_secs(11));
    let stranger = rsa.with_kid("r2").mint(&c);
    assert_eq!(invalid(jwt.verify(&stranger).await), Some("unknown key id"));
    assert!(jwt.verify(&token).await.is_ok(), "cached key");
    let s = &jwt.status()[0];
    assert_eq!(
        (s.keys, s.last_error, s.stale),
        (Some(1), Some("unreachable"), false)
    );
    // Twice the max-age later the set is stale, and still used.
    clock.advance(Duration::from_secs(1200));
    assert!(jwt.status()[0].stale);
    assert!(jwt.is_ready());
    assert!(jwt.verify(&token).await.is_ok());
    // Garbage or an error status from the IdP does not replace the set either.
    server.restart().await;
    server.set_body("<html>maintenance</html>");
    assert_eq!(jwt.refresh_all().await, 1);
    assert_eq!(jwt.status()[0].last_error, Some("not_a_jwks"));
    server.set_body(&json!({"keys": []}).to_string());
    assert_eq!(jwt.refresh_all().await, 1);
    assert_eq!(jwt.status()[0].last_error, Some("no_usable_keys"));
    server.set_status(503);
    assert_eq!(jwt.refresh_all().await, 1);
    assert_eq!(jwt.status()[0].last_error, Some("http_status"));
    assert!(jwt.verify(&token).await.is_ok());
    server.set_status(200);
    server.set_jwks(&jwks(&[&rsa]));
    assert_eq!(jwt.refresh_all().await, 0);
    let s = &jwt.status()[0];
    assert_eq!((s.last_error, s.stale), (None, false));
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let old = TestKey::rsa("old", 0);
    let server = JwksServer::start(&jwks(&[&old])).await;
    let (jwt, clock) = verifier(&server, &["RS256", "ES256"]).await;
    let before = server.fetches();
    let new = TestKey::ec("new");
    server.set_jwks(&jwks(&[&old, &new]));
    // Slow enough that every verification below arrives during the fetch.
    server.set_delay(Duration::from_millis(300));
    clock.advance(Duration::from_secs(11));
    let token = new.mint(&claims("u", ""));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (j, t) = (jwt.clone(), token.clone());
            tokio::spawn(async move { j.verify(&t).await.is_ok() })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            accepted += 1;
        }
    }
    assert_eq!(
        server.fetches(),
        before + 1,
        "one fetch for 16 verifications"
    );
    assert_eq!(accepted, 16, "every waiter used the fetched set");
}

#[tokio::test]
async fn readiness_waits_for_the_first_fetch() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    server.stop().await;
    let jwt = Jwt::new(&config(vec![issuer(
        "idp",
        KeySource::JwksUrl(server.url()),
        &["RS256"],
    )]));
    assert!(jwt.is_enabled());
    assert!(!jwt.is_ready());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let refresher = JwksRefresher::new(jwt.clone());
    let task = tokio::spawn(async move { refresher.run(rx).await });
    // The IdP is down: the first attempt fails and is retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwt.status()[0].last_error.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(jwt.status()[0].last_error, Some("unreachable"));
    assert!(!jwt.is_ready());
    assert_eq!(
        invalid(jwt.verify(&rsa.mint(&claims("u", ""))).await),
        Some("issuer keys not available")
    );
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !jwt.is_ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(jwt.is_ready(), "ready once the retry fetched the keys");
    assert!(jwt.verify(&rsa.mint(&claims("u", ""))).await.is_ok());
    let _ = tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

#[tokio::test]
async fn jwks_file_and_hs256_secret_issuers_are_ready_at_start() {
    let (rsa, ed) = (TestKey::rsa("f1", 0), TestKey::ed("f2"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&rsa, &ed]).to_string()).expect("write jwks");
    let mut hs = issuer(
        "shared",
        KeySource::Hs256Secret(Secret::new("0123456789abcdef0123456789abcdef")),
        &["HS256"],
    );
    hs.issuer = "https://shared.test/".into();
    let jwt = Jwt::new(&config(vec![
        issuer(
            "file",
            KeySource::JwksFile(path.to_string_lossy().into()),
            &["RS256", "EdDSA"],
        ),
        hs,
    ]));
    assert!(jwt.is_ready());
    // A token without `kid` is tried against every key of its type.
    let c = claims("u", "");
    let no_kid = ed.mint_with_header(&json!({"alg": "EdDSA"}), &c);
    assert_eq!(
        jwt.verify(&no_kid).await.map(|i| i.issuer.to_string()),
        Ok("file".into())
    );
    assert!(jwt.verify(&rsa.mint(&c)).await.is_ok());
    let mut c2 = c.clone();
    c2["iss"] = json!("https://shared.test/");
    let t = mint_hs256(b"0123456789abcdef0123456789abcdef", None, &c2);
    assert_eq!(
        jwt.verify(&t).await.map(|i| i.issuer.to_string()),
        Ok("shared".into())
    );
    let t = mint_hs256(b"0123456789abcdef0123456789abcdeX", None, &c2);
    assert_eq!(invalid(jwt.verify(&t).await), Some("bad signature"));
    // An RS256 token claiming the HS256 issuer.
    assert_eq!(
        invalid(jwt.verify(&rsa.mint(&c2)).await),
        Some("algorithm not allowed")
    );
}

/// The wiring in a real gateway: `/health/ready` waits for the first JWKS
/// fetch, `/health` reports the issuer, and the metrics exist from start-up.
#[tokio::test]
async fn gateway_readiness_and_health_follow_the_jwks() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    server.stop().await;
    let db = common::TestDb::new().await;
    let upstream = common::start_upstream().await;
    let routes = format!(
        "{}\n{}",
        common::default_routes(upstream),
        issuer_toml("idp", &server.url(), &["RS256"], "")
    );
    let gw = common::Gateway::start_unready(&db, common::Opts::new(routes)).await;

    let jwt_not_ready = common::eventually(Duration::from_secs(20), || async {
        let (status, _, body) = common::get(&gw.admin_url("/health/ready"), None).await;
        status == 503 && body["reason"] == "JWT issuer keys not loaded yet"
    })
    .await;
    assert!(
        jwt_not_ready,
        "not ready while the JWKS is unreachable; log:\n{}",
        gw.logs()
    );
    let failing = common::eventually(Duration::from_secs(20), || async {
        let (status, _, body) = common::get(&gw.admin_url("/health"), None).await;
        let idp = &body["checks"]["jwt"]["issuers"]["idp"];
        status == 503 && idp["status"] == "loading" && idp["last_error"] == "unreachable"
    })
    .await;
    assert!(failing, "/health shows the failing issuer");

    server.restart().await;
    let ready = common::eventually(Duration::from_secs(30), || async {
        common::get(&gw.admin_url("/health/ready"), None).await.0 == 200
    })
    .await;
    assert!(
        ready,
        "ready after the retry fetched the keys; log:\n{}",
        gw.logs()
    );
    let (status, _, body) = common::get(&gw.admin_url("/health"), None).await;
    let check = &body["checks"]["jwt"];
    assert_eq!(status, 200, "{body}");
    assert_eq!(check["status"], "up", "{check}");
    assert_eq!(check["issuers"]["idp"]["keys"], 1, "{check}");
    assert_eq!(check["issuers"]["idp"]["source"], "jwks_url", "{check}");
    assert_eq!(check["issuers"]["idp"]["max_age_seconds"], 300, "{check}");

    let m = common::metrics(&gw).await;
    for series in [
        r#"gateway_jwt_verifications_total{issuer="idp",outcome="ok"}"#,
        r#"gateway_jwt_verifications_total{issuer="idp",outcome="unknown_kid"}"#,
        r#"gateway_jwt_verifications_total{issuer="unknown",outcome="unknown_issuer"}"#,
        r#"gateway_jwks_refreshes_total{issuer="idp",result="ok"}"#,
        r#"gateway_jwks_refreshes_total{issuer="idp",result="error"}"#,
        r#"gateway_jwks_age_seconds{issuer="idp"}"#,
    ] {
        assert!(
            common::sample(&m, series).is_some(),
            "{series} missing:\n{m}"
        );
    }
    assert_eq!(
        common::sample(&m, r#"gateway_jwks_keys{issuer="idp"}"#),
        Some(1.0)
    );
    assert!(
        common::sample(
            &m,
            r#"gateway_jwks_refreshes_total{issuer="idp",result="error"}"#
        ) >= Some(1.0)
    );
}

/// Outcomes are counted per configured issuer; a token naming no configured
/// issuer counts under `unknown`, never under a label taken from the token.
#[tokio::test]
async fn verifications_are_counted_by_issuer_and_outcome() {
    let rsa = TestKey::rsa("r1", 0);
    let server = JwksServer::start(&jwks(&[&rsa])).await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let clock = Arc::new(ManualClock::now());
    // The counters are registered when the verifier is built.
    let jwt = metrics::with_local_recorder(&recorder, || {
        Jwt::with_clock(
            &config(vec![issuer(
                "idp",
                KeySource::JwksUrl(server.url()),
                &["RS256"],
            )]),
            clock.clone(),
        )
    });
    let zero = handle.render();
    for series in [
        r#"gateway_jwt_verifications_total{issuer="idp",outcome="ok"} 0"#,
        r#"gateway_jwt_verifications_total{issuer="unknown",outcome="malformed"} 0"#,
    ] {
        assert!(zero.lines().any(|l| l == series), "{series} in\n{zero}");
    }
    assert_eq!(jwt.refresh_all().await, 0);
    let c = claims("u", "");
    let mut evil = c.clone();
    evil["iss"] = json!("https://attacker.test/\"} 1\ninjected{a=\"");
    let mut wrong_aud = c.clone();
    wrong_aud["aud"] = json!("nope");
    for t in [
        rsa.mint(&c),
        rsa.mint(&c),
        rsa.mint(&evil),
        rsa.mint(&wrong_aud),
        rsa.with_kid("zz").mint(&c),
        TestKey::rsa("r1", 1).mint(&c),
        "x.y.z".to_string(),
    ] {
        let _ = jwt.verify(&t).await;
    }
    let text = handle.render();
    for (series, want) in [
        (
            r#"gateway_jwt_verifications_total{issuer="idp",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"gateway_jwt_verifications_total{issuer="idp",outcome="invalid_claims"}"#,
            1.0,
        ),
        (
            r#"gateway_jwt_verifications_total{issuer="idp",outcome="unknown_kid"}"#,
            1.0,
        ),
        (
            r#"gateway_jwt_verifications_total{issuer="idp",outcome="bad_signature"}"#,
            1.0,
        ),
        (
            r#"gateway_jwt_verifications_total{issuer="unknown",outcome="unknown_issuer"}"#,
            1.0,
        ),
        (
            r#"gateway_jwt_verifications_total{issuer="unknown",outcome="malformed"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            common::sample(&text, series),
            Some(want),
            "{series} in\n{text}"
        );
    }
    assert!(
        !text.contains("attacker") && !text.contains("injected"),
        "{text}"
    );
}
