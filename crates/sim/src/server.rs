//! Starting, observing and stopping one simulated server.

mod accept;
pub(crate) mod lifecycle;
mod service;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::record::{RequestRecord, SimStats};
use crate::state::Sim;
use crate::{SimConfig, control, openai};
use lifecycle::Lifecycle;

/// A running simulated vLLM server. Dropping it kills it (see [`SimServer::kill`]).
pub struct SimServer {
    sim: Arc<Sim>,
    accept: Option<JoinHandle<()>>,
}

/// Binds `127.0.0.1:0` and serves `config` there.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimServer> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    Ok(spawn_on(listener, config).await)
}

/// Serves `config` on an already-bound listener, on the current tokio runtime.
pub async fn spawn_on(listener: TcpListener, config: SimConfig) -> SimServer {
    let bound = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let advertised = if bound.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()))
    } else {
        bound
    };
    let sim = Arc::new(Sim::new(config, Lifecycle::new(listener), advertised));
    let router = openai::routes()
        .merge(control::routes())
        .fallback(openai::not_found)
        .with_state(sim.clone());
    let accept = tokio::spawn(accept::run(sim.clone(), router));
    SimServer {
        sim,
        accept: Some(accept),
    }
}

impl SimServer {
    /// The address to dial (an unspecified bind address is reported as loopback).
    pub fn addr(&self) -> SocketAddr {
        self.sim.advertised
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.sim.advertised)
    }

    /// The config this server runs with.
    pub fn config(&self) -> &SimConfig {
        &self.sim.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Copies of the last 10 000 request records, oldest first.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.sim.recorder.records()
    }

    /// From now on, inference requests are accepted and held unanswered; turning it off answers
    /// the held ones 503 without running them, as an engine restarted to recover.
    pub fn set_hang(&self, hang: bool) {
        self.sim.faults.set_hang(hang);
    }

    /// From now on, this fraction (clamped to 0..=1) of inference requests gets a 500.
    pub fn set_error_rate(&self, rate: f64) {
        self.sim.faults.set_error_rate(rate);
    }

    /// Dies like a killed process: the port refuses connections as soon as this returns, and
    /// every open connection is dropped without an answer. Idempotent.
    pub fn kill(&self) {
        self.sim.lifecycle.kill();
    }

    /// Resolves once the server is dead: by [`SimServer::kill`] or by `exit_after`.
    pub async fn killed(&self) {
        self.sim.lifecycle.killed().await;
    }

    /// Stops accepting, lets in-flight requests finish, then returns. Hanging requests never
    /// finish, so do not use this while `hang` is on.
    pub async fn shutdown(mut self) {
        self.sim.lifecycle.drain();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.sim.lifecycle.idle().await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_be_shared_across_tasks() {
        assert_send_sync::<SimServer>();
        assert_send_sync::<SimStats>();
        assert_send_sync::<RequestRecord>();
    }
}
