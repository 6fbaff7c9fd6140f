//! The restore drill: scripts/backup.sh dumps a live gateway's database
//! with the real pg_dump, scripts/restore.sh restores it with the real
//! pg_restore into a fresh database, and `gateway audit verify` there
//! reports the chain intact with the same head (issue 15).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use reqwest::Method;
use serde_json::json;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// `bash scripts/<name> <args>` with a scrubbed environment plus `env`.
fn run_script(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name)).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") || k == "DATABASE_URL" || k == "PGPASSWORD" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run script")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `gateway audit verify` against `db_url` (overriding the config's URL):
/// (entries, head hash).
fn audit_verify(gw: &Gateway, db_url: &str) -> (u64, String) {
    let out = command()
        .env("DATABASE_URL", db_url)
        .args(["audit", "verify", "-c"])
        .arg(&gw.config)
        .output()
        .expect("run gateway audit verify");
    assert!(out.status.success(), "audit verify failed: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let entries = stdout
        .lines()
        .find_map(|l| l.strip_prefix("audit log intact: "))
        .and_then(|l| l.strip_suffix(" entries"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry count in: {stdout}"));
    let head = stdout
        .lines()
        .find_map(|l| l.strip_prefix("head hash: "))
        .unwrap_or_else(|| panic!("no head hash in: {stdout}"))
        .to_string();
    (entries, head)
}

/// (keys, revoked keys) in the database at `url`.
async fn key_counts(url: &str) -> (i64, i64) {
    let row = connect(url)
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE revoked_at IS NOT NULL) FROM api_keys",
            &[],
        )
        .await
        .expect("count keys");
    (row.get(0), row.get(1))
}

/// A gateway with keys created, one revoked and one rotated through the
/// admin API, so the audit chain has entries of each kind.
async fn gateway_with_history(db: &TestDb) -> Gateway {
    let upstream = start_upstream().await;
    let gw = Gateway::start(db, Opts::new(default_routes(upstream))).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let mut ids = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let (status, v) = api(
            &gw,
            Method::POST,
            "/api/v1/keys",
            &admin,
            Some(json!({"name": name, "scopes": ["read:echo"]})),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    let (status, v) = api(
        &gw,
        Method::DELETE,
        &format!("/api/v1/keys/{}", ids[0]),
        &admin,
        None,
    )
    .await;
    assert!(status == 200 || status == 204, "revoke: {status} {v}");
    let (status, v) = api(
        &gw,
        Method::POST,
        &format!("/api/v1/keys/{}/rotate", ids[1]),
        &admin,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "rotate: {v}");
    gw
}

#[tokio::test]
async fn a_backup_restored_into_a_fresh_database_keeps_the_audit_chain() {
    let db = TestDb::new().await;
    let gw = gateway_with_history(&db).await;
    let (entries, head) = audit_verify(&gw, &db.url);
    assert!(
        entries >= 3,
        "expected create/revoke/rotate entries, got {entries}"
    );
    let keys = key_counts(&db.url).await;
    assert_eq!(keys.1, 1, "one key revoked");

    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let out = run_script(
        "backup.sh",
        &["--dir", dir_arg, "--keep", "2"],
        &[("DATABASE_URL", &db.url)],
    );
    assert!(out.status.success(), "backup.sh failed: {}", text(&out));
    let dump = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let name = Path::new(&dump)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        name.starts_with("gateway-") && name.ends_with("Z.dump"),
        "dump name {name:?}"
    );
    assert!(Path::new(&dump).is_file(), "{dump} missing");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read backup dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");

    // The restore drill: a fresh database, restore, verify.
    let fresh = TestDb::empty().await;
    let bin = bin();
    let config = gw.config.to_str().expect("utf-8 config path");
    let out = run_script(
        "restore.sh",
        &["--gateway", bin, "-c", config, &dump, &fresh.url],
        &[],
    );
    assert!(out.status.success(), "restore.sh failed: {}", text(&out));
    // `gateway migrate status` ran against the restored database: every
    // migration applied, none pending.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("applied") && !stdout.contains("pending"),
        "migrate status after restore: {}",
        text(&out)
    );

    assert_eq!(
        audit_verify(&gw, &fresh.url),
        (entries, head),
        "restored chain differs"
    );
    assert_eq!(key_counts(&fresh.url).await, keys, "restored keys differ");
}

#[tokio::test]
async fn restore_refuses_a_database_that_is_not_empty() {
    let db = TestDb::new().await;
    let gw = gateway_with_history(&db).await;
    let before = audit_verify(&gw, &db.url);
    let keys = key_counts(&db.url).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let out = run_script(
        "backup.sh",
        &["--dir", dir_arg],
        &[("DATABASE_URL", &db.url)],
    );
    assert!(out.status.success(), "backup.sh failed: {}", text(&out));
    let dump = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Restoring over the live database (not empty) is refused, untouched.
    let bin = bin();
    let out = run_script("restore.sh", &["--gateway", bin, &dump, &db.url], &[]);
    assert!(
        !out.status.success(),
        "restore into a non-empty database ran: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(audit_verify(&gw, &db.url), before);
    assert_eq!(key_counts(&db.url).await, keys);
}

#[tokio::test]
async fn backup_fails_clearly_and_never_prints_the_password() {
    let db = TestDb::empty().await;
    // A database that does not exist, with a password in the URL.
    let url = db.url.replace("gateway@", "gateway:hunter2-secret@") + "_missing";
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let out = run_script("backup.sh", &["--dir", dir_arg], &[("DATABASE_URL", &url)]);
    assert!(
        !out.status.success(),
        "backup of a missing database succeeded"
    );
    let all = text(&out);
    assert!(!all.contains("hunter2-secret"), "password printed: {all}");
    assert!(all.contains("***"), "redacted URL expected in: {all}");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read backup dir")
        .collect();
    assert!(files.is_empty(), "a failed backup left files");
}
