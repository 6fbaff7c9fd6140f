//! Criterion benches for the per-request hot path (issue 5, DESIGN §4).
//!
//! `cargo bench --bench hot_path` runs them; `cargo test --all-targets`
//! runs each once, on a smaller snapshot, only to prove they still work.
//! Besides the timed benches this prints, once per run, what a snapshot of
//! 1,000,000 keys costs: the time to build it and its heap bytes per key,
//! measured by a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use gateway::config::HeaderStyle::{self, Both};
use gateway::config::{Config, Limits, Need};
use gateway::identity::{self, Authenticator};
use gateway::keys::format::{self, KeyHasher};
use gateway::keys::scope::{first_missing, Scope, ScopeSets};
use gateway::keys::snapshot::{KeyChange, KeyRecord, KeySnapshot, KeyStore};
use gateway::limits::local::LocalStore;
use gateway::limits::{headers, Mode, RateLimiter};
use gateway::route::RouteTable;
use pingora::http::{RequestHeader, ResponseHeader};
use uuid::Uuid;

/// Counts live heap bytes, so the snapshot's memory per key is measured
/// rather than estimated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PREFIX: &str = "gw_live_";
const PEPPER: &str = "bench-pepper-bench-pepper-bench-pepper";

/// Keys in the snapshot: 1,000,000 under `cargo bench`, fewer when
/// `cargo test` only checks that the benches run.
fn snapshot_size() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}

/// A configuration whose route sets per-caller and global limits, so a key
/// on it names all 9 tiers; the default gives every key 3.
fn config() -> Config {
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
scopes = ["read:echo"]
[[routes]]
name = "busy"
path_prefix = "/busy"
upstream = "echo"
scopes = ["read:echo"]
rate_limit = {{ per_minute = 1000000000, per_hour = 1000000000, per_day = 1000000000 }}
global_rate_limit = {{ per_minute = 1000000000, per_hour = 1000000000, per_day = 1000000000 }}
[rate_limits.default]
per_minute = 1000000000
per_hour = 1000000000
per_day = 1000000000
"#
    );
    Config::from_toml(&text, Vec::new(), Need::Serve).expect("bench config is valid")
}

fn scopes() -> Vec<Scope> {
    ["read:echo", "write:echo", "read:billing"]
        .iter()
        .map(|s| Scope::parse(s).expect("scope"))
        .collect()
}

fn record(id: Uuid, hash: [u8; 32], scopes: Arc<[Scope]>) -> KeyRecord {
    KeyRecord::new(id, hash, scopes, Limits::default(), None, None, None)
}

/// `n` keys as presented by clients, and their records.
fn keys(n: usize, hasher: &KeyHasher) -> (Vec<String>, Vec<KeyRecord>) {
    let scopes: Arc<[Scope]> = scopes().into();
    let plain: Vec<String> = (0..n).map(|_| format::generate(PREFIX)).collect();
    let records = plain
        .iter()
        .enumerate()
        .map(|(i, k)| {
            record(
                Uuid::from_u128(i as u128 + 1),
                hasher.hash(k),
                scopes.clone(),
            )
        })
        .collect();
    (plain, records)
}

/// Snapshot build time and heap bytes per key, printed once. Records are
/// made as `store::keys::load_all` makes them from rows (scopes parsed per
/// row, then interned), so the bytes are what a real load holds.
fn report_snapshot_cost(n: usize, hasher: &KeyHasher) {
    let hashes: Vec<[u8; 32]> = (0..n)
        .map(|_| hasher.hash(&format::generate(PREFIX)))
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut sets = ScopeSets::default();
    let records: Vec<KeyRecord> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| record(Uuid::from_u128(i as u128 + 1), *h, sets.intern(scopes())))
        .collect();
    let started = Instant::now();
    let snap = KeySnapshot::from_records(records);
    let built = started.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "snapshot of {n} keys: indexed in {:.0} ms, {} heap bytes per key ({:.0} MiB in all)",
        built.as_secs_f64() * 1000.0,
        bytes / n as isize,
        bytes as f64 / f64::from(1 << 20)
    );
    let started = Instant::now();
    drop(snap);
    println!(
        "snapshot of {n} keys: dropped in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

fn request_with(key: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/echo/hello", None).expect("request");
    req.insert_header("authorization", format!("Bearer {key}"))
        .expect("header");
    req
}

fn bench_auth(c: &mut Criterion) {
    let n = snapshot_size();
    let hasher = KeyHasher::new(PEPPER);
    report_snapshot_cost(n, &hasher);

    let (plain, records) = keys(n, &hasher);
    let store = KeyStore::new();
    store.replace(KeySnapshot::from_records(records));
    let auth = Authenticator::new(store.clone(), hasher.clone(), PREFIX.to_string());
    // Requests for keys spread over the whole snapshot, so lookups miss the
    // CPU cache as they would with many callers.
    let requests: Vec<RequestHeader> = plain
        .iter()
        .step_by((n / 4096).max(1))
        .map(|k| request_with(k))
        .collect();

    let mut g = c.benchmark_group("auth");
    let mut i = 0;
    g.bench_function(format!("header+checksum+hash+lookup ({n} keys)"), |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            // A key in the snapshot is answered on the first poll.
            let found = auth.authenticate(&requests[i]).now_or_never();
            black_box(found.is_some_and(|r| r.is_ok()))
        })
    });
    let key = &plain[n / 2];
    g.bench_function("checksum", |b| {
        b.iter(|| format::verify(black_box(key), PREFIX))
    });
    g.bench_function("hash", |b| b.iter(|| hasher.hash(black_box(key))));
    let hash = hasher.hash(key);
    g.bench_function(format!("lookup ({n} keys)"), |b| {
        let snap = store.load();
        b.iter(|| snap.authenticate(black_box(&hash), 0).is_ok())
    });
    let bad = request_with(&key.replace(&key[PREFIX.len()..PREFIX.len() + 1], "!"));
    g.bench_function("malformed key refused", |b| {
        b.iter(|| {
            let refused = auth.authenticate(black_box(&bad)).now_or_never();
            refused.is_some_and(|r| r.is_err())
        })
    });
    g.finish();

    // One key change on the full snapshot: what the listener does for a
    // revocation, including dropping the old generation.
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    let scopes: Arc<[Scope]> = scopes().into();
    // The key `hash` belongs to (ids start at 1).
    let id = Uuid::from_u128(n as u128 / 2 + 1);
    g.bench_function(format!("apply one change ({n} keys)"), |b| {
        b.iter_batched(
            || {
                let mut revoked = record(id, hash, scopes.clone());
                revoked.revoked_at_ms = Some(1);
                KeyChange::Upsert(revoked)
            },
            |change| store.apply(vec![change]),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_scopes(c: &mut Criterion) {
    let held = scopes();
    let wildcard = vec![Scope::parse("read:*").expect("scope")];
    let required = vec![Scope::parse("read:echo").expect("scope")];
    let mut g = c.benchmark_group("scopes");
    g.bench_function("exact (3 held, 1 required)", |b| {
        b.iter(|| first_missing(black_box(&held), black_box(&required)).is_none())
    });
    g.bench_function("wildcard read:*", |b| {
        b.iter(|| first_missing(black_box(&wildcard), black_box(&required)).is_none())
    });
    g.finish();
}

fn bench_limits(c: &mut Criterion) {
    let cfg = config();
    let limiter = RateLimiter::new(&cfg).expect("limiter");
    let policy = limiter.policy();
    let scopes = scopes();
    let key = record(Uuid::from_u128(7), [7; 32], scopes.into());
    let store = LocalStore::new(1_000_000);
    let now = gateway::now_ms() as u64;

    let table = RouteTable::from_config(&cfg);
    let routes: Vec<_> = table.iter().collect();
    let three = policy.key_tiers(&key, routes[0]);
    let all = policy.key_tiers(&key, routes[1]);
    assert_eq!((three.len(), all.len()), (3, 9));
    let one = &three[..1];

    let mut g = c.benchmark_group("local limiter");
    g.bench_function("1 tier", |b| {
        b.iter(|| store.check(black_box(one), now, Mode::Count).admitted)
    });
    g.bench_function("3 tiers (key defaults)", |b| {
        b.iter(|| store.check(black_box(&three), now, Mode::Count).admitted)
    });
    g.bench_function("9 tiers (key, route, global)", |b| {
        b.iter(|| store.check(black_box(&all), now, Mode::Count).admitted)
    });
    g.bench_function("policy: tiers for a key", |b| {
        b.iter(|| policy.key_tiers(black_box(&key), routes[1]).len())
    });
    g.finish();

    let d3 = store.check(&three, now, Mode::Peek);
    let d9 = store.check(&all, now, Mode::Peek);
    let mut g = c.benchmark_group("headers");
    g.bench_function("render (3 tiers)", |b| {
        b.iter(|| headers::render(black_box(&d3)).len())
    });
    g.bench_function("render (9 tiers)", |b| {
        b.iter(|| headers::render(black_box(&d9)).len())
    });
    // Issue 16: the same headers with the route's cached RateLimit-Policy
    // and limit values; only the dynamic numbers are formatted.
    let (r3, r9) = (routes[0], routes[1]);
    g.bench_function("values, cached policy (3 tiers)", |b| {
        b.iter(|| headers::values(black_box(&d3), Both, Some(&r3.rate_limit_headers)).len())
    });
    g.bench_function("values, cached policy (9 tiers)", |b| {
        b.iter(|| headers::values(black_box(&d9), Both, Some(&r9.rate_limit_headers)).len())
    });
    g.bench_function("values, headers = none (3 tiers)", |b| {
        b.iter(|| headers::values(black_box(&d3), HeaderStyle::None, None).len())
    });
    // What response_filter does per response, before and after: the
    // request id and the rate-limit headers into an upstream's response.
    let id = identity::new_request_id();
    g.bench_function(
        "response_filter before: render + insert Strings (3 tiers)",
        |b| {
            b.iter_batched(
                upstream_response,
                |mut resp| {
                    resp.insert_header("x-request-id", id.clone()).expect("id");
                    for (name, value) in headers::render(black_box(&d3)) {
                        resp.insert_header(name, value).expect("header");
                    }
                    resp
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.bench_function(
        "response_filter after: cached values + insert (3 tiers)",
        |b| {
            b.iter_batched(
                upstream_response,
                |mut resp| {
                    resp.insert_header("x-request-id", id.clone()).expect("id");
                    let cache = Some(&r3.rate_limit_headers);
                    for (name, value) in headers::values(black_box(&d3), Both, cache) {
                        resp.insert_header(name, value).expect("header");
                    }
                    resp
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();

    // Which name type Pingora's insert_header handles cheapest: a static
    // str keeps the case-map name without a copy; a HeaderName of a
    // non-standard header is copied into the case map on every insert.
    let mut g = c.benchmark_group("insert_header name");
    let value = http::HeaderValue::from_static("17");
    let prebuilt = http::HeaderName::from_static("x-ratelimit-remaining");
    g.bench_function("&'static str", |b| {
        b.iter_batched(
            upstream_response,
            |mut resp| {
                resp.insert_header("x-ratelimit-remaining", value.clone())
                    .expect("header");
                resp
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("pre-built HeaderName", |b| {
        b.iter_batched(
            upstream_response,
            |mut resp| {
                resp.insert_header(prebuilt.clone(), value.clone())
                    .expect("header");
                resp
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("request id");
    g.bench_function("before: UUIDv4 from the thread RNG", |b| {
        b.iter(identity::random_request_id)
    });
    g.bench_function("after: UUIDv8 prefix + counter", |b| {
        b.iter(identity::new_request_id)
    });
    g.finish();
}

/// A typical upstream response header, before the gateway adds its own.
fn upstream_response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, None).expect("response");
    for (n, v) in [
        ("content-type", "application/json"),
        ("content-length", "27"),
        ("date", "Sun, 29 Nov 2026 22:00:00 GMT"),
        ("server", "upstream"),
    ] {
        r.insert_header(n, v).expect("header");
    }
    r
}

/// Path normalisation runs on every request before routing: the common,
/// already normalised path is one pass and no allocation.
fn bench_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("paths");
    g.bench_function("normalised (borrowed)", |b| {
        b.iter(|| gateway::http_path::normalize(black_box("/orders/v1/items/12345/detail")))
    });
    g.bench_function("to rewrite (//, %61)", |b| {
        b.iter(|| gateway::http_path::normalize(black_box("/orders//v1/%61tems/12345/detail")))
    });
    g.bench_function("request header, normalised", |b| {
        let req =
            RequestHeader::build("GET", b"/orders/v1/items/12345?page=2", None).expect("request");
        b.iter_batched_ref(
            || req.clone(),
            gateway::http_path::normalize_request,
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// `Rollups::observe` runs in the proxy's `logging` for every request: a
/// series already seen this minute is a lock of the thread's own shard, a
/// hash lookup and counter updates, with no allocation.
fn bench_rollups(c: &mut Criterion) {
    use gateway::reqlog::record::RequestRecord;
    use gateway::reqlog::rollup::Rollups;
    let route: Arc<str> = Arc::from("orders");
    let record = |key: u128, status: u16, latency_ms: f64| RequestRecord {
        id: Uuid::now_v7(),
        ts: chrono::Utc::now(),
        request_id: http::HeaderValue::from_static("5b0c1f7e-2a7d-4d0e-9a43-6f0f5f6a1b22"),
        key_id: Some(Uuid::from_u128(key)),
        route: Some(route.clone()),
        method: http::Method::GET,
        path: "/orders/v1/items/12345".into(),
        query: None,
        status,
        error_code: None,
        latency_ms,
        upstream_latency_ms: Some(latency_ms * 0.9),
        upstream: None,
        request_bytes: 120,
        response_bytes: 2048,
        client_ip: None,
        user_agent: None,
        request_body: None,
        response_body: None,
    };
    let mut g = c.benchmark_group("rollups");
    let rollups = Rollups::default();
    let one = record(7, 200, 3.2);
    rollups.observe(&one);
    g.bench_function("observe (series seen this minute)", |b| {
        b.iter(|| rollups.observe(black_box(&one)))
    });
    // 1,000 keys × 3 statuses: a map of 3,000 series, cache-cold entries.
    let many: Vec<RequestRecord> = (0..3_000u128)
        .map(|i| {
            record(
                i % 1_000,
                [200, 404, 503][(i / 1_000) as usize],
                (i % 97) as f64,
            )
        })
        .collect();
    for r in &many {
        rollups.observe(r);
    }
    let mut i = 0;
    g.bench_function("observe (rotating over 3,000 series)", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            rollups.observe(black_box(&many[i]))
        })
    });
    g.bench_function("histogram bucket_of", |b| {
        b.iter(|| gateway::reqlog::histogram::bucket_of(black_box(12.3)))
    });
    g.finish();
    let series = rollups.take().len();
    assert_eq!(series, 3_000);
}

criterion_group!(
    benches,
    bench_auth,
    bench_scopes,
    bench_limits,
    bench_paths,
    bench_rollups
);
criterion_main!(benches);
