//! The series one (model, worker) pair feeds, resolved once per request, and how a departed
//! worker's series go.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::fleet::{Snapshot, Watcher};
use crate::telemetry::exchange::Outcome;
use crate::telemetry::usage::Usage;

use super::Metrics;
use super::labels::{ExchangeLabels, TokenLabels, WorkerLabels, WorkerOnly};

/// The series one (model, worker) pair feeds.
#[derive(Debug)]
pub struct WorkerSeries {
    pub(super) ttft: Histogram,
    pub(super) itl: Histogram,
    pub(super) e2e: Histogram,
    pub(super) prompt: Counter,
    pub(super) completion: Counter,
    pub(super) cached: Counter,
}

impl WorkerSeries {
    /// Record the time between two streamed events.
    pub(crate) fn inter_token(&self, gap: Duration) {
        self.itl.observe(gap.as_secs_f64());
    }

    /// Record a request the worker answered: its first token, its whole time, its tokens.
    pub(crate) fn served(
        &self,
        ttft: Option<Duration>,
        duration: Duration,
        outcome: Outcome,
        usage: Usage,
    ) {
        if let Some(ttft) = ttft {
            self.ttft.observe(ttft.as_secs_f64());
        }
        if outcome == Outcome::Complete {
            self.e2e.observe(duration.as_secs_f64());
        }
        for (counter, count) in [
            (&self.prompt, usage.prompt),
            (&self.completion, usage.completion),
            (&self.cached, usage.cached),
        ] {
            if let Some(count) = count {
                counter.inc_by(count);
            }
        }
    }
}

impl Metrics {
    /// The series of requests of `labels`' model to its worker, for one request to hold and
    /// feed without further lookups.
    pub(crate) fn series(&self, labels: &ExchangeLabels) -> Arc<WorkerSeries> {
        if let Some(series) = self.served.read().get(labels) {
            return Arc::clone(series);
        }
        let tokens = |kind| TokenLabels {
            model: labels.model.clone(),
            worker: labels.worker.clone(),
            kind,
        };
        let series = Arc::new(WorkerSeries {
            ttft: self.ttft.get_or_create_owned(labels),
            itl: self.itl.get_or_create_owned(labels),
            e2e: self.e2e.get_or_create_owned(labels),
            prompt: self.tokens.get_or_create_owned(&tokens("prompt")),
            completion: self.tokens.get_or_create_owned(&tokens("completion")),
            cached: self.tokens.get_or_create_owned(&tokens("cached")),
        });
        Arc::clone(self.served.write().entry(labels.clone()).or_insert(series))
    }

    /// Drop the latency, token and prediction series of workers no longer in the fleet.
    fn forget_departed(&self, present: &HashSet<&str>) {
        let mut served = self.served.write();
        served.retain(|labels, _| {
            if present.contains(labels.worker.as_str()) {
                return true;
            }
            self.ttft.remove(labels);
            self.itl.remove(labels);
            self.e2e.remove(labels);
            for kind in ["prompt", "completion", "cached"] {
                self.tokens.remove(&TokenLabels {
                    model: labels.model.clone(),
                    worker: labels.worker.clone(),
                    kind,
                });
            }
            let worker = WorkerOnly {
                worker: labels.worker.clone(),
            };
            self.cached_predicted.remove(&worker);
            self.cached_reported.remove(&worker);
            false
        });
    }
}

impl Metrics {
    /// Drop every series of the workers not in `present`.
    pub(super) fn forget(&self, rendered: &mut HashSet<WorkerLabels>, present: &HashSet<&str>) {
        rendered.retain(|labels| {
            let stays = present.contains(labels.worker.as_str());
            if !stays {
                self.worker_requests.remove(labels);
                for family in [
                    &self.worker_healthy,
                    &self.worker_draining,
                    &self.worker_in_flight,
                    &self.worker_breaker,
                ] {
                    family.remove(labels);
                }
                for family in [
                    &self.worker_running,
                    &self.worker_waiting,
                    &self.worker_kv_usage,
                ] {
                    family.remove(labels);
                }
            }
            stays
        });
        self.forget_departed(present);
    }
}

/// A worker's series go when the worker leaves the fleet, scraped or not, so that churn
/// cannot grow memory.
impl Watcher for Metrics {
    fn on_fleet_change(&self, snapshot: &Snapshot) {
        let present: HashSet<&str> = snapshot
            .members()
            .iter()
            .map(|m| m.worker.label())
            .collect();
        self.forget(&mut self.render.lock(), &present);
    }
}
