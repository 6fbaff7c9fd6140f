//! `gateway health`, the image's HEALTHCHECK: exit 0 when the admin
//! listener answers `/health/ready` with 200, non-zero with a one-line
//! reason naming the address otherwise. Real gateway, real sockets.

mod common;

use std::process::Output;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;

fn health(args: &[&str]) -> Output {
    command()
        .arg("health")
        .args(args)
        .output()
        .expect("run gateway health")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn ready_gateway_is_healthy() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(default_routes(upstream))).await;

    // The URL comes from the config's admin.listen.
    let out = gw.cli(&["health"]);
    assert!(out.status.success(), "health -c failed: {}", stderr(&out));

    let url = gw.admin_url("/health/ready");
    let out = health(&["--url", &url, "--timeout", "5s"]);
    assert!(
        out.status.success(),
        "health --url failed: {}",
        stderr(&out)
    );
}

#[test]
fn closed_port_is_unhealthy_and_named() {
    let dead = dead_addr();
    let url = format!("http://{dead}/health/ready");
    let out = health(&["--url", &url]);
    assert!(
        !out.status.success(),
        "a closed port passed the health check"
    );
    let err = stderr(&out);
    assert!(err.contains(&dead.to_string()), "address not named: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

/// A listener that answers every connection with `response` once it has
/// read the request head (or nothing at all when `response` is None). On
/// its own thread: the CLI runs as a blocking child process.
fn fake_admin(response: Option<&'static str>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut sock in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf);
            match response {
                Some(r) => {
                    let _ = sock.write_all(r.as_bytes());
                }
                // Keep the socket open and silent.
                None => held.push(sock),
            }
        }
    });
    addr
}

#[test]
fn not_ready_answer_is_unhealthy() {
    let addr = fake_admin(Some(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    ));
    let out = health(&["--url", &format!("http://{addr}/health/ready")]);
    assert!(!out.status.success(), "503 passed the health check");
    let err = stderr(&out);
    assert!(err.contains("503"), "status not named: {err}");
}

#[test]
fn silent_peer_is_unhealthy_after_the_timeout() {
    let addr = fake_admin(None);
    let out = health(&[
        "--url",
        &format!("http://{addr}/health/ready"),
        "--timeout",
        "1s",
    ]);
    assert!(
        !out.status.success(),
        "a silent peer passed the health check"
    );
    let err = stderr(&out);
    assert!(err.contains(&addr.to_string()), "address not named: {err}");
}

#[test]
fn non_http_peer_is_unhealthy() {
    let addr = fake_admin(Some("SSH-2.0-OpenSSH_9.2\r\n"));
    let out = health(&["--url", &format!("http://{addr}/health/ready")]);
    assert!(
        !out.status.success(),
        "a non-HTTP peer passed the health check"
    );
    assert!(stderr(&out).contains("not HTTP"), "{}", stderr(&out));
}
