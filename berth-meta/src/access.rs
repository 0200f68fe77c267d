//! Users, tenants, members, robot accounts, token signing keys and audit queries.
//! Every change audits itself in its own transaction, as the core tables do.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{Actor, MetaStore, Result, now_micros};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub password_hash: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: i64,
}

/// Fields of a user to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub password_hash: Option<String>,
    pub admin: Option<bool>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub name: String,
    pub public: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotRow {
    pub tenant: String,
    pub name: String,
    pub secret_hash: String,
    /// Comma-separated action names.
    pub actions: String,
    /// JSON array of repository patterns relative to the tenant.
    pub repositories: String,
    pub description: Option<String>,
    /// Microseconds since the epoch; `None`: never.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub created_at: i64,
}

/// One audit log row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: i64,
    pub actor: String,
    pub source: Option<String>,
    pub action: String,
    pub tenant: Option<String>,
    pub repository: Option<String>,
    pub target: Option<String>,
    /// `ok`, or what went wrong (`denied`, `bad-credentials`, ...).
    pub outcome: String,
    pub detail: Option<String>,
}

/// Filters for reading the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub actor: Option<String>,
    pub tenant: Option<String>,
    /// The repository a row concerns (pushes, pulls, deletions, tag moves).
    pub repository: Option<String>,
    /// An exact action (`manifest.put`) or a family (`user`, matching `user.*`).
    pub action: Option<String>,
    /// Only rows older than this id: the cursor of the next page.
    pub before_id: Option<i64>,
    pub limit: u64,
}

/// The audit row of a management change.
pub(crate) struct Audited<'a> {
    actor: &'a Actor,
    action: &'a str,
    tenant: Option<&'a str>,
    target: &'a str,
    detail: Option<&'a str>,
}

impl<'a> Audited<'a> {
    pub(crate) fn new(
        actor: &'a Actor,
        action: &'a str,
        tenant: Option<&'a str>,
        target: &'a str,
    ) -> Self {
        Audited {
            actor,
            action,
            tenant,
            target,
            detail: None,
        }
    }

    pub(crate) fn detail(self, detail: &'a str) -> Self {
        Audited {
            detail: Some(detail),
            ..self
        }
    }
}

fn flag(v: bool) -> i64 {
    i64::from(v)
}

fn user_row(r: &AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        name: r.try_get(0)?,
        password_hash: r.try_get(1)?,
        admin: r.try_get::<i64, _>(2)? != 0,
        disabled: r.try_get::<i64, _>(3)? != 0,
        created_at: r.try_get(4)?,
    })
}

fn robot_row(r: &AnyRow) -> Result<RobotRow> {
    Ok(RobotRow {
        tenant: r.try_get(0)?,
        name: r.try_get(1)?,
        secret_hash: r.try_get(2)?,
        actions: r.try_get(3)?,
        repositories: r.try_get(4)?,
        description: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        disabled: r.try_get::<i64, _>(7)? != 0,
        created_at: r.try_get(8)?,
    })
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_at";
const ROBOT_COLUMNS: &str = "tenant, name, secret_hash, actions, repositories, description, expires_at, disabled, created_at";

impl MetaStore {
    // ---- users ----

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_row)
        .transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_row)
        .collect()
    }

    pub async fn user_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Creates a user; `false` if the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        admin: bool,
        actor: &Actor,
    ) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, disabled, created_at) VALUES ($1, $2, $3, 0, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(password_hash)
        .bind(flag(admin))
        .bind(now_micros());
        let mut audit = Audited::new(actor, "user.create", None, name);
        if admin {
            audit = audit.detail("admin");
        }
        self.change_one(q, audit).await
    }

    /// Creates the users of an import that do not exist yet, in one transaction; returns
    /// how many were added.
    pub async fn import_users(&self, users: &[(String, String)], actor: &Actor) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut added = 0;
        for (name, hash) in users {
            let n = sqlx::query(
                "INSERT INTO users (name, password_hash, admin, disabled, created_at) VALUES ($1, $2, 0, 0, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(hash)
            .bind(now_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                added += 1;
                Self::manage_audit(&mut tx, actor, "user.import", None, name, None).await?;
            }
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Applies `change`; `false` if there is no such user.
    pub async fn update_user(
        &self,
        name: &str,
        change: &UserChange,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let exists = sqlx::query("UPDATE users SET name = name WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !exists {
            return Ok(false);
        }
        if let Some(h) = &change.password_hash {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
                .bind(h)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            Self::manage_audit(&mut tx, actor, "user.password", None, name, None).await?;
        }
        if let Some(a) = change.admin {
            sqlx::query("UPDATE users SET admin = $1 WHERE name = $2")
                .bind(flag(a))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let detail = if a { "admin" } else { "not admin" };
            Self::manage_audit(&mut tx, actor, "user.admin", None, name, Some(detail)).await?;
        }
        if let Some(d) = change.disabled {
            sqlx::query("UPDATE users SET disabled = $1 WHERE name = $2")
                .bind(flag(d))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let action = if d { "user.disable" } else { "user.enable" };
            Self::manage_audit(&mut tx, actor, action, None, name, None).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn delete_user(&self, name: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("DELETE FROM users WHERE name = $1").bind(name);
        self.change_one(q, Audited::new(actor, "user.delete", None, name))
            .await
    }

    // ---- tenants and members ----

    pub async fn tenants(&self) -> Result<Vec<TenantRow>> {
        sqlx::query("SELECT name, public, created_at FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(TenantRow {
                    name: r.try_get(0)?,
                    public: r.try_get::<i64, _>(1)? != 0,
                    created_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRow>> {
        Ok(self.tenants().await?.into_iter().find(|t| t.name == name))
    }

    pub async fn public_tenants(&self) -> Result<Vec<String>> {
        sqlx::query("SELECT name FROM tenants WHERE public = 1 ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    /// Creates a tenant; `false` if it exists.
    pub async fn create_tenant(&self, name: &str, public: bool, actor: &Actor) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO tenants (name, public, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(flag(public))
        .bind(now_micros());
        let mut audit = Audited::new(actor, "tenant.create", Some(name), name);
        if public {
            audit = audit.detail("public");
        }
        self.change_one(q, audit).await
    }

    pub async fn set_tenant_public(&self, name: &str, public: bool, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("UPDATE tenants SET public = $1 WHERE name = $2")
            .bind(flag(public))
            .bind(name);
        let detail = if public { "public" } else { "private" };
        let audit = Audited::new(actor, "tenant.visibility", Some(name), name).detail(detail);
        self.change_one(q, audit).await
    }

    /// Deletes a tenant with its members and robots (its repositories stay, reachable by
    /// admins).
    pub async fn delete_tenant(&self, name: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("DELETE FROM tenants WHERE name = $1").bind(name);
        self.change_one(q, Audited::new(actor, "tenant.delete", Some(name), name))
            .await
    }

    /// `(user, role)` of every member of `tenant`.
    pub async fn members(&self, tenant: &str) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT username, role FROM members WHERE tenant = $1 ORDER BY username")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// `(tenant, role)` of every membership of `user`.
    pub async fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT tenant, role FROM members WHERE username = $1 ORDER BY tenant")
            .bind(user)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Sets (or with `None` removes) a member's role. `false` if the tenant or user does
    /// not exist, or there was no membership to remove.
    pub async fn set_member(
        &self,
        tenant: &str,
        user: &str,
        role: Option<&str>,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let n = match role {
            Some(role) => {
                let exists: i64 = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM tenants WHERE name = $1) + (SELECT COUNT(*) FROM users WHERE name = $2)",
                )
                .bind(tenant)
                .bind(user)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                if exists != 2 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO members (tenant, username, role) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant, username) DO UPDATE SET role = excluded.role",
                )
                .bind(tenant)
                .bind(user)
                .bind(role)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
            None => sqlx::query("DELETE FROM members WHERE tenant = $1 AND username = $2")
                .bind(tenant)
                .bind(user)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        };
        if n == 1 {
            let action = if role.is_some() {
                "member.set"
            } else {
                "member.remove"
            };
            Self::manage_audit(&mut tx, actor, action, Some(tenant), user, role).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    // ---- robots ----

    pub async fn robot(&self, tenant: &str, name: &str) -> Result<Option<RobotRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {ROBOT_COLUMNS} FROM robots WHERE tenant = $1 AND name = $2"
        )))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(robot_row)
        .transpose()
    }

    pub async fn robots(&self, tenant: Option<&str>) -> Result<Vec<RobotRow>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ROBOT_COLUMNS} FROM robots WHERE tenant = $1 ORDER BY tenant, name"
                )))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ROBOT_COLUMNS} FROM robots ORDER BY tenant, name"
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(robot_row).collect()
    }

    /// Creates a robot; `false` if it exists or its tenant does not.
    pub async fn create_robot(&self, r: &RobotRow, actor: &Actor) -> Result<bool> {
        let mut tx = self.write().await?;
        let tenant_exists = sqlx::query("SELECT 1 FROM tenants WHERE name = $1")
            .bind(&r.tenant)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !tenant_exists {
            return Ok(false);
        }
        let done = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO robots ({ROBOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant, name) DO NOTHING"
        )))
        .bind(&r.tenant)
        .bind(&r.name)
        .bind(&r.secret_hash)
        .bind(&r.actions)
        .bind(&r.repositories)
        .bind(r.description.as_deref())
        .bind(r.expires_at)
        .bind(flag(r.disabled))
        .bind(now_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            let login = format!("{}+{}", r.tenant, r.name);
            let detail = format!("actions={} repositories={}", r.actions, r.repositories);
            Self::manage_audit(
                &mut tx,
                actor,
                "robot.create",
                Some(&r.tenant),
                &login,
                Some(&detail),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Replaces a robot's secret (rotation); `false` if there is no such robot.
    pub async fn set_robot_secret(
        &self,
        tenant: &str,
        name: &str,
        secret_hash: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let q = sqlx::query("UPDATE robots SET secret_hash = $1 WHERE tenant = $2 AND name = $3")
            .bind(secret_hash)
            .bind(tenant)
            .bind(name);
        let login = format!("{tenant}+{name}");
        self.change_one(q, Audited::new(actor, "robot.rotate", Some(tenant), &login))
            .await
    }

    pub async fn set_robot_disabled(
        &self,
        tenant: &str,
        name: &str,
        disabled: bool,
        actor: &Actor,
    ) -> Result<bool> {
        let q = sqlx::query("UPDATE robots SET disabled = $1 WHERE tenant = $2 AND name = $3")
            .bind(flag(disabled))
            .bind(tenant)
            .bind(name);
        let action = if disabled {
            "robot.disable"
        } else {
            "robot.enable"
        };
        let login = format!("{tenant}+{name}");
        self.change_one(q, Audited::new(actor, action, Some(tenant), &login))
            .await
    }

    pub async fn delete_robot(&self, tenant: &str, name: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("DELETE FROM robots WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name);
        let login = format!("{tenant}+{name}");
        self.change_one(q, Audited::new(actor, "robot.delete", Some(tenant), &login))
            .await
    }

    /// Runs `q`, which changes at most one row, and audits it in the same transaction if
    /// it did; `false` if nothing matched.
    pub(crate) async fn change_one<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        audit: Audited<'_>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = q.execute(&mut *tx).await?.rows_affected() == 1;
        if done {
            Self::manage_audit(
                &mut tx,
                audit.actor,
                audit.action,
                audit.tenant,
                audit.target,
                audit.detail,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    // ---- token signing keys ----

    /// Every signing key as `(kid, secret)`, newest first: the first one signs.
    pub async fn signing_keys(&self) -> Result<Vec<(String, Vec<u8>)>> {
        sqlx::query("SELECT kid, secret FROM signing_keys ORDER BY created_at DESC, kid")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Every signing key as stored, newest first: `(kid, secret, sealed_by)`, the secret
    /// sealed by the key-encryption key `sealed_by` when that is set.
    pub async fn stored_signing_keys(&self) -> Result<Vec<(String, Vec<u8>, Option<String>)>> {
        sqlx::query("SELECT kid, secret, sealed_by FROM signing_keys ORDER BY created_at DESC, kid")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Replaces a signing key's stored secret (sealing it, or re-wrapping it under another
    /// key-encryption key) if it is still stored as `old`/`old_sealed_by`.
    pub async fn reseal_signing_key(
        &self,
        kid: &str,
        old: &[u8],
        old_sealed_by: Option<&str>,
        new: &[u8],
        sealed_by: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE signing_keys SET secret = $1, sealed_by = $2 WHERE kid = $3 AND secret = $4 \
             AND COALESCE(sealed_by, '') = $5",
        )
        .bind(new.to_vec())
        .bind(sealed_by)
        .bind(kid)
        .bind(old.to_vec())
        .bind(old_sealed_by.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Signing keys per key-encryption key that seals them.
    pub async fn signing_key_uses(&self) -> Result<Vec<(String, u64)>> {
        sqlx::query(
            "SELECT sealed_by, COUNT(*) FROM signing_keys WHERE sealed_by IS NOT NULL GROUP BY sealed_by ORDER BY sealed_by",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, crate::to_u64(r.try_get(1)?))))
        .collect()
    }

    /// Stores `kid`/`secret` unless a key exists already (first start; replicas racing
    /// here all end up reading the same keys).
    pub async fn ensure_signing_key(&self, kid: &str, secret: &[u8]) -> Result<()> {
        self.ensure_signing_key_as(kid, secret, None).await
    }

    /// [`MetaStore::ensure_signing_key`] with the secret sealed by `sealed_by`.
    pub async fn ensure_signing_key_as(
        &self,
        kid: &str,
        secret: &[u8],
        sealed_by: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let any = sqlx::query("SELECT 1 FROM signing_keys LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !any {
            Self::insert_key(&mut tx, kid, secret, sealed_by).await?;
            Self::manage_audit(
                &mut tx,
                &Actor::named("system"),
                "key.create",
                None,
                kid,
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds a new signing key, which signs from now on, and drops keys retired longer ago
    /// than `keep_retired_micros` (no token signed by them is still valid).
    pub async fn rotate_signing_key(
        &self,
        kid: &str,
        secret: &[u8],
        keep_retired_micros: i64,
        actor: &Actor,
    ) -> Result<()> {
        self.rotate_signing_key_as(kid, secret, None, keep_retired_micros, actor)
            .await
    }

    /// [`MetaStore::rotate_signing_key`] with the secret sealed by `sealed_by`.
    pub async fn rotate_signing_key_as(
        &self,
        kid: &str,
        secret: &[u8],
        sealed_by: Option<&str>,
        keep_retired_micros: i64,
        actor: &Actor,
    ) -> Result<()> {
        let now = now_micros();
        let mut tx = self.write().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
            .bind(now.saturating_sub(keep_retired_micros))
            .execute(&mut *tx)
            .await?;
        Self::insert_key(&mut tx, kid, secret, sealed_by).await?;
        Self::manage_audit(&mut tx, actor, "key.rotate", None, kid, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_key(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        kid: &str,
        secret: &[u8],
        sealed_by: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, secret, created_at, sealed_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(kid)
        .bind(secret.to_vec())
        .bind(now_micros())
        .bind(sealed_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    // ---- audit ----

    async fn manage_audit(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        actor: &Actor,
        action: &str,
        tenant: Option<&str>,
        target: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        Self::audit_row(
            tx,
            &AuditRecord {
                at: now_micros(),
                actor: actor.name.clone(),
                source: actor.source.clone(),
                action: action.to_owned(),
                tenant: tenant.map(str::to_owned),
                repository: None,
                target: Some(target.to_owned()),
                outcome: "ok".to_owned(),
                detail: detail.map(str::to_owned),
            },
        )
        .await
    }

    /// Writes a batch of records that are not part of a change (pulls, logins, denials) in
    /// one transaction.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        let mut tx = self.write().await?;
        for r in records {
            Self::audit_row(&mut tx, r).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes up to `limit` audit rows older than `before` (microseconds), oldest first,
    /// in one short transaction; returns how many went. Callers loop until it returns
    /// less than `limit`, so a large backlog never holds the write lock for long.
    pub async fn prune_audit(&self, before: i64, limit: u64) -> Result<u64> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done)
    }

    /// The actions of family `family` the log holds: `family` itself and `family.*`, each
    /// found by one index seek from the previous (families have a handful of members).
    async fn audit_family(&self, family: &str) -> Result<Vec<String>> {
        // `-` < `.` < `/`: every member lies in [`family`, `family/`), with a few
        // non-members (`family-x`) skipped. Each step is a `min` over an index range, planned
        // well for any values (an `= $1 LIMIT 1` probe is planned as a scan that finds one
        // row soon, and reads the whole log when there is none).
        let mut out = Vec::new();
        let mut from = family.to_owned();
        let mut inclusive = true;
        let end = format!("{family}/");
        while out.len() < 256 {
            let sql = if inclusive {
                "SELECT min(action) FROM audit_log WHERE action >= $1 AND action < $2"
            } else {
                "SELECT min(action) FROM audit_log WHERE action > $1 AND action < $2"
            };
            let next: Option<String> = sqlx::query_scalar(sql)
                .bind(&from)
                .bind(&end)
                .fetch_one(&self.pool)
                .await?;
            let Some(a) = next else { break };
            if a == family || a.strip_prefix(family).is_some_and(|r| r.starts_with('.')) {
                out.push(a.clone());
            }
            from = a;
            inclusive = false;
        }
        Ok(out)
    }

    /// Audit rows matching `q`, newest first, each with its id (the paging cursor).
    ///
    /// Rows are ordered by `(at, id)`, not by id alone: every filter then has an index
    /// that yields its rows already in that order (`audit_log_{at,actor,tenant,action,
    /// repository}`, each ending in `at, id`), so a page reads its rows and stops, however
    /// many the filter matches and wherever in time they lie. The cursor stays an id (the
    /// last row shown); its time is looked up first.
    pub async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<(i64, AuditRecord)>> {
        let cursor = match q.before_id {
            None => None,
            Some(id) => {
                let at: Option<i64> = sqlx::query_scalar("SELECT at FROM audit_log WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                // A cursor row pruned since: everything older went with it.
                match at {
                    Some(at) => Some((at, id)),
                    None => return Ok(Vec::new()),
                }
            }
        };
        let mut sql = String::from(
            "SELECT id, at, actor, source, action, tenant, repository, target, outcome, detail \
             FROM audit_log WHERE 1 = 1",
        );
        let mut ints: Vec<(usize, i64)> = Vec::new();
        let mut texts: Vec<(usize, String)> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if let Some(v) = q.since {
            let i = next();
            sql.push_str(&format!(" AND at >= ${i}"));
            ints.push((i, v));
        }
        if let Some(v) = q.until {
            let i = next();
            sql.push_str(&format!(" AND at < ${i}"));
            ints.push((i, v));
        }
        if let Some((at, id)) = cursor {
            // `at <= …` bounds the index range; the rest breaks ties within one instant.
            let (i, j, k) = (next(), next(), next());
            sql.push_str(&format!(" AND at <= ${i} AND (at < ${j} OR id < ${k})"));
            ints.extend([(i, at), (j, at), (k, id)]);
        }
        if let Some(v) = &q.actor {
            let i = next();
            sql.push_str(&format!(" AND actor = ${i}"));
            texts.push((i, v.clone()));
        }
        if let Some(v) = &q.tenant {
            let i = next();
            sql.push_str(&format!(" AND tenant = ${i}"));
            texts.push((i, v.clone()));
        }
        if let Some(v) = &q.repository {
            let i = next();
            sql.push_str(&format!(" AND repository = ${i}"));
            texts.push((i, v.clone()));
        }
        // One action, or a family's (`user`: `user` and `user.*`). A family is read as one
        // index-ordered scan per member action, merged: a filter on `action LIKE 'user.%'`
        // would walk the time index through every other row to find rare ones.
        let actions = match &q.action {
            None => Vec::new(),
            Some(v) if v.contains('.') => vec![v.clone()],
            Some(v) => self.audit_family(v).await?,
        };
        if q.action.is_some() && actions.is_empty() {
            return Ok(Vec::new());
        }
        let limit = next();
        ints.push((limit, i64::try_from(q.limit).unwrap_or(i64::MAX)));
        let order = " ORDER BY at DESC, id DESC LIMIT $";
        let sql = if actions.is_empty() {
            format!("{sql}{order}{limit}")
        } else {
            let parts: Vec<String> = actions
                .into_iter()
                .map(|a| {
                    let i = next();
                    texts.push((i, a));
                    format!("SELECT * FROM ({sql} AND action = ${i}{order}{limit}) AS a{i}")
                })
                .collect();
            if parts.len() == 1 {
                parts.concat()
            } else {
                format!("{}{order}{limit}", parts.join(" UNION ALL "))
            }
        };
        // Bind in placeholder order.
        enum Arg {
            Int(i64),
            Text(String),
        }
        let mut args: Vec<(usize, Arg)> = ints
            .into_iter()
            .map(|(i, v)| (i, Arg::Int(v)))
            .chain(texts.into_iter().map(|(i, v)| (i, Arg::Text(v))))
            .collect();
        args.sort_by_key(|(i, _)| *i);
        // Only placeholders and fixed fragments are spliced in; every value is bound. Not
        // a kept prepared statement: PostgreSQL would soon plan it once for any value,
        // guess every filter matches a twelfth of the log, and walk the time index past
        // hundreds of thousands of rows to find a rare action's page. Planned with its
        // values, each query takes the index of its filter.
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for (_, a) in args {
            query = match a {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
            };
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    AuditRecord {
                        at: r.try_get(1)?,
                        actor: r.try_get(2)?,
                        source: r.try_get(3)?,
                        action: r.try_get(4)?,
                        tenant: r.try_get(5)?,
                        repository: r.try_get(6)?,
                        target: r.try_get(7)?,
                        outcome: r.try_get(8)?,
                        detail: r.try_get(9)?,
                    },
                ))
            })
            .collect()
    }
}
