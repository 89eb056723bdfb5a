//! The router binary's log files: the access line with its fields, lines written out at every
//! kind of exit, and a log directory that cannot be written.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use vllm_sim::SimConfig;

use crate::support::*;

/// A log directory of its own, removed when dropped.
pub struct LogDir {
    pub path: PathBuf,
}

impl LogDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("vllm-router-logs-{}", uuid::Uuid::new_v4()));
        Self { path }
    }

    /// `--log-dir` and the directory.
    pub fn args(&self) -> [String; 2] {
        [
            "--log-dir".to_owned(),
            self.path.to_str().unwrap().to_owned(),
        ]
    }

    /// Every file in the directory, by name, with its text.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let text = std::fs::read_to_string(e.path()).unwrap();
                (e.file_name().into_string().unwrap(), text)
            })
            .collect();
        files.sort();
        files
    }

    /// The text of one log (`vllm-router.log`, or its dated files when rotated).
    pub fn read(&self, prefix: &str, suffix: &str) -> String {
        self.files()
            .into_iter()
            .filter(|(name, _)| {
                let date = name
                    .strip_prefix(prefix)
                    .and_then(|n| n.strip_suffix(suffix))
                    .unwrap_or("x");
                date.chars()
                    .all(|c| c.is_ascii_digit() || c == '-' || c == '.')
            })
            .map(|(_, text)| text)
            .collect()
    }

    pub fn general(&self) -> String {
        self.read("vllm-router.", "log")
    }

    pub fn errors(&self) -> String {
        self.read("vllm-router.errors.", "log")
    }

    /// The JSON lines, each parsed.
    pub fn json(&self) -> Vec<Value> {
        json_lines(&self.read("vllm-router.", "jsonl"))
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn strings<const N: usize>(args: [&str; N]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The access line of request `id` among `lines`: its fields.
fn access<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let line = lines
        .iter()
        .find(|l| l["target"] == "vllm_router::access" && l["fields"]["request_id"] == id)
        .unwrap_or_else(|| panic!("no access line for {id}: {lines:#?}"));
    assert_eq!(line["level"], "INFO");
    &line["fields"]
}

#[tokio::test]
async fn the_access_line_of_plain_and_streamed_requests_reaches_the_files() {
    let workers = fast_sims(1).await;
    let logs = LogDir::new();
    let mut args = strings(["--worker-urls", &workers[0].url(), "--log-format", "json"]);
    args.extend(strings(["--log-level", "info"]));
    args.extend(logs.args());
    let (mut child, addr, output) = spawn_router_captured(&args, &[]).await;
    let url = format!("http://{addr}/v1/chat/completions");
    for (id, stream) in [("access-plain", false), ("access-stream", true)] {
        let mut body = chat(MODEL, stream);
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let headers = [("content-type", "application/json"), ("x-request-id", id)];
        let reply = send(Method::POST, &url, &headers, body.to_string()).await;
        assert_eq!(reply.status, 200);
    }
    signal(&child, "TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(5)).await, Some(0));
    let (_, stderr) = output.collect();

    let lines = logs.json();
    for id in ["access-plain", "access-stream"] {
        let fields = access(&lines, id);
        assert_eq!(fields["message"], "request");
        let trace_id = fields["trace_id"].as_str().unwrap();
        assert!(trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fields["method"], "POST");
        assert_eq!(fields["route"], "/v1/chat/completions");
        assert_eq!(fields["model"], MODEL);
        assert_eq!(fields["worker"], workers[0].url());
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["outcome"], "complete");
        assert!(fields["duration_ms"].as_f64().unwrap() > 0.0, "{fields}");
        assert!(fields["prompt_tokens"].as_u64().unwrap() > 0, "{fields}");
        assert_eq!(fields["completion_tokens"], 4, "{fields}");
        assert!(fields["cached_tokens"].is_u64(), "{fields}");
    }
    assert!(access(&lines, "access-plain").get("ttft_ms").is_none());
    let streamed = access(&lines, "access-stream");
    let ttft = streamed["ttft_ms"].as_f64().unwrap();
    assert!(ttft > 0.0 && ttft <= streamed["duration_ms"].as_f64().unwrap());

    // The same lines on stderr, as JSON; as text in the general log, not in the errors log.
    access(&json_lines(&stderr), "access-stream");
    let general = logs.general();
    assert!(
        general.contains("vllm_router::access: request request_id=\"access-plain\""),
        "{general}"
    );
    assert!(!general.contains('\u{1b}'), "ANSI codes in a file");
    // Written out at exit, after the drain.
    assert!(general.contains("shutting down"), "{general}");
    let errors = logs.errors();
    assert!(
        !errors.contains(" INFO ") && !errors.contains("access"),
        "{errors}"
    );
}

#[tokio::test]
async fn lines_logged_just_before_the_exit_on_a_second_signal_are_in_the_files() {
    let workers = sims([SimConfig {
        itl: Duration::from_millis(500),
        ..SimConfig::default()
    }])
    .await;
    let logs = LogDir::new();
    let mut args = strings(["--worker-urls", &workers[0].url(), "--log-level", "info"]);
    args.extend(logs.args());
    let (mut child, addr) = spawn_router(&args, &[]).await;
    let body = chat(MODEL, true).to_string();
    let mut client = RawClient::post(addr, "/v1/chat/completions", &body).await;
    client.read_until("data: ", 1).await;
    signal(&child, "TERM");
    // The second signal comes once the first one has been acted on (the listener closed for
    // the drain): not together with it.
    until_refused(addr, Duration::from_secs(5)).await;
    signal(&child, "INT");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(3)).await,
        Some(130)
    );
    let last = "second signal during the drain: exiting now";
    for text in [logs.general(), logs.errors()] {
        assert!(text.contains(last), "{text}");
    }
    assert!(logs.json().iter().any(|l| l["fields"]["message"] == last));
}

#[test]
fn a_log_directory_that_cannot_be_written_stops_the_start() {
    let logs = LogDir::new();
    std::fs::create_dir_all(&logs.path).unwrap();
    // A file where the directory should be: refused even to root.
    let taken = logs.path.join("taken");
    std::fs::write(&taken, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-router"))
        .args(["--port", "0", "--prometheus-port", "0", "--log-dir"])
        .arg(&taken)
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot write log files in {}",
            taken.display()
        )),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}
