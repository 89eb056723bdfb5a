//! The fleet: which workers exist and which models each serves.
//!
//! Reads are lock-free: the request path loads an `Arc<Snapshot>` from an [`ArcSwap`]. Writes
//! have one owner: a writer task applies [`FleetEvent`]s in order, publishes a new snapshot,
//! and tells the policy. Live per-worker numbers are atomics in [`Worker`] and never need a
//! new snapshot.

mod breaker;
mod exposition;
mod health;
mod load;
mod scrape;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

pub use breaker::{Breaker, BreakerState, Ticket};
pub use exposition::EngineMetrics;
pub use health::{spawn_health_loop, wait_for_startup};
pub use load::{EngineLoad, EngineSample, Load};
pub use scrape::spawn_scrape_loop;
pub use worker::{InFlight, Worker};

use crate::config::WorkerSpec;
use crate::policy::Policy;

/// One entry of a worker's `/v1/models` list, kept as the worker sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The name clients put in `model`.
    pub id: String,
    /// The whole entry, forwarded as is by the router's `/v1/models`.
    pub raw: serde_json::Value,
}

/// A worker and what the router knows it serves.
#[derive(Debug, Clone)]
pub struct Member {
    /// The worker.
    pub worker: Arc<Worker>,
    /// Its models, or `None` until it has answered `/v1/models`.
    pub models: Option<Arc<[ModelCard]>>,
}

/// An immutable view of the fleet, rebuilt by the writer on every change.
#[derive(Debug, Default)]
pub struct Snapshot {
    members: Vec<Member>,
    by_model: HashMap<String, Vec<Arc<Worker>>>,
    listed: Vec<Arc<Worker>>,
}

impl Snapshot {
    /// A snapshot of these members (the fleet's writer builds them; tests and benches too).
    pub fn new(members: Vec<Member>) -> Self {
        let mut by_model: HashMap<String, Vec<Arc<Worker>>> = HashMap::new();
        let mut listed = Vec::new();
        for m in &members {
            let Some(models) = &m.models else { continue };
            listed.push(Arc::clone(&m.worker));
            for card in models.iter() {
                let serving = by_model.entry(card.id.clone()).or_default();
                if !serving.iter().any(|w| Arc::ptr_eq(w, &m.worker)) {
                    serving.push(Arc::clone(&m.worker));
                }
            }
        }
        Self {
            members,
            by_model,
            listed,
        }
    }

    /// Every worker, in the order they joined.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The workers that serve `model` (healthy or not), or every worker with known models when
    /// the request names none. `None` when no worker serves that model.
    pub fn serving(&self, model: Option<&str>) -> Option<&[Arc<Worker>]> {
        match model {
            None => Some(&self.listed),
            Some(name) => self.by_model.get(name).map(Vec::as_slice),
        }
    }

    /// How many workers are healthy.
    pub fn healthy_count(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.worker.is_healthy())
            .count()
    }

    /// Each model served by a healthy worker, once, in the order first seen.
    pub fn healthy_models(&self) -> Vec<&ModelCard> {
        let mut seen: Vec<&ModelCard> = Vec::new();
        for m in self.members.iter().filter(|m| m.worker.is_healthy()) {
            for card in m.models.iter().flat_map(|c| c.iter()) {
                if !seen.iter().any(|s| s.id == card.id) {
                    seen.push(card);
                }
            }
        }
        seen
    }

    /// Names of every model some worker serves, sorted.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_model.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// A change to the fleet, applied in order by the writer task.
#[derive(Debug)]
pub enum FleetEvent {
    /// A worker joins (ignored when its URL is already present).
    Add(WorkerSpec),
    /// The worker with this URL leaves; requests in flight to it finish.
    Remove(String),
    /// The worker with this URL lists these models.
    Models {
        /// The worker's canonical URL.
        url: String,
        /// Its `/v1/models` entries.
        models: Vec<ModelCard>,
    },
}

type Command = (FleetEvent, Option<oneshot::Sender<()>>);

/// The fleet's handle: lock-free reads of the current snapshot, ordered writes through events.
#[derive(Debug)]
pub struct Fleet {
    current: Arc<ArcSwap<Snapshot>>,
    events: mpsc::UnboundedSender<Command>,
}

impl Fleet {
    /// Start the writer task with these workers (not yet healthy, models unknown). The policy
    /// hears of every published snapshot. Must be called inside a Tokio runtime.
    pub fn start(workers: &[WorkerSpec], policy: Arc<dyn Policy>) -> Self {
        let members: Vec<Member> = workers
            .iter()
            .map(|url| Member {
                worker: Arc::new(Worker::new(url.clone())),
                models: None,
            })
            .collect();
        let first = Arc::new(Snapshot::new(members.clone()));
        policy.on_fleet_change(&first);
        let current = Arc::new(ArcSwap::new(first));
        let (events, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(members, Arc::clone(&current), policy, rx));
        Self { current, events }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Apply an event and wait until the snapshot that includes it is published.
    pub async fn apply(&self, event: FleetEvent) {
        let (done, published) = oneshot::channel();
        if self.events.send((event, Some(done))).is_ok() {
            // The writer only stops once every handle is gone, so this cannot hang.
            let _ = published.await;
        }
    }
}

async fn writer(
    mut members: Vec<Member>,
    current: Arc<ArcSwap<Snapshot>>,
    policy: Arc<dyn Policy>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    while let Some((event, done)) = rx.recv().await {
        let changed = apply(&mut members, event);
        if changed {
            let next = Arc::new(Snapshot::new(members.clone()));
            policy.on_fleet_change(&next);
            current.store(next);
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

fn apply(members: &mut Vec<Member>, event: FleetEvent) -> bool {
    match event {
        FleetEvent::Add(spec) => {
            if members.iter().any(|m| m.worker.url() == spec.url.text) {
                return false;
            }
            tracing::info!(worker = %spec.url.text, "worker added");
            members.push(Member {
                worker: Arc::new(Worker::new(spec)),
                models: None,
            });
            true
        }
        FleetEvent::Remove(url) => {
            let before = members.len();
            members.retain(|m| m.worker.url() != url);
            let removed = members.len() != before;
            if removed {
                tracing::info!(worker = %url, "worker removed");
            }
            removed
        }
        FleetEvent::Models { url, models } => {
            let Some(member) = members.iter_mut().find(|m| m.worker.url() == url) else {
                return false;
            };
            if member.models.as_deref() == Some(models.as_slice()) {
                return false;
            }
            let names: Vec<&str> = models.iter().map(|c| c.id.as_str()).collect();
            tracing::info!(worker = %url, models = ?names, "worker models");
            member.models = Some(models.into());
            true
        }
    }
}

#[cfg(test)]
mod tests;
