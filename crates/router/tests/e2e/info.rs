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

#[tokio::test]
async fn health_compat_answers_as_vllm_project_router_does() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| {
        a.health_compat = true;
        a.health_failure_threshold = 1;
    })
    .await;
    let url = format!("{}/health", router.url());
    let up = get(&url).await;
    assert_eq!(
        (up.status.as_u16(), &up.body[..]),
        (200, &b"All servers healthy"[..])
    );
    workers[1].kill();
    let down = loop {
        let r = get(&url).await;
        if r.status != 200 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(down.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&down.body),
        format!("Unhealthy servers: [\"{}\"]", workers[1].url())
    );
}

#[tokio::test]
async fn a_dot_env_file_in_the_working_directory_is_read_below_the_environment() {
    let workers = fast_sims(1).await;
    let dir = std::env::temp_dir().join(format!("dotenv-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        format!(
            "API_KEY_VALIDATION_URLS=https://id.example/api/v4/user\nVLLM_ROUTER_WORKER_URLS={}\nVLLM_ROUTER_PORT=1\n",
            workers[0].url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-router"))
        .arg("--check-config")
        .current_dir(&dir)
        .env_clear()
        .env("VLLM_ROUTER_PORT", "4321")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("https://id.example/api/v4/user"), "{shown}");
    assert!(shown.contains(&workers[0].url()), "{shown}");
    // The environment wins over the file.
    assert!(shown.contains("4321"), "{shown}");
    std::fs::remove_dir_all(&dir).unwrap();
}
