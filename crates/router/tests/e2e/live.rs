//! The live view of the fleet, `GET /fleet`, under real traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use vllm_sim::SimConfig;

use crate::support::*;

/// The sims' fixed time to first token.
const TTFT: Duration = Duration::from_millis(40);

/// `GET /fleet` (with `query`), as JSON, after checking it is answered fresh.
async fn fleet(base: &str, query: &str) -> Value {
    let reply = get(&format!("{base}/fleet{query}")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(reply.header("content-type"), "application/json");
    reply.json()
}

/// Poll `GET /fleet` until `check` holds, for up to `within`.
async fn fleet_until(base: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let view = fleet(base, "").await;
        if check(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {view:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rows(view: &Value) -> &Vec<Value> {
    view["workers"].as_array().unwrap()
}

fn urls(view: &Value) -> Vec<&str> {
    rows(view)
        .iter()
        .map(|w| w["url"].as_str().unwrap())
        .collect()
}

/// Requests sent in a loop by a few clients, streamed (with usage) and not, on one long
/// prompt so workers find it in their prefix cache.
struct Traffic {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(base: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let prompt = "Tell me about load balancers and their queues. ".repeat(40);
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (stop, url, prompt) = (
                Arc::clone(&stop),
                format!("{base}/v1/chat/completions"),
                prompt.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    let stream = n % 2 == 0;
                    let body = json!({
                        "model": MODEL,
                        "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": 4,
                        "stream": stream,
                        "stream_options": {"include_usage": true},
                    });
                    let reply = post_json(&url, body).await;
                    assert_eq!(reply.status, 200, "{:?}", reply.body);
                    n += 1;
                }
            }));
        }
        Self {
            stop,
            clients: tasks,
        }
    }

    /// Stop once each client's request in progress ends; fails if a request failed.
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("every request succeeds");
        }
    }
}

#[tokio::test]
async fn every_worker_shows_live_numbers_under_traffic() {
    let workers = sims((0..3).map(|_| SimConfig {
        ttft: TTFT,
        itl: Duration::from_millis(2),
        ..SimConfig::default()
    }))
    .await;
    let router = router_with(&workers, |a| a.load_scrape_interval_ms = 100).await;
    let base = router.url();

    let idle = fleet(&base, "").await;
    assert_eq!(
        urls(&idle),
        workers.iter().map(|w| w.url()).collect::<Vec<_>>()
    );
    assert_eq!(idle["summary"]["workers"], 3);
    assert_eq!(idle["summary"]["policy"], "round_robin");
    assert_eq!(idle["summary"]["version"], vllm_router::VERSION);
    assert_eq!(
        (idle["interval_ms"].clone(), idle["window_ms"].clone()),
        (json!(1000), json!(30000))
    );

    let traffic = Traffic::start(&base, 6);
    let busy = fleet_until(&base, Duration::from_secs(15), |v| {
        v["summary"]["req_per_sec"].as_f64() > Some(0.0)
            && rows(v)
                .iter()
                .all(|w| w["req_per_sec"].as_f64() > Some(0.0) && w["ttft_p50_ms"].is_number())
    })
    .await;
    let ttft_ms = TTFT.as_secs_f64() * 1000.0;
    for w in rows(&busy) {
        let (p50, p99) = (
            w["ttft_p50_ms"].as_f64().unwrap(),
            w["ttft_p99_ms"].as_f64().unwrap(),
        );
        assert!(
            p50 >= ttft_ms && p50 < ttft_ms + 400.0,
            "p50 {p50} ms against the sims' {ttft_ms} ms: {w}"
        );
        assert!(p99 >= p50, "{w}");
        let hit = w["cache_hit_rate"].as_f64().unwrap();
        assert!(hit > 0.0 && hit <= 1.0, "the prompt repeats: {w}");
        assert_eq!(
            (w["healthy"].clone(), w["breaker"].clone()),
            (json!(true), json!("closed"))
        );
        assert_eq!(w["models"], json!([MODEL]));
        assert!(
            w["running"].is_number() && w["kv_cache_usage"].is_number(),
            "{w}"
        );
        assert!(!w["history"].as_array().unwrap().is_empty());
    }
    let summary = &busy["summary"];
    assert!(
        summary["ttft_p50_ms"].as_f64().unwrap() >= ttft_ms,
        "{summary}"
    );
    assert!(
        summary["cache_hit_rate"].as_f64().unwrap() > 0.0,
        "{summary}"
    );

    // The numbers move: requests add up and a new point joins each history every second.
    let later = fleet_until(&base, Duration::from_secs(10), |v| {
        v["sampled_at_ms"].as_u64() >= busy["sampled_at_ms"].as_u64().map(|t| t + 2000)
    })
    .await;
    traffic.stop().await;
    for (before, after) in rows(&busy).iter().zip(rows(&later)) {
        assert!(
            after["requests_total"].as_u64() > before["requests_total"].as_u64(),
            "{before} then {after}"
        );
    }
    let points = |v: &Value| v["history"].as_array().unwrap().len();
    assert!(points(&later) >= points(&busy) + 2, "{later:#}");
    let last = later["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["t_ms"], later["sampled_at_ms"]);
    assert!(last["req_per_sec"].as_f64() > Some(0.0), "{last}");
}

#[tokio::test]
async fn a_killed_worker_turns_unhealthy_and_a_removed_one_leaves_the_view() {
    let workers = fast_sims(3).await;
    let router = router(&workers).await;
    let base = router.url();
    for _ in 0..6 {
        let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, true)).await;
        assert_eq!(r.status, 200);
    }
    fleet_until(&base, Duration::from_secs(5), |v| {
        rows(v)
            .iter()
            .all(|w| !w["history"].as_array().unwrap().is_empty())
            && v["summary"]["healthy"] == 3
    })
    .await;

    workers[0].kill();
    let down = fleet_until(&base, Duration::from_secs(15), |v| {
        rows(v)[0]["healthy"] == false
    })
    .await;
    assert_eq!(down["summary"]["healthy"], 2);
    assert_eq!(rows(&down)[1]["healthy"], true);

    // The view's id is the admin API's: remove worker 1 by it.
    let id = rows(&down)[1]["id"].as_str().unwrap().to_owned();
    let removed = send(Method::DELETE, &format!("{base}/workers/{id}"), &[], "").await;
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    let gone = fleet_until(&base, Duration::from_secs(5), |v| rows(v).len() == 2).await;
    assert_eq!(urls(&gone), [workers[0].url(), workers[2].url()]);
    assert_eq!(gone["summary"]["workers"], 2);
    assert!(!gone.to_string().contains(&workers[1].url()), "{gone:#}");
}

#[tokio::test]
async fn the_view_is_a_client_route_and_history_is_limited_on_request() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| a.api_keys = vec!["k1".into()]).await;
    let base = router.url();
    let url = format!("{base}/fleet");
    send(Method::GET, &url, &[], "").await.assert_error(401);
    send(Method::GET, &url, &[("authorization", "Bearer wrong")], "")
        .await
        .assert_error(401);

    let with_key = |query: &'static str| {
        let url = format!("{url}{query}");
        async move { send(Method::GET, &url, &[("authorization", "Bearer k1")], "").await }
    };
    // Three samples or more, then ask for fewer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = with_key("").await;
        assert_eq!(reply.status, 200);
        if reply.json()["history"].as_array().unwrap().len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no history: {:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lengths = |v: &Value| {
        let mut all = vec![v["history"].as_array().unwrap().len()];
        all.extend(
            rows(v)
                .iter()
                .map(|w| w["history"].as_array().unwrap().len()),
        );
        all
    };
    assert_eq!(lengths(&with_key("?history=2").await.json()), [2, 2, 2]);
    assert_eq!(lengths(&with_key("?history=0").await.json()), [0, 0, 0]);
    let most = with_key("?history=100000").await;
    assert_eq!(most.status, 200);
    assert!(lengths(&most.json()).iter().all(|n| (3..=300).contains(n)));
    with_key("?history=lots").await.assert_error(400);
    with_key("?history=-1").await.assert_error(400);
}

#[tokio::test]
async fn the_demos_clients_move_every_worker_and_reuse_the_prefix_cache() {
    let workers = fast_sims(3).await;
    // Round robin, so every worker is sure to see traffic; conversations still come back to
    // workers that hold their earlier turns.
    let router = router(&workers).await;
    let clients = vllm_router::demo::traffic::spawn(router.url(), MODEL.to_owned(), 40.0);
    let view = fleet_until(&router.url(), Duration::from_secs(15), |v| {
        v["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["requests_total"].as_u64() > Some(0)))
            && v["summary"]["cache_hit_rate"].as_f64() > Some(0.0)
    })
    .await;
    clients.abort();
    assert!(
        view["summary"]["req_per_sec"].as_f64() > Some(0.0),
        "{view}"
    );
}
