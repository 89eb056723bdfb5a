//! A histogram without locks: one atomic counter per bucket and the sum's bits in another, so
//! an observation is two atomic adds and never waits on a reader or another writer
//! (prometheus-client's own takes a write lock on every observation). Exposed in the same
//! OpenMetrics shape: the same buckets, `+Inf` last.
//!
//! A [`Tally`] gathers a request's many observations (the gaps between its streamed events)
//! on the request itself, to be added to the histogram once, when the request ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Most finite buckets a histogram may have (a [`Tally`] holds that many counts inline).
pub(crate) const MAX_BUCKETS: usize = 23;

/// A histogram of `f64` observations over fixed upper bounds.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Finite upper bounds, ascending.
    bounds: &'static [f64],
    /// One count per bound, then the `+Inf` bucket's.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram over `bounds` (ascending, at most [`MAX_BUCKETS`]).
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() <= MAX_BUCKETS, "too many buckets");
        Self(Arc::new(Inner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Record one observation.
    pub fn observe(&self, value: f64) {
        let inner = &*self.0;
        inner.counts[bucket(inner.bounds, value)].fetch_add(1, Ordering::Relaxed);
        self.add_sum(value);
    }

    /// Add a request's observations, gathered by `tally`, at once.
    pub fn record(&self, tally: &Tally) {
        if tally.observed == 0 {
            return;
        }
        for (count, &n) in self.0.counts.iter().zip(&tally.counts) {
            if n > 0 {
                count.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        self.add_sum(tally.sum);
    }

    /// A tally for observations to add to this histogram later.
    pub fn tally(&self) -> Tally {
        Tally {
            bounds: self.0.bounds,
            counts: [0; MAX_BUCKETS + 1],
            sum: 0.0,
            observed: 0,
        }
    }

    fn add_sum(&self, value: f64) {
        // The closure always answers, so the update always succeeds.
        let _ = self
            .0
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Observations so far, and their sum.
    #[cfg(test)]
    pub fn count_and_sum(&self) -> (u64, f64) {
        let count = self
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        (count, f64::from_bits(self.0.sum.load(Ordering::Relaxed)))
    }
}

/// The bucket `value` falls in: the first bound at or above it, else `+Inf`'s.
fn bucket(bounds: &[f64], value: f64) -> usize {
    bounds
        .iter()
        .position(|&bound| value <= bound)
        .unwrap_or(bounds.len())
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        // The encoder takes each bucket's own count and f64::MAX for `+Inf`.
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Observations gathered for one histogram, held inline (nothing allocated) until they are
/// added with [`AtomicHistogram::record`].
#[derive(Debug, Clone)]
pub struct Tally {
    bounds: &'static [f64],
    counts: [u32; MAX_BUCKETS + 1],
    sum: f64,
    observed: u32,
}

impl Tally {
    /// Gather one observation.
    pub fn observe(&mut self, value: f64) {
        let at = bucket(self.bounds, value);
        self.counts[at] = self.counts[at].saturating_add(1);
        self.sum += value;
        self.observed = self.observed.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    use super::*;

    const BOUNDS: [f64; 4] = [0.01, 0.1, 1.0, 10.0];

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn exposed_as_prometheus_clients_histogram_is() {
        let values = [0.005, 0.01, 0.05, 0.5, 0.5, 5.0, 50.0, 0.0];
        let ours = AtomicHistogram::new(&BOUNDS);
        let theirs = Histogram::new(BOUNDS);
        for v in values {
            ours.observe(v);
            theirs.observe(v);
        }
        let ours = text(|r| r.register("h", "help", ours));
        let theirs = text(|r| r.register("h", "help", theirs));
        assert_eq!(ours, theirs);
        assert!(ours.contains("h_bucket{le=\"+Inf\"} 8"), "{ours}");
    }

    #[test]
    fn a_tally_records_what_each_observation_would() {
        let values = [0.001, 0.02, 0.02, 0.2, 2.0, 20.0, 1.0];
        let one_by_one = AtomicHistogram::new(&BOUNDS);
        let tallied = AtomicHistogram::new(&BOUNDS);
        let mut tally = tallied.tally();
        for v in values {
            one_by_one.observe(v);
            tally.observe(v);
        }
        assert_eq!(
            tallied.count_and_sum(),
            (0, 0.0),
            "nothing before the record"
        );
        tallied.record(&tally);
        assert_eq!(
            text(|r| r.register("h", "help", tallied)),
            text(|r| r.register("h", "help", one_by_one))
        );
    }

    #[test]
    fn observations_from_many_threads_all_count() {
        let h = AtomicHistogram::new(&BOUNDS);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        h.observe(0.5);
                    }
                });
            }
        });
        assert_eq!(h.count_and_sum(), (4000, 2000.0));
    }
}
