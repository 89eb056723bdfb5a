//! Power of two choices: of two random candidates, the one with fewer requests in flight.
//! In-flight lasts until a response body ends, so long streams weigh as they should.

use std::sync::Arc;

use super::{Decision, Policy, RouteRequest};
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
            1 => Some(Decision {
                index: 0,
                reason: "only candidate",
            }),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let index = if candidates[b].in_flight() < candidates[a].in_flight() {
                    b
                } else {
                    a
                };
                Some(Decision {
                    index,
                    reason: "fewer in flight of two sampled",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{with_request, workers};

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
}
