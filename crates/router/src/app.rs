//! The request path's shared state: the [`App`] every connection and every request reads
//! (configuration, fleet, policy, upstream client, metrics, admission, retry budget), and the
//! table of the inference routes it forwards. It is assembled once at start-up by
//! [`crate::server`], which sits above everything it wires together; the request path
//! ([`crate::proxy`], [`crate::pd`]) and the modules that change the state ([`crate::reload`],
//! [`crate::auth`]) read it from here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::live::Live;
use crate::pd::Pd;
use crate::policy::Policy;
use crate::proxy::{Drain, RetryBudget};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::Traces;
use crate::upstream::Upstream;

/// Every vLLM inference route the router forwards (all `POST`).
pub const INFERENCE_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/invocations",
    "/v1/rerank",
    "/rerank",
    "/v2/rerank",
    "/v1/score",
    "/score",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/inference/v1/generate",
];

/// The inference route `path` is, as its static name (for labels and logs).
pub fn inference_route(path: &str) -> Option<&'static str> {
    INFERENCE_ROUTES.iter().find(|r| **r == path).copied()
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct App {
    /// The configuration in force: replaced whole by a reload.
    pub(crate) config: Arc<ArcSwap<Config>>,
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// The routing policy of single-leg requests.
    pub policy: Arc<dyn Policy>,
    /// Prefill/decode disaggregation, when enabled.
    pub pd: Option<Pd>,
    /// The pooled client to workers.
    pub upstream: Upstream,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Retries left to spend, shared by all requests.
    pub retry_budget: RetryBudget,
    /// Admission control: concurrency limit, queue, rate limit.
    pub admission: Arc<Admission>,
    /// Span export, when `--otlp-traces-endpoint` is set.
    pub traces: Option<Traces>,
    /// Client authentication: what validation URLs said of recent keys.
    pub auth: Auth,
    /// The live view of the fleet, sampled once a second.
    pub live: Live,
    /// Turns true when a shutdown's drain deadline passed: open responses end now.
    pub(crate) drain: Drain,
    /// True from the moment shutdown starts: readiness answers 503.
    pub(crate) draining: AtomicBool,
    /// Turns true once every static worker has listed its models or the start-up timeout
    /// passed; the router serves (liveness, readiness, 503s) from before then.
    pub(crate) started_up: watch::Receiver<bool>,
    pub(crate) started: Instant,
    pub(crate) background: Vec<JoinHandle<()>>,
}

impl App {
    /// Send the trace spans still queued and stop exporting (after the drain, when no
    /// request is left to end a span).
    pub async fn flush_traces(&self) {
        if let Some(traces) = &self.traces {
            traces.shutdown().await;
        }
    }

    /// The configuration in force now. Hold it for one step, not across awaits: a reload may
    /// replace it.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration's shared cell, for tasks that re-read it (health, scrape, reload).
    pub fn live_config(&self) -> &Arc<ArcSwap<Config>> {
        &self.config
    }

    /// Every response still open ends now: streams with an error event, other bodies aborted.
    /// The serving loop calls this when a shutdown's drain deadline passes.
    pub fn end_streams(&self) {
        self.drain.end();
    }

    /// The signal [`App::end_streams`] gives.
    pub fn drain_signal(&self) -> Drain {
        self.drain.clone()
    }

    /// Shutdown started: from now on `/readiness` answers 503. Never undone.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The Prometheus exposition text now.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.fleet.snapshot(), &self.admission)
    }

    /// Whether shutdown started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the start-up wait for the static workers is still on.
    pub fn is_starting(&self) -> bool {
        !*self.started_up.borrow()
    }

    /// Resolves once every static worker has listed its models, or the start-up timeout
    /// (`--worker-startup-timeout-secs`) passed for those that have not.
    pub async fn started_up(&self) {
        let mut done = self.started_up.clone();
        let _ = done.wait_for(|done| *done).await;
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}
