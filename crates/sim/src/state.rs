//! The state one simulated server shares between its connections.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::SimConfig;
use crate::engine::Engine;
use crate::inject::Faults;
use crate::openai::now_secs;
use crate::record::{Recorder, SimStats};
use crate::server::lifecycle::Lifecycle;

/// Everything behind one listening port.
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) engine: Arc<Engine>,
    pub(crate) recorder: Recorder,
    pub(crate) faults: Faults,
    pub(crate) lifecycle: Lifecycle,
    /// The address peers should dial: the bound one, with an unspecified IP made loopback.
    pub(crate) advertised: SocketAddr,
    pub(crate) started_secs: u64,
}

impl Sim {
    pub(crate) fn new(config: SimConfig, lifecycle: Lifecycle, advertised: SocketAddr) -> Self {
        Self {
            engine: Arc::new(Engine::new(&config)),
            recorder: Recorder::default(),
            faults: Faults::new(&config),
            lifecycle,
            advertised,
            started_secs: now_secs(),
            config,
        }
    }

    pub(crate) fn stats(&self) -> SimStats {
        self.recorder.stats(&self.engine)
    }
}
