//! Slow request bodies: they hold no admission slot, and past their time or below their pace
//! they are answered 408 and their connections closed.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// Everything the router sends until it closes the connection, as text.
async fn text_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let (received, _) = read_until_closed(stream, within).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// A client that sends its request head and the first bytes of a 1000-byte body, then
/// nothing more for as long as it is kept.
async fn slow_upload(router: &vllm_router::server::RouterHandle) -> TcpStream {
    let mut stream = TcpStream::connect(router.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{}",
        r#"{"model":""#
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn slow_uploads_hold_no_admission_slot() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| {
        a.max_concurrent_requests = 8;
        a.queue_size = 0;
    })
    .await;
    // The router runs on the test's runtime, where each connection it accepts is a task.
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let mut slow = Vec::new();
    for _ in 0..64 {
        slow.push(slow_upload(&router).await);
    }
    // Every upload has begun (the router took each connection); a normal client still gets
    // its answer, not a 429.
    eventually(Duration::from_secs(10), || {
        (tasks() >= before + 64).then_some(())
    })
    .await;
    for _ in 0..5 {
        let r = post_json(
            &format!("{}/v1/chat/completions", router.url()),
            chat(MODEL, false),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(workers[0].records().len(), 5);
}

#[tokio::test]
async fn a_stalled_upload_gets_a_408_and_its_connection_closes() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.body_min_bytes_per_sec = 100).await;
    let started = Instant::now();
    let mut client = slow_upload(&router).await;
    let text = text_until_closed(&mut client, Duration::from_secs(12)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"type\":\"RequestTimeoutError\""), "{text}");
    assert!(text.contains("--body-min-bytes-per-sec"), "{text}");
    // Refused for its pace in its first seconds, not at the 60 s body read timeout; the
    // bound leaves a loaded machine several seconds of slack.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(workers[0].records().is_empty(), "never forwarded");
    assert!(
        router
            .app()
            .render_metrics()
            .contains(r#"vllm_router_timeouts_total{cause="body_read"} 1"#)
    );
}

#[tokio::test]
async fn an_upload_past_the_body_read_timeout_gets_a_408_even_at_a_good_pace() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| {
        a.body_read_timeout_secs = 2;
        a.body_min_bytes_per_sec = 0;
    })
    .await;
    let mut client = slow_upload(&router).await;
    // A byte every 100 ms: never silent, never done.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let text = text_until_closed(&mut client, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("--body-read-timeout-secs"), "{text}");
}
