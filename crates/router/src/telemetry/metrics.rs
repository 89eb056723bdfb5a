//! The router's metrics registry. Request-path handles are resolved without allocating where
//! label values are static strings; per-worker gauges are read off the fleet snapshot when
//! scraped, so they never drift from it, and the series of a worker that left the fleet are
//! dropped at the next scrape. No label ever holds client-chosen text: models are named only
//! when some worker serves them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

use super::usage::Usage;
use crate::admission::Admission;
use crate::fleet::{Completion, PromptTokens, Snapshot, Worker};
use crate::sync::Mutex;

mod handles;
mod histogram;
mod labels;
mod peer;
mod series;
mod text;

pub use histogram::{AtomicHistogram, Tally};
use labels::{
    BuildLabels, ErrorLabels, LegLabels, RequestLabels, RouteLabels, TokenLabels, WorkerLabels,
    WorkerOnly,
};
pub use labels::{Cause, DecisionLabels, ExchangeLabels};
pub use series::WorkerSeries;
use text::encoded;
pub use text::to_prometheus_text;

/// Buckets of the prefix-prediction error, a difference of two fractions.
const ERROR_BUCKETS: [f64; 11] = [
    -0.75, -0.5, -0.25, -0.1, -0.02, 0.02, 0.1, 0.25, 0.5, 0.75, 1.0,
];
/// Buckets of request-scale latencies, in seconds.
const LATENCY_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0,
];
/// Buckets of the time between two streamed frames, in seconds.
const ITL_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0,
];

type Histograms<L> = Family<L, AtomicHistogram, fn() -> AtomicHistogram>;
type FloatCounter = Counter<f64, AtomicU64>;

fn latency_histogram() -> AtomicHistogram {
    AtomicHistogram::new(&LATENCY_BUCKETS)
}

fn itl_histogram() -> AtomicHistogram {
    AtomicHistogram::new(&ITL_BUCKETS)
}

/// The class of an HTTP status (`2xx`, ...), or `none` when no status was sent.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Every metric the router exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    retries: Family<Cause, Counter>,
    timeouts: Family<Cause, Counter>,
    stream_errors: Family<Cause, Counter>,
    refusals: Family<Cause, Counter>,
    pd_plans: Family<Cause, Counter>,
    pd_legs: Histograms<LegLabels>,
    reloads: Family<Cause, Counter>,
    spans_exported: Counter,
    spans_dropped: Family<Cause, Counter>,
    key_validations: Family<Cause, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_errors: Family<ErrorLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    ttft: Histograms<ExchangeLabels>,
    itl: Histograms<ExchangeLabels>,
    e2e: Histograms<ExchangeLabels>,
    tokens: Family<TokenLabels, Counter>,
    prefix_error: AtomicHistogram,
    cached_predicted: Family<WorkerOnly, FloatCounter>,
    cached_reported: Family<WorkerOnly, Counter>,
    queue_depth: Gauge,
    /// Tasks alive in the runtime: connections, requests and the router's own loops.
    runtime_tasks: Gauge,
    admitted: Gauge,
    /// Inference requests finished, whatever their outcome (the live view's fleet rate).
    finished: AtomicU64,
    worker_healthy: Family<WorkerLabels, Gauge>,
    worker_draining: Family<WorkerLabels, Gauge>,
    worker_in_flight: Family<WorkerLabels, Gauge>,
    worker_requests: Family<WorkerLabels, Counter>,
    worker_breaker: Family<WorkerLabels, Gauge>,
    worker_running: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    worker_waiting: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    worker_kv_usage: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    /// The latency and token series of each (model, worker) served so far: resolved once per
    /// request, and dropped with their worker.
    served: handles::Handles<WorkerSeries>,
    /// The request series of each (route, model) seen so far.
    routes: handles::Handles<series::RouteSeries>,
    /// One render at a time; the worker label sets of the last one.
    render: Mutex<HashSet<WorkerLabels>>,
    /// vllm-project/router's series names, when asked for (`--peer-metrics`).
    peer: Option<peer::PeerMetrics>,
}

macro_rules! register {
    ($registry:ident, $name:literal, $help:literal, $metric:expr) => {{
        let metric = $metric;
        $registry.register($name, $help, metric.clone());
        metric
    }};
    ($registry:ident, $name:literal, $help:literal, $unit:expr, $metric:expr) => {{
        let metric = $metric;
        $registry.register_with_unit($name, $help, $unit, metric.clone());
        metric
    }};
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("vllm_router");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
            })
            .set(1);
        r.register("build_info", "The router's version", build);
        Self {
            finished: AtomicU64::new(0),
            requests: register!(
                r,
                "requests",
                "Inference requests by route, model and status class (of the status sent)",
                Family::default()
            ),
            request_errors: register!(
                r,
                "request_errors",
                "Inference requests that failed, by cause: 4xx or 5xx (status sent), or how a begun response ended (upstream, stream_idle, total, shutdown, client_gone)",
                Family::default()
            ),
            request_duration: register!(
                r,
                "request_duration",
                "Time from a request's arrival to the end of its response, by route and model",
                Unit::Seconds,
                Histograms::new_with_constructor(latency_histogram)
            ),
            ttft: register!(
                r,
                "time_to_first_token",
                "Streamed responses: time from the request's arrival to the first event, by model and worker",
                Unit::Seconds,
                Histograms::new_with_constructor(latency_histogram)
            ),
            itl: register!(
                r,
                "inter_token_latency",
                "Streamed responses: time between two events, by model and worker",
                Unit::Seconds,
                Histograms::new_with_constructor(itl_histogram)
            ),
            e2e: register!(
                r,
                "e2e_request_latency",
                "Requests a worker answered: time from arrival to the end of the response, by model and worker",
                Unit::Seconds,
                Histograms::new_with_constructor(latency_histogram)
            ),
            tokens: register!(
                r,
                "tokens",
                "Tokens the workers reported in usage, by kind (prompt, completion, cached)",
                Family::default()
            ),
            decisions: register!(
                r,
                "routing_decisions",
                "Routing decisions by policy and the reason it gave",
                Family::default()
            ),
            retries: register!(
                r,
                "retries",
                "Requests retried on another worker, by what failed",
                Family::default()
            ),
            timeouts: register!(
                r,
                "timeouts",
                "Timeouts that fired, by stage (connect, first_byte, stream_idle, total)",
                Family::default()
            ),
            stream_errors: register!(
                r,
                "stream_errors",
                "Responses cut short after they began, by cause; streams end with an error event",
                Family::default()
            ),
            refusals: register!(
                r,
                "admission_refusals",
                "Requests shed by admission control, by cause (queue_full, queue_timeout, rate_limited)",
                Family::default()
            ),
            queue_depth: register!(
                r,
                "admission_queue_depth",
                "Requests waiting for an admission slot",
                Gauge::default()
            ),
            runtime_tasks: register!(
                r,
                "runtime_alive_tasks",
                "Tasks alive in the router's runtime (connections, requests, background loops)",
                Gauge::default()
            ),
            admitted: register!(
                r,
                "admission_in_use",
                "Admission slots held (requests admitted whose response has not ended)",
                Gauge::default()
            ),
            pd_plans: register!(
                r,
                "pd_plans",
                "P/D requests by plan: prefilled (prefill then decode), skipped (conditional prefill sent it straight to decode), recomputed (every prefill failed; decode computed the prompt)",
                Family::default()
            ),
            pd_legs: register!(
                r,
                "pd_leg_duration",
                "P/D legs: prefill until its answer was read (KV ready), decode until its response headers; by outcome",
                Unit::Seconds,
                Histograms::new_with_constructor(latency_histogram)
            ),
            reloads: register!(
                r,
                "config_reloads",
                "Config file reloads by outcome: applied, unchanged, rejected (invalid; the running configuration stays)",
                Family::default()
            ),
            spans_exported: register!(
                r,
                "trace_spans_exported",
                "Trace spans the OTLP collector accepted",
                Counter::default()
            ),
            spans_dropped: register!(
                r,
                "trace_spans_dropped",
                "Trace spans lost, by cause: queue_full (the export queue was full), export_failed (the collector could not be reached or refused the batch), rejected (the collector refused them in a partial success), shutdown (ended after export stopped)",
                Family::default()
            ),
            key_validations: register!(
                r,
                "api_key_validations",
                "Client API keys checked with the validation URLs, by outcome: valid, refused, unavailable (none answered)",
                Family::default()
            ),
            prefix_error: register!(
                r,
                "prefix_prediction_error",
                "Predicted prefix-cache hit fraction minus the fraction the worker reported (cached_tokens / prompt_tokens)",
                AtomicHistogram::new(&ERROR_BUCKETS)
            ),
            cached_predicted: register!(
                r,
                "cached_tokens_predicted",
                "Prompt tokens the routing policy predicted in the chosen worker's prefix cache (requests with a prediction and reported usage)",
                Family::default()
            ),
            cached_reported: register!(
                r,
                "cached_tokens_reported",
                "Prompt tokens the worker reported cached, for the same requests as cached_tokens_predicted",
                Family::default()
            ),
            worker_healthy: register!(
                r,
                "worker_healthy",
                "1 when the worker is in rotation",
                Family::default()
            ),
            worker_draining: register!(
                r,
                "worker_draining",
                "1 while the worker is drained (no new requests)",
                Family::default()
            ),
            worker_in_flight: register!(
                r,
                "worker_in_flight",
                "Requests whose response has not ended",
                Family::default()
            ),
            worker_requests: register!(
                r,
                "worker_requests",
                "Requests forwarded to the worker",
                Family::default()
            ),
            worker_breaker: register!(
                r,
                "worker_breaker_state",
                "Circuit breaker: 0 closed, 1 open, 2 half-open",
                Family::default()
            ),
            worker_running: register!(
                r,
                "worker_running_requests",
                "Requests in the worker's running batch, from its last fresh /metrics scrape",
                Family::default()
            ),
            worker_waiting: register!(
                r,
                "worker_waiting_requests",
                "Requests queued in the worker's engine, from its last fresh /metrics scrape",
                Family::default()
            ),
            worker_kv_usage: register!(
                r,
                "worker_kv_cache_usage_ratio",
                "KV-cache use (0..1), from the worker's last fresh /metrics scrape",
                Family::default()
            ),
            served: handles::Handles::default(),
            routes: handles::Handles::default(),
            render: Mutex::new(HashSet::new()),
            peer: None,
            registry: r,
        }
    }
}

impl Metrics {
    /// A shared registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// [`Metrics::new`], with vllm-project/router's series names beside ours when `peer`.
    pub fn with_peer_names(peer: bool) -> Arc<Self> {
        Arc::new(Self {
            peer: peer.then(peer::PeerMetrics::default),
            ..Self::default()
        })
    }

    /// Count a routing decision.
    pub fn decided(&self, policy: &'static str, reason: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { policy, reason })
            .inc();
    }

    /// Count a retry and what made it necessary.
    pub fn retried(&self, cause: &'static str) {
        self.retries.get_or_create(&Cause { cause }).inc();
    }

    /// Count a timeout at `stage`.
    pub fn timed_out(&self, stage: &'static str) {
        self.timeouts.get_or_create(&Cause { cause: stage }).inc();
    }

    /// Count a response cut short after it began.
    pub fn stream_failed(&self, cause: &'static str) {
        self.stream_errors.get_or_create(&Cause { cause }).inc();
    }

    /// Count a request refused by admission control.
    pub fn refused(&self, cause: &'static str) {
        self.refusals.get_or_create(&Cause { cause }).inc();
    }

    /// Count a config file reload by outcome.
    pub fn config_reload(&self, outcome: &'static str) {
        self.reloads.get_or_create(&Cause { cause: outcome }).inc();
    }

    /// Count trace spans the collector accepted.
    pub fn spans_exported(&self, count: u64) {
        self.spans_exported.inc_by(count);
    }

    /// Count trace spans lost, and why.
    pub fn spans_dropped(&self, cause: &'static str, count: u64) {
        self.spans_dropped
            .get_or_create(&Cause { cause })
            .inc_by(count);
    }

    /// Count a client API key checked with the validation URLs, by outcome.
    pub fn key_validation(&self, outcome: &'static str) {
        self.key_validations
            .get_or_create(&Cause { cause: outcome })
            .inc();
    }

    /// Count a finished request, and keep it among the recent completions of the worker that
    /// answered it (if one did).
    pub(super) fn finished(
        &self,
        worker: Option<&Worker>,
        at: Instant,
        ttft: Option<Duration>,
        usage: Usage,
    ) {
        self.finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(worker) = worker {
            let prompt = match (usage.prompt, usage.cached) {
                (Some(total), Some(cached)) => Some(PromptTokens { total, cached }),
                _ => None,
            };
            worker.recent().record(Completion { at, ttft, prompt });
        }
    }

    /// Inference requests finished so far, whatever their outcome.
    pub fn requests_finished(&self) -> u64 {
        self.finished.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count a P/D request by the plan it took.
    pub fn pd_plan(&self, outcome: &'static str) {
        self.pd_plans.get_or_create(&Cause { cause: outcome }).inc();
    }

    /// Record how long a P/D leg took since `started`, and how it ended.
    pub fn pd_leg(&self, leg: &'static str, outcome: &'static str, started: Instant) {
        self.pd_legs
            .get_or_create(&LegLabels { leg, outcome })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The exposition text, with per-worker series as of `snapshot` and the admission queue
    /// as of now.
    pub fn render(&self, snapshot: &Snapshot, admission: &Admission) -> String {
        let mut rendered = self.render.lock();
        self.queue_depth
            .set(i64::try_from(admission.queued()).unwrap_or(i64::MAX));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            self.runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        self.admitted
            .set(i64::try_from(admission.in_use()).unwrap_or(i64::MAX));
        for family in [
            &self.worker_healthy,
            &self.worker_draining,
            &self.worker_in_flight,
            &self.worker_breaker,
        ] {
            family.clear();
        }
        for family in [
            &self.worker_running,
            &self.worker_waiting,
            &self.worker_kv_usage,
        ] {
            family.clear();
        }
        let now = std::time::Instant::now();
        let mut present: HashSet<&str> = HashSet::with_capacity(snapshot.members().len());
        for m in snapshot.members() {
            let w = &m.worker;
            present.insert(w.label());
            let labels = WorkerLabels {
                worker: w.label().to_owned(),
                role: w.role().name(),
            };
            self.worker_healthy
                .get_or_create(&labels)
                .set(i64::from(w.is_healthy()));
            self.worker_draining
                .get_or_create(&labels)
                .set(i64::from(w.is_draining()));
            self.worker_in_flight
                .get_or_create(&labels)
                .set(i64::try_from(w.in_flight()).unwrap_or(i64::MAX));
            self.worker_breaker
                .get_or_create(&labels)
                .set(w.breaker().recorded_state().code());
            let requests = self.worker_requests.get_or_create(&labels);
            requests.inc_by(w.served().saturating_sub(requests.get()));
            drop(requests);
            rendered.insert(labels.clone());
            if let Some(engine) = w.load(now).engine {
                self.worker_running
                    .get_or_create(&labels)
                    .set(engine.running);
                self.worker_waiting
                    .get_or_create(&labels)
                    .set(engine.waiting);
                if let Some(kv) = engine.kv_usage {
                    self.worker_kv_usage.get_or_create(&labels).set(kv);
                }
            }
        }
        self.forget(&mut rendered, &present);
        let mut out = encoded(&self.registry);
        if let Some(peer) = &self.peer
            && let Some(ours) = out.strip_suffix("# EOF\n")
        {
            // One exposition: theirs follows ours, before the one end marker.
            out = format!("{ours}{}", peer.render(snapshot));
        }
        out
    }
}

#[cfg(test)]
mod tests;
