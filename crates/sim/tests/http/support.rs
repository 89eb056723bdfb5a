//! A minimal HTTP client over hyper's connection API, so tests control exactly when a
//! connection closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One HTTP/1.1 connection. Dropping it (or `close`) closes the socket at once.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn { sender, task }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        self.sender.ready().await?;
        self.sender.send_request(req).await
    }

    /// Closes the connection and returns the instant it happened.
    pub async fn close(mut self) -> Instant {
        self.task.abort();
        let _ = (&mut self.task).await;
        Instant::now()
    }
}

pub fn post(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn read(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// POSTs JSON on a fresh connection and reads the whole answer.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> Answer {
    let mut conn = Conn::open(addr).await;
    let resp = conn
        .send(post(addr, path, &body, headers))
        .await
        .expect("response");
    read(resp).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut conn = Conn::open(addr).await;
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    read(conn.send(req).await.expect("response")).await
}

/// Polls `cond` every 5 ms until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn chat(content: &str, max_tokens: u32) -> Value {
    serde_json::json!({
        "model": "sim-model",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    })
}

/// A prompt long enough to fill several cache blocks.
pub fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A simulator whose inference requests hang until [`vllm_sim::SimServer::set_hang`] lifts it.
pub async fn hung() -> vllm_sim::SimServer {
    vllm_sim::spawn(vllm_sim::SimConfig {
        hang: true,
        ..vllm_sim::SimConfig::default()
    })
    .await
    .expect("spawn")
}
