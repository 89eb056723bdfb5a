//! What each decode worker is expected to hold in its prefix cache, for conditional prefill:
//! the prompts of the requests it decoded (a decode worker keeps the blocks it received or
//! computed), in the same chained blocks as the cache-aware policy, least recently used
//! forgotten first, within the worker's KV capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fleet::Worker;
use crate::policy::index_capacity;
use crate::prefix::{BLOCK_BYTES, PrefixIndex};
use crate::sync::Mutex;

/// Per decode worker, the prompt blocks it was last sent.
#[derive(Debug)]
pub(crate) struct Affinity {
    indexes: Mutex<HashMap<u64, PrefixIndex>>,
    clock: AtomicU64,
    /// Bytes of prompt text each index may hold, at most (a worker's KV capacity from its
    /// metrics lowers it: a worker never holds more than fits).
    max_bytes: u64,
}

impl Affinity {
    /// Indexes of at most `max_bytes` of prompt text per worker.
    pub(crate) fn new(max_bytes: u64) -> Self {
        Self {
            indexes: Mutex::default(),
            clock: AtomicU64::new(1),
            max_bytes,
        }
    }

    /// Bytes of the prompt (whole blocks of `chain`) `worker` is expected to hold.
    pub(crate) fn matched_bytes(&self, worker: &Worker, chain: &[u64]) -> usize {
        self.indexes
            .lock()
            .get(&worker.id())
            .map_or(0, |index| index.matched(chain) * BLOCK_BYTES)
    }

    /// `worker` decoded a request with this prompt.
    pub(crate) fn insert(&self, worker: &Worker, chain: &[u64]) {
        if chain.is_empty() {
            return;
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let capacity = index_capacity(worker, self.max_bytes).max(1);
        let mut indexes = self.indexes.lock();
        let index = indexes.entry(worker.id()).or_default();
        index.insert(chain, now);
        if index.len() > capacity + capacity / 8 {
            index.evict_to(capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerUrl;
    use crate::prefix::chain_hashes;

    #[test]
    fn learns_per_worker_and_forgets_beyond_capacity() {
        let w = |u: &str| Worker::new(WorkerUrl::parse("--decode", u).unwrap());
        let (a, b) = (w("http://a:1"), w("http://b:1"));
        let affinity = Affinity::new(4 * BLOCK_BYTES as u64);
        let first = chain_hashes(&[b'x'; 4 * BLOCK_BYTES]);
        affinity.insert(&a, &first);
        assert_eq!(affinity.matched_bytes(&a, &first), 4 * BLOCK_BYTES);
        assert_eq!(affinity.matched_bytes(&b, &first), 0);
        let second = chain_hashes(&[b'y'; 4 * BLOCK_BYTES]);
        affinity.insert(&a, &second);
        assert_eq!(affinity.matched_bytes(&a, &second), 4 * BLOCK_BYTES);
        assert_eq!(
            affinity.matched_bytes(&a, &first),
            0,
            "the older prompt was forgotten past the capacity"
        );
    }
}
