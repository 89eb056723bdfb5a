//! Power of two choices: of two random candidates, the one with fewer requests ahead of a new
//! one: the router's in-flight (which lasts to the end of each stream) plus the engine's
//! waiting queue from a fresh `/metrics` scrape.

use std::sync::Arc;
use std::time::Instant;

use super::{Decision, Explanation, Policy, RouteRequest};
use crate::fleet::Worker;

/// Samples two distinct candidates and keeps the less loaded.
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn pick(&self, _req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision> {
        match candidates.len() {
            0 => None,
            1 => Some(Decision::new(0, "only candidate")),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let now = Instant::now();
                let (qa, qb) = (
                    candidates[a].load(now).queue(),
                    candidates[b].load(now).queue(),
                );
                let index = if qb < qa { b } else { a };
                Some(Decision::new(index, "shorter queue of two sampled"))
            }
        }
    }

    fn explain(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Explanation {
        let now = Instant::now();
        Explanation {
            decision: self.pick(req, candidates),
            scores: Some(candidates.iter().map(|w| w.load(now).queue()).collect()),
            ..Explanation::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{engine, with_request, workers};

    #[test]
    fn never_picks_the_busier_of_two() {
        let ws = workers(2);
        let _busy: Vec<_> = (0..5).map(|_| ws[0].begin()).collect();
        with_request(|r| {
            for _ in 0..100 {
                assert_eq!(PowerOfTwo.pick(r, &ws).unwrap().index, 1);
            }
        });
    }

    #[test]
    fn avoids_the_single_busiest_worker_among_many() {
        let ws = workers(4);
        let _busy: Vec<_> = (0..9).map(|_| ws[2].begin()).collect();
        with_request(|r| {
            for _ in 0..200 {
                assert_ne!(PowerOfTwo.pick(r, &ws).unwrap().index, 2);
            }
        });
    }

    #[test]
    fn the_engine_queue_counts_as_load() {
        let ws = workers(2);
        let _one = ws[1].begin();
        engine(&ws[0], |m| m.waiting = Some(6.0));
        engine(&ws[1], |m| m.waiting = Some(0.0));
        with_request(|r| {
            for _ in 0..50 {
                assert_eq!(PowerOfTwo.pick(r, &ws).unwrap().index, 1);
            }
        });
    }
}
