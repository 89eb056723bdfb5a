//! The router's metrics registry. Request-path handles are resolved without allocating
//! (label values are static strings); per-worker series are read off the fleet snapshot when
//! scraped, so they never drift from it.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::fleet::Snapshot;

/// Labels of a routing decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The policy's name.
    pub policy: &'static str,
    /// The reason it gave.
    pub reason: &'static str,
}

/// Labels naming why something happened (a retry, a timeout, a stream error).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cause {
    /// The cause.
    pub cause: &'static str,
}

/// Labels of a per-worker series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    role: &'static str,
}

/// Buckets of the prefix-prediction error, a difference of two fractions.
const ERROR_BUCKETS: [f64; 11] = [
    -0.75, -0.5, -0.25, -0.1, -0.02, 0.02, 0.1, 0.25, 0.5, 0.75, 1.0,
];

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
    reloads: Family<Cause, Counter>,
    prefix_error: Histogram,
    worker_healthy: Family<WorkerLabels, Gauge>,
    worker_in_flight: Family<WorkerLabels, Gauge>,
    worker_requests: Family<WorkerLabels, Counter>,
    worker_breaker: Family<WorkerLabels, Gauge>,
    render: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vllm_router");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "routing_decisions",
            "Routing decisions by policy and the reason it gave",
            decisions.clone(),
        );
        let retries = Family::<Cause, Counter>::default();
        registry.register(
            "retries",
            "Requests retried on another worker, by what failed",
            retries.clone(),
        );
        let timeouts = Family::<Cause, Counter>::default();
        registry.register(
            "timeouts",
            "Timeouts that fired, by stage (connect, first_byte, stream_idle, total)",
            timeouts.clone(),
        );
        let stream_errors = Family::<Cause, Counter>::default();
        registry.register(
            "stream_errors",
            "Responses cut short after they began, by cause; streams end with an error event",
            stream_errors.clone(),
        );
        let refusals = Family::<Cause, Counter>::default();
        registry.register(
            "admission_refusals",
            "Requests refused by admission control, by cause (queue_full, queue_timeout, rate_limited)",
            refusals.clone(),
        );
        let pd_plans = Family::<Cause, Counter>::default();
        registry.register(
            "pd_plans",
            "P/D requests by plan: prefilled (prefill then decode), skipped (conditional prefill sent it straight to decode), recomputed (every prefill failed; decode computed the prompt)",
            pd_plans.clone(),
        );
        let reloads = Family::<Cause, Counter>::default();
        registry.register(
            "config_reloads",
            "Config file reloads by outcome: applied, unchanged, rejected (invalid; the running configuration stays)",
            reloads.clone(),
        );
        let prefix_error = Histogram::new(ERROR_BUCKETS);
        registry.register(
            "prefix_prediction_error",
            "Predicted prefix-cache hit fraction minus the fraction the worker reported (cached_tokens / prompt_tokens)",
            prefix_error.clone(),
        );
        let worker_healthy = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_healthy",
            "1 when the worker is in rotation",
            worker_healthy.clone(),
        );
        let worker_in_flight = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_in_flight",
            "Requests whose response has not ended",
            worker_in_flight.clone(),
        );
        let worker_requests = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "worker_requests",
            "Requests forwarded to the worker",
            worker_requests.clone(),
        );
        let worker_breaker = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            worker_breaker.clone(),
        );
        Self {
            registry,
            decisions,
            retries,
            timeouts,
            stream_errors,
            refusals,
            pd_plans,
            reloads,
            prefix_error,
            worker_healthy,
            worker_in_flight,
            worker_requests,
            worker_breaker,
            render: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// A shared registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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

    /// Count a P/D request by the plan it took.
    pub fn pd_plan(&self, outcome: &'static str) {
        self.pd_plans.get_or_create(&Cause { cause: outcome }).inc();
    }

    /// Record how far a predicted prefix-cache hit fraction was from the reported one.
    pub fn prefix_prediction(&self, predicted: f64, reported: f64) {
        self.prefix_error.observe(predicted - reported);
    }

    /// The exposition text, with per-worker series as of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _one_at_a_time = self.render.lock();
        self.worker_healthy.clear();
        self.worker_in_flight.clear();
        self.worker_breaker.clear();
        for m in snapshot.members() {
            let labels = WorkerLabels {
                worker: m.worker.label().to_owned(),
                role: m.worker.role().name(),
            };
            self.worker_healthy
                .get_or_create(&labels)
                .set(i64::from(m.worker.is_healthy()));
            self.worker_in_flight
                .get_or_create(&labels)
                .set(i64::try_from(m.worker.in_flight()).unwrap_or(i64::MAX));
            self.worker_breaker
                .get_or_create(&labels)
                .set(m.worker.breaker().recorded_state().code());
            let requests = self.worker_requests.get_or_create(&labels);
            requests.inc_by(m.worker.served().saturating_sub(requests.get()));
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::WorkerUrl;
    use crate::fleet::{Member, Worker};

    #[test]
    fn renders_decisions_errors_and_workers() {
        let metrics = Metrics::default();
        metrics.decided("cache_aware", "lowest prefill + queue cost");
        metrics.decided("cache_aware", "lowest prefill + queue cost");
        metrics.prefix_prediction(0.9, 0.85);
        let w = Arc::new(Worker::new(
            WorkerUrl::parse("--worker-urls", "http://w:1").unwrap(),
        ));
        w.set_healthy(true);
        let _held = w.begin();
        let snap = Snapshot::new(vec![Member {
            worker: w,
            models: None,
        }]);
        let text = metrics.render(&snap);
        assert!(
            text.contains(r#"vllm_router_routing_decisions_total{policy="cache_aware",reason="lowest prefill + queue cost"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("vllm_router_prefix_prediction_error_count 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"vllm_router_worker_healthy{worker="http://w:1",role="regular"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vllm_router_worker_in_flight{worker="http://w:1",role="regular"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vllm_router_worker_requests_total{worker="http://w:1",role="regular"} 1"#
            ),
            "{text}"
        );
        // Rendering twice does not double-count.
        let again = metrics.render(&snap);
        assert!(
            again.contains(
                r#"vllm_router_worker_requests_total{worker="http://w:1",role="regular"} 1"#
            ),
            "{again}"
        );
    }
}
