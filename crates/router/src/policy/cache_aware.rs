//! Cache-aware routing on an approximate index of each worker's prefix cache, learned from the
//! router's own decisions: a request's canonical prompt, in chained blocks, is matched against
//! what the router already sent each worker.
//!
//! One cost model, in blocks of prefill work, decides (see [`Terms`]). A worker's cost for a
//! request is what it must prefill (prompt blocks not cached there), times `1 + fill` where
//! `fill` (0..1) is how full its cache is, since each block prefilled into a full cache
//! evicts one that someone will recompute ([`EVICTION_WEIGHT`]); plus the work ahead of the
//! request there:
//! - prefill booked on it: every request the router sent it books the blocks it predicted
//!   the worker would prefill, until its first token comes back, so a burst sees its own
//!   earlier members before any scrape does;
//! - the running batch: each request in flight adds a decode token to every step, about one
//!   block of prefill ([`DECODE_BLOCKS`]);
//! - the engine's queue beyond the router's own requests awaiting their first token (those
//!   are booked): each request there costs about the mean prefill of a request.
//!
//! Blocks are not the same time everywhere: a slower GPU, or an engine slowed by what the
//! router cannot see, takes longer per block. Each worker learns its pace, the seconds from
//! dispatch to first token per block of work predicted for the request
//! ([`Worker::secs_per_block`]), and the cost is scaled by its pace against the candidates'
//! mean ([`Terms::speed`]; 1 until timed, bounded by [`PACE_BOUNDS`]), so it reads in blocks
//! at the fleet's mean pace.
//!
//! Three rules use it:
//! - a prefix nobody holds (no worker holds `--cache-threshold` of the prompt) goes to the
//!   cheapest worker: the least work ahead and the emptiest cache, so that groups spread over
//!   the fleet instead of piling up;
//! - a follower of a cached prefix stays on the worker holding the most of it;
//! - it spills to another worker only when that worker's cost is lower by more than a margin
//!   of [`SPILL_MARGIN`] plus that worker's `fill` times the held prefix: the work ahead on
//!   the holder must exceed the recompute (and the evictions it causes) elsewhere, with
//!   hysteresis, so that a session does not flap between two workers of about equal load;
//!   and in a full cache the copy of the prefix a spill leaves keeps evicting as many blocks
//!   of other prefixes, which their followers recompute, for as long as it is used there.
//!   Without that term, caches smaller than the working set filled with copies of the same
//!   system prompts and lost the hits those evicted.
//!
//! vllm-project/router's balance guard keeps its meaning: when the most loaded candidate has
//! more than `--balance-abs-threshold` requests (in flight plus waiting) over the least
//! loaded, and more than `--balance-rel-threshold` times as many, the least loaded wins
//! outright.
//!
//! Each worker's index holds at most `--max-tree-size` bytes of prompt text, or the worker's
//! KV capacity from `vllm:cache_config_info` (block size × blocks, at the bytes of prompt text
//! per token the worker's reported usage shows, four until it reports any) if smaller; it is trimmed when it passes that by an eighth and swept every
//! `--eviction-interval-secs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Decision, Explanation, Policy, RouteRequest, least_by};
use crate::fleet::{Snapshot, Worker};
use crate::prefix::{BLOCK_BYTES, PrefixIndex, chain_hashes};
use crate::sync::{Mutex, RwLock};

/// Blocks of prompt text an index of `worker` may hold: `max_bytes` of text, or the worker's
/// KV capacity from `vllm:cache_config_info` if smaller (the worker cannot hold more), in
/// text at the bytes per token the worker has shown ([`Worker::bytes_per_token`]).
pub(crate) fn index_capacity(worker: &Worker, max_bytes: u64) -> usize {
    let by_flag = max_bytes / BLOCK_BYTES as u64;
    let by_kv = worker.engine_sample().and_then(|s| {
        let tokens = u64::from(s.metrics.block_size?) * s.metrics.num_gpu_blocks?;
        Some((tokens as f64 * worker.bytes_per_token()) as u64 / BLOCK_BYTES as u64)
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

/// Blocks of prefill work one request in the running batch costs a new request: it adds a
/// decode token to every step the new request's prefill shares with it.
pub const DECODE_BLOCKS: f64 = 1.0;

/// What each block prefilled into a full cache costs beyond its own prefill, as a share of
/// it: it evicts a block that another request will have to recompute.
pub const EVICTION_WEIGHT: f64 = 1.0;

/// A follower leaves the worker holding most of its prefix only to save more than this share
/// of the held prefix, plus the other worker's cache fill times it.
pub const SPILL_MARGIN: f64 = 0.5;

/// Bounds of a worker's pace against the candidates' mean, so that a few odd first tokens
/// (a stall, a burst the prediction missed) cannot price a worker out of the fleet.
pub const PACE_BOUNDS: (f64, f64) = (0.25, 4.0);

/// One candidate's terms under the cost model, in blocks of prefill work, for decisions and
/// `/debug/route`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Terms {
    /// Prompt blocks the worker is predicted to hold.
    pub matched_blocks: usize,
    /// Prompt blocks it would prefill.
    pub uncached_blocks: usize,
    /// Prefill booked on it by requests whose first token has not come back.
    pub booked_blocks: u64,
    /// Requests in flight to it from this router.
    pub in_flight: u32,
    /// Requests waiting in its engine (scraped) beyond those this router sent that await
    /// their first token, which are booked already.
    pub waiting: f64,
    /// How full its cache is, 0..1: the index against the worker's capacity (or, with no
    /// capacity known, against the largest index of the candidates).
    pub cache_fill: f64,
    /// Work ahead of a new request: booked prefill, decode steps and queue.
    pub queued: f64,
    /// The worker's seconds per block of work against the candidates' mean: above 1 slower,
    /// 1 while unknown.
    pub speed: f64,
    /// The cost: uncached × (1 + fill), the prefill and what it evicts, plus queued, times
    /// speed.
    pub cost: f64,
    /// Requests ahead, for the balance guard: in flight plus waiting.
    #[serde(skip)]
    pub load: f64,
}

/// Routes to the worker with the lowest expected prefill plus queueing cost.
#[derive(Debug)]
pub struct CacheAware {
    config: CacheAwareConfig,
    indexes: RwLock<HashMap<u64, Arc<Mutex<PrefixIndex>>>>,
    clock: AtomicU64,
    /// Mean prefill per request in blocks (the uncached part of its prompt where it was
    /// sent), × 16: an exponentially weighted moving average, the cost of each request
    /// waiting ahead in an engine's queue.
    mean_prefill_x16: AtomicU64,
    started: Instant,
    last_sweep_ms: AtomicU64,
}

/// Whether no candidate holds enough of the prompt for the cache to count.
fn is_new_prefix(chain: &[u64], terms: &[Terms], threshold: f64) -> bool {
    let best = terms.iter().map(|t| t.matched_blocks).max().unwrap_or(0);
    best == 0 || (best as f64) < threshold * chain.len() as f64
}

impl CacheAware {
    /// A policy with these settings and empty indexes.
    pub fn new(config: CacheAwareConfig) -> Self {
        Self {
            config,
            indexes: RwLock::default(),
            clock: AtomicU64::new(1),
            mean_prefill_x16: AtomicU64::new(16),
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
        let mean_prefill = self.mean_prefill_x16.load(Ordering::Relaxed) as f64 / 16.0;
        let by_flag =
            usize::try_from(self.config.max_tree_size / BLOCK_BYTES as u64).unwrap_or(usize::MAX);
        let mut terms: Vec<Terms> = candidates
            .iter()
            .map(|w| {
                let (matched_blocks, held) = {
                    let index = self.index_of(w);
                    let index = index.lock();
                    (index.matched(chain), index.len())
                };
                let load = w.load(now);
                // Requests this router sent and that wait for their first token are booked
                // already; the engine's queue beyond them came from elsewhere.
                let waiting = load
                    .engine
                    .map_or(0.0, |e| (e.waiting - w.awaiting_first() as f64).max(0.0));
                let booked_blocks = w.booked_prefill();
                let in_flight = load.in_flight;
                let queued = booked_blocks as f64
                    + DECODE_BLOCKS * f64::from(in_flight)
                    + mean_prefill * waiting;
                // Against the worker's capacity when learned; else, below, the fullest's.
                let capacity = self.capacity(w);
                let cache_fill = if capacity < by_flag {
                    (held as f64 / capacity.max(1) as f64).min(1.0)
                } else {
                    -(held as f64)
                };
                Terms {
                    matched_blocks,
                    uncached_blocks: chain.len() - matched_blocks,
                    booked_blocks,
                    in_flight,
                    waiting,
                    cache_fill,
                    queued,
                    speed: w.secs_per_block().unwrap_or(0.0),
                    cost: 0.0,
                    load: load.queue(),
                }
            })
            .collect();
        // Unknown capacities were marked negative: judge those against the fullest of them.
        let fullest = terms.iter().map(|t| -t.cache_fill).fold(0.0f64, f64::max);
        // Paces were read raw (0 when unknown): against the mean of the known ones.
        let (sum, known) = terms
            .iter()
            .filter(|t| t.speed > 0.0)
            .fold((0.0, 0u32), |(s, n), t| (s + t.speed, n + 1));
        for t in &mut terms {
            t.speed = if t.speed > 0.0 {
                (t.speed * f64::from(known) / sum).clamp(PACE_BOUNDS.0, PACE_BOUNDS.1)
            } else {
                1.0
            };
            if t.cache_fill <= 0.0 {
                t.cache_fill = if fullest > 0.0 {
                    -t.cache_fill / fullest
                } else {
                    0.0
                };
            }
            t.cost = (t.uncached_blocks as f64 * (1.0 + EVICTION_WEIGHT * t.cache_fill) + t.queued)
                * t.speed;
        }
        terms
    }

    /// Choose for `chain` without learning from the choice; the decision carries the
    /// fraction of the prompt the chosen worker is predicted to hold and the prefill it books.
    pub fn choose(&self, chain: &[u64], candidates: &[Arc<Worker>]) -> Option<Decision> {
        if candidates.is_empty() {
            return None;
        }
        let terms = self.terms(chain, candidates, Instant::now());
        self.decide_on(chain, candidates, &terms)
    }

    /// The decision on these terms, with the predicted hit and the prefill it books.
    fn decide_on(
        &self,
        chain: &[u64],
        candidates: &[Arc<Worker>],
        terms: &[Terms],
    ) -> Option<Decision> {
        let decision = self.decide(chain, candidates, terms)?;
        let chosen = &terms[decision.index];
        let predicted_hit =
            (!chain.is_empty()).then(|| chosen.matched_blocks as f64 / chain.len() as f64);
        Some(Decision {
            predicted_hit,
            prefill_blocks: chosen.uncached_blocks as u64,
            work_blocks: Some(chosen.queued + chosen.uncached_blocks as f64 + 1.0),
            ..decision
        })
    }

    fn decide(
        &self,
        chain: &[u64],
        candidates: &[Arc<Worker>],
        terms: &[Terms],
    ) -> Option<Decision> {
        let (min, max) = terms.iter().fold((f64::MAX, 0.0f64), |(lo, hi), t| {
            (lo.min(t.load), hi.max(t.load))
        });
        let lowest = |key: &dyn Fn(&Terms) -> f64| {
            let mut i = 0;
            least_by(candidates, |_| {
                i += 1;
                key(&terms[i - 1])
            })
        };
        if max - min > self.config.balance_abs_threshold
            && max > min * self.config.balance_rel_threshold
        {
            return lowest(&|t| t.load).map(|i| Decision::new(i, "load imbalance: least loaded"));
        }
        if chain.is_empty() {
            return lowest(&|t| t.queued).map(|i| Decision::new(i, "no prompt: least work ahead"));
        }
        if is_new_prefix(chain, terms, self.config.cache_threshold) {
            return lowest(&|t| t.cost).map(|i| Decision::new(i, "new prefix: most room"));
        }
        let cheapest = lowest(&|t| t.cost)?;
        // The holder: the deepest match, the cheapest among equals.
        let holder = (0..terms.len())
            .max_by(|&a, &b| {
                let (ta, tb) = (&terms[a], &terms[b]);
                ta.matched_blocks
                    .cmp(&tb.matched_blocks)
                    .then(tb.cost.total_cmp(&ta.cost))
            })
            .unwrap_or(cheapest);
        if cheapest == holder {
            return Some(Decision::new(holder, "cached prefix: holder"));
        }
        // The recompute happens on the cheapest, at its pace.
        let margin = (SPILL_MARGIN + EVICTION_WEIGHT * terms[cheapest].cache_fill)
            * terms[holder].matched_blocks as f64
            * terms[cheapest].speed;
        if terms[holder].cost - terms[cheapest].cost > margin {
            tracing::debug!(holder = ?terms[holder], to = ?terms[cheapest], "cache_aware spill");
            Some(Decision::new(cheapest, "spill: queue past recompute cost"))
        } else {
            Some(Decision::new(holder, "cached prefix: holder"))
        }
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
        let blocks = decision.prefill_blocks;
        let _ = self
            .mean_prefill_x16
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(m - m / 16 + blocks)
            });
        self.learn(&candidates[decision.index], &chain);
        self.sweep_if_due(candidates);
        Some(decision)
    }

    fn explain(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Explanation {
        let chain = chain_hashes(req.prompt.unwrap_or_default().as_bytes());
        // One reading of the loads: the decision shown is the one these terms give.
        let terms = self.terms(&chain, candidates, Instant::now());
        Explanation {
            decision: self.decide_on(&chain, candidates, &terms),
            scores: Some(terms.iter().map(|t| t.cost).collect()),
            matched_blocks: Some(terms.iter().map(|t| t.matched_blocks).collect()),
            prompt_blocks: Some(chain.len()),
            terms: Some(terms),
        }
    }

    fn on_fleet_change(&self, snapshot: &Snapshot) {
        let present: Vec<u64> = snapshot.members().iter().map(|m| m.worker.id()).collect();
        self.indexes.write().retain(|id, _| present.contains(id));
    }
}

#[cfg(test)]
mod tests;
