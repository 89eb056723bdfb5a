//! Workers that announce themselves: fleet membership from outside the command line.
//!
//! - [`zmq`]: vLLM's P2P NCCL service discovery (`--vllm-discovery-address`). Instances
//!   register over a ZMQ socket as prefill or decode workers, keep sending heartbeats, and
//!   leave the fleet when they fall silent.
//!
//! Discovered workers are ordinary fleet members, added and removed through
//! [`crate::fleet::FleetEvent`]s; the request path does not know where a worker came from
//! beyond what its [`crate::config::WorkerSpec`] says.

pub mod zmq;

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::{Config, DiscoveryConfig};
use crate::fleet::Fleet;
use crate::upstream::Upstream;

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
