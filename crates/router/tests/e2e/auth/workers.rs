//! The workers' bearer key (`--api-key`): sent in place of the client's on forwarded requests
//! and on the router's own calls (model listings, health probes, admission of new workers).

use std::time::Duration;

use serde_json::json;
use vllm_sim::{SimConfig, SimServer};

use super::{chat_as, get_as};
use crate::support::*;

async fn keyed_sims(n: usize) -> Vec<SimServer> {
    sims((0..n).map(|_| SimConfig {
        api_key: Some("worker-key".into()),
        ..SimConfig::default()
    }))
    .await
}

fn authorization_seen(worker: &SimServer) -> Vec<String> {
    worker
        .records()
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(name, _)| name == "authorization")
        .map(|(_, value)| value.clone())
        .collect()
}

#[tokio::test]
async fn the_simulator_refuses_v1_routes_without_its_key_like_vllm() {
    let workers = keyed_sims(1).await;
    let base = workers[0].url();
    let refused = get_as(&format!("{base}/v1/models"), None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json(), json!({"error": "Unauthorized"}));
    assert_eq!(
        get_as(&format!("{base}/v1/models"), Some("Bearer wrong"))
            .await
            .status,
        401
    );
    assert_eq!(
        get_as(&format!("{base}/v1/models"), Some("Bearer worker-key"))
            .await
            .status,
        200
    );
    for open in ["/health", "/metrics"] {
        assert_eq!(get(&format!("{base}{open}")).await.status, 200, "{open}");
    }
}

#[tokio::test]
async fn with_the_workers_key_every_call_to_workers_bears_it() {
    let workers = keyed_sims(2).await;
    let router = router_with(&workers[..1], |a| {
        a.api_key = Some("worker-key".into());
        a.api_keys = vec!["client-key".into()];
        // Probe with the guarded route, failing at the first refusal.
        a.health_check_endpoint = "/v1/models".into();
        a.health_failure_threshold = 1;
        a.load_scrape_interval_ms = 100;
        a.api_key_to_added_workers = true;
    })
    .await;
    let base = router.url();
    // The start-up listing worked: the worker serves.
    let reply = chat_as(&base, Some("Bearer client-key"), false).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let streamed = chat_as(&base, Some("Bearer client-key"), true).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(
        authorization_seen(&workers[0]),
        ["Bearer worker-key", "Bearer worker-key"]
    );

    // Probes go on succeeding: two more rounds (a second apart) reach the guarded route, and
    // the load scrapes (every 100 ms) reach /metrics.
    let calls = |path: &str| workers[0].stats().by_path.get(path).copied().unwrap_or(0);
    let probes_before = calls("/v1/models");
    eventually(Duration::from_secs(10), || {
        (calls("/v1/models") >= probes_before + 2 && calls("/metrics") >= 2).then_some(())
    })
    .await;
    let health = get(&format!("{base}/health")).await.json();
    assert_eq!(health["healthy_workers"], 1, "{health}");

    // Allowed to (--api-key-to-added-workers), a worker added at run time is asked for its
    // models with the key, and serves at once.
    let added = post_json(
        &format!("{base}/workers"),
        json!({ "url": workers[1].url() }),
    )
    .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    assert_eq!(added.json()["healthy"], true);
    assert_eq!(added.json()["models"], json!([MODEL]));
}

#[tokio::test]
async fn without_the_workers_key_a_keyed_worker_never_serves() {
    let workers = keyed_sims(1).await;
    let router = router_with(&workers, |a| a.worker_startup_timeout_secs = 1).await;
    // The start-up listing was refused: the worker stays out of rotation.
    let health = get(&format!("{}/health", router.url())).await.json();
    assert_eq!(health["healthy_workers"], 0, "{health}");
    chat_as(&router.url(), Some("Bearer worker-key"), false)
        .await
        .assert_error(503);
}

#[tokio::test]
async fn without_the_workers_key_the_clients_header_arrives_unchanged() {
    let workers = fast_sims(1).await;
    let keyed = router_with(&workers, |a| a.api_keys = vec!["client-key".into()]).await;
    let reply = chat_as(&keyed.url(), Some("Bearer client-key"), false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(authorization_seen(&workers[0]), ["Bearer client-key"]);

    // Open router, no keys at all: whatever the client sent passes as it came.
    let open = router(&workers).await;
    let reply = chat_as(&open.url(), Some("Bearer anything at all"), false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        authorization_seen(&workers[0]),
        ["Bearer client-key", "Bearer anything at all"]
    );
}

#[tokio::test]
async fn a_worker_added_through_the_admin_api_is_not_given_the_key_unless_allowed() {
    let keyed = keyed_sims(1).await;
    let open = fast_sims(1).await;
    let router = router_with(&[], |a| {
        a.api_key = Some("worker-key".into());
        a.worker_startup_timeout_secs = 1;
    })
    .await;
    let base = router.url();
    // A keyed worker cannot list its models without the key: it never becomes healthy.
    let added = post_json(&format!("{base}/workers"), json!({ "url": keyed[0].url() })).await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    assert_eq!(added.json()["healthy"], false, "{}", added.json());
    // An open worker serves, and sees no Authorization: neither the workers' key nor the
    // client's.
    let added = post_json(&format!("{base}/workers"), json!({ "url": open[0].url() })).await;
    assert_eq!(added.json()["healthy"], true, "{}", added.json());
    let reply = chat_as(&base, Some("Bearer client-secret"), false).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-vllm-router-worker"), open[0].url());
    assert!(
        authorization_seen(&open[0]).is_empty(),
        "{:?}",
        authorization_seen(&open[0])
    );
}
