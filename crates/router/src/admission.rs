//! Admission control in front of the request path: a token-bucket rate limit, then a limit on
//! concurrent requests with a bounded FIFO queue for the ones that arrive while it is reached.
//!
//! A [`Permit`] holds its slot until dropped; the router moves it into the response body so the
//! slot lasts to the end of the stream, or until the client leaves. A client that leaves while
//! queued drops the [`Admission::admit`] future, which takes it out of the queue at once: it
//! is never handed a slot afterwards and is never sent upstream.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::sync::Mutex;

/// What admission enforces. [`Default`] enforces nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmissionConfig {
    /// Requests that may hold a slot at once; `None` is unlimited, and then nothing queues.
    pub max_concurrent: Option<NonZeroUsize>,
    /// Requests that may wait for a slot when all are held; `0` refuses them at once.
    pub queue_size: usize,
    /// The longest a request waits in the queue before it is refused.
    pub queue_timeout: Duration,
    /// Sustained admissions per second, with a burst of `max(1, rate)`; `None` is unlimited.
    /// Config validation must keep it finite and positive: [`Admission::new`] ignores any
    /// other value (with a warning) rather than refuse every request. Effective rates are
    /// bounded to between one a year and 10^9 a second.
    pub rate_limit_per_sec: Option<f64>,
}

/// Why a request was not admitted. Every refusal is immediate except [`Refused::QueueTimeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is held and the queue is full.
    #[error("the router is at capacity and its queue of {limit} waiting requests is full")]
    QueueFull {
        /// The queue's size.
        limit: usize,
    },
    /// The request waited the whole queue timeout without a slot coming free.
    #[error("no capacity came free within {}ms in the queue", waited.as_millis())]
    QueueTimeout {
        /// How long it waited.
        waited: Duration,
    },
    /// The rate limit's token bucket is empty.
    #[error("rate limit exceeded; the next request is admitted in {}ms", retry_after.as_millis())]
    RateLimited {
        /// When the bucket next holds a token.
        retry_after: Duration,
    },
}

impl Refused {
    /// Seconds to put in a `Retry-After` header: at least 1, rounded up. A refusal for
    /// capacity says 1 s, since slots free at the pace of other requests' streams.
    pub fn retry_after(&self) -> Duration {
        let hint = match *self {
            Refused::RateLimited { retry_after } => retry_after,
            Refused::QueueFull { .. } | Refused::QueueTimeout { .. } => Duration::ZERO,
        };
        let secs = hint
            .as_secs()
            .saturating_add(u64::from(hint.subsec_nanos() > 0));
        Duration::from_secs(secs.max(1))
    }
}

/// The admission gate for every inference request; shared as `Arc<Admission>`.
#[derive(Debug)]
pub struct Admission {
    limit: Limit,
    bucket: Option<Bucket>,
}

#[derive(Debug)]
enum Limit {
    /// No concurrency limit: only a count of permits held, for [`Admission::in_use`].
    Unlimited(Arc<AtomicUsize>),
    Slots(Slots),
}

#[derive(Debug)]
struct Slots {
    /// Tokio's semaphore queues waiters in FIFO order and forgets a waiter whose future is
    /// dropped, returning a slot it had been handed but not yet taken.
    semaphore: Arc<Semaphore>,
    size: usize,
    waiting: AtomicUsize,
    queue_size: usize,
    queue_timeout: Duration,
}

impl Admission {
    /// An admission gate enforcing `config`.
    pub fn new(config: AdmissionConfig) -> Self {
        let limit = match config.max_concurrent {
            None => Limit::Unlimited(Arc::default()),
            Some(max) => {
                let size = max.get().min(Semaphore::MAX_PERMITS);
                Limit::Slots(Slots {
                    semaphore: Arc::new(Semaphore::new(size)),
                    size,
                    waiting: AtomicUsize::new(0),
                    queue_size: config.queue_size,
                    queue_timeout: config.queue_timeout,
                })
            }
        };
        let bucket = config.rate_limit_per_sec.and_then(|rate| {
            if rate.is_finite() && rate > 0.0 {
                Some(Bucket::new(rate))
            } else {
                tracing::warn!(
                    rate,
                    "admission: ignoring a rate limit that is not finite and positive"
                );
                None
            }
        });
        Self { limit, bucket }
    }

    /// Admit a request: take a rate token, then a slot, waiting in the FIFO queue for one if
    /// all are held and the queue has room. The permit holds the slot until it is dropped.
    ///
    /// Cancel-safe: dropping the future leaves the queue at once and gives up any slot.
    /// A rate token is spent even if the request is then refused for capacity.
    pub async fn admit(&self) -> Result<Permit, Refused> {
        if let Some(bucket) = &self.bucket {
            bucket.take()?;
        }
        let slots = match &self.limit {
            Limit::Unlimited(held) => {
                held.fetch_add(1, Ordering::Relaxed);
                return Ok(Permit(Slot::Counted(Arc::clone(held))));
            }
            Limit::Slots(slots) => slots,
        };
        // Released slots go to queued waiters first, so this cannot overtake the queue.
        if let Ok(permit) = Arc::clone(&slots.semaphore).try_acquire_owned() {
            return Ok(Permit(Slot::Held { _permit: permit }));
        }
        let _seat = slots.seat().ok_or(Refused::QueueFull {
            limit: slots.queue_size,
        })?;
        let started = Instant::now();
        let acquire = Arc::clone(&slots.semaphore).acquire_owned();
        match tokio::time::timeout(slots.queue_timeout, acquire).await {
            Ok(permit) => Ok(Permit(Slot::Held {
                _permit: permit.expect("the admission semaphore is never closed"),
            })),
            Err(_elapsed) => Err(Refused::QueueTimeout {
                waited: started.elapsed(),
            }),
        }
    }

    /// Slots held by live permits (with no concurrency limit, permits held).
    pub fn in_use(&self) -> usize {
        match &self.limit {
            Limit::Unlimited(held) => held.load(Ordering::Relaxed),
            Limit::Slots(slots) => slots.size - slots.semaphore.available_permits(),
        }
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        match &self.limit {
            Limit::Unlimited(_) => 0,
            Limit::Slots(slots) => slots.waiting.load(Ordering::Acquire),
        }
    }
}

impl Slots {
    /// A place in the queue, if there is room; checked and taken in one step so that
    /// concurrent arrivals never overfill it.
    fn seat(&self) -> Option<Seat<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue_size).then_some(n + 1)
            })
            .ok()
            .map(|_| Seat(&self.waiting))
    }
}

/// A place in the queue, given back when the wait ends for any reason, cancellation included.
struct Seat<'a>(&'a AtomicUsize);

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request's slot, released (and handed to the next waiter) when dropped.
#[derive(Debug)]
pub struct Permit(Slot);

#[derive(Debug)]
enum Slot {
    Counted(Arc<AtomicUsize>),
    /// Never read: dropping it is what releases the slot.
    Held {
        _permit: OwnedSemaphorePermit,
    },
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A held semaphore permit releases itself when dropped just after this.
        if let Slot::Counted(held) = &self.0 {
            held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Bounds on the time between two tokens, so a rate too high or too low for `Duration` and
/// `Instant` arithmetic stays usable: at most 10^9 admissions a second, at least one a year.
const MIN_INTERVAL: Duration = Duration::from_nanos(1);
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A token bucket refilled at `rate` tokens a second, holding at most `max(1, rate)`, starting
/// full. It is kept as the instant by which the tokens taken so far will have been refilled:
/// refill is then exact arithmetic on instants, with no rounding drift in a float count.
#[derive(Debug)]
struct Bucket {
    /// Time to refill one token: `1 / rate`.
    interval: Duration,
    /// Time to refill the whole bucket: `max(1, rate) / rate`.
    capacity: Duration,
    /// Before this instant the bucket is short of full by the time left until it.
    refilled_at: Mutex<Instant>,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let interval = Duration::try_from_secs_f64(rate.recip())
            .unwrap_or(MAX_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        Self {
            interval,
            capacity: interval.max(Duration::from_secs(1)),
            refilled_at: Mutex::new(Instant::now()),
        }
    }

    /// Take a token, or say how long until one is there.
    fn take(&self) -> Result<(), Refused> {
        let mut refilled_at = self.refilled_at.lock();
        // Read the clock under the lock, so concurrent takers see time move forwards.
        let now = Instant::now();
        let after_take = (*refilled_at).max(now) + self.interval;
        let deficit = after_take - now;
        if deficit <= self.capacity {
            *refilled_at = after_take;
            Ok(())
        } else {
            Err(Refused::RateLimited {
                retry_after: deficit - self.capacity,
            })
        }
    }
}

#[cfg(test)]
mod tests;
