//! The state one simulated server shares between its connections.

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::SimConfig;
use crate::adapters::Adapters;
use crate::inject::Faults;
use crate::openai::now_secs;
use crate::ranks::Ranks;
use crate::record::{Recorder, SimStats};
use crate::server::lifecycle::Lifecycle;

/// Everything behind one listening port.
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    /// One engine per data-parallel rank.
    pub(crate) ranks: Ranks,
    pub(crate) recorder: Recorder,
    pub(crate) faults: Faults,
    pub(crate) lifecycle: Lifecycle,
    /// The address peers should dial: the bound one, with an unspecified IP made loopback.
    pub(crate) advertised: SocketAddr,
    pub(crate) started_secs: u64,
    /// LoRA adapters loaded at run time, and the sleep mode.
    pub(crate) adapters: Adapters,
}

impl Sim {
    pub(crate) fn new(config: SimConfig, lifecycle: Lifecycle, advertised: SocketAddr) -> Self {
        Self {
            ranks: Ranks::new(&config),
            recorder: Recorder::default(),
            faults: Faults::new(&config),
            lifecycle,
            advertised,
            started_secs: now_secs(),
            adapters: Adapters::default(),
            config,
        }
    }

    /// The served name matching `requested`: a base model or a loaded LoRA adapter; the root
    /// model when none was requested.
    pub(crate) fn resolve_model<'a>(&'a self, requested: Option<&'a str>) -> Option<Cow<'a, str>> {
        if let Some(model) = self.config.resolve_model(requested) {
            return Some(Cow::Borrowed(model));
        }
        requested
            .filter(|name| self.adapters.serves(name))
            .map(Cow::Borrowed)
    }

    pub(crate) fn stats(&self) -> SimStats {
        self.recorder.stats(self.ranks.engines())
    }
}
