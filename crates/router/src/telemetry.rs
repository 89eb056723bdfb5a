//! Logging (human-readable lines on stderr, filtered by `--log-level` or `RUST_LOG`) and the
//! metrics registry.

pub mod exchange;
pub mod metrics;
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
