use std::sync::Arc;

use http::HeaderValue;

use super::*;
use crate::admission::AdmissionConfig;
use crate::config::WorkerUrl;
use crate::fleet::{Watcher, Worker};
use crate::telemetry::exchange::{Exchange, Outcome};
use crate::telemetry::trace::TraceId;

fn worker(url: &str) -> Arc<Worker> {
    let w = Arc::new(Worker::new(WorkerUrl::parse("--worker-urls", url).unwrap()));
    w.set_healthy(true);
    w
}

fn fleet(workers: &[&Arc<Worker>]) -> Snapshot {
    Snapshot::of_workers(workers.iter().copied())
}

fn render(metrics: &Metrics, snapshot: &Snapshot) -> String {
    metrics.render(snapshot, &Admission::new(AdmissionConfig::default()))
}

fn has(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
}

#[test]
fn renders_decisions_and_workers_without_double_counting() {
    let metrics = Metrics::default();
    metrics.decided("cache_aware", "cached prefix: holder");
    metrics.decided("cache_aware", "cached prefix: holder");
    let w = worker("http://w:1");
    let _held = w.begin();
    let snap = fleet(&[&w]);
    let text = render(&metrics, &snap);
    has(
        &text,
        r#"vllm_router_routing_decisions_total{policy="cache_aware",reason="cached prefix: holder"} 2"#,
    );
    has(
        &text,
        r#"vllm_router_worker_healthy{worker="http://w:1",role="regular"} 1"#,
    );
    has(
        &text,
        r#"vllm_router_worker_in_flight{worker="http://w:1",role="regular"} 1"#,
    );
    has(
        &text,
        r#"vllm_router_worker_requests_total{worker="http://w:1",role="regular"} 1"#,
    );
    has(&text, "vllm_router_admission_queue_depth 0");
    has(
        &text,
        &format!(
            r#"vllm_router_build_info{{version="{}"}} 1"#,
            crate::VERSION
        ),
    );
    let again = render(&metrics, &snap);
    has(
        &again,
        r#"vllm_router_worker_requests_total{worker="http://w:1",role="regular"} 1"#,
    );
}

const STREAM: [&str; 3] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":50}}}\n\ndata: [DONE]\n\n",
];

#[tokio::test(start_paused = true)]
async fn a_streamed_exchange_records_latencies_tokens_and_the_prediction() {
    let metrics = Metrics::new();
    let w = worker("http://w:1");
    let mut exchange = Exchange::begin(
        Arc::clone(&metrics),
        "POST",
        "/v1/chat/completions",
        HeaderValue::from_static("req-1"),
        TraceId::random(),
    );
    exchange.set_model(Some("m"));
    exchange.model_is_served();
    tokio::time::advance(Duration::from_millis(40)).await;
    exchange.answered(&w, 200, true, Some(0.75));
    for frame in STREAM {
        tokio::time::advance(Duration::from_millis(10)).await;
        exchange.frame(frame.as_bytes());
    }
    exchange.end(Outcome::Complete);
    drop(exchange);
    let text = render(&metrics, &fleet(&[&w]));
    let at = r#"model="m",worker="http://w:1""#;
    has(
        &text,
        r#"vllm_router_requests_total{route="/v1/chat/completions",model="m",status_class="2xx"} 1"#,
    );
    has(
        &text,
        &format!("vllm_router_time_to_first_token_seconds_sum{{{at}}} 0.05"),
    );
    has(
        &text,
        &format!("vllm_router_inter_token_latency_seconds_count{{{at}}} 2"),
    );
    has(
        &text,
        &format!("vllm_router_e2e_request_latency_seconds_sum{{{at}}} 0.07"),
    );
    has(
        &text,
        &format!(r#"vllm_router_tokens_total{{{at},kind="prompt"}} 100"#),
    );
    has(
        &text,
        &format!(r#"vllm_router_tokens_total{{{at},kind="completion"}} 2"#),
    );
    has(
        &text,
        &format!(r#"vllm_router_tokens_total{{{at},kind="cached"}} 50"#),
    );
    has(&text, "vllm_router_prefix_prediction_error_sum 0.25");
    has(
        &text,
        r#"vllm_router_cached_tokens_predicted_total{worker="http://w:1"} 75.0"#,
    );
    has(
        &text,
        r#"vllm_router_cached_tokens_reported_total{worker="http://w:1"} 50"#,
    );
    assert!(!text.contains("request_errors_total{"), "{text}");

    // The worker leaves: its series go with it.
    let text = render(&metrics, &fleet(&[]));
    assert!(!text.contains("http://w:1"), "{text}");
}

#[tokio::test]
async fn refusals_cuts_and_departures_are_errors_and_unserved_models_are_not_labels() {
    let metrics = Metrics::new();
    let w = worker("http://w:1");
    let mut refused = Exchange::begin(
        Arc::clone(&metrics),
        "POST",
        "/v1/completions",
        HeaderValue::from_static("r"),
        TraceId::random(),
    );
    refused.set_model(Some("made-up-by-a-client"));
    refused.refused(404, "no such model".into());
    drop(refused);
    let mut cut = Exchange::begin(
        Arc::clone(&metrics),
        "POST",
        "/v1/completions",
        HeaderValue::from_static("c"),
        TraceId::random(),
    );
    cut.set_model(Some("m"));
    cut.answered(&w, 200, true, None);
    cut.frame(b"data: {}\n\n");
    cut.end(Outcome::Cut("stream_idle"));
    drop(cut);
    let mut gone = Exchange::begin(
        Arc::clone(&metrics),
        "POST",
        "/v1/completions",
        HeaderValue::from_static("g"),
        TraceId::random(),
    );
    gone.answered(&w, 200, false, None);
    drop(gone);
    let text = render(&metrics, &fleet(&[&w]));
    assert!(!text.contains("made-up-by-a-client"), "{text}");
    has(
        &text,
        r#"vllm_router_request_errors_total{route="/v1/completions",model="other",cause="4xx"} 1"#,
    );
    has(
        &text,
        r#"vllm_router_request_errors_total{route="/v1/completions",model="m",cause="stream_idle"} 1"#,
    );
    has(
        &text,
        r#"vllm_router_request_errors_total{route="/v1/completions",model="none",cause="client_gone"} 1"#,
    );
    // Only complete responses count toward the end-to-end latency.
    let e2e: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vllm_router_e2e_request_latency_seconds_count{"))
        .collect();
    assert!(
        !e2e.is_empty() && e2e.iter().all(|l| l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn prometheus_text_names_counter_families_by_their_samples() {
    let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n# HELP a_latency_seconds Latency.\n# TYPE a_latency_seconds histogram\n# UNIT a_latency_seconds seconds\na_latency_seconds_sum 1.5\na_latency_seconds_count 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
    assert_eq!(
        to_prometheus_text(openmetrics),
        "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n# HELP a_latency_seconds Latency.\n# TYPE a_latency_seconds histogram\na_latency_seconds_sum 1.5\na_latency_seconds_count 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
    );
}

/// The sample names of an exposition text.
fn sample_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_series_the_grafana_dashboard_queries_is_exported() {
    let metrics = Metrics::new();
    let w = worker("http://w:1");
    w.set_engine_sample(Some(Arc::new(crate::fleet::EngineSample {
        metrics: crate::fleet::exposition::parse(
            "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.5\n",
        ),
        preempting: false,
        in_flight_at_scrape: 0,
        fresh_until: std::time::Instant::now() + Duration::from_secs(60),
    })));
    metrics.decided("p", "r");
    metrics.retried("reset");
    metrics.timed_out("total");
    metrics.stream_failed("upstream");
    metrics.refused("queue_full");
    metrics.config_reload("applied");
    metrics.pd_plan("prefilled");
    metrics.pd_leg("prefill", "ready", Instant::now());
    let mut exchange = Exchange::begin(
        Arc::clone(&metrics),
        "POST",
        "/v1/completions",
        HeaderValue::from_static("r"),
        TraceId::random(),
    );
    exchange.answered(&w, 500, true, Some(0.5));
    for frame in STREAM {
        exchange.frame(frame.as_bytes());
    }
    exchange.end(Outcome::Complete);
    drop(exchange);
    let exported = sample_names(&render(&metrics, &fleet(&[&w])));

    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../../deploy/grafana/vllm-router.json"
    ))
    .unwrap();
    let mut queried = HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("vllm_router_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\n{exported:?}"
    );
}

#[tokio::test]
async fn a_departed_workers_series_go_when_it_leaves_without_a_scrape() {
    use crate::config::WorkerSpec;
    use crate::fleet::{Fleet, FleetEvent};
    let metrics = Metrics::new();
    let fleet = Fleet::start(&[], Vec::new());
    fleet.watch(Arc::clone(&metrics) as Arc<dyn Watcher>);
    // Churn: workers join, serve a request each, and leave; nobody scrapes /metrics.
    for i in 0..50 {
        let url = format!("http://10.9.0.{i}:8000");
        let spec = WorkerSpec::from(WorkerUrl::parse("--worker-urls", &url).unwrap());
        fleet.apply(FleetEvent::Add(spec)).await;
        let w = Arc::clone(&fleet.snapshot().members()[0].worker);
        let series = metrics.series("m", w.label());
        let mut gaps = series.inter_token_tally();
        gaps.observe(0.005);
        series.inter_tokens(&gaps);
        fleet.apply(FleetEvent::Remove(url)).await;
    }
    assert_eq!(metrics.served.len(), 0, "series of departed workers kept");
    let text = render(&metrics, &fleet.snapshot());
    assert!(!text.contains("10.9.0."), "{text}");
}
