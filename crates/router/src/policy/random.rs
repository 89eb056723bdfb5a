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
        Some(Decision::new(fastrand::usize(..candidates.len()), "random"))
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
}
