//! Streaming: frames pass through unbuffered; in-flight lasts to the end; a client that leaves
//! makes the worker's request end at once.

use std::time::{Duration, Instant};

use serde_json::json;
use vllm_sim::SimConfig;

use crate::support::*;

fn slow(itl_ms: u64) -> SimConfig {
    SimConfig {
        itl: Duration::from_millis(itl_ms),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn the_first_event_arrives_before_the_second_is_generated() {
    let workers = sims([slow(600)]).await;
    let router = router(&workers).await;
    let body = json!({"model": MODEL, "prompt": "stream me", "max_tokens": 3, "stream": true});
    let mut client = RawClient::post(router.addr(), "/v1/completions", &body.to_string()).await;

    client.read_until("data: ", 1).await;
    let first = Instant::now();
    assert!(String::from_utf8_lossy(&client.received).contains("text/event-stream"));
    client.read_until("data: ", 2).await;
    let gap = first.elapsed();
    // The worker waits 600 ms between tokens: had the router held the first event back,
    // both would have arrived together. (Half the wait: the first event may be read late.)
    assert!(
        gap >= Duration::from_millis(300),
        "second event only {gap:?} after the first"
    );
    client.read_until("data: [DONE]", 1).await;
}

#[tokio::test]
async fn in_flight_lasts_until_the_stream_ends() {
    let workers = sims([slow(150)]).await;
    let router = router(&workers).await;
    let worker = router.app().fleet.snapshot().members()[0].worker.clone();
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": true});
    let mut client = RawClient::post(router.addr(), "/v1/completions", &body.to_string()).await;

    client.read_until("data: ", 1).await;
    assert_eq!(
        worker.in_flight(),
        1,
        "headers are sent, the stream is not over"
    );
    client.read_until("data: [DONE]", 1).await;
    eventually(Duration::from_secs(2), || {
        (worker.in_flight() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_worker_request_at_once() {
    let workers = sims([slow(200)]).await;
    let router = router(&workers).await;
    let worker = router.app().fleet.snapshot().members()[0].worker.clone();
    let body = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "long story"}], "max_tokens": 50, "stream": true
    });
    let mut client =
        RawClient::post(router.addr(), "/v1/chat/completions", &body.to_string()).await;
    client.read_until("data: ", 1).await;

    leave_and_expect_cancel(client, &workers[0]).await;
    eventually(Duration::from_secs(1), || {
        (worker.in_flight() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_before_the_answer_cancels_a_non_streaming_request() {
    let workers = sims([SimConfig {
        hang: true,
        ..SimConfig::default()
    }])
    .await;
    let router = router(&workers).await;
    let client = RawClient::post(
        router.addr(),
        "/v1/chat/completions",
        &chat(MODEL, false).to_string(),
    )
    .await;
    eventually(Duration::from_secs(2), || {
        (!workers[0].records().is_empty()).then_some(())
    })
    .await;

    leave_and_expect_cancel(client, &workers[0]).await;
}

/// Drop the client's connection and assert the worker saw its request cancelled at once: it
/// takes milliseconds; the bound gives a loaded machine a second, still far below what is left
/// of either request (10 s of stream, or an answer that never comes).
async fn leave_and_expect_cancel(client: RawClient, worker: &vllm_sim::SimServer) {
    let left = Instant::now();
    drop(client);
    let cancelled_at = eventually(Duration::from_secs(5), || {
        worker.records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
    let after = cancelled_at.saturating_duration_since(left);
    assert!(
        after < Duration::from_secs(1),
        "worker noticed {after:?} after the client left"
    );
}
