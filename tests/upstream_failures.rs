//! What the proxy does when proxying fails: a client connection that broke
//! the protocol is not reused (its leftover bytes must never be read as a
//! new request), and a failing upstream does not flood the log.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// The request body breaks chunked encoding while the gateway proxies it:
/// that is the client's error (400), and the connection must close. Reused,
/// the bytes after the bad chunk, or the next request, would be parsed as a
/// request of its own, which is how request smuggling starts. (A guard:
/// Pingora refuses this reuse itself once proxying has started; the
/// gateway's own choice, `fail_to_proxy`'s `can_reuse_downstream`, applies
/// to failures before proxying and is unit-tested in `proxy`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_broke_the_protocol_is_not_reused() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;

    let head = "POST /public/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    // The body arrives with the header, or after it, while the gateway
    // already streams to the upstream.
    for (case, body, separate) in [
        ("bad chunk size", "zz\r\n", false),
        ("bad chunk terminator", "3\r\nabcXY", false),
        ("bad chunk size, sent later", "zz\r\n", true),
        ("bad chunk terminator, sent later", "3\r\nabcXY", true),
    ] {
        let mut s = TcpStream::connect(gw.proxy).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        if separate {
            s.write_all(head.as_bytes()).expect("write");
            s.flush().expect("flush");
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.write_all(body.as_bytes()).expect("write");
        } else {
            s.write_all(format!("{head}{body}").as_bytes())
                .expect("write");
        }
        let first = read_response(&mut s);
        assert!(first.starts_with("HTTP/1.1 400"), "{case}: {first}");
        // Anything sent now must not be served on this connection.
        let _ = s.write_all(b"GET /public/after HTTP/1.1\r\nHost: t\r\n\r\n");
        let second = read_response(&mut s);
        assert!(
            !second.starts_with("HTTP/"),
            "{case}: the connection was reused after a protocol error:\n{second}"
        );
    }
}

/// A dead upstream fails every request; the log gets one warning per
/// route per interval, not one per request.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_upstream_does_not_flood_the_log() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;
    for _ in 0..20 {
        let (status, _, _) = get(&gw.url("/dead"), None).await;
        assert_eq!(status, 502);
    }
    // The log is written by the gateway process: wait until the first
    // warning is there, then count.
    let logged = eventually(Duration::from_secs(5), || async {
        gw.logs().contains("request failed")
    })
    .await;
    assert!(logged, "no warning at all; log:\n{}", gw.logs());
    let warnings = gw
        .logs()
        .lines()
        .filter(|l| l.contains("request failed") && l.contains("WARN"))
        .count();
    // One per 10 s; two if the 20 requests straddled an interval.
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings for 20 failures; log:\n{}",
        gw.logs()
    );
}
