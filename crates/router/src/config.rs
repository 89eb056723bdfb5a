//! One validated, typed configuration. Raw flags become durations, non-zero sizes, header
//! names and parsed worker URLs here; every error names the flag and the value at fault.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use crate::admission::AdmissionConfig;
use crate::cli::{LogFormat, LogLevel, LogRotation, RouterArgs};
use crate::policy::{CacheAwareConfig, PolicyConfig, PolicyKind};
use crate::prefix::BLOCK_BYTES;

/// When and how a failed attempt is retried on another worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries of one request (0 disables).
    pub max_retries: u32,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Longest backoff, and longest `Retry-After` honoured.
    pub max_backoff: Duration,
    /// Backoff growth per retry.
    pub multiplier: f64,
    /// Random spread of each backoff, as a fraction of it.
    pub jitter: f64,
    /// Statuses retried besides 502, 503 and 504.
    pub extra_statuses: Vec<u16>,
    /// Retries allowed as a fraction of requests...
    pub budget_ratio: f64,
    /// ...plus this many per second.
    pub budget_min_per_sec: f64,
}

/// Per-worker circuit breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Whether breakers open at all.
    pub enabled: bool,
    /// Consecutive failed requests that open a breaker.
    pub failure_threshold: u32,
    /// Successful trial requests that close it.
    pub success_threshold: u32,
    /// Time an open breaker waits before trial requests (half-open).
    pub open_for: Duration,
    /// Trial requests let through at once while half-open.
    pub half_open_max: u32,
}

/// How long each stage of a request may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// Until a worker's response headers.
    pub first_byte: Duration,
    /// Between two frames of a response.
    pub stream_idle: Duration,
    /// The whole request.
    pub total: Duration,
}

/// How the router probes worker health.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Time between probe rounds.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Path probed, starting with `/`.
    pub endpoint: String,
    /// Consecutive failures that take a worker out of rotation.
    pub failure_threshold: u32,
    /// Consecutive good probes that bring it back.
    pub success_threshold: u32,
}

/// How the router's own listener treats client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Time a client has to send a whole request head; also how long an idle keep-alive
    /// connection stays open.
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes (at least [`MIN_HEADER_BYTES`]).
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish once shutdown starts.
    pub shutdown_timeout: Duration,
    /// Time a client may leave the router's writes unread before its connection closes.
    pub client_write_timeout: Duration,
}

/// Where and how the router logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Verbosity.
    pub level: LogLevel,
    /// Line format on stderr.
    pub format: LogFormat,
    /// Directory of the log files, when they are written.
    pub dir: Option<PathBuf>,
    /// When the files rotate.
    pub rotation: LogRotation,
    /// Files kept of each log.
    pub max_files: NonZeroUsize,
}

/// The smallest `--max-header-bytes`: the HTTP/1 read buffer cannot be made smaller.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// The largest `--max-header-bytes`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;

/// The router's whole configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Host to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Workers given at start.
    pub workers: Vec<WorkerSpec>,
    /// The routing policy asked for.
    pub policy: PolicyKind,
    /// Settings of the policies.
    pub policy_config: PolicyConfig,
    /// Interval of the load scrape of workers' `/metrics`, or `None` when disabled.
    pub load_scrape_interval: Option<Duration>,
    /// Headers searched, in order, for a session key.
    pub session_key_headers: Vec<HeaderName>,
    /// How long each stage of a request may take.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryConfig,
    /// Admission control.
    pub admission: AdmissionConfig,
    /// Circuit breakers.
    pub breaker: BreakerConfig,
    /// Largest request body accepted.
    pub max_payload_size: NonZeroUsize,
    /// Client connection limits and the shutdown drain.
    pub listener: ListenerConfig,
    /// Headers searched, in order, for a client-given request id.
    pub request_id_headers: Vec<HeaderName>,
    /// Metrics listener address, or `None` when disabled.
    pub metrics_listen: Option<(String, u16)>,
    /// Logging.
    pub log: LogConfig,
    /// Client authentication.
    pub auth: AuthConfig,
    /// The bearer key sent to workers in place of the client's, when set.
    pub worker_api_key: Option<Secret>,
    /// Origins browsers may call from.
    pub cors: CorsOrigins,
    /// Where trace spans are exported (OTLP over HTTP), when they are.
    pub otlp_traces_endpoint: Option<http::Uri>,
    /// How long start-up waits for workers to list their models.
    pub startup_timeout: Duration,
    /// Time between start-up checks of a worker not yet answering.
    pub startup_check_interval: Duration,
    /// Health probing.
    pub health: HealthConfig,
    /// Prefill/decode disaggregation, when enabled.
    pub pd: Option<PdConfig>,
    /// Kubernetes pod discovery, when enabled.
    pub service_discovery: Option<ServiceDiscoveryConfig>,
    /// Data-parallel ranks behind each worker URL unless its entry says otherwise.
    pub data_parallel_size: NonZeroU32,
    /// The config file, watched for changes.
    pub config_file: Option<PathBuf>,
    /// Interval of re-reads of the config file besides watching it, or `None`.
    pub config_reload_interval: Option<Duration>,
    /// The key the admin API requires, or `None` for loopback clients only.
    pub admin_api_key: Option<Secret>,
    /// Only validate the configuration (`--check-config`).
    pub check_only: bool,
    /// Settings accepted without effect, to be logged when the configuration is applied.
    pub warnings: Vec<String>,
    /// Each setting given explicitly, as `(key, value, place)`, sorted by key (empty for
    /// [`Config::from_args`]). Secrets are masked.
    pub given: Vec<(String, String, Place)>,
}

fn at_least_one(flag: &'static str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        return Err(invalid(flag, value, "must be at least 1"));
    }
    Ok(value)
}

fn retry(args: &RouterArgs) -> Result<RetryConfig, ConfigError> {
    if !(1.0..=MAX_BACKOFF_MULTIPLIER).contains(&args.retry_backoff_multiplier) {
        return Err(invalid(
            "--retry-backoff-multiplier",
            args.retry_backoff_multiplier,
            format!("must be between 1 and {MAX_BACKOFF_MULTIPLIER}"),
        ));
    }
    if !(0.0..=1.0).contains(&args.retry_jitter_factor) {
        return Err(invalid(
            "--retry-jitter-factor",
            args.retry_jitter_factor,
            "must be between 0 and 1",
        ));
    }
    if !(args.retry_budget_ratio >= 0.0 && args.retry_budget_ratio.is_finite()) {
        return Err(invalid(
            "--retry-budget-ratio",
            args.retry_budget_ratio,
            "must be 0 or more",
        ));
    }
    if !(args.retry_budget_min_per_sec >= 0.0 && args.retry_budget_min_per_sec.is_finite()) {
        return Err(invalid(
            "--retry-budget-min-per-sec",
            args.retry_budget_min_per_sec,
            "must be 0 or more",
        ));
    }
    if let Some(bad) = args
        .retry_on_status
        .iter()
        .find(|s| !(400..=599).contains(*s))
    {
        return Err(invalid(
            "--retry-on-status",
            bad,
            "must be an error status (400-599)",
        ));
    }
    let initial_backoff = millis(
        "--retry-initial-backoff-ms",
        args.retry_initial_backoff_ms,
        true,
    )?;
    let max_backoff = millis("--retry-max-backoff-ms", args.retry_max_backoff_ms, true)?;
    if max_backoff < initial_backoff {
        return Err(invalid(
            "--retry-max-backoff-ms",
            args.retry_max_backoff_ms,
            "must be at least --retry-initial-backoff-ms",
        ));
    }
    Ok(RetryConfig {
        max_retries: if args.disable_retries {
            0
        } else {
            args.retry_max_retries
        },
        initial_backoff,
        max_backoff,
        multiplier: args.retry_backoff_multiplier,
        jitter: args.retry_jitter_factor,
        extra_statuses: args.retry_on_status.clone(),
        budget_ratio: args.retry_budget_ratio,
        budget_min_per_sec: args.retry_budget_min_per_sec,
    })
}

fn cache_aware(args: &RouterArgs) -> Result<CacheAwareConfig, ConfigError> {
    if !(0.0..=1.0).contains(&args.cache_threshold) {
        return Err(invalid(
            "--cache-threshold",
            args.cache_threshold,
            "must be between 0 and 1",
        ));
    }
    if !(args.balance_abs_threshold >= 0.0 && args.balance_abs_threshold.is_finite()) {
        return Err(invalid(
            "--balance-abs-threshold",
            args.balance_abs_threshold,
            "must be 0 or more",
        ));
    }
    if !(args.balance_rel_threshold > 0.0 && args.balance_rel_threshold.is_finite()) {
        return Err(invalid(
            "--balance-rel-threshold",
            args.balance_rel_threshold,
            "must be above 0",
        ));
    }
    if args.max_tree_size < BLOCK_BYTES as u64 {
        return Err(invalid(
            "--max-tree-size",
            args.max_tree_size,
            format!("must be at least {BLOCK_BYTES}"),
        ));
    }
    Ok(CacheAwareConfig {
        cache_threshold: args.cache_threshold,
        balance_abs_threshold: args.balance_abs_threshold,
        balance_rel_threshold: args.balance_rel_threshold,
        eviction_interval: secs(
            "--eviction-interval-secs",
            args.eviction_interval_secs,
            false,
        )?,
        max_tree_size: args.max_tree_size,
    })
}

fn header_names(flag: &'static str, raw: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    raw.iter()
        .map(|h| {
            HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| invalid(flag, h, "not a valid header name"))
        })
        .collect()
}

fn listener_config(args: &RouterArgs) -> Result<ListenerConfig, ConfigError> {
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&args.max_header_bytes) {
        return Err(invalid(
            "--max-header-bytes",
            args.max_header_bytes,
            format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
        ));
    }
    Ok(ListenerConfig {
        header_read_timeout: secs(
            "--header-read-timeout-secs",
            args.header_read_timeout_secs,
            false,
        )?,
        max_header_bytes: args.max_header_bytes,
        shutdown_timeout: secs("--shutdown-timeout-secs", args.shutdown_timeout_secs, true)?,
        client_write_timeout: secs(
            "--client-write-timeout-secs",
            args.client_write_timeout_secs,
            false,
        )?,
    })
}

impl Config {
    /// Validate raw flags into a configuration.
    pub fn from_args(args: RouterArgs) -> Result<Self, ConfigError> {
        Self::build(args, &[])
    }

    /// Validate merged settings and the config file's workers into a configuration.
    fn build(args: RouterArgs, file_workers: &[FileWorker]) -> Result<Self, ConfigError> {
        let mut workers: Vec<WorkerUrl> = Vec::with_capacity(args.worker_urls.len());
        for raw in args.worker_urls.iter().filter(|u| !u.trim().is_empty()) {
            let url = WorkerUrl::parse("--worker-urls", raw)?;
            if workers.iter().any(|w| w.text == url.text) {
                return Err(invalid("--worker-urls", raw, "listed twice"));
            }
            workers.push(url);
        }
        let mut workers = with_capacities(workers, &args.worker_capacity)?;
        let ranks = NonZeroU32::new(args.intra_node_data_parallel_size)
            .ok_or_else(|| invalid("--intra-node-data-parallel-size", 0, "must be at least 1"))?;
        let service_discovery = service_discovery(&args, ranks)?;
        let pd_enabled = args.vllm_pd_disaggregation || args.vllm_discovery_address.is_some();
        let mut from_file = Vec::with_capacity(file_workers.len());
        for entry in file_workers {
            let spec = entry.spec(ranks, pd_enabled)?;
            if workers
                .iter()
                .chain(&from_file)
                .any(|w: &WorkerSpec| w.url == spec.url)
            {
                return Err(entry.invalid(&spec.url.text, "listed twice"));
            }
            from_file.push(spec);
        }
        let pd = pd_config(
            &args,
            &mut workers,
            &from_file,
            ranks,
            service_discovery.is_some(),
        )?;
        for w in &mut workers {
            w.ranks = ranks;
        }
        workers.extend(from_file);
        let max_payload_size = NonZeroUsize::new(args.max_payload_size)
            .ok_or_else(|| invalid("--max-payload-size", 0, "must be at least 1 byte"))?;
        let request_id_headers = header_names("--request-id-headers", &args.request_id_headers)?;
        let session_key_headers = header_names("--session-key-headers", &args.session_key_headers)?;
        if let Some(shared) = session_key_headers
            .iter()
            .find(|h| request_id_headers.contains(h))
        {
            return Err(invalid(
                "--session-key-headers",
                shared,
                "a request id changes with every request and cannot be a session key",
            ));
        }
        if !(args.hash_load_factor >= 1.0 && args.hash_load_factor.is_finite()) {
            return Err(invalid(
                "--hash-load-factor",
                args.hash_load_factor,
                "must be at least 1.0",
            ));
        }
        if !args.health_check_endpoint.starts_with('/') {
            return Err(invalid(
                "--health-check-endpoint",
                &args.health_check_endpoint,
                "must start with /",
            ));
        }
        let cache_aware = cache_aware(&args)?;
        let retry = retry(&args)?;
        let listener = listener_config(&args)?;
        if let Some(rate) = args.rate_limit_tokens_per_second
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(invalid(
                "--rate-limit-tokens-per-second",
                rate,
                "must be above 0",
            ));
        }
        let admission = AdmissionConfig {
            max_concurrent: NonZeroUsize::new(args.max_concurrent_requests),
            queue_size: args.queue_size,
            queue_timeout: secs("--queue-timeout-secs", args.queue_timeout_secs, true)?,
            rate_limit_per_sec: args.rate_limit_tokens_per_second,
        };
        let auth = auth_config(&args)?;
        let cors = cors_origins(&args)?;
        let worker_api_key = worker_api_key(&args)?;
        let otlp_traces_endpoint = args
            .otlp_traces_endpoint
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| security::http_url("--otlp-traces-endpoint", u))
            .transpose()?;
        let metrics_listen = (args.prometheus_port != 0)
            .then(|| (args.prometheus_host.clone(), args.prometheus_port));
        Ok(Self {
            host: args.host,
            port: args.port,
            workers,
            policy: args.policy.unwrap_or(PolicyKind::CacheAware),
            policy_config: PolicyConfig {
                hash_load_factor: args.hash_load_factor,
                cache_aware,
            },
            load_scrape_interval: Some(millis(
                "--load-scrape-interval-ms",
                args.load_scrape_interval_ms,
                true,
            )?)
            .filter(|d| !d.is_zero()),
            session_key_headers,
            timeouts: Timeouts {
                connect: secs("--connect-timeout-secs", args.connect_timeout_secs, false)?,
                first_byte: secs(
                    "--first-byte-timeout-secs",
                    args.first_byte_timeout_secs,
                    false,
                )?,
                stream_idle: secs(
                    "--stream-idle-timeout-secs",
                    args.stream_idle_timeout_secs,
                    false,
                )?,
                total: secs("--request-timeout-secs", args.request_timeout_secs, false)?,
            },
            retry,
            admission,
            breaker: BreakerConfig {
                enabled: !args.disable_circuit_breaker,
                failure_threshold: at_least_one(
                    "--cb-failure-threshold",
                    args.cb_failure_threshold,
                )?,
                success_threshold: at_least_one(
                    "--cb-success-threshold",
                    args.cb_success_threshold,
                )?,
                open_for: secs(
                    "--cb-timeout-duration-secs",
                    args.cb_timeout_duration_secs,
                    false,
                )?,
                half_open_max: at_least_one(
                    "--cb-half-open-max-requests",
                    args.cb_half_open_max_requests,
                )?,
            },
            max_payload_size,
            listener,
            request_id_headers,
            metrics_listen,
            log: LogConfig {
                level: args.log_level,
                format: args.log_format,
                dir: args.log_dir.clone(),
                rotation: args.log_rotation,
                max_files: NonZeroUsize::new(args.log_max_files)
                    .ok_or_else(|| invalid("--log-max-files", 0, "must be at least 1"))?,
            },
            auth,
            worker_api_key,
            cors,
            otlp_traces_endpoint,
            startup_timeout: secs(
                "--worker-startup-timeout-secs",
                args.worker_startup_timeout_secs,
                true,
            )?,
            startup_check_interval: secs(
                "--worker-startup-check-interval",
                args.worker_startup_check_interval,
                false,
            )?,
            health: HealthConfig {
                interval: secs(
                    "--health-check-interval-secs",
                    args.health_check_interval_secs,
                    false,
                )?,
                timeout: secs(
                    "--health-check-timeout-secs",
                    args.health_check_timeout_secs,
                    false,
                )?,
                endpoint: args.health_check_endpoint,
                failure_threshold: at_least_one(
                    "--health-failure-threshold",
                    args.health_failure_threshold,
                )?,
                success_threshold: at_least_one(
                    "--health-success-threshold",
                    args.health_success_threshold,
                )?,
            },
            pd,
            service_discovery,
            data_parallel_size: ranks,
            config_file: args.config,
            config_reload_interval: Some(secs(
                "--config-reload-interval-secs",
                args.config_reload_interval_secs,
                true,
            )?)
            .filter(|d| !d.is_zero()),
            admin_api_key: args
                .admin_api_key
                .filter(|k| !k.trim().is_empty())
                .map(|k| Secret::new(k.trim())),
            check_only: args.check_config,
            warnings: Vec::new(),
            given: Vec::new(),
        })
    }

    /// Defaults with the given workers: the starting point for embedding and tests.
    pub fn with_workers<I, S>(urls: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args = RouterArgs {
            worker_urls: urls.into_iter().map(Into::into).collect(),
            ..RouterArgs::default()
        };
        Self::from_args(args)
    }
}

mod bounds;
mod error;
mod file;
mod kube;
mod layers;
mod pd;
mod security;
mod summary;
#[cfg(test)]
mod tests;
mod workers;

pub use bounds::{MAX_BACKOFF_MULTIPLIER, MAX_DURATION_SECS};
use bounds::{millis, secs};
pub(crate) use error::invalid;
pub use error::{ConfigError, Secret};
use file::FileWorker;
pub use file::worker_from_json;
use kube::service_discovery;
pub use kube::{Selector, ServiceDiscoveryConfig};
pub use layers::{ENV_PREFIX, Place, Sources, fingerprint};
use pd::pd_config;
pub use pd::{DiscoveryConfig, PdConfig};
pub use security::{AuthConfig, CorsOrigins};
use security::{auth_config, cors_origins, worker_api_key};
use workers::with_capacities;
pub use workers::{Origin, Role, WorkerSpec, WorkerUrl};
