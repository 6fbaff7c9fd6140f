//! Admin authority (DESIGN §3 "API keys" → "Authority"): a key hands out only
//! what it holds. Setting `rate_limits`, and removing or extending an
//! expiry, needs `admin` on every path: the admin API and the lifecycle the
//! CLI shares. Shortening an expiry stays allowed for `write:keys`.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn in_secs(s: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(s)).to_rfc3339()
}

fn expiry(v: &Value) -> Option<DateTime<Utc>> {
    v["expires_at"]
        .as_str()
        .map(|s| s.parse().expect("expires_at is RFC 3339"))
}

/// 403 `insufficient_scope` whose message names `admin`.
fn assert_needs_admin(status: u16, v: &Value, what: &str) {
    assert_eq!(
        (status, code(v)),
        (403, "insufficient_scope"),
        "{what}: {v}"
    );
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("`admin`"), "{what}: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_keys_cannot_raise_limits_or_lengthen_expiries() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;

    // The attacker: a write:keys key with a small limit that expires in a day.
    let (s, w) = api(
        &gw,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({
            "name": "writer",
            "scopes": ["read:keys", "write:keys", "read:echo"],
            "rate_limits": {"per_minute": 5},
            "expires_in_seconds": 86_400,
        })),
    )
    .await;
    assert_eq!(s, 201, "{w}");
    let writer = w["key"].as_str().expect("key").to_string();
    let own = format!("/api/v1/keys/{}", w["id"].as_str().expect("id"));
    let own_expiry = expiry(&w).expect("writer expires");
    wait_known(&gw, &writer).await;

    // A key the writer covers, without an expiry.
    let (s, k) = api(
        &gw,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({"name": "forever", "scopes": ["read:echo"]})),
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let forever = format!("/api/v1/keys/{}", k["id"].as_str().expect("id"));

    let escalations: Vec<(&str, Method, String, Value)> = vec![
        (
            "raise own limit",
            Method::PUT,
            own.clone(),
            json!({"rate_limits": {"per_minute": 1_000_000}}),
        ),
        (
            "raise own limit (PATCH)",
            Method::PATCH,
            own.clone(),
            json!({"rate_limits": {"per_minute": 1_000_000}}),
        ),
        (
            "clear own limits",
            Method::PUT,
            own.clone(),
            json!({"rate_limits": null}),
        ),
        (
            "add a limit to another key",
            Method::PUT,
            forever.clone(),
            json!({"rate_limits": {"per_day": 1}}),
        ),
        (
            "remove own expiry",
            Method::PUT,
            own.clone(),
            json!({"expires_at": null}),
        ),
        (
            "extend own expiry",
            Method::PUT,
            own.clone(),
            json!({"expires_at": in_secs(30 * 86_400)}),
        ),
        (
            "extend own expiry by seconds",
            Method::PUT,
            own.clone(),
            json!({"expires_in_seconds": 30 * 86_400}),
        ),
        (
            "rename and extend in one call",
            Method::PUT,
            own.clone(),
            json!({"name": "renamed", "expires_in_seconds": 30 * 86_400}),
        ),
        (
            "create with limits",
            Method::POST,
            "/api/v1/keys".into(),
            json!({"name": "minted", "scopes": ["read:echo"], "rate_limits": {"per_minute": 1_000_000}, "expires_in_seconds": 60}),
        ),
        (
            "create outliving the creator",
            Method::POST,
            "/api/v1/keys".into(),
            json!({"name": "minted", "scopes": ["read:echo"], "expires_in_seconds": 30 * 86_400}),
        ),
        (
            "create without expiry while the creator expires",
            Method::POST,
            "/api/v1/keys".into(),
            json!({"name": "minted", "scopes": ["read:echo"]}),
        ),
    ];
    for (what, method, path, body) in &escalations {
        let (s, v) = api(&gw, method.clone(), path, &writer, Some(body.clone())).await;
        assert_needs_admin(s, &v, what);
    }

    // Nothing changed in Postgres.
    let (_, now) = api(&gw, Method::GET, &own, &admin, None).await;
    assert_eq!(
        now["rate_limits"],
        json!({"per_minute": 5, "per_hour": null, "per_day": null})
    );
    assert_eq!(now["name"], "writer");
    assert_eq!(expiry(&now), Some(own_expiry));
    let (_, f) = api(&gw, Method::GET, &forever, &admin, None).await;
    assert_eq!(
        f["rate_limits"],
        json!({"per_minute": null, "per_hour": null, "per_day": null})
    );
    let (_, listed) = api(&gw, Method::GET, "/api/v1/keys?q=minted", &admin, None).await;
    assert_eq!(listed["data"], json!([]), "no key was minted");

    // The limiter still holds the writer to 5 a minute on the proxy.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get(&gw.url("/echo"), Some(&writer)).await.0);
    }
    // (At least one: a minute boundary in between may admit a sixth.)
    assert!(statuses.contains(&429), "{statuses:?}");

    // Denied escalations are audited.
    let target = format!("PUT {own}");
    let audited = eventually(Duration::from_secs(5), || async {
        let (_, v) = api(
            &gw,
            Method::GET,
            "/api/v1/audit-logs?action=admin.access_denied&limit=100",
            &admin,
            None,
        )
        .await;
        v["data"].as_array().is_some_and(|d| {
            d.iter().any(|e| {
                e["result"] == "denied"
                    && e["target"]["id"] == target.as_str()
                    && e["after"]["code"] == "insufficient_scope"
                    && e["after"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("`admin`"))
            })
        })
    })
    .await;
    assert!(audited, "the escalation attempts were not audited");

    // Shortening stays allowed: own expiry, and setting one where there was none.
    let sooner = Utc::now() + chrono::Duration::seconds(3_600);
    let (s, v) = api(
        &gw,
        Method::PUT,
        &own,
        &writer,
        Some(json!({"expires_at": sooner.to_rfc3339()})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(expiry(&v).is_some_and(|t| t < own_expiry));
    let (s, v) = api(
        &gw,
        Method::PUT,
        &forever,
        &writer,
        Some(json!({"expires_in_seconds": 600})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(expiry(&v).is_some());
    // Restating the limits a key already has changes nothing and is allowed.
    let (s, v) = api(
        &gw,
        Method::PUT,
        &own,
        &writer,
        Some(json!({"rate_limits": {"per_minute": 5}, "description": "same limits"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A key that expires no later than its creator, without limits.
    let (s, v) = api(
        &gw,
        Method::POST,
        "/api/v1/keys",
        &writer,
        Some(json!({"name": "child", "scopes": ["read:echo"], "expires_in_seconds": 60})),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // An admin may do all of it.
    for (what, method, path, body) in &escalations {
        let (s, v) = api(&gw, method.clone(), path, &admin, Some(body.clone())).await;
        assert!(s == 200 || s == 201, "admin: {what}: {s} {v}");
    }
    let (_, now) = api(&gw, Method::GET, &own, &admin, None).await;
    assert_eq!(now["name"], "renamed");
    assert!(expiry(&now).is_some_and(|t| t > own_expiry));
}

/// The same rule inside the lifecycle the CLI shares: a restricted
/// authority is refused there, whatever handler called it.
#[tokio::test(flavor = "multi_thread")]
async fn the_lifecycle_itself_enforces_the_authority_rule() {
    use gateway::config::{Config, Limits, Need};
    use gateway::keys::scope::Scope;
    use gateway::service::keys::{Authority, KeyService, KeyUpdate, OpError};
    use gateway::store::audit::Origin;
    use gateway::store::keys::{self as repo, NewKey};

    let db = TestDb::new().await;
    let cfg = Config::from_toml(
        &format!(
            "[database]\nurl = \"{}\"\n[keys]\npepper = \"{PEPPER}\"\n",
            db.url
        ),
        Vec::<(String, String)>::new(),
        Need::Keys,
    )
    .expect("config");
    let service = KeyService::new(&cfg);
    let mut client = db.client().await;
    let origin = Origin::cli();
    let scopes =
        |s: &[&str]| -> Vec<Scope> { s.iter().map(|s| Scope::parse(s).expect("scope")).collect() };
    let writer = Authority::of(&scopes(&["write:keys", "read:echo"]));

    let limited = Limits {
        per_minute: Some(5),
        ..Limits::default()
    };
    let expires = Utc::now() + chrono::Duration::days(1);
    let key = service
        .create(
            &mut client,
            &origin,
            &Authority::Unrestricted,
            &NewKey {
                name: "k".into(),
                description: String::new(),
                scopes: scopes(&["read:echo"]),
                limits: limited,
                metadata: json!({}),
                expires_at: Some(expires),
            },
        )
        .await
        .expect("an unrestricted create");
    let id = key.row.id;

    let refused = [
        KeyUpdate {
            limits: Some(Limits {
                per_minute: Some(1_000_000),
                ..Limits::default()
            }),
            ..KeyUpdate::default()
        },
        KeyUpdate {
            expires_at: Some(None),
            ..KeyUpdate::default()
        },
        KeyUpdate {
            expires_at: Some(Some(expires + chrono::Duration::days(1))),
            ..KeyUpdate::default()
        },
    ];
    for change in refused {
        let r = service
            .update(&mut client, &origin, &writer, id, change.clone())
            .await;
        assert!(
            matches!(&r, Err(OpError::NeedsAdmin(_))),
            "{change:?}: {r:?}"
        );
    }
    let new_with_limits = NewKey {
        name: "minted".into(),
        description: String::new(),
        scopes: scopes(&["read:echo"]),
        limits: limited,
        metadata: json!({}),
        expires_at: Some(expires),
    };
    let r = service
        .create(&mut client, &origin, &writer, &new_with_limits)
        .await;
    assert!(matches!(&r, Err(OpError::NeedsAdmin(_))), "{r:?}");

    let row = repo::get(&client, id).await.expect("get").expect("row");
    assert_eq!(row.rate_limits, limited);
    assert_eq!(
        row.expires_at.map(|t| t.timestamp_micros()),
        Some(expires.timestamp_micros())
    );

    // Shortening is fine; the unrestricted CLI authority may do the rest.
    let sooner = expires - chrono::Duration::hours(1);
    let row = service
        .update(
            &mut client,
            &origin,
            &writer,
            id,
            KeyUpdate {
                expires_at: Some(Some(sooner)),
                ..KeyUpdate::default()
            },
        )
        .await
        .expect("shortening is allowed");
    assert_eq!(
        row.expires_at.map(|t| t.timestamp()),
        Some(sooner.timestamp())
    );
    service
        .update(
            &mut client,
            &origin,
            &Authority::Unrestricted,
            id,
            KeyUpdate {
                expires_at: Some(None),
                limits: Some(Limits::default()),
                ..KeyUpdate::default()
            },
        )
        .await
        .expect("the CLI may remove an expiry and limits");
}

/// A key is listed as the configured prefix and 4 more characters, whatever
/// the prefix's length: a fixed 12 characters would show 10 random
/// characters of a key whose prefix is `k_`.
#[tokio::test(flavor = "multi_thread")]
async fn the_listed_prefix_is_the_configured_prefix_and_four_characters() {
    use gateway::config::{Config, Need};
    use gateway::service::keys::{Authority, KeyService};
    use gateway::store::audit::Origin;
    use gateway::store::keys::NewKey;

    let db = TestDb::new().await;
    let mut client = db.client().await;
    for prefix in ["k_", "gw_live_", "acme_prod_live_"] {
        let cfg = Config::from_toml(
            &format!(
                "[database]\nurl = \"{}\"\n[keys]\npepper = \"{PEPPER}\"\nprefix = \"{prefix}\"\n",
                db.url
            ),
            Vec::<(String, String)>::new(),
            Need::Keys,
        )
        .expect("config");
        let service = KeyService::new(&cfg);
        let new = NewKey {
            name: prefix.into(),
            description: String::new(),
            scopes: Vec::new(),
            limits: Default::default(),
            metadata: json!({}),
            expires_at: None,
        };
        let created = service
            .create(&mut client, &Origin::cli(), &Authority::Unrestricted, &new)
            .await
            .expect("create");
        let shown = prefix.len() + 4;
        assert_eq!(created.row.prefix, created.key[..shown], "{prefix}");
        let rotated = service
            .rotate(
                &mut client,
                &Origin::cli(),
                &Authority::Unrestricted,
                created.row.id,
                Duration::from_secs(60),
            )
            .await
            .expect("rotate");
        assert_eq!(rotated.row.prefix, rotated.key[..shown], "{prefix}");
        assert_eq!(
            rotated.row.rotation.and_then(|r| r.previous_prefix),
            Some(created.key[..shown].to_string()),
            "{prefix}"
        );
    }
}

/// Where the preload library of `faketime` lives (Debian's package).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A `gateway serve` whose wall clock runs `offset` (faketime syntax,
/// e.g. `+1h`) off the database's.
struct SkewedGateway {
    child: std::process::Child,
    admin: std::net::SocketAddr,
    proxy: std::net::SocketAddr,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SkewedGateway {
    async fn start(db: &TestDb, opts: Opts, offset: &str) -> SkewedGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = write_config(dir.path(), &db.url, proxy, admin, &opts);
        let log = dir.path().join("gateway.log");
        let child = command()
            .args(["serve", "-c"])
            .arg(&config)
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn gateway");
        let gw = SkewedGateway {
            child,
            admin,
            proxy,
            config,
            log,
            _dir: dir,
        };
        let url = format!("http://{admin}/health/ready");
        let ready = eventually(Duration::from_secs(30), || async {
            http()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
                && std::net::TcpStream::connect(proxy).is_ok()
        })
        .await;
        assert!(ready, "skewed gateway not ready:\n{}", gw.logs());
        gw
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SkewedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The grace of a rotation is computed and checked on one clock, the
/// gateway's: with the gateway an hour ahead of the database, a 60 s grace
/// written with the database's `now()` had already ended when the proxy
/// first saw it, and the old secret was refused at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_grace_holds_when_the_gateway_clock_differs_from_the_database() {
    if !std::path::Path::new(LIBFAKETIME).exists() {
        panic!("{LIBFAKETIME} is missing: apt-get install faketime (scripts/lib.sh does)");
    }
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    for offset in ["+1h", "-1h"] {
        let gw = SkewedGateway::start(&db, Opts::new(default_routes(upstream)), offset).await;
        // The CLI runs on the real clock, as an operator's would.
        let out = command()
            .args([
                "keys",
                "create",
                "--name",
                "rotating",
                "--scopes",
                "read:echo,write:keys,read:keys",
                "--json",
                "-c",
            ])
            .arg(&gw.config)
            .output()
            .expect("keys create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        let (id, old) = (
            v["id"].as_str().expect("id").to_string(),
            v["key"].as_str().expect("key").to_string(),
        );
        let echo = format!("http://{}/echo", gw.proxy);
        let known = eventually(Duration::from_secs(5), || async {
            get(&echo, Some(&old)).await.0 == 200
        })
        .await;
        assert!(known, "{offset}: key never usable:\n{}", gw.logs());

        let (s, _, r) = send(
            http()
                .post(format!("http://{}/api/v1/keys/{id}/rotate", gw.admin))
                .bearer_auth(&old)
                .json(&json!({"grace_period_seconds": 60})),
        )
        .await;
        assert_eq!(s, 200, "{offset}: {r}");
        let new = r["key"].as_str().expect("new key").to_string();
        let rotated = eventually(Duration::from_secs(5), || async {
            get(&echo, Some(&new)).await.0 == 200
        })
        .await;
        assert!(rotated, "{offset}: the new secret never worked");
        let (s, _, body) = get(&echo, Some(&old)).await;
        assert_eq!(
            s, 200,
            "{offset}: the old secret must work during its 60 s grace: {body}"
        );
    }
}
