//! The TOML router's users: its `servers.toml` and its command line, `vllm-router run`, with
//! only hosts and ports changed.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// The TOML router's documented `servers.toml`, for these workers.
fn servers_toml(urls: &[String], reload_secs: u64) -> String {
    let servers: Vec<String> = urls
        .iter()
        .map(|u| format!("{{ url = \"{u}\", max_concurrent_requests = 3 }}"))
        .collect();
    format!(
        "[servers]\nservers = [ {} ]\n[config]\nhealth_check_interval = 10       # s\n\
         health_check_timeout = 5         # s\nhealth_check_min_success_rate = 0.8\n\
         health_check_max_response_time = 2.0\nconfig_reload_interval = {reload_secs}\n\
         enable_active_health_check = true\nrequest_timeout = 120\nmax_retries = 3\n\
         retry_delay = 0.1\n",
        servers.join(", ")
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn run_reads_servers_toml_from_the_working_directory_and_scores_capacity() {
    // Slow enough that a stream stays open while the next request is routed.
    let slow = || vllm_sim::SimConfig {
        itl: Duration::from_millis(50),
        ..Default::default()
    };
    let workers = sims([slow(), slow()]).await;
    let dir = temp_dir("toml-run");
    std::fs::write(
        dir.join("servers.toml"),
        servers_toml(&[workers[0].url(), workers[1].url()], 30),
    )
    .unwrap();
    let args = ["run", "--port", "0"].map(String::from);
    let (mut child, addr, _) = spawn_router_in(&dir, &args, &[]).await;
    let base = format!("http://{addr}");
    let about = get(&format!("{base}/")).await.json();
    assert_eq!(about["policy"], "least_load", "{about}");
    let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // One request held open on a worker: the next goes to the other, less loaded one.
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": true});
    let mut open = RawClient::post(addr, "/v1/completions", &body.to_string()).await;
    open.read_until("data:", 1).await;
    let held = |w: &vllm_sim::SimServer| w.records().iter().any(|r| r.stream);
    let busy = workers.iter().position(held).unwrap();
    let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
    assert_eq!(r.header("x-vllm-router-worker"), workers[1 - busy].url());
    let stats = get(&format!("{base}/load-stats")).await.json();
    assert_eq!(stats["servers"][0]["max_capacity"], 3, "{stats}");
    assert_eq!(stats["summary"]["total_capacity"], 6, "{stats}");
    let fds = stats["summary"]["router_open_fds"].as_u64().unwrap();
    let max = stats["summary"]["router_max_fds"].as_u64().unwrap();
    assert!(fds > 0 && fds < max, "{stats}");
    drop(open);
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn run_takes_config_path_and_a_policy_given_wins() {
    let workers = fast_sims(1).await;
    let dir = temp_dir("toml-config-path");
    let file = dir.join("elsewhere.toml");
    std::fs::write(&file, servers_toml(&[workers[0].url()], 30)).unwrap();
    let args = ["run", "--policy", "round_robin"].map(String::from);
    let env = [("CONFIG_PATH", file.to_str().unwrap())];
    let (mut child, addr, _) = spawn_router_in(&std::env::temp_dir(), &args, &env).await;
    let about = get(&format!("http://{addr}/")).await.json();
    assert_eq!(about["policy"], "round_robin", "{about}");
    let _ = child.kill();
    let _ = child.wait();
    // No file anywhere and no workers: a message saying where it looked.
    let empty = temp_dir("toml-none");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-router"))
        .arg("run")
        .current_dir(&empty)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("./servers.toml or /app/servers.toml"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[tokio::test]
async fn run_reload_applies_an_edit_at_once_and_without_it_at_the_interval() {
    let workers = fast_sims(2).await;
    for (reload, applied_within) in [(true, Some(Duration::from_secs(5))), (false, None)] {
        let dir = temp_dir(&format!("toml-reload-{reload}"));
        let file = dir.join("servers.toml");
        std::fs::write(&file, servers_toml(&[workers[0].url()], 30)).unwrap();
        let mut args = vec!["run".to_owned()];
        if reload {
            args.push("--reload".into());
        }
        let (mut child, addr, _) = spawn_router_in(&dir, &args, &[]).await;
        let list = format!("http://{addr}/list_workers");
        std::fs::write(
            &file,
            servers_toml(&[workers[0].url(), workers[1].url()], 30),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut seen = None;
        while std::time::Instant::now() < deadline + applied_within.unwrap_or_default() {
            let urls = get(&list).await.json();
            if urls["urls"].as_array().unwrap().len() == 2 {
                seen = Some(());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen.is_some(), reload, "--reload {reload}");
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test]
async fn log_to_console_false_keeps_the_terminal_quiet() {
    let workers = fast_sims(1).await;
    let dir = temp_dir("toml-console-logs");
    std::fs::write(
        dir.join("servers.toml"),
        servers_toml(&[workers[0].url()], 30),
    )
    .unwrap();
    for (value, logs) in [("true", true), ("false", false)] {
        let args = ["run", "--log-level", "info"].map(String::from);
        let env = [("LOG_TO_CONSOLE", value)];
        let (mut child, addr, captured) = spawn_router_in(&dir, &args, &env).await;
        let r = post_json(
            &format!("http://{addr}/v1/completions"),
            json!({"model": MODEL, "prompt": "x"}),
        )
        .await;
        assert_eq!(r.status, 200);
        signal(&child, "TERM");
        assert_eq!(
            exit_code(&mut child, Duration::from_secs(10)).await,
            Some(0)
        );
        let (_, stderr) = captured.collect();
        assert_eq!(
            stderr.contains("serving"),
            logs,
            "LOG_TO_CONSOLE={value}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
