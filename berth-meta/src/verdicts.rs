//! Stored signature verdicts and what keeps them honest: a verification epoch per
//! repository that grows in the transaction of every change that can change a verdict, a
//! global counter replicas poll, and the record of policy dry runs.
//!
//! Verdicts are kept per (repository, digest), not per digest: which trust applies is
//! chosen by repository globs, and signatures live in the repository (a `.sig` tag or a
//! referrer there), so one digest can be signed in one repository and not in another.

use sqlx::{Row, Transaction};

use crate::{Invalidation, MetaStore, Result, now_micros};

/// A tag whose change can add or remove a cosign signature or attestation
/// (`sha256-<hex>.sig`, `.att`, …). Only a hint for invalidation: what a manifest is, is
/// decided by its content elsewhere, and invalidating too often is only slower.
pub(crate) fn may_sign(tag: &str) -> bool {
    tag.starts_with("sha256-") || tag.starts_with("sha512-")
}

/// A verdict as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVerdict {
    /// Fingerprint of the trust material it was computed under.
    pub policy: String,
    pub epoch: i64,
    pub outcome: String,
    pub detail: String,
    pub computed_at: i64,
    /// The repository's epoch now: the verdict counts only if it equals `epoch`.
    pub current_epoch: i64,
}

/// One recorded dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunRow {
    pub rule: String,
    pub fingerprint: String,
    pub at: i64,
    pub refused: i64,
    pub result: String,
}

impl MetaStore {
    /// Grows `repo`'s verification epoch and the global counter inside `tx`, and tells
    /// the other replicas when it commits. Called last in a transaction: the counter's one
    /// row is the last lock taken, so it cannot close a cycle.
    pub(crate) async fn bump_verify_epoch(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        repo: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO verify_epochs (repo, epoch) VALUES ($1, 1) \
             ON CONFLICT (repo) DO UPDATE SET epoch = verify_epochs.epoch + 1",
        )
        .bind(repo)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE verify_counter SET value = value + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        self.notify(
            tx,
            Invalidation::Verdicts {
                repo: Some(repo.to_owned()),
            },
        )
        .await
    }

    /// Tells every replica that the policy changed (the counter grows, a notification is
    /// sent), for trust or rules managed at run time.
    pub async fn bump_policy(&self) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE verify_counter SET value = value + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        self.notify(&mut tx, Invalidation::Verdicts { repo: None })
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The global counter replicas poll.
    pub async fn verify_counter(&self) -> Result<i64> {
        let v: i64 = sqlx::query("SELECT value FROM verify_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(v)
    }

    /// `repo`'s current verification epoch (0 before any change).
    pub async fn verify_epoch(&self, repo: &str) -> Result<i64> {
        let row = sqlx::query("SELECT epoch FROM verify_epochs WHERE repo = $1")
            .bind(repo)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => 0,
        })
    }

    /// The stored verdict of a manifest, with the repository's current epoch.
    pub async fn verdict(&self, repo: &str, digest: &str) -> Result<Option<StoredVerdict>> {
        let row = sqlx::query(
            "SELECT v.policy, v.epoch, v.outcome, v.detail, v.computed_at, COALESCE(e.epoch, 0) \
             FROM verdicts v LEFT JOIN verify_epochs e ON e.repo = v.repo \
             WHERE v.repo = $1 AND v.digest = $2",
        )
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<StoredVerdict> {
            Ok(StoredVerdict {
                policy: r.try_get(0)?,
                epoch: r.try_get(1)?,
                outcome: r.try_get(2)?,
                detail: r.try_get(3)?,
                computed_at: r.try_get(4)?,
                current_epoch: r.try_get(5)?,
            })
        })
        .transpose()
    }

    /// Stores a verdict computed at `epoch`, only if that is still the repository's
    /// epoch: a verdict computed from signatures read before a change committed must not
    /// outlive the change. Returns whether it was stored.
    pub async fn put_verdict(
        &self,
        repo: &str,
        digest: &str,
        policy: &str,
        epoch: i64,
        outcome: &str,
        detail: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO verdicts (repo, digest, policy, epoch, outcome, detail, computed_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE COALESCE((SELECT epoch FROM verify_epochs WHERE repo = $1), 0) = $4 \
             ON CONFLICT (repo, digest) DO UPDATE SET policy = excluded.policy, \
             epoch = excluded.epoch, outcome = excluded.outcome, detail = excluded.detail, \
             computed_at = excluded.computed_at",
        )
        .bind(repo)
        .bind(digest)
        .bind(policy)
        .bind(epoch)
        .bind(outcome)
        .bind(detail)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The indexes in `repo` that list `digest` as a child.
    pub async fn parent_indexes(
        &self,
        repo: &str,
        digest: &str,
        limit: u64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT mr.manifest_digest FROM manifest_refs mr JOIN repositories r ON r.id = mr.repo_id \
             WHERE r.name = $1 AND mr.child_digest = $2 AND mr.kind = 1 ORDER BY mr.manifest_digest LIMIT $3",
        )
        .bind(repo)
        .bind(digest)
        .bind(crate::to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Digests of the manifests of `repo` after `after`, in order (for a dry run's walk).
    pub async fn manifest_page(&self, repo: &str, after: &str, limit: u64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.digest > $2 ORDER BY m.digest LIMIT $3",
        )
        .bind(repo)
        .bind(after)
        .bind(crate::to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Records a dry run of a rule's exact definition.
    pub async fn record_dry_run(
        &self,
        rule: &str,
        fingerprint: &str,
        refused: u64,
        result: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_dry_runs (rule, fingerprint, at, refused, result) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(rule)
        .bind(fingerprint)
        .bind(now_micros())
        .bind(crate::to_i64(refused))
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest dry run of a rule definition.
    pub async fn last_dry_run(&self, fingerprint: &str) -> Result<Option<DryRunRow>> {
        let row = sqlx::query(
            "SELECT rule, fingerprint, at, refused, result FROM policy_dry_runs \
             WHERE fingerprint = $1 ORDER BY at DESC LIMIT 1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<DryRunRow> {
            Ok(DryRunRow {
                rule: r.try_get(0)?,
                fingerprint: r.try_get(1)?,
                at: r.try_get(2)?,
                refused: r.try_get(3)?,
                result: r.try_get(4)?,
            })
        })
        .transpose()
    }
}
