//! Shared fixtures: simulated workers, a router in front of them, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vllm_router::cli::RouterArgs;
use vllm_router::config::Config;
use vllm_router::policy::PolicyKind;
use vllm_router::server::RouterHandle;
use vllm_sim::{SimConfig, SimServer};

pub const MODEL: &str = "sim-model";

/// Start one simulated worker per config.
pub async fn sims(configs: impl IntoIterator<Item = SimConfig>) -> Vec<SimServer> {
    let mut out = Vec::new();
    for config in configs {
        out.push(vllm_sim::spawn(config).await.expect("sim starts"));
    }
    out
}

/// `n` fast workers serving [`MODEL`].
pub async fn fast_sims(n: usize) -> Vec<SimServer> {
    sims((0..n).map(|_| SimConfig::default())).await
}

/// One fast worker whose context window takes a 10 MB prompt.
pub async fn long_context_sim() -> Vec<SimServer> {
    sims([SimConfig {
        max_model_len: 4_000_000,
        ..SimConfig::default()
    }])
    .await
}

/// A router on a loopback port in front of `workers`, flags adjusted by `tweak`.
pub async fn router_with(
    workers: &[SimServer],
    tweak: impl FnOnce(&mut RouterArgs),
) -> RouterHandle {
    let mut args = RouterArgs {
        worker_urls: workers.iter().map(SimServer::url).collect(),
        // Most tests reason about rotation; policy tests choose their own.
        policy: Some(PolicyKind::RoundRobin),
        prometheus_port: 0,
        worker_startup_timeout_secs: 5,
        health_check_interval_secs: 1,
        ..RouterArgs::default()
    };
    tweak(&mut args);
    let config = Config::from_args(args).expect("valid config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    RouterHandle::spawn(listener, config)
        .await
        .expect("router starts")
}

/// A router with default flags in front of `workers`.
pub async fn router(workers: &[SimServer]) -> RouterHandle {
    router_with(workers, |_| {}).await
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// Assert the router's OpenAI-shaped error with this status.
    pub fn assert_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some(), "{v}");
        assert_eq!(e["code"], status, "{v}");
        v
    }
}

/// Send a request and read the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .expect("request");
    let (head, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: head.status,
        headers: head.headers,
        body,
    }
}

pub async fn post_json(url: &str, body: serde_json::Value) -> Reply {
    send(
        Method::POST,
        url,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[], Bytes::new()).await
}

pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about load balancers"}],
        "max_tokens": 4,
        "stream": stream,
    })
}

/// A raw HTTP/1.1 connection, for tests that must control exactly when the client leaves.
pub struct RawClient {
    pub stream: TcpStream,
    pub received: Vec<u8>,
}

impl RawClient {
    pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        Self {
            stream,
            received: Vec::new(),
        }
    }

    /// Read until `needle` has been seen `count` times in everything received.
    pub async fn read_until(&mut self, needle: &str, count: usize) {
        let mut buf = [0u8; 4096];
        while occurrences(&self.received, needle.as_bytes()) < count {
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("read timed out")
                .expect("read");
            assert!(
                n > 0,
                "connection closed early: {}",
                String::from_utf8_lossy(&self.received)
            );
            self.received.extend_from_slice(&buf[..n]);
        }
    }
}

pub fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Poll `check` until it yields a value or `within` passes.
pub async fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `vllm-router` binary on a free port (metrics off, quiet logs) with `args` and `env`
/// added to a clean environment, and the address it serves. Killed when the child is dropped
/// only if the test kills it; tests end it with [`signal`] or `kill`.
pub async fn spawn_router(args: &[String], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vllm-router"))
        .args([
            "--port",
            "0",
            "--prometheus-port",
            "0",
            "--log-level",
            "warn",
        ])
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the router binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let addr = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("readable stdout");
            if let Some(addr) = line.strip_prefix("vllm-router listening on http://") {
                return addr.parse::<SocketAddr>().expect("an address");
            }
        }
        panic!("the router never said where it listens");
    })
    .await
    .expect("the reader ends");
    (child, addr)
}

/// Send a signal (`TERM`, `HUP`, ...) to a child process.
pub fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

/// The exit code of `child`, waiting up to `within` (killed and failing past it).
pub async fn exit_code(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the router did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
