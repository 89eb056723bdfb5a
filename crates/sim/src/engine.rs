//! The simulated inference engine of one data-parallel rank: admission into a bounded batch,
//! prefix-cache lookups, and the steps that run the batch. Counters here feed both `/metrics`
//! and `SimStats`.
//!
//! Like vLLM's scheduler with chunked prefill, the engine runs its batch in steps
//! (`batch`, `step`): each step has a token budget (`max_num_batched_tokens`) shared by the
//! batch, every decoding sequence takes one token of it and prefills, oldest first, take chunks
//! of the rest; a step lasts the batch's decode time (slowed by its size) plus its prefill
//! tokens' cost. So concurrent prefills on one engine queue behind each other and a big prefill
//! slows every sequence decoding beside it. When neither prefill nor decode costs anything
//! (the default), no steps run and tokens are handed out at once.

mod batch;
mod sequence;
mod step;
#[cfg(test)]
mod tests;
mod timing;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use crate::SimConfig;
use crate::metrics::histogram::{Histogram, TTFT_BUCKETS};
use crate::prefix_cache::{PrefixCache, block_hashes};

pub(crate) use sequence::Sequence;
use timing::Timing;

/// Engine-wide counters, all monotonic except the three gauges at the top.
pub(crate) struct EngineCounters {
    pub(crate) running: AtomicU64,
    pub(crate) waiting: AtomicU64,
    pub(crate) kv_blocks_in_use: AtomicU64,
    pub(crate) prefix_queries: AtomicU64,
    pub(crate) prefix_hits: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    /// Cached tokens as reported in `usage`, including remotely prefilled ones.
    pub(crate) cached_tokens: AtomicU64,
    pub(crate) generation_tokens: AtomicU64,
    pub(crate) success: AtomicU64,
    pub(crate) ttft: Histogram,
}

/// One engine: a batch of at most `max_num_seqs` sequences sharing one prefix cache.
pub(crate) struct Engine {
    rank: u32,
    engine_id: String,
    timing: Timing,
    block_size: usize,
    num_blocks: usize,
    cache: Mutex<PrefixCache>,
    slots: Arc<Semaphore>,
    /// The sequences the scheduler loop steps (unused when steps cost nothing).
    batch: Mutex<batch::Batch>,
    /// Wakes the scheduler loop: a sequence joined, or the engine is gone.
    wake: Arc<Notify>,
    /// Whether the scheduler loop has been started.
    stepping: AtomicBool,
    pub(crate) counters: EngineCounters,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The loop holds the engine weakly: woken, it finds it gone and ends.
        self.wake.notify_one();
    }
}

/// A request that chose this engine and waits for a batch slot. It counts in `waiting` from
/// the moment of choice, so a burst of requests choosing by load sees its own earlier members;
/// dropping it (admitted or cancelled) leaves the queue.
pub(crate) struct Queued {
    engine: Arc<Engine>,
    arrived: Instant,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.engine.counters.waiting.fetch_sub(1, Relaxed);
    }
}

/// What a request asks of the engine.
pub(crate) struct Admission<'a> {
    pub(crate) prompt: &'a [u32],
    pub(crate) max_tokens: u32,
    /// The KV cache arrives from a prefill worker: no prefill work, every prompt token cached.
    pub(crate) remote_prefill: bool,
}

impl Engine {
    /// Empty the prefix cache, as vLLM's `POST /reset_prefix_cache` does.
    pub(crate) fn reset_prefix_cache(&self) {
        self.cache.lock().clear();
    }

    pub(crate) fn new(config: &SimConfig, rank: u32) -> Self {
        Self {
            rank,
            engine_id: config.rank_engine_id(rank),
            timing: Timing::new(config),
            block_size: config.block_size.max(1),
            num_blocks: config.num_blocks,
            cache: Mutex::new(PrefixCache::new(config.num_blocks)),
            slots: Arc::new(Semaphore::new(
                config.max_num_seqs.clamp(1, Semaphore::MAX_PERMITS),
            )),
            batch: Mutex::new(batch::Batch::default()),
            wake: Arc::new(Notify::new()),
            stepping: AtomicBool::new(false),
            counters: EngineCounters {
                running: AtomicU64::new(0),
                waiting: AtomicU64::new(0),
                kv_blocks_in_use: AtomicU64::new(0),
                prefix_queries: AtomicU64::new(0),
                prefix_hits: AtomicU64::new(0),
                prompt_tokens: AtomicU64::new(0),
                cached_tokens: AtomicU64::new(0),
                generation_tokens: AtomicU64::new(0),
                success: AtomicU64::new(0),
                ttft: Histogram::new(&TTFT_BUCKETS),
            },
        }
    }

    /// This engine's data-parallel rank.
    pub(crate) fn rank(&self) -> u32 {
        self.rank
    }

    /// The id a KV-transfer peer knows this engine by.
    pub(crate) fn engine_id(&self) -> &str {
        &self.engine_id
    }

    /// Requests in the batch plus requests queued for it: what a load-based choice compares.
    pub(crate) fn load(&self) -> u64 {
        self.counters.running.load(Relaxed) + self.counters.waiting.load(Relaxed)
    }

    /// Prefix-cache capacity in blocks.
    pub(crate) fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Tokens per block.
    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    /// Fraction of KV blocks held by running sequences (cached-but-idle blocks are free).
    pub(crate) fn kv_usage(&self) -> f64 {
        if self.num_blocks == 0 {
            return 0.0;
        }
        let used = self.counters.kv_blocks_in_use.load(Relaxed) as f64;
        (used / self.num_blocks as f64).min(1.0)
    }

    /// Queues a request for this engine; [`Queued::admit`] then waits for its batch slot.
    pub(crate) fn enqueue(self: &Arc<Self>) -> Queued {
        self.counters.waiting.fetch_add(1, Relaxed);
        Queued {
            engine: self.clone(),
            arrived: Instant::now(),
        }
    }

    fn commit_prefill(&self, hashes: &[u64]) -> Vec<u32> {
        self.cache.lock().insert(hashes)
    }
}

impl Queued {
    /// The engine this request waits for.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Waits for a place in the running batch, then looks the prompt up in the prefix cache.
    /// Returns `None` only if the batch can never admit again.
    pub(crate) async fn admit(self, req: Admission<'_>) -> Option<Sequence> {
        let engine = &self.engine;
        // The semaphore is fair: with a free slot and nobody ahead, this is ready at once.
        let permit = engine.slots.clone().acquire_owned().await.ok()?;
        let prompt_len = u32::try_from(req.prompt.len()).unwrap_or(u32::MAX);
        let hashes = block_hashes(req.prompt, engine.block_size);
        let cached_tokens = if req.remote_prefill {
            prompt_len
        } else {
            // Like vLLM, the last prompt token is always computed, so a full hit stops one
            // block short.
            let usable = (req.prompt.len().saturating_sub(1)) / engine.block_size;
            let hits = engine.cache.lock().match_prefix(&hashes[..usable]);
            let hit_tokens = u32::try_from(hits * engine.block_size).unwrap_or(u32::MAX);
            engine
                .counters
                .prefix_queries
                .fetch_add(u64::from(prompt_len), Relaxed);
            engine
                .counters
                .prefix_hits
                .fetch_add(u64::from(hit_tokens), Relaxed);
            hit_tokens
        };
        let c = &engine.counters;
        c.prompt_tokens.fetch_add(u64::from(prompt_len), Relaxed);
        c.cached_tokens.fetch_add(u64::from(cached_tokens), Relaxed);
        // Running goes up before waiting comes down, so the load never dips in between.
        Some(Sequence::start(
            engine.clone(),
            permit,
            sequence::Prompt {
                hashes,
                len: prompt_len,
                cached: cached_tokens,
                seed: crate::tokenizer::prompt_seed(req.prompt),
            },
            req.max_tokens.max(1),
            self.arrived,
        ))
    }
}
