//! Data-parallel ranks: the engines behind one port, and which of them takes a request.
//!
//! Like `vllm serve --data-parallel-size N`, a request naming a rank in `X-data-parallel-rank`
//! goes to that rank's engine; without the header the least busy engine (fewest running plus
//! waiting, lowest rank on ties) takes it.

use std::sync::Arc;

use http::HeaderValue;
use parking_lot::Mutex;

use crate::SimConfig;
use crate::engine::{Engine, Queued};

/// The request header naming the data-parallel rank that must serve a request.
pub const DATA_PARALLEL_RANK_HEADER: &str = "x-data-parallel-rank";

/// Why a request's rank header cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RankError {
    /// The header is not a decimal integer.
    #[error("X-data-parallel-rank must be an integer, got {0:?}")]
    Malformed(String),
    /// The rank does not exist on this server (the wording is vLLM's).
    #[error("data_parallel_rank {rank} is out of range [0, {size}).")]
    OutOfRange {
        /// The rank asked for.
        rank: i64,
        /// How many ranks there are.
        size: usize,
    },
}

/// Every rank's engine, indexed by rank; never empty.
pub(crate) struct Ranks {
    engines: Vec<Arc<Engine>>,
    /// Serialises load-based choices so that each sees the ones before it.
    choosing: Mutex<()>,
}

impl Ranks {
    pub(crate) fn new(config: &SimConfig) -> Self {
        let size = u32::try_from(config.data_parallel_size.max(1)).unwrap_or(u32::MAX);
        Self {
            engines: (0..size)
                .map(|rank| Arc::new(Engine::new(config, rank)))
                .collect(),
            choosing: Mutex::new(()),
        }
    }

    /// The engines, rank 0 first.
    pub(crate) fn engines(&self) -> &[Arc<Engine>] {
        &self.engines
    }

    /// Queues a request on the rank its header names, or on the least busy rank without one.
    pub(crate) fn enqueue(&self, header: Option<&HeaderValue>) -> Result<Queued, RankError> {
        match header {
            Some(value) => {
                let rank = parse_rank(value)?;
                let engine = usize::try_from(rank)
                    .ok()
                    .and_then(|r| self.engines.get(r))
                    .ok_or(RankError::OutOfRange {
                        rank,
                        size: self.engines.len(),
                    })?;
                Ok(engine.enqueue())
            }
            None => {
                let _choosing = self.choosing.lock();
                Ok(self.least_busy().enqueue())
            }
        }
    }

    /// Lowest load, lowest rank on ties.
    fn least_busy(&self) -> &Arc<Engine> {
        let mut best = &self.engines[0];
        let mut best_load = best.load();
        for engine in &self.engines[1..] {
            let load = engine.load();
            if load < best_load {
                best = engine;
                best_load = load;
            }
        }
        best
    }
}

/// A header value as a rank; Python's `int()` is what vLLM applies, so surrounding blanks and a
/// sign are accepted and range is judged afterwards.
fn parse_rank(value: &HeaderValue) -> Result<i64, RankError> {
    let text = String::from_utf8_lossy(value.as_bytes());
    text.trim()
        .parse::<i64>()
        .map_err(|_| RankError::Malformed(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranks(size: usize) -> Ranks {
        Ranks::new(&SimConfig {
            data_parallel_size: size,
            ..SimConfig::default()
        })
    }

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn header_names_the_rank() {
        let r = ranks(3);
        let q = r.enqueue(Some(&header("2"))).unwrap();
        assert_eq!(q.engine().rank(), 2);
        assert_eq!(r.engines()[2].load(), 1);
        drop(q);
        assert_eq!(r.engines()[2].load(), 0);
        assert_eq!(r.enqueue(Some(&header(" 1 "))).unwrap().engine().rank(), 1);
    }

    #[test]
    fn bad_ranks_are_refused() {
        let r = ranks(2);
        assert_eq!(
            r.enqueue(Some(&header("2"))).err(),
            Some(RankError::OutOfRange { rank: 2, size: 2 })
        );
        assert_eq!(
            r.enqueue(Some(&header("-1"))).err(),
            Some(RankError::OutOfRange { rank: -1, size: 2 })
        );
        assert_eq!(
            r.enqueue(Some(&header("one"))).err(),
            Some(RankError::Malformed("one".into()))
        );
        assert_eq!(
            RankError::OutOfRange { rank: 2, size: 2 }.to_string(),
            "data_parallel_rank 2 is out of range [0, 2)."
        );
        assert!(r.engines().iter().all(|e| e.load() == 0));
    }

    #[test]
    fn without_header_the_least_busy_rank_takes_it() {
        let r = ranks(3);
        // Each choice counts at once, so a burst spreads: 0, 1, 2, then 0 again.
        let burst: Vec<Queued> = (0..4).map(|_| r.enqueue(None).unwrap()).collect();
        let chosen: Vec<u32> = burst.iter().map(|q| q.engine().rank()).collect();
        assert_eq!(chosen, vec![0, 1, 2, 0]);
        drop(burst);
        let pinned = r.enqueue(Some(&header("0"))).unwrap();
        assert_eq!(r.enqueue(None).unwrap().engine().rank(), 1);
        drop(pinned);
        assert_eq!(r.enqueue(None).unwrap().engine().rank(), 0);
    }

    #[test]
    fn engine_ids_follow_the_rank() {
        let r = Ranks::new(&SimConfig {
            engine_id: "e".into(),
            data_parallel_size: 2,
            ..SimConfig::default()
        });
        let ids: Vec<&str> = r.engines().iter().map(|e| e.engine_id()).collect();
        assert_eq!(ids, vec!["e", "e_dp1"]);
    }
}
