//! The live view of the fleet, sampled once a second: every worker's state, rates and recent
//! latencies, a fleet summary, and the last minutes of both for sparklines. `GET /fleet`
//! answers it as JSON; `vllm-router top` and `/dashboard` read it.
//!
//! A sampler task builds each view from the fleet snapshot, the workers' atomics and their
//! [`Recent`](crate::fleet::Recent) completions, and publishes it whole. Readers load the
//! latest one without locks; the request path only records its completion.

mod sampler;
mod window;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admission::Admission;
use crate::config::Role;
use crate::fleet::{BreakerState, Fleet, Member};
use crate::telemetry::metrics::Metrics;

pub use sampler::{About, Reading, Sampler};
pub use window::quantile;

/// How often a view is sampled.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The span of the latency and cache-hit figures: completions that ended this recently (at
/// most the last [`crate::fleet::KEPT`] of each worker).
pub const WINDOW: Duration = Duration::from_secs(30);
/// History points kept: one per sample, so this many seconds.
pub const HISTORY: usize = 300;
/// History points `GET /fleet` answers when not asked for a number.
pub const DEFAULT_HISTORY: usize = 120;

/// The fleet as of one sample: the body of `GET /fleet`. Times are in milliseconds, rates per
/// second, shares as fractions (0..1); a figure with nothing to stand on is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    /// When it was sampled, in ms since the Unix epoch.
    pub sampled_at_ms: u64,
    /// How often views are sampled, in ms.
    pub interval_ms: u64,
    /// The span of the latency and cache-hit figures, in ms.
    pub window_ms: u64,
    /// The whole fleet.
    pub summary: Summary,
    /// Every worker (one per data-parallel rank), in the order they joined.
    pub workers: Vec<WorkerView>,
    /// The fleet's figures once per sample, oldest first.
    pub history: Vec<FleetPoint>,
}

/// The router and its fleet as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The router's version.
    pub version: String,
    /// The routing policy in force.
    pub policy: String,
    /// Whether prefill/decode disaggregation is on.
    pub pd: bool,
    /// Time since the router started serving, in ms.
    pub uptime_ms: u64,
    /// Workers in the fleet.
    pub workers: usize,
    /// Of those, healthy ones.
    pub healthy: usize,
    /// Of those, draining ones.
    pub draining: usize,
    /// Requests the router has open to workers.
    pub in_flight: u64,
    /// Requests waiting for an admission slot.
    pub queued: u64,
    /// Inference requests finished per second (every route and outcome, refusals included),
    /// over the last interval.
    pub req_per_sec: f64,
    /// Median time to first token of streamed responses in the window, in ms.
    pub ttft_p50_ms: Option<f64>,
    /// 99th percentile of the same, in ms.
    pub ttft_p99_ms: Option<f64>,
    /// Prompt tokens the workers reported cached over prompt tokens, in the window.
    pub cache_hit_rate: Option<f64>,
}

/// A worker's state now: what `/load-stats` and the live view both show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its server's id in the admin API (`/workers/{id}`); the ranks of one URL share it.
    pub id: String,
    /// Its base URL.
    pub url: String,
    /// The URL, with `#RANK` for a data-parallel rank: unique in the fleet.
    pub label: String,
    /// `regular`, `prefill` or `decode`.
    pub role: Role,
    /// Its data-parallel rank, when the URL has several.
    pub rank: Option<u32>,
    /// The models it serves (empty until it listed them).
    pub models: Vec<String>,
    /// Its configured capacity, if any.
    pub capacity: Option<u32>,
    /// Whether it is in rotation.
    pub healthy: bool,
    /// Whether it is drained (no new requests).
    pub draining: bool,
    /// `closed`, `open` or `half_open`.
    pub breaker: BreakerState,
    /// Requests the router has open to it.
    pub in_flight: u64,
    /// Requests in its engine's running batch, from a fresh `/metrics` scrape.
    pub running: Option<f64>,
    /// Requests queued in its engine, from a fresh scrape.
    pub waiting: Option<f64>,
    /// Its KV-cache use (0..1), from a fresh scrape.
    pub kv_cache_usage: Option<f64>,
    /// Requests ever forwarded to it.
    pub requests_total: u64,
}

impl WorkerStatus {
    /// The state of `member` at `now` (engine figures only while its last scrape is fresh).
    pub fn of(member: &Member, now: std::time::Instant) -> Self {
        let w = &member.worker;
        let engine = w.load(now).engine;
        Self {
            id: w.server_id(),
            url: w.url().to_owned(),
            label: w.label().to_owned(),
            role: w.role(),
            rank: w.rank(),
            models: member
                .model_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            capacity: w.capacity().map(|c| c.get()),
            healthy: w.is_healthy(),
            draining: w.is_draining(),
            breaker: w.breaker().recorded_state(),
            in_flight: w.in_flight() as u64,
            running: engine.map(|e| e.running),
            waiting: engine.map(|e| e.waiting),
            kv_cache_usage: engine.and_then(|e| e.kv_usage),
            requests_total: w.served(),
        }
    }
}

/// One worker in the live view: its state, its rates, and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Its state at the sample.
    #[serde(flatten)]
    pub status: WorkerStatus,
    /// Requests forwarded to it per second, over the last interval.
    pub req_per_sec: f64,
    /// Median time to first token of its streamed responses in the window, in ms.
    pub ttft_p50_ms: Option<f64>,
    /// 99th percentile of the same, in ms.
    pub ttft_p99_ms: Option<f64>,
    /// Prompt tokens it reported cached over prompt tokens, in the window.
    pub cache_hit_rate: Option<f64>,
    /// Its figures once per sample since it joined, oldest first.
    pub history: Vec<WorkerPoint>,
}

/// The fleet's figures at one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FleetPoint {
    /// When, in ms since the Unix epoch.
    pub t_ms: u64,
    /// As [`Summary::req_per_sec`].
    pub req_per_sec: f64,
    /// As [`Summary::ttft_p50_ms`].
    pub ttft_p50_ms: Option<f64>,
    /// As [`Summary::ttft_p99_ms`].
    pub ttft_p99_ms: Option<f64>,
    /// As [`Summary::in_flight`].
    pub in_flight: u64,
}

/// A worker's figures at one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkerPoint {
    /// When, in ms since the Unix epoch.
    pub t_ms: u64,
    /// As [`WorkerView::req_per_sec`].
    pub req_per_sec: f64,
    /// As [`WorkerView::ttft_p50_ms`].
    pub ttft_p50_ms: Option<f64>,
}

impl FleetView {
    /// This view with only the last `points` points of each history.
    pub fn with_history(&self, points: usize) -> Self {
        fn last<T: Clone>(all: &[T], n: usize) -> Vec<T> {
            all[all.len().saturating_sub(n)..].to_vec()
        }
        Self {
            sampled_at_ms: self.sampled_at_ms,
            interval_ms: self.interval_ms,
            window_ms: self.window_ms,
            summary: self.summary.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerView {
                    status: w.status.clone(),
                    req_per_sec: w.req_per_sec,
                    ttft_p50_ms: w.ttft_p50_ms,
                    ttft_p99_ms: w.ttft_p99_ms,
                    cache_hit_rate: w.cache_hit_rate,
                    history: last(&w.history, points),
                })
                .collect(),
            history: last(&self.history, points),
        }
    }
}

/// Where the sampler reads the fleet and the router's counters.
#[derive(Debug)]
pub struct Inputs {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// The metrics registry, which counts finished requests.
    pub metrics: Arc<Metrics>,
    /// Admission control, for its queue.
    pub admission: Arc<Admission>,
    /// What the router is.
    pub about: About,
}

impl Inputs {
    fn read(&self, sampler: &mut Sampler) -> FleetView {
        sampler.sample(&Reading {
            snapshot: &self.fleet.snapshot(),
            finished: self.metrics.requests_finished(),
            queued: self.admission.queued() as u64,
            now: Instant::now(),
        })
    }
}

/// The latest view, shared by the sampler and the routes that answer it.
#[derive(Debug, Clone)]
pub struct Live {
    view: Arc<ArcSwap<FleetView>>,
}

impl Live {
    /// Sample the fleet now, then once every [`INTERVAL`] in the returned task (abort it to
    /// stop), and at once whenever `resample` changes (the start-up wait ended: the workers'
    /// health just changed). Must be called inside a Tokio runtime.
    pub fn start(inputs: Inputs, mut resample: watch::Receiver<bool>) -> (Self, JoinHandle<()>) {
        let mut sampler = Sampler::new(inputs.about.clone(), Instant::now());
        let view = Arc::new(ArcSwap::from_pointee(inputs.read(&mut sampler)));
        let published = Arc::clone(&view);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + INTERVAL, INTERVAL);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut listening = true;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    changed = resample.changed(), if listening => listening = changed.is_ok(),
                }
                published.store(Arc::new(inputs.read(&mut sampler)));
            }
        });
        (Self { view }, task)
    }

    /// The latest view.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.load_full()
    }
}

#[cfg(test)]
mod tests;
