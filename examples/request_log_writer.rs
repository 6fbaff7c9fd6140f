//! Request-log writer throughput (issue 13 budget: ≥ 30,000 records/s into
//! Postgres), reported in benches/RESULTS.md.
//!
//! Creates a scratch database (dropped at the end), builds N records like
//! the proxy's (1,000 keys, 20 routes, a status mix, query and user agent),
//! pushes them through the real capture handle into the real writer
//! (binary `COPY` into the daily partitions of `request_logs`) and times
//! from the first record queued to the writer's final flush. Then checks
//! with SQL that every record is stored.
//!
//! With `--rate R --seconds S` it instead queues R records a second for S
//! seconds (in 10 ms steps, like traffic) and reports the queue depth the
//! writer let build up (sampled every 10 ms: max and p99) and drops.
//!
//! ```text
//! cargo run --release --example request_log_writer -- <postgres url> [records]
//! cargo run --release --example request_log_writer -- <postgres url> --rate 20000 --seconds 60
//! ```
//! `<postgres url>` names a database to connect to for `CREATE DATABASE`,
//! e.g. `postgres://gateway@127.0.0.1:55432/postgres` (scripts/services.sh).

use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::{DatabaseConfig, RequestLogConfig};
use gateway::proxy::Inflight;
use gateway::reqlog::capture::RequestLog;
use gateway::reqlog::record::RequestRecord;
use gateway::reqlog::writer::RequestLogWriter;
use pingora::services::background::BackgroundService;

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    exit(2)
}

fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).unwrap_or_else(|e| fail(&format!("bad url: {e}")));
    u.set_path(&format!("/{db}"));
    u.to_string()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {url}: {e}")));
    tokio::spawn(conn);
    client
}

fn records(n: usize) -> Vec<RequestRecord> {
    let keys: Vec<uuid::Uuid> = (0..1_000).map(|_| uuid::Uuid::new_v4()).collect();
    let routes: Vec<Arc<str>> = (0..20).map(|i| Arc::from(format!("route-{i}"))).collect();
    let statuses = [200, 200, 200, 200, 201, 204, 304, 401, 404, 429, 502];
    let upstream: std::net::SocketAddr = ([10, 0, 0, 7], 8080).into();
    (0..n)
        .map(|i| {
            let now = std::time::SystemTime::now();
            let since = now
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let status = statuses[i % statuses.len()];
            RequestRecord {
                id: uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    since.as_secs(),
                    since.subsec_nanos(),
                )),
                ts: chrono::DateTime::<chrono::Utc>::from(now),
                request_id: http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                    .unwrap_or_else(|_| http::HeaderValue::from_static("x")),
                key_id: (status != 401).then(|| keys[i % keys.len()]),
                route: Some(routes[i % routes.len()].clone()),
                method: http::Method::GET,
                path: format!("/v1/items/{i}").into(),
                query: Some("page=2&limit=50&token=REDACTED".into()),
                status,
                error_code: match status {
                    401 => Some("missing_api_key"),
                    429 => Some("rate_limited"),
                    502 => Some("upstream_unavailable"),
                    _ => None,
                },
                latency_ms: 1.25 + (i % 100) as f64,
                upstream_latency_ms: (status < 400).then_some(0.9),
                upstream: (status < 400).then_some(upstream),
                request_bytes: 0,
                response_bytes: 512,
                client_ip: Some(std::net::IpAddr::from([192, 0, 2, (i % 250) as u8])),
                user_agent: Some("bench-client/1.0 (linux; x86_64)".into()),
                request_body: None,
                response_body: None,
            }
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: request_log_writer <postgres url> [records]";
    let usage = format!(
        "{usage}\n       request_log_writer <postgres url> --rate <records/s> --seconds <s>"
    );
    let admin_url = args.first().unwrap_or_else(|| fail(&usage)).clone();
    let num = |s: Option<&String>| -> usize {
        match s.map(|c| c.parse()) {
            Some(Ok(n)) if n > 0 => n,
            _ => fail(&usage),
        }
    };
    let mode = match args.get(1).map(String::as_str) {
        None => Mode::Burst(200_000),
        Some("--rate") if args.get(3).map(String::as_str) == Some("--seconds") => {
            Mode::Paced(num(args.get(2)), num(args.get(4)))
        }
        Some(_) => Mode::Burst(num(args.get(1))),
    };
    let name = format!("gw_bench_reqlog_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&admin_url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| fail(&format!("create database: {e}")));
    let url = with_db(&admin_url, &name);
    let result = run(&url, mode).await;
    drop(result.1);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Err(e) = result.0 {
        fail(&e);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// Queue this many records at once.
    Burst(usize),
    /// Records a second, seconds.
    Paced(usize, usize),
}

async fn run(url: &str, mode: Mode) -> (Result<(), String>, Option<tokio_postgres::Client>) {
    let n = match mode {
        Mode::Burst(n) => n,
        Mode::Paced(rate, secs) => rate * secs,
    };
    let mut client = connect(url).await;
    if let Err(e) = gateway::store::migrations::up(&mut client).await {
        return (Err(format!("migrate: {e}")), Some(client));
    }
    let cfg = match mode {
        Mode::Burst(n) => RequestLogConfig {
            queue_capacity: n,
            ..RequestLogConfig::default()
        },
        // The default queue, as in production.
        Mode::Paced(..) => RequestLogConfig::default(),
    };
    let db = DatabaseConfig {
        url: url.to_string(),
        pool_size: 1,
        connect_timeout: Duration::from_secs(5),
    };
    let (log, rx) = RequestLog::new(&cfg, Arc::default());
    let Some(rx) = rx else {
        return (Err("request logs disabled".into()), Some(client));
    };
    let writer = RequestLogWriter::new(rx, db, cfg.flush_interval, Arc::new(Inflight::default()));
    let batch = records(n);
    let (stop, shutdown) = tokio::sync::watch::channel(false);

    let started = Instant::now();
    let task = tokio::spawn(async move { writer.start(shutdown).await });
    let mut depths = Vec::new();
    match mode {
        Mode::Burst(_) => {
            for r in batch {
                log.submit(r);
            }
        }
        Mode::Paced(rate, _) => {
            let step = Duration::from_millis(10);
            let per_step = (rate / 100).max(1);
            let mut tick = tokio::time::interval(step);
            let mut it = batch.into_iter().peekable();
            while it.peek().is_some() {
                tick.tick().await;
                depths.push(log.queue_depth());
                for r in it.by_ref().take(per_step) {
                    log.submit(r);
                }
            }
        }
    }
    let queued = started.elapsed();
    let _ = stop.send(true);
    let _ = task.await;
    let elapsed = started.elapsed();

    let stored: i64 = match client
        .query_one("SELECT count(*) FROM request_logs", &[])
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => return (Err(format!("count: {e}")), Some(client)),
    };
    println!(
        "records {n}, queued in {:.1} ms, written in {:.1} ms: {:.0} records/s; stored {stored}",
        queued.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3,
        n as f64 / elapsed.as_secs_f64()
    );
    if !depths.is_empty() {
        depths.sort_unstable();
        let p99 = depths[(depths.len() * 99 / 100).min(depths.len() - 1)];
        let max = depths.last().copied().unwrap_or(0);
        println!(
            "queue depth over {} samples (10 ms apart): p99 {p99}, max {max}; capacity {}; dropped {}",
            depths.len(),
            cfg.queue_capacity,
            n as i64 - stored
        );
    }
    if stored != n as i64 {
        return (Err(format!("stored {stored} of {n}")), Some(client));
    }
    (Ok(()), Some(client))
}
