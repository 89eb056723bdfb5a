//! Least load: the capacity-aware score of the TOML-configured router, `running * 3 +
//! waiting` from each worker's `/metrics`, with the router's net in-flight change since the
//! scrape applied to `running`, so requests sent between scrapes weigh at once and in full.
//! A worker without a fresh scrape is scored by its in-flight count alone. Either is divided
//! by the worker's capacity (`--worker-capacity`) when it has one.

use std::time::Instant;

use super::ScoredPolicy;
use crate::fleet::Worker;

/// Picks the lowest weighted occupancy.
#[derive(Debug, Default)]
pub struct LeastLoad;

impl ScoredPolicy for LeastLoad {
    const NAME: &'static str = "least_load";
    const REASON: &'static str = "lowest (running*3 + waiting) / capacity";

    fn score(&self, worker: &Worker, now: Instant) -> f64 {
        let capacity = worker.capacity().map_or(1.0, |c| f64::from(c.get()));
        worker.load(now).weighted_occupancy() / capacity
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::Policy;
    use crate::policy::test_support::{engine, with_request, workers};

    fn pick(ws: &[Arc<Worker>]) -> usize {
        with_request(|r| LeastLoad.pick(r, ws).unwrap().index)
    }

    #[test]
    fn running_weighs_three_times_waiting() {
        let ws = workers(3);
        engine(&ws[0], |m| (m.running, m.waiting) = (Some(2.0), Some(0.0))); // 6
        engine(&ws[1], |m| (m.running, m.waiting) = (Some(1.0), Some(4.0))); // 7
        engine(&ws[2], |m| (m.running, m.waiting) = (Some(0.0), Some(5.0))); // 5
        assert_eq!(pick(&ws), 2);
    }

    #[test]
    fn requests_sent_since_the_scrape_count() {
        let ws = workers(2);
        engine(&ws[0], |m| m.running = Some(1.0));
        engine(&ws[1], |m| m.running = Some(1.0));
        let _sent: Vec<_> = (0..2).map(|_| ws[0].begin()).collect();
        assert_eq!(pick(&ws), 1);
    }

    #[test]
    fn load_is_divided_by_capacity() {
        use crate::config::{WorkerSpec, WorkerUrl};
        let spec = |url: &str, cap: u32| WorkerSpec {
            capacity: std::num::NonZeroU32::new(cap),
            ..WorkerSpec::from(WorkerUrl::parse("--worker-urls", url).unwrap())
        };
        let ws = vec![
            Arc::new(Worker::new(spec("http://a:1", 2))),
            Arc::new(Worker::new(spec("http://b:1", 8))),
        ];
        engine(&ws[0], |m| m.running = Some(1.0)); // 3 / 2
        engine(&ws[1], |m| m.running = Some(3.0)); // 9 / 8
        assert_eq!(pick(&ws), 1);
    }

    #[test]
    fn without_a_scrape_in_flight_decides() {
        let ws = workers(2);
        let _busy = ws[1].begin();
        assert_eq!(pick(&ws), 0);
        assert_eq!(with_request(|r| LeastLoad.pick(r, &[])), None);
    }
}
