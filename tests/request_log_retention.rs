//! Request-log retention (issue 13): the housekeeping job and
//! `gateway logs prune` drop daily partitions older than `retention_days`,
//! keep recent ones and partitions not named by the gateway, delete rollups
//! older than `rollup_retention_days` while the rollups of dropped raw days
//! survive, create the partitions ahead, and wait for the housekeeping lock.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use common::*;
use gateway::service::housekeeping::LOCK_ID;

/// Raw logs kept 7 days, rollups 25: a raw day 20 days old is dropped while
/// its rollups stay; rollups 30 days old go.
const RETENTION: &str = r#"
[request_logs]
retention_days = 7
rollup_retention_days = 25

[housekeeping]
interval_ms = 100
"#;

/// Days (relative to today, UTC) of the partitions the tests create.
const OLD_DAYS: [i32; 2] = [-30, -20];
const RECENT_DAYS: [i32; 2] = [-3, 0];

async fn day_partition(db: &tokio_postgres::Client, offset: i32) -> String {
    db.query_one(
        "SELECT request_logs_ensure_partition((now() AT TIME ZONE 'UTC')::date + $1::int)",
        &[&offset],
    )
    .await
    .expect("ensure partition")
    .get(0)
}

async fn exists(db: &tokio_postgres::Client, table: &str) -> bool {
    db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Old and recent partitions with one row each, a partition not named by
/// the gateway, rollups 30 and 20 days old and from today; the partition of
/// the day after tomorrow removed (housekeeping must create it again).
/// Returns (old partition names, recent partition names, ahead name).
async fn seed(db: &tokio_postgres::Client) -> (Vec<String>, Vec<String>, String) {
    let mut old = Vec::new();
    let mut recent = Vec::new();
    for offset in OLD_DAYS.into_iter().chain(RECENT_DAYS) {
        let name = day_partition(db, offset).await;
        db.execute(
            "INSERT INTO request_logs (id, ts, request_id, method, path, status, latency_ms, request_bytes, response_bytes)
             VALUES (gen_random_uuid(),
                     ((now() AT TIME ZONE 'UTC')::date + $1::int)::timestamp AT TIME ZONE 'UTC' + interval '1 hour',
                     'req', 'GET', '/echo', 200, 1.5, 0, 0)",
            &[&offset],
        )
        .await
        .expect("insert request log");
        if OLD_DAYS.contains(&offset) {
            old.push(name);
        } else {
            recent.push(name);
        }
    }
    db.batch_execute(
        "CREATE TABLE request_logs_archive PARTITION OF request_logs
             FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2000-01-02 00:00+00');
         INSERT INTO request_rollups
             (minute, route, key_id, method, status, error_code, count, client_errors,
              server_errors, request_bytes, response_bytes, latency_sum_ms, latency_buckets)
         SELECT date_trunc('minute', now() - make_interval(days => d)), 'echo',
                '00000000-0000-0000-0000-000000000000', 'GET', 200, '', 1, 0, 0, 0, 0, 1.0, '{1}'
         FROM unnest(ARRAY[30, 20, 0]) AS d;",
    )
    .await
    .expect("seed");
    let ahead: String = db
        .query_one(
            "SELECT 'request_logs_' || to_char((now() AT TIME ZONE 'UTC')::date + 2, 'YYYYMMDD')",
            &[],
        )
        .await
        .expect("ahead name")
        .get(0);
    db.batch_execute(&format!("DROP TABLE IF EXISTS {ahead}"))
        .await
        .expect("drop ahead partition");
    (old, recent, ahead)
}

/// What must hold after a prune: old partitions gone, everything else
/// kept; rollups over 25 days old gone, those of dropped raw days kept.
async fn assert_pruned(db: &tokio_postgres::Client, old: &[String], recent: &[String]) {
    for name in old {
        assert!(!exists(db, name).await, "{name} should be dropped");
    }
    for name in recent {
        assert!(exists(db, name).await, "{name} should stay");
    }
    assert!(exists(db, "request_logs_archive").await);
    assert_eq!(count(db, "SELECT count(*) FROM request_logs").await, 2);
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM request_rollups WHERE minute < now() - interval '25 days'"
        )
        .await,
        0,
        "rollups older than rollup_retention_days are deleted"
    );
    assert_eq!(
        count(db, "SELECT count(*) FROM request_rollups").await,
        2,
        "the rollups of the dropped raw day (20 days) and of today survive"
    );
}

/// `ahead`: the partition that must not exist yet; None when a running
/// gateway's request-log writer may have made it.
async fn assert_untouched(db: &tokio_postgres::Client, old: &[String], ahead: Option<&str>) {
    for name in old {
        assert!(exists(db, name).await, "{name} should still exist");
    }
    if let Some(ahead) = ahead {
        assert!(
            !exists(db, ahead).await,
            "{ahead} should not be created yet"
        );
    }
    assert_eq!(count(db, "SELECT count(*) FROM request_logs").await, 4);
    assert_eq!(count(db, "SELECT count(*) FROM request_rollups").await, 3);
}

fn no_routes() -> Opts {
    Opts::new(RETENTION.to_string())
}

/// A config file for the CLI alone (no gateway needed for `logs prune`).
fn cli_config(db: &TestDb, dir: &std::path::Path) -> std::path::PathBuf {
    let unused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    write_config(dir, &db.url, unused, admin, &no_routes())
}

fn prune(config: &std::path::Path, extra: &[&str]) -> Output {
    command()
        .args(["logs", "prune"])
        .args(extra)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run gateway logs prune")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn housekeeping_drops_old_partitions_and_rollups_and_creates_the_next_days() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (old, recent, ahead) = seed(&client).await;

    let upstream = start_upstream().await;
    let gw = Gateway::start(
        &db,
        Opts::new(format!("{}{RETENTION}", default_routes(upstream))),
    )
    .await;
    let done = eventually(Duration::from_secs(15), || async {
        let mut gone = true;
        for name in &old {
            gone &= !exists(&client, name).await;
        }
        gone && exists(&client, &ahead).await
            && count(
                &client,
                "SELECT count(*) FROM request_rollups WHERE minute < now() - interval '25 days'",
            )
            .await
                == 0
    })
    .await;
    assert!(done, "retention never ran; log:\n{}", gw.logs());
    assert_pruned(&client, &old, &recent).await;

    let m = metrics(&gw).await;
    assert_eq!(
        sample(&m, "gateway_request_log_partitions_dropped_total"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gateway_request_rollups_deleted_total"),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            r#"gateway_housekeeping_runs_total{job="request_log_retention",outcome="ok"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{m}\nlog:\n{}",
        gw.logs()
    );
    assert!(
        !gw.logs().contains("housekeeping job failed"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn logs_prune_dry_run_changes_nothing_and_prune_drops() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (old, recent, ahead) = seed(&client).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cli_config(&db, dir.path());

    let out = prune(&config, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in &old {
        assert!(
            stdout.contains(&format!("would drop partition {name}")),
            "{}",
            text(&out)
        );
    }
    for name in recent.iter().chain([&"request_logs_archive".to_string()]) {
        assert!(!stdout.contains(name.as_str()), "{}", text(&out));
    }
    assert!(
        stdout.contains(&format!("would create partition {ahead}")),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("would delete 1 rollup rows"),
        "{}",
        text(&out)
    );
    assert_untouched(&client, &old, Some(&ahead)).await;

    let out = prune(&config, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in &old {
        assert!(
            stdout.contains(&format!("dropped partition {name}")),
            "{}",
            text(&out)
        );
    }
    assert!(stdout.contains("deleted 1 rollup rows"), "{}", text(&out));
    assert_pruned(&client, &old, &recent).await;
    assert!(exists(&client, &ahead).await);

    // Nothing left to do: a second run drops nothing.
    let out = prune(&config, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains("dropped partition"), "{}", text(&out));
    assert!(stdout.contains("deleted 0 rollup rows"), "{}", text(&out));
}

/// Another instance's round holds the housekeeping lock: neither a gateway
/// nor `logs prune` prunes until it is released, then both can.
#[tokio::test]
async fn pruning_waits_for_the_housekeeping_lock() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (old, recent, _) = seed(&client).await;
    let holder = db.client().await;
    let locked: bool = holder
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_ID])
        .await
        .expect("lock")
        .get(0);
    assert!(locked);

    let upstream = start_upstream().await;
    let gw = Gateway::start(
        &db,
        Opts::new(format!("{}{RETENTION}", default_routes(upstream))),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cli_config(&db, dir.path());
    let cli = std::thread::spawn(move || prune(&config, &[]));

    // Many housekeeping intervals pass; nothing may change meanwhile.
    let changed = eventually(Duration::from_secs(2), || async {
        !exists(&client, &old[0]).await
            || count(&client, "SELECT count(*) FROM request_rollups").await != 3
    })
    .await;
    assert!(!changed, "pruned while another instance held the lock");
    assert_untouched(&client, &old, None).await;
    assert!(!cli.is_finished(), "logs prune should wait for the lock");

    holder
        .query_one("SELECT pg_advisory_unlock($1)", &[&LOCK_ID])
        .await
        .expect("unlock");
    let out = tokio::task::spawn_blocking(move || cli.join().expect("cli thread"))
        .await
        .expect("join");
    assert!(out.status.success(), "{}", text(&out));
    let pruned = eventually(Duration::from_secs(10), || async {
        !exists(&client, &old[0]).await && !exists(&client, &old[1]).await
    })
    .await;
    assert!(pruned, "log:\n{}", gw.logs());
    assert_pruned(&client, &old, &recent).await;
}

#[tokio::test]
async fn logs_prune_gives_up_when_the_lock_stays_held() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (old, _recent, ahead) = seed(&client).await;
    let holder = db.client().await;
    holder
        .query_one("SELECT pg_advisory_lock($1)", &[&LOCK_ID])
        .await
        .expect("lock");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cli_config(&db, dir.path());
    let out = tokio::task::spawn_blocking(move || prune(&config, &[]))
        .await
        .expect("join");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("running housekeeping"),
        "{}",
        text(&out)
    );
    assert_untouched(&client, &old, Some(&ahead)).await;
}

/// Two gateways on one database, both running housekeeping every 100 ms:
/// under the lock their rounds never overlap, so each partition and rollup
/// row is dropped by exactly one of them (without it both would list the
/// same partitions and both count the drop).
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_prune_each_partition_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (old, recent, _) = seed(&client).await;
    let upstream = start_upstream().await;
    let opts = || Opts::new(format!("{}{RETENTION}", default_routes(upstream)));
    let (a, b) = tokio::join!(Gateway::start(&db, opts()), Gateway::start(&db, opts()));
    let pruned = eventually(Duration::from_secs(15), || async {
        !exists(&client, &old[0]).await
            && !exists(&client, &old[1]).await
            && count(&client, "SELECT count(*) FROM request_rollups").await == 2
    })
    .await;
    assert!(pruned, "logs:\n{}\n{}", a.logs(), b.logs());
    assert_pruned(&client, &old, &recent).await;
    // Both run several more rounds (every 100 ms); the totals must not move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ma, mb) = (metrics(&a).await, metrics(&b).await);
    let total = |series: &str| sample_or_zero(&ma, series) + sample_or_zero(&mb, series);
    assert_eq!(
        total("gateway_request_log_partitions_dropped_total"),
        2.0,
        "{ma}\n{mb}"
    );
    assert_eq!(total("gateway_request_rollups_deleted_total"), 1.0);
    for gw in [&a, &b] {
        assert!(
            !gw.logs().contains("housekeeping job failed"),
            "{}",
            gw.logs()
        );
    }
}
