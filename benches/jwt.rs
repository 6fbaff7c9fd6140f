//! Criterion benches for JWT verification per algorithm (issue 18): the
//! whole `Jwt::verify` of a valid token (decode, issuer choice, key lookup by
//! `kid`, signature, claims), for RS256 (RSA 2048), ES256 (P-256), EdDSA
//! (Ed25519) and HS256.
//!
//! `cargo bench --bench jwt` runs them; `cargo test --bench jwt` runs each
//! once in debug, only to prove they still work. Keys come from a
//! `jwks_file`, so no network is involved, and a known `kid` never awaits:
//! the future completes on its first poll.

#[path = "../tests/jwt_support/mod.rs"]
mod jwt_support;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use gateway::config::{JwtConfig, KeySource, Secret};
use gateway::jwt::Jwt;
use jwt_support::{claims, issuer_config as issuer, jwks, mint_hs256, TestKey};

const HS_SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";

fn verification(c: &mut Criterion) {
    let (rsa, ec, ed) = (TestKey::rsa("r1", 0), TestKey::ec("e1"), TestKey::ed("d1"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&rsa, &ec, &ed]).to_string()).expect("write jwks");
    let jwt = Jwt::new(&JwtConfig {
        issuers: vec![
            issuer(
                "idp",
                jwt_support::ISSUER,
                KeySource::JwksFile(path.to_string_lossy().into()),
                &["RS256", "ES256", "EdDSA"],
            ),
            issuer(
                "shared",
                "https://shared.test/",
                KeySource::Hs256Secret(Secret::new(
                    String::from_utf8_lossy(HS_SECRET).into_owned(),
                )),
                &["HS256"],
            ),
        ],
    });
    assert!(jwt.is_ready(), "keys loaded from the file");

    // Realistic claims: a handful of scopes, exp an hour out.
    let mut c0 = claims("service-account-42", "read:orders write:orders read:users");
    c0["exp"] = serde_json::json!(jwt_support::now_s() + 3600);
    let mut hs_claims = c0.clone();
    hs_claims["iss"] = serde_json::json!("https://shared.test/");
    let tokens = [
        ("RS256", rsa.mint(&c0)),
        ("ES256", ec.mint(&c0)),
        ("EdDSA", ed.mint(&c0)),
        ("HS256", mint_hs256(HS_SECRET, None, &hs_claims)),
    ];

    let mut group = c.benchmark_group("jwt_verify");
    for (alg, token) in &tokens {
        let ok = jwt.verify(token).now_or_never().map(|r| r.is_ok());
        assert_eq!(ok, Some(true), "{alg} token verifies without awaiting");
        group.bench_function(*alg, |b| {
            b.iter(|| black_box(jwt.verify(black_box(token)).now_or_never()))
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
