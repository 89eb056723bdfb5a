//! Logging, the record of each request ([`exchange`]: its metrics and access line), the metrics
//! registry, and tracing: W3C trace context passed to workers ([`trace`]) and spans ([`span`])
//! exported by OTLP when a collector is configured ([`otlp`]).
//!
//! Lines go to stderr as text or JSON (`--log-format`) and, with `--log-dir`, to three rotated
//! files. Every sink shares one filter: `--log-level` for the router's own targets and `warn`
//! for its dependencies, or `RUST_LOG` when set. Whatever the filter, dependencies that print
//! header values at some level are capped below it ([`CAPS`]).

pub mod exchange;
mod files;
mod lines;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod span;
pub mod trace;
pub mod usage;

use std::io::IsTerminal;
use std::num::NonZeroUsize;

use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

pub use files::{LogError, LogGuard};

use crate::cli::{LogFormat, LogLevel, LogRotation};
use crate::config::{Console, LogConfig};

/// Targets held below a level whatever the filter (`RUST_LOG` included), because at that level
/// they print what may hold a secret.
pub const CAPS: &[(&str, LevelFilter)] = &[
    // At trace the Kubernetes client prints every response's headers.
    ("kube_client", LevelFilter::DEBUG),
];

/// Install the global subscriber for `config`: stderr, plus the log files when a directory is
/// given. Keep the guard until exit: dropping it writes out the buffered lines. Fails
/// only when the log directory cannot be created or written. When a subscriber is already
/// installed, it stays.
pub fn init(config: &LogConfig) -> Result<LogGuard, LogError> {
    let ansi = std::io::stderr().is_terminal();
    // Written by a thread of its own, in batches, as the files are: a request never waits on
    // the terminal or a pipe (an access line per request would, at every request).
    let (stderr, writer) = lines::spawn("vllm-router-stderr", std::io::stderr()).map_err(|e| {
        LogError::new(
            std::path::Path::new("(stderr)"),
            format!("no writer thread: {e}"),
        )
    })?;
    let (subscriber, guard) = subscriber(config, filter(config.level), stderr, ansi)?;
    guard.keep(writer);
    let _ = subscriber.try_init();
    Ok(guard)
}

/// Install text logging to stderr only, at `level` (the demo's); keep the guard until exit.
pub fn init_stderr(level: LogLevel) -> LogGuard {
    let config = LogConfig {
        level,
        console: Console::All,
        format: LogFormat::Text,
        dir: None,
        rotation: LogRotation::Never,
        max_files: NonZeroUsize::MIN,
    };
    // Without a directory there is no file to fail on.
    init(&config).unwrap_or_default()
}

/// `RUST_LOG` when set and valid, else the router's and the simulator's targets at `level` and
/// everything else at `warn`.
fn filter(level: LogLevel) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter(level))
}

fn default_filter(level: LogLevel) -> EnvFilter {
    let lvl = level.as_directive();
    // The kube client logs every failed request as an error; Kubernetes discovery reports
    // those failures itself, at most once a minute.
    EnvFilter::new(format!(
        "warn,kube_client::client::builder=off,vllm_router={lvl},vllm_sim={lvl}"
    ))
}

/// A filter that passes everything but what [`CAPS`] holds back.
fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPS.iter().copied())
}

type Base = Layered<Targets, Layered<EnvFilter, Registry>>;
type Sink = Box<dyn Layer<Base> + Send + Sync>;

/// One JSON object per line: `timestamp`, `level`, `fields` (`message` and the event's
/// fields, numbers as numbers), `target`, and the spans' fields (`span`, `spans`).
fn json<W>(writer: W) -> Sink
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(writer)
        .boxed()
}

/// The subscriber of `config` with `filter`, writing its stderr lines to `stderr`.
fn subscriber<W>(
    config: &LogConfig,
    filter: EnvFilter,
    stderr: W,
    ansi: bool,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogGuard), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let console = match config.format {
        LogFormat::Text => fmt::layer()
            .with_writer(stderr)
            .with_ansi(ansi)
            .with_target(false)
            .boxed(),
        LogFormat::Json => json(stderr),
    };
    let mut sinks: Vec<Sink> = match config.console {
        Console::All => vec![console],
        Console::ErrorsOnly => vec![console.with_filter(LevelFilter::ERROR).boxed()],
        Console::Off => Vec::new(),
    };
    let guard = match &config.dir {
        Some(dir) => {
            let files = files::open(dir, config.rotation, config.max_files)?;
            sinks.push(
                fmt::layer()
                    .with_writer(files.general)
                    .with_ansi(false)
                    .boxed(),
            );
            sinks.push(
                fmt::layer()
                    .with_writer(files.errors)
                    .with_ansi(false)
                    .with_filter(LevelFilter::WARN)
                    .boxed(),
            );
            sinks.push(json(files.json));
            files.guard
        }
        None => LogGuard::default(),
    };
    let subscriber = Registry::default().with(filter).with(caps()).with(sinks);
    Ok((subscriber, guard))
}

#[cfg(test)]
mod tests;
