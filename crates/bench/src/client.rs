//! The HTTP side: one streaming chat request in, one [`Outcome`] out, with the time to the
//! first token measured on the first chunk that carries a choice.

mod chunk;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::sse::SseParser;
use crate::workload::ChatRequest;
pub use chunk::Usage;
use chunk::{ChunkError, StreamState};

/// The header carrying the session key.
pub const SESSION_HEADER: &str = "x-session-id";

/// Error bodies are read this far, for the first line of the report's error detail.
const ERROR_BODY_LIMIT: usize = 4096;

/// A pooled HTTP/1 client shared by every user of a run.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A complete stream, ended by `data: [DONE]`.
    Ok,
    /// Turned away with 429 or 503: load shedding, not a failure.
    Shed,
    /// Anything else.
    Error(ErrorKind),
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No connection, or it broke before the response head.
    Connect,
    /// A status other than 2xx, 429 and 503.
    Status(u16),
    /// The body broke off, or ended without `data: [DONE]`.
    Incomplete,
    /// An SSE `error` event or a chunk holding an `error` object.
    Stream,
    /// A chunk that is not JSON.
    Malformed,
    /// The request outlived the request timeout.
    Timeout,
}

/// Everything measured about one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// How it ended.
    pub verdict: Verdict,
    /// The response status, when a response head arrived.
    pub status: Option<u16>,
    /// Time from sending to the first chunk carrying a choice.
    pub ttft: Option<Duration>,
    /// Time from sending to the end of the stream (or the failure).
    pub e2e: Duration,
    /// The final usage chunk, when there was one.
    pub usage: Option<Usage>,
    /// The assistant text: every content delta, in order.
    pub reply: String,
    /// A short description of the failure, for the report.
    pub detail: Option<String>,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect => f.write_str("connect"),
            Self::Status(s) => write!(f, "status {s}"),
            Self::Incomplete => f.write_str("incomplete stream"),
            Self::Stream => f.write_str("stream error event"),
            Self::Malformed => f.write_str("malformed chunk"),
            Self::Timeout => f.write_str("timeout"),
        }
    }
}

impl Outcome {
    fn failed(started: Instant, status: Option<u16>, kind: ErrorKind, detail: String) -> Self {
        Self {
            verdict: Verdict::Error(kind),
            status,
            ttft: None,
            e2e: started.elapsed(),
            usage: None,
            reply: String::new(),
            detail: Some(detail),
        }
    }
}

impl Client {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { inner, timeout }
    }

    /// Sends one streaming chat request to `uri` and follows the stream to its end.
    pub async fn chat(&self, uri: &Uri, req: &ChatRequest) -> Outcome {
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, self.exchange(uri, req, started)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::failed(
                started,
                None,
                ErrorKind::Timeout,
                format!("no complete answer within {:?}", self.timeout),
            ),
        }
    }

    async fn exchange(&self, uri: &Uri, req: &ChatRequest, started: Instant) -> Outcome {
        let mut builder = Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream");
        if let Some(session) = &req.session {
            builder = builder.header(SESSION_HEADER, session.as_str());
        }
        let request = match builder.body(Full::new(req.body.clone())) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(started, None, ErrorKind::Connect, e.to_string()),
        };
        let resp = match self.inner.request(request).await {
            Ok(resp) => resp,
            Err(e) => {
                return Outcome::failed(started, None, ErrorKind::Connect, error_chain(&e));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let body = read_error_body(resp.into_body()).await;
            let mut outcome = Outcome::failed(
                started,
                Some(status.as_u16()),
                ErrorKind::Status(status.as_u16()),
                format!("{status}: {body}"),
            );
            if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                outcome.verdict = Verdict::Shed;
            }
            return outcome;
        }
        follow(resp.into_body(), status.as_u16(), started).await
    }

    /// `POST {base}/reset_prefix_cache` with an empty body; the status, or why there was none.
    pub async fn reset_prefix_cache(&self, uri: &Uri) -> Result<StatusCode, String> {
        let request = Request::post(uri.clone())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self
                .inner
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            let _ = read_error_body(resp.into_body()).await;
            Ok(status)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// Reads the event stream to its end.
async fn follow(mut body: Incoming, status: u16, started: Instant) -> Outcome {
    let mut parser = SseParser::new();
    let mut state = StreamState::default();
    let fail = |state: StreamState, kind, detail| {
        let mut outcome = Outcome::failed(started, Some(status), kind, detail);
        outcome.ttft = state.ttft;
        outcome.reply = state.reply;
        outcome
    };
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                return fail(state, ErrorKind::Incomplete, error_chain(&e));
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                parser.push(&data);
                while let Some(event) = parser.next_event() {
                    if let Err(e) = state.on_event(&event, started) {
                        let kind = match e {
                            ChunkError::Stream(_) => ErrorKind::Stream,
                            ChunkError::Malformed(_) => ErrorKind::Malformed,
                        };
                        return fail(state, kind, e.to_string());
                    }
                }
            }
        }
    }
    if !state.done {
        return fail(
            state,
            ErrorKind::Incomplete,
            "stream ended without data: [DONE]".to_owned(),
        );
    }
    Outcome {
        verdict: Verdict::Ok,
        status: Some(status),
        ttft: state.ttft,
        e2e: started.elapsed(),
        usage: state.usage,
        reply: state.reply,
        detail: None,
    }
}

/// The start of an error answer's body, on one line.
async fn read_error_body(body: Incoming) -> String {
    match Limited::new(body, ERROR_BODY_LIMIT).collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            String::from_utf8_lossy(&bytes)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(_) => "(body unreadable)".to_owned(),
    }
}

/// An error and its causes, joined; hyper's top-level messages alone say little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
