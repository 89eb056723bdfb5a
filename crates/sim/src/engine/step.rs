//! One scheduler step planned from the batch: who takes part with how many tokens, and how long
//! the step lasts. Pure arithmetic over the batch's needs, so it can be checked exactly.
//!
//! As in vLLM's chunked prefill, the step's token budget is shared by the batch: every decoding
//! sequence takes one token of it, then prefilling sequences, oldest first, take chunks of what
//! is left.

use std::time::Duration;

use super::timing::Timing;

/// What a sequence in the batch needs from the next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Prompt tokens still to compute (at least one).
    Prefill(u32),
    /// One token per step.
    Decode,
}

/// One step of the batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Tokens each member gets, in batch order: a prefill chunk, 1 to decode, 0 to sit out.
    pub(crate) tokens: Vec<u32>,
    /// Members decoding in this step.
    pub(crate) decoding: u32,
    /// Prompt tokens computed in this step.
    pub(crate) prefill_tokens: u32,
    pub(crate) duration: Duration,
    /// The step costs nothing (free decode and no prefill): its decoding members may as well
    /// produce every token they have left.
    pub(crate) decode_all: bool,
}

/// Plans the next step for members with these needs, oldest first.
pub(crate) fn plan(needs: &[Need], timing: &Timing) -> Plan {
    let mut budget = timing.budget();
    let mut tokens = vec![0; needs.len()];
    let mut decoding = 0;
    for (slot, _) in tokens
        .iter_mut()
        .zip(needs)
        .filter(|(_, need)| **need == Need::Decode)
    {
        if budget == 0 {
            break;
        }
        *slot = 1;
        budget -= 1;
        decoding += 1;
    }
    let mut prefill_tokens = 0;
    for (slot, need) in tokens.iter_mut().zip(needs) {
        if budget == 0 {
            break;
        }
        if let Need::Prefill(left) = *need {
            let chunk = left.min(budget);
            *slot = chunk;
            budget -= chunk;
            prefill_tokens += chunk;
        }
    }
    let duration = timing.step(decoding, prefill_tokens);
    Plan {
        tokens,
        decoding,
        prefill_tokens,
        duration,
        decode_all: decoding > 0 && duration.is_zero(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;

    const MS: Duration = Duration::from_millis(1);

    /// 100 µs per prompt token, 10 ms per decode step, +50% per extra decoding sequence.
    fn timing(budget: usize) -> Timing {
        Timing::new(&SimConfig {
            prefill_per_token: Duration::from_micros(100),
            itl: Duration::from_millis(10),
            itl_batch_factor: 0.5,
            max_num_batched_tokens: budget,
            ..SimConfig::default()
        })
    }

    #[test]
    fn a_lone_prefill_takes_its_tokens_time() {
        let p = plan(&[Need::Prefill(1000)], &timing(2048));
        assert_eq!(p.tokens, vec![1000]);
        assert_eq!((p.decoding, p.prefill_tokens), (0, 1000));
        assert_eq!(p.duration, 100 * MS);
        assert!(!p.decode_all);
    }

    #[test]
    fn prefills_share_the_budget_oldest_first() {
        let needs = [Need::Prefill(1500), Need::Prefill(1500)];
        let p = plan(&needs, &timing(2048));
        assert_eq!(p.tokens, vec![1500, 548]);
        assert_eq!(p.duration, Duration::from_micros(204_800));
        // What is left of the second goes in the next step, alone.
        let p = plan(&[Need::Decode, Need::Prefill(952)], &timing(2048));
        assert_eq!(p.tokens, vec![1, 952]);
        assert_eq!(p.duration, 10 * MS + Duration::from_micros(95_200));
    }

    #[test]
    fn decoding_takes_the_budget_first_and_a_prefill_slows_it() {
        let needs = [Need::Prefill(5000), Need::Decode, Need::Decode];
        let p = plan(&needs, &timing(2048));
        assert_eq!(p.tokens, vec![2046, 1, 1]);
        assert_eq!((p.decoding, p.prefill_tokens), (2, 2046));
        // 15 ms of decode for two sequences, plus the chunk.
        assert_eq!(p.duration, 15 * MS + Duration::from_micros(204_600));
        let decode_only = plan(&[Need::Decode, Need::Decode], &timing(2048));
        assert_eq!(decode_only.duration, 15 * MS);
    }

    #[test]
    fn a_small_budget_chunks_a_prompt_into_steps_of_the_same_total() {
        let t = timing(300);
        let mut left = 1000;
        let mut total = Duration::ZERO;
        let mut steps = 0;
        while left > 0 {
            let p = plan(&[Need::Prefill(left)], &t);
            assert!(p.tokens[0] <= 300);
            left -= p.tokens[0];
            total += p.duration;
            steps += 1;
        }
        assert_eq!(steps, 4);
        assert_eq!(total, 100 * MS);
    }

    #[test]
    fn decoders_beyond_the_budget_sit_out() {
        let p = plan(&[Need::Decode, Need::Decode, Need::Prefill(9)], &timing(1));
        assert_eq!(p.tokens, vec![1, 0, 0]);
        assert_eq!(p.duration, 10 * MS);
    }

    #[test]
    fn free_decode_finishes_at_once() {
        let t = Timing::new(&SimConfig {
            prefill_per_token: Duration::from_micros(100),
            ..SimConfig::default()
        });
        assert!(plan(&[Need::Decode], &t).decode_all);
        let mixed = plan(&[Need::Decode, Need::Prefill(10)], &t);
        assert!(
            !mixed.decode_all,
            "a prefill in the step still takes its time"
        );
        assert_eq!(mixed.duration, MS);
    }
}
