//! The value sets of the router's enumerated flags.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How the KV cache moves from a prefill worker to a decode worker.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum KvConnector {
    /// NIXL: decode pulls the blocks the prefill's answer names.
    Nixl,
    /// Mooncake: prefill pushes to decode, matched through the prefill's bootstrap server.
    Mooncake,
}

/// `--kv-connector`'s parser: vllm-project/router's `moriio` gets a message of its own.
pub(super) fn kv_connector(raw: &str) -> Result<KvConnector, String> {
    if raw.trim().eq_ignore_ascii_case("moriio") {
        return Err(
            "MoRI-IO is not supported: the router does not implement its pairing of \
                    prefill and decode (its READ and WRITE modes); use nixl or mooncake"
                .into(),
        );
    }
    KvConnector::from_str(raw.trim(), true)
}

impl KvConnector {
    /// The name as given to `--kv-connector`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nixl => "nixl",
            Self::Mooncake => "mooncake",
        }
    }
}

/// Log verbosity, as vllm-project/router spells it.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Everything, including per-request traces.
    Trace,
    /// Per-request decisions.
    Debug,
    /// Start-up, fleet changes and errors.
    Info,
    /// Problems only.
    #[value(alias = "warning")]
    #[serde(alias = "warning")]
    Warn,
    /// Failures only.
    #[value(alias = "critical")]
    #[serde(alias = "critical")]
    Error,
}

impl LogLevel {
    /// The directive understood by `tracing_subscriber::EnvFilter`.
    pub fn as_directive(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// How log lines are written.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// What the `x-vllm-router-worker` response header carries.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerHeader {
    /// The worker's URL, with `#rank` for a data-parallel rank.
    Url,
    /// The URL, plus nginx's `X-Upstream-Addr` and `X-Upstream-Status`: every attempt's
    /// `host:port` and status, in order.
    Nginx,
    /// An opaque id, the same on every replica: the admin API's worker id, with `#rank`.
    Id,
    /// No header.
    Off,
}

/// When a log file in `--log-dir` is rotated.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogRotation {
    /// A new file every minute (for tests and very busy routers).
    Minutely,
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    Daily,
    /// One file, never rotated.
    Never,
}
