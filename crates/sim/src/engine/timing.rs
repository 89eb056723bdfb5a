//! Latency arithmetic, kept apart from the clock so it can be checked exactly.

use std::time::Duration;

use crate::SimConfig;

/// How long each step of a sequence takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    ttft: Duration,
    prefill_per_token: Duration,
    itl: Duration,
    itl_batch_factor: f64,
}

impl Timing {
    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            ttft: config.ttft,
            prefill_per_token: config.prefill_per_token,
            itl: config.itl,
            itl_batch_factor: config.itl_batch_factor,
        }
    }

    /// Delay before the first token: fixed overhead plus prefill of the uncached prompt tokens.
    pub(crate) fn first_token(&self, uncached_tokens: u32) -> Duration {
        let prefill = self
            .prefill_per_token
            .checked_mul(uncached_tokens)
            .unwrap_or(Duration::MAX);
        self.ttft.saturating_add(prefill)
    }

    /// Delay before each later token with `running` sequences in the batch.
    pub(crate) fn next_token(&self, running: u64) -> Duration {
        if self.itl.is_zero() || self.itl_batch_factor == 0.0 || running <= 1 {
            return self.itl;
        }
        let scale = 1.0 + self.itl_batch_factor * (running - 1) as f64;
        Duration::try_from_secs_f64(self.itl.as_secs_f64() * scale).unwrap_or(Duration::MAX)
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
    fn ttft_is_overhead_plus_uncached_prefill() {
        let t = timing(20, 100, 0, 0.0);
        assert_eq!(t.first_token(0), Duration::from_millis(20));
        assert_eq!(t.first_token(1000), Duration::from_millis(120));
        let none = timing(0, 0, 0, 0.0);
        assert!(none.first_token(u32::MAX).is_zero());
    }

    #[test]
    fn itl_scales_with_batch() {
        let t = timing(0, 0, 10, 0.5);
        assert_eq!(t.next_token(1), Duration::from_millis(10));
        assert_eq!(t.next_token(3), Duration::from_millis(20));
        assert_eq!(
            timing(0, 0, 10, 0.0).next_token(50),
            Duration::from_millis(10)
        );
        assert!(timing(0, 0, 0, 2.0).next_token(50).is_zero());
    }
}
