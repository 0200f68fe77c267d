//! The durable job queue: every background job (webhook deliveries, replication copies;
//! later scans and re-encryption) is a row of `jobs`, so a crash or a restart loses none
//! and any replica can run it.
//!
//! **Outbox.** A change that causes jobs (a manifest push, a tag rollback, a delete)
//! writes them in its own transaction: the registry's [`crate::TagGuard::jobs`] hook turns
//! the [`Change`] the transaction made into [`NewJob`]s, which are inserted before it
//! commits. A committed change therefore always has its jobs, and a rolled-back one (a
//! refused push, a conflict) never does. Records that change nothing (pulls) come in
//! batches through [`MetaStore::enqueue_jobs`], one insert per batch.
//!
//! **Queues and lanes.** A job belongs to a queue (one webhook endpoint, one replication
//! target) and a lane within it (a repository). One replica at a time works a queue: it
//! holds the queue's lease in `job_queues` ([`MetaStore::take_queue`]), renewed with every
//! batch it finishes, so a replica that dies passes the queue on when its lease expires.
//! Within a queue, [`MetaStore::next_jobs`] hands out a job only when no earlier job of its
//! lane is waiting for a retry, so each lane runs in id order while other lanes go on.
//! Jobs are not marked "running": the lease says who runs them, and a replica that dies
//! mid-batch leaves them pending for the next holder (so delivery is at least once).
//!
//! Why not `FOR UPDATE SKIP LOCKED` claims per job: they spread one endpoint's jobs over
//! every replica, which breaks the order per lane and calls one endpoint from several
//! places at once. A lease per queue gives both properties with one conditional upsert of
//! one row, which behaves the same on SQLite and PostgreSQL.
//!
//! A finished job is deleted. One whose attempts are used up becomes `dead`: it stays,
//! listed and redeliverable, until pruned.

use sqlx::{AssertSqlSafe, Row, Transaction};

use crate::{Actor, MetaStore, Result, now_micros, to_u64};

/// A job to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// What runs it: `webhook`, `replicate`, ...
    pub kind: String,
    /// Worked by one replica at a time.
    pub queue: String,
    /// Run in order with the other jobs of the same lane of the queue.
    pub lane: String,
    /// JSON for the runner.
    pub payload: String,
}

/// What a write transaction changed, for the hook that turns it into jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A manifest was stored (possibly again), with its tag if it was pushed by tag.
    Push,
    /// A tag moved back to an earlier manifest.
    Rollback,
    /// A manifest was deleted, and the tags on it.
    DeleteManifest,
    /// A tag was deleted.
    DeleteTag,
}

#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub kind: ChangeKind,
    pub repo: &'a str,
    /// The manifest pushed, deleted or rolled back to; for a tag deletion, the manifest
    /// the tag named.
    pub digest: &'a str,
    /// The manifest's media type and size, when the change has them at hand (push,
    /// rollback).
    pub media_type: Option<&'a str>,
    pub size: Option<u64>,
    pub tag: Option<&'a str>,
    /// The manifest the tag named before, when the change moved an existing tag.
    pub previous: Option<&'a str>,
    /// The tags a manifest deletion took with it.
    pub tags: &'a [String],
    pub actor: &'a Actor,
    /// Microseconds since the epoch.
    pub at: i64,
}

/// Turns a change into the jobs it causes (none, most of the time).
pub type JobsHook<'a> = dyn Fn(&Change<'_>) -> Vec<NewJob> + Sync + 'a;

pub(crate) fn no_jobs(_: &Change<'_>) -> Vec<NewJob> {
    Vec::new()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<JobState> {
        match s {
            "pending" => Some(JobState::Pending),
            "dead" => Some(JobState::Dead),
            _ => None,
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub lane: String,
    pub payload: String,
    pub state: JobState,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub created_at: i64,
    /// When it last failed (or was queued).
    pub updated_at: i64,
    pub last_error: Option<String>,
}

/// What became of one job a worker ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done: the job is deleted.
    Done,
    /// Failed; try again at this time.
    Retry { at: i64, error: String },
    /// Failed for the last time: kept as `dead`.
    Dead { error: String },
}

/// Which jobs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub state: Option<JobState>,
    /// Only these queues (a tenant's webhooks); `None`: every queue.
    pub queues: Option<Vec<String>>,
    /// Only ids below this (paging newest first).
    pub before_id: Option<i64>,
    pub limit: u64,
}

/// One queue's backlog, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBacklog {
    pub queue: String,
    pub pending: u64,
    pub dead: u64,
    /// When the oldest pending job was queued.
    pub oldest_pending: Option<i64>,
}

/// Rows per `INSERT`: 4 values each stays far below both engines' bind limits.
const INSERT_ROWS: usize = 500;

const JOB_COLUMNS: &str = "id, kind, queue, lane, payload, state, attempts, next_attempt_at, created_at, updated_at, last_error";

fn job_row(r: &sqlx::any::AnyRow) -> Result<Job> {
    let state: String = r.try_get(5)?;
    Ok(Job {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        queue: r.try_get(2)?,
        lane: r.try_get(3)?,
        payload: r.try_get(4)?,
        state: JobState::parse(&state)
            .ok_or_else(|| crate::MetaError::Corrupt(format!("job state {state:?}")))?,
        attempts: u32::try_from(r.try_get::<i64, _>(6)?).unwrap_or(u32::MAX),
        next_attempt_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
        last_error: r.try_get(10)?,
    })
}

impl MetaStore {
    /// Inserts `jobs` in `tx`, due now, in as few statements as the bind limits allow.
    pub(crate) async fn insert_jobs(
        tx: &mut Transaction<'static, sqlx::Any>,
        jobs: &[NewJob],
    ) -> Result<()> {
        let now = now_micros();
        for chunk in jobs.chunks(INSERT_ROWS) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 4;
                    format!(
                        "(${}, ${}, ${}, ${}, 'pending', 0, $1, $1, $1)",
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO jobs (kind, queue, lane, payload, state, attempts, next_attempt_at, created_at, updated_at) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).bind(now);
            for j in chunk {
                q = q
                    .bind(j.kind.as_str())
                    .bind(j.queue.as_str())
                    .bind(j.lane.as_str())
                    .bind(j.payload.as_str());
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Calls the guard's hook for `change` and queues what it returns, in `tx`.
    pub(crate) async fn queue_jobs_for(
        tx: &mut Transaction<'static, sqlx::Any>,
        hook: &JobsHook<'_>,
        change: &Change<'_>,
    ) -> Result<()> {
        let jobs = hook(change);
        if jobs.is_empty() {
            return Ok(());
        }
        Self::insert_jobs(tx, &jobs).await
    }

    /// Queues jobs that no change carries (batched pull events), in one transaction.
    pub async fn enqueue_jobs(&self, jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        Self::insert_jobs(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `queue` has a job due now and is free for `holder`: not resting after
    /// failures, not leased to another replica. Reads only.
    pub async fn queue_ready(&self, queue: &str, holder: &str, now: i64) -> Result<bool> {
        let busy = sqlx::query(
            "SELECT 1 FROM job_queues WHERE name = $1 \
             AND (paused_until > $2 OR (lease_expires > $2 AND holder <> $3))",
        )
        .bind(queue)
        .bind(now)
        .bind(holder)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        if busy {
            return Ok(false);
        }
        Ok(sqlx::query(
            "SELECT 1 FROM jobs WHERE queue = $1 AND state = 'pending' AND next_attempt_at <= $2 LIMIT 1",
        )
        .bind(queue)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Takes (or renews) the lease of `queue` for `holder` until `until`, unless another
    /// holder's lease runs or the queue rests. True if `holder` has it now.
    pub async fn take_queue(&self, queue: &str, holder: &str, until: i64) -> Result<bool> {
        let now = now_micros();
        let done = sqlx::query(
            "INSERT INTO job_queues (name, holder, lease_expires, paused_until) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_expires = excluded.lease_expires \
             WHERE (job_queues.lease_expires <= $4 OR job_queues.holder = excluded.holder) \
             AND job_queues.paused_until <= $4",
        )
        .bind(queue)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up `holder`'s lease of `queue`; with `rest_until` in the future, nobody takes
    /// the queue before then (every attempt failed: its endpoint is down).
    pub async fn release_queue(&self, queue: &str, holder: &str, rest_until: i64) -> Result<()> {
        sqlx::query(
            "UPDATE job_queues SET holder = '', lease_expires = 0, paused_until = $3 \
             WHERE name = $1 AND holder = $2",
        )
        .bind(queue)
        .bind(holder)
        .bind(rest_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` jobs of `queue` that may run now, in id order: due, and with no
    /// earlier job of their lane waiting for a retry (that one goes first, so the lane
    /// waits). Jobs of one lane come in order; the caller runs them in that order.
    pub async fn next_jobs(&self, queue: &str, now: i64, limit: u64) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j \
             WHERE j.queue = $1 AND j.state = 'pending' AND j.next_attempt_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM jobs b WHERE b.queue = $1 AND b.lane = j.lane \
                 AND b.state = 'pending' AND b.next_attempt_at > $2 AND b.id < j.id) \
             ORDER BY j.id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(queue)
            .bind(now)
            .bind(crate::to_i64(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    /// Records what became of jobs `holder` ran from `queue`, and renews its lease until
    /// `until`, in one transaction. Returns whether `holder` still has the lease; the
    /// outcomes are recorded either way (a finished job is finished, whoever holds the
    /// queue now).
    pub async fn finish_jobs(
        &self,
        queue: &str,
        holder: &str,
        until: i64,
        outcomes: &[(i64, JobOutcome)],
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let now = now_micros();
        let done: Vec<i64> = outcomes
            .iter()
            .filter(|(_, o)| *o == JobOutcome::Done)
            .map(|(id, _)| *id)
            .collect();
        for chunk in done.chunks(INSERT_ROWS) {
            let list = (2..chunk.len() + 2)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("DELETE FROM jobs WHERE queue = $1 AND id IN ({list})");
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).bind(queue);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        for (id, outcome) in outcomes {
            let (state, at, error) = match outcome {
                JobOutcome::Done => continue,
                JobOutcome::Retry { at, error } => ("pending", *at, error),
                JobOutcome::Dead { error } => ("dead", now, error),
            };
            sqlx::query(
                "UPDATE jobs SET state = $1, attempts = attempts + 1, next_attempt_at = $2, \
                 last_error = $3, updated_at = $4 WHERE id = $5 AND state = 'pending'",
            )
            .bind(state)
            .bind(at)
            .bind(error.as_str())
            .bind(now)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        let held =
            sqlx::query("UPDATE job_queues SET lease_expires = $3 WHERE name = $1 AND holder = $2")
                .bind(queue)
                .bind(holder)
                .bind(until)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        tx.commit().await?;
        Ok(held)
    }

    /// Jobs, newest first.
    pub async fn jobs(&self, q: &JobQuery) -> Result<Vec<Job>> {
        let mut sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR id < $2)"
        );
        let queues = q.queues.as_deref().unwrap_or_default();
        if q.queues.is_some() {
            if queues.is_empty() {
                return Ok(Vec::new());
            }
            let list = (4..queues.len() + 4)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" AND queue IN ({list})"));
        }
        sql.push_str(" ORDER BY id DESC LIMIT $3");
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(q.state.map(JobState::as_str))
            .bind(q.before_id)
            .bind(crate::to_i64(q.limit.max(1)));
        for name in queues {
            query = query.bind(name.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(job_row).collect()
    }

    pub async fn job(&self, id: i64) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_row).transpose()
    }

    /// Sends a job again: a dead one becomes pending with its attempts reset, a pending
    /// one is due at once; its queue stops resting. Audited. False if there is no such
    /// job.
    pub async fn redeliver_job(&self, id: i64, actor: &Actor) -> Result<bool> {
        let mut tx = self.write().await?;
        let Some(queue) = sqlx::query("SELECT queue FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let queue: String = queue.try_get(0)?;
        let now = now_micros();
        sqlx::query(
            "UPDATE jobs SET attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END, \
             state = 'pending', next_attempt_at = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE job_queues SET paused_until = 0 WHERE name = $1")
            .bind(&queue)
            .execute(&mut *tx)
            .await?;
        Self::audit_row(
            &mut tx,
            &crate::AuditRecord {
                at: now,
                actor: actor.name.clone(),
                source: actor.source.clone(),
                action: "job.redeliver".to_owned(),
                target: Some(format!("{queue}#{id}")),
                outcome: "ok".to_owned(),
                ..crate::AuditRecord::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Pending and dead jobs and the oldest pending one, per queue.
    pub async fn job_backlog(&self) -> Result<Vec<QueueBacklog>> {
        let rows = sqlx::query(
            "SELECT queue, state, COUNT(*), MIN(created_at) FROM jobs GROUP BY queue, state ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<QueueBacklog> = Vec::new();
        for r in rows {
            let queue: String = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let n = to_u64(r.try_get(2)?);
            let oldest: Option<i64> = r.try_get(3)?;
            if out.last().is_none_or(|b| b.queue != queue) {
                out.push(QueueBacklog {
                    queue,
                    pending: 0,
                    dead: 0,
                    oldest_pending: None,
                });
            }
            let Some(b) = out.last_mut() else { continue };
            match JobState::parse(&state) {
                Some(JobState::Pending) => {
                    b.pending = n;
                    b.oldest_pending = oldest;
                }
                Some(JobState::Dead) => b.dead = n,
                None => {}
            }
        }
        Ok(out)
    }

    /// Deletes up to `limit` dead jobs that died before `before`; returns how many.
    pub async fn prune_dead_jobs(&self, before: i64, limit: u64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM jobs WHERE id IN \
             (SELECT id FROM jobs WHERE state = 'dead' AND updated_at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(before)
        .bind(crate::to_i64(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    // ---- webhooks managed through the API ----

    /// Every stored webhook: (tenant, name, spec JSON), globals (tenant `None`) first.
    pub async fn webhooks(&self) -> Result<Vec<(Option<String>, String, String)>> {
        let rows = sqlx::query(
            "SELECT tenant, name, spec FROM webhooks ORDER BY COALESCE(tenant, ''), name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Creates or replaces a webhook, audited. False if the tenant does not exist.
    pub async fn put_webhook(
        &self,
        tenant: Option<&str>,
        name: &str,
        spec: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        if let Some(t) = tenant {
            let exists = sqlx::query("SELECT 1 FROM tenants WHERE name = $1")
                .bind(t)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        let now = now_micros();
        let updated = sqlx::query(
            "UPDATE webhooks SET spec = $1, updated_at = $2 WHERE COALESCE(tenant, '') = $3 AND name = $4",
        )
        .bind(spec)
        .bind(now)
        .bind(tenant.unwrap_or(""))
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO webhooks (tenant, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(tenant)
            .bind(name)
            .bind(spec)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        Self::audit_row(
            &mut tx,
            &crate::AuditRecord {
                at: now,
                actor: actor.name.clone(),
                source: actor.source.clone(),
                action: "webhook.put".to_owned(),
                tenant: tenant.map(str::to_owned),
                target: Some(name.to_owned()),
                outcome: "ok".to_owned(),
                ..crate::AuditRecord::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes a webhook and the jobs of its queue, audited. False if there is none.
    pub async fn delete_webhook(
        &self,
        tenant: Option<&str>,
        name: &str,
        queue: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let gone =
            sqlx::query("DELETE FROM webhooks WHERE COALESCE(tenant, '') = $1 AND name = $2")
                .bind(tenant.unwrap_or(""))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        if gone.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM jobs WHERE queue = $1")
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM job_queues WHERE name = $1")
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        Self::audit_row(
            &mut tx,
            &crate::AuditRecord {
                at: now_micros(),
                actor: actor.name.clone(),
                source: actor.source.clone(),
                action: "webhook.delete".to_owned(),
                tenant: tenant.map(str::to_owned),
                target: Some(name.to_owned()),
                outcome: "ok".to_owned(),
                ..crate::AuditRecord::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
