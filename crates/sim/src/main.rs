//! `vllm-sim`: run one or more simulated vLLM servers until SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser, ValueEnum};
use tokio::net::TcpListener;
use vllm_sim::{Role, SimConfig, SimServer};

/// A simulated vLLM OpenAI-compatible server.
#[derive(Parser, Debug)]
#[command(name = "vllm-sim", version, about)]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// First port; 0 picks free ports.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Workers to run, on consecutive ports from --port (or all on port 0).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    count: u16,
    /// Served model name; repeat for more (the first is the root).
    #[arg(long = "model", visible_alias = "served-model-name", num_args = 1.., action = ArgAction::Append)]
    models: Vec<String>,
    /// Part in prefill/decode disaggregation.
    #[arg(long, value_enum, default_value_t = CliRole::Mixed)]
    role: CliRole,
    /// Engine id reported to decode workers (default: random per worker); rank r > 0 of a
    /// worker appends `_dp{r}`.
    #[arg(long)]
    engine_id: Option<String>,
    /// Data-parallel ranks per worker, each its own engine; `X-data-parallel-rank` picks one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=vllm_sim::MAX_DATA_PARALLEL_SIZE as i64))]
    data_parallel_size: u16,
    /// Fixed delay before a request joins the batch, in milliseconds.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    ttft_ms: f64,
    /// Prefill cost per uncached prompt token, in microseconds, added to the step computing it.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    prefill_us_per_token: f64,
    /// Inter-token latency with a batch of one, in milliseconds.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    itl_ms: f64,
    /// Decode slows by 1 + factor * (decoding - 1) with that many sequences decoding in a step.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    itl_batch_factor: f64,
    /// Token budget of one engine step, shared by the batch (chunked prefill): each decoding
    /// sequence takes one token, prefills take chunks of the rest, oldest first.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    max_num_batched_tokens: u32,
    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Prefix-cache block size in tokens.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    block_size: u32,
    /// Prefix-cache capacity in blocks, per rank.
    #[arg(long, default_value_t = 4096)]
    num_blocks: u32,
    /// Running-batch bound per rank; further requests queue.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_num_seqs: u32,
    /// Longest accepted prompt, in tokens.
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u32).range(1..))]
    max_model_len: u32,
    /// Fraction (0..=1) of inference requests answered with a 500.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    error_rate: f64,
    /// Accept inference requests and never answer them.
    #[arg(long)]
    hang: bool,
    /// Die on receiving the N-th inference request (per worker).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    exit_after: Option<u64>,
    /// Require `Authorization: Bearer KEY` on `/v1` routes, as vLLM's `--api-key` does (also
    /// `VLLM_API_KEY`).
    #[arg(long, env = "VLLM_API_KEY", value_name = "KEY")]
    api_key: Option<String>,
    /// Log filter, e.g. `info` or `vllm_sim=debug`.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliRole {
    Mixed,
    Prefill,
    Decode,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err("must be a non-negative number".to_owned()),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("must be a number between 0 and 1".to_owned()),
    }
}

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64(ms / 1e3)
}

impl Cli {
    fn config(&self, worker: u16) -> SimConfig {
        let defaults = SimConfig::default();
        let engine_id = match (&self.engine_id, self.count) {
            (Some(id), 1) => id.clone(),
            (Some(id), _) => format!("{id}-{worker}"),
            (None, _) => defaults.engine_id.clone(),
        };
        SimConfig {
            models: if self.models.is_empty() {
                defaults.models.clone()
            } else {
                self.models.clone()
            },
            role: match self.role {
                CliRole::Mixed => Role::Mixed,
                CliRole::Prefill => Role::Prefill,
                CliRole::Decode => Role::Decode,
            },
            engine_id,
            data_parallel_size: self.data_parallel_size.into(),
            ttft: millis(self.ttft_ms),
            prefill_per_token: Duration::from_secs_f64(self.prefill_us_per_token / 1e6),
            itl: millis(self.itl_ms),
            itl_batch_factor: self.itl_batch_factor,
            max_num_batched_tokens: self.max_num_batched_tokens as usize,
            default_max_tokens: self.max_tokens,
            block_size: self.block_size as usize,
            num_blocks: self.num_blocks as usize,
            max_num_seqs: self.max_num_seqs as usize,
            max_model_len: self.max_model_len,
            error_rate: self.error_rate,
            hang: self.hang,
            exit_after: self.exit_after,
            api_key: self.api_key.clone(),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut servers: Vec<SimServer> = Vec::with_capacity(cli.count.into());
    let mut stdout = std::io::stdout();
    for worker in 0..cli.count {
        let port = if cli.port == 0 {
            0
        } else {
            cli.port
                .checked_add(worker)
                .context("--port: --count runs past port 65535")?
        };
        let listener = TcpListener::bind((cli.host.as_str(), port))
            .await
            .with_context(|| format!("--host/--port: cannot bind {}:{port}", cli.host))?;
        let config = cli.config(worker);
        config.validate().context("invalid configuration")?;
        let server = vllm_sim::spawn_on(listener, config).await;
        writeln!(stdout, "vllm-sim listening on {}", server.url())?;
        stdout.flush()?;
        servers.push(server);
    }
    let all_dead = futures_util::future::join_all(servers.iter().map(SimServer::killed));
    tokio::select! {
        () = shutdown_signal() => tracing::info!("signal received, exiting"),
        _ = all_dead => tracing::info!("every worker died (--exit-after), exiting"),
    }
    for server in &servers {
        server.kill();
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("error: --log-level: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
