//! Workers found at run time: fleet membership from outside the command line.
//!
//! - [`zmq`]: vLLM's P2P NCCL service discovery (`--vllm-discovery-address`). Instances
//!   register over a ZMQ socket as prefill or decode workers, keep sending heartbeats, and
//!   leave the fleet when they fall silent.
//! - [`kube`]: Kubernetes pods (`--service-discovery`). Pods matching a label selector join
//!   while Running and Ready and leave when they stop being either, or are deleted.
//! - [`manifest`]: a JSON manifest of workers (`--discovery-provider file`), watched.
//!
//! Discovered workers are ordinary fleet members, added and removed through
//! [`crate::fleet::FleetEvent`]s; the request path does not know where a worker came from
//! beyond what its [`crate::config::WorkerSpec`] says.

pub mod kube;
pub mod manifest;
pub mod zmq;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{Config, DiscoveryConfig, ServiceDiscoveryConfig};
use crate::fleet::{self, Fleet};
use crate::upstream::Upstream;

/// Times a newly discovered worker is asked for its models before the health loop takes over.
const ADMIT_ATTEMPTS: u32 = 10;
/// Pause between those attempts: an instance may announce itself before its HTTP server is up.
const ADMIT_PAUSE: Duration = Duration::from_millis(500);

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The ZMQ ROUTER socket could not bind its address.
    #[error("cannot bind the ZMQ ROUTER socket at {address} (--vllm-discovery-address): {source}")]
    Bind {
        /// The address as given.
        address: String,
        /// What the socket layer said.
        source: ::zeromq::ZmqError,
    },
    /// Neither a kubeconfig (`KUBECONFIG`, `~/.kube/config`) nor an in-cluster service account
    /// was found.
    #[error(
        "--service-discovery: no Kubernetes configuration found (set KUBECONFIG, or run in a pod with a service account): {0}"
    )]
    KubeConfig(::kube::config::InferConfigError),
    /// A configuration was found but no client could be built from it.
    #[error("--service-discovery: cannot build a Kubernetes client: {0}")]
    KubeClient(::kube::Error),
}

/// Whether `config` finds workers at run time (ZMQ registration, a manifest or Kubernetes).
pub fn configured(config: &Config) -> bool {
    config.pd.as_ref().is_some_and(|pd| pd.discovery.is_some())
        || config.manifest.is_some()
        || config.service_discovery.is_some()
}

/// Start every discovery `config` asks for; the tasks that run them.
pub async fn spawn_all(
    config: &Config,
    fleet: &Arc<Fleet>,
    upstream: &Upstream,
) -> Result<Vec<JoinHandle<()>>, DiscoveryError> {
    let mut tasks = Vec::new();
    if let Some(zmq) = config.pd.as_ref().and_then(|pd| pd.discovery.as_ref()) {
        tasks.push(start(zmq, config, Arc::clone(fleet), upstream.clone()).await?);
    }
    if let Some(manifest) = &config.manifest {
        let watch = manifest::ManifestWatch::new(
            manifest.clone(),
            &config.workers,
            config.data_parallel_size,
            config.pd.is_some(),
        );
        tracing::info!(file = %manifest.path.display(), "file discovery: reading the workers' manifest");
        tasks.push(watch.spawn(Arc::clone(fleet), upstream.clone(), config.health.timeout));
    }
    if let Some(pods) = &config.service_discovery {
        tasks.push(watch_pods(pods, config, Arc::clone(fleet), upstream.clone()).await?);
    }
    Ok(tasks)
}

/// Bind the discovery socket of `discovery` and spawn the loop that turns registrations into
/// fleet changes. Registrations for `config`'s static workers are ignored. Must be called
/// inside a Tokio runtime.
pub async fn start(
    discovery: &DiscoveryConfig,
    config: &Config,
    fleet: Arc<Fleet>,
    upstream: Upstream,
) -> Result<JoinHandle<()>, DiscoveryError> {
    let listener = zmq::Listener::bind(&discovery.address).await?;
    tracing::info!(
        endpoint = %listener.endpoint(),
        expiry = ?discovery.expiry,
        "P2P NCCL discovery: waiting for vLLM instances to register"
    );
    let registry = zmq::Registry::new(discovery, &config.workers);
    Ok(listener.spawn(registry, fleet, upstream, config.health.timeout))
}

/// Find the Kubernetes API server (`KUBECONFIG`, `~/.kube/config`, else the pod's service
/// account) and spawn the watch that turns `settings`' pods into fleet changes. Pods at the
/// URL of one of `config`'s static workers are ignored. Must be called inside a Tokio runtime.
pub async fn watch_pods(
    settings: &ServiceDiscoveryConfig,
    config: &Config,
    fleet: Arc<Fleet>,
    upstream: Upstream,
) -> Result<JoinHandle<()>, DiscoveryError> {
    let watch = kube::PodWatch::infer(settings.namespace.as_deref()).await?;
    let pods = kube::Pods::new(settings, &config.workers);
    tracing::info!(
        namespace = watch.namespace(),
        selectors = ?pods.selectors(),
        port = settings.port,
        "Kubernetes discovery: watching pods"
    );
    Ok(watch.spawn(pods, fleet, upstream, config.health.timeout))
}

/// Ask the worker at `url` for its models until it answers, it leaves, or the attempts run
/// out (the health loop then brings it in when it answers).
async fn admit(fleet: Arc<Fleet>, upstream: Upstream, url: String, timeout: Duration) {
    for attempt in 0..ADMIT_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(ADMIT_PAUSE).await;
        }
        let healthy = match fleet.snapshot().server(&url) {
            Some(ranks) => ranks[0].worker.is_healthy(),
            None => return,
        };
        if healthy || fleet::admit_url(&fleet, &upstream, &url, timeout).await {
            return;
        }
    }
    tracing::debug!(
        worker = url,
        attempts = ADMIT_ATTEMPTS,
        "discovered worker does not list its models yet; the health probe keeps trying"
    );
}
