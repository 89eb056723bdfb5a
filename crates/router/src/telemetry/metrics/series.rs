//! The series a request feeds, resolved once per label pair and then found by name without
//! a lock or an allocation ([`super::handles::Handles`]): those of its (model, worker) pair, and those of its
//! (route, model); and how a departed worker's series go.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::fleet::{Snapshot, Watcher};
use crate::telemetry::exchange::Outcome;
use crate::telemetry::usage::Usage;

use super::labels::{
    ErrorLabels, ExchangeLabels, RequestLabels, RouteLabels, TokenLabels, WorkerLabels, WorkerOnly,
};
use super::{AtomicHistogram, FloatCounter, Metrics, Tally};

/// The series one (model, worker) pair feeds.
#[derive(Debug)]
pub struct WorkerSeries {
    worker: String,
    pub(super) ttft: AtomicHistogram,
    pub(super) itl: AtomicHistogram,
    pub(super) e2e: AtomicHistogram,
    pub(super) prompt: Counter,
    pub(super) completion: Counter,
    pub(super) cached: Counter,
    /// The worker's prefix-prediction counters, made at the first prediction.
    predicted: OnceLock<(FloatCounter, Counter)>,
}

impl WorkerSeries {
    /// A tally for one request's times between streamed events, to record at its end.
    pub(crate) fn inter_token_tally(&self) -> Tally {
        self.itl.tally()
    }

    /// Record one request's times between streamed events, gathered in `tally`.
    pub(crate) fn inter_tokens(&self, tally: &Tally) {
        self.itl.record(tally);
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

/// Status classes of the request counter, in [`RouteSeries::requests`]' order.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// Causes of the request-error counter, in [`RouteSeries::errors`]' order.
const CAUSES: [&str; 8] = [
    "4xx",
    "5xx",
    "none",
    "upstream",
    "stream_idle",
    "total",
    "shutdown",
    "client_gone",
];

/// The series one (route, model) pair feeds. Counters are made at their first use, so a
/// series appears in the exposition once something happened to it.
#[derive(Debug)]
pub(super) struct RouteSeries {
    route: &'static str,
    model: String,
    requests: [OnceLock<Counter>; CLASSES.len()],
    errors: [OnceLock<Counter>; CAUSES.len()],
    duration: AtomicHistogram,
}

impl Metrics {
    /// The series of requests of `model` (as labelled) to `worker`, for one request to hold
    /// and feed without further lookups.
    pub(crate) fn series(&self, model: &str, worker: &str) -> Arc<WorkerSeries> {
        self.served.get_or_insert_with(worker, model, || {
            let labels = ExchangeLabels {
                model: model.to_owned(),
                worker: worker.to_owned(),
            };
            let tokens = |kind| TokenLabels {
                model: model.to_owned(),
                worker: worker.to_owned(),
                kind,
            };
            WorkerSeries {
                worker: worker.to_owned(),
                ttft: self.ttft.get_or_create_owned(&labels),
                itl: self.itl.get_or_create_owned(&labels),
                e2e: self.e2e.get_or_create_owned(&labels),
                prompt: self.tokens.get_or_create_owned(&tokens("prompt")),
                completion: self.tokens.get_or_create_owned(&tokens("completion")),
                cached: self.tokens.get_or_create_owned(&tokens("cached")),
                predicted: OnceLock::new(),
            }
        })
    }

    /// Record how the policy's predicted hit fraction for a request compared with the cached
    /// tokens its worker reported.
    pub(in crate::telemetry) fn prefix_prediction(
        &self,
        series: &WorkerSeries,
        predicted: f64,
        usage: Usage,
    ) {
        let (Some(prompt), Some(cached)) = (usage.prompt, usage.cached) else {
            return;
        };
        if prompt == 0 {
            return;
        }
        let cached = cached.min(prompt);
        self.prefix_error
            .observe(predicted - cached as f64 / prompt as f64);
        let (counted_predicted, counted_reported) = series.predicted.get_or_init(|| {
            let labels = WorkerOnly {
                worker: series.worker.clone(),
            };
            (
                self.cached_predicted.get_or_create_owned(&labels),
                self.cached_reported.get_or_create_owned(&labels),
            )
        });
        counted_predicted.inc_by(predicted * prompt as f64);
        counted_reported.inc_by(cached);
    }

    /// Record one inference request as the client saw it.
    pub(in crate::telemetry) fn request(
        &self,
        route: &'static str,
        model: &str,
        status: u16,
        outcome: Outcome,
        duration: Duration,
    ) {
        let series = self
            .routes
            .get_or_insert_with(route, model, || RouteSeries {
                route,
                model: model.to_owned(),
                requests: Default::default(),
                errors: Default::default(),
                duration: self.request_duration.get_or_create_owned(&RouteLabels {
                    route,
                    model: model.to_owned(),
                }),
            });
        let class = super::status_class(status);
        let at = CLASSES.iter().position(|c| *c == class).unwrap_or(5);
        series.requests[at]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RequestLabels {
                    route,
                    model: series.model.clone(),
                    status_class: class,
                })
            })
            .inc();
        let cause = match outcome {
            Outcome::Cut(_) | Outcome::ClientGone => Some(outcome.label()),
            Outcome::Complete | Outcome::Refused => {
                matches!(class, "4xx" | "5xx" | "none").then_some(class)
            }
        };
        if let Some(cause) = cause {
            let error = || {
                self.request_errors.get_or_create_owned(&ErrorLabels {
                    route: series.route,
                    model: series.model.clone(),
                    cause,
                })
            };
            match CAUSES.iter().position(|c| *c == cause) {
                Some(at) => series.errors[at].get_or_init(error).inc(),
                None => error().inc(),
            };
        }
        series.duration.observe(duration.as_secs_f64());
        if let Some(peer) = &self.peer {
            peer.request(route, duration.as_secs_f64());
        }
    }

    /// Drop the latency, token and prediction series of workers no longer in the fleet.
    fn forget_departed(&self, present: &HashSet<&str>) {
        self.served.retain_outer(
            |worker| present.contains(worker),
            |worker, model| {
                let labels = ExchangeLabels {
                    model: model.to_owned(),
                    worker: worker.to_owned(),
                };
                self.ttft.remove(&labels);
                self.itl.remove(&labels);
                self.e2e.remove(&labels);
                for kind in ["prompt", "completion", "cached"] {
                    self.tokens.remove(&TokenLabels {
                        model: model.to_owned(),
                        worker: worker.to_owned(),
                        kind,
                    });
                }
                let worker = WorkerOnly {
                    worker: worker.to_owned(),
                };
                self.cached_predicted.remove(&worker);
                self.cached_reported.remove(&worker);
            },
        );
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
