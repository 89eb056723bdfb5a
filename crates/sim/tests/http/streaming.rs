use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{Value, json};
use vllm_sim::{SimConfig, spawn};

use crate::support::{Conn, post, wait_until};

fn events(raw: &str) -> Vec<&str> {
    assert!(raw.ends_with("\n\n"), "{raw:?}");
    raw.split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").expect("data: prefix"))
        .collect()
}

#[tokio::test]
async fn sse_frames_are_written_as_generated_and_end_with_done() {
    // Tokens a second apart: a first event that waited for the second would come after 1 s.
    let cfg = SimConfig {
        itl: Duration::from_millis(1000),
        ..SimConfig::default()
    };
    let sim = spawn(cfg).await.unwrap();
    let mut conn = Conn::open(sim.addr()).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "stream": true, "stream_options": {"include_usage": true}});
    let start = Instant::now();
    let resp = conn
        .send(post(sim.addr(), "/v1/chat/completions", &body, &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(800),
        "first event must not wait for the second token"
    );
    let mut raw = String::from_utf8(first.to_vec()).unwrap();
    assert_eq!(events(&raw).len(), 1, "one event per frame");
    while let Some(frame) = body.frame().await {
        raw.push_str(std::str::from_utf8(frame.unwrap().data_ref().unwrap()).unwrap());
    }
    let evs = events(&raw);
    assert_eq!(evs.len(), 5, "3 tokens, usage, [DONE]: {raw}");
    assert_eq!(*evs.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = evs[..4]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], "sim-model");
        assert!(c["created"].is_u64());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
    assert!(chunks[1]["choices"][0]["finish_reason"].is_null());
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 3);
    assert_eq!(chunks[3]["usage"]["prompt_tokens"], 11);
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "two inter-token gaps"
    );

    wait_until(Duration::from_secs(1), "completion", || {
        sim.stats().completed == 1
    })
    .await;
    let rec = &sim.records()[0];
    assert!(rec.stream && !rec.cancelled && rec.finished_at.is_some());
}

#[tokio::test]
async fn completion_stream_without_usage() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let mut conn = Conn::open(sim.addr()).await;
    let body = json!({"prompt": "hello", "max_tokens": 2, "stream": true});
    let resp = conn
        .send(post(sim.addr(), "/v1/completions", &body, &[]))
        .await
        .unwrap();
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    let evs = events(&raw);
    assert_eq!(evs.len(), 3);
    let c: Value = serde_json::from_str(evs[0]).unwrap();
    assert_eq!(c["object"], "text_completion");
    assert!(c["choices"][0]["text"].is_string());
    assert_eq!(evs[2], "[DONE]");
}

#[tokio::test]
async fn dropped_stream_is_recorded_as_cancelled_at_once() {
    let cfg = SimConfig {
        itl: Duration::from_millis(200),
        ..SimConfig::default()
    };
    let sim = spawn(cfg).await.unwrap();
    let mut conn = Conn::open(sim.addr()).await;
    let body = json!({"prompt": "hello", "max_tokens": 100, "stream": true});
    let resp = conn
        .send(post(sim.addr(), "/v1/completions", &body, &[]))
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(sim.stats().running, 1);
    let left_at = conn.close().await;
    drop(body);
    wait_until(Duration::from_secs(2), "cancel", || {
        sim.stats().cancelled == 1
    })
    .await;
    let rec = &sim.records()[0];
    assert!(rec.cancelled && rec.finished_at.is_none());
    let lag = rec.cancelled_at.unwrap().saturating_duration_since(left_at);
    assert!(
        // The stream had about 20 s to go; a second of slack for a loaded machine.
        lag < Duration::from_secs(1),
        "cancel noticed after {lag:?}"
    );
    let stats = sim.stats();
    assert_eq!((stats.running, stats.completed), (0, 0));
}
