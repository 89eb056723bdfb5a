//! Metric handles resolved once per label pair and found again without a lock or an
//! allocation: a request looks its series up by `&str` in an immutable map, swapped whole
//! (under a mutex, copied) on the rare insert or removal.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::sync::Mutex;

type Map<V> = HashMap<String, HashMap<String, Arc<V>>>;

/// Values keyed by two names (a worker and a model, a route and a model).
#[derive(Debug)]
pub(super) struct Handles<V> {
    map: ArcSwap<Map<V>>,
    /// Serialises the writers; readers never take it.
    writing: Mutex<()>,
}

impl<V> Default for Handles<V> {
    fn default() -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::new()),
            writing: Mutex::new(()),
        }
    }
}

impl<V> Handles<V> {
    /// The value of (`outer`, `inner`), if resolved already.
    pub(super) fn get(&self, outer: &str, inner: &str) -> Option<Arc<V>> {
        self.map.load().get(outer)?.get(inner).map(Arc::clone)
    }

    /// The value of (`outer`, `inner`), made by `make` the first time.
    pub(super) fn get_or_insert_with(
        &self,
        outer: &str,
        inner: &str,
        make: impl FnOnce() -> V,
    ) -> Arc<V> {
        if let Some(value) = self.get(outer, inner) {
            return value;
        }
        let _writing = self.writing.lock();
        if let Some(value) = self.get(outer, inner) {
            return value;
        }
        let value = Arc::new(make());
        let mut map = Map::clone(&self.map.load());
        map.entry(outer.to_owned())
            .or_default()
            .insert(inner.to_owned(), Arc::clone(&value));
        self.map.store(Arc::new(map));
        value
    }

    /// Keep the values whose outer name `keep` accepts; `gone` sees each pair removed.
    pub(super) fn retain_outer(
        &self,
        keep: impl Fn(&str) -> bool,
        mut gone: impl FnMut(&str, &str),
    ) {
        let _writing = self.writing.lock();
        let current = self.map.load();
        if current.keys().all(|outer| keep(outer)) {
            return;
        }
        let mut map = Map::clone(&current);
        map.retain(|outer, inners| {
            let stays = keep(outer);
            if !stays {
                for inner in inners.keys() {
                    gone(outer, inner);
                }
            }
            stays
        });
        self.map.store(Arc::new(map));
    }

    /// How many values are resolved.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.load().values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_once_then_found_until_removed() {
        let handles: Handles<u32> = Handles::default();
        let mut made = 0;
        for _ in 0..3 {
            let v = handles.get_or_insert_with("w1", "m", || {
                made += 1;
                7
            });
            assert_eq!(*v, 7);
        }
        assert_eq!(made, 1);
        handles.get_or_insert_with("w2", "m", || 8);
        handles.get_or_insert_with("w2", "n", || 9);
        assert_eq!(handles.len(), 3);
        let mut gone = Vec::new();
        handles.retain_outer(|w| w == "w1", |w, m| gone.push(format!("{w}/{m}")));
        gone.sort();
        assert_eq!(gone, ["w2/m", "w2/n"]);
        assert_eq!(handles.len(), 1);
        assert_eq!(handles.get("w2", "m"), None);
        assert_eq!(handles.get("w1", "m").as_deref(), Some(&7));
    }
}
