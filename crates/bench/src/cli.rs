//! The command line, and its translation into a validated [`BenchConfig`].

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{
    BenchConfig, ConfigError, Load, Target, WindowConfig, WorkloadConfig, WorkloadKind, base_url,
};

/// Runs one workload against each target in turn and reports time to first token, latency and
/// the prefix-cache hit rate the workers report.
#[derive(Parser, Debug, Clone)]
#[command(name = "vllm-router-bench", version, about)]
pub struct Cli {
    /// A router to measure, as NAME=URL; repeat to compare several in one run.
    #[arg(long = "target", value_name = "NAME=URL", required = true)]
    pub targets: Vec<String>,
    /// Shell command run (with `sh -c`) before each target, e.g. to restart the workers.
    #[arg(long, value_name = "CMD")]
    pub between_targets_cmd: Option<String>,
    /// A worker whose prefix cache is reset (POST /reset_prefix_cache) before each target.
    #[arg(long = "reset-prefix-cache", value_name = "URL")]
    pub reset_prefix_cache: Vec<String>,

    /// Traffic shape.
    #[arg(long, value_enum, default_value_t = WorkloadKind::MultiTurn)]
    pub workload: WorkloadKind,
    /// Seed for the generated text and for open-loop arrivals (the shared prefixes too, unless
    /// `--prefix-seed` is given).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seed for the groups' shared prefixes (system prompts, few-shot blocks) alone, so that a
    /// pre-warm under another `--seed` sends the same prefixes with other questions; default:
    /// `--seed`.
    #[arg(long)]
    pub prefix_seed: Option<u64>,
    /// Distinct shared prefixes (system prompts or few-shot blocks).
    #[arg(long, default_value_t = 8)]
    pub groups: u64,
    /// User turns per multi-turn conversation.
    #[arg(long, default_value_t = 6)]
    pub turns: u32,
    /// Words (about tokens) in each group's shared prefix.
    #[arg(long, default_value_t = 600)]
    pub system_prompt_words: usize,
    /// Words per user turn (multi-turn) or question (few-shot).
    #[arg(long, default_value_t = 40)]
    pub user_words: usize,
    /// Words per prompt of the random workload.
    #[arg(long, default_value_t = 200)]
    pub prompt_words: usize,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// `model` of every request.
    #[arg(long, default_value = "sim-model")]
    pub model: String,
    /// Send no session key (neither `x-session-id` nor the body's `user`).
    #[arg(long)]
    pub no_session_key: bool,

    /// Closed loop: concurrent users, each waiting for its answer before the next request.
    #[arg(long, default_value_t = 16, conflicts_with = "rate")]
    pub users: usize,
    /// Open loop: Poisson arrivals at this many requests per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: arrivals beyond this many in-flight requests are counted as shed.
    #[arg(long, default_value_t = 1024)]
    pub max_outstanding: usize,

    /// Measured seconds per target, after the warm-up.
    #[arg(long, default_value_t = 30.0)]
    pub duration_secs: f64,
    /// Stop a target after this many counted requests, if sooner.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds per target whose requests are sent but not counted.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_secs: f64,
    /// Longest one request may take.
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout_secs: f64,

    /// Write every figure and the configuration as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Write the Markdown table here too.
    #[arg(long, value_name = "FILE")]
    pub md_out: Option<PathBuf>,
    /// Exit non-zero when any target had an error.
    #[arg(long)]
    pub fail_on_error: bool,
}

impl Cli {
    /// Checks every value and builds the typed configuration; errors name the flag.
    pub fn config(&self) -> Result<BenchConfig, ConfigError> {
        let mut targets: Vec<Target> = Vec::with_capacity(self.targets.len());
        for arg in &self.targets {
            let target = Target::parse(arg)?;
            if targets.iter().any(|t| t.name == target.name) {
                return Err(ConfigError::DuplicateTarget { name: target.name });
            }
            targets.push(target);
        }
        let reset_prefix_cache = self
            .reset_prefix_cache
            .iter()
            .map(|u| base_url("--reset-prefix-cache", u))
            .collect::<Result<_, _>>()?;
        let load = match self.rate {
            Some(rate) => Load::Open {
                rate: positive("--rate", rate)?,
                max_outstanding: nonzero_usize("--max-outstanding", self.max_outstanding)?,
            },
            None => Load::Closed {
                users: nonzero_usize("--users", self.users)?,
            },
        };
        Ok(BenchConfig {
            targets,
            between_targets_cmd: self.between_targets_cmd.clone(),
            reset_prefix_cache,
            workload: WorkloadConfig {
                kind: self.workload,
                seed: self.seed,
                prefix_seed: self.prefix_seed.unwrap_or(self.seed),
                groups: NonZeroU64::new(self.groups).ok_or_else(|| at_least_one("--groups", 0))?,
                turns: NonZeroU32::new(self.turns)
                    .ok_or_else(|| at_least_one("--turns", self.turns))?,
                system_prompt_words: self.system_prompt_words,
                user_words: self.user_words,
                prompt_words: self.prompt_words,
                max_tokens: match self.max_tokens {
                    0 => return Err(at_least_one("--max-tokens", 0)),
                    n => n,
                },
                model: self.model.clone(),
                session_key: !self.no_session_key,
            },
            load,
            window: WindowConfig {
                warmup: seconds("--warmup-secs", self.warmup_secs, true)?,
                duration: seconds("--duration-secs", self.duration_secs, false)?,
                requests: self
                    .requests
                    .map(|n| NonZeroU64::new(n).ok_or_else(|| at_least_one("--requests", n)))
                    .transpose()?,
            },
            request_timeout: seconds("--request-timeout-secs", self.request_timeout_secs, false)?,
        })
    }
}

fn at_least_one(field: &'static str, value: impl ToString) -> ConfigError {
    ConfigError::OutOfRange {
        field,
        value: value.to_string(),
        range: ">= 1",
    }
}

fn nonzero_usize(field: &'static str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| at_least_one(field, value))
}

fn positive(field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value: value.to_string(),
            range: "> 0",
        })
    }
}

fn seconds(field: &'static str, value: f64, zero_ok: bool) -> Result<Duration, ConfigError> {
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
    match Duration::try_from_secs_f64(value) {
        Ok(d) if ok => Ok(d),
        _ => Err(ConfigError::OutOfRange {
            field,
            value: value.to_string(),
            range: if zero_ok {
                ">= 0 seconds"
            } else {
                "> 0 seconds"
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["vllm-router-bench", "--target", "a=http://127.0.0.1:1"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_a_closed_loop_multi_turn_run() {
        let c = cli(&[]).config().unwrap();
        assert!(matches!(c.load, Load::Closed { users } if users.get() == 16));
        assert_eq!(c.workload.kind, WorkloadKind::MultiTurn);
        assert_eq!(c.workload.groups.get(), 8);
        assert_eq!(c.workload.turns.get(), 6);
        assert!(c.workload.session_key);
        assert_eq!(c.window.duration, Duration::from_secs(30));
        assert!(c.window.warmup.is_zero());
    }

    #[test]
    fn rate_selects_the_open_loop_and_excludes_users() {
        let c = cli(&["--rate", "2.5"]).config().unwrap();
        assert!(matches!(c.load, Load::Open { rate, .. } if rate == 2.5));
        let both = Cli::try_parse_from([
            "b",
            "--target",
            "a=http://h:1",
            "--rate",
            "1",
            "--users",
            "3",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: [(&[&str], &str); 5] = [
            (&["--rate", "0"], "--rate"),
            (&["--duration-secs=-1"], "--duration-secs"),
            (&["--groups", "0"], "--groups"),
            (&["--target", "a=http://h:2"], "--target"),
            (&["--reset-prefix-cache", "ftp://x"], "--reset-prefix-cache"),
        ];
        for (args, flag) in cases {
            let err = cli(args).config().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
    }
}
