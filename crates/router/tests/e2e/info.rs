//! The router's own routes.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn health_readiness_liveness_version_and_about() {
    let workers = fast_sims(2).await;
    let router = router(&workers).await;
    let base = router.url();

    let health = get(&format!("{base}/health")).await;
    assert_eq!(health.status, 200);
    let h = health.json();
    assert_eq!(
        (h["healthy_workers"].as_u64(), h["total_workers"].as_u64()),
        (Some(2), Some(2))
    );

    assert_eq!(get(&format!("{base}/liveness")).await.status, 200);
    assert_eq!(get(&format!("{base}/readiness")).await.status, 200);
    assert_eq!(
        get(&format!("{base}/version")).await.json()["version"],
        vllm_router::VERSION
    );

    let about = get(&format!("{base}/")).await.json();
    assert_eq!(about["name"], "vllm-router");
    assert_eq!(about["policy"], "round_robin");
    let urls: Vec<&str> = about["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, [workers[0].url(), workers[1].url()]);
    assert_eq!(about["workers"][0]["models"][0], MODEL);
}

#[tokio::test]
async fn a_router_without_healthy_workers_is_alive_but_not_ready() {
    let workers = fast_sims(1).await;
    workers[0].kill();
    let router = router_with(&workers, |a| a.worker_startup_timeout_secs = 0).await;
    let base = router.url();
    assert_eq!(get(&format!("{base}/liveness")).await.status, 200);
    assert_eq!(get(&format!("{base}/readiness")).await.status, 503);
    let health = get(&format!("{base}/health")).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["total_workers"], 1);
    // No worker has listed its models yet: unavailable, not "model does not exist".
    let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
    r.assert_error(503);
}

#[tokio::test]
async fn liveness_answers_from_the_first_second_while_a_worker_is_still_silent() {
    // A worker that accepts connections and never answers: start-up waits the whole timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let args = vllm_router::cli::RouterArgs {
        worker_urls: vec![silent_url],
        prometheus_port: 0,
        worker_startup_timeout_secs: 120,
        health_check_timeout_secs: 1,
        ..vllm_router::cli::RouterArgs::default()
    };
    let config = vllm_router::config::Config::from_args(args).unwrap();
    let starting = tokio::spawn(vllm_router::server::RouterHandle::spawn(listener, config));
    let live = soon(get(&format!("{base}/liveness"))).await;
    assert_eq!(live.status, 200);
    let ready = soon(get(&format!("{base}/readiness"))).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "starting");
    let r = soon(post_json(
        &format!("{base}/v1/chat/completions"),
        chat(MODEL, false),
    ))
    .await;
    r.assert_error(503);
    starting.abort();
    drop(silent);
}

/// `answer`, which must come within two seconds.
async fn soon(answer: impl std::future::Future<Output = Reply>) -> Reply {
    tokio::time::timeout(Duration::from_secs(2), answer)
        .await
        .expect("unanswered during start-up")
}
