//! Properties of the prefix index against a plain model: whatever is inserted and evicted,
//! the blocks held form whole prefixes, `matched` is the longest held prefix, and eviction
//! keeps at most the capacity, dropping the least recently used first.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

const CASES: u32 = 10_000;

#[derive(Debug, Clone)]
enum Op {
    /// Insert the first `len` blocks of conversation `of` (sharing a system prompt).
    Insert { of: usize, len: usize },
    /// Evict down to `to` blocks.
    Evict { to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..6usize, 0..12usize).prop_map(|(of, len)| Op::Insert { of, len }),
        1 => (0..40usize).prop_map(|to| Op::Evict { to }),
    ]
}

/// Six conversations over a shared four-block system prompt.
fn chains() -> Vec<Vec<u64>> {
    (0..6)
        .map(|c| {
            let mut text = "s".repeat(4 * BLOCK_BYTES);
            text.push_str(&format!("{c}").repeat(8 * BLOCK_BYTES));
            chain_hashes(text.as_bytes())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn matched_is_the_longest_held_prefix_through_any_inserts_and_evictions(ops in prop::collection::vec(op(), 1..24)) {
        let chains = chains();
        let mut index = PrefixIndex::default();
        for (now, op) in ops.iter().enumerate() {
            match *op {
                Op::Insert { of, len } => index.insert(&chains[of][..len], now as u64),
                Op::Evict { to } => {
                    let before = index.len();
                    index.evict_to(to);
                    prop_assert_eq!(index.len(), before.min(to));
                }
            }
            let held: HashSet<u64> = index.blocks.keys().copied().collect();
            for chain in &chains {
                let leading = chain.iter().take_while(|h| held.contains(h)).count();
                // Held blocks form whole prefixes: nothing is held past the first gap.
                prop_assert!(chain[leading..].iter().all(|h| !held.contains(h)), "a gap in {chain:?}");
                prop_assert_eq!(index.matched(chain), leading);
            }
        }
    }

    #[test]
    fn eviction_keeps_the_most_recently_used(stamps in prop::collection::vec(0u64..1000, 1..40), keep in 0..40usize) {
        let mut index = PrefixIndex::default();
        // One-block chains of distinct texts, each used at its own time.
        for (i, used) in stamps.iter().enumerate() {
            let text = format!("{i:0>width$}", width = BLOCK_BYTES);
            index.insert(&chain_hashes(text.as_bytes()), *used);
        }
        let oldest_kept = |index: &PrefixIndex| index.blocks.values().map(|(u, _)| *u).min();
        let newest_dropped = {
            let mut all: Vec<u64> = stamps.clone();
            all.sort_unstable();
            all.len().checked_sub(keep).filter(|n| *n > 0).map(|n| all[n - 1])
        };
        index.evict_to(keep);
        prop_assert_eq!(index.len(), keep.min(stamps.len()));
        if let (Some(kept), Some(dropped)) = (oldest_kept(&index), newest_dropped) {
            prop_assert!(kept >= dropped, "kept {kept}, dropped one used at {dropped}");
        }
    }
}
