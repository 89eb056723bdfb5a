//! Span export by OTLP over HTTP (protobuf). Ended spans go into a bounded queue without
//! waiting: when it is full the span is dropped and counted, so a slow or absent collector
//! never holds up a request. One background task sends them in batches (when a batch is full
//! or every few seconds), each send bounded by a timeout; a failed batch is dropped, counted,
//! and logged at most once a minute. At shutdown the task sends what is queued and ends.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as proto, ResourceSpans, ScopeSpans, SpanFlags};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::span::{Kind, SpanData, Value};

use crate::sync::Mutex;

/// The service name spans carry unless `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "vllm-router";

/// The path collectors take traces on, added to an endpoint given without a path.
const TRACES_PATH: &str = "/v1/traces";

/// Export failures are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Largest collector answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Queue and batch sizes, and how long a batch may wait or a send may take.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// Spans waiting for export at most; more are dropped.
    pub queue: usize,
    /// Spans per request to the collector at most.
    pub batch: usize,
    /// Longest wait before a partial batch is sent.
    pub delay: Duration,
    /// Longest a send may take, connecting included.
    pub timeout: Duration,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            queue: 2048,
            batch: 512,
            delay: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An `https` endpoint, but the system's root certificates could not be loaded.
    #[error("cannot load the system's root certificates for {endpoint}: {source}")]
    Certificates {
        /// The endpoint.
        endpoint: Uri,
        /// What failed.
        source: std::io::Error,
    },
}

/// Where ended spans go: a cheap handle to the export queue.
#[derive(Clone, Debug)]
pub struct Exporter {
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
}

impl Exporter {
    /// Queue an ended span, or drop and count it when the queue is full or closed.
    pub fn submit(&self, span: SpanData) {
        if let Err(error) = self.queue.try_send(span) {
            let cause = match error {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "shutdown",
            };
            self.metrics.spans_dropped(cause, 1);
        }
    }
}

/// Span export: the queue and the task that sends it to the collector.
#[derive(Debug)]
pub struct Traces {
    exporter: Exporter,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl Traces {
    /// Start exporting to `endpoint` as `service_name`. Must be called inside a Tokio runtime.
    pub fn start(
        endpoint: &Uri,
        service_name: String,
        metrics: Arc<Metrics>,
        settings: ExportSettings,
    ) -> Result<Self, ExportError> {
        let endpoint = with_traces_path(endpoint);
        let transport = Transport::new(&endpoint, settings.timeout)?;
        let (queue, spans) = mpsc::channel(settings.queue.max(1));
        let (stop, stopping) = watch::channel(false);
        let sender = Sender {
            transport,
            endpoint,
            resource: resource(service_name),
            timeout: settings.timeout,
            metrics: Arc::clone(&metrics),
            warned: None,
            lost: 0,
        };
        let timeout = settings.timeout;
        let task = tokio::spawn(sender.run(spans, stopping, settings));
        Ok(Self {
            exporter: Exporter { queue, metrics },
            stop,
            task: Mutex::new(Some(task)),
            timeout,
        })
    }

    /// The handle spans are queued through.
    pub fn exporter(&self) -> &Exporter {
        &self.exporter
    }

    /// Send what is queued and stop: waits for the last sends, at most twice the send
    /// timeout (a send under way, then the rest). Spans ended later are dropped and counted.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().take();
        if let Some(mut task) = task
            && tokio::time::timeout(2 * self.timeout, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("trace export did not finish in time; the spans left are lost");
            task.abort();
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

/// The service name: `OTEL_SERVICE_NAME` from `env` when set and not blank, else ours.
pub fn service_name(env: impl Fn(&str) -> Option<String>) -> String {
    env("OTEL_SERVICE_NAME")
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned())
}

/// The endpoint as given, or with `/v1/traces` when it has no path.
fn with_traces_path(endpoint: &Uri) -> Uri {
    if endpoint.path() != "/" || endpoint.query().is_some() {
        return endpoint.clone();
    }
    let mut parts = endpoint.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(TRACES_PATH));
    Uri::from_parts(parts).unwrap_or_else(|_| endpoint.clone())
}

/// The client to the collector: TLS only for an `https` endpoint, so a plain one needs no
/// certificates.
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl Transport {
    fn new(endpoint: &Uri, timeout: Duration) -> Result<Self, ExportError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30));
        if endpoint.scheme_str() != Some("https") {
            return Ok(Self::Plain(builder.build(http)));
        }
        http.enforce_http(false);
        let tls = HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|source| ExportError::Certificates {
                endpoint: endpoint.clone(),
                source,
            })?
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self::Tls(builder.build(tls)))
    }

    fn send(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Self::Plain(client) => client.request(request),
            Self::Tls(client) => client.request(request),
        }
    }
}

/// The export task's state.
struct Sender {
    transport: Transport,
    endpoint: Uri,
    resource: Resource,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// When a failure was last logged.
    warned: Option<tokio::time::Instant>,
    /// Spans lost since then.
    lost: u64,
}

impl Sender {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        mut stop: watch::Receiver<bool>,
        settings: ExportSettings,
    ) {
        let size = settings.batch.max(1);
        let mut batch = Vec::with_capacity(size);
        let mut tick = tokio::time::interval(settings.delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Never zero: a full batch is sent at once.
            let room = size - batch.len();
            tokio::select! {
                () = stopped(&mut stop) => break,
                received = spans.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break;
                    }
                    if batch.len() >= size {
                        self.send(&mut batch).await;
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.send(&mut batch).await;
                    }
                }
            }
        }
        // Shutdown: what is queued goes out; what comes later is refused and counted.
        spans.close();
        loop {
            let room = size - batch.len();
            if spans.recv_many(&mut batch, room).await == 0 {
                break;
            }
            if batch.len() >= size {
                self.send(&mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.send(&mut batch).await;
        }
    }

    /// Send `batch` (emptying it); count what was exported or lost.
    async fn send(&mut self, batch: &mut Vec<SpanData>) {
        let count = batch.len() as u64;
        let body = encode(&self.resource, batch.drain(..));
        let request = Request::post(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(error) => return self.lost(count, error.to_string()),
        };
        let exchange = async {
            let response = self
                .transport
                .send(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(answer)
            } else {
                Err(format!("the collector answered {status}"))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => {
                let rejected = rejected_spans(&answer).min(count);
                self.metrics.spans_exported(count - rejected);
                if rejected > 0 {
                    self.metrics.spans_dropped("rejected", rejected);
                }
            }
            Ok(Err(error)) => self.lost(count, error),
            Err(_) => self.lost(count, format!("no answer within {:?}", self.timeout)),
        }
    }

    fn lost(&mut self, count: u64, error: String) {
        self.metrics.spans_dropped("export_failed", count);
        self.lost += count;
        let now = tokio::time::Instant::now();
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            endpoint = %self.endpoint,
            %error,
            spans_lost = self.lost,
            "trace export failed; spans dropped (this is logged at most once a minute)"
        );
        self.warned = Some(now);
        self.lost = 0;
    }
}

/// Resolves once shutdown is asked for (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The collector's count of spans it refused, from a partial-success answer.
fn rejected_spans(answer: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(answer)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

/// The innermost cause of a client error, which names what actually failed.
fn error_chain(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}

fn resource(service_name: String) -> Resource {
    Resource {
        attributes: vec![
            key_value("service.name", Value::from(service_name)),
            key_value("service.version", Value::from(crate::VERSION)),
        ],
        ..Resource::default()
    }
}

/// One export request holding `spans`.
pub fn encode(resource: &Resource, spans: impl Iterator<Item = SpanData>) -> Bytes {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: DEFAULT_SERVICE_NAME.to_owned(),
                    version: crate::VERSION.to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans: spans.map(to_proto).collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

fn to_proto(span: SpanData) -> proto::Span {
    // Every span is sampled (unsampled traces are not recorded); the flags also say whether
    // the parent is remote.
    let mut flags = 0x01 | SpanFlags::ContextHasIsRemoteMask as u32;
    if span.remote_parent {
        flags |= SpanFlags::ContextIsRemoteMask as u32;
    }
    let kind = match span.kind {
        Kind::Server => proto::span::SpanKind::Server,
        Kind::Client => proto::span::SpanKind::Client,
    };
    let status = span.error.map(|message| proto::Status {
        message,
        code: proto::status::StatusCode::Error as i32,
    });
    proto::Span {
        trace_id: span.trace_id.to_bytes().to_vec(),
        span_id: span.span_id.to_bytes().to_vec(),
        parent_span_id: span
            .parent
            .map(|p| p.to_bytes().to_vec())
            .unwrap_or_default(),
        flags,
        name: span.name,
        kind: kind as i32,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end),
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| key_value(key, value))
            .collect(),
        status,
        ..proto::Span::default()
    }
}

fn key_value(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::Int(n) => any_value::Value::IntValue(n),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// Wall-clock time of a monotonic instant, from one reading of both clocks, so that spans
/// keep the order in which they started and ended.
fn unix_nanos(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(anchor, anchor_nanos) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        (Instant::now(), wall)
    });
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match at.checked_duration_since(anchor) {
        Some(after) => anchor_nanos.saturating_add(nanos(after)),
        None => anchor_nanos.saturating_sub(nanos(anchor.duration_since(at))),
    }
}

#[cfg(test)]
mod tests;
