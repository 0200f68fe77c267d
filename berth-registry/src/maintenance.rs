//! Dry runs of the garbage collection and of the retention policies, started from the
//! operations page as jobs of the durable queue (kind and queue `maintenance`): whichever
//! replica works the queue runs it with the settings `berth serve` was given, and stores
//! the report in the run's row for every replica's page to show.

use std::time::Instant;

use berth_meta::{Job, MaintenanceRun, NewJob};
use serde::{Deserialize, Serialize};

use crate::access::{Identity, require_admin};
use crate::events::DeliveryFailure;
use crate::gc::GcOptions;
use crate::retention::Housekeeping;
use crate::{Registry, RegistryError, Result};

pub const MAINTENANCE_JOB: &str = "maintenance";
pub const MAINTENANCE_QUEUE: &str = "maintenance";

/// What a dry run uses: the collection's grace and rollback window, the retention
/// policies and cache limits (`[gc]`, `[[retention]]`, each upstream's limits).
#[derive(Debug, Clone, Default)]
pub struct MaintenanceSettings {
    pub gc: GcOptions,
    pub housekeeping: Housekeeping,
}

/// A dry run to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRun {
    Gc,
    Retention,
}

impl DryRun {
    pub fn as_str(self) -> &'static str {
        match self {
            DryRun::Gc => "gc",
            DryRun::Retention => "retention",
        }
    }

    pub fn parse(s: &str) -> Option<DryRun> {
        match s {
            "gc" => Some(DryRun::Gc),
            "retention" => Some(DryRun::Retention),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MaintenanceJob {
    run: i64,
}

/// A garbage collection dry run's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcDryRun {
    pub repositories: usize,
    pub manifests_kept: usize,
    pub manifests_deleted: usize,
    pub blobs_deleted: usize,
    pub bytes_freed: u64,
    pub uploads_purged: usize,
    pub elapsed_ms: u64,
}

/// A retention dry run's findings: counts, and the first few tags it would remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDryRun {
    pub tags_expired: usize,
    pub manifests_evicted: usize,
    pub tags_kept: usize,
    pub bytes: u64,
    /// `repository:tag`, at most [`SAMPLE`].
    pub sample: Vec<String>,
    pub elapsed_ms: u64,
}

/// Tags a retention report names.
pub const SAMPLE: usize = 20;

impl Registry {
    pub fn with_maintenance(mut self, settings: MaintenanceSettings) -> Registry {
        self.maintenance = std::sync::Arc::new(settings);
        self
    }

    /// Queues a dry run (admins only); returns the run's id.
    pub async fn start_dry_run(&self, by: &Identity, task: DryRun) -> Result<i64> {
        require_admin(by)?;
        let job = NewJob {
            kind: MAINTENANCE_JOB.to_owned(),
            queue: MAINTENANCE_QUEUE.to_owned(),
            lane: task.as_str().to_owned(),
            payload: r#"{"run":{id}}"#.to_owned(),
        };
        let id = self
            .meta
            .start_maintenance_run(task.as_str(), &by.name, job)
            .await?;
        self.wake_jobs();
        Ok(id)
    }

    /// The latest runs, newest first (admins only).
    pub async fn dry_runs(&self, by: &Identity, limit: u64) -> Result<Vec<MaintenanceRun>> {
        require_admin(by)?;
        Ok(self.meta.maintenance_runs(limit).await?)
    }

    /// Runs one maintenance job: the dry run it names, its report stored in the run's row.
    /// A run that fails stores its error and is done (a dry run is asked for again, not
    /// retried unseen).
    pub(crate) async fn run_maintenance(&self, job: &Job) -> Result<(), DeliveryFailure> {
        let j: MaintenanceJob = serde_json::from_str(&job.payload)
            .map_err(|e| DeliveryFailure::permanent(format!("unreadable job: {e}")))?;
        let run = self
            .meta
            .maintenance_run(j.run)
            .await
            .map_err(|e| DeliveryFailure::transient(e.to_string()))?
            .ok_or_else(|| DeliveryFailure::permanent(format!("no maintenance run {}", j.run)))?;
        if run.finished_at.is_some() {
            return Ok(());
        }
        let outcome = match DryRun::parse(&run.task) {
            Some(task) => self.dry_run(task).await,
            None => Err(RegistryError::Invalid(format!(
                "unknown task {:?}",
                run.task
            ))),
        };
        let (report, error) = match outcome {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        };
        self.meta
            .finish_maintenance_run(run.id, report.as_deref(), error.as_deref())
            .await
            .map_err(|e| DeliveryFailure::transient(e.to_string()))
    }

    /// A dry run's report, as JSON.
    async fn dry_run(&self, task: DryRun) -> Result<String> {
        let started = Instant::now();
        let json = match task {
            DryRun::Gc => {
                let options = GcOptions {
                    dry_run: true,
                    ..self.maintenance.gc.clone()
                };
                let r = self.collect_garbage(&options, &|_| {}).await?;
                serde_json::to_string(&GcDryRun {
                    repositories: r.repositories,
                    manifests_kept: r.manifests_kept,
                    manifests_deleted: r.manifests_deleted.len(),
                    blobs_deleted: r.blobs_deleted.len(),
                    bytes_freed: r.bytes_freed,
                    uploads_purged: r.uploads_purged,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                })
            }
            DryRun::Retention => {
                let r = self
                    .housekeeping(&self.maintenance.housekeeping, true)
                    .await?;
                serde_json::to_string(&RetentionDryRun {
                    tags_expired: r.expired.len(),
                    manifests_evicted: r.evicted.len(),
                    tags_kept: r.kept,
                    bytes: r.bytes,
                    sample: r
                        .expired
                        .iter()
                        .take(SAMPLE)
                        .map(|e| format!("{}:{}", e.repository, e.tag))
                        .collect(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                })
            }
        };
        json.map_err(|e| RegistryError::Invalid(e.to_string()))
    }
}

/// One job queue as the operations page shows it: the table's backlog (every replica
/// sees the same) and this replica's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStatus {
    /// `webhook:<endpoint>` (event delivery), `replicate:<target>`, `catalog`,
    /// `maintenance`.
    pub queue: String,
    pub pending: u64,
    pub dead: u64,
    /// When the oldest pending job was queued (microseconds).
    pub oldest_pending: Option<i64>,
    pub done_here: u64,
    pub failed_here: u64,
}

impl Registry {
    /// Every queue this replica runs or the table holds jobs of (admins only).
    pub async fn queue_status(&self, by: &Identity) -> Result<Vec<QueueStatus>> {
        require_admin(by)?;
        let counters = self.job_counters();
        let mut out: Vec<QueueStatus> = self
            .known_queues()
            .into_iter()
            .map(|queue| QueueStatus {
                queue,
                ..QueueStatus::default()
            })
            .collect();
        for b in self.meta.job_backlog().await? {
            let i = match out.iter().position(|q| q.queue == b.queue) {
                Some(i) => i,
                None => {
                    out.push(QueueStatus {
                        queue: b.queue.clone(),
                        ..QueueStatus::default()
                    });
                    out.len() - 1
                }
            };
            out[i].pending = b.pending;
            out[i].dead = b.dead;
            out[i].oldest_pending = b.oldest_pending;
        }
        for q in &mut out {
            if let Some(c) = counters.get(&q.queue) {
                q.done_here = c.done;
                q.failed_here = c.failed;
            }
        }
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(out)
    }
}
