//! `vllm-router-bench`: run the workload against every target, print the table, write the
//! reports.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vllm_router_bench::cli::Cli;
use vllm_router_bench::report::{JsonReport, markdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cli, &config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// False when `--fail-on-error` is set and a target had errors.
fn run(cli: &Cli, config: &vllm_router_bench::config::BenchConfig) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let reports = runtime.block_on(vllm_router_bench::run::run(config))?;
    let table = markdown(&reports);
    print!("{table}");
    if let Some(path) = &cli.md_out {
        std::fs::write(path, &table).with_context(|| format!("--md-out {}", path.display()))?;
    }
    if let Some(path) = &cli.json_out {
        let doc = JsonReport {
            tool: format!("vllm-router-bench {}", env!("CARGO_PKG_VERSION")),
            config,
            targets: &reports,
        };
        let json = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("--json-out {}", path.display()))?;
    }
    Ok(!(cli.fail_on_error && reports.iter().any(|r| r.errors > 0)))
}
