//! `vllm-router demo`: simulated vLLM workers in-process and the router in front of them, so
//! the router can be tried on any machine, without GPUs.

pub mod traffic;

use std::time::Duration;

use tokio::net::TcpListener;
use vllm_sim::{Role, SimConfig, SimServer};

use crate::cli::{DemoArgs, RouterArgs, TopArgs};
use crate::config::Config;
use crate::server::RouterHandle;

/// The model every demo worker serves.
pub const DEMO_MODEL: &str = "demo-llama-8b";

/// A simulated worker with a small GPU's manners: a prefix cache, prefill cost per uncached
/// token, and decode that slows as its batch grows.
pub fn demo_worker() -> SimConfig {
    SimConfig {
        models: vec![DEMO_MODEL.to_owned()],
        ttft: Duration::from_millis(15),
        prefill_per_token: Duration::from_micros(40),
        itl: Duration::from_millis(12),
        itl_batch_factor: 0.02,
        default_max_tokens: 24,
        ..SimConfig::default()
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A simulated worker could not start.
    #[error("could not start a simulated worker: {0}")]
    Worker(std::io::Error),
    /// The router's address is taken or invalid.
    #[error("cannot listen on {addr}: {source} (choose another with --port)")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The router failed.
    #[error("router failed: {0}")]
    Router(std::io::Error),
    /// The terminal view failed (no terminal, say).
    #[error("terminal view: {0}")]
    Top(String),
    /// The generated configuration was refused (a defect).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Run the demo until Ctrl-C (or, with `--top`, until the terminal view is quit).
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let roles: Vec<Role> = if args.pd {
        [Role::Prefill, Role::Decode]
            .into_iter()
            .flat_map(|r| std::iter::repeat_n(r, usize::from(args.workers)))
            .collect()
    } else {
        vec![Role::Mixed; usize::from(args.workers)]
    };
    let mut workers: Vec<SimServer> = Vec::with_capacity(roles.len());
    for role in roles {
        let config = SimConfig {
            role,
            ..demo_worker()
        };
        workers.push(vllm_sim::spawn(config).await.map_err(DemoError::Worker)?);
    }
    let urls = |role: Role| -> Vec<String> {
        workers
            .iter()
            .filter(|w| w.config().role == role)
            .map(SimServer::url)
            .collect()
    };
    let config = Config::from_args(RouterArgs {
        host: args.host.clone(),
        port: args.port,
        worker_urls: urls(Role::Mixed),
        vllm_pd_disaggregation: args.pd,
        prefill: urls(Role::Prefill),
        decode: urls(Role::Decode),
        policy: (!args.pd).then_some(args.policy),
        prometheus_port: 0,
        worker_startup_timeout_secs: 10,
        log_level: args.log_level,
        ..RouterArgs::default()
    })?;
    let addr = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| DemoError::Listen { addr, source })?;
    let router = RouterHandle::spawn(listener, config)
        .await
        .map_err(DemoError::Router)?;
    let clients = (args.traffic_per_sec > 0.0)
        .then(|| traffic::spawn(router.url(), DEMO_MODEL.to_owned(), args.traffic_per_sec));
    let watched = if args.top {
        let top = TopArgs {
            url: router.url(),
            api_key: None,
        };
        crate::top::run(top)
            .await
            .map_err(|e| DemoError::Top(format!("{e:#}")))
    } else {
        println!("{}", banner(&router.url(), &workers, args.traffic_per_sec));
        stop_requested().await;
        Ok(())
    };
    if let Some(clients) = clients {
        clients.abort();
    }
    watched?;
    println!("stopping");
    router.shutdown().await.map_err(DemoError::Router)
}

/// Ctrl-C, or SIGTERM (`docker stop`, a supervisor): the demo then stops as it does on Ctrl-C.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn banner(url: &str, workers: &[SimServer], traffic_per_sec: f64) -> String {
    let fleet: Vec<String> = workers
        .iter()
        .map(|w| match w.config().role {
            Role::Mixed => format!("  - {}", w.url()),
            Role::Prefill => format!("  - {} (prefill)", w.url()),
            Role::Decode => format!("  - {} (decode)", w.url()),
        })
        .collect();
    format!(
        r#"vllm-router listening on {url}
simulated vLLM workers serving `{DEMO_MODEL}`:
{fleet}

Try it:
  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{{"model": "{DEMO_MODEL}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl -sN {url}/v1/completions -H 'Content-Type: application/json' \
    -d '{{"model": "{DEMO_MODEL}", "prompt": "Once upon a time", "max_tokens": 8, "stream": true}}'

With the openai client (pip install openai):
  python3 -c 'from openai import OpenAI; c = OpenAI(base_url="{url}/v1", api_key="none"); \
print(c.chat.completions.create(model="{DEMO_MODEL}", messages=[{{"role": "user", "content": "Hi"}}]).choices[0].message.content)'

Watch the fleet: {url}/dashboard in a browser, or `vllm-router top --url {url}`{traffic}
Info: {url}/  {url}/health  {url}/load-stats  {url}/v1/models      Ctrl-C to stop."#,
        fleet = fleet.join("\n"),
        traffic = if traffic_per_sec > 0.0 {
            format!(
                "\n  (demo clients send about {traffic_per_sec} requests a second; --traffic-per-sec 0 stops them)"
            )
        } else {
            String::new()
        }
    )
}
