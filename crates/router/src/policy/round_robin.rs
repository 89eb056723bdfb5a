//! Round robin: each candidate in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Decision, Explanation, Policy, RouteRequest};
use crate::fleet::Worker;

/// Takes candidates in turn from one shared counter.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(&self, _req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision> {
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        Some(Decision::new(
            super::weighted_index(candidates, |total| turn % total),
            "next in turn",
        ))
    }

    fn explain(&self, _req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Explanation {
        let turn = self.next.load(Ordering::Relaxed) as u64;
        Explanation {
            decision: (!candidates.is_empty()).then(|| {
                Decision::new(
                    super::weighted_index(candidates, |total| turn % total),
                    "next in turn",
                )
            }),
            ..Explanation::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{with_request, workers};

    #[test]
    fn cycles_through_every_candidate() {
        let policy = RoundRobin::default();
        let ws = workers(3);
        let picks: Vec<usize> =
            with_request(|r| (0..6).map(|_| policy.pick(r, &ws).unwrap().index).collect());
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(with_request(|r| policy.pick(r, &[])), None);
    }

    #[test]
    fn a_weight_takes_that_many_turns() {
        let policy = RoundRobin::default();
        let ws = crate::policy::test_support::weighted(&[1, 3]);
        let picks: Vec<usize> =
            with_request(|r| (0..8).map(|_| policy.pick(r, &ws).unwrap().index).collect());
        assert_eq!(picks, [0, 1, 1, 1, 0, 1, 1, 1]);
    }
}
