//! Maintenance runs asked for from the web interface (a garbage collection or the retention
//! policies, as dry runs): a row that the job queue's runner fills in with its report, so
//! the operations page of any replica shows it once ready.

use sqlx::Row;

use crate::{MetaStore, NewJob, Result, now_micros};

/// One maintenance run and, once it ran, its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceRun {
    pub id: i64,
    /// `gc` or `retention`.
    pub task: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub finished_at: Option<i64>,
    /// The runner's report (JSON), when it succeeded.
    pub report: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl MetaStore {
    /// Records a run of `task` asked for by `by` and queues `job` (its payload names the
    /// run: `{id}` in it is replaced by the new row's id), in one transaction: a run is
    /// never recorded without the job that will finish it.
    pub async fn start_maintenance_run(&self, task: &str, by: &str, job: NewJob) -> Result<i64> {
        let mut tx = self.write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO maintenance_runs (task, requested_by, requested_at) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(task)
        .bind(by)
        .bind(now_micros())
        .fetch_one(&mut *tx)
        .await?;
        let job = NewJob {
            payload: job.payload.replace("{id}", &id.to_string()),
            ..job
        };
        Self::insert_jobs(&mut tx, &[job]).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn maintenance_run(&self, id: i64) -> Result<Option<MaintenanceRun>> {
        let row = sqlx::query(
            "SELECT id, task, requested_by, requested_at, finished_at, report, error \
             FROM maintenance_runs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// The latest `limit` runs, newest first.
    pub async fn maintenance_runs(&self, limit: u64) -> Result<Vec<MaintenanceRun>> {
        sqlx::query(
            "SELECT id, task, requested_by, requested_at, finished_at, report, error \
             FROM maintenance_runs ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    /// Stores a run's outcome: a report or an error.
    pub async fn finish_maintenance_run(
        &self,
        id: i64,
        report: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE maintenance_runs SET finished_at = $1, report = $2, error = $3 WHERE id = $4",
        )
        .bind(now_micros())
        .bind(report)
        .bind(error)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn run_row(r: &sqlx::any::AnyRow) -> Result<MaintenanceRun> {
    Ok(MaintenanceRun {
        id: r.try_get(0)?,
        task: r.try_get(1)?,
        requested_by: r.try_get(2)?,
        requested_at: r.try_get(3)?,
        finished_at: r.try_get(4)?,
        report: r.try_get(5)?,
        error: r.try_get(6)?,
    })
}
