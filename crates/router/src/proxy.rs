//! The request path: admit, read the body within the limit, peek, then run the request's plan:
//! one leg to a worker of any role (regular requests), or a prefill leg and a decode leg
//! ([`crate::pd`]). Every leg goes through [`Leg`], which retries on other workers before the
//! response; once the response is on its way to the client nothing is retried, and the answer
//! streams back through a [`TrackedBody`]: a stream that breaks or stalls ends with an error
//! event.

mod alias;
mod body;
pub mod fanout;
pub mod headers;
mod leg;
pub mod peek;
mod retry;
mod tracked;

use std::sync::Arc;

use axum::body::Body;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};

pub use retry::RetryBudget;
pub use tracked::{Drain, StreamLimits, TrackedBody};

use tokio::time::Instant;

pub(crate) use self::leg::{Answer, Leg, Stage};
use crate::admission::Refused;
use crate::app::{App, inference_route};
use crate::cli::WorkerHeader;
use crate::config::{Config, Origin};
use crate::error::ApiError;
use crate::fleet::{Pool, Worker, X_DATA_PARALLEL_RANK};
use crate::pd;
use crate::policy::RouteRequest;
use crate::sync::Mutex;
use crate::telemetry::exchange::Exchange;
use crate::telemetry::otlp::Traces;
use crate::telemetry::span::RequestSpan;
use crate::telemetry::trace::TraceContext;
use crate::upstream::UpstreamBody;
pub(crate) use body::read_body;

/// Forward one inference request (the handler of the routes the router names and of its
/// catch-all). The response always carries `x-request-id`.
pub async fn forward(State(app): State<Arc<App>>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    forward_from(&app, peer, request).await
}

/// [`forward`] a request from the client at `peer`.
pub async fn forward_from(app: &App, peer: Option<IpAddr>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // One configuration for the whole request, however long it runs: a reload applies to
    // the requests that arrive after it.
    let config = app.live_config().load_full();
    let request_id = headers::request_id(&parts.headers, &config.request_id_headers);
    let trace = TraceContext::from_headers(&parts.headers);
    let path = parts.uri.path();
    let route_name = inference_route(path).unwrap_or("other");
    let exchange = Mutex::new(Some(Exchange::begin(
        Arc::clone(&app.metrics),
        "POST",
        route_name,
        request_id.clone(),
        trace.trace_id(),
    )));
    let span = server_span(app, trace, &parts, route_name, &request_id);
    let record = Record {
        request_id: &request_id,
        exchange: &exchange,
        span: &span,
    };
    let mut response = match route(app, config, parts, body, record, peer).await {
        Ok(response) => response,
        Err(error) => {
            if let Some(exchange) = exchange.lock().as_mut() {
                exchange.refused(error.status().as_u16(), error.to_string());
            }
            error.into_response()
        }
    };
    // Recorded now unless a response body took it.
    drop(exchange);
    if span.is_recording() {
        let status = response.status();
        span.set("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.set("error.type", status.as_str().to_owned());
            span.fail(status.to_string());
        }
    }
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    response
}

/// The request's server span in `trace`: recorded when spans are exported and the trace is
/// sampled.
fn server_span(
    app: &App,
    trace: TraceContext,
    parts: &Parts,
    route: &'static str,
    request_id: &HeaderValue,
) -> RequestSpan {
    let method = &parts.method;
    let span = RequestSpan::start(app.traces.as_ref().map(Traces::exporter), trace, || {
        format!("{method} {route}")
    });
    if span.is_recording() {
        span.set("http.request.method", method.as_str().to_owned());
        span.set("http.route", route);
        let id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
        span.set("vllm_router.request_id", id);
    }
    span
}

/// What the request carries from its arrival to its end: its id, its record and its span.
#[derive(Clone, Copy)]
struct Record<'a> {
    request_id: &'a HeaderValue,
    exchange: &'a Mutex<Option<Exchange>>,
    span: &'a RequestSpan,
}

async fn route(
    app: &App,
    config: Arc<Config>,
    parts: Parts,
    body: Body,
    record: Record<'_>,
    peer: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let Record {
        request_id,
        exchange,
        span,
    } = record;
    // The body first, within its time and pace: a slow upload holds no admission slot.
    let body = read_body(
        &parts.headers,
        body,
        config.max_payload_size.get(),
        &config.body,
    )
    .await
    .inspect_err(|e| {
        if matches!(e, ApiError::RequestTimeout(_)) {
            app.metrics.timed_out("body_read");
        }
    })?;
    // A client that leaves while queued drops out of the queue here.
    let slot = app.admission.admit().await.map_err(|refused| {
        app.metrics.refused(match refused {
            Refused::QueueFull { .. } => "queue_full",
            Refused::QueueTimeout { .. } => "queue_timeout",
            Refused::RateLimited { .. } => "rate_limited",
        });
        ApiError::Overloaded {
            reason: refused.to_string(),
            retry_after: refused.retry_after(),
        }
    })?;
    let pd = app.pd.as_ref().filter(|_| pd::applies(parts.uri.path()));
    let want_prompt = match pd {
        Some(pd) => pd.wants_prompt(),
        None => app.policy.wants_prompt(),
    };
    let peeked = match peek::peek(parts.headers.get(header::CONTENT_TYPE), &body, want_prompt).await
    {
        Ok(peeked) => peeked,
        // A path the router does not name may carry any body, or none: the worker judges it.
        Err(_) if inference_route(parts.uri.path()).is_none() => peek::Peeked::default(),
        Err(e) => return Err(e),
    };
    // A model alias routes to its canonical model, under which name the workers get it.
    let canonical = peeked
        .model
        .as_deref()
        .and_then(|m| config.canonical_model(m));
    let model = canonical.or(peeked.model.as_deref());
    let renamed = canonical
        .zip(peeked.model.as_deref())
        .map(|(canonical, named)| alias::rename_model(&body, named, canonical));
    if let Some(e) = exchange.lock().as_mut() {
        e.set_model(model);
        e.set_prompt_bytes(peeked.prompt.as_deref().map(str::len));
    }
    if span.is_recording()
        && let Some(model) = model
    {
        span.set("gen_ai.request.model", model.to_owned());
    }
    let id = request_id.to_str().unwrap_or_default();
    let mut route_req = route_request(
        &config,
        parts.uri.path(),
        &parts.headers,
        &body,
        &peeked,
        id,
    );
    route_req.model = model;
    let body = renamed.as_ref().unwrap_or(&body);
    let trace = *span.trace();
    app.retry_budget.deposit();
    let request = Inbound {
        parts: &parts,
        body,
        route_req,
        request_id,
        peer,
        trace,
        span,
        deadline: Instant::now() + config.timeouts.total,
        whole_answer: !peeked.stream,
        config: Arc::clone(&config),
        exchange,
    };
    match pd {
        // Boxed: the two-leg plan's state is several times the one-leg plan's, and every
        // connection holds room for its request's future whether it runs or idles.
        Some(pd) => Box::pin(pd.forward(app, &request, slot)).await,
        None => single(app, &request, slot).await,
    }
}

/// A request read and peeked, ready for its plan.
pub(crate) struct Inbound<'a> {
    pub(crate) parts: &'a Parts,
    pub(crate) body: &'a Bytes,
    pub(crate) route_req: RouteRequest<'a>,
    /// The request id, sent to workers and echoed to the client.
    pub(crate) request_id: &'a HeaderValue,
    /// The client's address, appended to `X-Forwarded-For`.
    pub(crate) peer: Option<IpAddr>,
    /// The request's place in its trace; [`TraceContext::trace_id`] names the trace in logs.
    pub(crate) trace: TraceContext,
    /// The request's server span (recording only when spans are exported).
    pub(crate) span: &'a RequestSpan,
    pub(crate) deadline: Instant,
    /// Not a stream: the worker sends the response head with the whole answer, so the wait
    /// for it is the generation's time (see [`leg`]).
    pub(crate) whole_answer: bool,
    /// The configuration this request runs under.
    pub(crate) config: Arc<Config>,
    /// The request's record, until a response body takes it.
    exchange: &'a Mutex<Option<Exchange>>,
}

impl Inbound<'_> {
    /// The headers an attempt sends a worker, made from the client's for each attempt (which
    /// adds its own `traceparent`): see [`headers::to_worker`].
    pub(crate) fn worker_headers(&self) -> HeaderMap {
        let mut headers = headers::to_worker(
            &self.parts.headers,
            self.request_id,
            self.peer,
            self.config.worker_api_key.as_ref(),
        );
        self.trace.prune(&mut headers);
        headers
    }

    /// Note something in the request's record (while no response body holds it).
    pub(crate) fn note(&self, f: impl FnOnce(&mut Exchange)) {
        if let Some(exchange) = self.exchange.lock().as_mut() {
            f(exchange);
        }
    }

    /// The client's path and query.
    pub(crate) fn path_and_query(&self) -> &str {
        self.parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
    }

    /// A request for `worker` with this body and these headers, naming the worker's
    /// data-parallel rank when it has one.
    pub(crate) fn upstream_request(
        &self,
        worker: &Worker,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<http::Request<UpstreamBody>, ApiError> {
        worker_request(
            worker,
            self.parts.method.clone(),
            self.path_and_query(),
            body,
            headers,
            &self.config,
        )
    }
}

/// A request for `worker`: `method` at `path_and_query` with this body and these headers,
/// naming the worker's data-parallel rank when it has one. A worker added through the admin
/// API gets no `Authorization` unless `--api-key-to-added-workers`.
pub(crate) fn worker_request(
    worker: &Worker,
    method: http::Method,
    path_and_query: &str,
    body: Bytes,
    headers: HeaderMap,
    config: &Config,
) -> Result<http::Request<UpstreamBody>, ApiError> {
    let uri = worker
        .uri_for(path_and_query)
        .map_err(|e| ApiError::Internal(format!("upstream URI: {e}")))?;
    let mut request = http::Request::new(UpstreamBody::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    if !config.admin.key_to_added && worker.spec().origin == Origin::Admin {
        // Whoever added this worker may own it: it gets no key, the workers' or a client's.
        request.headers_mut().remove(header::AUTHORIZATION);
    }
    if let Some(rank) = worker.rank_header() {
        request
            .headers_mut()
            .insert(X_DATA_PARALLEL_RANK.clone(), rank.clone());
    }
    Ok(request)
}

/// The one-leg plan: the body untouched, to one worker of any role serving the model.
async fn single(
    app: &App,
    request: &Inbound<'_>,
    slot: crate::admission::Permit,
) -> Result<Response, ApiError> {
    let candidates = candidates(app, &request.config, Pool::Any, request.route_req.model)?;
    let mut leg = Leg::new(app, Stage::Single, app.policy.as_ref(), request, candidates);
    let mut answer = leg
        .send(None, |worker| {
            request.upstream_request(worker, request.body.clone(), request.worker_headers())
        })
        .await?;
    answer.accept(&request.config);
    Ok(respond(app, request, answer, slot))
}

/// The worker's answer, streamed back through a [`TrackedBody`] that holds its in-flight count,
/// the admission slot and the request's record (which reads the reported usage and times the
/// events), ends a broken or stalled stream (or one past the request's deadline) with an
/// error event, and ends the request's and the answering attempt's spans with the body.
pub(crate) fn respond(
    app: &App,
    request: &Inbound<'_>,
    answer: Answer,
    slot: crate::admission::Permit,
) -> Response {
    let config = &request.config;
    let Answer {
        response,
        worker,
        mut guard,
        decision,
        span,
        earlier,
        ..
    } = answer;
    if request.span.is_recording() {
        request
            .span
            .set("vllm_router.worker", worker.url().to_owned());
    }
    let (mut head, upstream_body) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    let named = match config.exposure.worker_header {
        WorkerHeader::Url | WorkerHeader::Nginx => Some(worker.header_value()),
        WorkerHeader::Id => Some(worker.opaque_value()),
        WorkerHeader::Off => None,
    };
    if let Some(value) = named {
        head.headers
            .insert(headers::X_VLLM_ROUTER_WORKER.clone(), value.clone());
    }
    if config.exposure.worker_header == WorkerHeader::Nginx {
        headers::upstream_trail(&mut head.headers, &earlier, &worker, head.status);
    }
    let sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut exchange = request.exchange.lock().take();
    if let Some(exchange) = exchange.as_mut() {
        exchange.answered(&worker, head.status.as_u16(), sse, decision.predicted_hit);
    }
    let limits = tracked::StreamLimits {
        sse,
        idle: config.timeouts.stream_idle,
        deadline: request.deadline,
        total: config.timeouts.total,
        failure_threshold: config.health.failure_threshold,
        error_urls: config.exposure.error_urls,
        metrics: Arc::clone(&app.metrics),
        drain: Some(app.drain_signal()),
    };
    if !sse || !head.status.is_success() {
        // The first bytes of a whole answer come after the generation, not the first token.
        guard.untimed();
    }
    let body = TrackedBody::new(upstream_body, guard)
        .holding(slot)
        .recording(exchange)
        .limited(limits)
        .traced(request.span.clone(), span);
    Response::from_parts(head, Body::new(body))
}

/// The healthy workers serving `model`: 404 when no worker serves it, an empty list (so a
/// 503) while no worker has listed its models yet.
pub(crate) fn candidates(
    app: &App,
    config: &Config,
    pool: Pool,
    model: Option<&str>,
) -> Result<Vec<Arc<Worker>>, ApiError> {
    let snapshot = app.fleet.snapshot();
    let serving = match snapshot.serving_in(pool, model) {
        Some(serving) => serving,
        None if snapshot.serving_in(pool, None).is_some_and(<[_]>::is_empty) => &[],
        None => {
            return Err(ApiError::UnknownModel {
                model: model.unwrap_or_default().to_owned(),
                served: snapshot
                    .model_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            });
        }
    };
    let now = Instant::now();
    let breaker = &config.breaker;
    Ok(serving
        .iter()
        .filter(|w| w.is_routable() && w.breaker().admits(breaker, now))
        .cloned()
        .collect())
}

/// What the policy sees of a peeked request.
pub(crate) fn route_request<'a>(
    config: &Config,
    path: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    peeked: &'a peek::Peeked<'_>,
    request_id: &'a str,
) -> RouteRequest<'a> {
    RouteRequest {
        path,
        model: peeked.model.as_deref(),
        headers,
        body,
        request_id,
        session_key: peek::session_key(headers, &config.session_key_headers, peeked),
        prompt: peeked.prompt.as_deref(),
    }
}
