//! One run: for each target in turn, the between-targets command, the prefix-cache resets,
//! then the workload from a fresh start. Progress goes to stderr.

use std::time::Instant;

use crate::client::Client;
use crate::config::{BenchConfig, join};
use crate::load;
use crate::report::TargetReport;
use crate::workload::Workload;

/// Why a run stopped before measuring every target.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The between-targets command could not run or failed; going on would compare unequal
    /// starting states.
    #[error("--between-targets-cmd {command:?} before target {target}: {reason}")]
    BetweenTargets {
        /// The command.
        command: String,
        /// The target it ran for.
        target: String,
        /// Exit status or spawn error.
        reason: String,
    },
}

/// Measures every target of `config`, in order.
pub async fn run(config: &BenchConfig) -> Result<Vec<TargetReport>, RunError> {
    let mut reports = Vec::with_capacity(config.targets.len());
    for target in &config.targets {
        if let Some(command) = &config.between_targets_cmd {
            between_targets(command, &target.name).await?;
        }
        let client = Client::new(config.request_timeout);
        reset_prefix_caches(&client, &config.reset_prefix_cache).await;
        eprintln!("target {}: {}", target.name, target.url);
        let started = Instant::now();
        let result = load::run(
            client,
            target.chat_uri.clone(),
            Workload::new(config.workload.clone()),
            config.load,
            config.window,
        )
        .await;
        let report = TargetReport::new(target, &result);
        eprintln!(
            "target {}: {} requests ({} ok, {} errors, {} shed) in {:.1}s",
            target.name,
            report.requests,
            report.ok,
            report.errors,
            report.shed,
            started.elapsed().as_secs_f64()
        );
        reports.push(report);
    }
    Ok(reports)
}

async fn between_targets(command: &str, target: &str) -> Result<(), RunError> {
    let failed = |reason: String| RunError::BetweenTargets {
        command: command.to_owned(),
        target: target.to_owned(),
        reason,
    };
    let owned = command.to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(owned)
            .stdin(std::process::Stdio::null())
            .status()
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(|e| failed(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(status.to_string()))
    }
}

/// Best effort: a worker without the route (404) or unreachable is reported and skipped.
async fn reset_prefix_caches(client: &Client, workers: &[String]) {
    for worker in workers {
        let uri = match join(worker, "/reset_prefix_cache") {
            Ok(uri) => uri,
            Err(e) => {
                eprintln!("warning: {worker}/reset_prefix_cache: {e}");
                continue;
            }
        };
        match client.reset_prefix_cache(&uri).await {
            Ok(status) if status.is_success() => {}
            Ok(status) => {
                eprintln!("warning: POST {uri} answered {status}; its prefix cache stays warm")
            }
            Err(e) => eprintln!("warning: POST {uri} failed: {e}"),
        }
    }
}
