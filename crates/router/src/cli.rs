//! The command line. Flag names and meanings follow vllm-project/router so existing launch
//! scripts keep working; `demo` and `top` are our own subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyKind;

mod compat;
mod values;

pub use compat::{DiscoveryArgs, DiscoveryProvider, KvEventArgs, WasmArgs};
pub use values::{KvConnector, LogFormat, LogLevel, LogRotation, WorkerHeader};

/// `vllm-router [FLAGS]` runs the router; `vllm-router demo` runs it on a simulated fleet;
/// `vllm-router top` watches a running one.
#[derive(Parser, Debug)]
#[command(
    name = "vllm-router",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A subcommand; without one, the router runs with the flags below.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The router's flags.
    #[command(flatten)]
    pub router: RouterArgs,
}

/// Subcommands beside the plain router.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start simulated vLLM workers in-process and the router in front of them.
    Demo(DemoArgs),
    /// Watch a running router's fleet live in the terminal.
    Top(TopArgs),
    /// Run the router as the TOML router is started: `run [--config servers.toml] [--host H]
    /// [--port P] [--console] [--reload]`, with every router flag besides. Without --config
    /// (or `CONFIG_PATH`) it reads ./servers.toml, else /app/servers.toml.
    Run(Box<RunArgs>),
}

/// Flags of `vllm-router run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Open the live terminal view of the fleet in this process; quitting it (`q`) stops the
    /// router. Logs on the terminal are then held to errors (the files of --log-dir keep all).
    #[arg(long)]
    pub console: bool,
    /// Watch the config file and apply a change at once; without it the file is re-read every
    /// `config_reload_interval` (30 s), as the TOML router does.
    #[arg(long)]
    pub reload: bool,
    /// The router's flags.
    #[command(flatten)]
    pub router: RouterArgs,
}

/// Flags of `vllm-router top`.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// The router's base URL.
    #[arg(long, default_value = "http://127.0.0.1:30000", value_name = "URL")]
    pub url: String,
    /// A client key of the router (one of its --api-keys), sent as a bearer token.
    #[arg(
        long,
        env = "VLLM_ROUTER_TOP_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
}

/// Flags of `vllm-router demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// How many simulated workers to start.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Routing policy.
    #[arg(long, value_enum, default_value_t = PolicyKind::CacheAware)]
    pub policy: PolicyKind,
    /// Prefill/decode disaggregation: --workers prefill workers and as many decode workers,
    /// with the P/D defaults (the policy flag is then ignored).
    #[arg(long)]
    pub pd: bool,
    /// Open the terminal view (`vllm-router top`) on the demo's router; quitting it (`q`)
    /// stops the demo. Logs are then held to errors, which would scribble on the screen.
    #[arg(long)]
    pub top: bool,
    /// Requests a second sent by the demo's own clients (multi-turn chats, so the fleet moves
    /// and the prefix cache is used); 0 sends none.
    #[arg(long, default_value_t = 6.0, value_parser = finite)]
    pub traffic_per_sec: f64,
    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

/// The router's flags, compatible with vllm-project/router 0.1.x. Each is also a config-file
/// key (the flag's name with underscores) and an environment variable (`VLLM_ROUTER_` and the
/// key in capitals); see [`crate::config::Sources`].
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RouterArgs {
    /// A TOML config file: the TOML router's `servers.toml`, or the native format (every flag
    /// as a key, plus `[[workers]]`). Watched, and re-read on SIGHUP; changes apply live.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration (flags, environment and file), print it and exit: 0 when
    /// valid, 2 when not.
    #[arg(long)]
    pub check_config: bool,
    /// Seconds between re-reads of the config file, besides watching it for changes (0: watch
    /// only).
    #[arg(long, default_value_t = 30)]
    pub config_reload_interval_secs: u64,
    /// Bearer key the admin API (`/workers`, `/add_worker`, ...) requires; without it, only
    /// clients on loopback may call the admin API.
    #[arg(long, value_name = "KEY")]
    pub admin_api_key: Option<String>,
    /// Serve the admin API on a listener of its own at this port (0: any free port), off the
    /// client port; without it the admin API shares the client port.
    #[arg(long)]
    pub admin_port: Option<u16>,
    /// Address of the admin API's own listener (`--admin-port`); the client `--host` when not
    /// given.
    #[arg(long)]
    pub admin_host: Option<String>,
    /// Without `--admin-api-key`, refuse loopback clients too (behind a sidecar proxy every
    /// client arrives from loopback): the admin API then needs a key.
    #[arg(long)]
    pub admin_deny_loopback: bool,
    /// Send the workers' key (`--api-key`) to workers added through the admin API as well;
    /// by default they receive no `Authorization` header, so whoever adds a worker cannot
    /// collect the key.
    #[arg(long)]
    pub api_key_to_added_workers: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Worker base URLs (`http://host:port`), space- or comma-separated.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "URL")]
    pub worker_urls: Vec<String>,
    /// Another name clients may use for a served model, as `ALIAS=MODEL` (repeatable; SGLang's
    /// gateway's flag): requests naming ALIAS go to MODEL's workers, with `model` rewritten to
    /// MODEL, and `/v1/models` lists ALIAS too. Matching is case-sensitive.
    #[arg(long, action = clap::ArgAction::Append, value_name = "ALIAS=MODEL")]
    pub model_alias: Vec<String>,
    /// Requests a worker serves at once, as `URL=N` (the TOML router's
    /// `max_concurrent_requests`); `least_load` divides a worker's load by it.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "URL=N")]
    pub worker_capacity: Vec<String>,
    /// Routing policy [default: cache_aware]. Every name vllm-project/router accepts is
    /// accepted; `kv_aware`, not implemented yet, is served by `round_robin` with a warning at
    /// start. In P/D mode, given explicitly, it is also the prefill and decode policy unless
    /// those are set.
    #[arg(long, value_enum)]
    pub policy: Option<PolicyKind>,
    /// Prefill/decode disaggregation: chat and completions go through a prefill worker
    /// (`--prefill`), then stream from a decode worker (`--decode`).
    #[arg(long, alias = "pd-disaggregation")]
    pub vllm_pd_disaggregation: bool,
    /// A prefill worker, with an optional bootstrap port (a number or `none`; Mooncake's
    /// bootstrap server, 8998 when not given). Repeatable.
    #[arg(long, num_args = 1..=2, action = clap::ArgAction::Append, value_names = ["URL", "BOOTSTRAP_PORT"])]
    pub prefill: Vec<String>,
    /// A decode worker. Repeatable.
    #[arg(long, action = clap::ArgAction::Append, value_name = "URL")]
    pub decode: Vec<String>,
    /// Policy choosing the prefill worker [default: --policy if given, else cache_aware:
    /// prefill is where the prefix cache pays].
    #[arg(long, value_enum)]
    pub prefill_policy: Option<PolicyKind>,
    /// Policy choosing the decode worker [default: --policy if given, else cache_aware].
    #[arg(long, value_enum)]
    pub decode_policy: Option<PolicyKind>,
    /// How the KV cache moves from a `--prefill` to a `--decode` worker [default: nixl].
    /// Instances registered through --vllm-discovery-address always pair by P2P NCCL.
    /// vllm-project/router's `moriio` is refused: its pairing is not implemented.
    #[arg(long, value_parser = values::kv_connector)]
    pub kv_connector: Option<KvConnector>,
    /// Bind a ZMQ ROUTER socket here (`host:port`) where vLLM instances of the P2P NCCL
    /// connector register themselves as prefill or decode workers.
    #[arg(long, value_name = "HOST:PORT")]
    pub vllm_discovery_address: Option<String>,
    /// Seconds of silence after which a registered instance is dropped.
    #[arg(long, default_value_t = 5.0, value_parser = finite)]
    pub vllm_discovery_expiry_secs: f64,
    /// Conditional prefill: send a request straight to the decode worker, skipping the
    /// prefill leg, when fewer than this many of its prompt tokens (estimated from its text at
    /// the bytes per token the worker's reported usage shows, 4 until it reports any) are not
    /// already in the chosen decode worker's prefix cache. 0 disables.
    #[arg(long, default_value_t = 0)]
    pub pd_min_uncached_tokens: u32,
    /// When every prefill attempt failed, let the decode worker compute the prompt itself
    /// instead of answering an error (a full recompute on the decode worker).
    #[arg(long)]
    pub pd_recompute_on_prefill_failure: bool,
    /// Data-parallel ranks behind each worker URL: each rank is routed to like a worker of
    /// its own, named in the `X-data-parallel-rank` header; health is probed once per URL.
    #[arg(long, default_value_t = 1)]
    pub intra_node_data_parallel_size: u32,
    /// Find workers among Kubernetes pods (in-cluster config, or KUBECONFIG): a pod joins
    /// when Running and Ready, leaves when not Ready, deleted or moved to another IP.
    #[arg(long)]
    pub service_discovery: bool,
    /// Label selector of worker pods (`k=v`, space- or comma-separated; all must match).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "K=V")]
    pub selector: Vec<String>,
    /// Label selector of prefill pods in P/D mode.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "K=V")]
    pub prefill_selector: Vec<String>,
    /// Label selector of decode pods in P/D mode.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "K=V")]
    pub decode_selector: Vec<String>,
    /// SGLang's gateway's discovery flags.
    #[command(flatten)]
    #[serde(flatten)]
    pub discovery: DiscoveryArgs,
    /// Namespace watched for worker pods [default: the router's own namespace in a cluster,
    /// else the kubeconfig context's].
    #[arg(long)]
    pub service_discovery_namespace: Option<String>,
    /// Port of vLLM's HTTP server on each discovered pod.
    #[arg(long, default_value_t = 8000)]
    pub service_discovery_port: u16,
    /// Pod annotation that carries a prefill pod's Mooncake bootstrap port.
    #[arg(long, default_value = "vllm.ai/bootstrap-port")]
    pub bootstrap_port_annotation: String,
    /// Seconds a whole request may take, retries and streaming included: past it a pending
    /// request is answered 504 and a stream ends with an error event.
    #[arg(long, default_value_t = 1800)]
    pub request_timeout_secs: u64,
    /// Seconds to open a connection to a worker (a failure is retried on another worker).
    #[arg(long, default_value_t = 5)]
    pub connect_timeout_secs: u64,
    /// Seconds to a worker's response headers (long prompts prefill before the first byte).
    /// For a stream, past it the attempt fails and may be retried elsewhere; a request that
    /// does not stream gets its headers with the whole answer, so it is waited for up to the
    /// request timeout while its worker passes its health checks.
    #[arg(long, default_value_t = 300)]
    pub first_byte_timeout_secs: u64,
    /// Seconds a response may go without a byte once it started; past it a stream ends with
    /// an error event. Never retried.
    #[arg(long, default_value_t = 120)]
    pub stream_idle_timeout_secs: u64,
    /// Retries of one request on other workers (connect failures, resets before the
    /// response, 408/429/500/502/503/504 and any of --retry-on-status).
    #[arg(long, default_value_t = 3)]
    pub retry_max_retries: u32,
    /// First backoff before a retry, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub retry_initial_backoff_ms: u64,
    /// Longest backoff (and longest Retry-After honoured), in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub retry_max_backoff_ms: u64,
    /// Backoff growth per retry.
    #[arg(long, default_value_t = 2.0, value_parser = finite)]
    pub retry_backoff_multiplier: f64,
    /// Random spread of each backoff, as a fraction of it (0..1).
    #[arg(long, default_value_t = 0.2, value_parser = finite)]
    pub retry_jitter_factor: f64,
    /// Statuses retried on another worker besides 408/429/500/502/503/504 (e.g. 409).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub retry_on_status: Vec<u16>,
    /// Retries allowed, as a fraction of requests (a sick fleet is not hammered)...
    #[arg(long, default_value_t = 0.2, value_parser = finite)]
    pub retry_budget_ratio: f64,
    /// ...plus this many retries per second whatever the traffic.
    #[arg(long, default_value_t = 5.0, value_parser = finite)]
    pub retry_budget_min_per_sec: f64,
    /// Never retry.
    #[arg(long)]
    pub disable_retries: bool,
    /// Consecutive failed requests that open a worker's circuit breaker.
    #[arg(long, default_value_t = 5)]
    pub cb_failure_threshold: u32,
    /// Successful trial requests that close it again.
    #[arg(long, default_value_t = 2)]
    pub cb_success_threshold: u32,
    /// Seconds an open breaker waits before letting trial requests through (half-open).
    #[arg(long, default_value_t = 30)]
    pub cb_timeout_duration_secs: u64,
    /// Trial requests a half-open breaker lets through at once.
    #[arg(long, default_value_t = 1)]
    pub cb_half_open_max_requests: u32,
    /// Seconds within which failures count together toward --cb-failure-threshold: a failure
    /// more than this after the one before starts the count again.
    #[arg(long, default_value_t = 120)]
    pub cb_window_duration_secs: u64,
    /// Never open circuit breakers.
    #[arg(long)]
    pub disable_circuit_breaker: bool,
    /// Requests served at once, counted until the end of each stream (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for a slot when all are taken; the rest get 429.
    #[arg(long, default_value_t = 256)]
    pub queue_size: usize,
    /// Seconds a request may wait for a slot before it gets 429.
    #[arg(long, default_value_t = 30)]
    pub queue_timeout_secs: u64,
    /// Requests admitted per second, sustained (a token bucket); over it, 429.
    #[arg(long, value_parser = finite)]
    pub rate_limit_tokens_per_second: Option<f64>,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_payload_size: usize,
    /// Seconds a client has to send a whole request head (slowloris guard); an idle
    /// keep-alive connection is closed after the same time.
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Largest request head (request line plus headers) accepted, in bytes; a larger one
    /// gets 431 and the connection is closed.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds a client has to send its whole request body; past it the answer is 408 and the
    /// connection closes. The body is read before the request takes an admission slot.
    #[arg(long, default_value_t = 60)]
    pub body_read_timeout_secs: u64,
    /// Bytes a second a request body must average once its first second is over (0: no
    /// minimum); a slower upload is answered 408 and its connection closed.
    #[arg(long, default_value_t = 1024)]
    pub body_min_bytes_per_sec: u64,
    /// Seconds a client may leave the router's writes unread (a slow or stalled reader);
    /// past it the connection is closed and the worker's request dropped.
    #[arg(long, default_value_t = 60)]
    pub client_write_timeout_secs: u64,
    /// Seconds in-flight requests and streams may take to finish after SIGTERM or Ctrl-C;
    /// past it, streams end with an error event and the rest is closed.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// What the `x-vllm-router-worker` header of every answer carries: `url`, an opaque `id`
    /// (the admin API's worker id), or `off`. `nginx` is `url` plus nginx's `X-Upstream-Addr`
    /// and `X-Upstream-Status`: every attempt's `host:port` and status.
    #[arg(long, value_enum, default_value_t = WorkerHeader::Url)]
    pub worker_header: WorkerHeader,
    /// Name workers by URL in the 502 and 504 messages clients receive; by default they name
    /// the opaque worker id (logs and metrics always have the URL).
    #[arg(long)]
    pub errors_name_worker_urls: bool,
    /// Headers searched, in order, for the client's request id.
    #[arg(
        long,
        num_args = 1..,
        value_delimiter = ',',
        default_values_t = ["x-request-id", "x-correlation-id", "x-trace-id", "request-id"].map(String::from)
    )]
    pub request_id_headers: Vec<String>,
    /// Address of the Prometheus metrics listener.
    #[arg(long, default_value = "127.0.0.1")]
    pub prometheus_host: String,
    /// Port of the Prometheus metrics listener (0 disables it).
    #[arg(long, default_value_t = 29000)]
    pub prometheus_port: u16,
    /// Also export vllm-project/router's series names (`vllm_router_active_workers`,
    /// `_worker_health`, `_cb_state`, `_processed_requests_total`,
    /// `_generate_duration_seconds`, ...) for dashboards built on them. Read at start.
    #[arg(long)]
    pub peer_metrics: bool,
    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Write log lines to stderr (`false`: only to the files of --log-dir). The TOML router's
    /// `LOG_TO_CONSOLE` sets it too.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub log_to_console: bool,
    /// Format of log lines on stderr: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also write logs to files in this directory: `vllm-router.log` (everything),
    /// `vllm-router.errors.log` (warnings and errors) and `vllm-router.jsonl` (JSON lines),
    /// rotated by --log-rotation.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// When the log files in --log-dir start a new file.
    #[arg(long, value_enum, default_value_t = LogRotation::Daily)]
    pub log_rotation: LogRotation,
    /// Files kept of each log in --log-dir, the current one included (older ones are deleted).
    #[arg(long, default_value_t = 7)]
    pub log_max_files: usize,
    /// Send this bearer key to workers (vLLM's own `--api-key`) in place of the client's
    /// `Authorization`; also used for the router's own calls to workers (models, health,
    /// metrics). Without it, the client's header is forwarded as it came.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Client API keys accepted as `Authorization: Bearer KEY` (space- or comma-separated).
    /// With none here, in --api-keys-file or behind --api-key-validation-urls, inference is
    /// open to every client.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// A file of client API keys, one per line (`#` starts a comment); re-read with the
    /// config.
    #[arg(long, value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// URLs asked about a client key not in the static keys: the key is valid when one of them
    /// answers 200 to a request bearing it (also `API_KEY_VALIDATION_URLS`, comma-separated).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "URL")]
    pub api_key_validation_urls: Vec<String>,
    /// Seconds a key a validation URL accepted stays valid without asking again.
    #[arg(long, default_value_t = 300)]
    pub api_key_cache_ttl_secs: u64,
    /// Seconds a key a validation URL refused stays refused without asking again.
    #[arg(long, default_value_t = 10)]
    pub api_key_rejected_ttl_secs: u64,
    /// Keys remembered at most (valid and refused together); the least recently used leave
    /// first.
    #[arg(long, default_value_t = 10_000)]
    pub api_key_cache_size: usize,
    /// Milliseconds a validation URL may take to answer; past it, and while none answers, the
    /// client gets 503 (its key is not refused).
    #[arg(long, default_value_t = 2000)]
    pub api_key_validation_timeout_ms: u64,
    /// Origins allowed to call the router from a browser (CORS), such as
    /// `https://app.example.com`; `*` allows any. None by default: no CORS headers at all.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "ORIGIN")]
    pub cors_allowed_origins: Vec<String>,
    /// Export trace spans by OTLP over HTTP to this URL (e.g.
    /// `http://collector:4318/v1/traces`). W3C `traceparent` is passed to workers either way.
    #[arg(long, value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,
    /// Seconds to wait at start for workers to answer `/v1/models`.
    #[arg(long, default_value_t = 600)]
    pub worker_startup_timeout_secs: u64,
    /// Seconds between start-up checks of a worker that has not answered yet.
    #[arg(long, default_value_t = 2)]
    pub worker_startup_check_interval: u64,
    /// Seconds between health probes of every worker.
    #[arg(long, default_value_t = 10)]
    pub health_check_interval_secs: u64,
    /// Consecutive failures (probes, or connect errors, resets and 5xx on live traffic) that
    /// take a worker out of rotation.
    #[arg(long, default_value_t = 3)]
    pub health_failure_threshold: u32,
    /// Consecutive good probes that bring it back.
    #[arg(long, default_value_t = 2)]
    pub health_success_threshold: u32,
    /// Seconds a health probe may take before it counts as failed.
    #[arg(long, default_value_t = 5)]
    pub health_check_timeout_secs: u64,
    /// Path probed on each worker.
    #[arg(long, default_value = "/health")]
    pub health_check_endpoint: String,
    /// Milliseconds between scrapes of each worker's `/metrics` for load (0 disables; load
    /// is then the router's in-flight count alone).
    #[arg(long, default_value_t = 1000)]
    pub load_scrape_interval_ms: u64,
    /// Headers that carry a session key, searched in order before the body's
    /// `session_params.session_id`, `user`, `session_id` and `user_id` fields. Request ids are
    /// never session keys.
    /// SGLang's gateway's `--routing-key-headers` is taken as this flag.
    #[arg(
        long,
        alias = "routing-key-headers",
        num_args = 1..,
        value_delimiter = ',',
        default_values_t = ["x-session-id", "x-user-id", "x-tenant-id"].map(String::from)
    )]
    pub session_key_headers: Vec<String>,
    /// vllm-project/router's kv_aware flags: the policy that routes on vLLM's KV-cache
    /// events is not in this version, and a configuration that sets any of them is refused
    /// with a message saying so.
    #[command(flatten)]
    #[serde(flatten)]
    pub kv_events: KvEventArgs,
    /// vllm-project/router's WASM middleware flags: refused, with a message saying so.
    #[command(flatten)]
    #[serde(flatten)]
    pub wasm: WasmArgs,
    /// Answer `/health` as vllm-project/router does: 200 `All servers healthy`, or 503
    /// `Unhealthy servers: [...]` while any worker is out. By default it is 200 while any
    /// worker is healthy (JSON with the counts), which is what a probe of the router needs.
    #[arg(long)]
    pub health_compat: bool,
    /// `consistent_hash`: no worker takes more than this factor of the mean in-flight.
    #[arg(long, default_value_t = 1.25, value_parser = finite)]
    pub hash_load_factor: f64,
    /// `cache_aware`: least fraction (0..1) of a prompt some worker must hold for the cache
    /// to count; below it the least loaded worker wins.
    #[arg(long, default_value_t = 0.3, value_parser = finite)]
    pub cache_threshold: f64,
    /// `cache_aware`: load balancing overrides the cache when (max_load - min_load) exceeds
    /// this AND max_load > min_load * --balance-rel-threshold. Load: in flight plus waiting.
    #[arg(long, default_value_t = 64.0, value_parser = finite)]
    pub balance_abs_threshold: f64,
    /// `cache_aware`: see --balance-abs-threshold.
    #[arg(long, default_value_t = 1.5, value_parser = finite)]
    pub balance_rel_threshold: f64,
    /// `weighted`: KV-cache use (0..1) at which a worker drops to the second, third and
    /// fourth weight step (the nginx recipe's 0.75, 0.85, 0.92).
    #[arg(long, num_args = 1.., value_name = "KV", value_delimiter = ',', value_parser = finite, default_values_t = [0.75, 0.85, 0.92])]
    pub weighted_kv_thresholds: Vec<f64>,
    /// `weighted`: the four weight steps, from an idle worker's down.
    #[arg(long, num_args = 1.., value_name = "WEIGHT", value_delimiter = ',', value_parser = finite, default_values_t = [100.0, 60.0, 30.0, 10.0])]
    pub weighted_steps: Vec<f64>,
    /// `weighted`: more requests running than this is one step down.
    #[arg(long, default_value_t = 8)]
    pub weighted_max_running: u32,
    /// `cache_aware`: seconds between sweeps of every prefix index down to its capacity.
    #[arg(long, default_value_t = 120)]
    pub eviction_interval_secs: u64,
    /// `cache_aware`: bytes of prompt text each worker's prefix index may hold (a worker's
    /// KV capacity from its metrics lowers it further).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_tree_size: u64,
}

/// The router's flags alone, as a parser of their own (defaults, tests).
#[derive(Parser, Debug)]
#[command(name = "vllm-router")]
pub struct RouterOnly {
    /// The flags.
    #[command(flatten)]
    pub args: RouterArgs,
}

impl Default for RouterArgs {
    /// Every flag at its default, as if the router were started with none.
    fn default() -> Self {
        RouterOnly::parse_from(["vllm-router"]).args
    }
}

/// A number that is finite: `inf` and `NaN` are refused where they are given, naming the flag.
fn finite(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("must be a finite number".into()),
        Err(e) => Err(e.to_string()),
    }
}
