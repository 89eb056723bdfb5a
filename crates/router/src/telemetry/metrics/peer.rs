//! vllm-project/router's series names (`--peer-metrics`), for the dashboards built on them,
//! exported beside ours. Where a name of theirs is also one of ours
//! (`vllm_router_requests_total`, `_request_errors_total`, `_retries_total`), ours is
//! exported, with other labels; these are the rest that the router can fill honestly.
//!
//! | theirs | type | from |
//! |---|---|---|
//! | `vllm_router_active_workers` | gauge | healthy workers |
//! | `vllm_router_worker_health{worker}` | gauge | 1 healthy, 0 not |
//! | `vllm_router_cb_state{worker}` | gauge | 0 closed, 1 open, 2 half-open |
//! | `vllm_router_processed_requests_total{worker}` | counter | requests forwarded to it |
//! | `vllm_router_generate_duration_seconds` | histogram | generating routes, arrival to end |
//! | `vllm_router_embeddings_total`, `_embeddings_duration_seconds` | counter, histogram | `/v1/embeddings` |

use std::collections::HashSet;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::text::encoded;
use super::{AtomicHistogram, latency_histogram};
use crate::fleet::Snapshot;
use crate::sync::Mutex;

/// Routes whose time is `generate_duration_seconds`.
const GENERATING: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/inference/v1/generate",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerWorker {
    worker: String,
}

/// The peer's series, in a registry of their own.
#[derive(Debug)]
pub struct PeerMetrics {
    registry: Registry,
    active_workers: Gauge,
    worker_health: Family<PeerWorker, Gauge>,
    cb_state: Family<PeerWorker, Gauge>,
    processed: Family<PeerWorker, Counter>,
    generate_duration: AtomicHistogram,
    embeddings: Counter,
    embeddings_duration: AtomicHistogram,
    /// The workers of the last render, whose series go when they leave.
    rendered: Mutex<HashSet<String>>,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("vllm_router");
        let active_workers = Gauge::default();
        r.register(
            "active_workers",
            "Workers in rotation",
            active_workers.clone(),
        );
        let worker_health = Family::<PeerWorker, Gauge>::default();
        r.register(
            "worker_health",
            "1 when the worker is healthy, else 0",
            worker_health.clone(),
        );
        let cb_state = Family::<PeerWorker, Gauge>::default();
        r.register(
            "cb_state",
            "The worker's circuit breaker: 0 closed, 1 open, 2 half-open",
            cb_state.clone(),
        );
        let processed = Family::<PeerWorker, Counter>::default();
        r.register(
            "processed_requests",
            "Requests forwarded to the worker",
            processed.clone(),
        );
        let generate_duration = latency_histogram();
        r.register_with_unit(
            "generate_duration",
            "Generating requests (chat, completions, responses, messages, generate): arrival to the end of the response",
            Unit::Seconds,
            generate_duration.clone(),
        );
        let embeddings = Counter::default();
        r.register("embeddings", "Embedding requests", embeddings.clone());
        let embeddings_duration = latency_histogram();
        r.register_with_unit(
            "embeddings_duration",
            "Embedding requests: arrival to the end of the response",
            Unit::Seconds,
            embeddings_duration.clone(),
        );
        Self {
            registry: r,
            active_workers,
            worker_health,
            cb_state,
            processed,
            generate_duration,
            embeddings,
            embeddings_duration,
            rendered: Mutex::default(),
        }
    }
}

impl PeerMetrics {
    /// Record a request of `route` that took `secs`.
    pub(super) fn request(&self, route: &str, secs: f64) {
        if GENERATING.contains(&route) {
            self.generate_duration.observe(secs);
        } else if route == "/v1/embeddings" {
            self.embeddings.inc();
            self.embeddings_duration.observe(secs);
        }
    }

    /// The series as OpenMetrics text (ending with `# EOF`), the fleet's as `snapshot` has it.
    pub(super) fn render(&self, snapshot: &Snapshot) -> String {
        let mut rendered = self.rendered.lock();
        let mut present = HashSet::with_capacity(snapshot.members().len());
        self.active_workers
            .set(i64::try_from(snapshot.healthy_count()).unwrap_or(i64::MAX));
        for m in snapshot.members() {
            let w = &m.worker;
            let labels = PeerWorker {
                worker: w.label().to_owned(),
            };
            self.worker_health
                .get_or_create(&labels)
                .set(i64::from(w.is_healthy()));
            self.cb_state
                .get_or_create(&labels)
                .set(w.breaker().recorded_state().code());
            let processed = self.processed.get_or_create(&labels);
            processed.inc_by(w.served().saturating_sub(processed.get()));
            drop(processed);
            present.insert(labels.worker);
        }
        for gone in rendered.difference(&present) {
            let labels = PeerWorker {
                worker: gone.clone(),
            };
            self.worker_health.remove(&labels);
            self.cb_state.remove(&labels);
            self.processed.remove(&labels);
        }
        *rendered = present;
        encoded(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::WorkerUrl;
    use crate::fleet::Worker;

    fn worker(url: &str) -> Arc<Worker> {
        Arc::new(Worker::new(WorkerUrl::parse("--worker-urls", url).unwrap()))
    }

    #[test]
    fn the_peers_names_follow_the_fleet_and_forget_who_left() {
        let peer = PeerMetrics::default();
        let (a, b) = (worker("http://a:1"), worker("http://b:1"));
        a.set_healthy(true);
        peer.request("/v1/chat/completions", 0.2);
        peer.request("/v1/embeddings", 0.01);
        peer.request("/tokenize", 0.01);
        let text = peer.render(&Snapshot::of_workers([&a, &b]));
        for line in [
            "vllm_router_active_workers 1",
            "vllm_router_worker_health{worker=\"http://a:1\"} 1",
            "vllm_router_worker_health{worker=\"http://b:1\"} 0",
            "vllm_router_cb_state{worker=\"http://b:1\"} 0",
            "vllm_router_generate_duration_seconds_count 1",
            "vllm_router_embeddings_total 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let text = peer.render(&Snapshot::of_workers([&a]));
        assert!(!text.contains("http://b:1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
