//! What a window of completions adds up to: quantiles of the time to first token, and the
//! share of prompt tokens the prefix cache held.

use std::time::Duration;

use crate::fleet::Completion;

/// The completions of one worker, or of the whole fleet, in the window.
#[derive(Debug, Default)]
pub(super) struct Window {
    ttfts: Vec<Duration>,
    prompt: u64,
    cached: u64,
}

/// A window's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Figures {
    pub(super) ttft_p50_ms: Option<f64>,
    pub(super) ttft_p99_ms: Option<f64>,
    pub(super) cache_hit_rate: Option<f64>,
}

impl Window {
    /// The window of these completions.
    pub(super) fn of(completions: &[Completion]) -> Self {
        let mut window = Self {
            ttfts: Vec::with_capacity(completions.len()),
            ..Self::default()
        };
        for c in completions {
            window.ttfts.extend(c.ttft);
            if let Some(prompt) = c.prompt {
                window.prompt += prompt.total;
                window.cached += prompt.cached.min(prompt.total);
            }
        }
        window
    }

    /// Take in `other`'s completions.
    pub(super) fn absorb(&mut self, mut other: Self) {
        self.ttfts.append(&mut other.ttfts);
        self.prompt += other.prompt;
        self.cached += other.cached;
    }

    /// The figures: `None` for the quantiles without a streamed response, and for the rate
    /// without a prompt token reported.
    pub(super) fn figures(&mut self) -> Figures {
        self.ttfts.sort_unstable();
        let ms = |q| quantile(&self.ttfts, q).map(|d| round(d.as_secs_f64() * 1000.0, 10.0));
        Figures {
            ttft_p50_ms: ms(0.5),
            ttft_p99_ms: ms(0.99),
            cache_hit_rate: (self.prompt > 0)
                .then(|| round(self.cached as f64 / self.prompt as f64, 1000.0)),
        }
    }
}

/// The `q` quantile (0..=1) of `sorted` by nearest rank: the smallest value at least a `q`
/// share of the values are at or below. `None` when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// `value` to the nearest `1 / per`.
pub(super) fn round(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}
