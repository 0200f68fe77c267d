//! Storage quotas per tenant. A tenant uses the bytes of
//! - the distinct blobs linked to its repositories, each counted once however many of them
//!   link it;
//! - the distinct manifests stored in its repositories (their exact bytes live here), each
//!   digest counted once;
//! - its open upload sessions: the bytes acknowledged so far plus the bytes an append in
//!   flight has reserved. A session counts until it is completed, cancelled, or purged as
//!   stale.
//!
//! Every decision runs in a write transaction after locking the tenant's row (`FOR UPDATE`
//! on PostgreSQL; SQLite's write transaction is exclusive), so concurrent pushes to one
//! tenant, on any replica, are decided one after another against the usage the previous
//! one left. Tenants without a quota cost one primary-key lookup and take no lock.
//!
//! Sessions are summed live (they are few). Content (blobs and manifests) is checked
//! against `tenants.content_bound`, an upper bound that only the adding decisions move
//! (see [`MetaStore::room_for`]); the exact sum, O(blobs + manifests of the tenant), runs
//! only when the bound cannot admit a write, so a refusal is always exact. An exact
//! counter would have to follow every path that removes a link or a manifest (deletes,
//! the collector's sweeps, cascades), distinct per digest; one missed path would drift for
//! ever, where a bound errs only on the safe side.
//!
//! Also the run-time settings table (managed tag rules).

use sqlx::{AssertSqlSafe, Row, Transaction};

use crate::access::Audited;
use crate::{Actor, MetaStore, Result, now_micros, to_i64, to_u64};

/// The condition on `r.name` (a repository joined as `r`) selecting a tenant's
/// repositories, with two parameters numbered from `$first`. It must agree with
/// [`berth_auth::tenant_of`] for every name: a name belongs to its first segment's tenant,
/// and a single-segment name to `library`; so `library` also owns `library/...`.
fn tenant_filter(tenant: &str, first: usize) -> (String, [String; 2]) {
    // '0' follows '/' in byte order: [t/, t0) is every name under `t/`, found by index.
    let range = format!("(r.name >= ${first} AND r.name < ${})", first + 1);
    let binds = [format!("{tenant}/"), format!("{tenant}0")];
    if tenant == berth_auth::LIBRARY {
        (format!("(r.name NOT LIKE '%/%' OR {range})"), binds)
    } else {
        (range, binds)
    }
}

/// What a tenant's bytes are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Distinct blobs linked to the tenant's repositories.
    pub blobs: u64,
    /// Distinct manifests stored in them.
    pub manifests: u64,
    /// Open upload sessions: acknowledged bytes and reservations of appends in flight.
    pub uploads: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.blobs
            .saturating_add(self.manifests)
            .saturating_add(self.uploads)
    }
}

/// A write refused because the tenant's quota has no room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub tenant: String,
    pub quota: u64,
    /// Bytes the tenant used when the write was decided.
    pub used: u64,
    /// Bytes the write needed.
    pub size: u64,
}

/// The outcome of asking room for more bytes of an upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The tenant has no quota: write freely.
    Unlimited,
    /// This many bytes are reserved (at least what was needed, at most what was wanted).
    Granted(u64),
    /// Not even the needed bytes fit; nothing was reserved.
    Refused(QuotaExceeded),
    /// The session is gone (completed, cancelled or purged meanwhile).
    UnknownUpload,
}

/// What a tenant's quota leaves for a write.
enum Room {
    /// The write fits; this much room was left before it.
    Fits(u64),
    Over(QuotaExceeded),
}

/// Which kind of content a quota decision is about, for "already counted" checks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counted {
    Blob,
    Manifest,
}

impl MetaStore {
    /// A tenant's usage; `except_upload` leaves one session out (the one being closed).
    async fn usage_in<'e, E>(exec: E, tenant: &str, except_upload: Option<&str>) -> Result<Usage>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let (filter, binds) = tenant_filter(tenant, 1);
        let sql = format!(
            "SELECT \
             CAST(COALESCE((SELECT SUM(b.size) FROM blobs b WHERE b.digest IN \
               (SELECT rb.digest FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id WHERE {filter})), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(d.n) FROM (SELECT MAX(length(m.content)) AS n FROM manifests m \
               JOIN repositories r ON r.id = m.repo_id WHERE {filter} GROUP BY m.digest) d), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(u.size + u.reserved) FROM uploads u \
               JOIN repositories r ON r.id = u.repo_id WHERE {filter} AND u.id <> $3), 0) AS BIGINT)"
        );
        let [lo, hi] = binds;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(lo)
            .bind(hi)
            // Upload ids are never empty, so '' leaves none out.
            .bind(except_upload.unwrap_or(""))
            .fetch_one(exec)
            .await?;
        Ok(Usage {
            blobs: to_u64(row.try_get(0)?),
            manifests: to_u64(row.try_get(1)?),
            uploads: to_u64(row.try_get(2)?),
        })
    }

    /// The open sessions part of a tenant's usage (cheap: sessions are few).
    async fn sessions_in<'e, E>(exec: E, tenant: &str, except_upload: Option<&str>) -> Result<u64>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let (filter, [lo, hi]) = tenant_filter(tenant, 1);
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(u.size + u.reserved), 0) AS BIGINT) FROM uploads u \
             JOIN repositories r ON r.id = u.repo_id WHERE {filter} AND u.id <> $3"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(lo)
            .bind(hi)
            .bind(except_upload.unwrap_or(""))
            .fetch_one(exec)
            .await?;
        Ok(to_u64(row.try_get(0)?))
    }

    /// The tenant's quota and content bound (see [`MetaStore::room_for`]), if it has a
    /// quota.
    async fn quota_and_bound<'e, E>(
        &self,
        exec: E,
        tenant: &str,
        lock: bool,
    ) -> Result<Option<(u64, Option<u64>)>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let sql = format!(
            "SELECT quota_bytes, content_bound FROM tenants WHERE name = $1{}",
            if lock { self.lock_clause() } else { "" }
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_optional(exec)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(quota) = row.try_get::<Option<i64>, _>(0)?.map(to_u64) else {
            return Ok(None);
        };
        Ok(Some((quota, row.try_get::<Option<i64>, _>(1)?.map(to_u64))))
    }

    /// Whether `size` more bytes fit the tenant's quota, decided under its row's lock
    /// (taken here, after a first unlocked look: a tenant without a quota takes no lock).
    /// `content`: the bytes are a blob or manifest the tenant does not count yet (added to
    /// the content bound when they fit); otherwise they are room for an upload session.
    ///
    /// The tenant's row keeps `content_bound`, an upper bound of its content usage (blobs
    /// and manifests): every decision that adds content holds the lock and adds to it, and
    /// nothing that removes content touches it, so it only errs high. A decision that fits
    /// under the bound plus the live sessions needs no sum over the tenant's content; one
    /// that does not fit recomputes the exact usage (and resets the bound to it) before it
    /// refuses, so a refusal is always exact. Far from the quota a decision costs a few
    /// index lookups; only near it does it cost O(blobs + manifests of the tenant).
    async fn room_for(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        tenant: &str,
        (quota, bound): (u64, Option<u64>),
        size: u64,
        content: bool,
        except_upload: Option<&str>,
    ) -> Result<Room> {
        if let Some(bound) = bound {
            let sessions = Self::sessions_in(&mut **tx, tenant, except_upload).await?;
            let used = bound.saturating_add(sessions);
            if used.saturating_add(size) <= quota {
                if content {
                    self.set_bound(tx, tenant, bound.saturating_add(size))
                        .await?;
                }
                return Ok(Room::Fits(quota - used));
            }
        }
        let exact = Self::usage_in(&mut **tx, tenant, except_upload).await?;
        let used = exact.total();
        let fits = used.saturating_add(size) <= quota;
        let added = if content && fits { size } else { 0 };
        let bound = exact.blobs.saturating_add(exact.manifests);
        self.set_bound(tx, tenant, bound.saturating_add(added))
            .await?;
        if !fits {
            return Ok(Room::Over(QuotaExceeded {
                tenant: tenant.to_owned(),
                quota,
                used,
                size,
            }));
        }
        Ok(Room::Fits(quota - used))
    }

    /// Locks the tenant's row if it has a quota, and reads the quota and content bound; a
    /// first unlocked look spares tenants without a quota the lock. Everything a decision
    /// reads about the tenant's content comes after this, under the lock.
    async fn lock_quota(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        tenant: &str,
    ) -> Result<Option<(u64, Option<u64>)>> {
        if self.quota_in(&mut **tx, tenant, false).await?.is_none() {
            return Ok(None);
        }
        // Read again under the lock: the decision must see what the lock protects.
        self.quota_and_bound(&mut **tx, tenant, true).await
    }

    async fn set_bound(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        tenant: &str,
        bound: u64,
    ) -> Result<()> {
        sqlx::query("UPDATE tenants SET content_bound = $1 WHERE name = $2")
            .bind(to_i64(bound))
            .bind(tenant)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The tenant's quota, if it exists and has one; with `lock`, the row stays locked for
    /// the rest of the transaction (PostgreSQL; SQLite's writer is alone anyway).
    async fn quota_in<'e, E>(&self, exec: E, tenant: &str, lock: bool) -> Result<Option<u64>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let sql = format!(
            "SELECT quota_bytes FROM tenants WHERE name = $1{}",
            if lock { self.lock_clause() } else { "" }
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_optional(exec)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>(0)?.map(to_u64),
            None => None,
        })
    }

    /// The quota of `repo`'s tenant, `None` if it has none: one primary-key lookup, so
    /// callers can skip quota work for everyone else.
    pub async fn quota_of(&self, repo: &str) -> Result<Option<u64>> {
        self.quota_in(&self.pool, berth_auth::tenant_of(repo), false)
            .await
    }

    /// Whether `digest` already counts for the tenant as `kind`.
    async fn counted_in<'e, E>(exec: E, tenant: &str, kind: Counted, digest: &str) -> Result<bool>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let (filter, binds) = tenant_filter(tenant, 2);
        let sql = match kind {
            Counted::Blob => format!(
                "SELECT 1 FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
                 WHERE rb.digest = $1 AND {filter} LIMIT 1"
            ),
            Counted::Manifest => format!(
                "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repo_id \
                 WHERE m.digest = $1 AND {filter} LIMIT 1"
            ),
        };
        let [lo, hi] = binds;
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(digest)
            .bind(lo)
            .bind(hi)
            .fetch_optional(exec)
            .await?
            .is_some())
    }

    /// `Some` if adding `digest` (of `size` bytes) as `kind` to `repo` would take its tenant
    /// past its quota, counting the usage without the session `except_upload` (the one
    /// whose bytes become this blob). Locks the tenant's row for the rest of `tx` if it has
    /// a quota; a tenant without one costs one lookup and no lock, so its pushes do not
    /// queue on it. Callers lock the tenant before any upload row, as `reserve_upload` does.
    pub(crate) async fn over_quota(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        repo: &str,
        kind: Counted,
        digest: &str,
        size: u64,
        except_upload: Option<&str>,
    ) -> Result<Option<QuotaExceeded>> {
        let tenant = berth_auth::tenant_of(repo);
        let Some(quota) = self.lock_quota(tx, tenant).await? else {
            return Ok(None);
        };
        if Self::counted_in(&mut **tx, tenant, kind, digest).await? {
            // Counted already: another repository of the tenant has it.
            return Ok(None);
        }
        match self
            .room_for(tx, tenant, quota, size, true, except_upload)
            .await?
        {
            Room::Over(q) => Ok(Some(q)),
            Room::Fits(_) => Ok(None),
        }
    }

    /// Before an upload's bytes become the blob `digest`: `Some` if linking it to `repo`
    /// would take the tenant past its quota, counting the usage without the session
    /// `upload` itself (whose bytes become the blob). A read, not a decision: the link
    /// decides again under the tenant's lock. Asking first keeps refused bytes out of
    /// `blobs/`, where deleting them after the fact would race another tenant linking the
    /// same digest.
    pub async fn admit_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        upload: Option<&str>,
    ) -> Result<Option<QuotaExceeded>> {
        let tenant = berth_auth::tenant_of(repo);
        let Some((quota, bound)) = self.quota_and_bound(&self.pool, tenant, false).await? else {
            return Ok(None);
        };
        if Self::counted_in(&self.pool, tenant, Counted::Blob, digest).await? {
            return Ok(None);
        }
        if let Some(bound) = bound {
            let sessions = Self::sessions_in(&self.pool, tenant, upload).await?;
            if bound.saturating_add(sessions).saturating_add(size) <= quota {
                return Ok(None);
            }
        }
        let used = Self::usage_in(&self.pool, tenant, upload).await?.total();
        Ok((used.saturating_add(size) > quota).then(|| QuotaExceeded {
            tenant: tenant.to_owned(),
            quota,
            used,
            size,
        }))
    }

    /// The size of blob `digest` if `repo`'s tenant already counts it (a repository of the
    /// tenant links it): an upload of it brings nothing new, up to that size.
    pub async fn counted_blob(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let tenant = berth_auth::tenant_of(repo);
        if !Self::counted_in(&self.pool, tenant, Counted::Blob, digest).await? {
            return Ok(None);
        }
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.map(to_u64))
    }

    /// Reserves room for an append to upload session `id` to write: at least `need` bytes,
    /// up to `want` if the quota has room. The reservation counts towards the tenant's
    /// usage until [`MetaStore::advance_upload`] turns it into acknowledged bytes or
    /// [`MetaStore::release_upload`] gives it back.
    pub async fn reserve_upload(&self, id: &str, need: u64, want: u64) -> Result<Reservation> {
        let mut tx = self.write().await?;
        let Some(row) = sqlx::query(
            "SELECT r.name FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Reservation::UnknownUpload);
        };
        let repo: String = row.try_get(0)?;
        let tenant = berth_auth::tenant_of(&repo);
        let Some(quota) = self.lock_quota(&mut tx, tenant).await? else {
            return Ok(Reservation::Unlimited);
        };
        let room = match self
            .room_for(&mut tx, tenant, quota, need, false, None)
            .await?
        {
            Room::Over(q) => {
                // Commit the bound the exact sum reset.
                tx.commit().await?;
                return Ok(Reservation::Refused(q));
            }
            Room::Fits(room) => room,
        };
        let grant = want.min(room).max(need);
        sqlx::query("UPDATE uploads SET reserved = reserved + $1, updated_at = $2 WHERE id = $3")
            .bind(to_i64(grant))
            .bind(now_micros())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Reservation::Granted(grant))
    }

    /// Gives back `bytes` an append reserved and did not get acknowledged (it failed, or
    /// wrote less).
    pub async fn release_upload(&self, id: &str, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        sqlx::query(
            "UPDATE uploads SET reserved = CASE WHEN reserved > $1 THEN reserved - $1 ELSE 0 END WHERE id = $2",
        )
        .bind(to_i64(bytes))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A tenant's quota (`None`: unlimited) and what it uses; `None` if there is no such
    /// tenant.
    pub async fn tenant_quota(&self, tenant: &str) -> Result<Option<(Option<u64>, Usage)>> {
        let Some(row) = sqlx::query("SELECT quota_bytes FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let quota = row.try_get::<Option<i64>, _>(0)?.map(to_u64);
        Ok(Some((
            quota,
            Self::usage_in(&self.pool, tenant, None).await?,
        )))
    }

    /// The repositories whose content counts towards `tenant`, in byte order: the quota's
    /// own selection, so it can be checked against [`berth_auth::tenant_of`].
    pub async fn tenant_repositories(&self, tenant: &str) -> Result<Vec<String>> {
        let (filter, [lo, hi]) = tenant_filter(tenant, 1);
        let sql = format!("SELECT r.name FROM repositories r WHERE {filter} ORDER BY r.name");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(lo)
            .bind(hi)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Sets or (with `None`) removes a tenant's quota; `false` if there is no such tenant.
    /// A quota below the current usage is allowed: it refuses new blobs until enough go.
    pub async fn set_tenant_quota(
        &self,
        tenant: &str,
        bytes: Option<u64>,
        actor: &Actor,
    ) -> Result<bool> {
        // The content bound is kept only while a quota is set: content added meanwhile is
        // in no bound, so the next decision sums the usage afresh.
        let q = sqlx::query(
            "UPDATE tenants SET quota_bytes = $1, content_bound = NULL WHERE name = $2",
        )
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
