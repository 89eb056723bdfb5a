//! A response body that holds the worker's in-flight guard until the body ends or is dropped
//! (the client left). Frames pass through as they arrive, unchanged and unbuffered; the
//! request's [`Exchange`] times and reads them on the way, and is recorded when the body ends.
//!
//! Once the response began nothing is retried. If the worker breaks the body, stays silent
//! longer than the idle timeout, or the request outlives its total timeout, a server-sent
//! event stream ends with one `data: {"error": ...}` event in the OpenAI shape and no
//! `[DONE]`, so clients raise instead of keeping a silently truncated answer; any other body
//! is aborted, which the client sees as a broken response.
//!
//! The request's span and the answering attempt's end with the body: at its end, when it is
//! cut short (marked failed, with the cause), or when the client leaves (marked so).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use crate::admission::Permit;
use crate::error::ApiError;
use crate::fleet::InFlight;
use crate::telemetry::exchange::{Exchange, Outcome};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::span::{RequestSpan, Span};

/// Errors a tracked body ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a response may stall or last, and what to tell whom when it does.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// The response is a server-sent event stream (it gets an error event).
    pub sse: bool,
    /// Longest silence between two frames.
    pub idle: Duration,
    /// When the whole request must be over.
    pub deadline: Instant,
    /// The whole request's time limit (for the message when it passes).
    pub total: Duration,
    /// Consecutive failures that take the worker out of rotation.
    pub failure_threshold: u32,
    /// The error a client receives names the worker by URL rather than by its opaque id.
    pub error_urls: bool,
    /// Where breaks and timeouts are counted.
    pub metrics: Arc<Metrics>,
    /// Ends the response when the router's shutdown deadline passed.
    pub drain: Option<Drain>,
}

impl StreamLimits {
    /// When the body must next see a frame: the idle limit from now, or the total deadline.
    fn next_deadline(&self) -> Instant {
        (Instant::now() + self.idle).min(self.deadline)
    }
}

/// Tells the responses still open that the shutdown's drain deadline passed: each ends at
/// once (an event stream with an error event).
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<DrainState>);

#[derive(Debug, Default)]
struct DrainState {
    ended: AtomicBool,
    notify: Arc<Notify>,
}

impl Drain {
    /// End every response holding this signal, now and from now on.
    pub fn end(&self) {
        self.0.ended.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    fn has_ended(&self) -> bool {
        self.0.ended.load(Ordering::Acquire)
    }

    fn notified(&self) -> OwnedNotified {
        Arc::clone(&self.0.notify).notified_owned()
    }
}

pin_project! {
    /// Wraps a worker's response body; releases the in-flight count at its end.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
        slot: Option<Permit>,
        exchange: Option<Exchange>,
        limits: Option<StreamLimits>,
        // Fires at the earlier of the idle limit (from the last frame) and the total deadline.
        #[pin]
        timer: Option<Sleep>,
        // Completes when the drain signal is given (after the body was first polled).
        #[pin]
        drained: Option<OwnedNotified>,
        spans: Option<Spans>,
        done: bool,
    }
}

/// The spans a response ends: the request's and the attempt that answered.
struct Spans {
    // Dropped in this order: the attempt ends before the request.
    attempt: Span,
    request: RequestSpan,
    ended: bool,
}

impl Spans {
    /// The body ended; `cut` says why when it was cut short.
    fn end(mut self, cut: Option<&'static str>) {
        self.ended = true;
        if let Some(cause) = cut {
            self.request.set("vllm_router.cut", cause);
            self.request.fail(cause);
            self.attempt.set("vllm_router.cut", cause);
            self.attempt.fail(cause);
        }
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        if !self.ended {
            // Dropped before its end: the client left.
            self.request.set("vllm_router.cut", "client_gone");
            self.attempt.set("vllm_router.cut", "client_gone");
        }
    }
}

impl<B> TrackedBody<B> {
    /// Track `inner` with `guard`.
    pub fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
            slot: None,
            exchange: None,
            limits: None,
            timer: None,
            drained: None,
            spans: None,
            done: false,
        }
    }

    /// Hold an admission slot until the body ends.
    pub fn holding(mut self, slot: Permit) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Keep the request's record, fed each frame and recorded when the body ends.
    pub fn recording(mut self, exchange: Option<Exchange>) -> Self {
        self.exchange = exchange;
        self
    }

    /// End the request's span and the answering attempt's with the body (nothing is held when
    /// neither records).
    pub fn traced(mut self, request: RequestSpan, attempt: Span) -> Self {
        if request.is_recording() || attempt.is_recording() {
            self.spans = Some(Spans {
                attempt,
                request,
                ended: false,
            });
        }
        self
    }

    /// Enforce the idle and total timeouts, and end broken streams with an error event.
    pub fn limited(mut self, limits: StreamLimits) -> Self {
        self.timer = Some(tokio::time::sleep_until(limits.next_deadline()));
        self.drained = limits.drain.as_ref().map(Drain::notified);
        self.limits = Some(limits);
        self
    }
}

/// Why a response was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Upstream,
    Idle,
    Total,
    Shutdown,
}

impl Cut {
    fn label(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Idle => "stream_idle",
            Self::Total => "total",
            Self::Shutdown => "shutdown",
        }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body,
    B::Data: AsRef<[u8]> + Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let cut = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(exchange) = this.exchange.as_mut() {
                        exchange.frame(data.as_ref());
                    }
                    if let Some(guard) = this.guard.as_mut() {
                        guard.first_token();
                    }
                }
                if let (Some(limits), Some(timer)) =
                    (this.limits.as_ref(), this.timer.as_mut().as_pin_mut())
                {
                    timer.reset(limits.next_deadline());
                }
                // A body of known length ends with its last frame: hyper polls no further.
                if this.inner.is_end_stream() {
                    this.slot.take();
                    finish(this.guard, this.exchange);
                    if let Some(spans) = this.spans.take() {
                        spans.end(None);
                    }
                }
                return Poll::Ready(Some(Ok(frame.map_data(Into::into))));
            }
            Poll::Ready(None) => {
                this.slot.take();
                finish(this.guard, this.exchange);
                if let Some(spans) = this.spans.take() {
                    spans.end(None);
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => (Cut::Upstream, Some(error.into())),
            Poll::Pending => {
                let Some(limits) = this.limits.as_ref() else {
                    return Poll::Pending;
                };
                // Polled (and so registered) before the flag is read: a signal given in
                // between is seen either way.
                let drained = match this.drained.as_mut().as_pin_mut() {
                    Some(notified) => {
                        notified.poll(cx).is_ready()
                            || limits.drain.as_ref().is_some_and(Drain::has_ended)
                    }
                    None => false,
                };
                let mut timed_out = || {
                    this.timer
                        .as_mut()
                        .as_pin_mut()
                        .is_some_and(|timer| timer.poll(cx).is_ready())
                };
                if drained {
                    (Cut::Shutdown, None)
                } else if timed_out() {
                    let total = Instant::now() >= limits.deadline;
                    (if total { Cut::Total } else { Cut::Idle }, None)
                } else {
                    return Poll::Pending;
                }
            }
        };
        let (cut, source) = cut;
        *this.done = true;
        this.slot.take();
        if let Some(spans) = this.spans.take() {
            spans.end(Some(cut.label()));
        }
        let guard = this.guard.take();
        if let Some(exchange) = this.exchange.as_mut() {
            exchange.end(Outcome::Cut(cut.label()));
        }
        let Some(limits) = this.limits.as_ref() else {
            return Poll::Ready(Some(Err(
                source.unwrap_or_else(|| "response cut short".into())
            )));
        };
        limits.metrics.stream_failed(cut.label());
        if matches!(cut, Cut::Idle | Cut::Total) {
            limits.metrics.timed_out(cut.label());
        }
        let worker = guard.as_ref().map_or_else(String::new, |g| {
            g.worker().name_for_clients(limits.error_urls)
        });
        if let (Some(g), false) = (&guard, cut == Cut::Shutdown) {
            g.worker().record_failure(limits.failure_threshold);
        }
        let error = match cut {
            Cut::Upstream => ApiError::BadGateway {
                worker,
                reason: source
                    .as_ref()
                    .map_or_else(|| "stream broken".to_owned(), |e| e.to_string()),
            },
            Cut::Idle => ApiError::GatewayTimeout {
                worker,
                after: limits.idle,
            },
            Cut::Total => ApiError::GatewayTimeout {
                worker,
                after: limits.total,
            },
            Cut::Shutdown => ApiError::ShuttingDown,
        };
        tracing::warn!(cut = cut.label(), %error, "response cut short after it began");
        if limits.sse {
            let mut event = Vec::with_capacity(256);
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(&error.to_json());
            event.extend_from_slice(b"\n\n");
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
        }
        Poll::Ready(Some(Err(source.unwrap_or_else(|| Box::new(error)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body ended cleanly. (Whether the worker did well was judged from its status.)
fn finish(guard: &mut Option<InFlight>, exchange: &mut Option<Exchange>) {
    guard.take();
    if let Some(mut exchange) = exchange.take() {
        exchange.end(Outcome::Complete);
    }
}

#[cfg(test)]
mod tests;
