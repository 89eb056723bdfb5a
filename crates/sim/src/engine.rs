//! The simulated inference engine: admission into a bounded batch, prefix-cache lookups and the
//! clock of each sequence. Counters here feed both `/metrics` and `SimStats`.

mod sequence;
mod timing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

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
    timing: Timing,
    block_size: usize,
    num_blocks: usize,
    cache: Mutex<PrefixCache>,
    slots: Arc<Semaphore>,
    pub(crate) counters: EngineCounters,
}

/// Decrements a gauge when dropped, so a cancelled wait still leaves the queue.
struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    fn enter(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
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

    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            timing: Timing::new(config),
            block_size: config.block_size.max(1),
            num_blocks: config.num_blocks,
            cache: Mutex::new(PrefixCache::new(config.num_blocks)),
            slots: Arc::new(Semaphore::new(
                config.max_num_seqs.clamp(1, Semaphore::MAX_PERMITS),
            )),
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

    /// Waits for a place in the running batch, then looks the prompt up in the prefix cache.
    /// Returns `None` only if the batch can never admit again.
    pub(crate) async fn admit(self: &Arc<Self>, req: Admission<'_>) -> Option<Sequence> {
        let arrived = Instant::now();
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _queued = GaugeGuard::enter(&self.counters.waiting);
                self.slots.clone().acquire_owned().await.ok()?
            }
        };
        let prompt_len = u32::try_from(req.prompt.len()).unwrap_or(u32::MAX);
        let hashes = block_hashes(req.prompt, self.block_size);
        let cached_tokens = if req.remote_prefill {
            prompt_len
        } else {
            // Like vLLM, the last prompt token is always computed, so a full hit stops one
            // block short.
            let usable = (req.prompt.len().saturating_sub(1)) / self.block_size;
            let hits = self.cache.lock().match_prefix(&hashes[..usable]);
            let hit_tokens = u32::try_from(hits * self.block_size).unwrap_or(u32::MAX);
            self.counters
                .prefix_queries
                .fetch_add(u64::from(prompt_len), Relaxed);
            self.counters
                .prefix_hits
                .fetch_add(u64::from(hit_tokens), Relaxed);
            hit_tokens
        };
        let c = &self.counters;
        c.prompt_tokens.fetch_add(u64::from(prompt_len), Relaxed);
        c.cached_tokens.fetch_add(u64::from(cached_tokens), Relaxed);
        Some(Sequence::start(
            self.clone(),
            permit,
            sequence::Prompt {
                hashes,
                len: prompt_len,
                cached: cached_tokens,
                seed: crate::tokenizer::prompt_seed(req.prompt),
            },
            req.max_tokens.max(1),
            arrived,
        ))
    }

    fn commit_prefill(&self, hashes: &[u64]) -> Vec<u32> {
        self.cache.lock().insert(hashes)
    }
}
