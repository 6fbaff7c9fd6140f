//! The admin API (`/api/v1`): the key lifecycle as a user drives it, seen on
//! the proxy port of a second instance; pagination; admin scopes and the
//! privilege-escalation guard; the audit log and its hash chain; bad input.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// One admin API call with a JSON body (or none).
async fn api(
    gw: &Gateway,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().request(method, gw.admin_url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

async fn create(gw: &Gateway, key: &str, body: Value) -> Value {
    let (status, _, v) = api(gw, Method::POST, "/api/v1/keys", Some(key), Some(body)).await;
    assert_eq!(status, 201, "{v}");
    v
}

/// Polls `url` on the proxy with `key` until it answers `status` (and,
/// for errors, `want_code`), for at most a second.
async fn proxy_answers(url: &str, key: &str, status: u16, want_code: Option<&str>) -> bool {
    eventually(Duration::from_secs(1), || async {
        let (s, _, body) = get(url, Some(key)).await;
        s == status && want_code.is_none_or(|c| code(&body) == c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_lifecycle_through_the_admin_api_reaches_another_instance() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let b = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = a.create_key("admin", &[]).await.1;
    let echo = b.url("/echo");

    // Create, then use on the other instance.
    let k = create(
        &a,
        &admin,
        json!({"name": "orders", "scopes": ["read:echo"], "metadata": {"team": "orders"}}),
    )
    .await;
    let id = k["id"].as_str().expect("id").to_string();
    let secret = k["key"].as_str().expect("key").to_string();
    assert_eq!(k["status"], "active");
    assert_eq!(k["prefix"].as_str(), Some(&secret[..12]));
    assert!(proxy_answers(&echo, &secret, 200, None).await);

    // Change scopes: the old scope is refused, then restored with PATCH.
    let path = format!("/api/v1/keys/{id}");
    let (status, _, v) = api(
        &a,
        Method::PUT,
        &path,
        Some(&admin),
        Some(json!({"scopes": ["read:other"]})),
    )
    .await;
    assert_eq!((status, &v["scopes"]), (200, &json!(["read:other"])), "{v}");
    assert!(proxy_answers(&echo, &secret, 403, Some("insufficient_scope")).await);
    let (status, _, _) = api(
        &a,
        Method::PATCH,
        &path,
        Some(&admin),
        Some(json!({"scopes": ["read:echo"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(proxy_answers(&echo, &secret, 200, None).await);

    // Rotate with a short grace: both secrets work, the old one with
    // Deprecation and Sunset; after the grace only the new one does.
    let (status, _, r) = api(
        &a,
        Method::POST,
        &format!("{path}/rotate"),
        Some(&admin),
        Some(json!({"grace_period_seconds": 3})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let new_secret = r["key"].as_str().expect("new key").to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(
        r["rotation"]["previous_prefix"].as_str(),
        Some(&secret[..12])
    );
    assert!(proxy_answers(&echo, &new_secret, 200, None).await);
    let (status, headers, _) = get(&echo, Some(&secret)).await;
    assert_eq!(status, 200, "the old secret works during the grace period");
    let deprecation = headers["deprecation"].to_str().expect("deprecation");
    assert!(deprecation.starts_with('@'), "{deprecation}");
    assert!(headers["sunset"]
        .to_str()
        .expect("sunset")
        .ends_with(" GMT"));
    let (_, headers, _) = get(&echo, Some(&new_secret)).await;
    assert!(headers.get("deprecation").is_none());
    let expired = eventually(Duration::from_secs(6), || async {
        code(&get(&echo, Some(&secret)).await.2) == "expired_api_key"
    })
    .await;
    assert!(expired, "the old secret still works after its grace period");
    assert_eq!(get(&echo, Some(&new_secret)).await.0, 200);

    // Revoke: refused everywhere within a second; the row stays.
    let (status, _, v) = api(&a, Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("revoked")),
        "{v}"
    );
    assert!(v["revoked_at"].is_string());
    assert!(proxy_answers(&echo, &new_secret, 401, Some("revoked_api_key")).await);
    let (status, _, again) = api(&a, Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!((status, &again["revoked_at"]), (200, &v["revoked_at"]));
    let (status, _, v) = api(&b, Method::GET, &path, Some(&admin), None).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("revoked")));
    let (status, _, v) = api(
        &a,
        Method::PUT,
        &path,
        Some(&admin),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!((status, code(&v)), (409, "key_revoked"));

    // Expire.
    let k = create(
        &a,
        &admin,
        json!({"name": "short", "scopes": ["read:echo"], "expires_in_seconds": 2}),
    )
    .await;
    let short = k["key"].as_str().expect("key").to_string();
    assert!(proxy_answers(&echo, &short, 200, None).await);
    let expired = eventually(Duration::from_secs(5), || async {
        code(&get(&echo, Some(&short)).await.2) == "expired_api_key"
    })
    .await;
    assert!(expired);
    let (_, _, v) = api(
        &a,
        Method::GET,
        &format!("/api/v1/keys/{}", k["id"].as_str().expect("id")),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(v["status"], "expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_returns_every_key_exactly_once_and_filters_apply() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;
    let mut created = Vec::new();
    for i in 0..26 {
        let scopes = if i % 2 == 0 {
            json!(["read:even"])
        } else {
            json!([])
        };
        let k = create(
            &gw,
            &admin,
            json!({"name": format!("svc-{i:02}"), "scopes": scopes}),
        )
        .await;
        created.push(k["id"].as_str().expect("id").to_string());
    }
    for id in &created[..3] {
        let (s, _, _) = api(
            &gw,
            Method::DELETE,
            &format!("/api/v1/keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200);
    }

    let list = |query: String| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            let mut ids = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut path = format!("/api/v1/keys?limit=7{query}");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let (status, _, v) = api(gw, Method::GET, &path, Some(&admin), None).await;
                assert_eq!(status, 200, "{v}");
                let page = v["data"].as_array().expect("data");
                assert!(page.len() <= 7);
                for k in page {
                    assert!(k.get("key").is_none() && k.get("key_hash").is_none());
                    ids.push(k["id"].as_str().expect("id").to_string());
                }
                pages += 1;
                match v["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
                assert!(pages < 20, "pagination does not end");
            }
            ids
        }
    };

    let all = list(String::new()).await;
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 27, "26 keys plus the admin key");
    assert_eq!(unique.len(), all.len(), "a key was listed twice");
    // Newest first.
    assert_eq!(all[0], created[25]);
    assert_eq!(list("&status=revoked".into()).await.len(), 3);
    assert_eq!(list("&status=active".into()).await.len(), 24);
    assert_eq!(list("&scope=read:even".into()).await.len(), 13);
    assert_eq!(list("&q=SVC-1".into()).await.len(), 10);
    assert!(list("&status=expired".into()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_scopes_are_enforced_and_keys_cannot_escalate() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;
    let reader = gw.create_key("read:keys", &[]).await.1;
    let writer = gw.create_key("read:keys,write:keys,read:echo", &[]).await.1;
    let client = gw.create_key("read:echo", &[]).await.1;
    let admin_id = api(
        &gw,
        Method::GET,
        "/api/v1/keys?limit=100",
        Some(&admin),
        None,
    )
    .await
    .2["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|k| k["scopes"] == json!(["admin"]))
        .expect("admin key listed")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let some_id = "00000000-0000-7000-8000-000000000000";
    let every_endpoint = [
        (Method::POST, "/api/v1/keys".to_string()),
        (Method::GET, "/api/v1/keys".to_string()),
        (Method::GET, format!("/api/v1/keys/{some_id}")),
        (Method::PUT, format!("/api/v1/keys/{some_id}")),
        (Method::PATCH, format!("/api/v1/keys/{some_id}")),
        (Method::DELETE, format!("/api/v1/keys/{some_id}")),
        (Method::POST, format!("/api/v1/keys/{some_id}/rotate")),
        (Method::GET, "/api/v1/audit-logs".to_string()),
    ];
    for (method, path) in &every_endpoint {
        let (s, h, v) = api(&gw, method.clone(), path, None, None).await;
        assert_eq!((s, code(&v)), (401, "missing_api_key"), "{method} {path}");
        assert!(h.contains_key("www-authenticate"));
        let (s, _, v) = api(&gw, method.clone(), path, Some("gw_live_nonsense"), None).await;
        assert_eq!((s, code(&v)), (401, "invalid_api_key"), "{method} {path}");
        let (s, _, v) = api(&gw, method.clone(), path, Some(&client), None).await;
        assert_eq!(
            (s, code(&v)),
            (403, "insufficient_scope"),
            "{method} {path}"
        );
    }

    // read:keys lists and reads, and writes nothing.
    assert_eq!(
        api(&gw, Method::GET, "/api/v1/keys", Some(&reader), None)
            .await
            .0,
        200
    );
    let (s, _, v) = api(
        &gw,
        Method::POST,
        "/api/v1/keys",
        Some(&reader),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "insufficient_scope"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("write:keys"));
    let (s, _, _) = api(&gw, Method::GET, "/api/v1/audit-logs", Some(&writer), None).await;
    assert_eq!(s, 403, "audit logs need admin");

    // write:keys grants only what it holds, and only touches keys it covers.
    let own = create(
        &gw,
        &writer,
        json!({"name": "child", "scopes": ["read:echo"]}),
    )
    .await;
    let own_path = format!("/api/v1/keys/{}", own["id"].as_str().expect("id"));
    for scopes in [
        json!(["admin"]),
        json!(["*"]),
        json!(["read:*"]),
        json!(["write:orders"]),
    ] {
        let (s, _, v) = api(
            &gw,
            Method::POST,
            "/api/v1/keys",
            Some(&writer),
            Some(json!({"name": "x", "scopes": scopes})),
        )
        .await;
        assert_eq!((s, code(&v)), (403, "insufficient_scope"), "{scopes}");
        let (s, _, _) = api(
            &gw,
            Method::PUT,
            &own_path,
            Some(&writer),
            Some(json!({"scopes": scopes})),
        )
        .await;
        assert_eq!(s, 403, "update to {scopes}");
    }
    let admin_path = format!("/api/v1/keys/{admin_id}");
    for (method, path) in [
        (Method::POST, format!("{admin_path}/rotate")),
        (Method::DELETE, admin_path.clone()),
        (Method::PUT, admin_path.clone()),
    ] {
        let body = (method == Method::PUT).then(|| json!({"name": "mine now"}));
        let (s, _, v) = api(&gw, method.clone(), &path, Some(&writer), body).await;
        assert_eq!(
            (s, code(&v)),
            (403, "insufficient_scope"),
            "{method} {path}"
        );
    }
    let (s, _, v) = api(&gw, Method::GET, &admin_path, Some(&admin), None).await;
    assert_eq!(
        (s, v["status"].as_str(), v["name"].as_str()),
        (200, Some("active"), Some("test"))
    );
    // Escalation attempts are audited as denied calls.
    let audited = eventually(Duration::from_secs(3), || async {
        let (_, _, v) = get(
            &gw.admin_url("/api/v1/audit-logs?action=admin.access_denied&limit=100"),
            Some(&admin),
        )
        .await;
        v["data"].as_array().is_some_and(|d| {
            d.iter().any(|e| {
                e["actor"]["type"] == "key"
                    && e["target"]["id"] == "POST /api/v1/keys"
                    && e["after"]["code"] == "insufficient_scope"
                    && e["after"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("`admin`"))
            })
        })
    })
    .await;
    assert!(audited, "the escalation attempt was not audited");

    // What it holds, it may manage.
    let (s, _, _) = api(
        &gw,
        Method::POST,
        &format!("{own_path}/rotate"),
        Some(&writer),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = api(&gw, Method::DELETE, &own_path, Some(&writer), None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_records_changes_and_denials_and_its_chain_detects_tampering() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;
    let admin_id = api(&gw, Method::GET, "/api/v1/keys", Some(&admin), None)
        .await
        .2["data"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let req = http()
        .post(gw.admin_url("/api/v1/keys"))
        .bearer_auth(&admin)
        .header("x-request-id", "audit-create-1")
        .header("user-agent", "audit-test/1.0")
        .json(&json!({"name": "audited", "scopes": ["read:echo"]}));
    let (status, headers, k) = send(req).await;
    assert_eq!(status, 201);
    assert_eq!(headers["x-request-id"], "audit-create-1");
    let id = k["id"].as_str().expect("id").to_string();
    let secret = k["key"].as_str().expect("key").to_string();
    let req = http()
        .delete(gw.admin_url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(&admin)
        .header("x-request-id", "audit-revoke-1");
    assert_eq!(send(req).await.0, 200);
    // A denied call is recorded too (in the background).
    let (s, _, _) = get(&gw.admin_url("/api/v1/audit-logs"), Some("gw_live_bogus")).await;
    assert_eq!(s, 401);

    let entries = |query: String| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            let (s, _, v) = get(
                &gw.admin_url(&format!("/api/v1/audit-logs{query}")),
                Some(&admin),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            v["data"].as_array().expect("data").clone()
        }
    };
    let for_key = entries(format!("?target_id={id}")).await;
    let actions: Vec<&str> = for_key
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["api_key.revoked", "api_key.created"]);
    let created = &for_key[1];
    assert_eq!(created["actor"], json!({"type": "key", "key_id": admin_id}));
    assert_eq!(created["target"], json!({"type": "api_key", "id": id}));
    assert_eq!(created["request_id"], "audit-create-1");
    assert_eq!(created["user_agent"], "audit-test/1.0");
    assert_eq!(created["client_ip"], "127.0.0.1");
    assert_eq!(created["result"], "success");
    assert!(created["before"].is_null());
    assert_eq!(created["after"]["name"], "audited");
    assert_eq!(for_key[0]["request_id"], "audit-revoke-1");
    assert_eq!(for_key[0]["before"]["status"], "active");
    assert_eq!(for_key[0]["after"]["status"], "revoked");
    assert_eq!(
        entries("?action=api_key.created&limit=100".into())
            .await
            .len(),
        2,
        "the CLI-made admin key and this one"
    );
    let denied = eventually(Duration::from_secs(3), || async {
        entries("?action=admin.access_denied".into())
            .await
            .iter()
            .any(|e| {
                e["result"] == "denied"
                    && e["actor"]["type"] == "anonymous"
                    && e["target"]["id"] == "GET /api/v1/audit-logs"
                    && e["after"]["code"] == "invalid_api_key"
            })
    })
    .await;
    assert!(denied, "the denied call was not audited");

    // Requests too broken to parse, carrying a key: the key is not logged.
    for addr in [gw.admin, gw.proxy] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let req = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nX-Bad: \0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let _ = s.read(&mut [0u8; 512]);
    }

    // The plaintext is nowhere but in the create response.
    let everything = get(&gw.admin_url("/api/v1/audit-logs?limit=100"), Some(&admin))
        .await
        .2;
    let listed = get(&gw.admin_url("/api/v1/keys?limit=100"), Some(&admin))
        .await
        .2;
    let one = get(&gw.admin_url(&format!("/api/v1/keys/{id}")), Some(&admin))
        .await
        .2;
    for (what, text) in [
        ("audit log", everything.to_string()),
        ("key list", listed.to_string()),
        ("key", one.to_string()),
        ("metrics", metrics(&gw).await),
        ("logs", gw.logs()),
    ] {
        assert!(
            !text.contains(&secret),
            "the plaintext key appears in the {what}"
        );
        assert!(
            !text.contains(&admin),
            "the admin key appears in the {what}"
        );
    }

    // The chain verifies; the table refuses changes; a superuser who gets
    // around the trigger breaks the chain at the altered entry.
    let out = gw.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("intact"), "{stdout}");
    let sql = db.client().await;
    let err = sql
        .execute("UPDATE audit_log SET target_id = 'x'", &[])
        .await
        .expect_err("audit_log is append-only");
    assert!(err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"));
    assert!(sql.execute("DELETE FROM audit_log", &[]).await.is_err());
    let victim: i64 = sql
        .query_one(
            "SELECT id FROM audit_log WHERE action = 'api_key.revoked'",
            &[],
        )
        .await
        .expect("revoked entry")
        .get(0);
    sql.batch_execute(&format!(
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only; \
         UPDATE audit_log SET after = jsonb_set(after, '{{name}}', '\"forged\"') WHERE id = {victim}; \
         ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;"
    ))
    .await
    .expect("tamper as superuser");
    let out = gw.cli(&["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "verify passed a tampered log");
    assert!(stderr.contains(&format!("entry {victim}")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_its_documented_status_and_code() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;
    let k = create(&gw, &admin, json!({"name": "target"})).await;
    let key_path = format!("/api/v1/keys/{}", k["id"].as_str().expect("id"));

    let raw = |method: Method, path: &str, ctype: Option<&str>, body: Vec<u8>| {
        let mut req = http()
            .request(method, gw.admin_url(path))
            .bearer_auth(&admin)
            .body(body);
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        req
    };
    const JSON: Option<&str> = Some("application/json");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            raw(Method::POST, "/api/v1/keys", JSON, b"{\"name\":".to_vec()),
            400,
            "invalid_json",
        ),
        (
            raw(Method::POST, "/api/v1/keys", JSON, b"not json".to_vec()),
            400,
            "invalid_json",
        ),
        (
            raw(Method::POST, "/api/v1/keys", JSON, Vec::new()),
            400,
            "invalid_json",
        ),
        (
            raw(
                Method::POST,
                "/api/v1/keys",
                Some("text/plain"),
                b"{\"name\":\"x\"}".to_vec(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                Method::POST,
                "/api/v1/keys",
                None,
                b"{\"name\":\"x\"}".to_vec(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                Method::POST,
                "/api/v1/keys",
                JSON,
                vec![b' '; 1024 * 1024 + 1],
            ),
            413,
            "payload_too_large",
        ),
        (
            raw(
                Method::GET,
                "/api/v1/keys/00000000-0000-7000-8000-000000000000",
                None,
                vec![],
            ),
            404,
            "not_found",
        ),
        (
            raw(Method::GET, "/api/v1/keys/not-a-uuid", None, vec![]),
            404,
            "not_found",
        ),
        (
            // An encoded NUL is refused before routing (DESIGN §3 "Paths").
            raw(Method::DELETE, "/api/v1/keys/%00", None, vec![]),
            400,
            "bad_request",
        ),
        (
            raw(Method::POST, "/api/v1/keys/not-a-uuid/rotate", None, vec![]),
            404,
            "not_found",
        ),
        (
            raw(Method::GET, "/api/v1/nothing", None, vec![]),
            404,
            "not_found",
        ),
        (
            raw(Method::PUT, &key_path, JSON, b"{}".to_vec()),
            400,
            "validation_failed",
        ),
        (
            raw(Method::GET, "/api/v1/keys?limit=0", None, vec![]),
            400,
            "validation_failed",
        ),
        (
            raw(Method::GET, "/api/v1/keys?limit=101", None, vec![]),
            400,
            "validation_failed",
        ),
        (
            raw(Method::GET, "/api/v1/keys?cursor=zzz", None, vec![]),
            400,
            "validation_failed",
        ),
        (
            raw(Method::GET, "/api/v1/keys?status=gone", None, vec![]),
            400,
            "validation_failed",
        ),
        (
            raw(Method::GET, "/api/v1/keys?bogus=1", None, vec![]),
            400,
            "validation_failed",
        ),
        (
            raw(
                Method::GET,
                "/api/v1/audit-logs?since=yesterday",
                None,
                vec![],
            ),
            400,
            "validation_failed",
        ),
        (
            raw(
                Method::POST,
                &format!("{key_path}/rotate"),
                JSON,
                b"{\"grace_period_seconds\":604801}".to_vec(),
            ),
            400,
            "validation_failed",
        ),
    ];
    for (i, (req, status, want)) in cases.into_iter().enumerate() {
        let (s, _, v) = send(req).await;
        assert_eq!((s, code(&v)), (status, want), "case {i}: {v}");
        assert!(v["error"]["request_id"].is_string(), "case {i}");
    }

    // 405 names the allowed methods.
    let (s, h, v) = send(raw(Method::POST, &key_path, None, vec![])).await;
    assert_eq!((s, code(&v)), (405, "method_not_allowed"));
    assert_eq!(h["allow"], "GET, PUT, PATCH, DELETE");

    // Field-level details, one per problem, naming the field.
    let details = |body: Value| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            let (s, _, v) = api(gw, Method::POST, "/api/v1/keys", Some(&admin), Some(body)).await;
            assert_eq!((s, code(&v)), (400, "validation_failed"), "{v}");
            let mut fields: Vec<String> = v["error"]["details"]
                .as_array()
                .expect("details")
                .iter()
                .map(|d| d["field"].as_str().expect("field").to_string())
                .collect();
            fields.sort();
            fields
        }
    };
    assert_eq!(details(json!({})).await, ["name"]);
    assert_eq!(details(json!({"name": "   "})).await, ["name"]);
    assert_eq!(details(json!({"name": 5})).await, ["name"]);
    assert_eq!(
        details(json!({"name": "x", "scopes": "read:a"})).await,
        ["scopes"]
    );
    assert_eq!(
        details(json!({"name": "x", "scopes": ["read:a", "READ A"]})).await,
        ["scopes[1]"]
    );
    assert_eq!(
        details(json!({"name": "x", "color": "red"})).await,
        ["color"]
    );
    assert_eq!(
        details(json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"})).await,
        ["expires_at"]
    );
    assert_eq!(
        details(
            json!({"name": "x", "rate_limits": {"per_minute": 0, "per_hour": -3, "per_day": 1.5}})
        )
        .await,
        [
            "rate_limits.per_day",
            "rate_limits.per_hour",
            "rate_limits.per_minute"
        ]
    );
    assert_eq!(
        details(json!({"name": "x", "metadata": {"blob": "x".repeat(5000)}})).await,
        ["metadata"]
    );
    assert_eq!(
        details(
            json!({"name": "x", "expires_at": "2999-01-01T00:00:00Z", "expires_in_seconds": 5})
        )
        .await,
        ["expires_in_seconds"]
    );
    assert_eq!(
        details(json!({"name": [], "scopes": [1], "rate_limits": 7, "metadata": "m", "extra": 1}))
            .await,
        ["extra", "metadata", "name", "rate_limits", "scopes[0]"]
    );

    // Still healthy and nothing was half-made.
    let (s, _, v) = get(&gw.admin_url("/api/v1/keys?limit=100"), Some(&admin)).await;
    assert_eq!((s, v["data"].as_array().map(Vec::len)), (200, Some(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_rotates_and_updates_keys_with_an_audit_trail() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let (id, key) = gw.create_key("read:echo", &[]).await;
    let echo = gw.url("/echo");

    let out = gw.cli(&[
        "keys",
        "update",
        &id,
        "--scopes",
        "read:other",
        "--name",
        "renamed",
        "--per-minute",
        "9",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(row["name"], "renamed");
    assert_eq!(
        row["rate_limits"],
        json!({"per_minute": 9, "per_hour": null, "per_day": null})
    );
    assert!(proxy_answers(&echo, &key, 403, Some("insufficient_scope")).await);
    let out = gw.cli(&["keys", "update", &id, "--scopes", "read:echo"]);
    assert!(out.status.success());
    assert!(proxy_answers(&echo, &key, 200, None).await);
    let out = gw.cli(&["keys", "update", &id]);
    assert!(!out.status.success(), "an update with nothing to change");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to change"));

    let out = gw.cli(&["keys", "rotate", &id, "--grace", "0", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).expect("json");
    let new_key = rotated["key"].as_str().expect("key");
    assert!(proxy_answers(&echo, new_key, 200, None).await);
    assert!(proxy_answers(&echo, &key, 401, Some("expired_api_key")).await);
    for bad in [["--grace", "8d"], ["--grace", "soon"]] {
        let out = gw.cli(&["keys", "rotate", &id, bad[0], bad[1]]);
        assert!(!out.status.success());
    }
    let out = gw.cli(&["keys", "rotate", "not-an-id"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a key id"));

    let sql = db.client().await;
    let actions: Vec<(String, String)> = sql
        .query("SELECT action, actor_type FROM audit_log ORDER BY id", &[])
        .await
        .expect("audit rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, String)> = [
        "api_key.created",
        "api_key.updated",
        "api_key.updated",
        "api_key.rotated",
    ]
    .iter()
    .map(|a| (a.to_string(), "cli".to_string()))
    .collect();
    assert_eq!(actions, want);
    let out = gw.cli(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 4 entries"));
}
