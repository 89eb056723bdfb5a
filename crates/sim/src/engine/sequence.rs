//! One request's life in the running batch: prefill, then one token at a time.
//!
//! When steps cost time, the sequence joins its engine's stepped batch after the fixed
//! overhead and each token arrives at the end of the step that produced it; otherwise every
//! token is there at once.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::Engine;
use super::batch::{Joining, Ticket};
use crate::tokenizer::output_word;

/// The prompt as the engine sees it.
pub(crate) struct Prompt {
    pub(crate) hashes: Vec<u64>,
    pub(crate) len: u32,
    pub(crate) cached: u32,
    pub(crate) seed: u32,
}

/// A sequence holding a batch slot; dropping it (finished or cancelled) leaves the batch and
/// frees the slot and its KV blocks.
pub(crate) struct Sequence {
    engine: Arc<Engine>,
    _slot: OwnedSemaphorePermit,
    prompt: Prompt,
    max_tokens: u32,
    generated: u32,
    arrived: Instant,
    blocks_held: u64,
    block_ids: Vec<u32>,
    /// Its place in the engine's stepped batch, from the moment it joined.
    ticket: Option<Ticket>,
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
            ticket: None,
        }
    }

    /// Produces the next output word once the engine has it, or `None` once `max_tokens` are
    /// out. Cancel-safe: dropping the future mid-wait loses nothing; the sequence stays in the
    /// batch and the next call picks up where this one stopped.
    pub(crate) async fn next_token(&mut self) -> Option<&'static str> {
        if self.generated >= self.max_tokens {
            return None;
        }
        if self.engine.timing.is_instant() {
            self.instant_token().await;
        } else if !self.stepped_token().await {
            return None;
        }
        let engine = &self.engine;
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

    /// Steps cost nothing: after the fixed overhead the prompt is prefilled and every token is
    /// there at once, with no batch to go through.
    async fn instant_token(&mut self) {
        if self.generated > 0 {
            return;
        }
        let ttft = self.engine.timing.ttft();
        if !ttft.is_zero() {
            tokio::time::sleep(ttft).await;
        }
        self.block_ids = self.engine.commit_prefill(&self.prompt.hashes);
        self.engine.counters.ttft.observe(self.arrived.elapsed());
    }

    /// Joins the batch after the fixed overhead (once), then waits for the step that produces
    /// the next token. `false` if the engine can never produce it.
    async fn stepped_token(&mut self) -> bool {
        if self.ticket.is_none() {
            let ttft = self.engine.timing.ttft();
            if !ttft.is_zero() {
                tokio::time::sleep(ttft).await;
            }
            self.ticket = Some(self.engine.join(Joining {
                hashes: std::mem::take(&mut self.prompt.hashes),
                uncached: self.prompt.len.saturating_sub(self.prompt.cached),
                max_tokens: self.max_tokens,
                arrived: self.arrived,
            }));
        }
        let Some(ticket) = self.ticket.as_mut() else {
            return false;
        };
        let want = self.generated + 1;
        let Ok(progress) = ticket.progress.wait_for(|p| p.produced >= want).await else {
            return false;
        };
        if self.generated == 0 {
            self.block_ids.clone_from(&progress.block_ids);
        }
        true
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
        if let Some(ticket) = &self.ticket {
            self.engine.leave(ticket.id);
        }
        let c = &self.engine.counters;
        c.running.fetch_sub(1, Relaxed);
        c.kv_blocks_in_use.fetch_sub(self.blocks_held, Relaxed);
    }
}
