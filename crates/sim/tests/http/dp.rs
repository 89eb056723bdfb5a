//! Data-parallel ranks behind one port, and the Mooncake bootstrap `/query`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vllm_sim::{DATA_PARALLEL_RANK_HEADER, Role, SimConfig, SimServer, spawn};

use crate::support::{Conn, chat, get, long_text, post, post_json, wait_until};

async fn ranked(size: usize) -> SimServer {
    spawn(SimConfig {
        data_parallel_size: size,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

/// Completes `prompt` (1 token) on `rank`, or on the server's choice; returns the cached tokens.
async fn complete(sim: &SimServer, prompt: &str, rank: Option<&str>) -> u64 {
    let headers: Vec<(&str, &str)> = rank
        .map(|r| (DATA_PARALLEL_RANK_HEADER, r))
        .into_iter()
        .collect();
    let answer = post_json(
        sim.addr(),
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1}),
        &headers,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("usage.prompt_tokens_details.cached_tokens")
}

fn ranks_of(sim: &SimServer) -> Vec<u32> {
    sim.records().iter().map(|r| r.dp_rank).collect()
}

async fn metrics(sim: &SimServer) -> String {
    String::from_utf8(get(sim.addr(), "/metrics").await.body.to_vec()).expect("UTF-8 metrics")
}

fn sample(text: &str, name: &str, rank: u32) -> f64 {
    let prefix = format!("{name}{{engine=\"{rank}\",model_name=\"sim-model\"}} ");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.parse().expect("a float sample")
}

#[tokio::test]
async fn header_pins_the_rank_and_metrics_are_per_engine() {
    let sim = ranked(3).await;
    complete(&sim, "a b c d", Some("2")).await;
    complete(&sim, "e f", Some("2")).await;
    complete(&sim, "g h i", Some("0")).await;
    assert_eq!(ranks_of(&sim), vec![2, 2, 0]);

    let stats = sim.stats();
    let prompt: Vec<u64> = stats.ranks.iter().map(|r| r.prompt_tokens_total).collect();
    assert_eq!(prompt, vec![3, 0, 6]);
    assert_eq!(stats.prompt_tokens_total, 9, "totals add the ranks up");
    assert_eq!(
        stats.ranks.iter().map(|r| r.rank).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    let text = metrics(&sim).await;
    for (rank, tokens) in [(0, 3.0), (1, 0.0), (2, 6.0)] {
        assert_eq!(sample(&text, "vllm:prompt_tokens_total", rank), tokens);
    }
    assert_eq!(sample(&text, "vllm:request_success_total", 2), 2.0);
    assert_eq!(sample(&text, "vllm:request_success_total", 1), 0.0);
    assert!(text.contains(
        "vllm:cache_config_info{block_size=\"16\",engine=\"1\",model_name=\"sim-model\",num_gpu_blocks=\"4096\"} 1.0\n"
    ));
    assert!(text.contains(
        "vllm:time_to_first_token_seconds_count{engine=\"2\",model_name=\"sim-model\"} 2.0\n"
    ));
    // One HELP/TYPE pair per family, every engine's samples under it.
    assert_eq!(
        text.matches("# TYPE vllm:num_requests_running gauge\n")
            .count(),
        1
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("vllm:num_requests_running{"))
            .count(),
        3
    );
}

#[tokio::test]
async fn a_bad_rank_is_a_400() {
    let sim = ranked(2).await;
    for (value, message) in [
        ("2", "data_parallel_rank 2 is out of range [0, 2)."),
        ("-1", "data_parallel_rank -1 is out of range [0, 2)."),
        (
            "one",
            "X-data-parallel-rank must be an integer, got \"one\"",
        ),
    ] {
        let answer = post_json(
            sim.addr(),
            "/v1/chat/completions",
            chat("hi", 2),
            &[(DATA_PARALLEL_RANK_HEADER, value)],
        )
        .await;
        assert_eq!(answer.status, 400, "{value}");
        assert_eq!(
            answer.json(),
            json!({"error": {"message": message, "type": "BadRequestError",
                "param": null, "code": 400}})
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.prompt_tokens_total, 0, "no engine saw them");
    assert_eq!((stats.running, stats.waiting), (0, 0));
    assert!(sim.records().iter().all(|r| r.status == 400));

    // A server without data parallelism has exactly rank 0.
    let single = ranked(1).await;
    complete(&single, "x", Some("0")).await;
    let answer = post_json(
        single.addr(),
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 1}),
        &[(DATA_PARALLEL_RANK_HEADER, "1")],
    )
    .await;
    assert_eq!(answer.status, 400);
}

#[tokio::test]
async fn without_a_header_the_least_busy_rank_takes_the_request() {
    let sim = spawn(SimConfig {
        data_parallel_size: 2,
        itl: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Idle ranks tie: the lowest takes it. One-token answers pay no inter-token latency.
    complete(&sim, "first", None).await;
    assert_eq!(ranks_of(&sim), vec![0]);

    // A long stream keeps rank 0 busy.
    let mut conn = Conn::open(sim.addr()).await;
    let body = json!({"prompt": long_text(40), "max_tokens": 1000, "stream": true});
    let resp = conn
        .send(post(
            sim.addr(),
            "/v1/completions",
            &body,
            &[(DATA_PARALLEL_RANK_HEADER, "0")],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_until(Duration::from_secs(2), "rank 0 running", || {
        sim.stats().ranks[0].running == 1
    })
    .await;
    let stats = sim.stats();
    assert!(stats.ranks[0].kv_cache_usage > 0.0, "{stats:?}");
    assert_eq!(stats.ranks[1].kv_cache_usage, 0.0, "KV usage is per engine");

    complete(&sim, "second", None).await;
    complete(&sim, "third", None).await;
    assert_eq!(ranks_of(&sim), vec![0, 0, 1, 1]);
    let text = metrics(&sim).await;
    assert_eq!(sample(&text, "vllm:num_requests_running", 0), 1.0);
    assert_eq!(sample(&text, "vllm:num_requests_running", 1), 0.0);
    assert!(sample(&text, "vllm:kv_cache_usage_perc", 0) > 0.0);
    assert_eq!(sample(&text, "vllm:kv_cache_usage_perc", 1), 0.0);

    drop(resp);
    conn.close().await;
    wait_until(Duration::from_secs(2), "the stream to end", || {
        sim.stats().running == 0
    })
    .await;
    complete(&sim, "fourth", None).await;
    assert_eq!(ranks_of(&sim).last(), Some(&0));
}

#[tokio::test]
async fn each_rank_has_its_own_prefix_cache() {
    let sim = ranked(2).await;
    let prompt = long_text(100);
    assert_eq!(complete(&sim, &prompt, Some("0")).await, 0);
    assert_eq!(complete(&sim, &prompt, Some("0")).await, 96);
    assert_eq!(
        complete(&sim, &prompt, Some("1")).await,
        0,
        "rank 0's cache is not rank 1's"
    );
    assert_eq!(complete(&sim, &prompt, Some("1")).await, 96);
    let text = metrics(&sim).await;
    for rank in [0, 1] {
        assert_eq!(sample(&text, "vllm:prefix_cache_hits_total", rank), 96.0);
        assert_eq!(
            sample(&text, "vllm:prefix_cache_queries_total", rank),
            200.0
        );
    }

    let reset = post_json(sim.addr(), "/reset_prefix_cache", json!({}), &[]).await;
    assert_eq!(reset.status, 200);
    assert_eq!(complete(&sim, &prompt, Some("0")).await, 0);
    assert_eq!(
        complete(&sim, &prompt, Some("1")).await,
        0,
        "every rank is reset"
    );
}

#[tokio::test]
async fn prefill_lists_one_engine_per_rank_and_names_the_serving_one() {
    let sim = spawn(SimConfig {
        role: Role::Prefill,
        engine_id: "pre".into(),
        data_parallel_size: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let answer = get(sim.addr(), "/query").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/json");
    let worker = sim.addr().to_string();
    assert_eq!(
        answer.json(),
        json!({"pre": {"0": {"0": {"0": worker}}}, "pre_dp1": {"1": {"0": {"0": worker}}}})
    );

    let leg = json!({"prompt": long_text(40), "max_tokens": 1, "stream": false,
        "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
            "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
            "remote_port": null}});
    for (rank, engine) in [("1", "pre_dp1"), ("0", "pre")] {
        let p = post_json(
            sim.addr(),
            "/v1/completions",
            leg.clone(),
            &[(DATA_PARALLEL_RANK_HEADER, rank)],
        )
        .await
        .json();
        assert_eq!(p["kv_transfer_params"]["remote_engine_id"], engine);
    }
    assert_eq!(ranks_of(&sim), vec![1, 0], "/query is not recorded");

    for role in [Role::Mixed, Role::Decode] {
        let other = spawn(SimConfig {
            role,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let answer = get(other.addr(), "/query").await;
        assert_eq!(answer.status, 404, "{role:?}");
        assert_eq!(answer.json()["error"]["code"], 404);
    }
}

#[test]
fn binary_runs_the_ranks_it_is_given() {
    let exe = env!("CARGO_BIN_EXE_vllm-sim");
    let mut child = Command::new(exe)
        .args(["--port", "0", "--role", "prefill", "--engine-id", "e"])
        .args(["--data-parallel-size", "3", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("vllm-sim listening on http://")
        .expect(&line)
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let query: Value = rt.block_on(get(addr, "/query")).json();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut engines: Vec<&String> = query.as_object().unwrap().keys().collect();
    engines.sort();
    assert_eq!(engines, ["e", "e_dp1", "e_dp2"]);

    let out = Command::new(exe)
        .args(["--data-parallel-size", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-parallel-size"));
}
