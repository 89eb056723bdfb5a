//! What the validation URLs said about recent keys, by digest: bounded, each answer kept for
//! its own time, the least recently used leaving first when full, all forgotten when the
//! validation URLs change.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;

use http::Uri;
use tokio::time::Instant;

/// One remembered answer.
#[derive(Debug)]
struct Entry {
    valid: bool,
    expires: Instant,
    /// Position in the use order.
    used: u64,
}

/// Remembered answers by key digest, in least-recently-used order.
#[derive(Debug, Default)]
pub(super) struct KeyCache {
    entries: HashMap<u128, Entry>,
    /// Last use → digest; the first is the least recently used.
    order: BTreeMap<u64, u128>,
    clock: u64,
    /// The validation URLs that gave the answers.
    urls: Vec<Uri>,
}

impl KeyCache {
    /// Forget every answer unless they came from `urls`; from now on answers come from them.
    pub(super) fn answered_by(&mut self, urls: &[Uri]) {
        if self.urls != urls {
            self.entries.clear();
            self.order.clear();
            self.urls = urls.to_vec();
        }
    }

    /// The remembered answer for `digest` (`true`: valid), unless it expired by `now`. A hit
    /// counts as a use.
    pub(super) fn get(&mut self, digest: u128, now: Instant) -> Option<bool> {
        let entry = self.entries.get_mut(&digest)?;
        self.order.remove(&entry.used);
        if entry.expires <= now {
            self.entries.remove(&digest);
            return None;
        }
        self.clock += 1;
        entry.used = self.clock;
        self.order.insert(self.clock, digest);
        Some(entry.valid)
    }

    /// Remember an answer until `expires`, making room first: expired answers go, then the
    /// least recently used, until fewer than `capacity` remain.
    pub(super) fn insert(
        &mut self,
        digest: u128,
        valid: bool,
        expires: Instant,
        capacity: NonZeroUsize,
        now: Instant,
    ) {
        if let Some(old) = self.entries.remove(&digest) {
            self.order.remove(&old.used);
        }
        if self.entries.len() >= capacity.get() {
            self.entries.retain(|_, e| e.expires > now);
            let entries = &self.entries;
            self.order.retain(|_, d| entries.contains_key(d));
        }
        while self.entries.len() >= capacity.get() {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.order.insert(self.clock, digest);
        self.entries.insert(
            digest,
            Entry {
                valid,
                expires,
                used: self.clock,
            },
        );
    }

    /// Answers remembered, expired ones included until they are looked up or pushed out.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn the_least_recently_used_leaves_first() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut cache = KeyCache::default();
        cache.insert(1, true, later, cap(3), now);
        cache.insert(2, false, later, cap(3), now);
        cache.insert(3, true, later, cap(3), now);
        // 1 is used again: 2 is now the least recently used.
        assert_eq!(cache.get(1, now), Some(true));
        cache.insert(4, true, later, cap(3), now);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(2, now), None);
        assert_eq!(cache.get(1, now), Some(true));
        assert_eq!(cache.get(3, now), Some(true));
        assert_eq!(cache.get(4, now), Some(true));
        // 1 is now the oldest use.
        cache.insert(5, false, later, cap(3), now);
        assert_eq!(cache.get(1, now), None);
        assert_eq!(cache.get(5, now), Some(false));
    }

    #[test]
    fn expired_answers_are_forgotten_and_make_room_first() {
        let now = Instant::now();
        let mut cache = KeyCache::default();
        cache.insert(1, true, now + Duration::from_secs(10), cap(2), now);
        cache.insert(2, false, now + Duration::from_secs(1), cap(2), now);
        let then = now + Duration::from_secs(2);
        // Full: 2 expired, so it leaves rather than 1, the least recently used.
        cache.insert(3, true, then + Duration::from_secs(10), cap(2), then);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(1, then), Some(true));
        assert_eq!(cache.get(3, then), Some(true));
        assert_eq!(cache.get(1, now + Duration::from_secs(10)), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn other_validation_urls_forget_every_answer() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let a: Vec<Uri> = vec!["http://a/check".parse().unwrap()];
        let b: Vec<Uri> = vec!["http://b/check".parse().unwrap()];
        let mut cache = KeyCache::default();
        cache.answered_by(&a);
        cache.insert(1, true, later, cap(4), now);
        cache.answered_by(&a);
        assert_eq!(cache.get(1, now), Some(true));
        cache.answered_by(&b);
        assert_eq!(cache.get(1, now), None);
        assert_eq!((cache.len(), cache.order.len()), (0, 0));
    }

    #[test]
    fn a_new_answer_replaces_the_old_and_a_smaller_capacity_applies() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut cache = KeyCache::default();
        cache.insert(1, false, later, cap(4), now);
        cache.insert(1, true, later, cap(4), now);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(1, now), Some(true));
        for digest in 2..=4 {
            cache.insert(digest, true, later, cap(4), now);
        }
        // The capacity came down with a reload: the oldest three go at once.
        cache.insert(5, true, later, cap(2), now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(4, now), Some(true));
        assert_eq!(cache.get(5, now), Some(true));
        assert_eq!(cache.order.len(), 2);
    }
}
