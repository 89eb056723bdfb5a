//! Turns readings of the fleet into views, keeping from one sample to the next what rates and
//! history need: the counters last read and the points of the last [`HISTORY`] samples.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::window::{Window, round};
use super::{FleetPoint, FleetView, HISTORY, INTERVAL, Summary, WINDOW, WorkerPoint};
use super::{WorkerStatus, WorkerView};
use crate::fleet::{Completion, Snapshot, Worker};

/// What the router is: fixed while it runs.
#[derive(Debug, Clone)]
pub struct About {
    /// The routing policy's name.
    pub policy: &'static str,
    /// Whether prefill/decode disaggregation is on.
    pub pd: bool,
    /// When the router started serving.
    pub started: Instant,
}

/// What one sample reads.
#[derive(Debug)]
pub struct Reading<'a> {
    /// The fleet.
    pub snapshot: &'a Snapshot,
    /// Inference requests finished so far.
    pub finished: u64,
    /// Requests waiting for admission now.
    pub queued: u64,
    /// The sample's time.
    pub now: Instant,
}

/// Builds a view per sample.
#[derive(Debug)]
pub struct Sampler {
    about: About,
    /// The sampler's first instant, and the wall clock then in ms: points are timed from it,
    /// so they stay evenly spaced whatever the wall clock does.
    origin: (Instant, u64),
    /// The previous sample's time and finished count.
    last: Option<(Instant, u64)>,
    samples: u64,
    /// By worker label.
    tracks: HashMap<String, Track>,
    history: VecDeque<FleetPoint>,
    /// Reused to read each worker's completions.
    scratch: Vec<Completion>,
}

/// What the sampler keeps of one worker.
#[derive(Debug)]
struct Track {
    /// Which worker: a worker removed and added again under the same label starts afresh.
    worker: Weak<Worker>,
    served: u64,
    history: VecDeque<WorkerPoint>,
    /// The last sample that saw it.
    seen: u64,
}

impl Track {
    fn new(worker: &Arc<Worker>) -> Self {
        Self {
            worker: Arc::downgrade(worker),
            served: 0,
            history: VecDeque::new(),
            seen: 0,
        }
    }
}

impl Sampler {
    /// A sampler whose first sample comes at `now` or later.
    pub fn new(about: About, now: Instant) -> Self {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            about,
            origin: (now, millis(wall)),
            last: None,
            samples: 0,
            tracks: HashMap::new(),
            history: VecDeque::with_capacity(HISTORY),
            scratch: Vec::new(),
        }
    }

    /// The view of `reading`. Rates are the counters' change since the previous sample (0 on
    /// the first); a worker not seen before counts from 0, since it joined after that sample.
    pub fn sample(&mut self, reading: &Reading<'_>) -> FleetView {
        let now = reading.now;
        self.samples += 1;
        let elapsed = self.last.map(|(at, _)| now.saturating_duration_since(at));
        let rate = |delta: u64| per_sec(delta, elapsed);
        let from = now.checked_sub(WINDOW).unwrap_or(self.origin.0);
        let t_ms = self.origin.1 + millis(now.saturating_duration_since(self.origin.0));
        let std_now = now.into_std();
        let members = reading.snapshot.members();

        let mut fleet = Window::default();
        let mut workers = Vec::with_capacity(members.len());
        for m in members {
            let w = &m.worker;
            let status = WorkerStatus::of(m, std_now);
            let track = self
                .tracks
                .entry(w.label().to_owned())
                .or_insert_with(|| Track::new(w));
            if !std::ptr::eq(track.worker.as_ptr(), Arc::as_ptr(w)) {
                *track = Track::new(w);
            }
            track.seen = self.samples;
            let req_per_sec = rate(status.requests_total.saturating_sub(track.served));
            track.served = status.requests_total;
            self.scratch.clear();
            w.recent().since(from, &mut self.scratch);
            let mut window = Window::of(&self.scratch);
            let figures = window.figures();
            fleet.absorb(window);
            push(
                &mut track.history,
                WorkerPoint {
                    t_ms,
                    req_per_sec,
                    ttft_p50_ms: figures.ttft_p50_ms,
                },
            );
            workers.push(WorkerView {
                status,
                req_per_sec,
                ttft_p50_ms: figures.ttft_p50_ms,
                ttft_p99_ms: figures.ttft_p99_ms,
                cache_hit_rate: figures.cache_hit_rate,
                history: track.history.iter().copied().collect(),
            });
        }
        let samples = self.samples;
        self.tracks.retain(|_, track| track.seen == samples);

        let finished_before = self.last.map_or(reading.finished, |(_, n)| n);
        self.last = Some((now, reading.finished));
        let figures = fleet.figures();
        let summary = Summary {
            version: crate::VERSION.to_owned(),
            policy: self.about.policy.to_owned(),
            pd: self.about.pd,
            uptime_ms: millis(now.saturating_duration_since(self.about.started)),
            workers: workers.len(),
            healthy: workers.iter().filter(|w| w.status.healthy).count(),
            draining: workers.iter().filter(|w| w.status.draining).count(),
            in_flight: workers.iter().map(|w| w.status.in_flight).sum(),
            queued: reading.queued,
            req_per_sec: rate(reading.finished.saturating_sub(finished_before)),
            ttft_p50_ms: figures.ttft_p50_ms,
            ttft_p99_ms: figures.ttft_p99_ms,
            cache_hit_rate: figures.cache_hit_rate,
        };
        push(
            &mut self.history,
            FleetPoint {
                t_ms,
                req_per_sec: summary.req_per_sec,
                ttft_p50_ms: summary.ttft_p50_ms,
                ttft_p99_ms: summary.ttft_p99_ms,
                in_flight: summary.in_flight,
            },
        );
        FleetView {
            sampled_at_ms: t_ms,
            interval_ms: millis(INTERVAL),
            window_ms: millis(WINDOW),
            summary,
            workers,
            history: self.history.iter().copied().collect(),
        }
    }
}

/// Append `point`, dropping the oldest past [`HISTORY`].
fn push<T>(history: &mut VecDeque<T>, point: T) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(point);
}

/// `delta` over `elapsed`, per second to a hundredth; 0 without an interval to divide by.
fn per_sec(delta: u64, elapsed: Option<Duration>) -> f64 {
    match elapsed {
        Some(e) if !e.is_zero() => round(delta as f64 / e.as_secs_f64(), 100.0),
        _ => 0.0,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
