//! The running batch of one engine and the scheduler loop that advances it a step at a time.
//!
//! A sequence joins the batch once its fixed overhead (`ttft`) has passed. Each step is planned
//! from the members' needs ([`super::step::plan`]), lasts the plan's duration, and at its end
//! every member that took part advances: a prefill chunk is done, or one token is out. The
//! first token of a sequence comes at the end of the step that finishes its prefill.
//!
//! The loop runs as its own task, started with the engine's first joining sequence. It holds
//! the engine only weakly, sleeps on a [`Notify`] while the batch is empty, and ends once the
//! engine is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Engine;
use super::step::{self, Need, Plan};

/// How far behind its own clock the loop may wake and still start the next step where the
/// last one ended. This absorbs the timer's rounding to whole milliseconds without drift; a
/// loop starved for longer drops the lost time rather than run a burst of steps back to back.
const CATCH_UP: Duration = Duration::from_millis(5);

/// Longest step the loop sleeps through in one go (only absurd configurations get near it).
const LONGEST_STEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a sequence sees of its own progress in the batch.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Tokens produced so far.
    pub(super) produced: u32,
    /// Physical ids of the prompt's full blocks, set with the first token.
    pub(super) block_ids: Vec<u32>,
}

/// A sequence's place in the batch; [`Engine::leave`] gives it up.
pub(super) struct Ticket {
    pub(super) id: u64,
    pub(super) progress: watch::Receiver<Progress>,
}

/// What a sequence brings to the batch.
pub(super) struct Joining {
    /// Block hashes of the prompt, committed to the prefix cache when its prefill is done.
    pub(super) hashes: Vec<u64>,
    /// Prompt tokens to compute.
    pub(super) uncached: u32,
    pub(super) max_tokens: u32,
    /// When the request chose this engine, for the TTFT histogram.
    pub(super) arrived: std::time::Instant,
}

struct Member {
    id: u64,
    need: Need,
    produced: u32,
    max_tokens: u32,
    arrived: std::time::Instant,
    hashes: Vec<u64>,
    progress: watch::Sender<Progress>,
}

/// The sequences taking part in steps, in the order they joined (so ids ascend).
#[derive(Default)]
pub(super) struct Batch {
    next_id: u64,
    members: Vec<Member>,
}

impl Batch {
    fn position(&self, id: u64) -> Option<usize> {
        self.members.binary_search_by_key(&id, |m| m.id).ok()
    }

    /// Members still producing tokens.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }
}

/// A planned step and whom it concerns.
struct Step {
    ids: Vec<u64>,
    plan: Plan,
}

impl Engine {
    /// Puts a sequence in the batch; it takes part from the next step on.
    pub(super) fn join(self: &Arc<Self>, joining: Joining) -> Ticket {
        let (tx, rx) = watch::channel(Progress::default());
        let mut batch = self.batch.lock();
        let id = batch.next_id;
        batch.next_id += 1;
        let mut member = Member {
            id,
            need: Need::Prefill(joining.uncached),
            produced: 0,
            max_tokens: joining.max_tokens.max(1),
            arrived: joining.arrived,
            hashes: joining.hashes,
            progress: tx,
        };
        if joining.uncached == 0 {
            // Nothing to compute (a remote prefill): the first token is there at once.
            self.prefill_done(&mut member);
        }
        if member.produced < member.max_tokens {
            batch.members.push(member);
            drop(batch);
            if !self.stepping.swap(true, Relaxed) {
                tokio::spawn(run(Arc::downgrade(self), self.wake.clone()));
            }
            self.wake.notify_one();
        }
        Ticket { id, progress: rx }
    }

    /// Takes a sequence out of the batch (finished or cancelled); a step under way goes on
    /// without it.
    pub(super) fn leave(&self, id: u64) {
        let mut batch = self.batch.lock();
        if let Some(i) = batch.position(id) {
            batch.members.remove(i);
        }
    }

    fn plan_step(&self) -> Option<Step> {
        let batch = self.batch.lock();
        if batch.members.is_empty() {
            return None;
        }
        let needs: Vec<Need> = batch.members.iter().map(|m| m.need).collect();
        Some(Step {
            ids: batch.members.iter().map(|m| m.id).collect(),
            plan: step::plan(&needs, &self.timing),
        })
    }

    /// The end of a step: every member still here advances by what the plan gave it.
    fn finish_step(&self, step: &Step) {
        let mut batch = self.batch.lock();
        for (&id, &tokens) in step.ids.iter().zip(&step.plan.tokens) {
            if tokens == 0 {
                continue;
            }
            let Some(i) = batch.position(id) else {
                continue;
            };
            let member = &mut batch.members[i];
            match member.need {
                Need::Prefill(left) if left > tokens => member.need = Need::Prefill(left - tokens),
                Need::Prefill(_) => self.prefill_done(member),
                Need::Decode => {
                    member.produced = if step.plan.decode_all {
                        member.max_tokens
                    } else {
                        member.produced.saturating_add(1).min(member.max_tokens)
                    };
                    let produced = member.produced;
                    member.progress.send_modify(|p| p.produced = produced);
                }
            }
        }
        batch.members.retain(|m| m.produced < m.max_tokens);
    }

    /// Prefill complete: the blocks go to the prefix cache and the first token is out.
    fn prefill_done(&self, member: &mut Member) {
        let block_ids = self.commit_prefill(&std::mem::take(&mut member.hashes));
        self.counters.ttft.observe(member.arrived.elapsed());
        member.need = Need::Decode;
        member.produced = 1;
        member.progress.send_modify(|p| {
            p.produced = 1;
            p.block_ids = block_ids;
        });
    }
}

/// The scheduler loop of one engine.
async fn run(engine: Weak<Engine>, wake: Arc<Notify>) {
    let mut last_end: Option<Instant> = None;
    loop {
        let planned = match engine.upgrade() {
            Some(engine) => engine.plan_step(),
            None => return,
        };
        let Some(step) = planned else {
            last_end = None;
            wake.notified().await;
            continue;
        };
        let now = Instant::now();
        let start = last_end
            .filter(|&end| now.saturating_duration_since(end) <= CATCH_UP)
            .unwrap_or(now);
        let end = start + step.plan.duration.min(LONGEST_STEP);
        if end > now {
            tokio::time::sleep_until(end).await;
        } else {
            // A free step, or one the clock already owes: let others run all the same.
            tokio::task::yield_now().await;
        }
        last_end = Some(end);
        match engine.upgrade() {
            Some(engine) => engine.finish_step(&step),
            None => return,
        }
    }
}
