//! The `vllm-router` binary: parse, validate, run, map failures to an exit code: 0 after a
//! normal shutdown (drain included), 2 on an error, 130 when a second signal cuts the drain short.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use tokio::net::TcpListener;
use vllm_router::cli::{Cli, Command, LogLevel, TopArgs};
use vllm_router::config::{ConfigError, Console, DotEnv, Sources};
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
        Some(Command::Run(args)) => {
            let mode = Mode {
                console: args.console,
                watch: args.reload,
            };
            match matches.subcommand_matches("run").map(sources) {
                Some(Ok((sources, dotenv))) => match toml_router_file(sources) {
                    Ok(sources) => run(sources, &dotenv, mode).await,
                    Err(e) => Err(e),
                },
                Some(Err(e)) => Err(e.into()),
                None => unreachable!("`run` was parsed from its own matches"),
            }
        }
        None => match sources(&matches) {
            Ok((sources, dotenv)) => run(sources, &dotenv, Mode::default()).await,
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

/// How the router runs beside its configuration.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// The terminal view in this process (`run --console`).
    console: bool,
    /// Watch the config file, besides re-reading it every reload interval.
    watch: bool,
}

impl Default for Mode {
    fn default() -> Self {
        Self {
            console: false,
            watch: true,
        }
    }
}

/// The flags of `matches`, the environment and a `.env` file in the working directory.
fn sources(matches: &clap::ArgMatches) -> Result<(Sources, DotEnv), ConfigError> {
    let dotenv = DotEnv::from_working_dir()?;
    let sources = Sources::new(matches, |name| dotenv.var(name))?;
    Ok((sources, dotenv))
}

/// Where the TOML router's Docker recipe looks for its file when none is named.
const TOML_ROUTER_FILES: &[&str] = &["servers.toml", "/app/servers.toml"];

/// `run`'s file: the one named, else the first of [`TOML_ROUTER_FILES`] that exists; none at
/// all is an error unless workers are given otherwise.
fn toml_router_file(sources: Sources) -> anyhow::Result<Sources> {
    if sources.file().is_some() {
        return Ok(sources);
    }
    match TOML_ROUTER_FILES
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
    {
        Some(found) => Ok(sources.or_file(found.to_owned())),
        None if sources.sets("worker_urls") || sources.sets("service_discovery") => Ok(sources),
        None => anyhow::bail!(
            "no config file: `vllm-router run` reads --config FILE, $CONFIG_PATH, \
             ./servers.toml or /app/servers.toml, and none of them exists"
        ),
    }
}

async fn run(sources: Sources, dotenv: &DotEnv, mode: Mode) -> anyhow::Result<()> {
    let (mut config, loaded) = sources.load_versioned()?;
    if config.check_only {
        print!("{}", config.summary());
        return Ok(());
    }
    if mode.console && config.log.console == Console::All {
        // The terminal view owns the screen: only errors may write to it.
        config.log.console = Console::ErrorsOnly;
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
    if mode.watch {
        reloader.spawn();
    } else {
        reloader.spawn_polling();
    }
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
    let (console_quit, console_done) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(server::run(listener, Arc::clone(&app), async move {
        tokio::select! {
            _ = stop => {}
            Ok(()) = console_done => {}
        }
    }));
    let served = tokio::select! {
        () = app.started_up() => {
            tracing::info!(%addr, policy = app.policy.name(), "serving");
            println!("vllm-router listening on http://{addr}");
            if mode.console {
                spawn_console(&app, addr, console_quit);
            }
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

/// The terminal view of this router (`run --console`); quitting it stops the router.
fn spawn_console(app: &App, addr: std::net::SocketAddr, quit: tokio::sync::oneshot::Sender<()>) {
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let top = TopArgs {
        url: format!("http://{}", std::net::SocketAddr::new(host, addr.port())),
        api_key: app
            .config()
            .auth
            .keys
            .first()
            .map(|k| k.expose().to_owned()),
    };
    tokio::spawn(async move {
        if let Err(error) = top::run(top).await {
            tracing::error!("the console stopped: {error:#}");
        }
        let _ = quit.send(());
    });
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
