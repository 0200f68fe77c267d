//! Storage quotas per tenant: the bytes of the distinct blobs linked to the tenant's
//! repositories, each blob counted once however many of them link it.
//!
//! The check runs in the transaction that links a blob, after locking the tenant's row
//! (`FOR UPDATE` on PostgreSQL; SQLite's write transaction is exclusive), so concurrent
//! pushes to one tenant, on any replica, are decided one after another against the usage
//! the previous one left.
//!
//! Also the run-time settings table (managed tag rules).

use sqlx::{AssertSqlSafe, Row, Transaction};

use crate::access::Audited;
use crate::{Actor, Linked, MetaStore, Result, to_i64, to_u64};

/// The condition on `r.name` (a repository joined as `r`) selecting a tenant's
/// repositories, with its parameters numbered from `$first`. Single-segment names belong
/// to `library`; the others to their first segment, which a name range finds by index.
fn tenant_filter(tenant: &str, first: usize) -> (String, Vec<String>) {
    if tenant == "library" {
        ("r.name NOT LIKE '%/%'".to_owned(), Vec::new())
    } else {
        // '0' follows '/' in byte order: [t/, t0) is every name under `t/`.
        (
            format!("r.name >= ${first} AND r.name < ${}", first + 1),
            vec![format!("{tenant}/"), format!("{tenant}0")],
        )
    }
}

impl MetaStore {
    async fn usage_in<'e, E>(exec: E, tenant: &str) -> Result<u64>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let (filter, binds) = tenant_filter(tenant, 1);
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b WHERE b.digest IN \
             (SELECT rb.digest FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id WHERE {filter})"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        Ok(to_u64(q.fetch_one(exec).await?.try_get(0)?))
    }

    /// `Some(OverQuota)` if linking `digest` (of `size` bytes) to `repo` would take its
    /// tenant past its quota. Locks the tenant's row for the rest of `tx`.
    pub(crate) async fn over_quota(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        repo: &str,
        digest: &str,
        size: u64,
    ) -> Result<Option<Linked>> {
        let tenant = berth_auth::tenant_of(repo);
        let sql = format!(
            "SELECT quota_bytes FROM tenants WHERE name = $1{}",
            self.lock_clause()
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let Some(quota) = row.try_get::<Option<i64>, _>(0)? else {
            return Ok(None);
        };
        let (filter, binds) = tenant_filter(tenant, 2);
        let sql = format!(
            "SELECT 1 FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
             WHERE rb.digest = $1 AND {filter} LIMIT 1"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(digest);
        for b in binds {
            q = q.bind(b);
        }
        if q.fetch_optional(&mut **tx).await?.is_some() {
            // Counted already: another repository of the tenant links it.
            return Ok(None);
        }
        let used = Self::usage_in(&mut **tx, tenant).await?;
        let quota = to_u64(quota);
        if used.saturating_add(size) > quota {
            return Ok(Some(Linked::OverQuota {
                tenant: tenant.to_owned(),
                quota,
                used,
                size,
            }));
        }
        Ok(None)
    }

    /// A tenant's quota (`None`: unlimited) and the bytes it uses; `None` if there is no
    /// such tenant.
    pub async fn tenant_quota(&self, tenant: &str) -> Result<Option<(Option<u64>, u64)>> {
        let Some(row) = sqlx::query("SELECT quota_bytes FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let quota = row.try_get::<Option<i64>, _>(0)?.map(to_u64);
        Ok(Some((quota, Self::usage_in(&self.pool, tenant).await?)))
    }

    /// Sets or (with `None`) removes a tenant's quota; `false` if there is no such tenant.
    /// A quota below the current usage is allowed: it refuses new blobs until enough go.
    pub async fn set_tenant_quota(
        &self,
        tenant: &str,
        bytes: Option<u64>,
        actor: &Actor,
    ) -> Result<bool> {
        let q = sqlx::query("UPDATE tenants SET quota_bytes = $1 WHERE name = $2")
            .bind(bytes.map(to_i64))
            .bind(tenant);
        let detail = bytes.map_or_else(|| "none".to_owned(), |b| b.to_string());
        let audit = Audited::new(actor, "tenant.quota", Some(tenant), tenant).detail(&detail);
        self.change_one(q, audit).await
    }

    /// A run-time setting's JSON value, if it was ever set.
    pub async fn setting(&self, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    /// Sets a run-time setting, audited as `action` with the value as detail.
    pub async fn set_setting(
        &self,
        name: &str,
        value: &str,
        actor: &Actor,
        action: &str,
    ) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(value)
        .bind(crate::now_micros());
        self.change_one(q, Audited::new(actor, action, None, name).detail(value))
            .await?;
        Ok(())
    }
}
