use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use vllm_sim::{SimConfig, spawn};

use crate::support::{Conn, chat, get, hung, post, post_json, wait_until};

#[tokio::test]
async fn x_return_error_answers_at_once_without_engine_work() {
    let sim = hung().await;
    let a = post_json(
        sim.addr(),
        "/v1/chat/completions",
        chat("hi", 4),
        &[("X-Return-Error", "429")],
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let v = a.json();
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["type"], "RateLimitError");
    assert!(v["error"]["message"].is_string());
    let bad = post_json(
        sim.addr(),
        "/v1/chat/completions",
        chat("hi", 4),
        &[("X-Return-Error", "nope")],
    )
    .await;
    assert_eq!(bad.status, 400);
    let stats = sim.stats();
    assert_eq!(stats.errors_injected, 1);
    assert_eq!(stats.prompt_tokens_total, 0);
    assert_eq!(sim.records()[0].status, 429);
}

#[tokio::test]
async fn error_rate_toggles_at_runtime() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    sim.set_error_rate(1.0);
    let a = post_json(sim.addr(), "/v1/completions", json!({"prompt": "x"}), &[]).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.json()["error"]["type"], "InternalServerError");
    sim.set_error_rate(0.0);
    let b = post_json(sim.addr(), "/v1/completions", json!({"prompt": "x"}), &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(sim.stats().errors_injected, 1);
}

#[tokio::test]
async fn held_requests_are_refused_unrun_when_the_hang_lifts() {
    let sim = hung().await;
    let addr = sim.addr();
    let held =
        tokio::spawn(
            async move { post_json(addr, "/v1/chat/completions", chat("hi", 4), &[]).await },
        );
    wait_until(Duration::from_secs(1), "record", || {
        sim.records().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!held.is_finished(), "held while the hang is on");
    sim.set_hang(false);
    let answer = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("answered once the hang lifted")
        .unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"]["type"], "ServiceUnavailableError");
    assert_eq!(sim.records().len(), 1);
    assert_eq!(sim.records()[0].status, 503);
    assert_eq!(sim.stats().prompt_tokens_total, 0, "not run");
    // Requests after the lift are served.
    let next = post_json(sim.addr(), "/v1/chat/completions", chat("hi", 4), &[]).await;
    assert_eq!(next.status, 200);
}

#[tokio::test]
async fn hanging_request_is_cancelled_when_the_client_leaves() {
    let sim = hung().await;
    let mut conn = Conn::open(sim.addr()).await;
    let req = post(sim.addr(), "/v1/chat/completions", &chat("hi", 4), &[]);
    let pending = tokio::spawn(async move {
        let _ = conn.send(req).await;
        conn
    });
    wait_until(Duration::from_secs(1), "record", || {
        sim.records().len() == 1
    })
    .await;
    // Health stays green while inference hangs.
    assert_eq!(get(sim.addr(), "/health").await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished(), "a hanging server must not answer");
    pending.abort();
    let left_at = std::time::Instant::now();
    let _ = pending.await;
    wait_until(Duration::from_secs(1), "cancel", || {
        sim.stats().cancelled == 1
    })
    .await;
    let rec = &sim.records()[0];
    assert!(rec.cancelled);
    assert_eq!(rec.status, 0);
    let lag = rec.cancelled_at.unwrap().saturating_duration_since(left_at);
    assert!(
        // Unnoticed, the request would hang on; a second of slack for a loaded machine.
        lag < Duration::from_secs(1),
        "cancel noticed after {lag:?}"
    );
}

#[tokio::test]
async fn slow_non_streaming_request_is_cancelled_when_the_client_leaves() {
    let sim = spawn(SimConfig {
        itl: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(sim.addr()).await;
    let req = post(
        sim.addr(),
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 50}),
        &[],
    );
    let pending = tokio::spawn(async move {
        let _ = conn.send(req).await;
        conn
    });
    wait_until(Duration::from_secs(1), "admission", || {
        sim.stats().running == 1
    })
    .await;
    pending.abort();
    let left_at = std::time::Instant::now();
    let _ = pending.await;
    wait_until(Duration::from_secs(1), "cancel", || {
        sim.stats().cancelled == 1
    })
    .await;
    let rec = &sim.records()[0];
    let lag = rec.cancelled_at.unwrap().saturating_duration_since(left_at);
    assert!(
        // Unnoticed, the request would hang on; a second of slack for a loaded machine.
        lag < Duration::from_secs(1),
        "cancel noticed after {lag:?}"
    );
    assert_eq!(sim.stats().running, 0, "the batch slot is freed");
}

#[tokio::test]
async fn full_batch_queues_requests() {
    let sim = spawn(SimConfig {
        max_num_seqs: 1,
        itl: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let addr = sim.addr();
    let a = tokio::spawn(post_json(
        addr,
        "/v1/completions",
        json!({"prompt": "a", "max_tokens": 10}),
        &[],
    ));
    let b = tokio::spawn(post_json(
        addr,
        "/v1/completions",
        json!({"prompt": "b", "max_tokens": 10}),
        &[],
    ));
    wait_until(Duration::from_secs(1), "a queued request", || {
        let s = sim.stats();
        s.running == 1 && s.waiting == 1
    })
    .await;
    let metrics = get(addr, "/metrics").await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"sim-model\"} 1.0"));
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    let s = sim.stats();
    assert_eq!((s.running, s.waiting, s.completed), (0, 0, 2));
}

#[tokio::test]
async fn raw_client_with_connection_close_is_seen_leaving() {
    use tokio::io::AsyncWriteExt;
    let sim = hung().await;
    let body = chat("hi", 2).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    wait_until(Duration::from_secs(1), "record", || {
        sim.records().len() == 1
    })
    .await;
    drop(stream);
    let left_at = std::time::Instant::now();
    wait_until(Duration::from_secs(1), "cancel", || {
        sim.stats().cancelled == 1
    })
    .await;
    let lag = sim.records()[0]
        .cancelled_at
        .unwrap()
        .saturating_duration_since(left_at);
    assert!(
        // Unnoticed, the request would hang on; a second of slack for a loaded machine.
        lag < Duration::from_secs(1),
        "cancel noticed after {lag:?}"
    );
}
