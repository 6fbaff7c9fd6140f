//! Roles (DESIGN §3 "JWT and roles", issue 18): `/api/v1/roles` CRUD for
//! `admin` only, validated and audited; a key's effective scopes are its
//! own plus its roles', on the proxy; changing or deleting a role reaches
//! another instance within a second; the authority rule holds through
//! roles; `gateway roles …`; and the migration goes up and down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Where a propagated change must have arrived on another instance.
const PROPAGATION: Duration = Duration::from_secs(1);

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// Creates a key through the admin API and waits until `gw` knows it.
async fn api_key(gw: &Gateway, admin: &str, body: Value) -> (String, String) {
    let (s, v) = api(gw, Method::POST, "/api/v1/keys", admin, Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().expect("key").to_string();
    wait_known(gw, &key).await;
    (id_of(&v), key)
}

async fn create_role(gw: &Gateway, admin: &str, name: &str, scopes: &[&str]) -> String {
    let (s, v) = api(
        gw,
        Method::POST,
        "/api/v1/roles",
        admin,
        Some(json!({"name": name, "scopes": scopes})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    id_of(&v)
}

/// The status of GET /echo with `key` on `gw`.
async fn echo(gw: &Gateway, key: &str) -> (u16, String) {
    let (s, _, v) = get(&gw.url("/echo"), Some(key)).await;
    (s, code(&v).to_string())
}

/// Polls `gw` until GET /echo with `key` answers `want`, for at most
/// [`PROPAGATION`] after `since` (when the change's call returned).
async fn within_a_second(gw: &Gateway, key: &str, want: u16, since: Instant, what: &str) {
    let deadline = since + PROPAGATION;
    loop {
        let (s, c) = echo(gw, key).await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {s} {c} on the other instance {:?} after the change",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fields(v: &Value) -> Vec<String> {
    v["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The privilege escalation through roles, one case per spelling: a key
/// without `admin` may hand out (and act on keys holding) only scopes it
/// holds itself, whether they come as scopes or inside a role.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_without_admin_cannot_escalate_through_roles() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;
    let admins = create_role(&gw, &admin, "admins", &["admin"]).await;
    create_role(&gw, &admin, "echo-writers", &["write:echo"]).await;
    create_role(&gw, &admin, "echo-readers", &["read:echo"]).await;

    // The attacker: may manage keys, and read echo.
    let (writer_id, writer) = api_key(
        &gw,
        &admin,
        json!({"name": "writer", "scopes": ["read:keys", "write:keys", "read:echo"]}),
    )
    .await;
    let own = format!("/api/v1/keys/{writer_id}");
    // A key whose power comes only from a role.
    let (victim_id, _) = api_key(
        &gw,
        &admin,
        json!({"name": "victim", "scopes": [], "roles": ["admins"]}),
    )
    .await;
    let victim = format!("/api/v1/keys/{victim_id}");
    // A key the writer may manage: it made it, with a role it covers.
    let (s, v) = api(
        &gw,
        Method::POST,
        "/api/v1/keys",
        &writer,
        Some(json!({"name": "minion", "roles": ["echo-readers"]})),
    )
    .await;
    assert_eq!(
        s, 201,
        "a role whose scopes the caller holds is grantable: {v}"
    );
    assert_eq!(v["roles"], json!(["echo-readers"]));
    let minion = format!("/api/v1/keys/{}", id_of(&v));

    let escalations: Vec<(&str, Method, String, Value, &str)> = vec![
        (
            "create a key with an admin role",
            Method::POST,
            "/api/v1/keys".into(),
            json!({"name": "minted", "roles": ["admins"]}),
            "admin",
        ),
        (
            "create a key with a role granting a scope the caller lacks",
            Method::POST,
            "/api/v1/keys".into(),
            json!({"name": "minted", "roles": ["echo-readers", "echo-writers"]}),
            "write:echo",
        ),
        (
            "give itself an admin role",
            Method::PUT,
            own.clone(),
            json!({"roles": ["admins"]}),
            "admin",
        ),
        (
            "give itself an admin role (PATCH)",
            Method::PATCH,
            own.clone(),
            json!({"roles": ["echo-readers", "admins"]}),
            "admin",
        ),
        (
            "give a key it manages an admin role",
            Method::PUT,
            minion.clone(),
            json!({"roles": ["admins"]}),
            "admin",
        ),
        (
            "rotate a key whose admin comes from a role (takeover)",
            Method::POST,
            format!("{victim}/rotate"),
            json!({}),
            "admin",
        ),
        (
            "rename a key whose admin comes from a role",
            Method::PUT,
            victim.clone(),
            json!({"name": "mine now"}),
            "admin",
        ),
        (
            "strip the role of a key whose admin comes from it",
            Method::PUT,
            victim.clone(),
            json!({"roles": []}),
            "admin",
        ),
        (
            "revoke a key whose admin comes from a role",
            Method::DELETE,
            victim.clone(),
            Value::Null,
            "admin",
        ),
        (
            "create a role",
            Method::POST,
            "/api/v1/roles".into(),
            json!({"name": "mine", "scopes": ["read:echo"]}),
            "admin",
        ),
        (
            "widen a role",
            Method::PUT,
            format!("/api/v1/roles/{admins}"),
            json!({"scopes": ["read:echo"]}),
            "admin",
        ),
    ];
    for (what, method, path, body, scope) in escalations {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = api(&gw, method, &path, &writer, body).await;
        assert_eq!((s, code(&v)), (403, "insufficient_scope"), "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(&format!("`{scope}`")), "{what}: {message}");
    }

    // Nothing changed: the victim still holds its role and works, nobody
    // else got `admins`, and the writer is as it was.
    let (_, r) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/roles/{admins}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(r["key_count"], 1, "{r}");
    let (_, w) = api(&gw, Method::GET, &own, &admin, None).await;
    assert_eq!(w["roles"], json!([]), "{w}");
    let (_, m) = api(&gw, Method::GET, &minion, &admin, None).await;
    assert_eq!(m["roles"], json!(["echo-readers"]), "{m}");
    let (_, k) = api(&gw, Method::GET, &victim, &admin, None).await;
    assert_eq!(
        (k["status"].as_str(), &k["roles"]),
        (Some("active"), &json!(["admins"]))
    );
    assert_eq!(k["effective_scopes"], json!(["admin"]));

    // An admin may do all of it.
    let (s, v) = api(
        &gw,
        Method::PUT,
        &minion,
        &admin,
        Some(json!({"roles": ["admins"]})),
    )
    .await;
    assert_eq!((s, &v["roles"]), (200, &json!(["admins"])), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_are_admin_only_validated_paginated_and_audited() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = gw.create_key("admin", &[]).await.1;
    let reader = gw.create_key("read:keys,write:keys,read:*", &[]).await.1;

    for (method, path) in [
        (Method::GET, "/api/v1/roles"),
        (Method::POST, "/api/v1/roles"),
        (
            Method::GET,
            "/api/v1/roles/00000000-0000-7000-8000-000000000000",
        ),
        (
            Method::DELETE,
            "/api/v1/roles/00000000-0000-7000-8000-000000000000",
        ),
    ] {
        let body = (method == Method::POST).then(|| json!({"name": "x"}));
        let (s, v) = api(&gw, method.clone(), path, &reader, body).await;
        assert_eq!(
            (s, code(&v)),
            (403, "insufficient_scope"),
            "{method} {path}: {v}"
        );
        let (s, _) = api(&gw, method.clone(), path, "gw_live_nope", None).await;
        assert_eq!(s, 401, "{method} {path}");
    }

    // Create.
    let (s, v) = api(
        &gw,
        Method::POST,
        "/api/v1/roles",
        &admin,
        Some(json!({"name": "  orders-ops ", "description": "Orders team", "scopes": ["read:orders", "write:orders", "read:orders"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = id_of(&v);
    assert_eq!(v["name"], "orders-ops");
    assert_eq!(v["description"], "Orders team");
    assert_eq!(v["scopes"], json!(["read:orders", "write:orders"]));
    assert_eq!(v["key_count"], 0);
    assert!(v["created_at"].is_string() && v["updated_at"].is_string());

    // Validation names every bad field; duplicates are 409.
    let (s, v) = api(
        &gw,
        Method::POST,
        "/api/v1/roles",
        &admin,
        Some(json!({"name": " ", "scopes": ["read:a", "Bad Scope", 3], "extra": 1})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "validation_failed"), "{v}");
    assert_eq!(fields(&v), ["name", "scopes[1]", "scopes[2]", "extra"]);
    let (s, v) = api(
        &gw,
        Method::POST,
        "/api/v1/roles",
        &admin,
        Some(json!({"scopes": []})),
    )
    .await;
    assert_eq!((s, fields(&v)), (400, vec!["name".to_string()]), "{v}");
    let (s, v) = api(
        &gw,
        Method::POST,
        "/api/v1/roles",
        &admin,
        Some(json!({"name": "orders-ops"})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // List and paginate (newest first).
    let second = create_role(&gw, &admin, "second", &[]).await;
    let (s, p1) = api(&gw, Method::GET, "/api/v1/roles?limit=1", &admin, None).await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(p1["data"][0]["id"], json!(second));
    let cursor = p1["next_cursor"].as_str().expect("a next page");
    let (_, p2) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/roles?limit=1&cursor={cursor}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(p2["data"][0]["id"], json!(id));
    assert_eq!(p2["next_cursor"], Value::Null);
    let (s, v) = api(
        &gw,
        Method::GET,
        "/api/v1/roles?cursor=nope&x=1",
        &admin,
        None,
    )
    .await;
    assert_eq!(
        (s, fields(&v)),
        (400, vec!["cursor".to_string(), "x".to_string()])
    );

    // Get, update (PUT and PATCH), 404s.
    let path = format!("/api/v1/roles/{id}");
    let (s, v) = api(&gw, Method::GET, &path, &admin, None).await;
    assert_eq!((s, &v["name"]), (200, &json!("orders-ops")));
    let (s, v) = api(
        &gw,
        Method::PUT,
        &path,
        &admin,
        Some(json!({"description": "changed"})),
    )
    .await;
    assert_eq!(
        (s, &v["description"], &v["scopes"]),
        (
            200,
            &json!("changed"),
            &json!(["read:orders", "write:orders"])
        ),
        "{v}"
    );
    let (s, v) = api(
        &gw,
        Method::PATCH,
        &path,
        &admin,
        Some(json!({"scopes": ["read:orders"]})),
    )
    .await;
    assert_eq!((s, &v["scopes"]), (200, &json!(["read:orders"])), "{v}");
    let (s, v) = api(&gw, Method::PUT, &path, &admin, Some(json!({}))).await;
    assert_eq!((s, code(&v)), (400, "validation_failed"), "{v}");
    let (s, v) = api(
        &gw,
        Method::PUT,
        &path,
        &admin,
        Some(json!({"name": "second"})),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    for missing in [
        "/api/v1/roles/not-a-uuid",
        "/api/v1/roles/00000000-0000-7000-8000-000000000000",
    ] {
        let (s, v) = api(&gw, Method::GET, missing, &admin, None).await;
        assert_eq!((s, code(&v)), (404, "not_found"), "{missing}");
        let (s, _) = api(
            &gw,
            Method::PUT,
            missing,
            &admin,
            Some(json!({"name": "n"})),
        )
        .await;
        assert_eq!(s, 404, "{missing}");
    }

    // Delete: 204, then gone.
    let resp = http()
        .delete(gw.admin_url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let (s, _) = api(&gw, Method::GET, &path, &admin, None).await;
    assert_eq!(s, 404);
    let (s, _) = api(&gw, Method::DELETE, &path, &admin, None).await;
    assert_eq!(s, 404);

    // Every write is in the audit log, with before and after.
    let (s, log) = api(
        &gw,
        Method::GET,
        &format!("/api/v1/audit-logs?target_id={id}&limit=100"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{log}");
    let mut actions: Vec<&str> = log["data"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["result"] == "success")
        .filter_map(|e| e["action"].as_str())
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        [
            "role.created",
            "role.updated",
            "role.updated",
            "role.deleted"
        ],
        "{log}"
    );
    let entries = log["data"].as_array().expect("entries");
    let deleted = &entries[0];
    assert_eq!(
        deleted["before"]["scopes"],
        json!(["read:orders"]),
        "{deleted}"
    );
    assert_eq!(deleted["after"], Value::Null);
    assert_eq!(deleted["target"]["type"], "role", "{deleted}");
}

/// Two instances on one database: what a role grants works through the
/// proxy, and changing or deleting the role (or a key's roles) revokes it
/// on the other instance within a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_grants_its_scopes_and_its_changes_reach_another_instance_within_a_second() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let a = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let b = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let admin = a.create_key("admin", &[]).await.1;
    let role = create_role(&a, &admin, "echo-readers", &["read:echo"]).await;
    let role_path = format!("/api/v1/roles/{role}");

    let (id, key) = api_key(
        &a,
        &admin,
        json!({"name": "by-role", "scopes": ["read:other"], "roles": ["echo-readers"]}),
    )
    .await;
    let (_, v) = api(&a, Method::GET, &format!("/api/v1/keys/{id}"), &admin, None).await;
    assert_eq!(v["roles"], json!(["echo-readers"]));
    assert_eq!(v["scopes"], json!(["read:other"]));
    assert_eq!(v["effective_scopes"], json!(["read:other", "read:echo"]));
    // The role's scope passes the proxy on both instances; a key without
    // the role does not.
    assert_eq!(echo(&a, &key).await.0, 200);
    within_a_second(&b, &key, 200, Instant::now(), "a new key").await;
    let (_, plain) = api_key(
        &a,
        &admin,
        json!({"name": "plain", "scopes": ["read:other"]}),
    )
    .await;
    assert_eq!(
        echo(&b, &plain).await,
        (403, "insufficient_scope".to_string())
    );

    // Removing the scope from the role revokes it on the other instance.
    let (s, v) = api(
        &a,
        Method::PUT,
        &role_path,
        &admin,
        Some(json!({"scopes": ["write:echo"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let changed = Instant::now();
    assert_eq!(
        echo(&a, &key).await.0,
        403,
        "the writing instance answers once it holds the change"
    );
    within_a_second(&b, &key, 403, changed, "scope removed from the role").await;

    // Giving it back grants it again.
    let (s, _) = api(
        &a,
        Method::PATCH,
        &role_path,
        &admin,
        Some(json!({"scopes": ["read:echo"]})),
    )
    .await;
    assert_eq!(s, 200);
    within_a_second(
        &b,
        &key,
        200,
        Instant::now(),
        "scope given back to the role",
    )
    .await;

    // A key losing the role (a key update) loses its scopes.
    let key_path = format!("/api/v1/keys/{id}");
    let (s, v) = api(
        &a,
        Method::PUT,
        &key_path,
        &admin,
        Some(json!({"roles": []})),
    )
    .await;
    assert_eq!(
        (s, &v["roles"], &v["effective_scopes"]),
        (200, &json!([]), &json!(["read:other"])),
        "{v}"
    );
    within_a_second(&b, &key, 403, Instant::now(), "role taken off the key").await;
    let (s, _) = api(
        &a,
        Method::PUT,
        &key_path,
        &admin,
        Some(json!({"roles": ["echo-readers"]})),
    )
    .await;
    assert_eq!(s, 200);
    within_a_second(&b, &key, 200, Instant::now(), "role put back on the key").await;

    // Deleting the role takes it off every key, on every instance.
    let (s, _) = api(&a, Method::DELETE, &role_path, &admin, None).await;
    assert_eq!(s, 204);
    let deleted = Instant::now();
    assert_eq!(echo(&a, &key).await.0, 403);
    within_a_second(&b, &key, 403, deleted, "role deleted").await;
    let (_, v) = api(&b, Method::GET, &key_path, &admin, None).await;
    assert_eq!(
        (&v["roles"], &v["effective_scopes"]),
        (&json!([]), &json!(["read:other"])),
        "{v}"
    );

    // An unknown role is a validation error naming it.
    let (s, v) = api(
        &a,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({"name": "k", "roles": ["nope", "echo-readers", 7]})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "validation_failed"), "{v}");
    assert_eq!(fields(&v), ["roles[2]"], "{v}");
    let (s, v) = api(
        &a,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({"name": "k", "roles": ["nope", "echo-readers"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "validation_failed"), "{v}");
    assert_eq!(fields(&v), ["roles[0]", "roles[1]"], "{v}");
    assert!(v.to_string().contains("nope"), "{v}");
}

/// `gateway roles …` and `gateway keys … --role`: straight to the
/// database, audited as `cli`, and reaching a running instance.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_roles_and_key_roles() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    let run = |args: &[&str]| {
        let out = gw.cli(args);
        assert!(
            out.status.success(),
            "gateway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json_of = |s: String| -> Value { serde_json::from_str(&s).expect("JSON output") };

    let role = json_of(run(&[
        "roles",
        "create",
        "--name",
        "ops",
        "--scopes",
        "read:echo",
        "--json",
    ]));
    assert_eq!(role["scopes"], json!(["read:echo"]));
    let role_id = id_of(&role);
    let created = json_of(run(&[
        "keys", "create", "--name", "k", "--role", "ops", "--json",
    ]));
    assert_eq!(created["roles"], json!(["ops"]));
    assert_eq!(created["effective_scopes"], json!(["read:echo"]));
    let key = created["key"].as_str().expect("key").to_string();
    let key_id = id_of(&created);
    assert!(
        eventually(Duration::from_secs(5), || async {
            echo(&gw, &key).await.0 == 200
        })
        .await,
        "a key granted read:echo by its role passes"
    );
    let listed = json_of(run(&["roles", "list", "--json"]));
    assert_eq!(listed[0]["key_count"], 1, "{listed}");

    let out = gw.cli(&["keys", "create", "--name", "k", "--role", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    let out = gw.cli(&["roles", "create", "--name", "ops"]);
    assert!(!out.status.success(), "a duplicate name is refused");

    // Update by name: the key loses read:echo on the running instance.
    let updated = json_of(run(&[
        "roles",
        "update",
        "ops",
        "--scopes",
        "read:other",
        "--json",
    ]));
    assert_eq!(updated["scopes"], json!(["read:other"]));
    assert!(
        eventually(PROPAGATION, || async { echo(&gw, &key).await.0 == 403 }).await,
        "a CLI role change reaches the instance"
    );
    run(&["roles", "update", &role_id, "--scopes", "read:echo"]);
    assert!(eventually(PROPAGATION, || async { echo(&gw, &key).await.0 == 200 }).await);
    let k = json_of(run(&["keys", "update", &key_id, "--no-roles", "--json"]));
    assert_eq!(k["roles"], json!([]));
    assert!(eventually(PROPAGATION, || async { echo(&gw, &key).await.0 == 403 }).await);
    run(&["keys", "update", &key_id, "--role", "ops"]);
    assert!(eventually(PROPAGATION, || async { echo(&gw, &key).await.0 == 200 }).await);
    run(&["roles", "delete", "ops"]);
    assert!(eventually(PROPAGATION, || async { echo(&gw, &key).await.0 == 403 }).await);

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT action, actor_type FROM audit_log WHERE target_id = $1 ORDER BY id",
            &[&role_id],
        )
        .await
        .expect("audit rows");
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let cli = |a: &str| (a.to_string(), "cli".to_string());
    assert_eq!(
        got,
        [
            cli("role.created"),
            cli("role.updated"),
            cli("role.updated"),
            cli("role.deleted")
        ]
    );
}

async fn tables(c: &tokio_postgres::Client) -> Vec<String> {
    let rows = c
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
             AND tablename IN ('roles', 'key_roles', 'api_keys') ORDER BY 1",
            &[],
        )
        .await
        .expect("tables");
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// `sql/0006_roles` goes down and up again cleanly, and down takes only
/// the role tables with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_roles_migration_goes_down_and_up() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    assert_eq!(tables(&client).await, ["api_keys", "key_roles", "roles"]);
    let reverted = gateway::store::migrations::down(&mut client, 1)
        .await
        .expect("down");
    assert_eq!(reverted, [6]);
    assert_eq!(tables(&client).await, ["api_keys"]);
    let applied = gateway::store::migrations::up(&mut client)
        .await
        .expect("up");
    assert_eq!(applied, [6]);
    assert_eq!(tables(&client).await, ["api_keys", "key_roles", "roles"]);
}
