//! The defences around password checks: failure counting that delays and never locks out,
//! and the threads that run argon2 away from the runtime's blocking pool.
//!
//! Failures are counted per (user name, client address group) pair and per client address
//! group. Past a free allowance, each further attempt from a pair or group waits a delay
//! that doubles with its failures up to a cap; attempts of one key are spaced by that delay
//! (each reserves the next slot), so concurrency does not multiply an attacker's guesses. A
//! correct password is accepted once its slot comes and resets its pair. Only when a key
//! already has a full cap's worth of attempts waiting is a new attempt refused (429) at
//! once, instead of queueing without bound.
//!
//! Why no per-user counter: it is what let anyone lock a user out by guessing. Guesses
//! spread over many addresses each pay their own pair delay, and all of them share the
//! password threads, where attempts from pairs and addresses that have failed (the
//! suspect lane) wait behind those that have not (the clean lane), get at most half the
//! threads' time, and are refused (503, counted as a failure) when their short queue is
//! full. A correct password can thus meet a 503 only while the threads are saturated, or
//! a 429 only while its own address floods the same user with concurrent guesses.
//!
//! All of this is per process: with N replicas behind a load balancer, a key gets N times
//! the allowance, the spacing holds per replica (so N attempts per delay at most), and
//! each replica has its own password threads.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most keys each map of the throttle holds. A failure needs a password check (a thread's
/// argon2 time), so within a failure window far fewer arrive; the bound is for safety.
const MAX_KEYS: usize = 65_536;

/// How failures turn into delays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThrottlePolicy {
    /// Failures of one (user, address) pair before its attempts are delayed.
    pub pair_free: u32,
    /// Failures from one address (any user) before its attempts are delayed: against
    /// password spraying, where every name is tried a few times.
    pub group_free: u32,
    /// The first delay; it doubles with each further failure.
    pub base: Duration,
    /// The longest delay, and the longest an attempt waits for its slot.
    pub cap: Duration,
    /// Failures are forgotten this long after a key's last one.
    pub window: Duration,
}

impl ThrottlePolicy {
    fn delay(&self, failures: u32, free: u32) -> Duration {
        if failures < free {
            return Duration::ZERO;
        }
        let doublings = (failures - free).min(20);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// When the key's next attempt may start.
    next: Instant,
}

/// What an attempt must do before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    pub wait: Duration,
    /// The pair or the address has failed recently: checked in the suspect lane.
    pub suspect: bool,
}

/// Failure counters of one process.
pub(crate) struct Throttle {
    policy: ThrottlePolicy,
    hasher: std::collections::hash_map::RandomState,
    pairs: HashMap<u64, Entry>,
    groups: HashMap<IpAddr, Entry>,
}

/// The keys one attempt counts under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keys {
    pair: u64,
    group: Option<IpAddr>,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Throttle {
        Throttle {
            policy,
            hasher: Default::default(),
            pairs: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// The keys of a login of `name` from address group `group`. Names are hashed with a
    /// per-process key, so hostile names cost a fixed size and cannot aim at collisions.
    pub fn keys(&self, name: &str, group: Option<IpAddr>) -> Keys {
        let mut h = self.hasher.build_hasher();
        name.hash(&mut h);
        group.hash(&mut h);
        Keys {
            pair: h.finish(),
            group,
        }
    }

    pub fn len(&self) -> usize {
        self.pairs.len() + self.groups.len()
    }

    /// Reserves the attempt's slot, or refuses it with how long until a slot would be
    /// free when the key already has attempts waiting a full cap ahead.
    pub fn admit(&mut self, k: Keys, now: Instant) -> Result<Admission, Duration> {
        let p = self.policy;
        let pair = fresh(&mut self.pairs, &k.pair, now, p.window);
        let group = match k.group {
            Some(g) => fresh(&mut self.groups, &g, now, p.window),
            None => None,
        };
        let pair_delay = pair.map_or(Duration::ZERO, |e| p.delay(e.failures, p.pair_free));
        let group_delay = group.map_or(Duration::ZERO, |e| p.delay(e.failures, p.group_free));
        let mut start = now;
        if !pair_delay.is_zero()
            && let Some(e) = pair
        {
            start = start.max(e.next);
        }
        if !group_delay.is_zero()
            && let Some(e) = group
        {
            start = start.max(e.next);
        }
        let wait = start - now;
        if wait > p.cap {
            return Err(wait);
        }
        if !pair_delay.is_zero()
            && let Some(e) = self.pairs.get_mut(&k.pair)
        {
            e.next = start + pair_delay;
        }
        if !group_delay.is_zero()
            && let Some(g) = k.group
            && let Some(e) = self.groups.get_mut(&g)
        {
            e.next = start + group_delay;
        }
        let suspect = pair.is_some_and(|e| e.failures > 0) || group.is_some_and(|e| e.failures > 0);
        Ok(Admission { wait, suspect })
    }

    /// Counts a wrong password against the pair and the address.
    pub fn fail(&mut self, k: Keys, now: Instant) {
        let w = self.policy.window;
        bump(&mut self.pairs, k.pair, now, w);
        if let Some(g) = k.group {
            bump(&mut self.groups, g, now, w);
        }
    }

    /// A correct password clears its pair; the address keeps its count, so a sprayer
    /// cannot reset it by logging into an account of its own.
    pub fn succeed(&mut self, k: Keys) {
        self.pairs.remove(&k.pair);
    }
}

/// The key's entry if its failures are still within the window; a stale one is removed.
fn fresh<K: Hash + Eq + Copy>(
    map: &mut HashMap<K, Entry>,
    key: &K,
    now: Instant,
    window: Duration,
) -> Option<Entry> {
    let e = *map.get(key)?;
    if now.duration_since(e.last_failure) >= window && e.next <= now {
        map.remove(key);
        return None;
    }
    Some(e)
}

fn bump<K: Hash + Eq + Copy>(map: &mut HashMap<K, Entry>, key: K, now: Instant, window: Duration) {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        map.retain(|_, e| now.duration_since(e.last_failure) < window);
        if map.len() >= MAX_KEYS {
            // Still full of recent failures: forget the older half, keeping the keys that
            // are failing now.
            let mut ages: Vec<Instant> = map.values().map(|e| e.last_failure).collect();
            let mid = ages.len() / 2;
            let (_, cut, _) = ages.select_nth_unstable(mid);
            let cut = *cut;
            map.retain(|_, e| e.last_failure > cut);
        }
    }
    let e = map.entry(key).or_insert(Entry {
        failures: 0,
        last_failure: now,
        next: now,
    });
    if now.duration_since(e.last_failure) >= window {
        e.failures = 0;
    }
    e.failures = e.failures.saturating_add(1);
    e.last_failure = now;
}

/// Counters of the login defences, read by the server's `/metrics`.
#[derive(Debug, Default)]
pub struct LoginStats {
    pub delayed: AtomicU64,
    pub delay_micros: AtomicU64,
    pub throttled: AtomicU64,
    pub busy_clean: AtomicU64,
    pub busy_suspect: AtomicU64,
    pub checks_clean: AtomicU64,
    pub checks_suspect: AtomicU64,
    /// Password checks queued or running now.
    pub in_flight: AtomicU64,
    pub reserved_names_refused: AtomicU64,
}

/// Which queue a password check waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Nothing has failed recently for the pair or the address: served first.
    Clean,
    /// Served when no clean check waits.
    Suspect,
}

type Job = Box<dyn FnOnce() + Send>;

struct Queues {
    clean: VecDeque<Job>,
    suspect: VecDeque<Job>,
    /// Places promised by a [`Slot`] whose job is not queued yet.
    reserved_clean: usize,
    reserved_suspect: usize,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// The threads that hash and verify passwords (argon2, bcrypt). Their own threads, not
/// tokio's blocking pool: that pool (8 threads in `berth serve`) also opens and reads blob
/// files, and a login flood there stalled every pull. At most `threads` checks run at
/// once; waiting ones are bounded per lane: a full clean queue sheds its oldest waiter, a
/// full suspect queue refuses the newcomer.
pub(crate) struct PasswordPool {
    shared: Arc<Shared>,
    clean_cap: usize,
    suspect_cap: usize,
    stats: Arc<LoginStats>,
}

/// The pool is saturated: the check was not queued.
#[derive(Debug)]
pub(crate) struct Busy;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PasswordPool {
    pub fn new(threads: usize, queue: usize, stats: Arc<LoginStats>) -> PasswordPool {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                clean: VecDeque::new(),
                suspect: VecDeque::new(),
                reserved_clean: 0,
                reserved_suspect: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("berth-password-{i}"))
                .spawn(move || worker(&shared));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password check thread");
            }
        }
        PasswordPool {
            shared,
            clean_cap: queue.max(1),
            // Suspects get a short queue: their wait is paid by connections held open, and
            // a refusal counts against them like a failure (see `Access::login`).
            suspect_cap: (queue / 4).max(2),
            stats,
        }
    }

    /// Runs `f` on a password thread and waits (asynchronously) for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        self.reserve(lane)?.run(f).await
    }

    /// A place in `lane`'s queue, taken before the work that prepares a check (reading the
    /// stored hash), so a refused attempt costs nothing beyond this call.
    pub fn reserve(&self, lane: Lane) -> Result<Slot<'_>, Busy> {
        let mut q = lock(&self.shared.queues);
        let q = &mut *q;
        let (queued, reserved, cap, busy) = match lane {
            Lane::Clean => (
                q.clean.len(),
                &mut q.reserved_clean,
                self.clean_cap,
                &self.stats.busy_clean,
            ),
            Lane::Suspect => (
                q.suspect.len(),
                &mut q.reserved_suspect,
                self.suspect_cap,
                &self.stats.busy_suspect,
            ),
        };
        if queued + *reserved >= cap {
            busy.fetch_add(1, Ordering::Relaxed);
            // A full clean queue sheds its oldest waiter instead of the newcomer: clean
            // checks are served newest first, so after a burst (a flood's first attempts
            // from fresh addresses) someone arriving now is next, and the one shed is the
            // one whose client has waited longest.
            if lane == Lane::Clean
                && let Some(oldest) = q.clean.pop_front()
            {
                drop(oldest);
                self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            } else {
                return Err(Busy);
            }
        }
        let reserved = match lane {
            Lane::Clean => &mut q.reserved_clean,
            Lane::Suspect => &mut q.reserved_suspect,
        };
        *reserved += 1;
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            pool: self,
            lane,
            used: false,
        })
    }

    fn unreserve(&self, q: &mut Queues, lane: Lane) {
        let r = match lane {
            Lane::Clean => &mut q.reserved_clean,
            Lane::Suspect => &mut q.reserved_suspect,
        };
        *r = r.saturating_sub(1);
    }
}

/// A reserved place in a lane's queue; dropped unused, it frees the place.
pub(crate) struct Slot<'a> {
    pool: &'a PasswordPool,
    lane: Lane,
    used: bool,
}

impl Slot<'_> {
    /// Queues `f` in the reserved place and waits (asynchronously) for its result.
    pub async fn run<T: Send + 'static>(
        mut self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let pool = self.pool;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stats = Arc::clone(&pool.stats);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        {
            let mut q = lock(&pool.shared.queues);
            pool.unreserve(&mut q, self.lane);
            self.used = true;
            if q.closed {
                pool.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(Busy);
            }
            let checks = match self.lane {
                Lane::Clean => {
                    q.clean.push_back(job);
                    &pool.stats.checks_clean
                }
                Lane::Suspect => {
                    q.suspect.push_back(job);
                    &pool.stats.checks_suspect
                }
            };
            checks.fetch_add(1, Ordering::Relaxed);
        }
        // All: a thread resting from suspect work may not take a suspect job, and must not
        // be the only one told.
        pool.shared.ready.notify_all();
        // A job dropped unrun (the pool closed) drops its sender.
        rx.await.map_err(|_| Busy)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.used {
            let mut q = lock(&self.pool.shared.queues);
            self.pool.unreserve(&mut q, self.lane);
            self.pool.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for PasswordPool {
    fn drop(&mut self) {
        let mut q = lock(&self.shared.queues);
        q.closed = true;
        let dropped = q.clean.len() + q.suspect.len();
        q.clean.clear();
        q.suspect.clear();
        drop(q);
        self.stats
            .in_flight
            .fetch_sub(dropped as u64, Ordering::Relaxed);
        self.shared.ready.notify_all();
    }
}

/// Takes clean checks first, newest first (see `PasswordPool::reserve`); suspect ones in
/// their order. After a suspect check, the thread takes no further suspect
/// check for as long as that one ran (clean ones it takes at once): failing logins get at
/// most half of the password threads' time, so a flood of them leaves CPU to everything
/// else, and its queue overflows into refusals that count against it.
fn worker(shared: &Shared) {
    let mut rest_until: Option<Instant> = None;
    loop {
        let (job, suspect) = {
            let mut q = lock(&shared.queues);
            loop {
                if q.closed {
                    return;
                }
                if let Some(j) = q.clean.pop_back() {
                    break (j, false);
                }
                if !q.suspect.is_empty() {
                    let now = Instant::now();
                    match rest_until {
                        Some(t) if t > now => {
                            q = shared
                                .ready
                                .wait_timeout(q, t - now)
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .0;
                            continue;
                        }
                        _ => {}
                    }
                    if let Some(j) = q.suspect.pop_front() {
                        break (j, true);
                    }
                }
                q = shared
                    .ready
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let started = Instant::now();
        job();
        rest_until = suspect.then(|| Instant::now() + started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            pair_free: 3,
            group_free: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            window: Duration::from_secs(300),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("address"))
    }

    #[test]
    fn failures_delay_a_pair_and_never_refuse_one_attempt_at_a_time() {
        // Only the pair's count matters here; the address's has its own test.
        let mut t = Throttle::new(ThrottlePolicy {
            group_free: 1000,
            ..policy()
        });
        let now = Instant::now();
        let k = t.keys("alice", ip("192.0.2.1"));
        for _ in 0..3 {
            assert_eq!(t.admit(k, now).expect("free").wait, Duration::ZERO);
            t.fail(k, now);
        }
        // The fourth attempt is free to start now but books the next slot 100 ms on.
        let a = t.admit(k, now).expect("admitted");
        assert_eq!(a.wait, Duration::ZERO);
        assert!(a.suspect);
        t.fail(k, now);
        let a = t.admit(k, now).expect("admitted");
        assert_eq!(a.wait, Duration::from_millis(100));
        // However many failures, one attempt waits at most the cap.
        let mut at = now;
        for _ in 0..40 {
            t.fail(k, at);
            let a = t
                .admit(k, at)
                .expect("sequential attempts are never refused");
            assert!(a.wait <= Duration::from_secs(2), "{:?}", a.wait);
            at += a.wait;
        }
        // The same user from another address is not slowed, and is not suspect (no
        // per-user count: that is what let anyone lock a user out).
        let other = t.keys("alice", ip("192.0.2.2"));
        assert_eq!(
            t.admit(other, at),
            Ok(Admission {
                wait: Duration::ZERO,
                suspect: false
            })
        );
        // A success clears the pair.
        t.succeed(k);
        assert_eq!(t.admit(k, at).expect("clear").wait, Duration::ZERO);
    }

    #[test]
    fn concurrent_attempts_queue_one_cap_deep_then_are_refused() {
        let mut t = Throttle::new(policy());
        let now = Instant::now();
        let k = t.keys("alice", ip("192.0.2.1"));
        for _ in 0..20 {
            t.fail(k, now);
        }
        // At the cap, one attempt books the slot 2 s ahead; the next would wait 2 s (the
        // cap, allowed); the one after more than the cap.
        assert_eq!(t.admit(k, now).expect("first").wait, Duration::ZERO);
        assert_eq!(
            t.admit(k, now).expect("second").wait,
            Duration::from_secs(2)
        );
        assert_eq!(t.admit(k, now), Err(Duration::from_secs(4)));
    }

    #[test]
    fn spraying_from_one_address_is_delayed_per_address() {
        let mut t = Throttle::new(policy());
        let now = Instant::now();
        for i in 0..10 {
            let k = t.keys(&format!("user{i}"), ip("2001:db8::"));
            assert_eq!(t.admit(k, now).expect("free").wait, Duration::ZERO);
            t.fail(k, now);
        }
        let fresh_name = t.keys("someone-else", ip("2001:db8::"));
        let a = t.admit(fresh_name, now).expect("admitted");
        assert!(a.suspect, "the address has failed");
        let again = t.keys("yet-another", ip("2001:db8::"));
        assert_eq!(
            t.admit(again, now).expect("admitted").wait,
            Duration::from_millis(100)
        );
        // Failures are forgotten after the window.
        let later = now + Duration::from_secs(301);
        assert_eq!(
            t.admit(again, later),
            Ok(Admission {
                wait: Duration::ZERO,
                suspect: false
            })
        );
    }

    #[test]
    fn memory_stays_bounded_whatever_the_names() {
        let mut t = Throttle::new(policy());
        let now = Instant::now();
        for i in 0..(MAX_KEYS + 10_000) {
            let k = t.keys(&format!("name-{i}"), None);
            t.fail(k, now + Duration::from_micros(i as u64));
        }
        assert!(t.len() <= MAX_KEYS, "{}", t.len());
    }

    #[tokio::test]
    async fn clean_checks_go_first_newest_first_and_full_queues_shed() {
        let stats = Arc::new(LoginStats::default());
        // One thread; queues of two (clean: 2, suspect: max(2 / 4, 2)).
        let pool = Arc::new(PasswordPool::new(1, 2, Arc::clone(&stats)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        // Occupy the one thread until told.
        let blocker = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(Lane::Suspect, move || {
                    let _ = hold_rx.recv();
                })
                .await
            })
        };
        while stats.in_flight.load(Ordering::Relaxed) != 1 || queued(&pool) != 0 {
            tokio::task::yield_now().await;
        }
        let mut waiting = Vec::new();
        for (n, (lane, label)) in [
            (Lane::Suspect, "s1"),
            (Lane::Suspect, "s2"),
            (Lane::Clean, "c1"),
            (Lane::Clean, "c2"),
            // The clean queue is full: c3 gets a place, and c1, the oldest, is shed.
            (Lane::Clean, "c3"),
        ]
        .into_iter()
        .enumerate()
        {
            let p = Arc::clone(&pool);
            let order = Arc::clone(&order);
            waiting.push((
                label,
                tokio::spawn(async move { p.run(lane, move || lock(&order).push(label)).await }),
            ));
            // Queued (the blocker's check counts too).
            while stats.checks_clean.load(Ordering::Relaxed)
                + stats.checks_suspect.load(Ordering::Relaxed)
                != n as u64 + 2
            {
                tokio::task::yield_now().await;
            }
        }
        // The suspect queue refuses the newcomer, whether it runs or reserves.
        assert!(pool.run(Lane::Suspect, || ()).await.is_err());
        assert!(pool.reserve(Lane::Suspect).is_err());
        assert_eq!(stats.busy_suspect.load(Ordering::Relaxed), 2);
        assert_eq!(stats.busy_clean.load(Ordering::Relaxed), 1);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 5);
        hold_tx.send(()).expect("release");
        blocker.await.expect("task").expect("ran");
        for (label, w) in waiting {
            let ran = w.await.expect("task");
            assert_eq!(ran.is_ok(), label != "c1", "{label}");
        }
        assert_eq!(*lock(&order), ["c3", "c2", "s1", "s2"]);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
        // A reservation dropped unused frees its place.
        let r = pool.reserve(Lane::Suspect).expect("place");
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 1);
        drop(r);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    }

    fn queued(pool: &PasswordPool) -> usize {
        let q = lock(&pool.shared.queues);
        q.clean.len() + q.suspect.len()
    }
}
