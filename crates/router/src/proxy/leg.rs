//! One leg of a plan: send a request to one of a set of candidate workers, moving on to another
//! when an attempt fails before the response. A regular request is one leg; a P/D request is
//! a prefill leg then a decode leg, each over its own pool and policy, through this same code:
//! the same retries, backoff and budget, breakers, in-flight accounting, timeouts and metrics.
//!
//! A worker that refuses the connection was sent nothing, so the leg moves on to another
//! candidate without spending a retry and the worker leaves rotation until its probes succeed.
//! A reset before the response, a first-byte timeout or a 502/503/504 (plus
//! `--retry-on-status`) is retried on a different worker after a backoff, within
//! `--retry-max-retries` and the retry budget. A caller that reads the answer and finds it
//! unusable (a prefill without its transfer parameters) hands it back with [`Leg::reject`],
//! which counts it as the worker's failure and retries under the same rules.
//!
//! Every attempt is a span of the request's trace: the worker receives the attempt's span id
//! as the parent in `traceparent`, so each attempt and each retry has its own.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inbound;
use super::retry::{backoff, retryable_status};
use crate::app::App;
use crate::config::Config;
use crate::error::ApiError;
use crate::fleet::{InFlight, Ticket, Worker};
use crate::policy::{Decision, Policy, RouteRequest};
use crate::telemetry::exchange::Exchange;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::span::Span;
use crate::telemetry::trace::{SpanId, TRACEPARENT};
use crate::upstream::{UpstreamBody, WorkerBody};

/// Which leg of a plan, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The only leg of a regular request.
    Single,
    /// The prefill leg of a P/D request.
    Prefill,
    /// The decode leg of a P/D request.
    Decode,
}

impl Stage {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// What failed in an attempt that may be retried on another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The worker answered a retryable status (the retry was granted at the response).
    Status,
    /// The connection broke before the response.
    Reset,
    /// No response headers within the first-byte timeout.
    FirstByte,
    /// The worker answered, but not what the plan needs (checked by the caller).
    Unusable,
}

impl Failed {
    fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Reset => "reset",
            Self::FirstByte => "first_byte_timeout",
            Self::Unusable => "unusable_answer",
        }
    }
}

/// A worker's response, with what the attempt holds until its body ends.
pub(crate) struct Answer {
    pub(crate) response: http::Response<WorkerBody>,
    pub(crate) worker: Arc<Worker>,
    pub(crate) guard: InFlight,
    pub(crate) decision: Decision,
    /// The attempt's span, ended when the answer (or its body) is done with.
    pub(crate) span: Span,
    /// The breaker's ticket, still to be settled when the status said nothing was wrong.
    ticket: Option<Ticket>,
    /// The attempts before this one, each worker with its status (502 for a connection that
    /// failed, 504 for no answer in time), as nginx's `$upstream_status` counts them.
    pub(crate) earlier: Vec<(Arc<Worker>, u16)>,
}

/// The response's header values are left out: they may hold cookies.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.response.status())
            .field(
                "headers",
                &super::headers::Redacted(self.response.headers()),
            )
            .field("worker", &self.worker.label())
            .field("decision", &self.decision)
            .finish_non_exhaustive()
    }
}

impl Answer {
    /// The answer is used: the worker did well.
    pub(crate) fn accept(&mut self, config: &Config) {
        if let Some(ticket) = self.ticket.take() {
            self.worker.record_success();
            ticket.success(&config.breaker);
        }
    }
}

/// Attempts of one leg over one pool of candidates.
pub(crate) struct Leg<'a> {
    app: &'a App,
    stage: Stage,
    policy: &'a dyn Policy,
    req: &'a RouteRequest<'a>,
    inbound: &'a Inbound<'a>,
    config: &'a Config,
    candidates: Vec<Arc<Worker>>,
    deadline: Instant,
    retries: u32,
    /// Attempts sent so far, connection refusals included.
    attempts: u32,
    /// The failed attempts, with their statuses (see [`Answer::earlier`]).
    tried: Vec<(Arc<Worker>, u16)>,
    last_failure: Option<ApiError>,
}

impl<'a> Leg<'a> {
    pub(crate) fn new(
        app: &'a App,
        stage: Stage,
        policy: &'a dyn Policy,
        request: &'a Inbound<'a>,
        candidates: Vec<Arc<Worker>>,
    ) -> Self {
        // A leg exists only once some worker was found to serve the model.
        request.note(Exchange::model_is_served);
        Self {
            app,
            stage,
            policy,
            req: &request.route_req,
            inbound: request,
            config: &request.config,
            candidates,
            deadline: request.deadline,
            retries: 0,
            attempts: 0,
            tried: Vec::new(),
            last_failure: None,
        }
    }

    /// The configuration the request runs under.
    pub(crate) fn config(&self) -> &'a Config {
        self.config
    }

    /// The request this leg serves.
    pub(crate) fn request(&self) -> &'a Inbound<'a> {
        self.inbound
    }

    /// The router's metrics.
    pub(crate) fn metrics(&self) -> &'a Metrics {
        &self.app.metrics
    }

    /// When the whole request must be over.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Let the policy choose a worker now, taking it out of the candidates: for plans that
    /// must know a leg's worker before sending anything (it is then passed to [`Leg::send`]).
    pub(crate) fn choose(&mut self) -> Option<(Arc<Worker>, Decision)> {
        let decision = self.policy.pick(self.req, &self.candidates)?;
        Some((self.candidates.swap_remove(decision.index), decision))
    }

    /// The error to answer when no attempt could be made or all failed.
    fn exhausted(&mut self) -> ApiError {
        self.last_failure.take().unwrap_or_else(|| self.no_worker())
    }

    /// No worker of the leg's pool can take the request.
    pub(crate) fn no_worker(&self) -> ApiError {
        ApiError::NoWorker {
            model: self.req.model.map(str::to_owned),
        }
    }

    /// Send to `first` if given, else to the policy's choice, and on to other candidates until
    /// a worker answers with a response that is not retried. A non-retryable 5xx answer is
    /// returned as it is (the client sees the worker's own error).
    pub(crate) async fn send(
        &mut self,
        first: Option<(Arc<Worker>, Decision)>,
        build: impl Fn(&Worker) -> Result<http::Request<UpstreamBody>, ApiError>,
    ) -> Result<Answer, ApiError> {
        if self.stage != Stage::Decode {
            return self.attempts(first, build).await;
        }
        let started = Instant::now();
        let sent = self.attempts(first, build).await;
        let outcome = if sent.is_ok() { "answered" } else { "failed" };
        self.app.metrics.pd_leg("decode", outcome, started);
        sent
    }

    async fn attempts(
        &mut self,
        mut first: Option<(Arc<Worker>, Decision)>,
        build: impl Fn(&Worker) -> Result<http::Request<UpstreamBody>, ApiError>,
    ) -> Result<Answer, ApiError> {
        let app = self.app;
        let config = self.config;
        let (breaker, retry) = (&config.breaker, &config.retry);
        loop {
            let (worker, decision) = match first.take() {
                Some(chosen) => chosen,
                None => match self.choose() {
                    Some(chosen) => chosen,
                    None => return Err(self.exhausted()),
                },
            };
            let Some(ticket) = Ticket::take(&worker, breaker, Instant::now()) else {
                // Its half-open breaker has no trial place left: another worker, no retry spent.
                continue;
            };
            app.metrics.decided(self.policy.name(), decision.reason);
            tracing::debug!(
                request_id = self.req.request_id,
                stage = self.stage.label(),
                worker = worker.url(),
                rank = worker.rank(),
                reason = decision.reason,
                "routed"
            );
            let mut request = build(&worker)?;
            let mut span = self.attempt_span(&worker, &request);
            let span_id = span.span_id().unwrap_or_else(SpanId::random);
            if let Some(traceparent) = self.inbound.trace.traceparent(span_id) {
                request
                    .headers_mut()
                    .insert(TRACEPARENT.clone(), traceparent);
            }
            let mut guard = worker.begin_booked(decision.prefill_blocks);
            if let Some(work) = decision.work_blocks {
                guard.time_first_token(work);
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let first_byte = config.timeouts.first_byte.min(left);
            let sent_at = Instant::now();
            let mut sending = std::pin::pin!(app.upstream.send(request));
            let mut sent = tokio::time::timeout(first_byte, sending.as_mut())
                .await
                .map_err(|_| ());
            if sent.is_err() && first_byte < left && self.waits_for_whole_answer() {
                // The head of a whole answer comes with its end: a worker that still passes
                // its health checks is generating, and is waited for up to the deadline.
                sent = await_whole_answer(&worker, sending.as_mut(), self.deadline).await;
            }
            let url = || worker.name_for_clients(config.exposure.error_urls);
            let (failure, cause, pause) = match sent {
                Ok(Ok(response)) => {
                    let status = response.status();
                    span.set("http.response.status_code", i64::from(status.as_u16()));
                    if status.is_client_error() || status.is_server_error() {
                        span.set("error.type", status.as_str().to_owned());
                        span.fail(status.to_string());
                    }
                    let pause = backoff(retry, self.retries + 1, Some(response.headers()));
                    let can_retry = retryable_status(retry, status) && self.may_retry(pause);
                    let ticket = if status.is_server_error() {
                        failed(&worker, ticket, config);
                        None
                    } else {
                        Some(ticket)
                    };
                    if !can_retry {
                        return Ok(Answer {
                            response,
                            worker,
                            guard,
                            decision,
                            span,
                            ticket,
                            earlier: std::mem::take(&mut self.tried),
                        });
                    }
                    self.tried.push((Arc::clone(&worker), status.as_u16()));
                    if let Some(ticket) = ticket {
                        // A retryable 4xx (--retry-on-status): the worker is not at fault.
                        worker.record_success();
                        ticket.success(breaker);
                    }
                    let failure = ApiError::BadGateway {
                        worker: url(),
                        reason: format!("answered {status}"),
                    };
                    (failure, Failed::Status, pause)
                }
                Ok(Err(error)) if error.is_connect() => {
                    // Nothing was sent: moving on is always safe, and spends no retry.
                    span.set("error.type", "connect");
                    span.fail(cause(&error));
                    ticket.failure(breaker, Instant::now());
                    if worker.eject() {
                        tracing::warn!(worker = worker.url(), error = %cause(&error), "worker unreachable; out of rotation until its probes succeed");
                    }
                    app.metrics.retried("connect");
                    self.last_failure = Some(self.no_worker());
                    self.tried.push((worker, 502));
                    continue;
                }
                Ok(Err(error)) => {
                    failed(&worker, ticket, config);
                    let failure = ApiError::BadGateway {
                        worker: url(),
                        reason: cause(&error),
                    };
                    span.set("error.type", Failed::Reset.label());
                    span.fail(cause(&error));
                    self.tried.push((Arc::clone(&worker), 502));
                    (
                        failure,
                        Failed::Reset,
                        backoff(retry, self.retries + 1, None),
                    )
                }
                Err(_) => {
                    failed(&worker, ticket, config);
                    let stage = if first_byte < config.timeouts.first_byte
                        || Instant::now() >= self.deadline
                    {
                        "total"
                    } else {
                        "first_byte"
                    };
                    app.metrics.timed_out(stage);
                    let failure = ApiError::GatewayTimeout {
                        worker: url(),
                        after: sent_at.elapsed(),
                    };
                    span.set("error.type", Failed::FirstByte.label());
                    span.fail(failure.to_string());
                    self.tried.push((Arc::clone(&worker), 504));
                    (
                        failure,
                        Failed::FirstByte,
                        backoff(retry, self.retries + 1, None),
                    )
                }
            };
            drop(guard);
            drop(span);
            // A status retry was granted above; the others are decided here.
            if cause != Failed::Status && !self.may_retry(pause) {
                return Err(failure);
            }
            self.retry_after(failure, cause, pause).await;
        }
    }

    /// The caller found `answer` unusable: count it as the worker's failure and, when a retry
    /// is allowed, wait the backoff so the caller may [`send`](Leg::send) again; otherwise
    /// the error to answer.
    pub(crate) async fn reject(
        &mut self,
        answer: Answer,
        failure: ApiError,
    ) -> Result<(), ApiError> {
        let Answer {
            worker,
            guard,
            ticket,
            mut span,
            ..
        } = answer;
        // Without a ticket the answer was a 5xx, already counted as the worker's failure.
        if let Some(ticket) = ticket {
            failed(&worker, ticket, self.config);
        }
        drop(guard);
        span.set("error.type", Failed::Unusable.label());
        span.fail(failure.to_string());
        drop(span);
        let pause = backoff(&self.config.retry, self.retries + 1, None);
        if !self.may_retry(pause) {
            return Err(failure);
        }
        self.retry_after(failure, Failed::Unusable, pause).await;
        Ok(())
    }

    /// The span of the next attempt, to `worker` with `request`: a child of the request's
    /// span (recording only when it does).
    fn attempt_span(&mut self, worker: &Worker, request: &http::Request<UpstreamBody>) -> Span {
        let resends = self.attempts;
        self.attempts += 1;
        let parts = self.inbound.parts;
        let mut span = self
            .inbound
            .span
            .child(|| format!("{} {}", parts.method, parts.uri.path()));
        if span.is_recording() {
            span.set("http.request.method", parts.method.as_str().to_owned());
            span.set("url.full", request.uri().to_string());
            span.set("vllm_router.worker", worker.url().to_owned());
            span.set("vllm_router.stage", self.stage.label());
            if let Some(rank) = worker.rank() {
                span.set("vllm_router.dp_rank", i64::from(rank));
            }
            if resends > 0 {
                span.set("http.request.resend_count", i64::from(resends));
            }
        }
        span
    }

    /// Whether this leg's answer has its head sent with its end (a request that does not
    /// stream; the prefill leg, bounded by its prompt, is timed as a stream is).
    fn waits_for_whole_answer(&self) -> bool {
        self.inbound.whole_answer && self.stage != Stage::Prefill
    }

    /// A retry is possible only with retries and candidates left and time for the backoff;
    /// the budget is asked last, so it is spent only on a retry that happens.
    fn may_retry(&self, wait: Duration) -> bool {
        self.retries < self.config.retry.max_retries
            && !self.candidates.is_empty()
            && Instant::now() + wait < self.deadline
            && self.app.retry_budget.try_spend()
    }

    async fn retry_after(&mut self, failure: ApiError, cause: Failed, pause: Duration) {
        self.retries += 1;
        self.app.metrics.retried(cause.label());
        tracing::debug!(
            request_id = self.req.request_id,
            stage = self.stage.label(),
            cause = cause.label(),
            retries = self.retries,
            ?pause,
            "retrying on another worker"
        );
        self.last_failure = Some(failure);
        tokio::time::sleep(pause).await;
    }
}

/// How often a whole answer's wait past the first-byte timeout looks at the worker's health.
const WHOLE_ANSWER_CHECK: Duration = Duration::from_millis(250);

/// Wait for `sending` until `deadline`, while `worker` passes its health checks; `Err` when
/// the deadline passed or the worker started failing them (then the caller moves on).
async fn await_whole_answer<F: Future>(
    worker: &Worker,
    mut sending: std::pin::Pin<&mut F>,
    deadline: Instant,
) -> Result<F::Output, ()> {
    loop {
        if worker.failing_health_checks() {
            return Err(());
        }
        let until = deadline.min(Instant::now() + WHOLE_ANSWER_CHECK);
        match tokio::time::timeout_at(until, sending.as_mut()).await {
            Ok(answer) => return Ok(answer),
            Err(_) if Instant::now() >= deadline => return Err(()),
            Err(_) => {}
        }
    }
}

/// The attempt failed at the worker: it counts toward ejection and against its breaker.
fn failed(worker: &Worker, ticket: Ticket, config: &Config) {
    worker.record_failure(config.health.failure_threshold);
    ticket.failure(&config.breaker, Instant::now());
}

/// The innermost cause of an upstream error, which names what actually failed.
fn cause(error: &crate::upstream::SendError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}
