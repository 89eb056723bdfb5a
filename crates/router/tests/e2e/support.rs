//! Shared fixtures: simulated workers, a router in front of them, and a small HTTP client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use vllm_router::cli::RouterArgs;
use vllm_router::config::Config;
use vllm_router::policy::PolicyKind;
use vllm_router::server::RouterHandle;
use vllm_sim::{SimConfig, SimServer};

#[path = "support/process.rs"]
mod process;

// Not every test binary that shares this module starts the router as a process.
#[allow(unused_imports)]
pub use process::*;

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

/// Two fast workers: the first answers every inference request with a 500.
pub async fn failing_then_healthy() -> Vec<SimServer> {
    sims([
        SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        },
        SimConfig::default(),
    ])
    .await
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

/// Wait until nothing listens at `addr` any more: a connection to it is refused.
pub async fn until_refused(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still listens after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A loopback port that nothing listens on, held until dropped: connections to it are
/// refused, and no other test can be given it meanwhile (binding port 0, dropping the listener
/// and naming the port later leaves it free for any test in between). The socket holding it
/// has `SO_REUSEPORT` set, so this test (and no other) can listen on the port while it stays
/// held, with a socket of its own that sets it too.
pub struct ClosedPort {
    addr: SocketAddr,
    _held: TcpSocket,
}

impl ClosedPort {
    pub fn hold() -> Self {
        let held = TcpSocket::new_v4().expect("a socket");
        held.set_reuseport(true).expect("SO_REUSEPORT");
        held.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let addr = held.local_addr().expect("a bound address");
        Self { addr, _held: held }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// An OTLP/HTTP trace collector on a loopback port: decodes every export it receives with the
/// OTLP types and keeps the spans with their service's name.
pub struct Collector {
    addr: SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, Span)>>>,
    task: tokio::task::JoinHandle<()>,
}

pub use opentelemetry_proto::tonic::trace::v1::Span;

impl Collector {
    pub async fn start() -> Self {
        use axum::body::Bytes;
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        use prost::Message;

        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let kept = std::sync::Arc::clone(&kept);
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for rs in request.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| string_value(kv.value.as_ref()))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                kept.lock().unwrap().push((service.clone(), span));
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("collector serves");
        });
        Self { addr, spans, task }
    }

    /// The URL to give `--otlp-traces-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The service names the spans came with.
    pub fn services(&self) -> Vec<String> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn string_value(
    value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>,
) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span's attribute as text (a string, or a whole number written out).
pub fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` a worker received with `record`, split into trace id, parent id and
/// flags, after checking its shape.
pub fn traceparent_of(record: &vllm_sim::RequestRecord) -> (String, String, String) {
    let values: Vec<&str> = record
        .headers
        .iter()
        .filter(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values.len(), 1, "one traceparent: {:?}", record.headers);
    let fields: Vec<&str> = values[0].split('-').collect();
    assert_eq!(fields.len(), 4, "{}", values[0]);
    assert_eq!(fields[0], "00");
    let hex_of = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    assert!(
        hex_of(fields[1], 32) && fields[1].bytes().any(|b| b != b'0'),
        "{}",
        values[0]
    );
    assert!(
        hex_of(fields[2], 16) && fields[2].bytes().any(|b| b != b'0'),
        "{}",
        values[0]
    );
    assert!(hex_of(fields[3], 2), "{}", values[0]);
    (
        fields[1].to_owned(),
        fields[2].to_owned(),
        fields[3].to_owned(),
    )
}

/// Every value of header `name` a worker received with `record`.
pub fn header_values(record: &vllm_sim::RequestRecord, name: &str) -> Vec<String> {
    record
        .headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Read until the peer closes. Returns what arrived and whether the close was a reset.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(within, stream.read(&mut buf))
            .await
            .expect("the router kept the connection open");
        match read {
            Ok(0) => return (received, false),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (received, true),
            Err(e) => panic!("read: {e}"),
        }
    }
}
