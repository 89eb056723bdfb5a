//! Many models behind one address: route by `model`, list each once, 404 the unknown.

use std::time::Duration;

use serde_json::json;
use vllm_sim::SimConfig;

use crate::support::*;

fn serving(models: &[&str]) -> SimConfig {
    SimConfig {
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn requests_go_to_workers_that_serve_their_model() {
    let workers = sims([serving(&["llama", "shared"]), serving(&["qwen", "shared"])]).await;
    let router = router(&workers).await;
    let completions = format!("{}/v1/completions", router.url());
    for _ in 0..3 {
        let r = post_json(
            &completions,
            json!({"model": "llama", "prompt": "a", "max_tokens": 1}),
        )
        .await;
        assert_eq!(r.header("x-vllm-router-worker"), workers[0].url());
        let r = post_json(
            &completions,
            json!({"model": "qwen", "prompt": "a", "max_tokens": 1}),
        )
        .await;
        assert_eq!(r.header("x-vllm-router-worker"), workers[1].url());
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = post_json(
            &completions,
            json!({"model": "shared", "prompt": "a", "max_tokens": 1}),
        )
        .await;
        assert_eq!(r.status, 200);
        seen.push(r.header("x-vllm-router-worker").to_owned());
    }
    assert!(
        seen.contains(&workers[0].url()) && seen.contains(&workers[1].url()),
        "{seen:?}"
    );

    let list = get(&format!("{}/v1/models", router.url())).await.json();
    assert_eq!(list["object"], "list");
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["llama", "qwen", "shared"]);
    assert_eq!(
        list["data"][0]["object"], "model",
        "cards pass through as the worker sent them"
    );
}

#[tokio::test]
async fn an_unknown_model_is_a_404_listing_the_models_served() {
    let workers = sims([serving(&["llama"]), serving(&["qwen"])]).await;
    let router = router(&workers).await;
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat("gpt-5", false),
    )
    .await;
    let v = r.assert_error(404);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-5") && message.contains("llama") && message.contains("qwen"),
        "{message}"
    );
    assert_eq!(v["error"]["param"], "model");
    assert!(
        workers.iter().all(|w| w.records().is_empty()),
        "no upstream call"
    );
}

#[tokio::test]
async fn models_of_unhealthy_workers_are_not_listed() {
    let workers = sims([serving(&["llama"]), serving(&["qwen"])]).await;
    let router = router(&workers).await;
    workers[1].kill();
    let url = format!("{}/v1/models", router.url());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = get(&url).await.json();
        let ids: Vec<String> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        if ids == ["llama"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still listed: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The model is known but nobody healthy serves it: 503, not 404.
    let r = post_json(
        &format!("{}/v1/completions", router.url()),
        json!({"model": "qwen", "prompt": "a"}),
    )
    .await;
    r.assert_error(503);
}
