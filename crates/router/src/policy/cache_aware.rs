//! Cache-aware routing on an approximate index of each worker's prefix cache, learned from the
//! router's own decisions: a request's canonical prompt, in chained blocks, is matched against
//! what the router already sent each worker.
//!
//! The cost model, in blocks of prompt text: a worker's cost is the blocks it would have to
//! prefill (`prompt blocks − matched blocks`) plus its pressure times the mean prompt size
//! (`blocks per prompt × (engine waiting + net requests sent since its scrape + in-flight / 4)`):
//! a request queued ahead delays this one about as much as prefilling an average prompt,
//! while one already running delays it a quarter of that. The lowest cost wins. Two guards
//! keep vllm-project/router's meaning of its flags:
//! - `--balance-abs-threshold` / `--balance-rel-threshold`: when the most loaded candidate
//!   has more than `abs` requests (in flight plus waiting) over the least loaded, and more
//!   than `rel` times as many, the least loaded wins outright;
//! - `--cache-threshold`: when no candidate holds at least that fraction of the prompt, the
//!   cache is ignored and the least loaded wins.
//!
//! Each worker's index holds at most `--max-tree-size` bytes of prompt text, or the worker's
//! KV capacity from `vllm:cache_config_info` (assuming four bytes of text per token) if
//! smaller; it is trimmed when it passes that by an eighth and swept every
//! `--eviction-interval-secs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::{Decision, Explanation, Policy, RouteRequest, least_by};
use crate::fleet::{Load, Snapshot, Worker};
use crate::prefix::{BLOCK_BYTES, PrefixIndex, chain_hashes};

/// Bytes of prompt text per token, for sizing an index from a KV capacity in tokens.
const BYTES_PER_TOKEN: u64 = 4;

/// Blocks of prompt text an index of `worker` may hold: `max_bytes` of text, or the worker's
/// KV capacity from `vllm:cache_config_info` if smaller (the worker cannot hold more).
pub(crate) fn index_capacity(worker: &Worker, max_bytes: u64) -> usize {
    let by_flag = max_bytes / BLOCK_BYTES as u64;
    let by_kv = worker.engine_sample().and_then(|s| {
        let tokens = u64::from(s.metrics.block_size?) * s.metrics.num_gpu_blocks?;
        Some(tokens * BYTES_PER_TOKEN / BLOCK_BYTES as u64)
    });
    usize::try_from(by_kv.map_or(by_flag, |kv| kv.min(by_flag))).unwrap_or(usize::MAX)
}

/// Settings of [`CacheAware`], with vllm-project/router's flag meanings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheAwareConfig {
    /// Least fraction of the prompt some worker must hold for the cache to count.
    pub cache_threshold: f64,
    /// Load spread (requests) above which the least loaded wins outright...
    pub balance_abs_threshold: f64,
    /// ...when the most loaded also has more than this many times the least.
    pub balance_rel_threshold: f64,
    /// Time between sweeps of every index down to its capacity.
    pub eviction_interval: Duration,
    /// Bytes of prompt text each worker's index may hold.
    pub max_tree_size: u64,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64.0,
            balance_rel_threshold: 1.5,
            eviction_interval: Duration::from_secs(120),
            max_tree_size: 32 * 1024 * 1024,
        }
    }
}

/// One candidate's terms, for decisions and explanations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Terms {
    /// Prompt blocks the worker is predicted to hold.
    pub matched_blocks: usize,
    /// The worker's load.
    pub load: Load,
    /// Its cost under the model (lower is better).
    pub cost: f64,
}

/// Routes to the worker with the lowest expected prefill plus queueing cost.
#[derive(Debug)]
pub struct CacheAware {
    config: CacheAwareConfig,
    indexes: RwLock<HashMap<u64, Arc<Mutex<PrefixIndex>>>>,
    clock: AtomicU64,
    /// Mean prompt size in blocks, × 16 (an exponentially weighted moving average).
    mean_blocks_x16: AtomicU64,
    started: Instant,
    last_sweep_ms: AtomicU64,
}

impl CacheAware {
    /// A policy with these settings and empty indexes.
    pub fn new(config: CacheAwareConfig) -> Self {
        Self {
            config,
            indexes: RwLock::default(),
            clock: AtomicU64::new(1),
            mean_blocks_x16: AtomicU64::new(16),
            started: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    fn index_of(&self, worker: &Worker) -> Arc<Mutex<PrefixIndex>> {
        if let Some(index) = self.indexes.read().get(&worker.id()) {
            return Arc::clone(index);
        }
        Arc::clone(self.indexes.write().entry(worker.id()).or_default())
    }

    /// Blocks of prompt text `worker`'s index may hold.
    fn capacity(&self, worker: &Worker) -> usize {
        index_capacity(worker, self.config.max_tree_size)
    }

    /// Every candidate's terms for a prompt of `chain`.
    pub fn terms(&self, chain: &[u64], candidates: &[Arc<Worker>], now: Instant) -> Vec<Terms> {
        let mean_blocks = self.mean_blocks_x16.load(Ordering::Relaxed) as f64 / 16.0;
        candidates
            .iter()
            .map(|w| {
                let matched_blocks = self.index_of(w).lock().matched(chain);
                let load = w.load(now);
                let queued = load
                    .engine
                    .map_or(0.0, |e| e.waiting + e.in_flight_change.max(0) as f64);
                let pressure = queued + f64::from(load.in_flight) / 4.0;
                let cost = (chain.len() - matched_blocks) as f64 + mean_blocks * pressure;
                Terms {
                    matched_blocks,
                    load,
                    cost,
                }
            })
            .collect()
    }

    /// Choose for `chain` without learning from the choice; the decision carries the
    /// fraction of the prompt the chosen worker is predicted to hold.
    pub fn choose(&self, chain: &[u64], candidates: &[Arc<Worker>]) -> Option<Decision> {
        if candidates.is_empty() {
            return None;
        }
        let terms = self.terms(chain, candidates, Instant::now());
        let decision = self.decide(chain, candidates, &terms)?;
        let predicted_hit = (!chain.is_empty())
            .then(|| terms[decision.index].matched_blocks as f64 / chain.len() as f64);
        Some(Decision {
            predicted_hit,
            ..decision
        })
    }

    fn decide(
        &self,
        chain: &[u64],
        candidates: &[Arc<Worker>],
        terms: &[Terms],
    ) -> Option<Decision> {
        let queues: Vec<f64> = terms.iter().map(|t| t.load.queue()).collect();
        let (min, max) = queues
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &q| (lo.min(q), hi.max(q)));
        let least_loaded = |reason| {
            let mut i = 0;
            least_by(candidates, |_| {
                i += 1;
                queues[i - 1]
            })
            .map(|index| Decision::new(index, reason))
        };
        if max - min > self.config.balance_abs_threshold
            && max > min * self.config.balance_rel_threshold
        {
            return least_loaded("load imbalance: least loaded");
        }
        let best_match = terms.iter().map(|t| t.matched_blocks).max().unwrap_or(0);
        if chain.is_empty()
            || (best_match as f64) < self.config.cache_threshold * chain.len() as f64
        {
            return least_loaded("prefix below cache threshold: least loaded");
        }
        let mut i = 0;
        let index = least_by(candidates, |_| {
            i += 1;
            terms[i - 1].cost
        })?;
        Some(Decision::new(index, "lowest prefill + queue cost"))
    }

    /// Learn that `worker` now holds `chain`.
    fn learn(&self, worker: &Worker, chain: &[u64]) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let capacity = self.capacity(worker);
        let index = self.index_of(worker);
        let mut index = index.lock();
        index.insert(chain, now);
        if index.len() > capacity + capacity / 8 {
            index.evict_to(capacity);
        }
    }

    fn sweep_if_due(&self, candidates: &[Arc<Worker>]) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let interval = self.config.eviction_interval.as_millis() as u64;
        if now_ms.saturating_sub(last) < interval
            || self
                .last_sweep_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for w in candidates {
            let capacity = self.capacity(w);
            self.index_of(w).lock().evict_to(capacity);
        }
    }
}

impl Policy for CacheAware {
    fn name(&self) -> &'static str {
        "cache_aware"
    }

    fn wants_prompt(&self) -> bool {
        true
    }

    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision> {
        let chain = chain_hashes(req.prompt.unwrap_or_default().as_bytes());
        let decision = self.choose(&chain, candidates)?;
        let blocks = chain.len() as u64;
        let _ = self
            .mean_blocks_x16
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(m - m / 16 + blocks)
            });
        self.learn(&candidates[decision.index], &chain);
        self.sweep_if_due(candidates);
        Some(decision)
    }

    fn explain(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Explanation {
        let chain = chain_hashes(req.prompt.unwrap_or_default().as_bytes());
        let terms = self.terms(&chain, candidates, Instant::now());
        Explanation {
            decision: self.choose(&chain, candidates),
            scores: Some(terms.iter().map(|t| t.cost).collect()),
            matched_blocks: Some(terms.iter().map(|t| t.matched_blocks).collect()),
            prompt_blocks: Some(chain.len()),
        }
    }

    fn on_fleet_change(&self, snapshot: &Snapshot) {
        let present: Vec<u64> = snapshot.members().iter().map(|m| m.worker.id()).collect();
        self.indexes.write().retain(|id, _| present.contains(id));
    }
}

#[cfg(test)]
mod tests;
