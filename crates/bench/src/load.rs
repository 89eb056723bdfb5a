//! Driving one target: the state its users share ([`Shared`]: the window, the client, the
//! collected samples), and the two ways of pacing requests, a closed loop of users
//! ([`closed`]) and open-loop Poisson arrivals ([`open`]).

mod closed;
mod open;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::Uri;
use parking_lot::Mutex;

use crate::client::{Client, Outcome, Usage, Verdict};
use crate::config::{Load, WindowConfig};
use crate::workload::{Conversation, Workload};

/// What one request left behind, once counted.
#[derive(Clone, Debug)]
pub struct Sample {
    /// How it ended.
    pub verdict: Verdict,
    /// Time to first token, in milliseconds, when a token came.
    pub ttft_ms: Option<f64>,
    /// End-to-end latency in milliseconds.
    pub e2e_ms: f64,
    /// The usage chunk, when there was one.
    pub usage: Option<Usage>,
    /// What went wrong, for failures.
    pub detail: Option<String>,
}

/// Everything measured on one target.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// One sample per counted request, in completion order.
    pub samples: Vec<Sample>,
    /// Open loop: counted arrivals dropped because too many requests were in flight.
    pub overload_shed: u64,
    /// From the end of the warm-up until the last request finished.
    pub elapsed: Duration,
}

/// The state every user of one target's run shares.
pub(crate) struct Shared {
    client: Client,
    uri: Uri,
    workload: Workload,
    started: Instant,
    warmup_end: Instant,
    deadline: Instant,
    limit: Option<u64>,
    claimed: AtomicU64,
    samples: Mutex<Vec<Sample>>,
}

impl From<Outcome> for Sample {
    fn from(o: Outcome) -> Self {
        Self {
            verdict: o.verdict,
            ttft_ms: o.ttft.map(millis),
            e2e_ms: millis(o.e2e),
            usage: o.usage,
            detail: o.detail,
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Shared {
    /// Whether a request may start now and whether it counts; `None` once the run is over.
    fn admit(&self) -> Option<bool> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        if now < self.warmup_end {
            return Some(false);
        }
        match self.limit {
            Some(limit) if self.claimed.fetch_add(1, Relaxed) >= limit => None,
            _ => Some(true),
        }
    }

    /// Sends the conversation's next turn and records the outcome when `counted`. True when
    /// the answer was complete (and appended to the conversation).
    async fn send(&self, conv: &mut Conversation, counted: bool) -> bool {
        let Some(req) = conv.next_request() else {
            return false;
        };
        let mut outcome = self.client.chat(&self.uri, &req).await;
        let ok = outcome.verdict == Verdict::Ok;
        if ok {
            conv.record_reply(std::mem::take(&mut outcome.reply));
        }
        if counted {
            self.samples.lock().push(Sample::from(outcome));
        }
        ok
    }
}

/// Runs `workload` against `uri` with `load` for the `window`, then waits for the requests
/// still in flight (each bounded by the client's timeout).
pub async fn run(
    client: Client,
    uri: Uri,
    workload: Workload,
    load: Load,
    window: WindowConfig,
) -> LoadResult {
    let started = Instant::now();
    let warmup_end = started + window.warmup;
    let shared = Arc::new(Shared {
        client,
        uri,
        workload,
        started,
        warmup_end,
        deadline: warmup_end + window.duration,
        limit: window.requests.map(|n| n.get()),
        claimed: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
    });
    let overload_shed = match load {
        Load::Closed { users } => {
            closed::run(shared.clone(), users.get()).await;
            0
        }
        Load::Open {
            rate,
            max_outstanding,
        } => open::run(shared.clone(), rate, max_outstanding.get()).await,
    };
    let elapsed = Instant::now().saturating_duration_since(warmup_end);
    let samples = std::mem::take(&mut *shared.samples.lock());
    LoadResult {
        samples,
        overload_shed,
        elapsed,
    }
}
