//! Prefix indexes: which prompt prefixes each worker is likely to hold in its KV cache.
//!
//! A prompt is cut into fixed-size byte blocks, each identified by a hash chained over every
//! block before it, so equal hashes mean equal prefixes. An index remembers the blocks the
//! router sent to one worker and forgets the least recently used first, deepest block first
//! among equals, so that "block i is present" implies "every block before i is present" and
//! the longest cached prefix is found by binary search.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes of prompt text per block (about 32 tokens of English text).
pub const BLOCK_BYTES: usize = 128;

/// Chained hashes of the full blocks of `text`.
pub fn chain_hashes(text: &[u8]) -> Vec<u64> {
    let mut parent = 0u64;
    text.chunks_exact(BLOCK_BYTES)
        .map(|block| {
            parent = xxh3_64_with_seed(block, parent);
            parent
        })
        .collect()
}

/// An approximate LRU set of one worker's cached blocks.
#[derive(Debug, Default)]
pub struct PrefixIndex {
    /// Block hash → (last use, depth in its chain).
    blocks: HashMap<u64, (u64, u32)>,
}

impl PrefixIndex {
    /// How many leading blocks of `chain` the index holds.
    pub fn matched(&self, chain: &[u64]) -> usize {
        // Present blocks form a prefix of the chain (see the module comment): binary search.
        chain.partition_point(|h| self.blocks.contains_key(h))
    }

    /// Record that the worker now holds every block of `chain`, used at `now`.
    pub fn insert(&mut self, chain: &[u64], now: u64) {
        for (depth, hash) in chain.iter().enumerate() {
            self.blocks.insert(*hash, (now, depth as u32));
        }
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Forget blocks until at most `capacity` remain: oldest first, deepest first among equals.
    pub fn evict_to(&mut self, capacity: usize) {
        let excess = self.blocks.len().saturating_sub(capacity);
        if excess == 0 {
            return;
        }
        let mut order: Vec<(u64, std::cmp::Reverse<u32>, u64)> = self
            .blocks
            .iter()
            .map(|(h, (used, depth))| (*used, std::cmp::Reverse(*depth), *h))
            .collect();
        order.select_nth_unstable(excess - 1);
        for (_, _, h) in &order[..excess] {
            self.blocks.remove(h);
        }
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(words: &[&str], repeat: usize) -> Vec<u8> {
        words
            .iter()
            .map(|w| w.repeat(repeat))
            .collect::<Vec<_>>()
            .join("|")
            .into_bytes()
    }

    #[test]
    fn shared_prefixes_share_leading_hashes_only() {
        let a = text(&["system", "alpha"], 100);
        let b = text(&["system", "bravo"], 100);
        let (ha, hb) = (chain_hashes(&a), chain_hashes(&b));
        let common = ha.iter().zip(&hb).take_while(|(x, y)| x == y).count();
        assert_eq!(
            common,
            600 / BLOCK_BYTES,
            "the 600-byte shared prefix, in whole blocks"
        );
        assert!(chain_hashes(&a[..BLOCK_BYTES - 1]).is_empty());
    }

    #[test]
    fn matched_is_the_longest_held_prefix() {
        let long = chain_hashes(&text(&["x"], 40 * BLOCK_BYTES));
        let mut index = PrefixIndex::default();
        assert_eq!(index.matched(&long), 0);
        index.insert(&long[..10], 1);
        assert_eq!(index.matched(&long), 10);
        assert_eq!(index.matched(&long[..4]), 4);
        let other = chain_hashes(&text(&["y"], 40 * BLOCK_BYTES));
        assert_eq!(index.matched(&other), 0);
    }

    #[test]
    fn eviction_drops_the_oldest_and_deepest_first_keeping_prefixes_whole() {
        let a = chain_hashes(&text(&["a"], 10 * BLOCK_BYTES));
        let b = chain_hashes(&text(&["b"], 10 * BLOCK_BYTES));
        let mut index = PrefixIndex::default();
        index.insert(&a, 1);
        index.insert(&b, 2);
        index.evict_to(14);
        assert_eq!(index.len(), 14);
        assert_eq!(index.matched(&b), 10, "the newer chain stays whole");
        assert_eq!(
            index.matched(&a),
            4,
            "the older chain lost its deepest blocks"
        );
        // Re-using a prefix refreshes it: now b is older.
        index.insert(&a[..4], 3);
        index.evict_to(4);
        assert_eq!((index.matched(&a), index.matched(&b)), (4, 0));
    }
}
