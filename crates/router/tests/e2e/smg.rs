//! SGLang's gateway's users: its flags, with only hosts and ports changed.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn model_alias_routes_to_the_canonical_model_and_is_listed() {
    let workers = sims([
        vllm_sim::SimConfig {
            models: vec!["meta-llama/Llama-3.1-8B-Instruct".into()],
            ..Default::default()
        },
        vllm_sim::SimConfig {
            models: vec!["other".into()],
            ..Default::default()
        },
    ])
    .await;
    let router = router_with(&workers, |a| {
        a.model_alias = vec!["gpt-4o=meta-llama/Llama-3.1-8B-Instruct".into()];
    })
    .await;
    let base = router.url();
    let body =
        r#"{"messages":[{"role":"user","content":"name gpt-4o"}],"model":"gpt-4o","max_tokens":3}"#;
    for _ in 0..3 {
        let r = send(
            http::Method::POST,
            &format!("{base}/v1/chat/completions"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["model"], "meta-llama/Llama-3.1-8B-Instruct");
    }
    // The worker got the canonical name, every other byte as sent.
    let record = workers[0].records().pop().unwrap();
    assert_eq!(
        record.model.as_deref(),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
    assert!(workers[1].records().is_empty());
    let models = get(&format!("{base}/v1/models")).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["meta-llama/Llama-3.1-8B-Instruct", "other", "gpt-4o"]);
    // Case-sensitive, as theirs.
    post_json(
        &format!("{base}/v1/chat/completions"),
        chat("GPT-4O", false),
    )
    .await
    .assert_error(404);
}

#[tokio::test]
async fn the_gateways_command_line_runs_as_written() {
    let workers = fast_sims(2).await;
    let (a, b) = (workers[0].url(), workers[1].url());
    let args = [
        "--worker-urls",
        &a,
        &b,
        "--policy",
        "consistent_hashing",
        "--routing-key-headers",
        "x-user-id",
        "--health-check-endpoint",
        "/health",
        "--model-alias",
        &format!("gpt-4o={MODEL}"),
    ]
    .map(String::from);
    let (mut child, addr) = spawn_router(&args, &[]).await;
    let url = format!("http://{addr}/v1/chat/completions");
    // A user's requests stay on one worker; the alias is served.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = send(
            http::Method::POST,
            &url,
            &[("content-type", "application/json"), ("x-user-id", "alice")],
            chat("gpt-4o", false).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        seen.insert(r.header("x-vllm-router-worker").to_owned());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn file_discovery_follows_the_manifest() {
    let workers = fast_sims(2).await;
    let dir = std::env::temp_dir().join(format!("smg-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("workers.json");
    // The manifest may appear after start.
    let args = [
        "--discovery-provider",
        "file",
        "--discovery-file",
        file.to_str().unwrap(),
        "--worker-startup-timeout-secs",
        "1",
    ]
    .map(String::from);
    let (mut child, addr) = spawn_router(&args, &[]).await;
    let list = format!("http://{addr}/list_workers");
    let urls = || async { get(&list).await.json()["urls"].clone() };
    let write = |workers: &[String]| {
        let entries: Vec<_> = workers.iter().map(|u| json!({"url": u})).collect();
        std::fs::write(&file, json!({"version": 1, "workers": entries}).to_string()).unwrap();
    };
    let until = async |want: serde_json::Value| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = urls().await;
            if now == want || std::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    write(&[workers[0].url()]);
    assert_eq!(
        until(json!([workers[0].url()])).await,
        json!([workers[0].url()])
    );
    // Served once it has listed its models.
    let chat_url = format!("http://{addr}/v1/chat/completions");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while post_json(&chat_url, chat(MODEL, false)).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&[workers[0].url(), workers[1].url()]);
    let both = json!([workers[0].url(), workers[1].url()]);
    assert_eq!(until(both.clone()).await, both);
    // A broken file keeps the last good manifest.
    std::fs::write(&file, "{not json").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(urls().await, both);
    write(&[workers[1].url()]);
    assert_eq!(
        until(json!([workers[1].url()])).await,
        json!([workers[1].url()])
    );
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
