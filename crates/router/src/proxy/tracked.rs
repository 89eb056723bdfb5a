//! A response body that holds the worker's in-flight guard until the body ends or is dropped
//! (the client left). Frames pass through as they arrive, unchanged and unbuffered; when a
//! policy made a prefix-cache prediction, a [`UsageWatch`] reads them on the way.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::usage::UsageWatch;
use crate::fleet::InFlight;

pin_project! {
    /// Wraps a worker's response body; releases the in-flight count at its end.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
        usage: Option<UsageWatch>,
    }
}

impl<B> TrackedBody<B> {
    /// Track `inner` with `guard`.
    pub fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
            usage: None,
        }
    }

    /// Also read the worker's reported usage on the way through.
    pub fn watching(mut self, usage: Option<UsageWatch>) -> Self {
        self.usage = usage;
        self
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            Some(Ok(f)) => {
                if let (Some(watch), Some(data)) = (this.usage.as_mut(), f.data_ref()) {
                    watch.observe(data.as_ref());
                }
                // A body of known length ends with its last frame: hyper polls no further.
                this.inner.is_end_stream()
            }
            None => true,
            Some(Err(_)) => {
                this.usage.take();
                true
            }
        };
        if ended {
            this.guard.take();
            if let Some(watch) = this.usage.take() {
                watch.finish();
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::config::WorkerUrl;
    use crate::fleet::Worker;

    fn worker() -> Arc<Worker> {
        Arc::new(Worker::new(
            WorkerUrl::parse("--worker-urls", "http://w:1").unwrap(),
        ))
    }

    #[tokio::test]
    async fn releases_at_end_of_stream_not_before() {
        let w = worker();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = tokio_stream_from(rx);
        let mut body = TrackedBody::new(StreamBody::new(stream), w.begin());
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 1\n\n");
        assert_eq!(w.in_flight(), 1, "still streaming");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(w.in_flight(), 0, "released at end");
    }

    #[tokio::test]
    async fn releases_when_the_client_drops_the_body() {
        let w = worker();
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = TrackedBody::new(StreamBody::new(tokio_stream_from(rx)), w.begin());
        assert_eq!(w.in_flight(), 1);
        drop(body);
        assert_eq!(w.in_flight(), 0);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
