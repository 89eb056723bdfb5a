//! Consistent hashing with bounded load: a session's key hashes to a point on a ring of
//! virtual nodes, and the session goes to the first worker clockwise that serves the request
//! and is under the load bound: `ceil(factor × (in-flight of all candidates + 1) / candidates)`.
//! A worker over the bound passes its overflow along the ring; a worker that leaves hands its
//! sessions to the next nodes around the ring (many workers, not one), and no other session
//! moves. Requests without a key go to the least loaded candidate.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{Decision, Policy, RouteRequest, least_by};
use crate::fleet::{Snapshot, Worker};

/// Virtual nodes per worker: enough for an even spread of keys and of a leaver's sessions.
const VNODES: u64 = 160;

/// The ring: (point, worker id), sorted by point. Points hash the worker's label (its URL,
/// with `#rank` for a data-parallel rank), so every rank of a server is a node of its own.
#[derive(Debug, Default)]
struct Ring(Vec<(u64, u64)>);

impl Ring {
    fn build<'a>(workers: impl Iterator<Item = &'a Worker>) -> Self {
        let mut points: Vec<(u64, u64)> = workers
            .flat_map(|w| {
                (0..VNODES).map(move |v| (xxh3_64_with_seed(w.label().as_bytes(), v), w.id()))
            })
            .collect();
        points.sort_unstable();
        Self(points)
    }
}

/// Session affinity on a hash ring, with bounded load.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: ArcSwap<Ring>,
    factor: f64,
}

impl ConsistentHash {
    /// A policy letting no worker exceed `factor` times the mean in-flight (at least 1).
    pub fn new(factor: f64) -> Self {
        Self {
            ring: ArcSwap::default(),
            factor: factor.max(1.0),
        }
    }
}

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision> {
        if candidates.is_empty() {
            return None;
        }
        let Some(key) = req.session_key else {
            let now = Instant::now();
            let index = least_by(candidates, |w| w.load(now).queue())?;
            return Some(Decision::new(index, "no session key: least loaded"));
        };
        let total: usize = candidates.iter().map(|w| w.in_flight()).sum();
        let bound = (self.factor * (total + 1) as f64 / candidates.len() as f64).ceil() as usize;

        let ring = self.ring.load();
        let start = ring
            .0
            .partition_point(|&(p, _)| p < xxh3_64(key.as_bytes()));
        let mut home = true;
        for step in 0..ring.0.len() {
            let (_, id) = ring.0[(start + step) % ring.0.len()];
            let Some(index) = candidates.iter().position(|w| w.id() == id) else {
                continue;
            };
            if candidates[index].in_flight() < bound {
                let reason = if home {
                    "session home"
                } else {
                    "session home full or away: next on ring"
                };
                return Some(Decision::new(index, reason));
            }
            home = false;
        }
        // Candidates missing from the ring (a snapshot not yet seen): stay correct, if not sticky.
        let index = least_by(candidates, |w| w.in_flight() as f64)?;
        Some(Decision::new(index, "not on ring: least in flight"))
    }

    fn on_fleet_change(&self, snapshot: &Snapshot) {
        self.ring.store(Arc::new(Ring::build(
            snapshot.members().iter().map(|m| m.worker.as_ref()),
        )));
    }
}

#[cfg(test)]
mod tests;
