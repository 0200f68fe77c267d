//! Copying a whole metadata store into another (SQLite to PostgreSQL, or back), for
//! `berth migrate-storage`. Each table is read as a stream and written in batched
//! transactions, parents before children, with every row's own keys, so the copy is the
//! same registry: ids, timestamps, history, audit and queued jobs included. Upload sessions
//! and leases (of collections and job queues) are transient and not copied.

use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, Row};

use crate::{Backend, MetaError, MetaStore, Result};

#[derive(Clone, Copy)]
enum Col {
    Int,
    Text,
    Bytes,
}

use Col::{Bytes, Int, Text};

/// Tables in an order that satisfies their foreign keys, with their columns.
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "repositories",
        &[("id", Int), ("name", Text), ("created_at", Int)],
    ),
    (
        "blobs",
        &[
            ("digest", Text),
            ("size", Int),
            ("created_at", Int),
            ("written_at", Int),
        ],
    ),
    // Sealed blobs keep their wrapped data keys, and the keys' check values come along, so
    // the copy opens with the same keyring.
    (
        "blob_keys",
        &[
            ("digest", Text),
            ("key_id", Text),
            ("wrapped", Bytes),
            ("state", Text),
            ("updated_at", Int),
        ],
    ),
    (
        "kek_checks",
        &[("key_id", Text), ("sealed", Bytes), ("created_at", Int)],
    ),
    (
        "repo_blobs",
        &[("repo_id", Int), ("digest", Text), ("created_at", Int)],
    ),
    (
        "manifests",
        &[
            ("repo_id", Int),
            ("digest", Text),
            ("media_type", Text),
            ("artifact_type", Text),
            ("subject", Text),
            ("annotations", Text),
            ("content", Bytes),
            ("created_at", Int),
            ("pulled_at", Int),
        ],
    ),
    (
        "manifest_refs",
        &[
            ("repo_id", Int),
            ("manifest_digest", Text),
            ("child_digest", Text),
            ("kind", Int),
        ],
    ),
    (
        "tags",
        &[
            ("repo_id", Int),
            ("name", Text),
            ("sort_key", Text),
            ("digest", Text),
            ("updated_at", Int),
            ("version_key", Text),
        ],
    ),
    (
        "tag_history",
        &[
            ("id", Int),
            ("repo_id", Int),
            ("tag", Text),
            ("kind", Text),
            ("old_digest", Text),
            ("new_digest", Text),
            ("actor", Text),
            ("source", Text),
            ("at", Int),
        ],
    ),
    (
        "users",
        &[
            ("name", Text),
            ("password_hash", Text),
            ("admin", Int),
            ("disabled", Int),
            ("created_at", Int),
        ],
    ),
    (
        "tenants",
        &[
            ("name", Text),
            ("public", Int),
            ("created_at", Int),
            ("quota_bytes", Int),
        ],
    ),
    (
        "members",
        &[("tenant", Text), ("username", Text), ("role", Text)],
    ),
    (
        "robots",
        &[
            ("tenant", Text),
            ("name", Text),
            ("secret_hash", Text),
            ("actions", Text),
            ("repositories", Text),
            ("description", Text),
            ("expires_at", Int),
            ("disabled", Int),
            ("created_at", Int),
        ],
    ),
    (
        "signing_keys",
        &[
            ("kid", Text),
            ("secret", Bytes),
            ("created_at", Int),
            ("retired_at", Int),
            ("sealed_by", Text),
        ],
    ),
    (
        "settings",
        &[("name", Text), ("value", Text), ("updated_at", Int)],
    ),
    // Dry runs gate switching a rule to enforce; their ids are the target's own. Verdicts
    // and verification epochs are not copied: verdicts are computed again; nor are package
    // catalogs (layer_catalogs, image_catalogs, image_packages, catalog_packages), which
    // are derived data.
    (
        "policy_dry_runs",
        &[
            ("rule", Text),
            ("fingerprint", Text),
            ("at", Int),
            ("refused", Int),
            ("result", Text),
        ],
    ),
    (
        "webhooks",
        &[
            ("id", Int),
            ("tenant", Text),
            ("name", Text),
            ("spec", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "jobs",
        &[
            ("id", Int),
            ("kind", Text),
            ("queue", Text),
            ("lane", Text),
            ("payload", Text),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("last_error", Text),
        ],
    ),
    (
        "audit_log",
        &[
            ("id", Int),
            ("at", Int),
            ("actor", Text),
            ("action", Text),
            ("repository", Text),
            ("target", Text),
            ("detail", Text),
            ("tenant", Text),
            ("source", Text),
            ("outcome", Text),
        ],
    ),
];

/// Tables whose `id` a PostgreSQL sequence hands out.
const SERIAL: &[&str] = &[
    "repositories",
    "tag_history",
    "audit_log",
    "webhooks",
    "jobs",
];

/// Rows per target transaction.
const BATCH: usize = 1000;

impl MetaStore {
    /// Copies every table into `target`, which must hold no repositories and no users
    /// (a freshly migrated store). `progress` is told (table, rows copied) per table.
    pub async fn copy_into(
        &self,
        target: &MetaStore,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<u64> {
        for table in ["repositories", "users"] {
            let n: i64 = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&target.pool)
                .await?
                .try_get(0)?;
            if n > 0 {
                return Err(MetaError::Corrupt(format!(
                    "the target metadata store is not empty ({n} rows in {table}); copy only into a new one"
                )));
            }
        }
        // The migration's own `library` row would collide with the source's.
        sqlx::query("DELETE FROM tenants")
            .execute(&target.pool)
            .await?;
        let mut total = 0;
        for (table, cols) in TABLES {
            let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
            let select = format!("SELECT {} FROM {table}", names.join(", "));
            let insert = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                (1..=names.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut rows = sqlx::query(AssertSqlSafe(select.as_str())).fetch(&self.pool);
            let mut tx = target.write().await?;
            let mut in_tx = 0;
            let mut copied = 0u64;
            while let Some(row) = rows.try_next().await? {
                let mut q = sqlx::query(AssertSqlSafe(insert.as_str()));
                for (i, (_, col)) in cols.iter().enumerate() {
                    q = match col {
                        Int => q.bind(row.try_get::<Option<i64>, _>(i)?),
                        Text => q.bind(row.try_get::<Option<String>, _>(i)?),
                        Bytes => q.bind(row.try_get::<Option<Vec<u8>>, _>(i)?),
                    };
                }
                q.execute(&mut *tx).await?;
                copied += 1;
                in_tx += 1;
                if in_tx == BATCH {
                    tx.commit().await?;
                    tx = target.write().await?;
                    in_tx = 0;
                }
            }
            tx.commit().await?;
            progress(table, copied);
            total += copied;
        }
        if target.backend == Backend::Postgres {
            // Rows came with their ids: move each sequence past them.
            for table in SERIAL {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                )))
                .execute(&target.pool)
                .await?;
            }
        }
        Ok(total)
    }
}
