//! Completion versus cancellation, decided by drop order.
//!
//! A [`Tracker`] lives in the request future until the handler answers, then moves into the
//! response body. If either is dropped before the last body frame went out, the client left:
//! the drop marks the record cancelled at that instant. No polling, no timers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use super::RecordCell;
use crate::state::Sim;

/// Marks its record cancelled when dropped unfinished.
pub(crate) struct Tracker {
    sim: Arc<Sim>,
    cell: RecordCell,
    finished: bool,
}

impl Tracker {
    pub(crate) fn new(sim: Arc<Sim>, cell: RecordCell) -> Self {
        Self {
            sim,
            cell,
            finished: false,
        }
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.cell.lock().status = status;
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.cell.lock().finished_at = Some(Instant::now());
            self.sim.recorder.completed.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            let mut rec = self.cell.lock();
            rec.cancelled = true;
            rec.cancelled_at = Some(Instant::now());
            drop(rec);
            self.sim.recorder.cancelled.fetch_add(1, Relaxed);
        }
    }
}

/// A response body that finishes its tracker with its last frame.
pub(crate) struct TrackedBody {
    inner: Body,
    tracker: Tracker,
}

impl TrackedBody {
    pub(crate) fn new(inner: Body, mut tracker: Tracker) -> Self {
        // The connection never polls a body that is already at its end.
        if inner.is_end_stream() {
            tracker.finish();
        }
        Self { inner, tracker }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.tracker.finish(),
            // The connection stops polling once the body reports its end.
            Some(Ok(_)) if this.inner.is_end_stream() => this.tracker.finish(),
            Some(_) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
