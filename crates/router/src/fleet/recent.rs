//! What a worker finished lately: a ring of its last completions, fed once per request as its
//! record is written and read once a second by the live view ([`crate::live`]). Bounded per
//! worker, and gone with the worker.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::Mutex;

/// Completions kept per worker; older ones make room.
pub const KEPT: usize = 1024;

/// A request a worker answered, as its response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// When the response ended.
    pub at: Instant,
    /// Time from the request's arrival to the first event, for a streamed response.
    pub ttft: Option<Duration>,
    /// The prompt's tokens, when the worker reported both counts.
    pub prompt: Option<PromptTokens>,
}

/// A prompt's size and how much of it the worker's prefix cache held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptTokens {
    /// Tokens of the prompt.
    pub total: u64,
    /// Of those, tokens found in the prefix cache.
    pub cached: u64,
}

/// The last [`KEPT`] completions of one worker, oldest first. The ring is allocated at the
/// first completion, so a worker that never serves costs nothing.
#[derive(Debug, Default)]
pub struct Recent {
    ring: Mutex<VecDeque<Completion>>,
}

impl Recent {
    /// Keep `completion`, dropping the oldest when full. One short lock, no allocation after
    /// the first.
    pub fn record(&self, completion: Completion) {
        let mut ring = self.ring.lock();
        if ring.len() == KEPT {
            ring.pop_front();
        } else if ring.capacity() == 0 {
            ring.reserve_exact(KEPT);
        }
        ring.push_back(completion);
    }

    /// Append to `out` the completions that ended at `from` or later, oldest first. Records
    /// are kept in the order they were written, so one that ended a moment before its
    /// neighbour may sit after it; the scan stops at the first one older than `from`.
    pub fn since(&self, from: Instant, out: &mut Vec<Completion>) {
        let ring = self.ring.lock();
        let newer = ring.iter().rev().take_while(|c| c.at >= from).count();
        out.extend(ring.range(ring.len() - newer..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(origin: Instant, ms: u64) -> Completion {
        Completion {
            at: origin + Duration::from_millis(ms),
            ttft: Some(Duration::from_millis(ms)),
            prompt: None,
        }
    }

    #[test]
    fn keeps_the_last_completions_in_order() {
        let origin = Instant::now();
        let recent = Recent::default();
        for ms in 0..(KEPT as u64 + 10) {
            recent.record(at(origin, ms));
        }
        let mut all = Vec::new();
        recent.since(origin, &mut all);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0], at(origin, 10), "the oldest made room");
        assert!(all.windows(2).all(|w| w[0].at < w[1].at));
    }

    #[test]
    fn since_takes_only_the_newer_ones() {
        let origin = Instant::now();
        let recent = Recent::default();
        for ms in [0, 100, 200, 300] {
            recent.record(at(origin, ms));
        }
        let mut out = vec![at(origin, 9)];
        recent.since(origin + Duration::from_millis(150), &mut out);
        assert_eq!(out, [at(origin, 9), at(origin, 200), at(origin, 300)]);
        out.clear();
        recent.since(origin + Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
    }
}
