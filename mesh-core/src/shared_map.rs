//! A name-keyed map that snapshots share and copy a shard at a time.
//!
//! A snapshot is immutable once published, and the next one is the last one plus a change.
//! With one `Arc<HashMap>` per resource type, changing one endpoint set copied the whole map of
//! every endpoint set: milliseconds at 100,000 clusters, for the most frequent xDS update there
//! is. Here the map is split by key hash into [`SHARDS`] shards, each behind its own `Arc`, so a
//! change copies the shard table (pointers) and the one shard it touches: about 1/256 of the
//! map. Lookups hash the key once more to pick the shard; iteration goes shard by shard.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// How many shards a non-empty map has.
pub const SHARDS: usize = 256;

/// One shard: entries found by the same hash that picked the shard (hashed once per lookup).
type Shard<V> = Arc<HashTable<(Arc<str>, V)>>;

/// A map from names to `V`, cheap to clone and to change one entry of.
#[derive(Debug)]
pub struct SharedMap<V> {
    /// Empty until the first insert, then [`SHARDS`] long.
    shards: Arc<Vec<Shard<V>>>,
    len: usize,
}

impl<V> Clone for SharedMap<V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for SharedMap<V> {
    fn default() -> Self {
        Self {
            shards: Arc::default(),
            len: 0,
        }
    }
}

#[inline]
fn hash(key: &str) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The shard of a hash: bits 40 to 47, which the table uses neither for its buckets (the low
/// bits) nor for its tags (the top seven).
#[inline]
fn shard_of(hash: u64) -> usize {
    ((hash >> 40) as usize) & (SHARDS - 1)
}

impl<V: Clone> SharedMap<V> {
    /// The shard for `hash`, copied first if another snapshot shares it.
    fn shard_mut(&mut self, hash: u64) -> &mut HashTable<(Arc<str>, V)> {
        let shards = Arc::make_mut(&mut self.shards);
        if shards.is_empty() {
            shards.resize_with(SHARDS, Arc::default);
        }
        Arc::make_mut(&mut shards[shard_of(hash)])
    }

    /// Inserts or replaces the entry for `key`.
    pub fn insert(&mut self, key: Arc<str>, value: V) {
        let h = hash(&key);
        let table = self.shard_mut(h);
        match table.find_mut(h, |(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => {
                table.insert_unique(h, (key, value), |(k, _)| hash(k));
                self.len += 1;
            }
        }
    }

    /// Removes the entry for `key`; nothing is copied when there is none.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        let h = hash(key);
        let entry = self.shard_mut(h).find_entry(h, |(k, _)| &**k == key).ok()?;
        let ((_, value), _) = entry.remove();
        self.len -= 1;
        Some(value)
    }
}

impl<V> SharedMap<V> {
    /// The entry for `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let h = hash(key);
        self.shards[shard_of(h)]
            .find(h, |(k, _)| &**k == key)
            .map(|(_, v)| v)
    }

    /// Whether there is an entry for `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, shard by shard (no particular order).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.iter().map(|(_, v)| v))
    }

    /// The keys, shard by shard (no particular order).
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.shards.iter().flat_map(|s| s.iter().map(|(k, _)| k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_one_shard_and_leaves_the_other_snapshot_alone() {
        let mut a = SharedMap::default();
        for i in 0..10_000 {
            a.insert(Arc::from(format!("c{i}")), i);
        }
        assert_eq!(a.len(), 10_000);
        let mut b = a.clone();
        b.insert("c42".into(), -1);
        b.insert("new".into(), 7);
        assert_eq!(b.remove("c7"), Some(7));
        assert_eq!(b.remove("absent"), None);
        assert_eq!((a.get("c42"), b.get("c42")), (Some(&42), Some(&-1)));
        assert_eq!((a.get("c7"), b.get("c7")), (Some(&7), None));
        assert_eq!((a.len(), b.len()), (10_000, 10_000));
        // Only the shards that changed were copied.
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 3, "{shared} shards shared");
        let mut keys: Vec<_> = b.keys().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(keys.len(), 10_000);
        assert_eq!(b.values().filter(|v| **v == -1).count(), 1);
    }

    #[test]
    fn an_empty_map_allocates_nothing_and_finds_nothing() {
        let m: SharedMap<u8> = SharedMap::default();
        assert!(m.shards.is_empty());
        assert_eq!(m.get("x"), None);
        assert_eq!(m.values().count(), 0);
    }
}
