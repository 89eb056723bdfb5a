//! Latency arithmetic, kept apart from the clock so it can be checked exactly.

use std::time::Duration;

use crate::SimConfig;

/// What one engine's steps cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    ttft: Duration,
    prefill_per_token: Duration,
    itl: Duration,
    itl_batch_factor: f64,
    budget: u32,
}

impl Timing {
    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            ttft: config.ttft,
            prefill_per_token: config.prefill_per_token,
            itl: config.itl,
            itl_batch_factor: config.itl_batch_factor,
            budget: u32::try_from(config.max_num_batched_tokens.max(1)).unwrap_or(u32::MAX),
        }
    }

    /// The fixed overhead each request waits before it joins the batch; it holds no step.
    pub(crate) fn ttft(&self) -> Duration {
        self.ttft
    }

    /// Tokens one step may compute, over the whole batch (`max_num_batched_tokens`).
    pub(crate) fn budget(&self) -> u32 {
        self.budget
    }

    /// Neither prefill nor decode costs anything: no step ever takes time, so the engine hands
    /// out tokens at once instead of running steps.
    pub(crate) fn is_instant(&self) -> bool {
        self.prefill_per_token.is_zero() && self.itl.is_zero()
    }

    /// How long a step takes with `decoding` sequences decoding one token each and
    /// `prefill_tokens` prompt tokens computed: the batch's decode, slowed by its size, plus the
    /// prefill chunks.
    pub(crate) fn step(&self, decoding: u32, prefill_tokens: u32) -> Duration {
        let decode = match decoding {
            0 => Duration::ZERO,
            1 => self.itl,
            _ if self.itl.is_zero() || self.itl_batch_factor == 0.0 => self.itl,
            n => {
                // In nanoseconds, so round factors give exact durations.
                let scale = 1.0 + self.itl_batch_factor * f64::from(n - 1);
                let nanos = (self.itl.as_nanos() as f64 * scale).round();
                if nanos < u64::MAX as f64 {
                    Duration::from_nanos(nanos as u64)
                } else {
                    Duration::MAX
                }
            }
        };
        let prefill = self
            .prefill_per_token
            .checked_mul(prefill_tokens)
            .unwrap_or(Duration::MAX);
        decode.saturating_add(prefill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(ttft_ms: u64, prefill_us: u64, itl_ms: u64, factor: f64) -> Timing {
        Timing::new(&SimConfig {
            ttft: Duration::from_millis(ttft_ms),
            prefill_per_token: Duration::from_micros(prefill_us),
            itl: Duration::from_millis(itl_ms),
            itl_batch_factor: factor,
            ..SimConfig::default()
        })
    }

    #[test]
    fn prefill_costs_each_token_of_the_step() {
        let t = timing(20, 100, 0, 0.0);
        assert_eq!(t.ttft(), Duration::from_millis(20));
        assert!(t.step(0, 0).is_zero());
        assert_eq!(t.step(0, 1000), Duration::from_millis(100));
        assert!(timing(0, 0, 0, 0.0).step(0, u32::MAX).is_zero());
        assert_eq!(timing(0, u64::MAX, 0, 0.0).step(0, u32::MAX), Duration::MAX);
    }

    #[test]
    fn decode_scales_with_the_decoding_sequences() {
        let t = timing(0, 0, 10, 0.5);
        assert_eq!(t.step(1, 0), Duration::from_millis(10));
        assert_eq!(t.step(3, 0), Duration::from_millis(20));
        assert_eq!(timing(0, 0, 10, 0.0).step(50, 0), Duration::from_millis(10));
        assert!(timing(0, 0, 0, 2.0).step(50, 0).is_zero());
    }

    #[test]
    fn a_mixed_step_pays_both() {
        let t = timing(0, 100, 10, 0.5);
        assert_eq!(t.step(3, 500), Duration::from_millis(70));
    }

    #[test]
    fn instant_only_without_prefill_and_decode_cost() {
        assert!(timing(50, 0, 0, 1.0).is_instant());
        assert!(!timing(0, 1, 0, 0.0).is_instant());
        assert!(!timing(0, 0, 1, 0.0).is_instant());
        assert_eq!(timing(0, 0, 0, 0.0).budget(), 2048);
    }
}
