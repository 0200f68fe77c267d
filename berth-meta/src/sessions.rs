//! What the web interface reads and writes: its sessions (`ui_sessions`), and a page of a
//! repository's tags with what its tag table shows.

use sqlx::{Row, Transaction};

use crate::{MetaStore, Result, now_micros, to_i64};

/// A web session as stored: whose it is and its anti-forgery token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSession {
    pub subject: String,
    /// Fingerprint of the credential the session was opened with.
    pub cred: String,
    pub csrf: String,
    /// Microseconds since the epoch.
    pub expires_at: i64,
}

/// One tag of a repository page: its digest, the manifest's media type and size, when the
/// tag was last set and when its manifest was last pulled (microseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub updated_at: i64,
    pub pulled_at: Option<i64>,
}

impl MetaStore {
    /// Stores a new session under the hash of its cookie value.
    pub async fn create_ui_session(&self, id_hash: &str, s: &UiSession) -> Result<()> {
        sqlx::query(
            "INSERT INTO ui_sessions (id_hash, subject, cred, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id_hash)
        .bind(&s.subject)
        .bind(&s.cred)
        .bind(&s.csrf)
        .bind(now_micros())
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The session stored under `id_hash`, unless it has expired.
    pub async fn ui_session(&self, id_hash: &str) -> Result<Option<UiSession>> {
        let row = sqlx::query(
            "SELECT subject, cred, csrf, expires_at FROM ui_sessions \
             WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(UiSession {
                subject: r.try_get(0)?,
                cred: r.try_get(1)?,
                csrf: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Ends a session (logout); true if it existed.
    pub async fn delete_ui_session(&self, id_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes sessions expired before now; how many.
    pub async fn prune_ui_sessions(&self) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Up to `limit` tags of `repo` after `last` in the listing order (`tag_sort_key`),
    /// read through the `tags_listing` index, so a page costs the same at any depth; `None`
    /// if the repository does not exist.
    pub async fn tag_page(
        &self,
        repo: &str,
        last: Option<&str>,
        limit: u64,
    ) -> Result<Option<Vec<TagRow>>> {
        let Some(repo_id) = Self::repo_id_in(&self.pool, repo).await? else {
            return Ok(None);
        };
        let after = last.map(berth_oci::tag_sort_key).unwrap_or_default();
        let rows = sqlx::query(
            "SELECT t.name, t.digest, m.media_type, length(m.content), t.updated_at, m.pulled_at \
             FROM (SELECT name, digest, updated_at, sort_key FROM tags \
                   WHERE repo_id = $1 AND sort_key > $2 ORDER BY sort_key LIMIT $3) t \
             JOIN manifests m ON m.repo_id = $1 AND m.digest = t.digest \
             ORDER BY t.sort_key",
        )
        .bind(repo_id)
        .bind(after)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get(3)?;
                Ok(TagRow {
                    name: r.try_get(0)?,
                    digest: r.try_get(1)?,
                    media_type: r.try_get(2)?,
                    size,
                    updated_at: r.try_get(4)?,
                    pulled_at: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Up to `limit` version tags of `repo` (`version_key` not empty), newest version
    /// first, after the tag `last` in that order; read through `tags_versions`, so a page
    /// costs the same at any depth. `None` if the repository does not exist.
    pub async fn version_page(
        &self,
        repo: &str,
        last: Option<&str>,
        limit: u64,
    ) -> Result<Option<Vec<TagRow>>> {
        let Some(repo_id) = Self::repo_id_in(&self.pool, repo).await? else {
            return Ok(None);
        };
        self.fill_repo_version_keys(repo_id).await?;
        // Every key starts with a digit: "a" is above them all, so the first page starts
        // at the top.
        let (key, name) = match last {
            Some(l) => (berth_oci::semver::version_key(l), l.to_owned()),
            None => ("a".to_owned(), String::new()),
        };
        let rows = sqlx::query(
            "SELECT t.name, t.digest, m.media_type, length(m.content), t.updated_at, m.pulled_at \
             FROM (SELECT name, digest, updated_at, version_key FROM tags \
                   WHERE repo_id = $1 AND version_key <> '' AND (version_key, name) < ($2, $3) \
                   ORDER BY version_key DESC, name DESC LIMIT $4) t \
             JOIN manifests m ON m.repo_id = $1 AND m.digest = t.digest \
             ORDER BY t.version_key DESC, t.name DESC",
        )
        .bind(repo_id)
        .bind(key)
        .bind(name)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TagRow {
                    name: r.try_get(0)?,
                    digest: r.try_get(1)?,
                    media_type: r.try_get(2)?,
                    size: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                    pulled_at: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Computes the keys of `repo_id`'s tags that have none: written, during a rolling
    /// upgrade, by a replica older than the keys (start-up fills the rest). Without this,
    /// such tags would be missing from the version order until the next start. Finding
    /// none is one lookup of the partial index `tags_version_pending`.
    async fn fill_repo_version_keys(&self, repo_id: i64) -> Result<()> {
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repo_id = $1 AND version_key IS NULL LIMIT 10000",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?;
        if pending.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for name in &pending {
            sqlx::query(
                "UPDATE tags SET version_key = $1 \
                 WHERE repo_id = $2 AND name = $3 AND version_key IS NULL",
            )
            .bind(berth_oci::semver::version_key(name))
            .bind(repo_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(
            repo_id,
            tags = pending.len(),
            "computed version keys of tags an older replica wrote"
        );
        Ok(())
    }

    /// Computes `version_key` for tags written before it existed (or by an older replica
    /// during an upgrade); run at every start, in the migration's transaction. Finding
    /// none is one lookup of the partial index `tags_version_pending`.
    pub(crate) async fn fill_version_keys(tx: &mut Transaction<'static, sqlx::Any>) -> Result<u64> {
        let mut filled = 0u64;
        loop {
            let rows =
                sqlx::query("SELECT repo_id, name FROM tags WHERE version_key IS NULL LIMIT 10000")
                    .fetch_all(&mut **tx)
                    .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let repo_id: i64 = r.try_get(0)?;
                let name: String = r.try_get(1)?;
                sqlx::query("UPDATE tags SET version_key = $1 WHERE repo_id = $2 AND name = $3")
                    .bind(berth_oci::semver::version_key(&name))
                    .bind(repo_id)
                    .bind(&name)
                    .execute(&mut **tx)
                    .await?;
                filled += 1;
            }
        }
        if filled > 0 {
            tracing::info!(tags = filled, "computed version keys of existing tags");
        }
        Ok(filled)
    }
}
