//! The router's own errors: OpenAI-shaped, right status, no upstream call when refused.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vllm_sim::SimConfig;

use crate::support::*;

#[tokio::test]
async fn invalid_json_is_a_400_and_never_forwarded() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let url = format!("{}/v1/chat/completions", router.url());
    for body in ["{\"model\": ", "", "[1,2]", "{\"model\": 3}"] {
        let r = send(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            body,
        )
        .await;
        r.assert_error(400);
        assert!(!r.header("x-request-id").is_empty());
    }
    assert!(workers[0].records().is_empty());
}

#[tokio::test]
async fn an_oversized_body_is_refused_from_its_content_length_before_it_is_sent() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.max_payload_size = 1024 * 1024).await;
    let mut stream = TcpStream::connect(router.addr()).await.unwrap();
    // Declare 100 MB, send none of it: the answer must come anyway.
    stream
        .write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"code\":413"), "{text}");
    assert!(workers[0].records().is_empty());
}

#[tokio::test]
async fn an_oversized_chunked_body_is_refused_once_it_crosses_the_limit() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.max_payload_size = 64 * 1024).await;
    let mut stream = TcpStream::connect(router.addr()).await.unwrap();
    stream
        .write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 16 * 1024];
    let mut answer = Vec::new();
    for _ in 0..16 {
        let head = format!("{:x}\r\n", chunk.len());
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(workers[0].records().is_empty());
}

#[tokio::test]
async fn a_10_mb_long_context_prompt_passes_the_default_limit() {
    let workers = long_context_sim().await;
    let router = router(&workers).await;
    let prompt = "token ".repeat(10 * 1024 * 1024 / 6);
    let r = post_json(
        &format!("{}/v1/completions", router.url()),
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(workers[0].records()[0].body_len > 10 * 1000 * 1000);
}

#[tokio::test]
async fn all_workers_gone_is_a_503_in_under_a_second() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| a.health_check_interval_secs = 3600).await;
    for w in &workers {
        w.kill();
    }
    let started = Instant::now();
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, false),
    )
    .await;
    let took = started.elapsed();
    r.assert_error(503);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let health = get(&format!("{}/health", router.url())).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["healthy_workers"], 0);
}

#[tokio::test]
async fn a_worker_that_dies_after_receiving_the_request_is_a_502() {
    let workers = sims([SimConfig {
        exit_after: Some(1),
        ..SimConfig::default()
    }])
    .await;
    let router = router(&workers).await;
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, false),
    )
    .await;
    let v = r.assert_error(502);
    let message = v["error"]["message"].as_str().unwrap();
    // The client learns which worker (by the admin API's id), not where it is.
    let id = router.app().fleet.snapshot().members()[0]
        .worker
        .server_id();
    assert!(message.contains(&id), "{v}");
    let host = workers[0].url().replace("http://", "");
    assert!(!message.contains(&host), "{v}");
}

#[tokio::test]
async fn errors_name_worker_urls_only_when_asked() {
    let workers = sims([SimConfig {
        exit_after: Some(1),
        ..SimConfig::default()
    }])
    .await;
    let router = router_with(&workers, |a| a.errors_name_worker_urls = true).await;
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, false),
    )
    .await;
    let v = r.assert_error(502);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&workers[0].url()),
        "{v}"
    );
}

#[tokio::test]
async fn the_worker_header_names_the_url_an_opaque_id_or_nothing() {
    use vllm_router::cli::WorkerHeader;
    let workers = fast_sims(1).await;
    let url = |r: &vllm_router::server::RouterHandle| format!("{}/v1/chat/completions", r.url());
    let router = router(&workers).await;
    let r = post_json(&url(&router), chat(MODEL, false)).await;
    assert_eq!(r.header("x-vllm-router-worker"), workers[0].url());

    let router = router_with(&workers, |a| a.worker_header = WorkerHeader::Id).await;
    let r = post_json(&url(&router), chat(MODEL, false)).await;
    assert_eq!(r.status, 200);
    let id = router.app().fleet.snapshot().members()[0]
        .worker
        .server_id();
    assert_eq!(r.header("x-vllm-router-worker"), id);
    let listed = get(&format!("{}/workers", router.url())).await.json();
    assert!(
        listed.to_string().contains(&id),
        "the admin API lists {id}: {listed}"
    );

    let router = router_with(&workers, |a| a.worker_header = WorkerHeader::Off).await;
    let r = post_json(&url(&router), chat(MODEL, false)).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-vllm-router-worker").is_none());
}

#[tokio::test]
async fn a_worker_slower_than_the_timeout_is_a_504_and_its_request_is_dropped() {
    let workers = sims([SimConfig {
        hang: true,
        ..SimConfig::default()
    }])
    .await;
    let router = router_with(&workers, |a| a.request_timeout_secs = 1).await;
    let started = Instant::now();
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, false),
    )
    .await;
    r.assert_error(504);
    // At the 1 s request timeout, not never: 4 s of slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(1), || {
        workers[0].records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_openai_shaped_errors() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    // An unknown path goes to a worker, whose 404 comes back as it is.
    get(&format!("{}/v1/nope", router.url()))
        .await
        .assert_error(404);
    // With no worker to ask, the router answers itself.
    let empty = router_with(&[], |_| {}).await;
    get(&format!("{}/v1/nope", empty.url()))
        .await
        .assert_error(503);
    get(&format!("{}/v1/chat/completions", router.url()))
        .await
        .assert_error(405);
}
