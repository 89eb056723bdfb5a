use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::json;
use vllm_sim::{SimConfig, spawn};

use crate::support::{Conn, chat, get, hung, post, post_json, wait_until};

async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn kill_closes_the_port_and_every_connection() {
    let sim = hung().await;
    let addr = sim.addr();
    let mut idle = Conn::open(addr).await;
    assert_eq!(
        idle.send(post(addr, "/health", &json!(null), &[]))
            .await
            .unwrap()
            .status(),
        405,
        "keep-alive connection is live"
    );
    let mut busy = Conn::open(addr).await;
    let pending = busy.send(post(addr, "/v1/chat/completions", &chat("hi", 2), &[]));
    let (result, ()) = tokio::join!(pending, async {
        wait_until(Duration::from_secs(1), "record", || {
            sim.records().len() == 1
        })
        .await;
        sim.kill();
        assert!(refused(addr).await, "port must refuse right after kill");
    });
    assert!(result.is_err(), "the in-flight request gets no answer");
    let again = idle.send(post(addr, "/health", &json!(null), &[])).await;
    assert!(again.is_err(), "kept-alive connection is closed too");
    sim.kill();
    tokio::time::timeout(Duration::from_secs(1), sim.killed())
        .await
        .unwrap();
}

#[tokio::test]
async fn exit_after_kills_on_the_nth_inference_request() {
    let sim = spawn(SimConfig {
        exit_after: Some(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let addr = sim.addr();
    // Polling paths do not count.
    for _ in 0..3 {
        assert_eq!(get(addr, "/health").await.status, 200);
        get(addr, "/metrics").await;
    }
    let first = post_json(addr, "/v1/completions", json!({"prompt": "x"}), &[]).await;
    assert_eq!(first.status, 200);
    let mut conn = Conn::open(addr).await;
    let second = conn
        .send(post(addr, "/v1/completions", &json!({"prompt": "x"}), &[]))
        .await;
    assert!(
        second.is_err(),
        "the n-th request's connection closes unanswered"
    );
    tokio::time::timeout(Duration::from_secs(1), sim.killed())
        .await
        .unwrap();
    assert!(refused(addr).await);
    assert_eq!(sim.records().len(), 2);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let sim = spawn(SimConfig {
        itl: Duration::from_millis(30),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let addr = sim.addr();
    let mut conn = Conn::open(addr).await;
    let body = json!({"prompt": "x", "max_tokens": 5, "stream": true});
    let resp = conn
        .send(post(addr, "/v1/completions", &body, &[]))
        .await
        .unwrap();
    let stats_probe = sim.stats();
    assert_eq!(stats_probe.running, 1);
    let reader =
        tokio::spawn(async move { resp.into_body().collect().await.map(|c| c.to_bytes()) });
    tokio::time::timeout(Duration::from_secs(2), sim.shutdown())
        .await
        .unwrap();
    let body = reader.await.unwrap().unwrap();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    assert!(refused(addr).await);
}

#[tokio::test]
async fn metrics_use_vllm_names_and_labels() {
    let sim = spawn(SimConfig {
        models: vec!["m\"x".into()],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    post_json(
        sim.addr(),
        "/v1/completions",
        json!({"prompt": "a b c", "max_tokens": 3}),
        &[],
    )
    .await;
    let m = get(sim.addr(), "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    let labels = r#"engine="0",model_name="m\"x""#;
    for (name, kind) in [
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:num_preemptions_total", "counter"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
        ("vllm:prompt_tokens_total", "counter"),
        ("vllm:generation_tokens_total", "counter"),
        ("vllm:request_success_total", "counter"),
        ("vllm:cache_config_info", "gauge"),
        ("vllm:time_to_first_token_seconds", "histogram"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    assert!(text.contains(&format!("vllm:generation_tokens_total{{{labels}}} 3.0\n")));
    assert!(text.contains(&format!("vllm:prompt_tokens_total{{{labels}}} 3.0\n")));
    assert!(text.contains(&format!(
        "vllm:cache_config_info{{block_size=\"16\",{labels},num_gpu_blocks=\"4096\"}} 1.0\n"
    )));
    assert!(text.contains(&format!(
        "vllm:time_to_first_token_seconds_bucket{{{labels},le=\"+Inf\"}} 1.0\n"
    )));
    assert!(text.contains(&format!(
        "vllm:time_to_first_token_seconds_count{{{labels}}} 1.0\n"
    )));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample: {line}");
    }
    assert!(sim.records().len() == 1, "/metrics is not recorded");
}

#[test]
fn binary_prints_one_line_per_worker_and_rejects_bad_flags() {
    let exe = env!("CARGO_BIN_EXE_vllm-sim");
    let mut child = Command::new(exe)
        .args([
            "--port",
            "0",
            "--count",
            "2",
            "--model",
            "a",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let url = line
            .strip_prefix("vllm-sim listening on ")
            .expect(&line)
            .to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        urls.push(url);
    }
    assert_ne!(urls[0], urls[1]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for url in &urls {
        let addr = url.trim_start_matches("http://").parse().unwrap();
        let models = rt.block_on(get(addr, "/v1/models")).json();
        assert_eq!(models["data"][0]["id"], "a");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = Command::new(exe)
        .args(["--error-rate", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--error-rate"));
    let out = Command::new(exe)
        .args(["--max-num-batched-tokens", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-num-batched-tokens"));
}
