//! Flag groups kept so the command lines of the routers users come from are understood.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::finite;

/// vllm-project/router's flags of its kv_aware policy, kept so its command lines are
/// understood; [`KvEventArgs::first_set`] names one that was given.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct KvEventArgs {
    /// kv_aware (not in this version): a worker's ZMQ KV-event publisher, `URL=ENDPOINT`.
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append, value_name = "URL=ENDPOINT")]
    #[serde(default)]
    pub kv_event_source: Vec<String>,
    /// kv_aware (not in this version): a worker's ZMQ replay endpoint, `URL=ENDPOINT`.
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append, value_name = "URL=ENDPOINT")]
    #[serde(default)]
    pub kv_event_replay_source: Vec<String>,
    /// kv_aware (not in this version): the block size of the KV events.
    #[arg(long)]
    #[serde(default)]
    pub kv_event_block_size: Option<u32>,
    /// kv_aware (not in this version): the model identity the KV events are keyed by.
    #[arg(long)]
    #[serde(default)]
    pub kv_event_model: Option<String>,
    /// kv_aware (not in this version): prefill workers' KV-event publishers in P/D mode.
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append, value_name = "URL=ENDPOINT")]
    #[serde(default)]
    pub pd_kv_events: Vec<String>,
    /// kv_aware (not in this version): softmax temperature of the worker choice.
    #[arg(long, value_parser = finite)]
    #[serde(default)]
    pub router_temperature: Option<f64>,
    /// kv_aware (not in this version): credit for KV blocks in host memory.
    #[arg(long, value_parser = finite)]
    #[serde(default)]
    pub kv_penalty_host: Option<f64>,
    /// kv_aware (not in this version): credit for KV blocks in an external store.
    #[arg(long, value_parser = finite)]
    #[serde(default)]
    pub kv_penalty_external: Option<f64>,
    /// kv_aware (not in this version): credit for KV blocks on disk.
    #[arg(long, value_parser = finite)]
    #[serde(default)]
    pub kv_penalty_disk: Option<f64>,
    /// kv_aware (not in this version): seconds a session keeps its worker.
    #[arg(long)]
    #[serde(default)]
    pub kv_aware_session_affinity_ttl_secs: Option<u64>,
}

impl KvEventArgs {
    /// The flag name of the first kv_aware setting given, if any.
    pub fn first_set(&self) -> Option<&'static str> {
        let given = [
            ("--kv-event-source", !self.kv_event_source.is_empty()),
            (
                "--kv-event-replay-source",
                !self.kv_event_replay_source.is_empty(),
            ),
            ("--kv-event-block-size", self.kv_event_block_size.is_some()),
            ("--kv-event-model", self.kv_event_model.is_some()),
            ("--pd-kv-events", !self.pd_kv_events.is_empty()),
            ("--router-temperature", self.router_temperature.is_some()),
            ("--kv-penalty-host", self.kv_penalty_host.is_some()),
            ("--kv-penalty-external", self.kv_penalty_external.is_some()),
            ("--kv-penalty-disk", self.kv_penalty_disk.is_some()),
            (
                "--kv-aware-session-affinity-ttl-secs",
                self.kv_aware_session_affinity_ttl_secs.is_some(),
            ),
        ];
        given
            .into_iter()
            .find(|(_, set)| *set)
            .map(|(flag, _)| flag)
    }
}

/// Where SGLang's gateway finds workers (`--discovery-provider`).
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryProvider {
    /// Kubernetes pods: the same as `--service-discovery`.
    Kubernetes,
    /// A JSON manifest of workers (`--discovery-file`), watched and re-read.
    File,
}

/// SGLang's gateway's discovery flags.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryArgs {
    /// Find workers in Kubernetes (`kubernetes`, as --service-discovery) or in the JSON
    /// manifest of --discovery-file (`file`).
    #[arg(long, value_enum)]
    #[serde(default)]
    pub discovery_provider: Option<DiscoveryProvider>,
    /// The workers' manifest for `--discovery-provider file`: `{"version": 1, "workers":
    /// [{"url": "http://gpu1:8000"}, ...]}`. It may appear after start; it is watched, and
    /// re-read every --discovery-check-interval-secs.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub discovery_file: Option<PathBuf>,
    /// Seconds between re-reads of --discovery-file (it is also re-read when it changes).
    #[arg(long, default_value_t = 30)]
    #[serde(default = "thirty")]
    pub discovery_check_interval_secs: u64,
}

fn thirty() -> u64 {
    30
}

/// vllm-project/router's WASM middleware flags, understood so its command lines get a clear
/// refusal: this router runs no plugins.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct WasmArgs {
    /// Not supported: vllm-project/router's WASM OnRequest plugin.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub wasm_middleware: Option<PathBuf>,
    /// Not supported: the plugin's checksum.
    #[arg(long, value_name = "SHA256")]
    #[serde(default)]
    pub wasm_middleware_sha256: Option<String>,
    /// Not supported: routes the plugin attaches to.
    #[arg(long, action = clap::ArgAction::Append, value_name = "ROUTE")]
    #[serde(default)]
    pub wasm_middleware_route: Vec<String>,
}

impl WasmArgs {
    /// The flag name of the first one given, if any.
    pub fn first_set(&self) -> Option<&'static str> {
        if self.wasm_middleware.is_some() {
            Some("--wasm-middleware")
        } else if self.wasm_middleware_sha256.is_some() {
            Some("--wasm-middleware-sha256")
        } else if !self.wasm_middleware_route.is_empty() {
            Some("--wasm-middleware-route")
        } else {
            None
        }
    }
}
