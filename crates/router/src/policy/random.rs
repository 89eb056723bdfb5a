//! Random: a uniformly random candidate.

use std::sync::Arc;

use super::{Decision, Policy, RouteRequest};
use crate::fleet::Worker;

/// Picks uniformly at random.
#[derive(Debug, Default)]
pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, _req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision> {
        if candidates.is_empty() {
            return None;
        }
        let index = super::weighted_index(candidates, |total| fastrand::u64(..total));
        Some(Decision::new(index, "random"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{with_request, workers};

    #[test]
    fn reaches_every_candidate_and_stays_in_range() {
        let ws = workers(4);
        let mut seen = [0usize; 4];
        with_request(|r| {
            for _ in 0..400 {
                seen[Random.pick(r, &ws).unwrap().index] += 1;
            }
        });
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        assert_eq!(with_request(|r| Random.pick(r, &[])), None);
    }

    #[test]
    fn picks_in_proportion_to_weight() {
        let ws = crate::policy::test_support::weighted(&[1, 4]);
        let mut seen = [0usize; 2];
        with_request(|r| {
            for _ in 0..5000 {
                seen[Random.pick(r, &ws).unwrap().index] += 1;
            }
        });
        // Expected 1000 and 4000; far outside noise for a wrong (uniform) pick.
        assert!((800..1200).contains(&seen[0]), "{seen:?}");
    }
}
