//! The fleet: which workers exist and which models each serves.
//!
//! Reads are lock-free: the request path loads an `Arc<Snapshot>` from an [`ArcSwap`]. Writes
//! have one owner: a writer task applies [`FleetEvent`]s in order, publishes a new snapshot,
//! and tells the policy. Live per-worker numbers are atomics in [`Worker`] and never need a
//! new snapshot.

mod breaker;
pub(crate) mod exposition;
mod health;
mod load;
mod recent;
mod scrape;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

pub use breaker::{Breaker, BreakerState, Ticket};
pub use exposition::EngineMetrics;
pub use health::{admit, admit_url, spawn_health_loop, wait_for_startup};
pub use load::{EngineLoad, EngineSample, Load};
pub use recent::{Completion, KEPT, PromptTokens, Recent};
pub use scrape::spawn_scrape_loop;
pub use worker::{DEFAULT_BYTES_PER_TOKEN, InFlight, Worker, X_DATA_PARALLEL_RANK};

use crate::config::{Role, WorkerSpec};
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

impl Member {
    /// The names of its models, empty until it listed them.
    pub fn model_names(&self) -> Vec<&str> {
        self.models
            .iter()
            .flat_map(|c| c.iter())
            .map(|c| c.id.as_str())
            .collect()
    }
}

/// Which workers a request may go to: any, or those of one P/D role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Every worker, whatever its role (single-leg requests).
    Any,
    /// Prefill workers.
    Prefill,
    /// Decode workers.
    Decode,
}

/// Workers by model, for one pool.
#[derive(Debug, Default)]
struct Index {
    by_model: HashMap<String, Vec<Arc<Worker>>>,
    listed: Vec<Arc<Worker>>,
}

impl Index {
    fn add(&mut self, worker: &Arc<Worker>, models: &[ModelCard]) {
        self.listed.push(Arc::clone(worker));
        for card in models {
            let serving = self.by_model.entry(card.id.clone()).or_default();
            if !serving.iter().any(|w| Arc::ptr_eq(w, worker)) {
                serving.push(Arc::clone(worker));
            }
        }
    }
}

/// An immutable view of the fleet, rebuilt by the writer on every change.
#[derive(Debug, Default)]
pub struct Snapshot {
    members: Vec<Member>,
    any: Index,
    prefill: Index,
    decode: Index,
}

impl Snapshot {
    /// A snapshot of these members (the fleet's writer builds them; tests and benches too).
    pub fn new(members: Vec<Member>) -> Self {
        let (mut any, mut prefill, mut decode) =
            (Index::default(), Index::default(), Index::default());
        for m in &members {
            let Some(models) = &m.models else { continue };
            any.add(&m.worker, models);
            match m.worker.role() {
                Role::Prefill => prefill.add(&m.worker, models),
                Role::Decode => decode.add(&m.worker, models),
                Role::Regular => {}
            }
        }
        Self {
            members,
            any,
            prefill,
            decode,
        }
    }

    /// A snapshot of these workers, their models not yet known (tests and benches).
    pub fn of_workers<'a>(workers: impl IntoIterator<Item = &'a Arc<Worker>>) -> Self {
        Self::new(
            workers
                .into_iter()
                .map(|worker| Member {
                    worker: Arc::clone(worker),
                    models: None,
                })
                .collect(),
        )
    }

    /// Every worker (one per data-parallel rank), in the order they joined; the ranks of one
    /// URL are next to each other.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The members grouped by URL: one group per server, one member per rank.
    pub fn servers(&self) -> impl Iterator<Item = &[Member]> {
        self.members
            .chunk_by(|a, b| a.worker.url() == b.worker.url())
    }

    /// The members of the server at `url` (one per rank), when it is in the fleet.
    pub fn server(&self, url: &str) -> Option<&[Member]> {
        self.servers().find(|ranks| ranks[0].worker.url() == url)
    }

    /// The workers that serve `model` (healthy or not), or every worker with known models when
    /// the request names none. `None` when no worker serves that model.
    pub fn serving(&self, model: Option<&str>) -> Option<&[Arc<Worker>]> {
        self.serving_in(Pool::Any, model)
    }

    /// [`Snapshot::serving`], within one pool.
    pub fn serving_in(&self, pool: Pool, model: Option<&str>) -> Option<&[Arc<Worker>]> {
        let index = match pool {
            Pool::Any => &self.any,
            Pool::Prefill => &self.prefill,
            Pool::Decode => &self.decode,
        };
        match model {
            None => Some(&index.listed),
            Some(name) => index.by_model.get(name).map(Vec::as_slice),
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
        let mut names: Vec<&str> = self.any.by_model.keys().map(String::as_str).collect();
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

/// Hears of every snapshot the fleet publishes, after the policies have: for state kept per
/// worker outside the fleet (metric series), which must go when its worker goes.
pub trait Watcher: Send + Sync + std::fmt::Debug {
    /// `snapshot` is now the current one.
    fn on_fleet_change(&self, snapshot: &Snapshot);
}

type Watchers = Arc<crate::sync::RwLock<Vec<Arc<dyn Watcher>>>>;

/// The fleet's handle: lock-free reads of the current snapshot, ordered writes through events.
#[derive(Debug)]
pub struct Fleet {
    current: Arc<ArcSwap<Snapshot>>,
    events: mpsc::UnboundedSender<Command>,
    watchers: Watchers,
}

impl Fleet {
    /// Start the writer task with these workers (not yet healthy, models unknown). The policy
    /// hears of every published snapshot. Must be called inside a Tokio runtime.
    pub fn start(workers: &[WorkerSpec], policies: Vec<Arc<dyn Policy>>) -> Self {
        let members: Vec<Member> = workers.iter().flat_map(members_of).collect();
        let first = Arc::new(Snapshot::new(members.clone()));
        for policy in &policies {
            policy.on_fleet_change(&first);
        }
        let current = Arc::new(ArcSwap::new(first));
        let (events, rx) = mpsc::unbounded_channel();
        let watchers = Watchers::default();
        tokio::spawn(writer(
            members,
            Arc::clone(&current),
            policies,
            Arc::clone(&watchers),
            rx,
        ));
        Self {
            current,
            events,
            watchers,
        }
    }

    /// From the next published snapshot on, `watcher` hears of every one.
    pub fn watch(&self, watcher: Arc<dyn Watcher>) {
        self.watchers.write().push(watcher);
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
    policies: Vec<Arc<dyn Policy>>,
    watchers: Watchers,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    while let Some((event, done)) = rx.recv().await {
        let changed = apply(&mut members, event);
        if changed {
            let next = Arc::new(Snapshot::new(members.clone()));
            for policy in &policies {
                policy.on_fleet_change(&next);
            }
            current.store(Arc::clone(&next));
            for watcher in watchers.read().iter() {
                watcher.on_fleet_change(&next);
            }
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
            tracing::info!(worker = %spec.url.text, role = spec.role.name(), ranks = spec.ranks.get(), "worker added");
            members.extend(members_of(&spec));
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
            let mut ranks = members
                .iter_mut()
                .filter(|m| m.worker.url() == url)
                .peekable();
            let Some(first) = ranks.peek() else {
                return false;
            };
            let models = match &first.worker.spec().models {
                Some(routed) => {
                    let kept: Vec<ModelCard> = models
                        .into_iter()
                        .filter(|c| routed.contains(&c.id))
                        .collect();
                    if kept.len() < routed.len() && first.models.is_none() {
                        tracing::warn!(worker = %url, models = ?routed, "the worker does not list every model configured for it");
                    }
                    kept
                }
                None => models,
            };
            if first.models.as_deref() == Some(models.as_slice()) {
                return false;
            }
            let names: Vec<&str> = models.iter().map(|c| c.id.as_str()).collect();
            tracing::info!(worker = %url, models = ?names, "worker models");
            let models: Arc<[ModelCard]> = models.into();
            for member in ranks {
                member.models = Some(Arc::clone(&models));
            }
            true
        }
    }
}

/// The members a spec stands for: one per data-parallel rank, models not yet known.
fn members_of(spec: &WorkerSpec) -> Vec<Member> {
    Worker::ranks(spec)
        .into_iter()
        .map(|worker| Member {
            worker,
            models: None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
