//! The `vllm-router` binary: parse, validate, run, map failures to an exit code: 0 after a
//! normal shutdown (drain included), 2 on an error, 130 when a second signal cuts the drain short.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use tokio::net::TcpListener;
use vllm_router::cli::{Cli, Command, LogLevel};
use vllm_router::config::{DotEnv, Sources};
use vllm_router::reload::Reloader;
use vllm_router::server::{self, App};
use vllm_router::{demo, telemetry, top};

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let outcome = match cli.command {
        Some(Command::Demo(args)) => {
            // The terminal view owns the screen: only errors may write to it.
            let level = if args.top {
                LogLevel::Error
            } else {
                args.log_level
            };
            let _logs = telemetry::init_stderr(level);
            demo::run(args).await.map_err(anyhow::Error::from)
        }
        Some(Command::Top(args)) => top::run(args).await,
        None => match DotEnv::from_working_dir().and_then(|dotenv| {
            Sources::new(&matches, |name| dotenv.var(name)).map(|sources| (sources, dotenv))
        }) {
            Ok((sources, dotenv)) => run(sources, &dotenv).await,
            Err(e) => Err(e.into()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(sources: Sources, dotenv: &DotEnv) -> anyhow::Result<()> {
    let (config, loaded) = sources.load_versioned()?;
    if config.check_only {
        print!("{}", config.summary());
        return Ok(());
    }
    // Kept to the end of the run: dropping it writes out the log files' buffered lines.
    let logs = telemetry::init(&config.log)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if let Some((path, names)) = dotenv.applied() {
        tracing::info!(file = %path.display(), variables = ?names, "read variables from a .env file");
    }
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
    let admin_listener = server::bind_admin(&config).await.with_context(|| {
        let (host, port) = config.admin.listen.clone().unwrap_or_default();
        format!("cannot listen on {host}:{port} (--admin-port)")
    })?;
    let addr = listener.local_addr()?;
    let app = App::start(config).await?;
    if let Some(admin) = admin_listener {
        tracing::info!(addr = %admin.local_addr()?, "admin API listener");
        tokio::spawn(server::serve_admin(
            admin,
            Arc::clone(&app),
            std::future::pending(),
        ));
    }
    let reloader = Reloader::new(Arc::clone(&app), sources, loaded);
    reloader.spawn();
    spawn_hangup(Arc::clone(&reloader));
    if let Some(metrics) = metrics_listener {
        tracing::info!(addr = %metrics.local_addr()?, "metrics listener");
        tokio::spawn(server::serve_metrics(
            metrics,
            Arc::clone(&app),
            std::future::pending(),
        ));
    }
    // Listen before announcing the address: a signal sent from then on is never the default
    // (instant) termination.
    let mut signals = Signals::new();
    let (first, stop) = tokio::sync::oneshot::channel::<()>();
    let logs_at_exit = logs.clone();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down: finishing in-flight requests (signal again to exit now)");
        let _ = first.send(());
        signals.next().await;
        tracing::warn!("second signal during the drain: exiting now");
        // `exit` runs no destructors: the log files are written out first.
        logs_at_exit.close();
        std::process::exit(EXIT_ON_SECOND_SIGNAL);
    });
    // Serving starts at once (liveness, readiness, 503s while no worker is ready); the address
    // is announced when the start-up wait for the static workers is over.
    let mut serving = tokio::spawn(server::run(listener, Arc::clone(&app), async move {
        let _ = stop.await;
    }));
    let served = tokio::select! {
        () = app.started_up() => {
            tracing::info!(%addr, policy = app.policy.name(), "serving");
            println!("vllm-router listening on http://{addr}");
            (&mut serving).await
        }
        // A signal during the start-up wait.
        served = &mut serving => served,
    };
    served??;
    // The drain is over: no request is left to end a span.
    app.flush_traces().await;
    Ok(())
}

/// SIGHUP re-reads the configuration.
fn spawn_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the configuration");
                        reloader.trigger();
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// Exit status when a second signal cuts the drain short (128 + SIGINT, as shells report it).
const EXIT_ON_SECOND_SIGNAL: i32 = 130;

/// Ctrl-C (SIGINT) and SIGTERM, listened to for the whole run so a second one is not missed.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(self.interrupt.as_mut()) => {},
                () = recv(self.terminate.as_mut()) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
