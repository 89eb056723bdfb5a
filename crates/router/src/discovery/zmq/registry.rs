//! Registered instances and when each was last heard from: heartbeats and the passing of time
//! in, fleet events out. No socket and no clock of its own, so every transition is tested with
//! explicit instants.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{PayloadError, Registration, decode};
use crate::config::{DiscoveryConfig, Origin, Role, WorkerSpec};
use crate::fleet::FleetEvent;

/// Shortest time between two warnings about malformed messages; the ones in between are
/// logged at debug and counted in the next warning.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The instances that registered and have not expired, keyed by worker URL.
#[derive(Debug)]
pub struct Registry {
    expiry: Duration,
    ranks: NonZeroU32,
    /// URLs of the static workers: a registration cannot take one over.
    fixed: HashSet<String>,
    /// Static URLs some instance tried to register, already warned about.
    shadowed: HashSet<String>,
    live: HashMap<String, Instance>,
    malformed: Throttle,
}

#[derive(Debug)]
struct Instance {
    role: Role,
    zmq_address: String,
    last_seen: Instant,
}

impl Registry {
    /// An empty registry with `discovery`'s expiry and ranks; registrations at the URL of one
    /// of `statics` are ignored.
    pub fn new(discovery: &DiscoveryConfig, statics: &[WorkerSpec]) -> Self {
        Self {
            expiry: discovery.expiry,
            ranks: discovery.ranks,
            fixed: statics.iter().map(|s| s.url.text.clone()).collect(),
            shadowed: HashSet::new(),
            live: HashMap::new(),
            malformed: Throttle::new(WARN_EVERY),
        }
    }

    /// One message as the ROUTER socket delivers it (`[identity, payload]`), received at
    /// `now`. A malformed one is logged and changes nothing.
    pub fn receive(&mut self, frames: &[Bytes], now: Instant) -> Vec<FleetEvent> {
        let registration = match frames {
            [_identity, payload] => decode(payload),
            other => Err(PayloadError::Frames(other.len())),
        };
        match registration {
            Ok(registration) => self.heard(registration, now),
            Err(error) => {
                match self.malformed.allow(now) {
                    Some(quiet) => tracing::warn!(
                        %error,
                        suppressed = quiet,
                        "discovery: ignoring a message that is not a registration"
                    ),
                    None => {
                        tracing::debug!(%error, "discovery: ignoring a message that is not a registration")
                    }
                }
                Vec::new()
            }
        }
    }

    /// A registration heard at `now`: a new instance joins, a known one is kept alive, and
    /// one whose role or ZMQ address changed is replaced.
    pub fn heard(&mut self, registration: Registration, now: Instant) -> Vec<FleetEvent> {
        let Registration {
            role,
            url,
            zmq_address,
        } = registration;
        if self.fixed.contains(&url.text) {
            if self.shadowed.insert(url.text.clone()) {
                tracing::warn!(
                    worker = %url.text,
                    "discovery: an instance registered at the URL of a static worker; ignored, the static worker stays as configured"
                );
            }
            return Vec::new();
        }
        let fresh = Instance {
            role,
            zmq_address,
            last_seen: now,
        };
        let spec = WorkerSpec {
            ranks: self.ranks,
            zmq_address: Some(fresh.zmq_address.clone()),
            origin: Origin::Zmq,
            ..WorkerSpec::with_role(url, role)
        };
        let key = spec.url.text.clone();
        match self.live.get_mut(&key) {
            Some(known) if known.role == role && known.zmq_address == fresh.zmq_address => {
                known.last_seen = now;
                Vec::new()
            }
            Some(known) => {
                tracing::info!(
                    worker = %key,
                    was = known.role.name(),
                    role = role.name(),
                    was_zmq = %known.zmq_address,
                    zmq = %fresh.zmq_address,
                    "discovery: instance re-registered differently; replacing it"
                );
                *known = fresh;
                vec![FleetEvent::Remove(key), FleetEvent::Add(spec)]
            }
            None => {
                tracing::info!(
                    worker = %key,
                    role = role.name(),
                    zmq = %fresh.zmq_address,
                    "discovery: instance registered"
                );
                self.live.insert(key, fresh);
                vec![FleetEvent::Add(spec)]
            }
        }
    }

    /// Drop every instance silent for the expiry or longer at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<FleetEvent> {
        let expiry = self.expiry;
        let mut gone: Vec<String> = Vec::new();
        self.live.retain(|url, instance| {
            let alive = now.saturating_duration_since(instance.last_seen) < expiry;
            if !alive {
                gone.push(url.clone());
            }
            alive
        });
        gone.sort_unstable();
        for url in &gone {
            tracing::warn!(worker = %url, ?expiry, "discovery: instance fell silent; removing it");
        }
        gone.into_iter().map(FleetEvent::Remove).collect()
    }

    /// When the next instance expires, if any is registered.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.live
            .values()
            .map(|instance| instance.last_seen + self.expiry)
            .min()
    }

    /// How many instances are registered.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Lets one warning through per period; counts the ones held back.
#[derive(Debug)]
pub(super) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    quiet: u64,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            quiet: 0,
        }
    }

    /// `Some(held back since the last one)` when a warning may be logged at `now`.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.quiet += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.quiet))
            }
        }
    }
}
