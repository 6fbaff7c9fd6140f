//! Revocation lag between two gateway instances (DESIGN §4: p99 < 100 ms),
//! driven by `benches/load/revocation-lag.sh`.
//!
//! For each of N keys: create it through instance A's admin API, wait until
//! instance B accepts it, then revoke it on A (`DELETE /api/v1/keys/{id}`)
//! and poll B's proxy port until it answers 401 `revoked_api_key`. The lag
//! is the time from sending the DELETE to B's first 401, so it includes
//! A's write to Postgres, the NOTIFY, B's reload of that key and the swap
//! of B's snapshot. Polls are 1 ms apart, so figures are ~1 ms coarse.
//!
//! ```text
//! cargo run --release --example revocation_lag -- \
//!     <admin A url> <proxy B url> <admin key> <scope> [count]
//! ```

use std::process::exit;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const POLL_EVERY: Duration = Duration::from_millis(1);
/// Give up on one key after this long: far beyond the budget, so a stuck
/// listener shows up as a failure instead of a hang.
const GIVE_UP: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: revocation_lag <admin A url> <proxy B url> <admin key> <scope> [count]";
    let (admin, proxy, admin_key, scope) = match &args[..] {
        [a, p, k, s] | [a, p, k, s, _] => (a.as_str(), p.as_str(), k.as_str(), s.as_str()),
        _ => fail(usage),
    };
    let count: usize = match args.get(4).map(|c| c.parse()) {
        None => 100,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => fail(&format!("count must be a positive integer\n{usage}")),
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap_or_else(|e| fail(&format!("http client: {e}")));

    let mut lags = Vec::with_capacity(count);
    let mut seen = Vec::with_capacity(count);
    for i in 0..count {
        let created = http
            .post(format!("{admin}/api/v1/keys"))
            .bearer_auth(admin_key)
            .json(&json!({"name": format!("revocation-lag-{i}"), "scopes": [scope]}))
            .send()
            .await;
        let body: Value = match created {
            Ok(r) if r.status() == 201 => r.json().await.unwrap_or_default(),
            Ok(r) => fail(&format!("create on A answered {}", r.status())),
            Err(e) => fail(&format!("create on A: {e}")),
        };
        let (Some(id), Some(key)) = (body["id"].as_str(), body["key"].as_str()) else {
            fail("create on A answered without id and key");
        };

        // The creation has to reach B first, or the 401 would mean nothing.
        let created_at = Instant::now();
        wait_for(&http, proxy, key, |status, _| status == 200, "the new key").await;
        seen.push(created_at.elapsed());

        let sent = Instant::now();
        match http
            .delete(format!("{admin}/api/v1/keys/{id}"))
            .bearer_auth(admin_key)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => fail(&format!("revoke on A answered {}", r.status())),
            Err(e) => fail(&format!("revoke on A: {e}")),
        }
        wait_for(
            &http,
            proxy,
            key,
            |status, code| status == 401 && code == "revoked_api_key",
            "the revocation",
        )
        .await;
        lags.push(sent.elapsed());
    }

    println!("revocations: {count} (admin on A, polled on B every {POLL_EVERY:?})");
    report("revocation lag (DELETE sent -> 401 on B)", &mut lags);
    report("creation lag   (201 on A -> accepted on B)", &mut seen);
}

/// Polls `GET proxy/` with `key` until `done(status, error code)`.
async fn wait_for(
    http: &reqwest::Client,
    proxy: &str,
    key: &str,
    done: impl Fn(u16, &str) -> bool,
    what: &str,
) {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{proxy}/")).bearer_auth(key).send().await {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            if done(status, body["error"]["code"].as_str().unwrap_or("")) {
                return;
            }
        }
        if started.elapsed() > GIVE_UP {
            fail(&format!("B did not see {what} within {GIVE_UP:?}"));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e3
    };
    println!(
        "{label}: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}
