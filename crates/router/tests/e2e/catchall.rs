//! Paths the router does not name reach a worker; fleet-wide worker routes reach every worker
//! and merge; the router's own paths are never forwarded.

use http::Method;
use serde_json::json;

use crate::support::*;

fn hits(worker: &vllm_sim::SimServer, path: &str) -> u64 {
    worker.stats().by_path.get(path).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_lora_adapter_loaded_through_the_router_is_routable_by_name_on_every_worker() {
    let workers = fast_sims(2).await;
    let router = router(&workers).await;
    let base = router.url();
    // Unknown to the fleet before the load.
    post_json(
        &format!("{base}/v1/chat/completions"),
        chat("sql-lora", false),
    )
    .await
    .assert_error(404);
    let loaded = post_json(
        &format!("{base}/v1/load_lora_adapter"),
        json!({"lora_name": "sql-lora", "lora_path": "/adapters/sql"}),
    )
    .await;
    assert_eq!(loaded.status, 200, "{:?}", loaded.body);
    assert_eq!(loaded.header("x-vllm-router-workers"), "2");
    assert!(String::from_utf8_lossy(&loaded.body).contains("sql-lora"));
    for w in &workers {
        assert_eq!(hits(w, "/v1/load_lora_adapter"), 1);
    }
    let models = get(&format!("{base}/v1/models")).await.json();
    assert!(models.to_string().contains("sql-lora"), "{models}");
    // Round robin over both: each worker serves the adapter by name.
    for _ in 0..4 {
        let r = post_json(
            &format!("{base}/v1/chat/completions"),
            chat("sql-lora", false),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["model"], "sql-lora");
    }
    for w in &workers {
        let served = w
            .records()
            .iter()
            .filter(|r| r.model.as_deref() == Some("sql-lora") && r.status == 200)
            .count();
        assert_eq!(served, 2, "{}", w.url());
    }
    // Loading it again: every worker refuses alike, and the router says so as they do.
    post_json(
        &format!("{base}/v1/load_lora_adapter"),
        json!({"lora_name": "sql-lora", "lora_path": "/adapters/sql"}),
    )
    .await
    .assert_error(400);
    let unloaded = post_json(
        &format!("{base}/v1/unload_lora_adapter"),
        json!({"lora_name": "sql-lora"}),
    )
    .await;
    assert_eq!(unloaded.status, 200, "{:?}", unloaded.body);
    post_json(
        &format!("{base}/v1/chat/completions"),
        chat("sql-lora", false),
    )
    .await
    .assert_error(404);
}

#[tokio::test]
async fn a_fleetwide_route_that_part_of_the_fleet_refuses_names_each_worker() {
    let workers = fast_sims(2).await;
    let router = router(&workers).await;
    let base = router.url();
    // Only the first worker has it: unloading succeeds there and fails on the second.
    post_json(
        &format!("{}/v1/load_lora_adapter", workers[0].url()),
        json!({"lora_name": "a", "lora_path": "/a"}),
    )
    .await;
    let r = post_json(
        &format!("{base}/v1/unload_lora_adapter"),
        json!({"lora_name": "a"}),
    )
    .await;
    let v = r.assert_error(404);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("1 of 2 workers"), "{message}");
    let parts = v["workers"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    let statuses: Vec<_> = parts.iter().map(|p| p["status"].as_u64()).collect();
    assert!(
        statuses.contains(&Some(200)) && statuses.contains(&Some(404)),
        "{v}"
    );
    // A worker that is gone makes it a 502.
    workers[1].kill();
    let r = send(Method::POST, &format!("{base}/reset_prefix_cache"), &[], "").await;
    r.assert_error(502);
}

#[tokio::test]
async fn cache_resets_sleep_and_wake_reach_every_worker() {
    let workers = fast_sims(3).await;
    let router = router(&workers).await;
    let base = router.url();
    for (path, target) in [
        ("/reset_prefix_cache", "/reset_prefix_cache"),
        ("/flush_cache", "/reset_prefix_cache"),
        ("/sleep?level=1", "/sleep"),
        ("/wake_up", "/wake_up"),
    ] {
        let r = send(Method::POST, &format!("{base}{path}"), &[], "").await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(r.header("x-vllm-router-workers"), "3", "{path}");
        for w in &workers {
            assert!(hits(w, target) >= 1, "{path} on {}", w.url());
        }
    }
    for w in &workers {
        assert_eq!(hits(w, "/reset_prefix_cache"), 2);
    }
}

#[tokio::test]
async fn unnamed_vllm_routes_reach_a_worker() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let base = router.url();
    let ping = get(&format!("{base}/ping")).await;
    assert_eq!(ping.status, 200, "{:?}", ping.body);
    assert_eq!(hits(&workers[0], "/ping"), 1);
    let message = post_json(
        &format!("{base}/v1/messages"),
        json!({"model": MODEL, "max_tokens": 4,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}),
    )
    .await;
    assert_eq!(message.status, 200, "{:?}", message.body);
    let v = message.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(
        message
            .header("x-vllm-router-worker")
            .contains(&workers[0].url()[7..])
    );
    let invoked = post_json(&format!("{base}/invocations"), chat(MODEL, false)).await;
    assert_eq!(invoked.status, 200, "{:?}", invoked.body);
    assert_eq!(invoked.json()["object"], "chat.completion");
    // A route vLLM may add later: forwarded as it is, the worker's answer back as it is.
    let later = get(&format!("{base}/v1/some_future_route?x=1")).await;
    assert_eq!(later.status, 404);
    assert_eq!(later.json()["error"]["message"], "Not Found");
    assert_eq!(hits(&workers[0], "/v1/some_future_route"), 1);
}

#[tokio::test]
async fn the_routers_own_paths_are_never_forwarded() {
    let workers = fast_sims(1).await;
    // With the admin API on its own port, its paths on the client port are not forwarded.
    let router = router_with(&workers, |a| a.admin_port = Some(0)).await;
    let base = router.url();
    for path in [
        "/workers",
        "/workers/abc",
        "/add_worker?url=http://127.0.0.1:1",
        "/remove_worker?url=x",
        "/list_workers",
        "/metrics",
        "/debug/anything",
        "/v1/load_lora_adapter",
        "/sleep",
        "/flush_cache",
    ] {
        let r = send(Method::POST, &format!("{base}{path}"), &[], "").await;
        let v = r.assert_error(404);
        assert!(
            v["error"]["message"].as_str().unwrap().contains("no route"),
            "{path}: {v}"
        );
        let r = send(Method::GET, &format!("{base}{path}"), &[], "").await;
        r.assert_error(404);
    }
    let seen = workers[0].stats().by_path;
    assert!(
        seen.keys()
            .all(|p| ["/health", "/v1/models", "/metrics"].contains(&p.as_str())),
        "{seen:?}"
    );
    assert!(!seen.contains_key("/metrics") || router.app().config().load_scrape_interval.is_some());
    // On the admin port, the fleet-wide routes work.
    let admin = router.admin_url().unwrap();
    let r = send(
        Method::POST,
        &format!("{admin}/reset_prefix_cache"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn fleetwide_routes_need_the_admin_key_and_never_pass_it_on() {
    let load = r#"{"lora_name":"x","lora_path":"/x"}"#;
    let admin = [
        ("authorization", "Bearer admin-secret"),
        ("content-type", "application/json"),
    ];
    // A worker that would take the admin key, were it passed on: it never sees it.
    let workers = sims([vllm_sim::SimConfig {
        api_key: Some("admin-secret".into()),
        ..Default::default()
    }])
    .await;
    let router = router_with(&workers, |a| a.admin_api_key = Some("admin-secret".into())).await;
    let base = router.url();
    send(Method::POST, &format!("{base}/reset_prefix_cache"), &[], "")
        .await
        .assert_error(401);
    let r = send(
        Method::POST,
        &format!("{base}/v1/load_lora_adapter"),
        &admin,
        load,
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(hits(&workers[0], "/v1/load_lora_adapter"), 1);
    // With the workers' key configured, the workers get that one.
    let workers = sims([vllm_sim::SimConfig {
        api_key: Some("worker-key".into()),
        ..Default::default()
    }])
    .await;
    let router = router_with(&workers, |a| {
        a.admin_api_key = Some("admin-secret".into());
        a.api_key = Some("worker-key".into());
    })
    .await;
    let r = send(
        Method::POST,
        &format!("{}/v1/load_lora_adapter", router.url()),
        &admin,
        load,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}
