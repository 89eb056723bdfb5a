//! Faults turned into nothing the client notices where that is safe, and a clear error where
//! it is not.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use vllm_sim::SimConfig;

use crate::support::*;

fn slow(itl_ms: u64) -> SimConfig {
    SimConfig {
        itl: Duration::from_millis(itl_ms),
        ..SimConfig::default()
    }
}

fn metrics_of(router: &vllm_router::server::RouterHandle) -> String {
    router.app().render_metrics()
}

#[tokio::test]
async fn a_503_is_retried_on_each_other_worker_then_passed_through() {
    let workers = fast_sims(3).await;
    let router = router(&workers).await;
    let r = send(
        Method::POST,
        &format!("{}/v1/completions", router.url()),
        &[
            ("content-type", "application/json"),
            ("x-return-error", "503"),
        ],
        json!({"model": MODEL, "prompt": "x", "max_tokens": 1}).to_string(),
    )
    .await;
    assert_eq!(r.status, 503, "the last worker's answer, verbatim");
    let attempts: Vec<usize> = workers.iter().map(|w| w.records().len()).collect();
    assert_eq!(
        attempts,
        [1, 1, 1],
        "one attempt on each worker, never the same twice"
    );
    assert!(metrics_of(&router).contains(r#"vllm_router_retries_total{cause="status"} 2"#));
}

#[tokio::test]
async fn a_client_error_is_neither_retried_nor_held_against_the_worker() {
    let workers = fast_sims(2).await;
    let router = router(&workers).await;
    for _ in 0..6 {
        let r = send(
            Method::POST,
            &format!("{}/v1/completions", router.url()),
            &[
                ("content-type", "application/json"),
                ("x-return-error", "400"),
            ],
            json!({"model": MODEL, "prompt": "x"}).to_string(),
        )
        .await;
        assert_eq!(r.status, 400);
    }
    let attempts: usize = workers.iter().map(|w| w.records().len()).sum();
    assert_eq!(attempts, 6, "no retries");
    let snapshot = router.app().fleet.snapshot();
    assert!(
        snapshot.members().iter().all(|m| m.worker.is_healthy()),
        "a 400 never ejects"
    );
}

#[tokio::test]
async fn a_hung_worker_times_out_and_the_stream_is_answered_by_another() {
    let hung = SimConfig {
        hang: true,
        ..SimConfig::default()
    };
    let workers = sims([hung, SimConfig::default()]).await;
    let router = router_with(&workers, |a| a.first_byte_timeout_secs = 1).await;
    let started = Instant::now();
    for _ in 0..2 {
        // A stream's head comes before its first token: a silent worker is a hung one.
        let r = post_json(
            &format!("{}/v1/chat/completions", router.url()),
            chat(MODEL, true),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-vllm-router-worker"), workers[1].url());
    }
    // Two 1 s first-byte timeouts, not a hang; 6 s of slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Round robin sent both requests to the hung worker first; each attempt was abandoned
    // (the worker saw it cancelled) and counted.
    eventually(Duration::from_secs(1), || {
        let cancelled = workers[0]
            .records()
            .iter()
            .filter(|r| r.cancelled_at.is_some())
            .count();
        (cancelled == 2).then_some(())
    })
    .await;
    let m = metrics_of(&router);
    assert!(
        m.contains(r#"vllm_router_timeouts_total{cause="first_byte"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"vllm_router_retries_total{cause="first_byte_timeout"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_worker_answering_5xx_leaves_rotation_after_the_threshold() {
    let failing = SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    };
    let workers = sims([failing, SimConfig::default()]).await;
    let router = router_with(&workers, |a| a.disable_retries = true).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = post_json(
            &format!("{}/v1/completions", router.url()),
            json!({"model": MODEL, "prompt": "x"}),
        )
        .await;
        statuses.push(r.status.as_u16());
    }
    // Without retries each 500 reaches the client, and three in a row eject the worker.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 500).count(),
        3,
        "{statuses:?}"
    );
    assert!(statuses[6..].iter().all(|&s| s == 200), "{statuses:?}");
    assert!(
        !router.app().fleet.snapshot().members()[0]
            .worker
            .is_healthy()
    );
}

#[tokio::test]
async fn a_500_408_or_429_is_retried_on_another_worker_as_the_peer_does() {
    let workers = failing_then_healthy().await;
    let router = router(&workers).await;
    for _ in 0..2 {
        let r = post_json(
            &format!("{}/v1/completions", router.url()),
            json!({"model": MODEL, "prompt": "x"}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // Every failed attempt there was retried on the other worker.
    let failed = workers[0].records().len();
    assert!(failed >= 1);
    let retried = format!(r#"vllm_router_retries_total{{cause="status"}} {failed}"#);
    assert!(metrics_of(&router).contains(&retried), "{retried}");
    // Every worker answering the status: each is tried once, and the last answer passes
    // through.
    let workers = fast_sims(2).await;
    let router = crate::support::router(&workers).await;
    for status in ["408", "429", "500"] {
        let fault = [
            ("content-type", "application/json"),
            ("x-return-error", status),
        ];
        let before: usize = workers.iter().map(|w| w.records().len()).sum();
        let r = send(
            Method::POST,
            &format!("{}/v1/completions", router.url()),
            &fault,
            json!({"model": MODEL, "prompt": "x"}).to_string(),
        )
        .await;
        assert_eq!(r.status.as_str(), status);
        let after: usize = workers.iter().map(|w| w.records().len()).sum();
        assert_eq!(after - before, 2, "{status}: tried on both workers");
    }
}

#[tokio::test]
async fn a_worker_killed_mid_stream_ends_the_stream_with_an_error_event() {
    let workers = sims([slow(200)]).await;
    let router = router(&workers).await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 50, "stream": true}).to_string();
    let mut client = RawClient::post(router.addr(), "/v1/completions", &body).await;
    client.read_until("data: ", 1).await;
    workers[0].kill();
    client.read_until("data: {\"error\"", 1).await;
    let text = String::from_utf8_lossy(&client.received).into_owned();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.contains("\"code\":502"), "{text}");
    let worker = router.app().fleet.snapshot().members()[0].worker.clone();
    eventually(Duration::from_secs(1), || {
        (worker.in_flight() == 0).then_some(())
    })
    .await;
    assert!(metrics_of(&router).contains(r#"vllm_router_stream_errors_total{cause="upstream"} 1"#));
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_at_the_idle_timeout() {
    // Tokens 6 s apart against a 1 s idle timeout.
    let workers = sims([slow(6000)]).await;
    let router = router_with(&workers, |a| a.stream_idle_timeout_secs = 1).await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": true}).to_string();
    let mut client = RawClient::post(router.addr(), "/v1/completions", &body).await;
    client.read_until("data: ", 1).await;
    let stalled = Instant::now();
    client.read_until("data: {\"error\"", 1).await;
    let after = stalled.elapsed();
    // At the idle timeout: 3 s of slack for a loaded machine, and still before the next token.
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "{after:?}"
    );
    let text = String::from_utf8_lossy(&client.received).into_owned();
    assert!(
        text.contains("\"code\":504") && !text.contains("[DONE]"),
        "{text}"
    );
    // The router dropped the worker's request, so the engine can free its KV cache.
    eventually(Duration::from_secs(1), || {
        workers[0].records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
}

#[tokio::test]
async fn over_capacity_is_a_429_with_retry_after_while_a_stream_holds_the_slot() {
    let workers = sims([slow(200)]).await;
    let router = router_with(&workers, |a| {
        a.max_concurrent_requests = 1;
        a.queue_size = 0;
    })
    .await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": true}).to_string();
    let mut holder = RawClient::post(router.addr(), "/v1/completions", &body).await;
    holder.read_until("data: ", 1).await;

    let r = post_json(
        &format!("{}/v1/completions", router.url()),
        json!({"model": MODEL, "prompt": "y"}),
    )
    .await;
    let v = r.assert_error(429);
    assert_eq!(v["error"]["type"], "RateLimitError");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(
        workers[0].records().len(),
        1,
        "the refused request never reached the worker"
    );
    let m = metrics_of(&router);
    assert!(
        m.contains(r#"vllm_router_admission_refusals_total{cause="queue_full"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_queued_request_is_served_when_the_slot_frees_at_the_end_of_the_stream() {
    let workers = sims([slow(100)]).await;
    let router = router_with(&workers, |a| {
        a.max_concurrent_requests = 1;
        a.queue_size = 4;
    })
    .await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 6, "stream": true}).to_string();
    let mut holder = RawClient::post(router.addr(), "/v1/completions", &body).await;
    holder.read_until("data: ", 1).await;
    let queued_at = Instant::now();
    let r = post_json(
        &format!("{}/v1/completions", router.url()),
        json!({"model": MODEL, "prompt": "y", "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 200);
    // It waited for the stream's remaining five tokens, 100 ms apart.
    assert!(
        queued_at.elapsed() >= Duration::from_millis(300),
        "{:?}",
        queued_at.elapsed()
    );
    holder.read_until("data: [DONE]", 1).await;
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_is_never_forwarded() {
    let workers = sims([slow(100)]).await;
    let router = router_with(&workers, |a| {
        a.max_concurrent_requests = 1;
        a.queue_size = 4;
    })
    .await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 8, "stream": true}).to_string();
    let mut holder = RawClient::post(router.addr(), "/v1/completions", &body).await;
    holder.read_until("data: ", 1).await;

    let leaver = RawClient::post(
        router.addr(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "z"}).to_string(),
    )
    .await;
    let admission = &router.app().admission;
    eventually(Duration::from_secs(2), || {
        (admission.queued() == 1).then_some(())
    })
    .await;
    drop(leaver);
    eventually(Duration::from_secs(2), || {
        (admission.queued() == 0).then_some(())
    })
    .await;

    holder.read_until("data: [DONE]", 1).await;
    let after = post_json(
        &format!("{}/v1/completions", router.url()),
        json!({"model": MODEL, "prompt": "w", "max_tokens": 1}),
    )
    .await;
    assert_eq!(after.status, 200);
    let prompts: Vec<usize> = workers[0].records().iter().map(|r| r.body_len).collect();
    assert_eq!(
        prompts.len(),
        2,
        "only the holder and the later request reached the worker: {prompts:?}"
    );
}

#[tokio::test]
async fn a_circuit_breaker_opens_lets_one_trial_through_and_closes_on_recovery() {
    let failing = SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    };
    let workers = sims([failing, SimConfig::default()]).await;
    let router = router_with(&workers, |a| {
        // Each failure reaches the client, so the breaker's work shows in the answers.
        a.disable_retries = true;
        a.health_failure_threshold = 100;
        a.cb_failure_threshold = 2;
        a.cb_success_threshold = 1;
        a.cb_timeout_duration_secs = 1;
    })
    .await;
    let url = format!("{}/v1/completions", router.url());
    let batch = |n: usize| {
        let url = url.clone();
        async move {
            let mut failed = 0;
            for _ in 0..n {
                let r = post_json(
                    &url,
                    json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
                )
                .await;
                failed += usize::from(r.status == 500);
            }
            failed
        }
    };
    assert_eq!(
        batch(8).await,
        2,
        "two failures open the breaker; the rest go to the other worker"
    );
    assert!(metrics_of(&router).contains(r#"vllm_router_worker_breaker_state{worker="#));

    // The breaker's 1 s timeout passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = workers[0].records().len();
    assert_eq!(
        batch(6).await,
        1,
        "half-open: one trial, which fails and reopens"
    );
    assert_eq!(workers[0].records().len(), before + 1);

    workers[0].set_error_rate(0.0);
    // The reopened breaker's 1 s timeout passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(batch(6).await, 0);
    assert!(
        workers[0].records().len() >= before + 3,
        "closed again: the worker is back in rotation"
    );
}

#[tokio::test]
async fn a_retryable_status_with_no_time_left_for_the_backoff_passes_through_verbatim() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| {
        a.request_timeout_secs = 1;
        a.retry_initial_backoff_ms = 2000;
        a.retry_max_backoff_ms = 2000;
    })
    .await;
    let r = send(
        Method::POST,
        &format!("{}/v1/completions", router.url()),
        &[
            ("content-type", "application/json"),
            ("x-return-error", "503"),
        ],
        json!({"model": MODEL, "prompt": "x"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(
        !r.header("x-vllm-router-worker").is_empty(),
        "the worker's own answer, not the router's"
    );
    let attempts: usize = workers.iter().map(|w| w.records().len()).sum();
    assert_eq!(
        attempts, 1,
        "no retry: the backoff would outlive the request"
    );
}

/// A chat completion of `tokens` tokens that does not stream.
fn whole(tokens: u64) -> serde_json::Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long essay"}],
        "max_tokens": tokens,
        "stream": false,
    })
}

#[tokio::test]
async fn a_long_whole_answer_outlives_the_first_byte_timeout_on_its_worker() {
    // About 2.5 s of generation against a 1 s first-byte timeout.
    let workers = sims([slow(250), slow(250)]).await;
    let router = router_with(&workers, |a| a.first_byte_timeout_secs = 1).await;
    let r = post_json(&format!("{}/v1/chat/completions", router.url()), whole(10)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sent: usize = workers.iter().map(|w| w.records().len()).sum();
    assert_eq!(sent, 1, "the generation ran once, on one worker");
    let m = metrics_of(&router);
    assert!(
        !m.contains("vllm_router_retries_total{cause=\"first_byte_timeout\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn a_whole_answer_past_the_request_timeout_is_a_504_and_not_run_again_elsewhere() {
    let hung = || SimConfig {
        hang: true,
        ..SimConfig::default()
    };
    let workers = sims([hung(), hung(), hung()]).await;
    let router = router_with(&workers, |a| {
        a.first_byte_timeout_secs = 1;
        a.request_timeout_secs = 3;
    })
    .await;
    let started = Instant::now();
    let r = post_json(&format!("{}/v1/chat/completions", router.url()), whole(4)).await;
    r.assert_error(504);
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    let sent: usize = workers.iter().map(|w| w.records().len()).sum();
    assert_eq!(sent, 1, "no other worker was asked to generate it again");
}

#[tokio::test]
async fn a_silent_worker_failing_its_health_checks_is_left_for_another() {
    let hung = SimConfig {
        hang: true,
        ..SimConfig::default()
    };
    let workers = sims([hung, SimConfig::default()]).await;
    let router = router_with(&workers, |a| {
        a.first_byte_timeout_secs = 1;
        // Every probe fails (the sims have no such path), without taking workers out.
        a.health_check_endpoint = "/sim/no-such-health".into();
        a.health_failure_threshold = 1000;
    })
    .await;
    let started = Instant::now();
    let r = post_json(&format!("{}/v1/chat/completions", router.url()), whole(4)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-vllm-router-worker"), workers[1].url());
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
