//! The `vllm-router` binary: parse, validate, run, map failures to an exit code.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use vllm_router::cli::{Cli, Command, RouterArgs};
use vllm_router::config::Config;
use vllm_router::server::{self, App};
use vllm_router::{demo, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Demo(args)) => {
            telemetry::init(args.log_level);
            demo::run(args).await.map_err(anyhow::Error::from)
        }
        None => run(cli.router).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: RouterArgs) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    telemetry::init(config.log_level);
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let metrics_listener = match &config.metrics_listen {
        Some((host, port)) => Some(
            TcpListener::bind((host.as_str(), *port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port} (--prometheus-port)"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    let app = App::start(config).await;
    if let Some(metrics) = metrics_listener {
        tracing::info!(addr = %metrics.local_addr()?, "metrics listener");
        tokio::spawn(server::serve_metrics(
            metrics,
            Arc::clone(&app),
            std::future::pending(),
        ));
    }
    tracing::info!(%addr, policy = app.policy.name(), "serving");
    println!("vllm-router listening on http://{addr}");
    server::run(listener, app, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
