//! What operators see: the Prometheus text over its own listener, `/load-stats` and `/health`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use vllm_router::server::{RouterHandle, serve_metrics};
use vllm_sim::SimConfig;

use crate::support::*;

/// Serve the router's metrics on a loopback port of its own, as `--prometheus-port` does.
async fn metrics_url(router: &RouterHandle) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_metrics(
        listener,
        Arc::clone(router.app()),
        std::future::pending(),
    ));
    format!("http://{addr}/metrics")
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_latencies_tokens_and_worker_load() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| a.load_scrape_interval_ms = 50).await;
    let metrics = metrics_url(&router).await;
    let url = format!("{}/v1/chat/completions", router.url());
    for i in 0..6 {
        let mut body = chat(MODEL, i % 2 == 0);
        body["stream_options"] = json!({"include_usage": true});
        assert_eq!(post_json(&url, body).await.status, 200);
    }
    // A model nobody serves: a 404 whose name never becomes a label.
    post_json(&url, chat("no-such-model-x1", false))
        .await
        .assert_error(404);

    // What Prometheus asks for: OpenMetrics.
    let page = send(
        http::Method::GET,
        &metrics,
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
        "",
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .starts_with("application/openmetrics-text"),
        "{}",
        page.header("content-type")
    );
    let text = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(text.trim_end().ends_with("# EOF"));
    // Anyone else gets the Prometheus text format, where a counter's family has its samples'
    // name.
    let plain = get(&metrics).await;
    assert!(
        plain
            .header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let plain = String::from_utf8(plain.body.to_vec()).unwrap();
    assert!(plain.contains("# TYPE vllm_router_requests_total counter\n"));
    assert!(!plain.contains("# EOF"));
    let route = r#"route="/v1/chat/completions""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"vllm_router_requests_total{{{route},model="{MODEL}",status_class="2xx"}}"#)
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"vllm_router_request_errors_total{{{route},model="other",cause="4xx"}}"#)
        ),
        Some(1.0)
    );
    assert!(!text.contains("no-such-model-x1"));
    let mut streamed = 0.0;
    let mut prompt_tokens = 0.0;
    for w in &workers {
        let at = format!(r#"model="{MODEL}",worker="{}""#, w.url());
        streamed += sample(
            &text,
            &format!("vllm_router_time_to_first_token_seconds_count{{{at}}}"),
        )
        .unwrap_or(0.0);
        prompt_tokens += sample(
            &text,
            &format!(r#"vllm_router_tokens_total{{{at},kind="prompt"}}"#),
        )
        .unwrap_or(0.0);
        let gauge = format!(
            r#"vllm_router_worker_running_requests{{worker="{}",role="regular"}}"#,
            w.url()
        );
        assert!(sample(&text, &gauge).is_some(), "{gauge} in\n{text}");
    }
    assert_eq!(streamed, 3.0, "one first token per streamed request");
    assert!(
        prompt_tokens > 0.0,
        "usage read from streamed and whole answers"
    );
    assert!(
        text.contains("vllm_router_inter_token_latency_seconds_bucket{"),
        "{text}"
    );
}

#[tokio::test]
async fn load_stats_has_the_toml_routers_shape_and_health_counts_by_role() {
    // Paced, so the stream held open below stays open (at no pace its 200 tokens are all
    // generated, forwarded and done before the next request).
    let paced = || SimConfig {
        itl: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let workers = sims([paced(), paced(), paced()]).await;
    let capacity = format!("{}=4", workers[0].url());
    let router = router_with(&workers, |a| {
        a.worker_capacity = vec![capacity.clone()];
        a.load_scrape_interval_ms = 50;
    })
    .await;
    workers[2].kill();
    let base = router.url();
    // Hold one request open on worker 0 (round robin starts there).
    let body =
        json!({"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": true}).to_string();
    let mut open = RawClient::post(router.addr(), "/v1/completions", &body).await;
    open.read_until("data:", 1).await;

    let stats = get(&format!("{base}/load-stats")).await;
    assert_eq!(stats.status, 200);
    let s = stats.json();
    let first = &s["servers"][0];
    assert_eq!(first["url"], workers[0].url());
    assert_eq!(first["current_load"], 1);
    assert_eq!(first["max_capacity"], 4);
    assert_eq!(first["available_capacity"], 3);
    assert_eq!(first["utilization_percent"], 25.0);
    assert_eq!(first["status"], true);
    for key in [
        "num_requests_running",
        "num_requests_waiting",
        "gpu_cache_usage_perc",
        "process_max_fds",
    ] {
        assert!(first["detailed_metrics"].get(key).is_some(), "{key}: {s}");
    }
    assert_eq!(first["role"], "regular");
    assert_eq!(first["breaker"], "closed");
    assert!(s["servers"][1]["max_capacity"].is_null());
    let summary = &s["summary"];
    assert_eq!(summary["total_servers"], 3);
    assert_eq!(summary["total_active_load"], 1);
    assert_eq!(summary["total_capacity"], 4);
    assert_eq!(summary["overall_utilization_percent"], 25.0);

    // Probes find the killed worker down; health stays 200 while others serve.
    eventually(Duration::from_secs(10), || {
        (router.app().fleet.snapshot().healthy_count() == 2).then_some(())
    })
    .await;
    let h = get(&format!("{base}/health")).await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["healthy_workers"], 2);
    assert_eq!(h["unhealthy_workers"], 1);
    assert_eq!(h["total_workers"], 3);
    assert_eq!(h["roles"]["regular"], json!({"healthy": 2, "total": 3}));
    drop(open);
}
