//! `[rate_limits] headers` as a client sees it over real sockets: each
//! style sends its header families on admitted responses and on 429s, a
//! 429 always says `Retry-After`, and the route's cached `RateLimit-Policy`
//! never leaks from one key's tier list to another's.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const LEGACY: [&str; 3] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];
const IETF: [&str; 2] = ["ratelimit-policy", "ratelimit"];

fn config(upstream: std::net::SocketAddr, style: &str) -> String {
    format!(
        r#"{}
[rate_limits]
headers = "{style}"
default = {{ per_minute = 50, per_hour = 1000 }}
"#,
        default_routes(upstream)
    )
}

/// Waits until at least `needed` seconds are left in the current minute,
/// so a burst is not split by a window boundary.
async fn room_in_this_minute(needed: u64) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let into = ms % 60_000;
    if into + needed * 1000 > 60_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 50)).await;
    }
}

fn has(h: &reqwest::header::HeaderMap, names: &[&str]) -> Vec<bool> {
    names.iter().map(|n| h.contains_key(*n)).collect()
}

/// A key limited to 2 a minute: two admitted requests, then a 429; checks
/// which families each carries under `style`.
async fn style_sends(style: &str, legacy: bool, ietf: bool) {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream, style))).await;
    let (_, key) = gw.create_key_unseen("read:echo", &["--per-minute", "2"]);
    wait_known(&gw, &key).await;
    room_in_this_minute(10).await;
    for i in 0..3 {
        let (status, h, _) = get(&gw.url("/echo"), Some(&key)).await;
        let refused = i == 2;
        assert_eq!(
            status,
            if refused { 429 } else { 200 },
            "{style} {i}: {h:?}"
        );
        assert_eq!(has(&h, &LEGACY), [legacy; 3], "{style} {i}: {h:?}");
        assert_eq!(has(&h, &IETF), [ietf; 2], "{style} {i}: {h:?}");
        assert_eq!(h.contains_key("retry-after"), refused, "{style} {i}: {h:?}");
        assert!(h.contains_key("x-request-id"), "{style} {i}: {h:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ietf_sends_only_the_ietf_fields() {
    style_sends("ietf", false, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_sends_only_x_ratelimit() {
    style_sends("legacy", true, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn none_sends_only_retry_after_on_a_429() {
    style_sends("none", false, false).await;
}

/// The default, with two keys on one route alternating: the one with an
/// override and the one without each get their own policy, every time,
/// though the route caches both.
#[tokio::test(flavor = "multi_thread")]
async fn both_sends_everything_and_each_key_its_own_policy() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream, "both"))).await;
    let (_, plain) = gw.create_key_unseen("read:echo", &[]);
    let (_, plan) = gw.create_key_unseen("read:echo", &["--per-minute", "7"]);
    wait_known(&gw, &plain).await;
    wait_known(&gw, &plan).await;
    room_in_this_minute(10).await;
    for i in 0..4 {
        for (key, minute) in [(&plain, 50), (&plan, 7)] {
            let (status, h, _) = get(&gw.url("/echo"), Some(key)).await;
            assert_eq!(status, 200, "{i}: {h:?}");
            assert_eq!(has(&h, &LEGACY), [true; 3], "{h:?}");
            let policy = h.get("ratelimit-policy").and_then(|v| v.to_str().ok());
            let want = format!("\"minute\";q={minute};w=60, \"hour\";q=1000;w=3600");
            assert_eq!(policy, Some(want.as_str()), "{i}: {h:?}");
            let limit = h.get("x-ratelimit-limit").and_then(|v| v.to_str().ok());
            assert_eq!(limit, Some(minute.to_string().as_str()), "{i}: {h:?}");
            let current = h.get("ratelimit").and_then(|v| v.to_str().ok());
            let remaining = format!("\"minute\";r={};", minute - 1 - i);
            assert!(
                current.is_some_and(|c| c.starts_with(&remaining)),
                "{i}: {h:?}"
            );
        }
    }
}
