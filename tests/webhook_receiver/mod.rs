//! A webhook receiver for tests and benches: a real HTTP/1 server on
//! loopback that answers 204 to everything and records what arrived and
//! when. Shared by tests/webhook_expiry.rs and benches/webhooks.rs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When its body had arrived.
    pub at: Instant,
    pub webhook_id: String,
    pub body: Value,
}

pub struct Receiver {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let sink = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let webhook_id = req
                                .headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let bytes = req.into_body().collect().await?.to_bytes();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            sink.lock().push(Hit {
                                at: Instant::now(),
                                webhook_id,
                                body,
                            });
                            let mut resp = hyper::Response::new(Empty::<Bytes>::new());
                            *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, hits, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    /// How many requests arrived, without copying them: cheap enough to poll.
    pub fn count(&self) -> usize {
        self.hits.lock().len()
    }

    /// How many hits satisfy `pred`, without copying them.
    pub fn count_where(&self, pred: impl Fn(&Hit) -> bool) -> usize {
        self.hits.lock().iter().filter(|h| pred(h)).count()
    }

    /// Hits of `event_type` about key `key_id`.
    pub fn hits_for(&self, event_type: &str, key_id: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.body["type"] == event_type && h.body["data"]["id"] == key_id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
