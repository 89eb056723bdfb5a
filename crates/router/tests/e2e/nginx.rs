//! The nginx recipe's users: the headers it adds for troubleshooting, its unbuffered
//! streaming, and its weights.

use std::time::{Duration, Instant};

use serde_json::json;
use vllm_sim::SimConfig;

use crate::support::*;

fn addr_of(worker: &vllm_sim::SimServer) -> String {
    worker.url().trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn every_attempt_is_named_in_x_upstream_addr_and_status() {
    let workers = failing_then_healthy().await;
    let router = router_with(&workers, |a| {
        a.health_failure_threshold = 100;
        a.worker_header = vllm_router::cli::WorkerHeader::Nginx;
    })
    .await;
    let url = format!("{}/v1/completions", router.url());
    let body = json!({"model": MODEL, "prompt": "x"});
    let mut direct = None;
    let mut retried = None;
    for _ in 0..10 {
        let r = post_json(&url, body.clone()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let trail = (
            r.header("x-upstream-addr").to_owned(),
            r.header("x-upstream-status").to_owned(),
        );
        if trail.1 == "200" {
            direct = Some(trail);
        } else {
            retried = Some(trail);
        }
        if direct.is_some() && retried.is_some() {
            break;
        }
    }
    let (a, b) = (addr_of(&workers[0]), addr_of(&workers[1]));
    assert_eq!(direct, Some((b.clone(), "200".to_owned())));
    assert_eq!(retried, Some((format!("{a}, {b}"), "500, 200".to_owned())));
    // By default (the URL in x-vllm-router-worker only) and with ids, no upstream addresses.
    let quiet = router_with(&workers[1..], |_| {}).await;
    let r = post_json(&format!("{}/v1/completions", quiet.url()), body.clone()).await;
    assert!(r.headers.get("x-upstream-addr").is_none());
    let quiet = router_with(&workers[1..], |a| {
        a.worker_header = vllm_router::cli::WorkerHeader::Id
    })
    .await;
    let r = post_json(&format!("{}/v1/completions", quiet.url()), body).await;
    assert!(
        r.headers.get("x-upstream-addr").is_none() && r.headers.get("x-upstream-status").is_none()
    );
}

#[tokio::test]
async fn streams_pass_unbuffered_with_the_recipes_read_timeout() {
    let workers = sims([SimConfig {
        itl: Duration::from_millis(100),
        ..SimConfig::default()
    }])
    .await;
    // proxy_read_timeout 300s.
    let router = router_with(&workers, |a| {
        a.stream_idle_timeout_secs = 300;
        a.worker_header = vllm_router::cli::WorkerHeader::Nginx;
    })
    .await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": true});
    let started = Instant::now();
    let mut client = RawClient::post(router.addr(), "/v1/completions", &body.to_string()).await;
    client.read_until("data: ", 2).await;
    // Two events in, while generating the rest takes about two seconds more.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&client.received).to_lowercase();
    assert!(
        text.contains("x-upstream-addr: ") && text.contains("x-upstream-status: 200"),
        "{text}"
    );
    assert!(!text.contains("[done]"));
    client.read_until("[DONE]", 1).await;
}

#[tokio::test]
async fn weighted_follows_static_weights_as_nginx_weight_does() {
    let slow = || SimConfig {
        itl: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let workers = sims([slow(), slow()]).await;
    let dir = std::env::temp_dir().join(format!("nginx-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("router.toml");
    std::fs::write(
        &file,
        format!(
            "policy = \"weighted\"\nload_scrape_interval_ms = 0\n\
             [[workers]]\nurl = \"{}\"\nweight = 3\n[[workers]]\nurl = \"{}\"\nweight = 1\n",
            workers[0].url(),
            workers[1].url()
        ),
    )
    .unwrap();
    let args = ["--config", file.to_str().unwrap()].map(String::from);
    let (mut child, addr) = spawn_router(&args, &[]).await;
    // Streams held open: the weight-3 worker takes three for every one of the other.
    let body =
        json!({"model": MODEL, "prompt": "x", "max_tokens": 500, "stream": true}).to_string();
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = RawClient::post(addr, "/v1/completions", &body).await;
        c.read_until("data: ", 1).await;
        held.push(c);
    }
    let on = |w: &vllm_sim::SimServer| w.records().iter().filter(|r| r.stream).count();
    assert_eq!((on(&workers[0]), on(&workers[1])), (6, 2));
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
