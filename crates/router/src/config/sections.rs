//! The configuration's sections (retries, breakers, timeouts, health, the listener, logs)
//! and the validation of the ones built from several flags.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use super::bounds::{MAX_BACKOFF_MULTIPLIER, millis, secs};
use super::{ConfigError, invalid};
use crate::cli::{LogFormat, LogLevel, LogRotation, RouterArgs, WorkerHeader};
use crate::policy::{CacheAwareConfig, WeightedConfig};
use crate::prefix::BLOCK_BYTES;

/// Who may reach the admin API, where, and what workers it adds are trusted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSurface {
    /// A listener of its own (host, port), or `None` to share the client port.
    pub listen: Option<(String, u16)>,
    /// Without an admin key, loopback clients are let in.
    pub loopback: bool,
    /// Workers added through the admin API receive the workers' key.
    pub key_to_added: bool,
}

/// How a client's request body must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The whole body within this time.
    pub read_timeout: Duration,
    /// After its first second, at least this many bytes a second on average (0: no minimum).
    pub min_bytes_per_sec: u64,
}

/// What clients learn of the worker that served them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    /// What `x-vllm-router-worker` carries.
    pub worker_header: WorkerHeader,
    /// 502 and 504 messages name the worker's URL rather than its opaque id.
    pub error_urls: bool,
}

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
    /// Failures count together only while each comes within this of the one before.
    pub window: Duration,
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
    /// Where stderr's lines go, if anywhere.
    pub console: Console,
    /// Line format on stderr.
    pub format: LogFormat,
    /// Directory of the log files, when they are written.
    pub dir: Option<PathBuf>,
    /// When the files rotate.
    pub rotation: LogRotation,
    /// Files kept of each log.
    pub max_files: NonZeroUsize,
}

/// What the log writes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Every line the level lets through.
    All,
    /// Errors only: a terminal view owns the screen.
    ErrorsOnly,
    /// Nothing (`--log-to-console false`): the files of `--log-dir` alone.
    Off,
}

/// The smallest `--max-header-bytes`: the HTTP/1 read buffer cannot be made smaller.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// The largest `--max-header-bytes`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;

pub(super) fn retry(args: &RouterArgs) -> Result<RetryConfig, ConfigError> {
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

pub(super) fn cache_aware(args: &RouterArgs) -> Result<CacheAwareConfig, ConfigError> {
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

pub(super) fn listener_config(args: &RouterArgs) -> Result<ListenerConfig, ConfigError> {
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

/// The `weighted` ladder: three rising KV thresholds within 0..1, four positive steps that
/// never rise.
pub(super) fn weighted(args: &RouterArgs) -> Result<WeightedConfig, ConfigError> {
    let t = &args.weighted_kv_thresholds;
    let thresholds: [f64; 3] = t.as_slice().try_into().map_err(|_| {
        invalid(
            "--weighted-kv-thresholds",
            format_args!("{t:?}"),
            "needs three values",
        )
    })?;
    if !thresholds.iter().all(|v| (0.0..=1.0).contains(v)) || !thresholds.is_sorted() {
        return Err(invalid(
            "--weighted-kv-thresholds",
            format_args!("{t:?}"),
            "must rise, each between 0 and 1",
        ));
    }
    let s = &args.weighted_steps;
    let steps: [f64; 4] = s.as_slice().try_into().map_err(|_| {
        invalid(
            "--weighted-steps",
            format_args!("{s:?}"),
            "needs four values",
        )
    })?;
    if !steps.iter().all(|v| *v > 0.0) || !steps.iter().rev().is_sorted() {
        return Err(invalid(
            "--weighted-steps",
            format_args!("{s:?}"),
            "must be above 0 and never rise",
        ));
    }
    Ok(WeightedConfig {
        kv_thresholds: thresholds,
        steps,
        max_running: f64::from(args.weighted_max_running),
    })
}
