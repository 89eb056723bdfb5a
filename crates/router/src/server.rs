//! The HTTP application: inference routes forwarded by [`crate::proxy`], the router's own info
//! routes, and the run loop that serves them on an already-bound listener.

mod admin;
mod cors;
mod dashboard;
mod debug;
mod info;
mod keys;
mod live;
mod metrics;
mod serve;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::config::{Config, Sources};
use crate::discovery;
use crate::error::ApiError;
use crate::fleet::{self, Fleet};
use crate::live::{About, Inputs, Live};
use crate::pd::Pd;
use crate::proxy;
use crate::proxy::{Drain, RetryBudget};
use crate::reload::Reloader;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::{self, ExportSettings, Traces};
use crate::upstream::Upstream;

pub use crate::app::{App, INFERENCE_ROUTES, inference_route};
pub use metrics::serve_metrics;

/// The router's own admin paths: never forwarded to a worker, whichever listener serves them.
const ADMIN_PATHS: &[&str] = &["/workers", "/add_worker", "/remove_worker", "/list_workers"];

/// Whether `path` belongs to the router (its admin API, fleet-wide routes and metrics), so a
/// request for it that no route here took is answered 404 rather than forwarded.
fn is_reserved(path: &str) -> bool {
    ADMIN_PATHS.contains(&path)
        || path.starts_with("/workers/")
        || path.starts_with("/debug/")
        || path == "/metrics"
        || proxy::fanout::FANOUT_ROUTES
            .iter()
            .any(|(route, _)| *route == path)
}

impl App {
    /// Start the fleet, the start-up wait for workers to list their models (in the
    /// background: see [`App::started_up`]) and health probing. Must be called inside a Tokio
    /// runtime.
    /// Fails only when a listener of its own (the discovery socket) cannot bind, or when
    /// Kubernetes discovery finds no API server configuration.
    pub async fn start(config: Config) -> Result<Arc<Self>, discovery::DiscoveryError> {
        if !config.policy.is_available() {
            tracing::warn!(
                policy = config.policy.name(),
                "this policy is not available in this version; round_robin serves in its place"
            );
        }
        let live = Arc::new(ArcSwap::from_pointee(config));
        let config = live.load_full();
        if config.workers.is_empty() && !discovery::configured(&config) {
            tracing::warn!("no workers given: every inference request will be answered 503");
        }
        let policy = config.policy.build(&config.policy_config);
        let pd = config
            .pd
            .clone()
            .map(|pd| Pd::new(pd, &config.policy_config));
        let mut policies = vec![Arc::clone(&policy)];
        policies.extend(pd.iter().flat_map(Pd::policies));
        let fleet = Arc::new(Fleet::start(&config.workers, policies));
        let metrics = Metrics::with_peer_names(config.peer_metrics);
        fleet.watch(Arc::clone(&metrics) as Arc<dyn fleet::Watcher>);
        let traces = config
            .otlp_traces_endpoint
            .as_ref()
            .and_then(|endpoint| start_traces(endpoint, &metrics));
        let upstream = Upstream::new(config.timeouts.connect);
        upstream.set_worker_key(config.worker_api_key.as_ref(), config.admin.key_to_added);
        let admission = Arc::new(Admission::new(config.admission.clone()));
        let retry_budget =
            RetryBudget::new(config.retry.budget_ratio, config.retry.budget_min_per_sec);
        let mut background = Vec::new();
        // Before the start-up wait, so instances can register while static workers load.
        background.extend(discovery::spawn_all(&config, &fleet, &upstream).await?);
        let (startup_done, started_up) = watch::channel(false);
        // The start-up wait, then health probing and load scraping, as before serving began.
        background.push(tokio::spawn({
            let (fleet, upstream, live) = (Arc::clone(&fleet), upstream.clone(), Arc::clone(&live));
            let scrape = config.load_scrape_interval;
            async move {
                fleet::wait_for_startup(&fleet, &upstream, &live.load_full()).await;
                let mut loops = vec![fleet::spawn_health_loop(
                    Arc::clone(&fleet),
                    upstream.clone(),
                    live,
                )];
                if let Some(interval) = scrape {
                    loops.push(fleet::spawn_scrape_loop(fleet, upstream, interval));
                }
                startup_done.send_replace(true);
                // Aborting this task (the app is dropped) aborts the loops.
                let _loops = AbortOnDrop(loops);
                std::future::pending::<()>().await;
            }
        }));
        let started = Instant::now();
        let (view, sampler) = Live::start(
            Inputs {
                fleet: Arc::clone(&fleet),
                metrics: Arc::clone(&metrics),
                admission: Arc::clone(&admission),
                about: About {
                    policy: policy.name(),
                    pd: pd.is_some(),
                    started: started.into(),
                },
            },
            started_up.clone(),
        );
        background.push(sampler);
        Ok(Arc::new(Self {
            config: live,
            fleet,
            policy,
            pd,
            upstream,
            auth: Auth::new(Arc::clone(&metrics)),
            metrics,
            retry_budget,
            admission,
            traces,
            live: view,
            drain: Drain::default(),
            draining: AtomicBool::new(false),
            started_up,
            started,
            background,
        }))
    }
}

/// Span export to `endpoint`, as `OTEL_SERVICE_NAME` or `vllm-router`; none (after an error
/// is logged) when it cannot start, since requests do not depend on it.
fn start_traces(endpoint: &http::Uri, metrics: &Arc<Metrics>) -> Option<Traces> {
    let service = otlp::service_name(|name| std::env::var(name).ok());
    match Traces::start(
        endpoint,
        service,
        Arc::clone(metrics),
        ExportSettings::default(),
    ) {
        Ok(traces) => {
            tracing::info!(%endpoint, "exporting trace spans");
            Some(traces)
        }
        Err(error) => {
            tracing::error!(%error, "trace spans are not exported");
            None
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The router's HTTP routes.
pub fn routes(app: Arc<App>) -> Router {
    // Client routes: behind the client API keys, when keys are configured.
    let mut client = Router::new()
        .route("/v1/models", get(info::models))
        .route("/", get(info::about))
        .route("/load-stats", get(info::load_stats))
        .route("/get_loads", get(info::get_loads))
        .route("/fleet", get(live::fleet))
        .route("/debug/route", post(debug::explain));
    for path in INFERENCE_ROUTES {
        client = client.route(path, post(proxy::forward));
    }
    let client = client.route_layer(axum::middleware::from_fn_with_state(
        Arc::clone(&app),
        keys::guard,
    ));
    // Probes and the version: never guarded, so orchestrators need no key. The dashboard's
    // page is open too: it is only the page, holding no fleet data; it reads `/fleet`, guarded
    // above, with a key it asks for when that answers 401.
    let open = Router::new()
        .route("/dashboard", get(dashboard::page))
        .route("/health", get(info::health))
        .route("/liveness", get(info::liveness))
        .route("/readiness", get(info::readiness))
        .route("/version", get(info::version));
    let cors = cors::layer(&app.config());
    let mut router = client.merge(open);
    // On a listener of its own, the admin API is not on the client port at all.
    if app.config().admin.listen.is_none() {
        router = router.merge(admin_api(&app));
    }
    // Every other path goes to a worker (vLLM serves more than the routes named here), behind
    // the client guard; the router's own paths never do.
    let catch_all = axum::handler::Handler::layer(
        catch_all,
        axum::middleware::from_fn_with_state(Arc::clone(&app), keys::guard),
    );
    let router = router
        .fallback(catch_all)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The admin routes, behind their guard: the worker list and the fleet-wide worker routes.
fn admin_api(app: &Arc<App>) -> Router<Arc<App>> {
    let mut router = Router::new();
    for (path, _) in proxy::fanout::FANOUT_ROUTES {
        router = router.route(path, post(proxy::fanout::fan_out));
    }
    router
        .route("/workers", get(admin::list).post(admin::add))
        .route("/workers/{id}", get(admin::get_one).delete(admin::remove))
        .route("/workers/{id}/drain", post(admin::drain))
        .route("/workers/{id}/resume", post(admin::resume))
        .route("/add_worker", post(admin::add_worker))
        .route("/remove_worker", post(admin::remove_worker))
        .route("/list_workers", get(admin::list_workers))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(app),
            admin::guard,
        ))
}

/// Serve the admin API alone on `listener` (`--admin-port`) until `shutdown` resolves.
pub async fn serve_admin<F>(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let router = admin_api(&app)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Bind the admin API's own listener, when `--admin-port` asks for one.
pub async fn bind_admin(config: &Config) -> std::io::Result<Option<TcpListener>> {
    match &config.admin.listen {
        Some((host, port)) => TcpListener::bind((host.as_str(), *port)).await.map(Some),
        None => Ok(None),
    }
}

/// A path no route took: forwarded to a worker unless it is one of the router's own.
async fn catch_all(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    request: Request,
) -> Response {
    if is_reserved(request.uri().path()) {
        return not_found(request).await;
    }
    proxy::forward(axum::extract::State(app), request).await
}

async fn not_found(request: Request) -> Response {
    ApiError::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
    .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
    .into_response()
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain: the listener closes,
/// `/readiness` turns 503, in-flight requests get `--shutdown-timeout-secs` to finish, and past
/// it open streams end with an error event and remaining connections are dropped.
pub async fn run<F>(listener: TcpListener, app: Arc<App>, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve::serve(listener, app, shutdown).await
}

/// A router serving in the background: for embedding, the demo and tests.
#[derive(Debug)]
pub struct RouterHandle {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    app: Arc<App>,
    reloader: Option<(Arc<Reloader>, JoinHandle<()>)>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RouterHandle {
    /// Start the fleet and serve on `listener` in a background task; returns once the
    /// start-up wait is over (the listener answers from the start).
    pub async fn spawn(listener: TcpListener, config: Config) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let admin = bind_admin(&config).await?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        let app = App::start(config).await.map_err(std::io::Error::other)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        if let Some(admin) = admin {
            tokio::spawn(serve_admin(admin, Arc::clone(&app), async move {
                let _ = admin_stopped.await;
            }));
        }
        let task = tokio::spawn(run(listener, Arc::clone(&app), async move {
            let _ = stopped.await;
            drop(admin_stop);
        }));
        app.started_up().await;
        Ok(Self {
            addr,
            admin_addr,
            app,
            reloader: None,
            stop: Some(stop),
            task,
        })
    }

    /// Load the configuration from `sources`, serve it as [`RouterHandle::spawn`] does, and
    /// keep it live: the config file (when one is named) is watched and reloaded.
    pub async fn spawn_with(listener: TcpListener, sources: Sources) -> std::io::Result<Self> {
        let (config, loaded) = sources.load_versioned().map_err(std::io::Error::other)?;
        let mut handle = Self::spawn(listener, config).await?;
        let reloader = Reloader::new(Arc::clone(&handle.app), sources, loaded);
        let task = reloader.spawn();
        handle.reloader = Some((reloader, task));
        Ok(handle)
    }

    /// The reloader, for a router started by [`RouterHandle::spawn_with`].
    pub fn reloader(&self) -> Option<&Arc<Reloader>> {
        self.reloader.as_ref().map(|(r, _)| r)
    }

    /// The address the router listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` plus the address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://` plus the admin API's own address, when `--admin-port` gave it one.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|addr| format!("http://{addr}"))
    }

    /// The running application (fleet, policy, configuration).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stop accepting and drain as [`run`] does (in-flight requests get the shutdown timeout),
    /// wait for the server to end, then send the trace spans still queued.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.app.flush_traces().await;
        served
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.reloader {
            task.abort();
        }
        self.task.abort();
    }
}
