//! The client-facing listener under abuse and at shutdown: slow and oversized request heads,
//! ambiguous framing, `X-Forwarded-For`, and the drain.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vllm_router::server::{App, routes};
use vllm_sim::{SimConfig, SimServer};

use crate::support::*;

/// Requests that reached a worker's inference routes (probes and model listing aside).
fn inference_requests(worker: &SimServer) -> usize {
    worker
        .records()
        .iter()
        .filter(|r| r.path.starts_with("/v1/") && r.path != "/v1/models")
        .count()
}

fn completion(max_tokens: u32, stream: bool) -> String {
    json!({"model": MODEL, "prompt": "x", "max_tokens": max_tokens, "stream": stream}).to_string()
}

#[tokio::test]
async fn a_client_dribbling_its_head_is_closed_at_the_header_timeout_while_others_are_served() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.header_read_timeout_secs = 1).await;
    let opened = Instant::now();
    // One byte every 200 ms: progress, but the head is never complete in time.
    let mut drip = TcpStream::connect(router.addr()).await.unwrap();
    let (mut drip_read, mut drip_write) = drip.split();
    let head = b"POST /v1/completions HTTP/1.1\r\nhost: router\r\nx-pad: aaaaaaaaaaaaaaaa";
    let dripping = async {
        for byte in head {
            if drip_write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let closing = async {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(6), drip_read.read(&mut buf))
            .await
            .expect("the router kept the dribbling connection open");
        (n.unwrap_or(0), opened.elapsed())
    };
    // And one that connects and says nothing at all.
    let mut silent = TcpStream::connect(router.addr()).await.unwrap();
    let normal = async {
        let reply = post_json(
            &format!("{}/v1/completions", router.url()),
            json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}),
        )
        .await;
        (reply.status, opened.elapsed())
    };
    let (dripped, (drip_bytes, drip_closed_at), (status, served_at)) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(7), dripping),
        closing,
        normal
    );

    assert!(dripped.is_ok(), "writes kept succeeding");
    assert_eq!(status, StatusCode::OK);
    // Served while the dribbling connection was still open, not after it was let go.
    assert!(
        served_at < drip_closed_at,
        "served after {served_at:?}, the dribbler closed after {drip_closed_at:?}"
    );
    assert_eq!(drip_bytes, 0, "hyper closes without an answer");
    // Closed at the 1 s header timeout, not before, and long before the head would be done
    // (14 s of dribbling); the upper bound leaves a loaded machine 3 s of slack.
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&drip_closed_at),
        "closed after {drip_closed_at:?}"
    );
    let (bytes, _) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(bytes.is_empty());
    assert!(opened.elapsed() < Duration::from_secs(6));
    assert_eq!(inference_requests(&workers[0]), 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(router.addr()).await.unwrap();
    let head = format!("GET /health HTTP/1.1\r\nhost: {}\r\n\r\n", router.addr());
    stream.write_all(head.as_bytes()).await.unwrap();
    let answered = Instant::now();
    let (bytes, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let idle = answered.elapsed();
    assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200"));
    // At the 1 s header timeout (not the 10 s default); 3 s of slack for a loaded machine.
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&idle),
        "idle connection closed after {idle:?}"
    );
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_is_never_forwarded() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let body = completion(2, false);
    let big = "a".repeat(100 * 1024);
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: router\r\ncookie: {big}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(router.addr()).await.unwrap();
    // The router may stop reading before the whole head is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let (bytes, reset) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "reset: {reset}, received: {text:?}"
    );
    assert_eq!(inference_requests(&workers[0]), 0);

    // A large head under the limit passes.
    let cookie = "b".repeat(32 * 1024);
    let reply = send(
        Method::POST,
        &format!("{}/v1/completions", router.url()),
        &[("content-type", "application/json"), ("cookie", &cookie)],
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(inference_requests(&workers[0]), 1);
}

/// Send raw bytes on a fresh connection and read everything the router answers.
async fn raw_exchange(router: &vllm_router::server::RouterHandle, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(router.addr()).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (bytes, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn conflicting_content_lengths_get_400_and_are_never_forwarded() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let body = completion(2, false);
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len(),
        body.len() - 10,
    );
    let answer = raw_exchange(&router, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");

    // A transfer coding other than chunked cannot be framed either.
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\ntransfer-encoding: gzip\r\n\r\n{body}"
    );
    let answer = raw_exchange(&router, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(inference_requests(&workers[0]), 0);
}

#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_the_connection_closed() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let body = completion(2, false);
    // A classic CL.TE smuggling attempt: were the length believed, the router would read 4
    // bytes of chunk framing as the body and take the rest for a second request.
    let smuggled = "GET /v1/models HTTP/1.1\r\nhost: router\r\n\r\n";
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{smuggled}",
        body.len()
    );
    let answer = raw_exchange(&router, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "the bytes after the chunked body were not served as a request: {answer:?}"
    );
    let records: Vec<_> = workers[0]
        .records()
        .into_iter()
        .filter(|r| r.path == "/v1/completions")
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].body_len, body.len(), "the whole chunked body");
    let framing: Vec<_> = records[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "content-length" || k == "transfer-encoding")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let length = body.len().to_string();
    assert_eq!(framing, [("content-length", length.as_str())], "re-framed");
}

#[tokio::test]
async fn x_forwarded_for_gets_the_client_address_appended() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let url = format!("{}/v1/completions", router.url());
    let json = [("content-type", "application/json")];
    send(
        Method::POST,
        &url,
        &[json[0], ("x-forwarded-for", "1.2.3.4")],
        completion(2, false),
    )
    .await;
    send(Method::POST, &url, &json, completion(2, false)).await;

    let seen: Vec<Vec<String>> = workers[0]
        .records()
        .iter()
        .filter(|r| r.path == "/v1/completions")
        .map(|r| {
            r.headers
                .iter()
                .filter(|(k, _)| k == "x-forwarded-for")
                .map(|(_, v)| v.clone())
                .collect()
        })
        .collect();
    assert_eq!(
        seen,
        [
            vec!["1.2.3.4, 127.0.0.1".to_owned()],
            vec!["127.0.0.1".to_owned()]
        ]
    );
}

async fn readiness(app: &std::sync::Arc<App>) -> StatusCode {
    let service = TowerToHyperService::new(routes(std::sync::Arc::clone(app)));
    let request = Request::get("/readiness")
        .body(Empty::<Bytes>::new())
        .unwrap();
    service.call(request).await.unwrap().status()
}

fn slow(itl_ms: u64) -> SimConfig {
    SimConfig {
        itl: Duration::from_millis(itl_ms),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_lets_a_stream_finish() {
    let workers = sims([slow(100)]).await;
    let router = router(&workers).await;
    let app = std::sync::Arc::clone(router.app());
    let addr = router.addr();
    assert_eq!(readiness(&app).await, StatusCode::OK);
    let mut client = RawClient::post(addr, "/v1/completions", &completion(10, true)).await;
    client.read_until("data: ", 1).await;

    let stopping = tokio::spawn(router.shutdown());
    eventually(Duration::from_secs(1), || app.is_draining().then_some(())).await;
    assert_eq!(readiness(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener is closed");

    client.read_until("data: [DONE]", 1).await;
    assert_eq!(occurrences(&client.received, b"data: "), 11);
    tokio::time::timeout(Duration::from_secs(2), stopping)
        .await
        .expect("the drain ends once the stream did")
        .unwrap()
        .unwrap();
    read_until_closed(&mut client.stream, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn past_the_shutdown_timeout_a_stream_ends_with_an_error_event() {
    // Ten tokens a second apart: about 9 s of stream left when the 1 s shutdown timeout runs.
    let workers = sims([slow(1000)]).await;
    let router = router_with(&workers, |a| a.shutdown_timeout_secs = 1).await;
    let mut client = RawClient::post(router.addr(), "/v1/completions", &completion(10, true)).await;
    client.read_until("data: ", 1).await;

    let started = Instant::now();
    let stopping = tokio::spawn(router.shutdown());
    let (rest, _) = read_until_closed(&mut client.stream, Duration::from_secs(4)).await;
    client.received.extend_from_slice(&rest);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown returns")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&client.received);
    assert!(text.contains("shutting down"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    // The timeout, not the end of the stream: 3 s of slack for a loaded machine, and still
    // well before the stream would have ended.
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&took),
        "shutdown took {took:?}"
    );
    eventually(Duration::from_secs(1), || {
        workers[0]
            .records()
            .iter()
            .any(|r| r.cancelled_at.is_some())
            .then_some(())
    })
    .await;
}

/// The `vllm-router` binary on a free port in front of `worker`, and the address it serves.
async fn router_process(worker: &SimServer, extra: &[&str]) -> (Child, SocketAddr) {
    let mut args = vec!["--worker-urls".to_owned(), worker.url()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    spawn_router(&args, &[]).await
}

#[tokio::test]
async fn sigterm_drains_the_open_stream_and_exits_0() {
    let workers = sims([slow(100)]).await;
    let (mut child, addr) = router_process(&workers[0], &[]).await;
    let mut client = RawClient::post(addr, "/v1/completions", &completion(10, true)).await;
    client.read_until("data: ", 1).await;

    signal(&child, "TERM");
    client.read_until("data: [DONE]", 1).await;
    assert_eq!(exit_code(&mut child, Duration::from_secs(3)).await, Some(0));
}

#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once() {
    // Ten tokens a second apart: the drain would last about 9 s.
    let workers = sims([slow(1000)]).await;
    let (mut child, addr) = router_process(&workers[0], &[]).await;
    let mut client = RawClient::post(addr, "/v1/completions", &completion(10, true)).await;
    client.read_until("data: ", 1).await;

    signal(&child, "TERM");
    // The second signal comes once the first one has been acted on (the listener closed for
    // the drain), as an operator's would: not together with it.
    until_refused(addr, Duration::from_secs(5)).await;
    let second = Instant::now();
    signal(&child, "INT");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(5)).await,
        Some(130)
    );
    // At once, not at the end of the drain: 3 s of slack for a loaded machine.
    assert!(second.elapsed() < Duration::from_secs(3));
    let (rest, _) = read_until_closed(&mut client.stream, Duration::from_secs(2)).await;
    client.received.extend_from_slice(&rest);
    assert!(!String::from_utf8_lossy(&client.received).contains("[DONE]"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_its_worker_request_dropped() {
    let workers = sims([SimConfig {
        max_model_len: 4_000_000,
        ..SimConfig::default()
    }])
    .await;
    let router = router_with(&workers, |a| a.client_write_timeout_secs = 1).await;
    // Far more output than the socket buffers hold, and a client that never reads it.
    let body = completion(200_000, true);
    let mut stalled = TcpStream::connect(router.addr()).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let cancelled = eventually(Duration::from_secs(15), || {
        workers[0].records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
    let after = cancelled.saturating_duration_since(started);
    assert!(
        after >= Duration::from_millis(900),
        "dropped before the write timeout: {after:?}"
    );
    let worker = router.app().fleet.snapshot().members()[0].worker.clone();
    eventually(Duration::from_secs(2), || {
        (worker.in_flight() == 0).then_some(())
    })
    .await;
    // Memory stayed bounded: backpressure reached the worker, which never produced it all.
    let record = workers[0].records().pop().unwrap();
    assert!(record.status == 200 && record.cancelled, "{record:?}");
}
