//! The workers of the durable job queue (`berth_meta`'s `jobs` table): the one mechanism
//! for background work. Webhook deliveries, replication copies and catalog scans (`catalog`) run here;
//! re-encryption is meant to join as a further job kind.
//!
//! Every replica runs one loop. It looks at the queues it knows (each webhook endpoint,
//! each replication target) every [`JobSettings::poll`], and at once when this process
//! queued something; a queue with a job due, not resting and not leased to another
//! replica, is leased and worked by a task of its own until it has been idle for a moment.
//! The task takes batches of runnable jobs ([`berth_meta::MetaStore::next_jobs`]: in id
//! order, no lane past a job waiting for its retry), runs each lane's jobs in order and
//! up to [`JobSettings::concurrency`] lanes at once, and records the batch's outcomes in
//! one transaction that also renews the lease.
//!
//! A failed job is retried after an exponential backoff with jitter, capped; after
//! [`JobSettings::max_attempts`] it is dead. When every job a batch tried failed (after
//! three failures without a success the batch stops trying), the endpoint is taken to be
//! down: the queue rests until the earliest retry, and no replica calls it meanwhile. So a
//! failing endpoint costs its own queue only: pushes never wait for a delivery (their jobs
//! are rows written with them), and other queues have tasks of their own.
//!
//! Head-of-line bound: a lane waits behind its failing head until that job succeeds or is
//! dead, at most `max_attempts` tries spread over the backoff schedule (with the defaults,
//! 10 tries with at most 1+2+4+...+256 s = 8.5 minutes of waits between them, plus 10
//! receiver timeouts of 10 s). Then the next job of the lane runs. Other lanes of the
//! same endpoint are not held back. While a whole endpoint is down, only the jobs a batch
//! tries (the first few, about `concurrency`, then the queue rests) use up attempts; the
//! others wait untried.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::{Change, Job, JobOutcome, NewJob, QueueBacklog};
use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::watch;

use crate::Registry;
use crate::events::{DeliveryFailure, WEBHOOK_JOB};
use crate::replicate::REPLICATE_JOB;

/// Tuning of the job workers (`[jobs]`).
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// The first retry waits about this long; each further one twice as long.
    pub retry_base: Duration,
    /// No retry waits longer.
    pub retry_max: Duration,
    /// How long a replica holds a queue without renewing; a replica that dies passes its
    /// queues on after this.
    pub lease: Duration,
    /// Lanes of one queue run at once.
    pub concurrency: usize,
    /// How often each replica looks for queues with work (this replica's own jobs wake it
    /// at once).
    pub poll: Duration,
    /// Dead jobs are deleted this long after they died.
    pub keep_dead: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            max_attempts: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            lease: Duration::from_secs(30),
            concurrency: 4,
            poll: Duration::from_millis(500),
            keep_dead: Duration::from_secs(30 * 86_400),
        }
    }
}

impl JobSettings {
    /// How long to wait before attempt `attempt + 1` after `attempt` failures: half the
    /// exponential step plus a random part of the other half, so receivers coming back are
    /// not hit by every queue at once.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.retry_max);
        let half = step / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// Jobs taken per batch.
const BATCH: u64 = 64;
/// A queue with nothing to do stays leased this long (work comes in bursts).
const IDLE_KEEP: Duration = Duration::from_secs(2);
/// Failures in a row, without a success, after which a batch stops trying more jobs.
const CIRCUIT: u32 = 3;
/// How often the backlog gauges are read from the table.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);
/// How often stored webhooks are re-read.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Per-queue counters of this process.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    /// Jobs done (webhooks delivered, manifests copied).
    pub done: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Jobs that used up their attempts.
    pub dead: u64,
}

/// The workers' shared state.
pub(crate) struct JobsState {
    pub settings: JobSettings,
    /// Names this process in queue leases.
    holder: String,
    counters: Mutex<HashMap<String, QueueCounters>>,
    backlog: Mutex<Vec<QueueBacklog>>,
    running: Mutex<HashSet<String>>,
    wake: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    started: AtomicBool,
}

impl JobsState {
    pub fn new(settings: JobSettings) -> JobsState {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        JobsState {
            settings,
            holder: format!(
                "{host}:{}:{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            counters: Mutex::default(),
            backlog: Mutex::default(),
            running: Mutex::default(),
            wake: watch::channel(0).0,
            stop: watch::channel(false).0,
            started: AtomicBool::new(false),
        }
    }

    fn count(&self, queue: &str, f: impl FnOnce(&mut QueueCounters)) {
        f(lock(&self.counters).entry(queue.to_owned()).or_default());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One metric of the job queue, with its labels (`/metrics`).
#[derive(Debug, Clone)]
pub struct JobMetric {
    pub name: &'static str,
    pub help: &'static str,
    pub gauge: bool,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Stops the workers (see [`Registry::start_jobs`]).
pub struct JobsHandle {
    registry: Registry,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl JobsHandle {
    /// Writes the pull events still queued, lets running batches finish and record their
    /// outcomes (up to 10 s), and gives back the queues this process holds, so another
    /// replica, or this one restarted, takes them at once.
    pub async fn shutdown(self) {
        self.registry.stop_pull_writer();
        let _ = self.registry.jobs.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            tracing::warn!("job workers did not stop within 10 s");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&self.registry.jobs.running).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Registry {
    /// Job worker settings (retries, leases); before [`Registry::start_jobs`].
    pub fn with_jobs(mut self, settings: JobSettings) -> Registry {
        self.jobs = Arc::new(JobsState::new(settings));
        self
    }

    /// Starts this process's job workers and the pull event writer, on the current
    /// runtime. Call once, after configuring events and replication.
    pub fn start_jobs(&self) -> JobsHandle {
        let mut tasks = Vec::new();
        if !self.jobs.started.swap(true, Ordering::SeqCst) {
            tasks.push(self.start_pull_writer());
            tasks.push(tokio::spawn(run(self.clone())));
        }
        JobsHandle {
            registry: self.clone(),
            tasks,
        }
    }

    /// Tells the workers that this process queued jobs.
    pub(crate) fn wake_jobs(&self) {
        self.jobs.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The jobs a change causes (webhook deliveries, replication copies), for the
    /// metadata store to write in the change's transaction. `queued` is set when there
    /// are any, so the caller wakes the workers after the commit.
    pub(crate) fn jobs_for<'a>(
        &'a self,
        queued: &'a AtomicBool,
    ) -> impl Fn(&Change<'_>) -> Vec<NewJob> + Sync + 'a {
        move |c: &Change<'_>| {
            if c.actor.name == crate::catalog::CATALOG_ACTOR {
                return Vec::new();
            }
            let mut jobs = self.events.jobs_for(c);
            if let Some(r) = &self.replicator {
                jobs.extend(r.jobs_for(c));
            }
            if let Some(cat) = &self.catalog {
                jobs.extend(cat.jobs_for(c));
            }
            if !jobs.is_empty() {
                queued.store(true, Ordering::Relaxed);
            }
            jobs
        }
    }

    /// Every queue this process knows how to run.
    pub fn known_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .events
            .endpoints()
            .list
            .iter()
            .map(|e| e.queue.clone())
            .collect();
        if let Some(r) = &self.replicator {
            queues.extend(r.queues());
        }
        if self.catalog.is_some() {
            queues.push(crate::catalog::CATALOG_QUEUE.to_owned());
        }
        queues.push(crate::maintenance::MAINTENANCE_QUEUE.to_owned());
        queues.sort();
        queues.dedup();
        queues
    }

    /// This process's counters per queue.
    pub fn job_counters(&self) -> HashMap<String, QueueCounters> {
        lock(&self.jobs.counters).clone()
    }

    /// The job queue's metrics: this process's counters, and gauges of the table that
    /// every replica reads alike.
    pub fn job_metrics(&self) -> Vec<JobMetric> {
        let mut out = Vec::new();
        let counters = self.job_counters();
        let mut queues: Vec<&String> = counters.keys().collect();
        queues.sort();
        let metric = |name, help, gauge, queue: &str, value| JobMetric {
            name,
            help,
            gauge,
            labels: vec![("queue", queue.to_owned())],
            value,
        };
        for q in &queues {
            let c = counters[*q];
            out.push(metric(
                "jobs_done",
                "Jobs this replica finished, by queue (webhook:<endpoint> deliveries, replicate:<target> copies)",
                false,
                q,
                c.done as f64,
            ));
        }
        for q in &queues {
            out.push(metric(
                "jobs_failed",
                "Job attempts that failed on this replica, by queue (each is retried until the job is dead)",
                false,
                q,
                counters[*q].failed as f64,
            ));
        }
        for q in &queues {
            out.push(metric(
                "jobs_dead",
                "Jobs that used up their attempts on this replica, by queue (listed by `berth events dead`)",
                false,
                q,
                counters[*q].dead as f64,
            ));
        }
        let backlog = lock(&self.jobs.backlog).clone();
        let now = berth_meta::now_micros();
        for b in &backlog {
            out.push(metric(
                "jobs_queued",
                "Jobs waiting in the queue (all replicas), by queue",
                true,
                &b.queue,
                b.pending as f64,
            ));
        }
        for b in &backlog {
            out.push(metric(
                "jobs_dead_waiting",
                "Dead jobs kept for redelivery (all replicas), by queue",
                true,
                &b.queue,
                b.dead as f64,
            ));
        }
        for b in &backlog {
            let age = b
                .oldest_pending
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
            out.push(metric(
                "jobs_oldest_age_seconds",
                "Age of the oldest waiting job, by queue",
                true,
                &b.queue,
                age,
            ));
        }
        if let Some(c) = self.catalog_stats() {
            let count = |name, help, v: &std::sync::atomic::AtomicU64, gauge| JobMetric {
                name,
                help,
                gauge,
                labels: Vec::new(),
                value: v.load(Ordering::Relaxed) as f64,
            };
            out.extend([
                count("catalog_images", "Images cataloged on this replica (the catalog queue's depth is jobs_queued{queue=\"catalog\"})", &c.images, false),
                count("catalog_images_partial", "Images cataloged only partly on this replica: a layer over a cap (entries, time) or unreadable", &c.images_partial, false),
                count("catalog_layers_read", "Layers streamed and cataloged on this replica", &c.layers_read, false),
                count("catalog_layers_reused", "Layers whose stored catalog was reused instead of reading them again", &c.layers_reused, false),
                count("catalog_layers_partial", "Layers not read to their end: over a cap (entries, bytes, packages, time) or corrupt", &c.layers_partial, false),
                count("catalog_layer_bytes", "Stored (compressed) bytes of the layers read", &c.layer_bytes, false),
                count("catalog_tar_bytes", "Uncompressed tar bytes of the layers read", &c.tar_bytes, false),
                count("catalog_packages", "Packages found in the images cataloged", &c.packages, false),
                count("catalog_sboms", "SBOM documents pushed as referrers", &c.sboms, false),
                count("catalog_scans_running", "Layer scans running now on this replica", &c.running, true),
            ]);
        }
        {
            let v = self.vuln_stats();
            let count = |name, help, v: &std::sync::atomic::AtomicU64| JobMetric {
                name,
                help,
                gauge: false,
                labels: Vec::new(),
                value: v.load(Ordering::Relaxed) as f64,
            };
            out.extend([
                count("vulnerability_imports", "Advisory imports run by this process", &v.imports),
                count("vulnerability_records_imported", "Advisory records imported by this process", &v.records_imported),
                count("vulnerability_records_skipped", "Advisory records skipped at import (bad JSON, unknown range types or ecosystems, versions that do not parse), each logged with its reason", &v.records_skipped),
                count("vulnerability_rematches", "Full re-matches of every stored package after an import", &v.rematches),
                count("vulnerability_packages_matched", "Distinct packages matched against the advisories (full re-matches and packages found stale when read)", &v.packages_matched),
                count("vulnerability_scans", "Images whose findings were read (scans, the API, verdicts of vulnerability rules)", &v.scans),
                count("vulnerability_pulls_refused", "Pulls refused by an enforcing vulnerability rule on this replica", &v.refused),
            ]);
            out.push(JobMetric {
                name: "vulnerability_rematch_seconds",
                help: "How long the last full re-match took on this replica",
                gauge: true,
                labels: Vec::new(),
                value: v.rematch_millis.load(Ordering::Relaxed) as f64 / 1000.0,
            });
        }
        let s = self.event_stats();
        let plain = |name, help, v: &std::sync::atomic::AtomicU64| JobMetric {
            name,
            help,
            gauge: false,
            labels: Vec::new(),
            value: v.load(Ordering::Relaxed) as f64,
        };
        out.push(plain(
            "webhook_address_refused",
            "Webhook deliveries refused because the receiver resolved to an address the allowlist does not admit",
            &s.address_refused,
        ));
        out.push(plain(
            "webhooks_refused",
            "Webhooks refused at creation for an internal address ([events] allow_networks, allow_hosts)",
            &s.webhooks_refused,
        ));
        out.push(plain(
            "pull_events_dropped",
            "Pull events dropped: the in-memory queue was full, or a batch could not be written",
            &s.pulls_dropped,
        ));
        out.push(plain(
            "policy_refusal_events_withheld",
            "Policy refusals not sent as an event of their own: within a minute of the last event for the same repository, digest and rule on this replica (counted in the next one's count), or not written",
            &s.refusals_withheld,
        ));
        out
    }

    /// Runs one job of any kind.
    async fn run_job(&self, job: &Job) -> Result<(), DeliveryFailure> {
        match job.kind.as_str() {
            WEBHOOK_JOB => self.events.deliver(job).await,
            REPLICATE_JOB => self.run_replication(job).await,
            crate::catalog::CATALOG_JOB => self.run_catalog(job).await,
            crate::maintenance::MAINTENANCE_JOB => self.run_maintenance(job).await,
            other => Err(DeliveryFailure::permanent(format!(
                "no runner for jobs of kind {other:?}"
            ))),
        }
    }
}

/// The loop of one process: finds queues with work and starts a task per queue.
async fn run(registry: Registry) {
    let state = Arc::clone(&registry.jobs);
    let mut wake = state.wake.subscribe();
    let mut stop = state.stop.subscribe();
    let mut tick = tokio::time::interval(state.settings.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_backlog: Option<Instant> = None;
    let mut last_reload = Instant::now();
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = wake.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        if last_reload.elapsed() >= RELOAD_EVERY {
            last_reload = Instant::now();
            if let Err(e) = registry.reload_webhooks().await {
                tracing::warn!(error = %e, "reloading webhooks failed");
            }
        }
        let now = berth_meta::now_micros();
        for queue in registry.known_queues() {
            if lock(&state.running).contains(&queue) {
                continue;
            }
            match registry.meta.queue_ready(&queue, &state.holder, now).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(%queue, error = %e, "looking at a job queue failed");
                    continue;
                }
            }
            let until = now + micros(state.settings.lease);
            match registry.meta.take_queue(&queue, &state.holder, until).await {
                Ok(true) => {
                    lock(&state.running).insert(queue.clone());
                    tokio::spawn(work_queue(registry.clone(), queue));
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(%queue, error = %e, "taking a job queue failed"),
            }
        }
        if last_backlog.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
            last_backlog = Some(Instant::now());
            match registry.meta.job_backlog().await {
                Ok(b) => *lock(&state.backlog) = b,
                Err(e) => tracing::debug!(error = %e, "reading the job backlog failed"),
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(Instant::now());
            let before = now - micros(state.settings.keep_dead);
            match registry.meta.prune_dead_jobs(before, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "pruned old dead jobs"),
                Err(e) => tracing::warn!(error = %e, "pruning dead jobs failed"),
            }
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Takes the queue out of the running set however its task ends.
struct Running {
    state: Arc<JobsState>,
    queue: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.state.running).remove(&self.queue);
    }
}

/// Works one leased queue until it is idle, rests, or the lease is lost.
async fn work_queue(registry: Registry, queue: String) {
    let state = Arc::clone(&registry.jobs);
    let _running = Running {
        state: Arc::clone(&state),
        queue: queue.clone(),
    };
    let meta = registry.meta.clone();
    let lease = micros(state.settings.lease);
    let mut wake = state.wake.subscribe();
    let mut stop = state.stop.subscribe();
    let mut idle_since: Option<Instant> = None;
    let mut renewed = Instant::now();
    loop {
        if *stop.borrow() {
            let _ = meta.release_queue(&queue, &state.holder, 0).await;
            return;
        }
        let now = berth_meta::now_micros();
        let jobs = match meta.next_jobs(&queue, now, BATCH).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "reading jobs failed");
                return;
            }
        };
        if jobs.is_empty() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE_KEEP {
                let _ = meta.release_queue(&queue, &state.holder, 0).await;
                return;
            }
            if renewed.elapsed() >= state.settings.lease / 3 {
                renewed = Instant::now();
                match meta.take_queue(&queue, &state.holder, now + lease).await {
                    Ok(true) => {}
                    _ => return,
                }
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(state.settings.poll.min(IDLE_KEEP)) => {}
            }
            continue;
        }
        idle_since = None;
        let full = jobs.len() as u64 == BATCH;
        let outcomes = run_batch(&registry, &queue, jobs).await;
        let tried = outcomes.len();
        let failed_all = tried > 0
            && outcomes
                .iter()
                .all(|(_, o, _)| !matches!(o, JobOutcome::Done));
        let rest_until = outcomes
            .iter()
            .filter_map(|(_, o, transient)| match o {
                JobOutcome::Retry { at, .. } if *transient => Some(*at),
                _ => None,
            })
            .min();
        let recorded: Vec<(i64, JobOutcome)> =
            outcomes.into_iter().map(|(id, o, _)| (id, o)).collect();
        renewed = Instant::now();
        match meta
            .finish_jobs(
                &queue,
                &state.holder,
                berth_meta::now_micros() + lease,
                &recorded,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%queue, "lost the queue's lease (a batch outlived it); another replica goes on");
                return;
            }
            Err(e) => {
                // The outcomes are lost: those jobs run again (at least once).
                tracing::warn!(%queue, error = %e, "recording job outcomes failed");
                return;
            }
        }
        if failed_all && let Some(until) = rest_until {
            tracing::info!(
                %queue,
                retry_in_secs = (until - berth_meta::now_micros()).max(0) / 1_000_000,
                "every attempt failed: the queue rests until its first retry"
            );
            let _ = meta.release_queue(&queue, &state.holder, until).await;
            return;
        }
        if !full {
            // Let a burst gather, so a busy queue records one batch per pause rather than
            // one transaction per job.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs a batch: lanes in order, several lanes at once, renewing the lease meanwhile.
/// Each outcome comes with whether its failure was transient (the endpoint may be down).
async fn run_batch(
    registry: &Registry,
    queue: &str,
    jobs: Vec<Job>,
) -> Vec<(i64, JobOutcome, bool)> {
    let state = &registry.jobs;
    let mut lanes: Vec<Vec<Job>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for j in jobs {
        match index.get(&j.lane) {
            Some(&i) => lanes[i].push(j),
            None => {
                index.insert(j.lane.clone(), lanes.len());
                lanes.push(vec![j]);
            }
        }
    }
    let failures = AtomicU32::new(0);
    let succeeded = AtomicBool::new(false);
    let started = Instant::now();
    let budget = state.settings.lease / 2;
    let stop = state.stop.subscribe();
    let run_lane = |lane: Vec<Job>| {
        let (failures, succeeded, stop) = (&failures, &succeeded, stop.clone());
        async move {
            let mut out = Vec::new();
            for job in lane {
                let circuit_open = failures.load(Ordering::Relaxed) >= CIRCUIT
                    && !succeeded.load(Ordering::Relaxed);
                if circuit_open || started.elapsed() >= budget || *stop.borrow() {
                    break;
                }
                match registry.run_job(&job).await {
                    Ok(()) => {
                        succeeded.store(true, Ordering::Relaxed);
                        failures.store(0, Ordering::Relaxed);
                        state.count(queue, |c| c.done += 1);
                        if job.kind == REPLICATE_JOB
                            && let Some(s) = registry.replication_stats()
                        {
                            s.replicated.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push((job.id, JobOutcome::Done, false));
                    }
                    Err(f) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        let attempts = job.attempts.saturating_add(1);
                        state.count(queue, |c| c.failed += 1);
                        let error = format!("attempt {attempts}: {}", f.error);
                        tracing::warn!(%queue, job = job.id, lane = %job.lane, error = %f.error, attempts, "job failed");
                        let outcome = if f.permanent || attempts >= state.settings.max_attempts {
                            state.count(queue, |c| c.dead += 1);
                            if job.kind == REPLICATE_JOB
                                && let Some(s) = registry.replication_stats()
                            {
                                s.failed.fetch_add(1, Ordering::Relaxed);
                            }
                            JobOutcome::Dead { error }
                        } else {
                            let wait = state.settings.backoff(attempts).max(
                                f.retry_after
                                    .unwrap_or_default()
                                    .min(state.settings.retry_max),
                            );
                            JobOutcome::Retry {
                                at: berth_meta::now_micros() + micros(wait),
                                error,
                            }
                        };
                        out.push((job.id, outcome, !f.permanent));
                        // The lane waits for this job.
                        break;
                    }
                }
            }
            out
        }
    };
    let work = futures_util::stream::iter(lanes)
        .map(run_lane)
        .buffer_unordered(state.settings.concurrency.max(1))
        .collect::<Vec<_>>();
    let mut work = std::pin::pin!(work);
    let mut renew = tokio::time::interval(state.settings.lease / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done.into_iter().flatten().collect(),
            _ = renew.tick() => {
                let until = berth_meta::now_micros() + micros(state.settings.lease);
                if let Err(e) = registry.meta.take_queue(queue, &state.holder, until).await {
                    tracing::debug!(%queue, error = %e, "renewing a job queue's lease failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let s = JobSettings {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..JobSettings::default()
        };
        for _ in 0..100 {
            let first = s.backoff(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let fourth = s.backoff(4);
            assert!(fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8));
            let late = s.backoff(30);
            assert!(late >= Duration::from_secs(30) && late <= Duration::from_secs(60));
        }
        let spread: HashSet<u128> = (0..50).map(|_| s.backoff(5).as_micros()).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
