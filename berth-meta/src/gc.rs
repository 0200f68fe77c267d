//! What garbage collection needs from the metadata: a repository's graph for the mark, and
//! sweeps that re-check every decision under row locks.
//!
//! The mark runs without locks beside live traffic, so by the time a batch is swept the
//! world may have moved: a tag may now point at a candidate, a new index may list it, an
//! upload may be about to link a blob. Each sweep therefore locks its rows first (`FOR
//! UPDATE` on PostgreSQL; SQLite's write transaction is exclusive anyway), then looks
//! again in a fresh statement, which sees everything committed before the lock was won,
//! and deletes only what is still unreachable. A writer that comes later waits on the lock
//! and then finds the row gone, which it already handles as "not in this repository".

use std::collections::{HashMap, HashSet};
use std::future::Future;

use sqlx::{Row, Transaction};

use crate::{Actor, Backend, Invalidation, MetaError, MetaStore, Result, now_micros, to_u64};

/// One manifest as the mark sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcManifest {
    pub digest: String,
    pub created_at: i64,
    pub subject: Option<String>,
    /// Roughly when it was last pulled, if ever.
    pub pulled_at: Option<i64>,
}

/// Everything the mark needs to know about one repository.
#[derive(Debug, Clone, Default)]
pub struct RepoGraph {
    pub repo_id: i64,
    pub repo: String,
    pub manifests: Vec<GcManifest>,
    /// (index, child manifest)
    pub children: Vec<(String, String)>,
    /// (manifest, blob)
    pub blobs: Vec<(String, String)>,
    /// Digests tags point at now.
    pub tagged: Vec<String>,
    /// (tag, digest) of every tag, for the tags of the referrers convention
    /// (`sha256-<hex>.sig`), which belong to the image they name.
    pub tag_names: Vec<(String, String)>,
    /// Digests the tag history names (either side of a change) since the window began.
    pub history: Vec<String>,
    /// (blob, linked at, size)
    pub links: Vec<(String, i64, u64)>,
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds every digest of an `IN (…)` list, in order.
fn bind_all<'q>(mut q: AnyQuery<'q>, digests: impl Iterator<Item = &'q String>) -> AnyQuery<'q> {
    for d in digests {
        q = q.bind(d.as_str());
    }
    q
}

/// Placeholders `$first, …` for an `IN (…)` list of `n` values.
fn list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MetaStore {
    /// Every repository, as (id, name).
    pub async fn gc_repositories(&self) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT id, name FROM repositories ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Reads one repository's manifests, references, tags, recent tag history and blob
    /// links. `history_since` bounds the history (microseconds).
    pub async fn gc_repo_graph(
        &self,
        repo_id: i64,
        repo: &str,
        history_since: i64,
    ) -> Result<RepoGraph> {
        let mut g = RepoGraph {
            repo_id,
            repo: repo.to_owned(),
            ..RepoGraph::default()
        };
        for r in sqlx::query(
            "SELECT digest, created_at, subject, pulled_at FROM manifests WHERE repo_id = $1",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?
        {
            g.manifests.push(GcManifest {
                digest: r.try_get(0)?,
                created_at: r.try_get(1)?,
                subject: r.try_get(2)?,
                pulled_at: r.try_get(3)?,
            });
        }
        for r in sqlx::query(
            "SELECT manifest_digest, child_digest, kind FROM manifest_refs WHERE repo_id = $1",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?
        {
            let pair = (r.try_get(0)?, r.try_get(1)?);
            if r.try_get::<i64, _>(2)? == 1 {
                g.children.push(pair);
            } else {
                g.blobs.push(pair);
            }
        }
        for r in sqlx::query("SELECT digest, name FROM tags WHERE repo_id = $1")
            .bind(repo_id)
            .fetch_all(&self.pool)
            .await?
        {
            let digest: String = r.try_get(0)?;
            g.tag_names.push((r.try_get(1)?, digest.clone()));
            g.tagged.push(digest);
        }
        for r in sqlx::query(
            "SELECT old_digest, new_digest FROM tag_history WHERE repo_id = $1 AND at >= $2",
        )
        .bind(repo_id)
        .bind(history_since)
        .fetch_all(&self.pool)
        .await?
        {
            for i in 0..2 {
                if let Some(d) = r.try_get::<Option<String>, _>(i)? {
                    g.history.push(d);
                }
            }
        }
        for r in sqlx::query(
            "SELECT rb.digest, rb.created_at, b.size FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest WHERE rb.repo_id = $1",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?
        {
            g.links.push((r.try_get(0)?, r.try_get(1)?, to_u64(r.try_get(2)?)));
        }
        Ok(g)
    }

    /// `FOR UPDATE` where the engine has row locks.
    pub(crate) fn lock_clause(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// Deletes those of `batch` (ordered indexes and referrers before what they point at)
    /// that are still unreachable: created before `cutoff`, untagged, listed by no index
    /// and the referrer of no manifest that stays. `doomed` is every manifest of the
    /// repository the caller still means to delete, this batch included. Returns the
    /// digests deleted.
    pub async fn gc_delete_manifests(
        &self,
        repo_id: i64,
        repo: &str,
        batch: &[String],
        doomed: &HashSet<String>,
        cutoff: i64,
        actor: &Actor,
    ) -> Result<Vec<String>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let sql = format!(
            "SELECT digest, subject FROM manifests WHERE repo_id = $1 AND created_at < $2 AND digest IN ({}) ORDER BY digest{}",
            list(3, batch.len()),
            self.lock_clause()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(repo_id)
            .bind(cutoff);
        q = bind_all(q, batch.iter());
        let mut subject_of: HashMap<String, Option<String>> = HashMap::new();
        for r in q.fetch_all(&mut *tx).await? {
            subject_of.insert(r.try_get(0)?, r.try_get(1)?);
        }
        let present: Vec<String> = batch
            .iter()
            .filter(|d| subject_of.contains_key(*d))
            .cloned()
            .collect();
        if present.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let tagged = Self::digests_in(
            &mut tx,
            "SELECT DISTINCT digest FROM tags WHERE repo_id = $1 AND digest IN",
            repo_id,
            &present,
        )
        .await?;
        let mut parents: HashMap<String, Vec<String>> = HashMap::new();
        {
            let sql = format!(
                "SELECT manifest_digest, child_digest FROM manifest_refs WHERE repo_id = $1 AND kind = 1 AND child_digest IN ({})",
                list(2, present.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(repo_id);
            q = bind_all(q, present.iter());
            for r in q.fetch_all(&mut *tx).await? {
                let (parent, child): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                parents.entry(child).or_default().push(parent);
            }
        }
        let subjects: Vec<String> = subject_of.values().flatten().cloned().collect();
        let stored_subjects = Self::digests_in(
            &mut tx,
            "SELECT digest FROM manifests WHERE repo_id = $1 AND digest IN",
            repo_id,
            &subjects,
        )
        .await?;
        // A manifest stays if anything that stays needs it; keeping one can keep more.
        // Batch members too young to go stay as well.
        let mut keep: HashSet<String> = tagged;
        keep.extend(
            batch
                .iter()
                .filter(|d| !subject_of.contains_key(*d))
                .cloned(),
        );
        loop {
            let staying = |d: &String| !doomed.contains(d) || keep.contains(d);
            let more: Vec<String> = present
                .iter()
                .filter(|d| !keep.contains(*d))
                .filter(|d| {
                    parents.get(*d).is_some_and(|ps| ps.iter().any(staying))
                        || subject_of
                            .get(*d)
                            .cloned()
                            .flatten()
                            .is_some_and(|s| stored_subjects.contains(&s) && staying(&s))
                })
                .cloned()
                .collect();
            if more.is_empty() {
                break;
            }
            keep.extend(more);
        }
        let gone: Vec<String> = present.into_iter().filter(|d| !keep.contains(d)).collect();
        if gone.is_empty() {
            tx.rollback().await?;
            return Ok(gone);
        }
        Self::delete_in(
            &mut tx,
            "DELETE FROM manifests WHERE repo_id = $1 AND digest IN",
            repo_id,
            &gone,
        )
        .await?;
        for d in &gone {
            Self::audit(&mut tx, actor, "gc.manifest.delete", Some(repo), Some(d)).await?;
            let inv = Invalidation::Manifest {
                repo: repo.to_owned(),
                digest: d.clone(),
            };
            self.notify(&mut tx, inv).await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Removes those links of `batch` from the repository that are older than `cutoff`
    /// and that no manifest there references. Returns the digests unlinked.
    pub async fn gc_unlink_blobs(
        &self,
        repo_id: i64,
        repo: &str,
        batch: &[String],
        cutoff: i64,
    ) -> Result<Vec<String>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let sql = format!(
            "SELECT digest FROM repo_blobs WHERE repo_id = $1 AND created_at < $2 AND digest IN ({}) ORDER BY digest{}",
            list(3, batch.len()),
            self.lock_clause()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(repo_id)
            .bind(cutoff);
        q = bind_all(q, batch.iter());
        let mut locked = Vec::new();
        for r in q.fetch_all(&mut *tx).await? {
            locked.push(r.try_get::<String, _>(0)?);
        }
        let used = Self::digests_in(
            &mut tx,
            "SELECT DISTINCT child_digest FROM manifest_refs WHERE repo_id = $1 AND kind = 0 AND child_digest IN",
            repo_id,
            &locked,
        )
        .await?;
        let gone: Vec<String> = locked.into_iter().filter(|d| !used.contains(d)).collect();
        if gone.is_empty() {
            tx.rollback().await?;
            return Ok(gone);
        }
        Self::delete_in(
            &mut tx,
            "DELETE FROM repo_blobs WHERE repo_id = $1 AND digest IN",
            repo_id,
            &gone,
        )
        .await?;
        for d in &gone {
            let inv = Invalidation::Blob {
                repo: repo.to_owned(),
                digest: d.clone(),
            };
            self.notify(&mut tx, inv).await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// A page of blobs linked nowhere and last written before `cutoff`, by digest after
    /// `after`: (digest, size).
    pub async fn gc_orphan_blobs(
        &self,
        cutoff: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size FROM blobs b WHERE b.written_at < $1 AND b.digest > $2 \
             AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest) \
             ORDER BY b.digest LIMIT $3",
        )
        .bind(cutoff)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, to_u64(r.try_get(1)?))))
            .collect()
    }

    /// Deletes those blob rows of `batch` that are still linked nowhere and were last
    /// written before `cutoff`, calling `delete_bytes` with them before the deletion
    /// commits: an upload that wants one of these blobs again waits on the row lock until
    /// its bytes are gone, and only then writes them anew. If `delete_bytes` fails,
    /// nothing is deleted from the metadata. Returns (digest, size) of what went.
    pub async fn gc_delete_blobs<F, Fut>(
        &self,
        batch: &[String],
        cutoff: i64,
        delete_bytes: F,
    ) -> Result<Vec<(String, u64)>>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = std::result::Result<(), String>>,
    {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let sql = format!(
            "SELECT digest, size FROM blobs WHERE written_at < $1 AND digest IN ({}) ORDER BY digest{}",
            list(2, batch.len()),
            self.lock_clause()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(cutoff);
        q = bind_all(q, batch.iter());
        let mut locked = Vec::new();
        for r in q.fetch_all(&mut *tx).await? {
            locked.push((r.try_get::<String, _>(0)?, to_u64(r.try_get(1)?)));
        }
        let digests: Vec<String> = locked.iter().map(|(d, _)| d.clone()).collect();
        let sql = format!(
            "SELECT DISTINCT digest FROM repo_blobs WHERE digest IN ({})",
            list(1, digests.len().max(1))
        );
        let mut linked = HashSet::new();
        if !digests.is_empty() {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            q = bind_all(q, digests.iter());
            for r in q.fetch_all(&mut *tx).await? {
                linked.insert(r.try_get::<String, _>(0)?);
            }
        }
        let gone: Vec<(String, u64)> = locked
            .into_iter()
            .filter(|(d, _)| !linked.contains(d))
            .collect();
        if gone.is_empty() {
            tx.rollback().await?;
            return Ok(gone);
        }
        let sql = format!(
            "DELETE FROM blobs WHERE digest IN ({})",
            list(1, gone.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        q = bind_all(q, gone.iter().map(|(d, _)| d));
        q.execute(&mut *tx).await?;
        if let Err(e) = delete_bytes(gone.iter().map(|(d, _)| d.clone()).collect()).await {
            tx.rollback().await?;
            return Err(MetaError::Corrupt(format!(
                "deleting swept blob bytes failed, metadata kept: {e}"
            )));
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// For each of `digests` that has a row: (digest, size, repositories linking it,
    /// written at).
    pub async fn gc_blob_links(&self, digests: &[String]) -> Result<Vec<(String, u64, u64, i64)>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT b.digest, b.size, (SELECT COUNT(*) FROM repo_blobs rb WHERE rb.digest = b.digest), b.written_at \
             FROM blobs b WHERE b.digest IN ({})",
            list(1, digests.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        q = bind_all(q, digests.iter());
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    to_u64(r.try_get(1)?),
                    to_u64(r.try_get(2)?),
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    /// A repository's tags with when each was last set and when its manifest was last
    /// pulled: (tag, digest, updated at, pulled at).
    pub async fn tags_with_times(
        &self,
        repo_id: i64,
    ) -> Result<Vec<(String, String, i64, Option<i64>)>> {
        let rows = sqlx::query(
            "SELECT t.name, t.digest, t.updated_at, m.pulled_at FROM tags t \
             JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest \
             WHERE t.repo_id = $1 ORDER BY t.name",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    /// Moves a blob's write time forward before its bytes are (re)written, so a
    /// concurrent collection leaves it alone; waits for a collection that holds it.
    pub async fn touch_blob(&self, digest: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET written_at = $1 WHERE digest = $2")
            .bind(now_micros())
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes (or renews) the named lease for `holder` until `ttl_micros` from now, unless
    /// another holder's lease is still running. True if `holder` now has it.
    pub async fn try_lease(&self, name: &str, holder: &str, ttl_micros: i64) -> Result<bool> {
        let now = now_micros();
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.expires_at < $4 OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl_micros))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes one audit row for a finished collection or policy run.
    pub async fn audit_run(&self, actor: &Actor, action: &str, detail: &str) -> Result<()> {
        let mut tx = self.write().await?;
        Self::audit_row(
            &mut tx,
            &crate::AuditRecord {
                at: now_micros(),
                actor: actor.name.clone(),
                source: actor.source.clone(),
                action: action.to_owned(),
                tenant: None,
                repository: None,
                target: None,
                outcome: "ok".to_owned(),
                detail: Some(detail.to_owned()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs `delete` (a statement on `repo_id = $1` ending in `IN`) over `digests`.
    async fn delete_in(
        tx: &mut Transaction<'static, sqlx::Any>,
        delete: &str,
        repo_id: i64,
        digests: &[String],
    ) -> Result<()> {
        let sql = format!("{delete} ({})", list(2, digests.len()));
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(repo_id);
        bind_all(q, digests.iter()).execute(&mut **tx).await?;
        Ok(())
    }

    /// The digests among `digests` that `select` (a query on `repo_id = $1` ending in
    /// `IN`) returns.
    async fn digests_in(
        tx: &mut Transaction<'static, sqlx::Any>,
        select: &str,
        repo_id: i64,
        digests: &[String],
    ) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        if digests.is_empty() {
            return Ok(out);
        }
        let sql = format!("{select} ({})", list(2, digests.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(repo_id);
        q = bind_all(q, digests.iter());
        for r in q.fetch_all(&mut **tx).await? {
            out.insert(r.try_get::<String, _>(0)?);
        }
        Ok(out)
    }
}
