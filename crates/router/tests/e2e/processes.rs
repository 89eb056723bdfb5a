//! The router binary as operators run it: configuration from flags, environment and file,
//! `--check-config`, SIGHUP, and several replicas agreeing on where a session goes.

use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::reload::ConfigFile;
use crate::support::*;

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-router"))
        .arg("--check-config")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_validates_every_layer_and_exits() {
    let file = ConfigFile::new(
        "cache_threshold = 0.4\n[[workers]]\nurl = \"http://gpu-1:8000\"\ncapacity = 4\n",
    );
    let path = file.path.to_str().unwrap();
    let (code, out, _) = check_config(
        &["--config", path, "--port", "7001"],
        &[("VLLM_ROUTER_CACHE_THRESHOLD", "0.6")],
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("configuration is valid"), "{out}");
    assert!(out.contains("port = 7001    [command line]"), "{out}");
    assert!(
        out.contains("cache_threshold = 0.6    [environment (VLLM_ROUTER_CACHE_THRESHOLD)]"),
        "{out}"
    );
    assert!(
        out.contains("http://gpu-1:8000 role=regular ranks=1 weight=1 capacity=4"),
        "{out}"
    );

    // CONFIG_PATH names the file, as for the TOML router.
    let (code, out, _) = check_config(&[], &[("CONFIG_PATH", path)]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("cache_threshold = 0.4    ['cache_threshold' in"),
        "{out}"
    );

    let (code, _, err) = check_config(
        &["--config", path],
        &[("VLLM_ROUTER_CACHE_THRESHOLD", "1.5")],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("$VLLM_ROUTER_CACHE_THRESHOLD") && err.contains("1.5"),
        "{err}"
    );
    file.write("cache_threshold = 1.5\n");
    let (code, _, err) = check_config(&["--config", path], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("'cache_threshold' in") && err.contains(path),
        "{err}"
    );
    let (code, out, err) = check_config(&["--admin-api-key", "top-s3cret"], &[]);
    assert_eq!(code, Some(0));
    assert!(
        !out.contains("top-s3cret") && !err.contains("top-s3cret"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let workers = fast_sims(2).await;
    let text = |urls: &[String]| {
        let mut t = String::from("config_reload_interval_secs = 0\n");
        for u in urls {
            t.push_str(&format!("[[workers]]\nurl = \"{u}\"\n"));
        }
        t
    };
    let file = ConfigFile::new(&text(&[workers[0].url()]));
    // The router reads the file through a link in another directory, which is all it
    // watches: changes to the file itself reach it by the signal alone.
    let link = ConfigFile::new("");
    std::fs::remove_file(&link.path).unwrap();
    std::os::unix::fs::symlink(&file.path, &link.path).unwrap();
    let args = vec![
        "--config".to_owned(),
        link.path.to_str().unwrap().to_owned(),
    ];
    let (mut child, addr) = spawn_router(&args, &[]).await;
    let list = || async move { get(&format!("http://{addr}/list_workers")).await.json() };
    std::fs::write(&file.path, text(&[workers[0].url(), workers[1].url()])).unwrap();
    // Time for a watch or a timer to pick the change up, were there one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        list().await["urls"].as_array().unwrap().len(),
        1,
        "reloaded without the signal"
    );
    signal(&child, "HUP");
    let mut tries = 0;
    while list().await["urls"].as_array().unwrap().len() != 2 {
        tries += 1;
        assert!(tries < 100, "SIGHUP did not reload: {}", list().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, "TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(5)).await, Some(0));
}

#[tokio::test]
async fn two_replicas_send_each_session_to_the_same_worker() {
    let workers = fast_sims(4).await;
    let urls: Vec<String> = workers.iter().map(|w| w.url()).collect();
    // One replica from flags, the other from the environment with the workers in another
    // order: the same fleet, however it is written down.
    let mut args = vec![
        "--policy".to_owned(),
        "consistent_hash".to_owned(),
        "--worker-urls".to_owned(),
    ];
    args.extend(urls.iter().cloned());
    let (mut one, one_addr) = spawn_router(&args, &[]).await;
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    let env = [
        ("VLLM_ROUTER_POLICY", "consistent_hash"),
        ("VLLM_ROUTER_WORKER_URLS", &reversed.join(",")),
    ];
    let (mut two, two_addr) = spawn_router(&[], &env).await;

    let mut used = std::collections::HashSet::new();
    for i in 0..24 {
        let session = format!("session-{i}");
        let mut chosen = Vec::new();
        for addr in [one_addr, two_addr] {
            let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
            let r = send(
                Method::POST,
                &format!("http://{addr}/v1/chat/completions"),
                &[
                    ("content-type", "application/json"),
                    ("x-session-id", &session),
                ],
                body.to_string(),
            )
            .await;
            assert_eq!(r.status, 200);
            chosen.push(r.header("x-vllm-router-worker").to_owned());
        }
        assert_eq!(chosen[0], chosen[1], "{session} went to two workers");
        used.insert(chosen[0].clone());
    }
    assert!(
        used.len() >= 3,
        "sessions should spread over the fleet: {used:?}"
    );
    for child in [&mut one, &mut two] {
        signal(child, "TERM");
        assert_eq!(exit_code(child, Duration::from_secs(5)).await, Some(0));
    }
}
