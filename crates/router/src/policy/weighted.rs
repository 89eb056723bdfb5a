//! Weighted least connections, the nginx recipe driven by vLLM's metrics: each worker's
//! weight is 100 below 75% KV-cache use, 60 below 85%, 30 below 92%, else 10; then one step
//! down (100 → 60 → 30 → 10) for each of: requests waiting, preemptions since the last scrape,
//! more than 8 running. The thresholds, the steps and the running limit are settings
//! ([`WeightedConfig`]), and the result is multiplied by the worker's static weight (nginx's
//! `weight=`, a `[[workers]]` entry's `weight`). The choice is the lowest in-flight per unit
//! of weight. A worker without a fresh scrape keeps the first step, so in-flight alone (and
//! its static weight) decides.

use std::time::Instant;

use super::ScoredPolicy;
use crate::fleet::{Load, Worker};

/// The ladder of the nginx recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedConfig {
    /// KV-cache use (0..1) at which the weight drops to the second, third and fourth step.
    pub kv_thresholds: [f64; 3],
    /// The weights, from an idle worker's down.
    pub steps: [f64; 4],
    /// More requests running than this is one step down.
    pub max_running: f64,
}

impl Default for WeightedConfig {
    fn default() -> Self {
        Self {
            kv_thresholds: [0.75, 0.85, 0.92],
            steps: [100.0, 60.0, 30.0, 10.0],
            max_running: 8.0,
        }
    }
}

/// The nginx-style weight of a worker under `load`, before its static weight.
pub fn weight(load: &Load, config: &WeightedConfig) -> f64 {
    let steps = &config.steps;
    let Some(e) = load.engine else {
        return steps[0];
    };
    let kv = e.kv_usage.unwrap_or(0.0);
    let base = config
        .kv_thresholds
        .iter()
        .take_while(|t| kv >= **t)
        .count();
    let penalties = usize::from(e.waiting > 0.0)
        + usize::from(e.preempting)
        + usize::from(e.running > config.max_running);
    steps[(base + penalties).min(steps.len() - 1)]
}

/// Least in-flight (counting the new request) per unit of weight.
#[derive(Debug, Default)]
pub struct Weighted {
    config: WeightedConfig,
}

impl Weighted {
    /// The policy with this ladder.
    pub fn new(config: WeightedConfig) -> Self {
        Self { config }
    }
}

impl ScoredPolicy for Weighted {
    const NAME: &'static str = "weighted";
    const REASON: &'static str = "least connections per metric weight";

    fn score(&self, worker: &Worker, now: Instant) -> f64 {
        let load = worker.load(now);
        let weight = weight(&load, &self.config) * f64::from(worker.weight());
        f64::from(load.in_flight + 1) / weight
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

    fn weight_of(load: &Load) -> f64 {
        weight(load, &WeightedConfig::default())
    }

    #[test]
    fn the_ladder_is_a_setting() {
        let config = WeightedConfig {
            kv_thresholds: [0.5, 0.6, 0.7],
            steps: [8.0, 4.0, 2.0, 1.0],
            max_running: 2.0,
        };
        assert_eq!(weight(&load(0.55, 0.0, false, 1.0), &config), 4.0);
        assert_eq!(weight(&load(0.1, 0.0, false, 3.0), &config), 4.0);
        assert_eq!(weight(&load(0.75, 0.0, false, 1.0), &config), 1.0);
    }

    #[test]
    fn a_static_weight_multiplies_the_ladders() {
        let ws = workers(2);
        // Equal load and ladder; one is `weight = 3`: it takes three in flight to one.
        let heavy = Worker::new(crate::config::WorkerSpec {
            weight: std::num::NonZeroU32::new(3).unwrap(),
            ..ws[1].spec().clone()
        });
        let ws = [std::sync::Arc::clone(&ws[0]), std::sync::Arc::new(heavy)];
        let pick = || with_request(|r| Weighted::default().pick(r, &ws).unwrap().index);
        let _one = ws[0].begin();
        // (2 + 1) / (100 * 3) below (1 + 1) / 100, ...
        let mut held: Vec<_> = (0..2).map(|_| ws[1].begin()).collect();
        assert_eq!(pick(), 1);
        // ... and (6 + 1) / 300 above it.
        held.extend((0..4).map(|_| ws[1].begin()));
        assert_eq!(pick(), 0);
    }

    #[test]
    fn weights_follow_the_recipe() {
        assert_eq!(weight_of(&load(0.5, 0.0, false, 1.0)), 100.0);
        assert_eq!(weight_of(&load(0.8, 0.0, false, 1.0)), 60.0);
        assert_eq!(weight_of(&load(0.9, 0.0, false, 1.0)), 30.0);
        assert_eq!(weight_of(&load(0.95, 0.0, false, 1.0)), 10.0);
        assert_eq!(weight_of(&load(0.5, 2.0, false, 1.0)), 60.0);
        assert_eq!(weight_of(&load(0.5, 2.0, true, 1.0)), 30.0);
        assert_eq!(weight_of(&load(0.5, 2.0, true, 9.0)), 10.0);
        assert_eq!(
            weight_of(&load(0.8, 2.0, true, 9.0)),
            10.0,
            "never below the last step"
        );
        assert_eq!(
            weight_of(&Load {
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
        assert_eq!(
            with_request(|r| Weighted::default().pick(r, &ws).unwrap().index),
            1
        );
    }
}
