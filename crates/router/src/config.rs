//! One validated, typed configuration. Raw flags become durations, non-zero sizes, header
//! names and parsed worker URLs here; every error names the flag and the value at fault.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use crate::admission::AdmissionConfig;
use crate::cli::RouterArgs;
use crate::policy::{PolicyConfig, PolicyKind};

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
    /// The admin API's listener and trust.
    pub admin: AdminSurface,
    /// How request bodies must arrive.
    pub body: BodyLimits,
    /// What `x-vllm-router-worker` carries, and whether client errors name worker URLs.
    pub exposure: Exposure,
    /// `/health` answers as vllm-project/router's does (`--health-compat`).
    pub health_compat: bool,
    /// vllm-project/router's metric names too (`--peer-metrics`), from the start.
    pub peer_metrics: bool,
    /// Model aliases, `(alias, canonical)`: at most one canonical model per alias.
    pub model_aliases: Vec<(String, String)>,
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
    /// Workers from a JSON manifest (`--discovery-provider file`), when enabled.
    pub manifest: Option<ManifestConfig>,
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

fn header_names(flag: &'static str, raw: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    raw.iter()
        .map(|h| {
            HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| invalid(flag, h, "not a valid header name"))
        })
        .collect()
}

impl Config {
    /// The model `model` is an alias of (`--model-alias`), if it is one.
    pub fn canonical_model(&self, model: &str) -> Option<&str> {
        self.model_aliases
            .iter()
            .find(|(alias, _)| alias == model)
            .map(|(_, canonical)| canonical.as_str())
    }

    /// Validate raw flags into a configuration.
    pub fn from_args(args: RouterArgs) -> Result<Self, ConfigError> {
        Self::build(args, &[])
    }

    /// Validate merged settings and the config file's workers into a configuration.
    fn build(args: RouterArgs, file_workers: &[FileWorker]) -> Result<Self, ConfigError> {
        if let Some(flag) = args.kv_events.first_set() {
            return Err(ConfigError::Unsupported {
                flag,
                reason: "it belongs to vllm-project/router's kv_aware policy (routing on vLLM's \
                         KV-cache events), which this version does not have yet; remove it: \
                         the default cache_aware routes on the prompts' shared prefixes",
                at: None,
            });
        }
        if let Some(flag) = args.wasm.first_set() {
            return Err(ConfigError::Unsupported {
                flag,
                reason: "it is vllm-project/router's WASM middleware, and this router runs no \
                         plugins: put request checks in front of it (an API gateway), or use \
                         --api-keys and --api-key-validation-urls for authentication",
                at: None,
            });
        }
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
        let manifest = manifest::manifest(&args)?;
        let weighted = sections::weighted(&args)?;
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
        let listen = args.admin_port.map(|port| {
            let host = args.admin_host.clone().unwrap_or_else(|| args.host.clone());
            (host, port)
        });
        Ok(Self {
            host: args.host,
            port: args.port,
            workers,
            policy: args.policy.unwrap_or(PolicyKind::CacheAware),
            policy_config: PolicyConfig {
                hash_load_factor: args.hash_load_factor,
                cache_aware,
                weighted,
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
                window: secs(
                    "--cb-window-duration-secs",
                    args.cb_window_duration_secs,
                    false,
                )?,
            },
            health_compat: args.health_compat,
            peer_metrics: args.peer_metrics,
            model_aliases: model_aliases(&args.model_alias)?,
            max_payload_size,
            listener,
            request_id_headers,
            admin: AdminSurface {
                listen,
                loopback: !args.admin_deny_loopback,
                key_to_added: args.api_key_to_added_workers,
            },
            body: BodyLimits {
                read_timeout: secs(
                    "--body-read-timeout-secs",
                    args.body_read_timeout_secs,
                    false,
                )?,
                min_bytes_per_sec: args.body_min_bytes_per_sec,
            },
            exposure: Exposure {
                worker_header: args.worker_header,
                error_urls: args.errors_name_worker_urls,
            },
            metrics_listen,
            log: LogConfig {
                level: args.log_level,
                console: if args.log_to_console {
                    Console::All
                } else {
                    Console::Off
                },
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
            manifest,
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
        }
        .with_safety_notes())
    }

    /// Say once, at start, where a compatible setting meets a safer default of ours.
    fn with_safety_notes(mut self) -> Self {
        if self.worker_api_key.is_some() && !self.admin.key_to_added {
            self.warnings.push(
                "workers added through the admin API (/add_worker, POST /workers) get no \
                 Authorization header, so the workers' key (--api-key) is not sent to them; \
                 --api-key-to-added-workers sends it"
                    .to_owned(),
            );
        }
        if self.worker_api_key.is_some() && !self.auth.is_required() {
            self.warnings.push(
                "--api-key is the key sent to workers; clients need no key to use this router \
                 (SGLang's gateway's --api-key also required it of clients): --api-keys KEY \
                 requires one"
                    .to_owned(),
            );
        }
        self
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

/// `ALIAS=MODEL` entries, each alias naming one model and no alias naming itself.
fn model_aliases(raw: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut aliases: Vec<(String, String)> = Vec::with_capacity(raw.len());
    for entry in raw.iter().filter(|e| !e.trim().is_empty()) {
        let (alias, canonical) = entry
            .split_once('=')
            .map(|(a, c)| (a.trim(), c.trim()))
            .filter(|(a, c)| !a.is_empty() && !c.is_empty() && !c.contains('='))
            .ok_or_else(|| {
                invalid(
                    "--model-alias",
                    entry,
                    "expected ALIAS=MODEL, as in gpt-4o=meta-llama/Llama-3.1-8B-Instruct",
                )
            })?;
        if alias == canonical {
            return Err(invalid(
                "--model-alias",
                entry,
                "an alias cannot name itself",
            ));
        }
        match aliases.iter().find(|(a, _)| a == alias) {
            Some((_, other)) if other != canonical => {
                return Err(invalid(
                    "--model-alias",
                    entry,
                    format_args!("'{alias}' is already an alias of '{other}'"),
                ));
            }
            Some(_) => {}
            None => aliases.push((alias.to_owned(), canonical.to_owned())),
        }
    }
    Ok(aliases)
}

mod bounds;
mod dotenv;
mod error;
mod file;
mod kube;
mod layers;
mod manifest;
mod pd;
mod sections;
mod security;
mod summary;
#[cfg(test)]
mod tests;
mod workers;

pub use bounds::{MAX_BACKOFF_MULTIPLIER, MAX_DURATION_SECS};
use bounds::{millis, secs};
pub use dotenv::DotEnv;
pub(crate) use error::invalid;
pub use error::{ConfigError, Secret};
use file::FileWorker;
pub use file::worker_from_json;
use kube::service_discovery;
pub use kube::{Selector, ServiceDiscoveryConfig};
pub use layers::{ENV_PREFIX, Place, Sources, fingerprint};
pub use manifest::ManifestConfig;
use pd::pd_config;
pub use pd::{DiscoveryConfig, PdConfig};
pub use sections::{
    AdminSurface, BodyLimits, BreakerConfig, Console, Exposure, HealthConfig, ListenerConfig,
    LogConfig, MAX_HEADER_BYTES, MIN_HEADER_BYTES, RetryConfig, Timeouts,
};
use sections::{cache_aware, listener_config, retry};
pub use security::{AuthConfig, CorsOrigins};
use security::{auth_config, cors_origins, worker_api_key};
use workers::with_capacities;
pub use workers::{Origin, Role, WorkerSpec, WorkerUrl};
