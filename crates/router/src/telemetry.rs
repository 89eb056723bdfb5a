//! Logging (human-readable lines on stderr, filtered by `--log-level` or `RUST_LOG`), the
//! metrics registry, and tracing: W3C trace context passed to workers ([`trace`]) and spans
//! ([`span`]) exported by OTLP when a collector is configured ([`otlp`]).

pub mod exchange;
pub mod metrics;
pub mod otlp;
pub mod span;
pub mod trace;
pub mod usage;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogLevel;

/// Install the global subscriber once; later calls are ignored.
pub fn init(level: LogLevel) {
    let lvl = level.as_directive();
    // The kube client logs every failed request as an error; Kubernetes discovery reports
    // those failures itself, at most once a minute.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,kube_client::client::builder=off,vllm_router={lvl},vllm_sim={lvl}"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
