//! Read-only listings for `berth fsck`, and a connection that cannot write.
//!
//! Every listing pages by key (`WHERE key > last ORDER BY key LIMIT n`) so that a check of
//! a large registry holds one page in memory, and so that it never holds a read
//! transaction open for long beside a serving process.

use sqlx::Row;
use sqlx::any::AnyPoolOptions;

use crate::{
    Backend, MetaError, MetaStore, POSTGRES_SCHEMA, Result, SQLITE_SCHEMA, to_i64, to_u64,
};

/// A blob row: what the registry believes is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    pub digest: String,
    pub size: u64,
}

/// A manifest as stored, for re-hashing. `repo_id` is the paging key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub repo_id: i64,
    pub repo: String,
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A manifest reference whose target is not in the manifest's repository: a blob that is
/// not linked there, or a child manifest that is not stored there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanglingRef {
    pub repo: String,
    pub manifest: String,
    pub child: String,
    /// `RefKind::Blob` or `RefKind::Manifest`.
    pub kind: crate::RefKind,
}

/// Where to continue a manifest listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestCursor {
    repo_id: i64,
    digest: String,
}

impl ManifestRow {
    pub fn cursor(&self) -> ManifestCursor {
        ManifestCursor {
            repo_id: self.repo_id,
            digest: self.digest.clone(),
        }
    }
}

fn ref_kind(code: i64) -> crate::RefKind {
    if code == 1 {
        crate::RefKind::Manifest
    } else {
        crate::RefKind::Blob
    }
}

impl MetaStore {
    /// Connects without migrating and refuses every write: for a checker that runs beside
    /// a serving process, or on a copy of its data. The schema must be exactly the one this
    /// build knows (a serving process migrates; a checker must not).
    pub async fn connect_read_only(url: &str) -> Result<MetaStore> {
        sqlx::any::install_default_drivers();
        let (backend, options) = if url.starts_with("sqlite:") {
            let options = AnyPoolOptions::new()
                .max_connections(2)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // query_only on top of mode=ro: even a bug here cannot write.
                        sqlx::raw_sql(
                            "PRAGMA query_only = ON; PRAGMA foreign_keys = ON; \
                             PRAGMA busy_timeout = 10000;",
                        )
                        .execute(conn)
                        .await?;
                        Ok(())
                    })
                });
            (Backend::Sqlite, options)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = AnyPoolOptions::new()
                .max_connections(2)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::raw_sql("SET default_transaction_read_only = on")
                            .execute(conn)
                            .await?;
                        Ok(())
                    })
                });
            (Backend::Postgres, options)
        } else {
            return Err(MetaError::UnknownScheme(url.to_owned()));
        };
        let url = match backend {
            // mode=ro also stops SQLite from creating an empty database at a wrong path.
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=ro"),
            _ => url.to_owned(),
        };
        let pool = options.connect(&url).await?;
        // Read-only: it changes nothing, so it has nothing to tell other replicas.
        let store = MetaStore {
            pool,
            backend,
            url: None,
            counters: Default::default(),
        };
        let expected = match backend {
            Backend::Sqlite => SQLITE_SCHEMA.len(),
            Backend::Postgres => POSTGRES_SCHEMA.len(),
        } as i64;
        let found: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM berth_schema")
            .fetch_one(&store.pool)
            .await
            .map_err(|e| MetaError::Corrupt(format!("no Berth schema found: {e}")))?
            .try_get(0)?;
        if found != expected {
            store.close().await;
            return Err(MetaError::Corrupt(format!(
                "metadata schema is at version {found}, this build knows version {expected}; \
                 run the matching `berth serve` first"
            )));
        }
        Ok(store)
    }

    /// How many blob rows there are and their total size.
    pub async fn blob_totals(&self) -> Result<(u64, u64)> {
        // The CAST keeps PostgreSQL's SUM (NUMERIC) in a type every driver decodes.
        let row = sqlx::query("SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs")
            .fetch_one(&self.pool)
            .await?;
        Ok((
            to_u64(row.try_get::<i64, _>(0)?),
            to_u64(row.try_get::<i64, _>(1)?),
        ))
    }

    /// Up to `limit` blob rows with digests after `after`, in digest order.
    pub async fn blobs_after(&self, after: &str, limit: u64) -> Result<Vec<BlobRow>> {
        let rows = sqlx::query(
            "SELECT digest, size FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2",
        )
        .bind(after)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BlobRow {
                    digest: r.try_get(0)?,
                    size: to_u64(r.try_get::<i64, _>(1)?),
                })
            })
            .collect()
    }

    /// Repositories a blob is linked to, in name order.
    pub async fn blob_repositories(&self, digest: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT r.name FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
             WHERE rb.digest = $1 ORDER BY r.name",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// How many manifests there are, in all repositories.
    pub async fn manifest_count(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM manifests")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(row.try_get::<i64, _>(0)?))
    }

    /// Up to `limit` manifests after `after`, with their bytes.
    pub async fn manifests_after(
        &self,
        after: &ManifestCursor,
        limit: u64,
    ) -> Result<Vec<ManifestRow>> {
        let rows = sqlx::query(
            "SELECT m.repo_id, r.name, m.digest, m.media_type, m.content \
             FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE m.repo_id > $1 OR (m.repo_id = $1 AND m.digest > $2) \
             ORDER BY m.repo_id, m.digest LIMIT $3",
        )
        .bind(after.repo_id)
        .bind(after.digest.as_str())
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ManifestRow {
                    repo_id: r.try_get(0)?,
                    repo: r.try_get(1)?,
                    digest: r.try_get(2)?,
                    media_type: r.try_get(3)?,
                    content: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Every manifest reference whose target is not in the manifest's repository. Whether
    /// that is damage depends on whether the reference is required, which only the
    /// manifest's bytes and the registry's rules say.
    pub async fn dangling_refs(&self) -> Result<Vec<DanglingRef>> {
        let rows = sqlx::query(
            "SELECT r.name, mr.manifest_digest, mr.child_digest, mr.kind \
             FROM manifest_refs mr JOIN repositories r ON r.id = mr.repo_id \
             WHERE (mr.kind = 0 AND NOT EXISTS (SELECT 1 FROM repo_blobs rb \
                    WHERE rb.repo_id = mr.repo_id AND rb.digest = mr.child_digest)) \
                OR (mr.kind = 1 AND NOT EXISTS (SELECT 1 FROM manifests c \
                    WHERE c.repo_id = mr.repo_id AND c.digest = mr.child_digest)) \
             ORDER BY r.name, mr.manifest_digest, mr.child_digest",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DanglingRef {
                    repo: r.try_get(0)?,
                    manifest: r.try_get(1)?,
                    child: r.try_get(2)?,
                    kind: ref_kind(r.try_get(3)?),
                })
            })
            .collect()
    }

    /// Manifests (repository, digest) that reference blob `digest`.
    pub async fn blob_users(&self, digest: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT r.name, mr.manifest_digest FROM manifest_refs mr \
             JOIN repositories r ON r.id = mr.repo_id \
             WHERE mr.child_digest = $1 AND mr.kind = 0 ORDER BY r.name, mr.manifest_digest",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
