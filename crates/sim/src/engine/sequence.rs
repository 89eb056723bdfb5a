//! One request's life in the running batch: prefill, then one token at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::Engine;
use crate::tokenizer::output_word;

/// The prompt as the engine sees it.
pub(crate) struct Prompt {
    pub(crate) hashes: Vec<u64>,
    pub(crate) len: u32,
    pub(crate) cached: u32,
    pub(crate) seed: u32,
}

/// A sequence holding a batch slot; dropping it (finished or cancelled) frees the slot.
pub(crate) struct Sequence {
    engine: Arc<Engine>,
    _slot: OwnedSemaphorePermit,
    prompt: Prompt,
    max_tokens: u32,
    generated: u32,
    arrived: Instant,
    blocks_held: u64,
    block_ids: Vec<u32>,
}

impl Sequence {
    pub(super) fn start(
        engine: Arc<Engine>,
        slot: OwnedSemaphorePermit,
        prompt: Prompt,
        max_tokens: u32,
        arrived: Instant,
    ) -> Self {
        let blocks_held = u64::from(prompt.len).div_ceil(engine.block_size as u64);
        engine.counters.running.fetch_add(1, Relaxed);
        engine
            .counters
            .kv_blocks_in_use
            .fetch_add(blocks_held, Relaxed);
        Self {
            engine,
            _slot: slot,
            prompt,
            max_tokens,
            generated: 0,
            arrived,
            blocks_held,
            block_ids: Vec::new(),
        }
    }

    /// Produces the next output word after its simulated delay, or `None` once `max_tokens`
    /// are out. Cancel-safe: dropping the future mid-delay changes nothing.
    pub(crate) async fn next_token(&mut self) -> Option<&'static str> {
        if self.generated >= self.max_tokens {
            return None;
        }
        let engine = &self.engine;
        if self.generated == 0 {
            let delay = engine
                .timing
                .first_token(self.prompt.len - self.prompt.cached);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.block_ids = engine.commit_prefill(&self.prompt.hashes);
            engine.counters.ttft.observe(self.arrived.elapsed());
        } else {
            let delay = engine
                .timing
                .next_token(engine.counters.running.load(Relaxed));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let word = output_word(self.prompt.seed, self.generated);
        self.generated += 1;
        let c = &engine.counters;
        c.generation_tokens.fetch_add(1, Relaxed);
        let needed = u64::from(self.prompt.len + self.generated).div_ceil(engine.block_size as u64);
        if needed > self.blocks_held {
            c.kv_blocks_in_use
                .fetch_add(needed - self.blocks_held, Relaxed);
            self.blocks_held = needed;
        }
        if self.generated == self.max_tokens {
            c.success.fetch_add(1, Relaxed);
        }
        Some(word)
    }

    /// True once every requested token has been produced.
    pub(crate) fn is_finished(&self) -> bool {
        self.generated >= self.max_tokens
    }

    pub(crate) fn prompt_tokens(&self) -> u32 {
        self.prompt.len
    }

    pub(crate) fn cached_tokens(&self) -> u32 {
        self.prompt.cached
    }

    pub(crate) fn completion_tokens(&self) -> u32 {
        self.generated
    }

    /// The id of the engine running this sequence.
    pub(crate) fn engine_id(&self) -> &str {
        self.engine.engine_id()
    }

    /// Physical ids of the prompt's full blocks, known once prefill is done.
    pub(crate) fn block_ids(&self) -> &[u32] {
        &self.block_ids
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        let c = &self.engine.counters;
        c.running.fetch_sub(1, Relaxed);
        c.kv_blocks_in_use.fetch_sub(self.blocks_held, Relaxed);
    }
}
