//! Weighted least connections, the nginx recipe driven by vLLM's metrics: each worker's
//! weight is 100 below 75% KV-cache use, 60 below 85%, 30 below 92%, else 10; then one step
//! down (100 → 60 → 30 → 10) for each of: requests waiting, preemptions since the last scrape,
//! more than 8 running. The choice is the lowest in-flight per unit of weight. A worker
//! without a fresh scrape keeps the full weight, so in-flight alone decides.

use std::time::Instant;

use super::ScoredPolicy;
use crate::fleet::{Load, Worker};

const STEPS: [f64; 4] = [100.0, 60.0, 30.0, 10.0];

/// The nginx-style weight of a worker under `load`.
pub fn weight(load: &Load) -> f64 {
    let Some(e) = load.engine else {
        return STEPS[0];
    };
    let kv = e.kv_usage.unwrap_or(0.0);
    let base = match kv {
        k if k < 0.75 => 0,
        k if k < 0.85 => 1,
        k if k < 0.92 => 2,
        _ => 3,
    };
    let penalties =
        usize::from(e.waiting > 0.0) + usize::from(e.preempting) + usize::from(e.running > 8.0);
    STEPS[(base + penalties).min(STEPS.len() - 1)]
}

/// Least in-flight (counting the new request) per unit of weight.
#[derive(Debug, Default)]
pub struct Weighted;

impl ScoredPolicy for Weighted {
    const NAME: &'static str = "weighted";
    const REASON: &'static str = "least connections per metric weight";

    fn score(&self, worker: &Worker, now: Instant) -> f64 {
        let load = worker.load(now);
        f64::from(load.in_flight + 1) / weight(&load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::EngineLoad;
    use crate::policy::Policy;
    use crate::policy::test_support::{engine, with_request, workers};

    fn load(kv: f64, waiting: f64, preempting: bool, running: f64) -> Load {
        Load {
            in_flight: 0,
            engine: Some(EngineLoad {
                running,
                waiting,
                kv_usage: Some(kv),
                preempting,
                in_flight_change: 0,
            }),
        }
    }

    #[test]
    fn weights_follow_the_recipe() {
        assert_eq!(weight(&load(0.5, 0.0, false, 1.0)), 100.0);
        assert_eq!(weight(&load(0.8, 0.0, false, 1.0)), 60.0);
        assert_eq!(weight(&load(0.9, 0.0, false, 1.0)), 30.0);
        assert_eq!(weight(&load(0.95, 0.0, false, 1.0)), 10.0);
        assert_eq!(weight(&load(0.5, 2.0, false, 1.0)), 60.0);
        assert_eq!(weight(&load(0.5, 2.0, true, 1.0)), 30.0);
        assert_eq!(weight(&load(0.5, 2.0, true, 9.0)), 10.0);
        assert_eq!(
            weight(&load(0.8, 2.0, true, 9.0)),
            10.0,
            "never below the last step"
        );
        assert_eq!(
            weight(&Load {
                in_flight: 3,
                engine: None
            }),
            100.0
        );
    }

    #[test]
    fn a_full_cache_takes_less_traffic() {
        let ws = workers(2);
        engine(&ws[0], |m| m.kv_usage = Some(0.95));
        engine(&ws[1], |m| m.kv_usage = Some(0.10));
        // Four in flight on the healthy worker still beats one on the full one: 5/100 < 2/10.
        let _busy: Vec<_> = (0..4).map(|_| ws[1].begin()).collect();
        let _one = ws[0].begin();
        assert_eq!(with_request(|r| Weighted.pick(r, &ws).unwrap().index), 1);
    }
}
