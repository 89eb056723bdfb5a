use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::*;

use crate::sync::Mutex;

/// Stands in for stderr.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().clone()).unwrap()
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn config(format: LogFormat, dir: Option<PathBuf>) -> LogConfig {
    LogConfig {
        console: crate::config::Console::All,
        level: LogLevel::Info,
        format,
        dir,
        rotation: LogRotation::Never,
        max_files: NonZeroUsize::MIN,
    }
}

/// Run `emit` under the subscriber of `config` and `filter`; what stderr received.
fn capture(config: &LogConfig, filter: EnvFilter, emit: impl FnOnce()) -> String {
    let stderr = Buffer::default();
    let (subscriber, guard) = subscriber(config, filter, stderr.clone(), false).unwrap();
    tracing::subscriber::with_default(subscriber, emit);
    guard.close();
    stderr.text()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn access_line() {
    tracing::info!(
        target: "vllm_router::access",
        request_id = "req-1",
        route = "/v1/chat/completions",
        status = 200u16,
        duration_ms = 12.5,
        prompt_tokens = 7u64,
        "request"
    );
}

#[test]
fn each_file_gets_its_levels_and_format() {
    let dir = std::env::temp_dir().join(format!(
        "vllm-router-sinks-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let stderr = capture(
        &config(LogFormat::Text, Some(dir.clone())),
        default_filter(LogLevel::Info),
        || {
            tracing::debug!("below the level");
            access_line();
            tracing::warn!(worker = "http://w:1", "a warning");
            tracing::error!("an error");
        },
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let (general, errors, json) = (
        read("vllm-router.log"),
        read("vllm-router.errors.log"),
        read("vllm-router.jsonl"),
    );
    std::fs::remove_dir_all(&dir).unwrap();

    for text in [&stderr, &general] {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains(" INFO ") && lines[0].contains("request_id=\"req-1\""));
        assert!(lines[1].contains(" WARN ") && lines[1].contains("a warning"));
        assert!(lines[2].contains("ERROR") && lines[2].contains("an error"));
        assert!(!text.contains("below the level") && !text.contains('\u{1b}'));
    }
    assert!(
        general.contains("vllm_router::access: request"),
        "{general}"
    );

    let errors: Vec<&str> = errors.lines().collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains(" WARN ") && errors[0].contains("worker=\"http://w:1\""));
    assert!(errors[1].contains("ERROR"));

    let json = json_lines(&json);
    assert_eq!(json.len(), 3, "{json:?}");
    let access = &json[0];
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["target"], "vllm_router::access");
    assert!(access["timestamp"].as_str().unwrap().ends_with('Z'));
    let fields = &access["fields"];
    assert_eq!(fields["message"], "request");
    assert_eq!(fields["request_id"], "req-1");
    assert_eq!(fields["route"], "/v1/chat/completions");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["duration_ms"], 12.5);
    assert_eq!(fields["prompt_tokens"], 7);
    assert_eq!(
        json.iter().map(|l| l["level"].clone()).collect::<Vec<_>>(),
        ["INFO", "WARN", "ERROR"]
    );
}

#[test]
fn json_on_stderr_carries_the_spans_fields() {
    let stderr = capture(
        &config(LogFormat::Json, None),
        default_filter(LogLevel::Info),
        || {
            let span = tracing::info_span!("request", request_id = "abc");
            let _entered = span.enter();
            tracing::info!(worker = "http://w:1", "routed");
        },
    );
    let lines = json_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = &lines[0];
    assert_eq!(line["fields"]["message"], "routed");
    assert_eq!(line["fields"]["worker"], "http://w:1");
    assert_eq!(line["span"]["name"], "request");
    assert_eq!(line["span"]["request_id"], "abc");
    assert_eq!(line["spans"][0]["request_id"], "abc");
}

#[test]
fn dependencies_log_warnings_only_unless_asked() {
    let stderr = capture(
        &config(LogFormat::Text, None),
        default_filter(LogLevel::Trace),
        || {
            tracing::trace!("ours at trace");
            tracing::info!(target: "hyper_util::client", "theirs at info");
            tracing::warn!(target: "hyper_util::client", "theirs at warn");
        },
    );
    assert!(stderr.contains("ours at trace"), "{stderr}");
    assert!(!stderr.contains("theirs at info"), "{stderr}");
    assert!(stderr.contains("theirs at warn"), "{stderr}");
}

#[test]
fn capped_targets_stay_below_trace_even_when_everything_is_asked_for() {
    // What `RUST_LOG=trace` gives.
    let stderr = capture(
        &config(LogFormat::Text, None),
        EnvFilter::new("trace,kube_client=trace"),
        || {
            tracing::trace!(target: "kube_client::client", "headers: capped");
            tracing::debug!(target: "kube_client::client", "requesting");
            tracing::trace!(target: "h2::codec", "h2 at trace");
        },
    );
    assert!(!stderr.contains("capped"), "{stderr}");
    assert!(stderr.contains("requesting"), "{stderr}");
    assert!(stderr.contains("h2 at trace"), "{stderr}");
}
