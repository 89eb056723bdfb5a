//! vLLM's P2P NCCL service discovery over ZMQ.
//!
//! The router binds a ROUTER socket at `--vllm-discovery-address`. Each vLLM instance connects
//! a DEALER and, every few seconds, sends one frame: a MessagePack map
//! `{"type": "P" | "D", "http_address": "ip:port", "zmq_address": "ip:port"}`; the ROUTER sees
//! `[identity, payload]`. An instance joins the fleet as a prefill or decode worker at
//! `http://{http_address}` with its `zmq_address`, and leaves once it has been silent for
//! `--vllm-discovery-expiry-secs`.
//!
//! The logic is kept apart from the socket: [`decode`] reads one payload and [`Registry`]
//! turns heartbeats and the passing of time into [`FleetEvent`]s, both tested with explicit
//! instants. [`Listener`] owns the socket and applies those events to the fleet.
//!
//! The socket is the `zeromq` crate, a ZMTP implementation in Rust: nothing to install
//! besides the router (no libzmq to build or link), and it speaks to libzmq peers such as
//! vLLM's pyzmq.

mod registry;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use zeromq::{Endpoint, RouterSocket, Socket, SocketRecv};

use super::{DiscoveryError, admit};
use crate::config::{Role, WorkerUrl};
use crate::fleet::{Fleet, FleetEvent};
use crate::upstream::Upstream;

pub use registry::Registry;

/// Pause after the socket failed to deliver a message, so a broken socket does not spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One heartbeat of a vLLM instance, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Prefill (`"P"`) or decode (`"D"`).
    pub role: Role,
    /// `http://{http_address}`: where requests go.
    pub url: WorkerUrl,
    /// The engine's `host:port` for NCCL, named in P2P request ids.
    pub zmq_address: String,
}

/// A payload that is not a registration.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The message did not have the two frames a ROUTER sees: identity, payload.
    #[error("expected 2 frames (identity, payload), got {0}")]
    Frames(usize),
    /// Not a MessagePack map with the three string fields.
    #[error("not a registration map: {0}")]
    Format(#[from] rmp_serde::decode::Error),
    /// `type` is neither `P` nor `D`.
    #[error("unknown type '{0}' (expected 'P' or 'D')")]
    Type(String),
    /// `http_address` is not a `host:port` a worker URL can be made of.
    #[error("bad http_address '{0}': expected host:port")]
    HttpAddress(String),
    /// `zmq_address` is not a `host:port`.
    #[error("bad zmq_address '{0}': expected host:port")]
    ZmqAddress(String),
}

/// The map as it travels; keys other than these three are ignored.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    http_address: &'a str,
    zmq_address: &'a str,
}

/// Read one registration payload (the frame after the identity).
pub fn decode(payload: &[u8]) -> Result<Registration, PayloadError> {
    let wire: Wire<'_> = rmp_serde::from_slice(payload)?;
    let role = match wire.kind {
        "P" => Role::Prefill,
        "D" => Role::Decode,
        other => return Err(PayloadError::Type(other.to_owned())),
    };
    let bad_http = || PayloadError::HttpAddress(wire.http_address.to_owned());
    if !is_host_port(wire.http_address) {
        return Err(bad_http());
    }
    let url = WorkerUrl::parse("http_address", &format!("http://{}", wire.http_address))
        .map_err(|_| bad_http())?;
    if !is_host_port(wire.zmq_address) {
        return Err(PayloadError::ZmqAddress(wire.zmq_address.to_owned()));
    }
    Ok(Registration {
        role,
        url,
        zmq_address: wire.zmq_address.to_owned(),
    })
}

/// `host:port` with a numeric port, in visible ASCII (the ZMQ address travels in a header).
fn is_host_port(address: &str) -> bool {
    let visible = address.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    match address.rsplit_once(':') {
        Some((host, port)) => visible && !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// The bound ROUTER socket, before its loop starts.
pub struct Listener {
    socket: RouterSocket,
    endpoint: Endpoint,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Bind a ROUTER socket at `address` (`host:port`; port 0 picks a free one).
    pub async fn bind(address: &str) -> Result<Self, DiscoveryError> {
        let mut socket = RouterSocket::new();
        let endpoint = socket
            .bind(&format!("tcp://{address}"))
            .await
            .map_err(|source| DiscoveryError::Bind {
                address: address.to_owned(),
                source,
            })?;
        Ok(Self { socket, endpoint })
    }

    /// The bound endpoint, with the port actually used.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Receive registrations for as long as the task lives: apply what `registry` makes of
    /// them, drop instances on time even when nothing arrives, and ask each new worker for
    /// its models (waiting at most `probe_timeout` per attempt) so it serves promptly.
    pub fn spawn(
        self,
        registry: Registry,
        fleet: Arc<Fleet>,
        upstream: Upstream,
        probe_timeout: Duration,
    ) -> JoinHandle<()> {
        tokio::spawn(run(self.socket, registry, fleet, upstream, probe_timeout))
    }
}

async fn run(
    mut socket: RouterSocket,
    mut registry: Registry,
    fleet: Arc<Fleet>,
    upstream: Upstream,
    probe_timeout: Duration,
) {
    // Dropped with this task, which aborts any admission still retrying.
    let mut admissions = JoinSet::new();
    loop {
        while admissions.try_join_next().is_some() {}
        let events = tokio::select! {
            received = socket.recv() => match received {
                Ok(message) => registry.receive(&message.into_vec(), Instant::now()),
                Err(error) => {
                    tracing::error!(%error, "discovery socket failed to deliver a message");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = until(registry.next_expiry()) => registry.expire(Instant::now()),
        };
        for event in events {
            let joined = match &event {
                FleetEvent::Add(spec) => Some(spec.url.text.clone()),
                _ => None,
            };
            fleet.apply(event).await;
            if let Some(url) = joined {
                admissions.spawn(admit(
                    Arc::clone(&fleet),
                    upstream.clone(),
                    url,
                    probe_timeout,
                ));
            }
        }
    }
}

/// Sleep until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
