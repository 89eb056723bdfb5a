//! A worker's load as policies see it: the router's own in-flight count, always exact, and
//! the engine's gauges from its last `/metrics` scrape while that scrape is fresh. A failed or
//! stale scrape leaves only in-flight; the router never routes on a number it cannot trust.

use std::time::Instant;

use super::exposition::EngineMetrics;

/// One successful scrape, published whole so readers never mix two.
#[derive(Debug, Clone)]
pub struct EngineSample {
    /// What the page said.
    pub metrics: EngineMetrics,
    /// Whether the preemption counter grew since the previous scrape.
    pub preempting: bool,
    /// The router's in-flight count for this worker when the scrape finished.
    pub in_flight_at_scrape: u32,
    /// Until when the sample may be used.
    pub fresh_until: Instant,
}

/// The engine's side of the load, from a fresh scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineLoad {
    /// Requests in the running batch.
    pub running: f64,
    /// Requests queued in the engine.
    pub waiting: f64,
    /// KV-cache use, 0..1, when reported.
    pub kv_usage: Option<f64>,
    /// The engine preempted requests since the previous scrape: it is overloaded.
    pub preempting: bool,
    /// The router's net change of in-flight requests to this worker since the scrape
    /// (sent minus finished), which the gauges cannot show yet.
    pub in_flight_change: i64,
}

impl EngineLoad {
    /// The running batch now: as scraped, moved by the router's in-flight change since.
    pub fn running_now(&self) -> f64 {
        (self.running + self.in_flight_change as f64).max(0.0)
    }
}

/// A worker's load at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Requests the router has in flight to the worker (response not ended).
    pub in_flight: u32,
    /// The engine's gauges, when a fresh scrape has them.
    pub engine: Option<EngineLoad>,
}

impl Load {
    /// Build the view of a worker's load from its in-flight count and last sample.
    pub fn new(in_flight: u32, sample: Option<&EngineSample>, now: Instant) -> Self {
        let engine = sample.filter(|s| now < s.fresh_until).and_then(|s| {
            Some(EngineLoad {
                running: s.metrics.running?,
                waiting: s.metrics.waiting?,
                kv_usage: s.metrics.kv_usage,
                preempting: s.preempting,
                in_flight_change: i64::from(in_flight) - i64::from(s.in_flight_at_scrape),
            })
        });
        Self { in_flight, engine }
    }

    /// Requests ahead of a new one: in flight from this router plus the engine's queue.
    pub fn queue(&self) -> f64 {
        f64::from(self.in_flight) + self.engine.map_or(0.0, |e| e.waiting)
    }

    /// The TOML router's score before dividing by capacity: `running * 3 + waiting`, with
    /// the router's in-flight change since the scrape applied to `running` (so a burst sent
    /// between scrapes counts at once, in full); in-flight alone without a scrape.
    pub fn weighted_occupancy(&self) -> f64 {
        match self.engine {
            Some(e) => e.running_now() * 3.0 + e.waiting,
            None => f64::from(self.in_flight),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(running: f64, waiting: f64, at_scrape: u32, fresh_for: Duration) -> EngineSample {
        EngineSample {
            metrics: EngineMetrics {
                running: Some(running),
                waiting: Some(waiting),
                ..EngineMetrics::default()
            },
            preempting: false,
            in_flight_at_scrape: at_scrape,
            fresh_until: Instant::now() + fresh_for,
        }
    }

    #[test]
    fn fresh_sample_refines_in_flight() {
        let s = sample(2.0, 5.0, 3, Duration::from_secs(5));
        let load = Load::new(4, Some(&s), Instant::now());
        assert_eq!(load.queue(), 9.0);
        assert_eq!(load.weighted_occupancy(), (2.0 + 1.0) * 3.0 + 5.0);
        // Requests that finished since the scrape lower the estimate, never below zero.
        let drained = Load::new(
            0,
            Some(&sample(2.0, 5.0, 3, Duration::from_secs(5))),
            Instant::now(),
        );
        assert_eq!(drained.weighted_occupancy(), 5.0);
    }

    #[test]
    fn stale_or_partial_samples_fall_back_to_in_flight() {
        let stale = sample(2.0, 5.0, 0, Duration::ZERO);
        let load = Load::new(4, Some(&stale), Instant::now() + Duration::from_millis(1));
        assert_eq!(load.engine, None);
        assert_eq!((load.queue(), load.weighted_occupancy()), (4.0, 4.0));

        let mut partial = sample(2.0, 5.0, 0, Duration::from_secs(5));
        partial.metrics.waiting = None;
        assert_eq!(Load::new(1, Some(&partial), Instant::now()).engine, None);
        assert_eq!(Load::new(1, None, Instant::now()).queue(), 1.0);
    }
}
