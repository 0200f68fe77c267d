//! A small read cache in front of the metadata store: tag → digest, digest → manifest,
//! and blob link → size. Manifest GETs and blob HEADs of a rollout hit the same few keys
//! from every node, so they are answered without a database round trip.
//!
//! Writes through this process invalidate exactly. Entries also expire after a short TTL,
//! which bounds how long another replica's write (a tag move, a delete) can go unseen.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

pub struct TtlCache<V> {
    shards: Vec<RwLock<HashMap<String, (V, Instant)>>>,
    hasher: std::collections::hash_map::RandomState,
    ttl: Duration,
    per_shard: usize,
}

impl<V: Clone> TtlCache<V> {
    /// `capacity` is the total number of entries kept; `ttl` zero disables the cache.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        TtlCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            ttl,
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<String, (V, Instant)>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    pub fn get(&self, key: &str) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        let shard = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        match shard.get(key) {
            Some((v, at)) if at.elapsed() < self.ttl => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, key: String, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut shard = self.shard(&key).write().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            // Full: drop expired entries, and if that frees nothing, an arbitrary one. Hot
            // keys come straight back; a scan of cold keys cannot grow memory.
            let ttl = self.ttl;
            shard.retain(|_, (_, at)| at.elapsed() < ttl);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(key, (value, Instant::now()));
    }

    pub fn remove(&self, key: &str) {
        self.shard(key)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Drops every entry whose key starts with `prefix` (all tags of a repository).
    pub fn remove_prefix(&self, prefix: &str) {
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| !k.starts_with(prefix));
        }
    }
}

/// Joins a repository and a tag or digest into a cache key. A NUL cannot occur in either.
pub fn key(repo: &str, item: &str) -> String {
    let mut k = String::with_capacity(repo.len() + item.len() + 1);
    k.push_str(repo);
    k.push('\0');
    k.push_str(item);
    k
}

/// The prefix shared by all keys of a repository.
pub fn repo_prefix(repo: &str) -> String {
    key(repo, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_invalidates() {
        let c = TtlCache::new(100, Duration::from_millis(50));
        c.insert(key("a", "t"), 1);
        c.insert(key("ab", "t"), 2);
        assert_eq!(c.get(&key("a", "t")), Some(1));
        c.remove_prefix(&repo_prefix("a"));
        assert_eq!(c.get(&key("a", "t")), None);
        assert_eq!(
            c.get(&key("ab", "t")),
            Some(2),
            "prefix is exact per repository"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&key("ab", "t")), None, "expired");
    }

    #[test]
    fn stays_bounded() {
        let c = TtlCache::new(32, Duration::from_secs(60));
        for i in 0..10_000 {
            c.insert(format!("k{i}"), i);
        }
        let total: usize = c
            .shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= 32, "{total}");
        assert_eq!(TtlCache::<u8>::new(10, Duration::ZERO).get("x"), None);
    }
}
