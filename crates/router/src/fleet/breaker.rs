//! A worker's circuit breaker. Closed, it passes everything and counts consecutive failed
//! requests; at the threshold it opens and passes nothing. After its timeout it is half-open:
//! a few trial requests at a time go through, and enough successes close it while one
//! failure opens it again. Failures count together while each comes within the window
//! (`--cb-window-duration-secs`) of the one before; a success ends the count too. Unlike health ejection, which waits for probes, a breaker recovers
//! on live traffic alone. The configuration is passed in, so it can change on reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use tokio::time::Instant;

use super::Worker;
use crate::config::BreakerConfig;
use crate::sync::Mutex;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Where a breaker stands; serialized as its [`BreakerState::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Everything passes.
    Closed,
    /// Nothing passes until the timeout.
    Open,
    /// A few trial requests pass.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open: the exported gauge value.
    pub fn code(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The breaker's state, all atomics but the opening time.
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    successes: AtomicU32,
    trials: AtomicU32,
    /// Bumped on every change of state: a trial counts only within the half-open period it
    /// was taken in, so a late verdict from an earlier one cannot settle (or wrap) the next.
    period: AtomicU32,
    opened_at: Mutex<Option<Instant>>,
    /// When the last failure counted while closed: one past the window starts a new count.
    last_failure: Mutex<Option<Instant>>,
}

impl Breaker {
    /// Where it stands (an open breaker past its timeout reads as half-open).
    pub fn state(&self, config: &BreakerConfig, now: Instant) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN if self.timed_out(config, now) => BreakerState::HalfOpen,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// The state as last recorded: an open breaker past its timeout still reads open until a
    /// request turns it half-open.
    pub fn recorded_state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a request could pass now (without reserving a trial).
    pub fn admits(&self, config: &BreakerConfig, now: Instant) -> bool {
        !config.enabled
            || match self.state(config, now) {
                BreakerState::Closed => true,
                BreakerState::Open => false,
                BreakerState::HalfOpen => {
                    self.trials.load(Ordering::Acquire) < config.half_open_max
                }
            }
    }

    fn timed_out(&self, config: &BreakerConfig, now: Instant) -> bool {
        self.opened_at
            .lock()
            .is_some_and(|at| now >= at + config.open_for)
    }

    fn open(&self, now: Instant) {
        self.period.fetch_add(1, Ordering::AcqRel);
        *self.opened_at.lock() = Some(now);
        self.successes.store(0, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
    }

    fn close(&self) {
        self.period.fetch_add(1, Ordering::AcqRel);
        self.failures.store(0, Ordering::Release);
        self.state.store(CLOSED, Ordering::Release);
    }

    /// Give back the place of a trial taken in `period`, if that period is still current.
    fn end_trial(&self, period: u32) -> bool {
        if self.period.load(Ordering::Acquire) != period {
            return false;
        }
        let _ = self
            .trials
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1));
        true
    }
}

/// Permission to send one request through a worker's breaker; report how it went. A trial
/// dropped without a verdict (the client left) gives its place back.
#[derive(Debug)]
pub struct Ticket {
    worker: Arc<Worker>,
    /// The half-open period this trial was taken in; `None` for an ordinary request.
    trial: Option<u32>,
    settled: bool,
}

impl Ticket {
    /// Ask `worker`'s breaker to let one request through.
    pub fn take(worker: &Arc<Worker>, config: &BreakerConfig, now: Instant) -> Option<Self> {
        let b = worker.breaker();
        let ticket = |trial| Self {
            worker: Arc::clone(worker),
            trial,
            settled: false,
        };
        if !config.enabled {
            return Some(ticket(None));
        }
        match b.state(config, now) {
            BreakerState::Closed => Some(ticket(None)),
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                // The first request past the timeout turns the breaker half-open.
                if b.state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    b.trials.store(0, Ordering::Release);
                    b.successes.store(0, Ordering::Release);
                    b.period.fetch_add(1, Ordering::AcqRel);
                }
                let period = b.period.load(Ordering::Acquire);
                b.trials
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                        (t < config.half_open_max).then_some(t + 1)
                    })
                    .ok()
                    .map(|_| ticket(Some(period)))
            }
        }
    }

    /// The worker answered well.
    pub fn success(mut self, config: &BreakerConfig) {
        self.settled = true;
        let b = self.worker.breaker();
        if let Some(period) = self.trial {
            if !b.end_trial(period) {
                return;
            }
            if b.successes.fetch_add(1, Ordering::AcqRel) + 1 >= config.success_threshold {
                b.close();
                tracing::info!(worker = self.worker.url(), "circuit breaker closed");
            }
        } else if b.failures.load(Ordering::Relaxed) != 0 {
            b.failures.store(0, Ordering::Release);
        }
    }

    /// The request failed at the worker (connect, reset, 5xx, timeout).
    pub fn failure(mut self, config: &BreakerConfig, now: Instant) {
        self.settled = true;
        if !config.enabled {
            return;
        }
        let b = self.worker.breaker();
        let opens = if let Some(period) = self.trial {
            b.end_trial(period)
        } else {
            let stale = b
                .last_failure
                .lock()
                .replace(now)
                .is_some_and(|last| now.saturating_duration_since(last) > config.window);
            if stale {
                b.failures.store(0, Ordering::Release);
            }
            b.failures.fetch_add(1, Ordering::AcqRel) + 1 >= config.failure_threshold
                && b.state.load(Ordering::Acquire) == CLOSED
        };
        if opens {
            b.open(now);
            tracing::warn!(worker = self.worker.url(), "circuit breaker open");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let (Some(period), false) = (self.trial, self.settled) {
            self.worker.breaker().end_trial(period);
        }
    }
}

#[cfg(test)]
mod tests;
