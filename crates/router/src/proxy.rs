//! The request path: read the body within the limit, peek, find the workers serving the
//! model, let the policy pick, forward, and stream the answer back through a [`TrackedBody`].
//!
//! A worker that refuses the connection was sent nothing, so the request moves on to another
//! candidate and the worker leaves rotation until its probes succeed. A reset before the
//! response, a first-byte timeout or a 502/503/504 (plus `--retry-on-status`) is retried on a
//! different worker after a backoff, within `--retry-max-retries` and the retry budget. Once
//! the response is on its way to the client nothing is retried: a stream that breaks or
//! stalls ends with an error event.

pub mod headers;
pub mod peek;
mod retry;
mod tracked;
mod usage;

use std::error::Error as _;
use std::sync::Arc;

use axum::body::Body;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

pub use retry::RetryBudget;
pub use tracked::{StreamLimits, TrackedBody};

use tokio::time::Instant;

use self::retry::{backoff, retryable_status};
use crate::admission::Refused;
use crate::error::ApiError;
use crate::fleet::{Ticket, Worker};
use crate::policy::RouteRequest;
use crate::server::App;
use crate::upstream::UpstreamBody;

/// Forward one inference request. The response always carries `x-request-id`.
pub async fn forward(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = headers::request_id(&parts.headers, &app.config.request_id_headers);
    let mut response = match route(&app, parts, body, &request_id).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(request_id = ?request_id, status = error.status().as_u16(), %error, "request refused");
            error.into_response()
        }
    };
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    response
}

async fn route(
    app: &App,
    parts: Parts,
    body: Body,
    request_id: &HeaderValue,
) -> Result<Response, ApiError> {
    // Admission first: a request refused or still queued has not cost a body read, and a
    // client that leaves while queued drops out of the queue here.
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
    let body = read_body(&parts.headers, body, app.config.max_payload_size.get()).await?;
    let want_prompt = app.policy.wants_prompt();
    let peeked = peek::peek(parts.headers.get(header::CONTENT_TYPE), &body, want_prompt).await?;
    let model = peeked.model.as_deref();
    let mut candidates = candidates(app, model)?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let id = request_id.to_str().unwrap_or_default();
    let route_req = route_request(app, parts.uri.path(), &parts.headers, &body, &peeked, id);
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let to_worker = headers::to_worker(&parts.headers, request_id, peer);

    app.retry_budget.deposit();
    let started = Instant::now();
    let deadline = started + app.config.timeouts.total;
    let retry = &app.config.retry;
    let mut retries = 0u32;
    let mut last_failure: Option<ApiError> = None;
    loop {
        let Some(decision) = app.policy.pick(&route_req, &candidates) else {
            return Err(last_failure.unwrap_or(ApiError::NoWorker {
                model: model.map(str::to_owned),
            }));
        };
        let worker = candidates.swap_remove(decision.index);
        let breaker = &app.config.breaker;
        let Some(ticket) = Ticket::take(&worker, breaker, Instant::now()) else {
            // Its half-open breaker has no trial place left: another worker, no retry spent.
            continue;
        };
        app.metrics.decided(app.policy.name(), decision.reason);
        tracing::debug!(
            request_id = route_req.request_id,
            worker = worker.url(),
            reason = decision.reason,
            "routed"
        );

        let uri = worker
            .uri_for(path_and_query)
            .map_err(|e| ApiError::Internal(format!("upstream URI: {e}")))?;
        let mut upstream_req = http::Request::new(UpstreamBody::new(body.clone()));
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = to_worker.clone();

        let guard = worker.begin();
        let left = deadline.saturating_duration_since(Instant::now());
        let first_byte = app.config.timeouts.first_byte.min(left);
        let sent = tokio::time::timeout(first_byte, app.upstream.send(upstream_req)).await;
        // A retry is possible only with retries and candidates left and time for the backoff;
        // the budget is asked last, so it is spent only on a retry that happens.
        let wait = |after: Option<&http::HeaderMap>| backoff(retry, retries + 1, after);
        let may_retry = |wait: Duration| {
            retries < retry.max_retries
                && !candidates.is_empty()
                && Instant::now() + wait < deadline
                && app.retry_budget.try_spend()
        };
        let url = || worker.url().to_owned();
        let (failure, cause, pause) = match sent {
            Ok(Ok(response)) => {
                let status = response.status();
                let pause = wait(Some(response.headers()));
                let can_retry = retryable_status(retry, status) && may_retry(pause);
                if status.is_server_error() {
                    failed(&worker, ticket, app);
                } else {
                    worker.record_success();
                    ticket.success(breaker);
                }
                if !can_retry {
                    let held = Held {
                        guard,
                        slot,
                        decision,
                        deadline,
                    };
                    return Ok(respond(app, response, &worker, held));
                }
                let failure = ApiError::BadGateway {
                    worker: url(),
                    reason: format!("answered {status}"),
                };
                (failure, Failed::Status, pause)
            }
            Ok(Err(error)) if error.is_connect() => {
                // Nothing was sent: moving on is always safe, and spends no retry.
                ticket.failure(breaker, Instant::now());
                if worker.eject() {
                    tracing::warn!(worker = worker.url(), error = %cause(&error), "worker unreachable; out of rotation until its probes succeed");
                }
                app.metrics.retried("connect");
                last_failure = Some(ApiError::NoWorker {
                    model: model.map(str::to_owned),
                });
                continue;
            }
            Ok(Err(error)) => {
                failed(&worker, ticket, app);
                let failure = ApiError::BadGateway {
                    worker: url(),
                    reason: cause(&error),
                };
                (failure, Failed::Reset, wait(None))
            }
            Err(_) => {
                failed(&worker, ticket, app);
                let stage = if first_byte < app.config.timeouts.first_byte {
                    "total"
                } else {
                    "first_byte"
                };
                app.metrics.timed_out(stage);
                let failure = ApiError::GatewayTimeout {
                    worker: url(),
                    after: first_byte,
                };
                (failure, Failed::FirstByte, wait(None))
            }
        };
        drop(guard);
        // A status retry was decided above; the others are decided here.
        if cause != Failed::Status && !may_retry(pause) {
            return Err(failure);
        }
        retries += 1;
        app.metrics.retried(cause.label());
        tracing::debug!(
            request_id = route_req.request_id,
            cause = cause.label(),
            retries,
            ?pause,
            "retrying on another worker"
        );
        last_failure = Some(failure);
        tokio::time::sleep(pause).await;
    }
}

/// What failed in an attempt that may be retried on another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// The worker answered a retryable status (the retry was granted at the response).
    Status,
    /// The connection broke before the response.
    Reset,
    /// No response headers within the first-byte timeout.
    FirstByte,
}

impl Failed {
    fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Reset => "reset",
            Self::FirstByte => "first_byte_timeout",
        }
    }
}

/// The attempt failed at the worker: it counts toward ejection and against its breaker.
fn failed(worker: &Worker, ticket: Ticket, app: &App) {
    worker.record_failure(app.config.health.failure_threshold);
    ticket.failure(&app.config.breaker, Instant::now());
}

/// The worker's response, streamed back through a [`TrackedBody`] that holds its in-flight
/// count, watches its usage when the policy predicted a cache hit, and ends a broken or stalled
/// stream with an error event.
/// What a response keeps until its body ends.
struct Held {
    guard: crate::fleet::InFlight,
    slot: crate::admission::Permit,
    decision: crate::policy::Decision,
    deadline: Instant,
}

fn respond(
    app: &App,
    response: http::Response<hyper::body::Incoming>,
    worker: &Worker,
    held: Held,
) -> Response {
    let Held {
        guard,
        slot,
        decision,
        deadline,
    } = held;
    let (mut head, upstream_body) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    head.headers.insert(
        headers::X_VLLM_ROUTER_WORKER.clone(),
        worker.header_value().clone(),
    );
    let sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let usage = decision
        .predicted_hit
        .map(|p| usage::UsageWatch::new(p, Arc::clone(&app.metrics)));
    let limits = tracked::StreamLimits {
        sse,
        idle: app.config.timeouts.stream_idle,
        deadline,
        total: app.config.timeouts.total,
        failure_threshold: app.config.health.failure_threshold,
        metrics: Arc::clone(&app.metrics),
        drain: Some(app.drain_signal()),
    };
    let body = TrackedBody::new(upstream_body, guard)
        .holding(slot)
        .watching(usage)
        .limited(limits);
    Response::from_parts(head, Body::new(body))
}

/// The healthy workers serving `model`: 404 when no worker serves it, an empty list (so a
/// 503) while no worker has listed its models yet.
pub(crate) fn candidates(app: &App, model: Option<&str>) -> Result<Vec<Arc<Worker>>, ApiError> {
    let snapshot = app.fleet.snapshot();
    let serving = match snapshot.serving(model) {
        Some(serving) => serving,
        None if snapshot.serving(None).is_some_and(<[_]>::is_empty) => &[],
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
    let breaker = &app.config.breaker;
    Ok(serving
        .iter()
        .filter(|w| w.is_healthy() && w.breaker().admits(breaker, now))
        .cloned()
        .collect())
}

/// What the policy sees of a peeked request.
pub(crate) fn route_request<'a>(
    app: &App,
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
        session_key: peek::session_key(headers, &app.config.session_key_headers, peeked),
        prompt: peeked.prompt.as_deref(),
    }
}

/// Read the whole body, refusing it as soon as it is known to exceed `limit`: from
/// `Content-Length` before reading, else when the bytes read cross the limit.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge { limit }),
        Err(e) => Err(ApiError::bad_request(
            format!("could not read the request body: {e}"),
            None,
        )),
    }
}

/// The innermost cause of an upstream error, which names what actually failed.
fn cause(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}
