//! The asynchronous half of the audit log: pulls, logins, token issues and refused
//! requests. These change nothing, so they need not share a transaction with anything;
//! they are queued and written in batches so a busy registry pays one insert per batch,
//! not per pull.
//!
//! Records are not equal, and an attacker must not be able to push out the ones that
//! matter by producing the ones that do not:
//! * **Refusals** (denied requests, failed logins; any outcome but `ok`) and anonymous
//!   token issues are counted per client address (IPv6 by /64), action, outcome and name
//!   in a bounded table. The first of each key in a [`WINDOW`] is written at once, as it
//!   was; the rest are summed into one row per key at the end of the window, with a few of
//!   the names and repositories they used. Random user or repository names cannot grow
//!   the table: an address gets keys of its own for four names per window and shares one
//!   for the rest, and past [`MAX_KEYS`] keys everything shares one overflow row per
//!   action and outcome. So a window writes at most about `2 × MAX_KEYS` refusal rows,
//!   whatever the flood.
//! * **Records of authenticated callers** (their pulls, their tokens) have a queue of
//!   their own, drained first.
//! * **Anonymous pulls** have a smaller queue, drained when the first is empty.
//!
//! A full queue drops the record and counts it (`berth_audit_records_dropped`), never
//! silently; refusals cannot fill either queue.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_meta::{AuditRecord, MetaStore};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

const QUEUE: usize = 8192;
const ANONYMOUS_QUEUE: usize = 2048;
const BATCH: usize = 512;
/// How long a lone record may wait for company before it is written.
const LINGER: Duration = Duration::from_millis(200);
/// Refusals are summed over this long before they are written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct (address, action, outcome) keys summed per window; the rest share one row.
pub const MAX_KEYS: usize = 1024;
/// Names and repositories kept as examples in a summed row.
const SAMPLES: usize = 4;
/// The name the audit log gives callers without credentials (reserved: no user may take it).
pub const ANONYMOUS: &str = "anonymous";

/// The audit log's counters (see [`crate::metrics`]).
#[derive(Clone, Default)]
pub struct AuditCounters {
    pub written: Counter,
    pub dropped: Counter,
    /// Refusals folded into a summed row instead of a row each.
    pub refusals_summed: Counter,
}

#[derive(Clone)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<AuditRecord>>,
    anonymous_tx: Option<mpsc::Sender<AuditRecord>>,
    refusals: Arc<Mutex<Refusals>>,
    counters: AuditCounters,
    stop: Arc<Notify>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl AuditSink {
    /// Starts the writer task on the current runtime; outside one (benchmarks building a
    /// state by hand) records are only counted as dropped.
    pub fn start(meta: MetaStore, counters: AuditCounters) -> AuditSink {
        AuditSink::start_with_window(meta, counters, WINDOW)
    }

    /// [`AuditSink::start`] with another summing window (tests).
    pub fn start_with_window(
        meta: MetaStore,
        counters: AuditCounters,
        window: Duration,
    ) -> AuditSink {
        let stop = Arc::new(Notify::new());
        let refusals = Arc::new(Mutex::new(Refusals::default()));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return AuditSink {
                tx: None,
                anonymous_tx: None,
                refusals,
                counters,
                stop,
                task: Arc::default(),
            };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (anonymous_tx, anonymous_rx) = mpsc::channel(ANONYMOUS_QUEUE);
        let task = rt.spawn(
            Writer {
                meta,
                rx,
                anonymous_rx,
                refusals: refusals.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
                window,
            }
            .run(),
        );
        AuditSink {
            tx: Some(tx),
            anonymous_tx: Some(anonymous_tx),
            refusals,
            counters,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Writes what is queued and summed, and stops the writer; called on shutdown before
    /// the metadata store closes, so the last pulls and logins are not lost.
    pub async fn flush(&self) {
        self.stop.notify_one();
        let task = lock(&self.task).take();
        if let Some(t) = task
            && tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
        {
            tracing::warn!("audit queue not drained within 10 s");
        }
    }

    pub fn record(&self, r: AuditRecord) {
        let anonymous = r.actor == ANONYMOUS;
        // Admission refusals come from the API server, already thinned to one row per
        // distinct refusal a minute (`berth_registry::admission`); summing them per
        // address here would keep only samples of which container and rule refused.
        let admission = r.action.starts_with("admission.");
        let r = if !admission && (r.outcome != "ok" || (anonymous && r.action == "token")) {
            match lock(&self.refusals).add(r) {
                Some(first) => first,
                None => return,
            }
        } else {
            r
        };
        let tx = if anonymous {
            &self.anonymous_tx
        } else {
            &self.tx
        };
        let queued = tx.as_ref().is_some_and(|tx| tx.try_send(r).is_ok());
        if !queued {
            self.counters.dropped.inc();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The client's address group; `None` for records without one, and for the overflow.
    source: Option<IpAddr>,
    action: String,
    outcome: String,
    /// The name refused, for the first few names an address uses; `None` for the rest.
    actor: Option<String>,
}

/// Refusals of one key within the window, after the first (which is written at once).
struct Summed {
    /// The first refusal, as recorded: the summed row is written in its image.
    first: AuditRecord,
    /// Refusals after the first.
    more: u64,
    last_at: i64,
    /// A few of the names and repositories used, with how often each was.
    actors: BTreeMap<String, u64>,
    other_actors: u64,
    repositories: BTreeMap<String, u64>,
    other_repositories: u64,
    /// Distinct address groups folded into the overflow row.
    sources: u64,
}

impl Summed {
    fn new(first: AuditRecord) -> Summed {
        Summed {
            more: 0,
            last_at: first.at,
            actors: BTreeMap::new(),
            other_actors: 0,
            repositories: BTreeMap::new(),
            other_repositories: 0,
            sources: 0,
            first,
        }
    }

    fn add(&mut self, r: &AuditRecord) {
        self.more += 1;
        self.last_at = self.last_at.max(r.at);
        sample(&mut self.actors, &mut self.other_actors, &r.actor);
        if let Some(repo) = &r.repository {
            sample(&mut self.repositories, &mut self.other_repositories, repo);
        }
    }

    /// The row summing the refusals after the first, if there were any.
    fn into_record(self, overflow: bool) -> Option<AuditRecord> {
        if self.more == 0 {
            return None;
        }
        let mut row = self.first;
        let first_at = row.at;
        row.at = self.last_at;
        let single_actor = self.actors.len() == 1 && self.other_actors == 0;
        let single_repo = self.repositories.len() == 1 && self.other_repositories == 0;
        let mut detail = format!(
            "{} more since {}",
            self.more,
            berth_oci::time::rfc3339_micros(first_at)
        );
        if overflow {
            detail.push_str(&format!(" from {} more addresses", self.sources));
            row.source = None;
        }
        match self.actors.keys().next() {
            Some(a) if single_actor => row.actor = a.clone(),
            _ => {
                detail.push_str(&format!(
                    "; names: {}",
                    samples(&self.actors, self.other_actors)
                ));
                row.actor = "*".into();
            }
        }
        match self.repositories.keys().next() {
            Some(r) if single_repo && row.repository.as_ref() != Some(r) => {
                row.repository = Some(r.clone());
                row.tenant = Some(berth_auth::tenant_of(r).to_owned());
                row.target = None;
            }
            None => {}
            Some(_) if single_repo => {}
            Some(_) => {
                detail.push_str(&format!(
                    "; repositories: {}",
                    samples(&self.repositories, self.other_repositories)
                ));
                row.repository = None;
                row.tenant = None;
                row.target = None;
            }
        }
        if let Some(d) = &row.detail {
            detail.push_str(&format!("; first: {d}"));
        }
        row.detail = Some(detail);
        Some(row)
    }
}

fn sample(kept: &mut BTreeMap<String, u64>, other: &mut u64, name: &str) {
    let name: String = name.chars().take(64).collect();
    if let Some(n) = kept.get_mut(&name) {
        *n += 1;
    } else if kept.len() < SAMPLES {
        kept.insert(name, 1);
    } else {
        *other += 1;
    }
}

fn samples(kept: &BTreeMap<String, u64>, other: u64) -> String {
    let mut parts: Vec<String> = kept.iter().map(|(n, c)| format!("{n} x{c}")).collect();
    if other > 0 {
        parts.push(format!("{other} others"));
    }
    parts.join(", ")
}

/// The refusals of the current window, bounded by [`MAX_KEYS`] whatever arrives.
#[derive(Default)]
struct Refusals {
    keys: HashMap<Key, Summed>,
    /// How many names each (address, action, outcome) has keys of its own for.
    named: HashMap<(Option<IpAddr>, String, String), usize>,
    overflow: HashMap<(String, String), Summed>,
}

/// Names an address gets rows of its own for, per window; further names share one.
const NAMES_PER_SOURCE: usize = 4;

impl Refusals {
    /// Counts `r`; returns it back when it is the first of its key in this window, to be
    /// written at once (so a lone refusal is in the log as soon as any other record).
    fn add(&mut self, r: AuditRecord) -> Option<AuditRecord> {
        let source = r
            .source
            .as_deref()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .map(crate::client::group);
        let mut key = Key {
            source,
            action: r.action.clone(),
            outcome: r.outcome.clone(),
            actor: Some(r.actor.chars().take(64).collect()),
        };
        if let Some(s) = self.keys.get_mut(&key) {
            s.add(&r);
            return None;
        }
        let family = (source, r.action.clone(), r.outcome.clone());
        let names = self.named.get(&family).copied().unwrap_or(0);
        if names >= NAMES_PER_SOURCE {
            key.actor = None;
            if let Some(s) = self.keys.get_mut(&key) {
                s.add(&r);
                return None;
            }
        }
        if self.keys.len() < MAX_KEYS {
            if key.actor.is_some() {
                self.named.insert(family, names + 1);
            }
            self.keys.insert(key, Summed::new(r.clone()));
            return Some(r);
        }
        // Action and outcome come from Berth's own small vocabulary, so this map stays as
        // small as that vocabulary.
        match self.overflow.entry((key.action, key.outcome)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let s = e.get_mut();
                s.add(&r);
                s.sources += 1;
                None
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Summed::new(r.clone()));
                Some(r)
            }
        }
    }

    /// The summed rows of the window that ends now, and how many refusals they fold away.
    fn take(&mut self) -> (Vec<AuditRecord>, u64) {
        let mut rows = Vec::new();
        let mut folded = 0;
        self.named.clear();
        for (_, s) in self.keys.drain() {
            folded += s.more.saturating_sub(1);
            rows.extend(s.into_record(false));
        }
        for (_, s) in self.overflow.drain() {
            folded += s.more.saturating_sub(1);
            rows.extend(s.into_record(true));
        }
        rows.sort_by_key(|r| r.at);
        (rows, folded)
    }
}

struct Writer {
    meta: MetaStore,
    rx: mpsc::Receiver<AuditRecord>,
    anonymous_rx: mpsc::Receiver<AuditRecord>,
    refusals: Arc<Mutex<Refusals>>,
    counters: AuditCounters,
    stop: Arc<Notify>,
    window: Duration,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut stopping = false;
        loop {
            if stopping {
                // Refuse new records, then write everything already queued or summed.
                self.rx.close();
                self.anonymous_rx.close();
                while let Some(r) = self.rx.recv().await {
                    batch.push(r);
                    self.write_if_full(&mut batch).await;
                }
                while let Some(r) = self.anonymous_rx.recv().await {
                    batch.push(r);
                    self.write_if_full(&mut batch).await;
                }
                self.take_refusals(&mut batch);
                self.write(&mut batch).await;
                return;
            }
            tokio::select! {
                biased;
                () = self.stop.notified() => {
                    stopping = true;
                    continue;
                }
                r = self.rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => { stopping = true; continue; }
                },
                _ = tick.tick() => {
                    self.take_refusals(&mut batch);
                    self.write(&mut batch).await;
                    continue;
                }
                r = self.anonymous_rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => { stopping = true; continue; }
                },
            }
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                // Authenticated callers' records first.
                let next = match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(_) => tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            biased;
                            r = self.rx.recv() => r,
                            r = self.anonymous_rx.recv() => r,
                        }
                    })
                    .await
                    .unwrap_or_default(),
                };
                match next {
                    Some(r) => batch.push(r),
                    None => break,
                }
            }
            self.write(&mut batch).await;
        }
    }

    fn take_refusals(&self, batch: &mut Vec<AuditRecord>) {
        let (rows, folded) = lock(&self.refusals).take();
        self.counters.refusals_summed.inc_by(folded);
        batch.extend(rows);
    }

    async fn write_if_full(&self, batch: &mut Vec<AuditRecord>) {
        if batch.len() >= BATCH {
            self.write(batch).await;
        }
    }

    async fn write(&self, batch: &mut Vec<AuditRecord>) {
        if batch.is_empty() {
            return;
        }
        match self.meta.append_audit(batch).await {
            Ok(()) => {
                self.counters.written.inc_by(batch.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "audit batch not written");
                self.counters.dropped.inc_by(batch.len() as u64);
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(source: &str, actor: &str, repo: &str, at: i64) -> AuditRecord {
        AuditRecord {
            at,
            actor: actor.into(),
            source: Some(source.into()),
            action: "access".into(),
            repository: Some(repo.into()),
            tenant: Some("t".into()),
            outcome: "denied".into(),
            detail: Some("GET pull".into()),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn a_lone_refusal_is_written_at_once_and_not_again() {
        let mut r = Refusals::default();
        let one = refusal("192.0.2.1", "bob", "t/app", 5);
        let first = r.add(one.clone()).expect("the first is written at once");
        assert_eq!(first.actor, "bob");
        assert_eq!(first.detail, one.detail);
        let (rows, folded) = r.take();
        assert!(rows.is_empty(), "nothing more to say");
        assert_eq!(folded, 0);
        // A new window starts afresh.
        assert!(r.add(one).is_some());
    }

    #[test]
    fn repeated_refusals_of_one_name_are_one_row_more() {
        let mut r = Refusals::default();
        assert!(r.add(refusal("192.0.2.1", "bob", "t/app", 1)).is_some());
        for i in 2..=50 {
            assert!(r.add(refusal("192.0.2.1", "bob", "t/app", i)).is_none());
        }
        let (rows, folded) = r.take();
        assert_eq!(rows.len(), 1);
        assert_eq!(folded, 48);
        assert_eq!(rows[0].actor, "bob");
        assert_eq!(rows[0].repository.as_deref(), Some("t/app"));
        assert_eq!(rows[0].at, 50);
        let d = rows[0].detail.as_deref().unwrap_or_default();
        assert!(d.starts_with("49 more since "), "{d}");
    }

    #[test]
    fn a_burst_with_random_names_is_a_few_rows_per_address() {
        let mut r = Refusals::default();
        let mut at_once = 0;
        for i in 0..10_000 {
            let src = if i % 2 == 0 {
                "192.0.2.1"
            } else {
                "2001:db8::1"
            };
            // IPv6 addresses within one /64 are one client.
            let src = if i % 4 == 1 { "2001:db8::ffff" } else { src };
            if r.add(refusal(src, &format!("u{i}"), &format!("t/r{i}"), i))
                .is_some()
            {
                at_once += 1;
            }
        }
        // Per address: four names of their own, then one shared key.
        assert_eq!(at_once, 2 * (NAMES_PER_SOURCE + 1));
        let (rows, _) = r.take();
        assert_eq!(rows.len(), 2, "only the shared keys saw more than one");
        for row in &rows {
            assert_eq!(row.actor, "*");
            assert_eq!(row.repository, None);
            let d = row.detail.as_deref().unwrap_or_default();
            assert!(d.starts_with("4995 more since "), "{d}");
            assert!(d.contains("4991 others"), "{d}");
        }
    }

    #[test]
    fn the_table_stays_bounded_whatever_the_addresses() {
        let mut r = Refusals::default();
        for i in 0..(MAX_KEYS as u32 + 5000) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            r.add(refusal(&ip.to_string(), "x", "t/app", i64::from(i)));
        }
        assert_eq!(r.keys.len(), MAX_KEYS);
        assert_eq!(r.overflow.len(), 1);
        assert!(r.named.len() <= MAX_KEYS);
        let (rows, _) = r.take();
        assert_eq!(rows.len(), 1, "only the overflow saw more than one");
        let d = rows[0].detail.as_deref().unwrap_or_default();
        assert!(d.starts_with("4999 more") && d.contains("from 4999 more addresses"));
        assert_eq!(rows[0].source, None);
        // One name and one repository throughout: kept as they were.
        assert_eq!(rows[0].actor, "x");
        assert_eq!(rows[0].repository.as_deref(), Some("t/app"));
    }
}
