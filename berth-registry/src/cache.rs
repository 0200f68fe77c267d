//! A small read cache in front of the metadata store: tag → digest, digest → manifest,
//! and blob link → size. Manifest GETs and blob HEADs of a rollout hit the same few keys
//! from every node, so they are answered without a database round trip.
//!
//! Writes through this process invalidate exactly. Entries also expire after a short TTL,
//! which bounds how long another replica's write (a tag move, a delete) can go unseen.
//! Tags asked for past half their TTL are read again in the background
//! ([`TtlCache::get_refreshing`]): a hot tag (a rollout, every admission review of a
//! Deployment) never expires under its readers, so none of them waits for the store.
//!
//! An expired entry is not dropped at once: while the metadata store is unreachable it may
//! still be served, marked stale, for as long as the caller allows (`get_stale`).
//! [`TtlCache::expire_all`] (the invalidation listener lost its connection) makes every
//! entry expired without forgetting it; an explicit invalidation forgets it.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

pub struct TtlCache<V> {
    shards: Vec<RwLock<HashMap<String, (V, Instant)>>>,
    hasher: std::collections::hash_map::RandomState,
    ttl: Duration,
    per_shard: usize,
    /// How long an entry is kept at all (at least `ttl`).
    keep: Duration,
    /// Entries stored before this (nanoseconds after `origin`) are expired, whatever
    /// their age.
    expired_before: AtomicU64,
    origin: Instant,
    /// Counts removals (invalidations): a value read from the store before a removal
    /// must not be cached after it.
    removals: AtomicU64,
    /// Keys whose background refresh is under way.
    refreshing: Mutex<HashSet<String>>,
}

impl<V: Clone> TtlCache<V> {
    /// `capacity` is the total number of entries kept; `ttl` zero disables the cache.
    /// Entries are kept (for [`TtlCache::get_stale`]) until `keep` after they were stored,
    /// unless room is needed sooner.
    pub fn with_keep(self, keep: Duration) -> Self {
        TtlCache {
            keep: keep.max(self.ttl),
            ..self
        }
    }

    pub fn new(capacity: usize, ttl: Duration) -> Self {
        TtlCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            ttl,
            per_shard: capacity.div_ceil(SHARDS).max(1),
            keep: ttl,
            expired_before: AtomicU64::new(0),
            origin: Instant::now(),
            removals: AtomicU64::new(0),
            refreshing: Mutex::new(HashSet::new()),
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        let cut = self.expired_before.load(Ordering::Acquire);
        at.elapsed() < self.ttl
            && (cut == 0 || at.saturating_duration_since(self.origin).as_nanos() as u64 >= cut)
    }

    /// Every entry stored until now counts as expired from now on (still there for
    /// [`TtlCache::get_stale`]).
    pub fn expire_all(&self) {
        let now = self.origin.elapsed().as_nanos() as u64;
        // The cut only moves forward; +1 so that an entry stored in this very nanosecond
        // is expired too.
        self.expired_before.fetch_max(now + 1, Ordering::AcqRel);
    }

    /// An entry stored less than `max_age` ago, fresh or expired, and its age: what may be
    /// served, marked stale, while the metadata store cannot be asked.
    pub fn get_stale(&self, key: &str, max_age: Duration) -> Option<(V, Duration)> {
        if self.ttl.is_zero() || max_age.is_zero() {
            return None;
        }
        let shard = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        match shard.get(key) {
            Some((v, at)) if at.elapsed() < max_age => Some((v.clone(), at.elapsed())),
            _ => None,
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<String, (V, Instant)>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    pub fn get(&self, key: &str) -> Option<V> {
        self.get_refreshing(key).map(|(v, _)| v)
    }

    /// [`TtlCache::get`], and whether the entry is past half its TTL: a caller that can
    /// read the value again in the background ([`TtlCache::claim_refresh`]) does so then,
    /// so a key asked for all the time is renewed before it expires and no request waits
    /// for the store because a hot entry's time ran out. The TTL bound is unchanged.
    pub fn get_refreshing(&self, key: &str) -> Option<(V, bool)> {
        if self.ttl.is_zero() {
            return None;
        }
        let shard = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        match shard.get(key) {
            Some((v, at)) if self.fresh(*at) => Some((v.clone(), at.elapsed() >= self.ttl / 2)),
            _ => None,
        }
    }

    /// Claims the background refresh of `key`: true for one caller until
    /// [`TtlCache::end_refresh`], so a hot key is read once per refresh, not once per
    /// request that finds it due.
    pub fn claim_refresh(&self, key: &str) -> bool {
        let mut r = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like the entries: a refresh that never ended cannot grow the set.
        if r.len() >= SHARDS * self.per_shard {
            return false;
        }
        r.insert(key.to_owned())
    }

    pub fn end_refresh(&self, key: &str) {
        self.refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Taken before reading a value from the store, for [`TtlCache::insert_read`].
    pub fn generation(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }

    /// Caches a value read from the store after [`TtlCache::generation`] returned
    /// `generation`, unless something was removed since: the read may predate that
    /// removal (a blob deleted while a pull or a catalog scan read its link), and caching
    /// it would serve the deleted entry for a whole TTL. Any removal counts, not only
    /// this key's: a value not cached now is read again next time.
    pub fn insert_read(&self, generation: u64, key: String, value: V) {
        let mut shard = self.shard(&key).write().unwrap_or_else(|p| p.into_inner());
        // Under the shard lock: a removal either bumped the counter before this check,
        // or removes this entry after it is inserted.
        if self.removals.load(Ordering::Acquire) != generation {
            return;
        }
        self.put(&mut shard, key, value);
    }

    /// A value this process just wrote to the store: counted like a removal, so that a
    /// read (a refresh) that began before the write cannot put the old value back.
    pub fn replace(&self, key: String, value: V) {
        self.removals.fetch_add(1, Ordering::AcqRel);
        self.insert(key, value);
    }

    pub fn insert(&self, key: String, value: V) {
        let mut shard = self.shard(&key).write().unwrap_or_else(|p| p.into_inner());
        self.put(&mut shard, key, value);
    }

    fn put(&self, shard: &mut HashMap<String, (V, Instant)>, key: String, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            // Full: drop entries past keeping, then expired ones, and if that frees nothing,
            // an arbitrary one. Hot keys come straight back; a scan of cold keys cannot
            // grow memory.
            let keep = self.keep;
            shard.retain(|_, (_, at)| at.elapsed() < keep);
            if shard.len() >= self.per_shard {
                let ttl = self.ttl;
                shard.retain(|_, (_, at)| at.elapsed() < ttl);
            }
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(key, (value, Instant::now()));
    }

    pub fn remove(&self, key: &str) {
        // Counted before the entry goes, so a read that raced it is not cached after.
        self.removals.fetch_add(1, Ordering::AcqRel);
        self.shard(key)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Drops every entry whose key starts with `prefix` (all tags of a repository).
    pub fn remove_prefix(&self, prefix: &str) {
        self.removals.fetch_add(1, Ordering::AcqRel);
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
    fn a_read_that_raced_a_removal_is_not_cached() {
        let c: TtlCache<u64> = TtlCache::new(100, Duration::from_secs(60));
        // A reader takes the generation, reads the store (the link is still there)...
        let before = c.generation();
        // ...a delete commits and invalidates...
        c.remove("repo\0sha256:a");
        // ...and the reader's value must not come back for a whole TTL.
        c.insert_read(before, "repo\0sha256:a".into(), 7);
        assert_eq!(c.get("repo\0sha256:a"), None);
        // A read after the removal is cached as usual.
        let after = c.generation();
        c.insert_read(after, "repo\0sha256:a".into(), 7);
        assert_eq!(c.get("repo\0sha256:a"), Some(7));
        let g = c.generation();
        c.remove_prefix("other\0");
        c.insert_read(g, "repo\0sha256:b".into(), 8);
        assert_eq!(c.get("repo\0sha256:b"), None, "any removal counts");
    }

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
    fn due_for_refresh_past_half_the_ttl_and_claimed_once() {
        let c = TtlCache::new(100, Duration::from_millis(200));
        c.insert(key("a", "t"), 1);
        assert_eq!(c.get_refreshing(&key("a", "t")), Some((1, false)));
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(
            c.get_refreshing(&key("a", "t")),
            Some((1, true)),
            "still fresh, due"
        );
        assert!(c.claim_refresh(&key("a", "t")));
        assert!(!c.claim_refresh(&key("a", "t")), "one refresh at a time");
        // The refresh read the store before a write through this process replaced the
        // value: the older read is not cached over it.
        let g = c.generation();
        c.replace(key("a", "t"), 2);
        c.insert_read(g, key("a", "t"), 1);
        c.end_refresh(&key("a", "t"));
        assert_eq!(c.get_refreshing(&key("a", "t")), Some((2, false)));
        assert!(c.claim_refresh(&key("a", "t")));
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

    #[test]
    fn expired_entries_stay_for_stale_reads_within_their_bound() {
        let c = TtlCache::new(100, Duration::from_secs(60)).with_keep(Duration::from_secs(300));
        c.insert(key("a", "t"), 1);
        c.expire_all();
        assert_eq!(
            c.get(&key("a", "t")),
            None,
            "expired by the listener's loss"
        );
        let (v, age) = c
            .get_stale(&key("a", "t"), Duration::from_secs(300))
            .expect("kept for stale reads");
        assert_eq!(v, 1);
        assert!(age < Duration::from_secs(5));
        assert_eq!(c.get_stale(&key("a", "t"), Duration::ZERO), None);
        c.insert(key("a", "t"), 2);
        assert_eq!(
            c.get(&key("a", "t")),
            Some(2),
            "stored after the cut: fresh"
        );
        c.remove(&key("a", "t"));
        assert_eq!(c.get_stale(&key("a", "t"), Duration::from_secs(300)), None);
        let short = TtlCache::new(100, Duration::from_millis(20));
        short.insert(key("b", "t"), 3);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(short.get(&key("b", "t")), None);
        assert_eq!(
            short.get_stale(&key("b", "t"), Duration::from_millis(30)),
            None,
            "older than the stale bound"
        );
    }
}
