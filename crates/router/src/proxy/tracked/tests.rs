use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

use super::*;
use crate::config::WorkerUrl;
use crate::fleet::Worker;

type Item = Result<Frame<Bytes>, std::io::Error>;

fn worker() -> Arc<Worker> {
    let w = Arc::new(Worker::new(
        WorkerUrl::parse("--worker-urls", "http://w:1").unwrap(),
    ));
    w.set_healthy(true);
    w
}

fn stream(rx: mpsc::Receiver<Item>) -> StreamBody<impl futures_util::Stream<Item = Item>> {
    let mut rx = rx;
    StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

fn limits(sse: bool, metrics: &Arc<Metrics>) -> StreamLimits {
    StreamLimits {
        sse,
        idle: Duration::from_secs(5),
        deadline: Instant::now() + Duration::from_secs(60),
        total: Duration::from_secs(60),
        failure_threshold: 1,
        error_urls: false,
        metrics: Arc::clone(metrics),
        drain: None,
    }
}

fn data(frame: Frame<Bytes>) -> String {
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn releases_at_end_of_stream_not_before() {
    let w = worker();
    let (tx, rx) = mpsc::channel::<Item>(4);
    let mut body = std::pin::pin!(TrackedBody::new(stream(rx), w.begin()));
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .await
        .unwrap();
    assert_eq!(data(body.frame().await.unwrap().unwrap()), "data: 1\n\n");
    assert_eq!(w.in_flight(), 1, "still streaming");
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(w.in_flight(), 0, "released at end");
}

#[tokio::test]
async fn releases_when_the_client_drops_the_body() {
    let w = worker();
    let (_tx, rx) = mpsc::channel::<Item>(1);
    let body = TrackedBody::new(stream(rx), w.begin());
    assert_eq!(w.in_flight(), 1);
    drop(body);
    assert_eq!(w.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_ends_with_an_error_event_after_the_idle_timeout() {
    let w = worker();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel::<Item>(4);
    let mut body =
        std::pin::pin!(TrackedBody::new(stream(rx), w.begin()).limited(limits(true, &metrics)));
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: {\"x\":1}\n\n"))))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();

    let started = Instant::now();
    let event = data(body.frame().await.unwrap().unwrap());
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "fired at the idle timeout"
    );
    assert!(event.starts_with("data: {\"error\":"), "{event}");
    assert!(event.ends_with("\n\n") && !event.contains("[DONE]"));
    let parsed: serde_json::Value =
        serde_json::from_str(event.trim_start_matches("data: ").trim()).unwrap();
    assert_eq!(parsed["error"]["code"], 504);
    assert!(body.frame().await.is_none(), "then the stream ends");
    assert_eq!(w.in_flight(), 0);
    assert!(
        !w.is_healthy(),
        "a stalled stream counts against the worker"
    );
    let text = metrics.render(
        &crate::fleet::Snapshot::default(),
        &crate::admission::Admission::new(Default::default()),
    );
    assert!(
        text.contains(r#"vllm_router_timeouts_total{cause="stream_idle"} 1"#),
        "{text}"
    );
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn frames_keep_a_slow_stream_alive_until_the_total_deadline() {
    let w = worker();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel::<Item>(64);
    let mut l = limits(true, &metrics);
    l.deadline = Instant::now() + Duration::from_secs(14);
    let mut body = std::pin::pin!(TrackedBody::new(stream(rx), w.begin()).limited(l));
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            if tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Every 4 s is under the 5 s idle limit: frames at 4, 8 and 12 s, then the 14 s deadline.
    for _ in 0..3 {
        assert_eq!(data(body.frame().await.unwrap().unwrap()), "data: {}\n\n");
    }
    let event = data(body.frame().await.unwrap().unwrap());
    assert!(event.contains("\"error\""), "{event}");
    let text = metrics.render(
        &crate::fleet::Snapshot::default(),
        &crate::admission::Admission::new(Default::default()),
    );
    assert!(
        text.contains(r#"vllm_router_timeouts_total{cause="total"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_broken_stream_ends_with_an_error_event_and_a_broken_body_with_an_error() {
    let metrics = Metrics::new();
    for sse in [true, false] {
        let w = worker();
        let (tx, rx) = mpsc::channel::<Item>(4);
        let mut body =
            std::pin::pin!(TrackedBody::new(stream(rx), w.begin()).limited(limits(sse, &metrics)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        tx.send(Err(std::io::Error::other("connection reset")))
            .await
            .unwrap();
        let next = body.frame().await.unwrap();
        if sse {
            let event = data(next.unwrap());
            assert!(
                event.contains("\"code\":502") && event.contains("connection reset"),
                "{event}"
            );
            assert!(body.frame().await.is_none());
        } else {
            assert!(next.is_err());
        }
        assert_eq!(w.in_flight(), 0);
    }
}

#[tokio::test]
async fn a_stream_open_at_the_shutdown_deadline_ends_with_an_error_event() {
    let w = worker();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel::<Item>(4);
    let drain = Drain::default();
    let mut l = limits(true, &metrics);
    l.drain = Some(drain.clone());
    let mut body = std::pin::pin!(TrackedBody::new(stream(rx), w.begin()).limited(l));
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    drain.end();
    let event = data(body.frame().await.unwrap().unwrap());
    assert!(
        event.contains("shutting down") && event.contains("\"code\":503"),
        "{event}"
    );
    assert!(body.frame().await.is_none());
    assert!(w.is_healthy(), "a shutdown is not the worker's fault");
    drop(tx);
}
