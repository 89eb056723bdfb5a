//! A block-level prefix cache with least-recently-used eviction.
//!
//! A prompt is cut into full blocks of `block_size` tokens. Each block is named by a chained hash
//! (its parent block's hash and its own tokens), so a block matches only when the whole prefix up
//! to it matches. Slots live in a fixed arena of `num_blocks`; a slot's index doubles as the
//! physical block id reported in `remote_block_ids`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const NONE: u32 = u32::MAX;

/// The chained hashes of every full block of `tokens`.
pub(crate) fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = 0xcbf2_9ce4_8422_2325_u64;
    tokens
        .chunks_exact(block_size.max(1))
        .map(|block| {
            let mut h = parent;
            for &t in block {
                h = (h ^ u64::from(t)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            parent = mix64(h);
            parent
        })
        .collect()
}

/// A splitmix64 finaliser: spreads FNV's weak high bits so the hashes key a map well as-is.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Block hashes are already well mixed; hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Slot {
    hash: u64,
    prev: u32,
    next: u32,
}

/// An LRU set of block hashes with a fixed capacity.
pub(crate) struct PrefixCache {
    index: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    slots: Vec<Slot>,
    capacity: usize,
    /// Most recently used slot.
    head: u32,
    /// Least recently used slot: the next to go.
    tail: u32,
}

impl PrefixCache {
    /// An empty cache holding at most `capacity` blocks (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.min(NONE as usize);
        Self {
            index: HashMap::default(),
            slots: Vec::new(),
            capacity,
            head: NONE,
            tail: NONE,
        }
    }

    /// Forget every cached block (vLLM's `/reset_prefix_cache`).
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.head = NONE;
        self.tail = NONE;
    }

    /// Blocks currently cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// How many leading blocks of `hashes` are cached; those blocks become most recently used.
    pub(crate) fn match_prefix(&mut self, hashes: &[u64]) -> usize {
        let mut hits = 0;
        for h in hashes {
            let Some(&slot) = self.index.get(h) else {
                break;
            };
            self.touch(slot);
            hits += 1;
        }
        hits
    }

    /// Caches every block of `hashes`, evicting the least recently used blocks as needed.
    /// Returns the slot (physical block id) of each block.
    pub(crate) fn insert(&mut self, hashes: &[u64]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(hashes.len());
        if self.capacity == 0 {
            return ids;
        }
        for &h in hashes {
            let slot = match self.index.get(&h) {
                Some(&slot) => {
                    self.touch(slot);
                    slot
                }
                None => self.allocate(h),
            };
            ids.push(slot);
        }
        ids
    }

    fn allocate(&mut self, hash: u64) -> u32 {
        let slot = if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                hash,
                prev: NONE,
                next: NONE,
            });
            (self.slots.len() - 1) as u32
        } else {
            let victim = self.tail;
            self.unlink(victim);
            let old = std::mem::replace(&mut self.slots[victim as usize].hash, hash);
            self.index.remove(&old);
            victim
        };
        self.index.insert(hash, slot);
        self.push_front(slot);
        slot
    }

    fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let s = &self.slots[slot as usize];
            (s.prev, s.next)
        };
        match prev {
            NONE => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NONE => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let s = &mut self.slots[slot as usize];
            s.prev = NONE;
            s.next = old_head;
        }
        match old_head {
            NONE => self.tail = slot,
            h => self.slots[h as usize].prev = slot,
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(n: u32, salt: u32) -> Vec<u32> {
        (0..n).map(|i| i.wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn hashes_chain_over_full_blocks_only() {
        let a = block_hashes(&prompt(40, 0), 16);
        assert_eq!(a.len(), 2);
        let mut other = prompt(40, 0);
        other[3] = 999;
        let b = block_hashes(&other, 16);
        // A change in block 0 changes every later block too.
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_eq!(a, block_hashes(&prompt(47, 0), 16));
    }

    #[test]
    fn hit_counts_leading_blocks() {
        let mut cache = PrefixCache::new(64);
        let p = block_hashes(&prompt(64, 0), 16);
        assert_eq!(cache.match_prefix(&p), 0);
        cache.insert(&p);
        assert_eq!(cache.match_prefix(&p), 4);
        let mut q = prompt(64, 0);
        q[40] = 7; // inside block 2
        assert_eq!(cache.match_prefix(&block_hashes(&q, 16)), 2);
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = PrefixCache::new(2);
        let a = block_hashes(&prompt(16, 1), 16);
        let b = block_hashes(&prompt(16, 2), 16);
        let c = block_hashes(&prompt(16, 3), 16);
        cache.insert(&a);
        cache.insert(&b);
        assert_eq!(cache.match_prefix(&a), 1); // a is now most recent; b is next to go
        let ids = cache.insert(&c);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.match_prefix(&b), 0);
        assert_eq!(cache.match_prefix(&a), 1);
        assert_eq!(cache.match_prefix(&c), 1);
        assert_eq!(ids, vec![1], "c reuses b's slot");
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache = PrefixCache::new(0);
        let a = block_hashes(&prompt(32, 1), 16);
        assert!(cache.insert(&a).is_empty());
        assert_eq!(cache.match_prefix(&a), 0);
    }
}
