//! Summaries of latency samples: mean and nearest-rank percentiles.

use serde::Serialize;

/// Mean, median and 99th percentile of a set of samples, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Summary {
    /// Summarises `samples` (reordered in place); `None` when there are none.
    pub fn of(samples: &mut [f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable_by(f64::total_cmp);
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        Some(Self {
            mean,
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
        })
    }
}

/// The nearest-rank `p`th percentile of `sorted` (ascending, not empty): the smallest sample
/// with at least `p`% of the samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Draws the gap to the next arrival of a Poisson process with `rate` arrivals per second.
pub fn exponential_gap(rng: &mut fastrand::Rng, rate: f64) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    -(1.0 - rng.f64()).ln() / rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50.0), 5.0);
        assert_eq!(percentile(&ten, 99.0), 10.0);
    }

    #[test]
    fn summary_sorts_and_averages() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        let s = Summary::of(&mut v).unwrap();
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.p99, 4.0);
        assert_eq!(Summary::of(&mut []), None);
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate() {
        let mut rng = fastrand::Rng::with_seed(42);
        let rate = 20.0;
        let n = 200_000;
        let gaps: Vec<f64> = (0..n).map(|_| exponential_gap(&mut rng, rate)).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!((mean - 1.0 / rate).abs() < 0.01 / rate, "mean {mean}");
        assert!(gaps.iter().all(|g| g.is_finite() && *g >= 0.0));
        // Exponential: the median is ln 2 / rate.
        let mut sorted = gaps;
        sorted.sort_unstable_by(f64::total_cmp);
        let median = percentile(&sorted, 50.0);
        assert!(
            (median - std::f64::consts::LN_2 / rate).abs() < 0.02 / rate,
            "median {median}"
        );
    }
}
