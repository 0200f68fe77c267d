//! The metadata store: repositories, blob links, manifests and their references, tags,
//! referrers, upload sessions and the audit log.
//!
//! One implementation serves SQLite (the embedded default) and PostgreSQL through sqlx's
//! `Any` driver: the queries are written once in the SQL both dialects share (`$n`
//! placeholders, `ON CONFLICT`, bytewise ordering), and only the schema files and the way a
//! write transaction begins differ per [`Backend`]. Every state change writes its audit row in
//! the same transaction as the change.
//!
//! This crate is the only one that knows SQL; it knows nothing of paths or HTTP.

mod access;
mod catalogs;
mod copy;
mod encryption;
mod fsck;
mod gc;
mod jobs;
mod maintenance;
mod notify;
mod p2p;
mod quota;
mod sessions;
mod tags;
mod verdicts;
mod vulns;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row, Transaction};

pub use access::{AuditQuery, AuditRecord, RobotRow, TenantRow, UserChange, UserRow};
pub use catalogs::{CatalogPackage, ImageCatalogRow, LayerCatalogRow};
pub use encryption::{KeyState, KeyUse, WrappedKey};
pub use fsck::{BlobRow, DanglingRef, ManifestCursor, ManifestRow};
pub use gc::{GcManifest, RepoGraph};
pub use jobs::{
    Change, ChangeKind, Job, JobOutcome, JobQuery, JobState, JobsHook, NewJob, QueueBacklog,
};
pub use maintenance::MaintenanceRun;
pub use notify::Invalidation;
pub use p2p::{P2pGrant, P2pHolder};
pub use quota::{QuotaExceeded, Reservation, Usage};
pub use sessions::{TagRow, UiSession};
pub use tags::{SetTag, TagChange, TagEvent, TagGuard};
pub use verdicts::{DryRunRow, StoredVerdict};
pub use vulns::{AdvisoryRow, FeedImport, FeedRow, FindingRow, PackageKey};

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata URL {0:?} is neither sqlite: nor postgres://")]
    UnknownScheme(String),
    #[error("metadata database error: {0}")]
    Db(sqlx::Error),
    #[error("metadata is inconsistent: {0}")]
    Corrupt(String),
    /// The store was found unavailable a moment ago and was not asked again.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// Concurrent writers kept changing the same row; the caller may retry.
    #[error("metadata write contended: {0}")]
    Contended(String),
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e
            && d.code().as_deref() == Some(READ_ONLY_SQL_TRANSACTION)
        {
            // A failover left this connection on a server that no longer takes writes
            // (a demoted primary, a standby): pooled connections are checked and replaced
            // for a while (see `before_acquire` in `MetaStore::connect_with`).
            note_read_only();
        }
        MetaError::Db(e)
    }
}

/// A connection of this process met a server that takes no writes: pooled connections are
/// checked before use for a while, and those on such a server replaced.
pub(crate) fn note_read_only() {
    READ_ONLY_SEEN_AT.store(now_micros(), Ordering::Relaxed);
}

/// PostgreSQL's `read_only_sql_transaction`.
const READ_ONLY_SQL_TRANSACTION: &str = "25006";

/// When a statement last failed with `read_only_sql_transaction` in this process
/// (microseconds; 0: never). Process-wide because the error is converted by `?` far from
/// any store; a false alarm only costs other stores a `SHOW` per acquire for a while.
static READ_ONLY_SEEN_AT: AtomicI64 = AtomicI64::new(0);

/// How long after a `read_only_sql_transaction` pooled connections are checked before use.
const READ_ONLY_WATCH: Duration = Duration::from_secs(60);

impl MetaError {
    /// The database cannot be used right now: unreachable, shutting down, restarting,
    /// failed over to a server that refuses writes, a pool with no connection free in
    /// time, a statement past its timeout. Nothing was written; the same request may
    /// succeed once the database is back, so the server answers 503 rather than 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            MetaError::Db(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    // Class 08: connection exceptions. 57P01-57P03: shutdown, crash,
                    // starting up. 57014: cancelled (statement_timeout). 53300: too many
                    // connections. 25006: the server is read-only (a standby).
                    c.starts_with("08")
                        || matches!(
                            c.as_ref(),
                            "57P01" | "57P02" | "57P03" | "57014" | "53300" | "25006"
                        )
                }),
                _ => false,
            },
            MetaError::Unavailable(_) => true,
            _ => false,
        }
    }

    /// The database gave up on a transaction because of a concurrent one (a deadlock or a
    /// serialization failure); running it again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            MetaError::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40P01" | "40001" | "5" | "6"))
            }
            MetaError::Contended(_) => true,
            _ => false,
        }
    }

    /// The database could not write because its disk is full (SQLite's SQLITE_FULL,
    /// PostgreSQL's `disk_full`): the server answers that as it answers a full blob disk.
    pub fn is_storage_full(&self) -> bool {
        match self {
            MetaError::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("13" | "53100"))
            }
            MetaError::Db(sqlx::Error::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// Microseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a manifest points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Blob,
    Manifest,
}

impl RefKind {
    fn code(self) -> i64 {
        match self {
            RefKind::Blob => 0,
            RefKind::Manifest => 1,
        }
    }
}

/// One reference of a manifest being stored.
#[derive(Debug, Clone)]
pub struct ManifestRef {
    pub digest: String,
    pub kind: RefKind,
    /// Must exist in the repository for the manifest to be accepted.
    pub required: bool,
}

/// A manifest to store, with everything derived from its bytes.
#[derive(Debug, Clone)]
pub struct NewManifest<'a> {
    pub repo: &'a str,
    pub digest: &'a str,
    pub media_type: &'a str,
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a str>,
    /// JSON object text, for the referrers API.
    pub annotations: Option<&'a str>,
    pub content: &'a [u8],
    pub refs: &'a [ManifestRef],
    /// Tags to point at the manifest, all in its transaction: all move or none does.
    pub tags: &'a [&'a str],
    pub actor: &'a Actor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutManifest {
    Stored,
    /// A required reference is absent; nothing was written.
    Missing(String),
    /// The tag is immutable and points at another digest; nothing was written.
    Immutable {
        tag: String,
        current: String,
        rule: String,
    },
    /// The manifest's bytes would take the tenant past its quota; nothing was written.
    OverQuota(QuotaExceeded),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub content: Vec<u8>,
}

/// The outcome of linking a blob to a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    Linked,
    /// The blob is no longer stored (a mount raced a collection).
    Gone,
    /// The repository's tenant would exceed its quota; nothing was linked.
    OverQuota(QuotaExceeded),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NotFound,
    /// Refused: this manifest still needs it.
    Referenced(String),
    /// Refused: an immutable tag would go, and the caller is not an admin.
    Immutable {
        tag: String,
        rule: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub repo: String,
    pub size: u64,
    pub hash_state: Vec<u8>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// Who made a change, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// A user name, a robot login (`tenant+name`), `anonymous`, or `system` for Berth's
    /// own work.
    pub name: String,
    /// The client's address, when the change came over the network.
    pub source: Option<String>,
}

impl Actor {
    pub fn anonymous() -> Actor {
        Actor::named("anonymous")
    }

    pub fn named(name: &str) -> Actor {
        Actor {
            name: name.to_owned(),
            source: None,
        }
    }
}

#[derive(Clone)]
pub struct MetaStore {
    pool: AnyPool,
    backend: Backend,
    /// The PostgreSQL URL, for the connection that listens for other replicas' changes.
    url: Option<std::sync::Arc<str>>,
    counters: Arc<PoolCounters>,
}

/// How the connection pool meets a database that is down, slow or failed over.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// How long a statement waits for a connection, including opening a new one (so it
    /// also bounds connecting to an unreachable server): past it, the request fails as
    /// unavailable instead of waiting for the database to come back.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every pooled connection (migrations excepted):
    /// a statement stuck behind a lock or a struggling server is cancelled. Zero: none.
    pub statement_timeout: Duration,
    /// Connections at most (PostgreSQL).
    pub max_connections: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(30),
            max_connections: 16,
        }
    }
}

/// What the pool did about failures, for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Pooled connections closed because their server had become read-only.
    pub replaced_read_only: AtomicU64,
    /// New connections refused because their server was read-only.
    pub refused_read_only: AtomicU64,
}

/// The pool's state and counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub replaced_read_only: u64,
    pub refused_read_only: u64,
}

/// Whether the session's transactions are read-only (a standby, or a fenced old primary).
async fn session_read_only(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    let v: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(conn)
        .await?;
    Ok(v == "on")
}

/// The migration that renames and disables users holding reserved names (it logs each).
const RESERVED_NAMES_MIGRATION: i64 = 7;

/// The advisory lock key migrations hold on PostgreSQL ("berth" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_6572_7468;

const SQLITE_SCHEMA: &[&str] = &[
    include_str!("../migrations/sqlite/0001_core.sql"),
    include_str!("../migrations/sqlite/0002_access.sql"),
    include_str!("../migrations/sqlite/0003_tag_history.sql"),
    include_str!("../migrations/sqlite/0004_gc.sql"),
    include_str!("../migrations/sqlite/0005_quota.sql"),
    include_str!("../migrations/sqlite/0006_settings.sql"),
    include_str!("../migrations/sqlite/0007_reserved_names.sql"),
    include_str!("../migrations/sqlite/0008_upload_quota.sql"),
    include_str!("../migrations/sqlite/0009_tags_covering.sql"),
    include_str!("../migrations/sqlite/0010_jobs.sql"),
    include_str!("../migrations/sqlite/0011_verdicts.sql"),
    include_str!("../migrations/sqlite/0012_catalogs.sql"),
    include_str!("../migrations/sqlite/0013_vulnerabilities.sql"),
    include_str!("../migrations/sqlite/0014_ui_sessions.sql"),
    include_str!("../migrations/sqlite/0015_tag_versions.sql"),
    include_str!("../migrations/sqlite/0016_catalog_packages.sql"),
    include_str!("../migrations/sqlite/0017_encryption.sql"),
    include_str!("../migrations/sqlite/0018_web_interface.sql"),
    include_str!("../migrations/sqlite/0019_p2p.sql"),
    include_str!("../migrations/sqlite/0020_p2p_state.sql"),
];
const POSTGRES_SCHEMA: &[&str] = &[
    include_str!("../migrations/postgres/0001_core.sql"),
    include_str!("../migrations/postgres/0002_access.sql"),
    include_str!("../migrations/postgres/0003_tag_history.sql"),
    include_str!("../migrations/postgres/0004_gc.sql"),
    include_str!("../migrations/postgres/0005_quota.sql"),
    include_str!("../migrations/postgres/0006_settings.sql"),
    include_str!("../migrations/postgres/0007_reserved_names.sql"),
    include_str!("../migrations/postgres/0008_upload_quota.sql"),
    include_str!("../migrations/postgres/0009_tags_covering.sql"),
    include_str!("../migrations/postgres/0010_jobs.sql"),
    include_str!("../migrations/postgres/0011_verdicts.sql"),
    include_str!("../migrations/postgres/0012_catalogs.sql"),
    include_str!("../migrations/postgres/0013_vulnerabilities.sql"),
    include_str!("../migrations/postgres/0014_ui_sessions.sql"),
    include_str!("../migrations/postgres/0015_tag_versions.sql"),
    include_str!("../migrations/postgres/0016_catalog_packages.sql"),
    include_str!("../migrations/postgres/0017_encryption.sql"),
    include_str!("../migrations/postgres/0018_web_interface.sql"),
    include_str!("../migrations/postgres/0019_p2p.sql"),
    include_str!("../migrations/postgres/0020_p2p_state.sql"),
];

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl MetaStore {
    /// Connects to `sqlite:PATH` or `postgres://…` and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<MetaStore> {
        Self::connect_with(url, &PoolSettings::default()).await
    }

    /// [`MetaStore::connect`] with the pool's timeouts chosen.
    pub async fn connect_with(url: &str, settings: &PoolSettings) -> Result<MetaStore> {
        sqlx::any::install_default_drivers();
        let counters = Arc::new(PoolCounters::default());
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(MetaError::UnknownScheme(url.to_owned()));
        };
        let options = match backend {
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers run beside the one writer; FULL sync keeps every
                        // acknowledged push across a power cut, not only a process crash.
                        sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .execute(conn)
                        .await?;
                        Ok(())
                    })
                })
                // SQLite ends a transaction by itself on some errors (SQLITE_FULL,
                // SQLITE_IOERR); sqlx's ROLLBACK then fails, it goes on counting the
                // connection as inside a transaction, and refuses every later BEGIN on it.
                // Such a connection is closed instead of being handed out again.
                .before_acquire(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Connection as _;
                        if conn.is_in_transaction() {
                            // A rollback queued by a dropped transaction may be pending.
                            conn.ping().await?;
                        }
                        Ok(!conn.is_in_transaction())
                    })
                }),
            Backend::Postgres => {
                let statement_ms = settings.statement_timeout.as_millis();
                let refused = Arc::clone(&counters);
                let replaced = Arc::clone(&counters);
                AnyPoolOptions::new()
                    .max_connections(settings.max_connections.max(1))
                    .after_connect(move |conn, _| {
                        let refused = Arc::clone(&refused);
                        Box::pin(async move {
                            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                                "SET statement_timeout = {statement_ms}"
                            )))
                            .execute(&mut *conn)
                            .await?;
                            // During a failover the address may lead to a standby (or the
                            // fenced old primary) for a while: such a connection could
                            // only fail every write, so it is refused and the pool tries
                            // again until its acquire timeout.
                            if session_read_only(conn).await? {
                                refused.refused_read_only.fetch_add(1, Ordering::Relaxed);
                                return Err(sqlx::Error::Protocol(
                                    "the server only accepts read-only transactions".into(),
                                ));
                            }
                            Ok(())
                        })
                    })
                    .before_acquire(move |conn, _| {
                        let replaced = Arc::clone(&replaced);
                        Box::pin(async move {
                            let seen = READ_ONLY_SEEN_AT.load(Ordering::Relaxed);
                            let watch = i64::try_from(READ_ONLY_WATCH.as_micros()).unwrap_or(0);
                            if seen == 0 || now_micros().saturating_sub(seen) > watch {
                                return Ok(true);
                            }
                            // Recently some write met a read-only server: a pooled
                            // connection still attached to it is closed, not reused.
                            if session_read_only(conn).await? {
                                replaced.replaced_read_only.fetch_add(1, Ordering::Relaxed);
                                return Ok(false);
                            }
                            Ok(true)
                        })
                    })
            }
        };
        // SQLite is a file beside the process: it does not go away, and under a burst of
        // writers its queue for the one write lock is worth waiting out.
        let options = match backend {
            Backend::Postgres => options.acquire_timeout(settings.acquire_timeout),
            Backend::Sqlite => options,
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let pool = options.connect(&url).await?;
        let store = MetaStore {
            pool,
            backend,
            url: (backend == Backend::Postgres).then(|| std::sync::Arc::from(url.as_str())),
            counters,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema version the database is at, and the newest this build knows.
    pub async fn schema_version(&self) -> Result<(i64, i64)> {
        let v: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM berth_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let known = match self.backend {
            Backend::Sqlite => SQLITE_SCHEMA.len(),
            Backend::Postgres => POSTGRES_SCHEMA.len(),
        };
        Ok((v, i64::try_from(known).unwrap_or(i64::MAX)))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool's connections and what it replaced.
    pub fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            replaced_read_only: self.counters.replaced_read_only.load(Ordering::Relaxed),
            refused_read_only: self.counters.refused_read_only.load(Ordering::Relaxed),
        }
    }

    /// One cheap round trip: whether the database answers now.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.write().await?;
        if self.backend == Backend::Postgres {
            // Replicas (and `berth migrate` init containers) starting together would
            // otherwise race on the schema: two `CREATE TABLE IF NOT EXISTS` at once fail
            // on PostgreSQL's catalog. A transaction-scoped advisory lock makes the others
            // wait, then find the steps applied. (SQLite's `BEGIN IMMEDIATE` already
            // serialises.)
            // Waiting for another replica's migration, or one rewriting a large table,
            // may take longer than the pool's statement timeout, which is for requests.
            sqlx::raw_sql("SET LOCAL statement_timeout = 0")
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS berth_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        // Each step is applied unless its own row is there (not "everything above the
        // highest"): a step added beside others, or rewound on purpose, is still applied.
        let applied: std::collections::HashSet<i64> =
            sqlx::query_scalar("SELECT version FROM berth_schema")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let steps = match self.backend {
            Backend::Sqlite => SQLITE_SCHEMA,
            Backend::Postgres => POSTGRES_SCHEMA,
        };
        let mut renamed = Vec::new();
        for (i, sql) in steps.iter().enumerate() {
            let version = i as i64 + 1;
            if applied.contains(&version) {
                continue;
            }
            let audit_before: i64 = if version == RESERVED_NAMES_MIGRATION {
                sqlx::query("SELECT COALESCE(MAX(id), 0) FROM audit_log")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?
            } else {
                0
            };
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            if version == RESERVED_NAMES_MIGRATION {
                let rows = sqlx::query(
                    "SELECT target, detail FROM audit_log WHERE id > $1 \
                     AND actor = 'system:migration' AND action = 'user.rename' ORDER BY id",
                )
                .bind(audit_before)
                .fetch_all(&mut *tx)
                .await?;
                for r in rows {
                    let target: Option<String> = r.try_get(0)?;
                    let detail: Option<String> = r.try_get(1)?;
                    renamed.push((target.unwrap_or_default(), detail.unwrap_or_default()));
                }
            }
            sqlx::query("INSERT INTO berth_schema (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "applied metadata schema migration");
        }
        Self::fill_version_keys(&mut tx).await?;
        tx.commit().await?;
        for (user, what) in renamed {
            tracing::warn!(
                user = %user,
                "user {user}: {what}; check its roles before `berth user enable {user}`"
            );
        }
        Ok(())
    }

    /// Begins a write transaction. SQLite's must take the write lock up front: a deferred
    /// transaction that reads and then writes fails with SQLITE_BUSY if another writer got
    /// there first, instead of waiting for it.
    async fn write(&self) -> Result<Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    async fn audit(
        tx: &mut Transaction<'static, sqlx::Any>,
        actor: &Actor,
        action: &str,
        repo: Option<&str>,
        target: Option<&str>,
    ) -> Result<()> {
        Self::audit_row(
            tx,
            &AuditRecord {
                at: now_micros(),
                actor: actor.name.clone(),
                source: actor.source.clone(),
                action: action.to_owned(),
                tenant: repo.map(|r| berth_auth::tenant_of(r).to_owned()),
                repository: repo.map(str::to_owned),
                target: target.map(str::to_owned),
                outcome: "ok".to_owned(),
                detail: None,
            },
        )
        .await
    }

    async fn audit_row(tx: &mut Transaction<'static, sqlx::Any>, r: &AuditRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, repository, target, tenant, source, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(r.at)
        .bind(&r.actor)
        .bind(&r.action)
        .bind(r.repository.as_deref())
        .bind(r.target.as_deref())
        .bind(r.tenant.as_deref())
        .bind(r.source.as_deref())
        .bind(&r.outcome)
        .bind(r.detail.as_deref())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn ensure_repo_in(tx: &mut Transaction<'static, sqlx::Any>, name: &str) -> Result<i64> {
        sqlx::query("INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now_micros())
            .execute(&mut **tx)
            .await?;
        let id: i64 = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
        Ok(id)
    }

    async fn repo_id_in<'e, E>(exec: E, name: &str) -> Result<Option<i64>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(name)
            .fetch_optional(exec)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Whether the repository exists (has ever received content).
    pub async fn repo_exists(&self, name: &str) -> Result<bool> {
        Ok(Self::repo_id_in(&self.pool, name).await?.is_some())
    }

    // ---- uploads ----

    /// Records a new upload session, creating the repository if needed.
    pub async fn create_upload(&self, id: &str, repo: &str, hash_state: &[u8]) -> Result<()> {
        let mut tx = self.write().await?;
        let repo_id = Self::ensure_repo_in(&mut tx, repo).await?;
        let now = now_micros();
        sqlx::query(
            "INSERT INTO uploads (id, repo_id, size, hash_state, created_at, updated_at) VALUES ($1, $2, 0, $3, $4, $4)",
        )
        .bind(id)
        .bind(repo_id)
        .bind(hash_state)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_upload(&self, id: &str) -> Result<Option<Upload>> {
        let row = sqlx::query(
            "SELECT r.name, u.size, u.hash_state, u.updated_at FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r: AnyRow| -> Result<Upload> {
            Ok(Upload {
                repo: r.try_get(0)?,
                size: to_u64(r.try_get(1)?),
                hash_state: r.try_get(2)?,
                updated_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Moves an upload from `from` to `to` bytes, giving back the `reserved` bytes the
    /// append had reserved (see [`MetaStore::reserve_upload`]): its bytes now count as the
    /// session's size instead. Returns false if another request moved it first (the
    /// caller's data is then not acknowledged, and its reservation is not given back).
    pub async fn advance_upload(
        &self,
        id: &str,
        from: u64,
        to: u64,
        hash_state: &[u8],
        reserved: u64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET size = $1, hash_state = $2, updated_at = $3, \
             reserved = CASE WHEN reserved > $6 THEN reserved - $6 ELSE 0 END \
             WHERE id = $4 AND size = $5",
        )
        .bind(to_i64(to))
        .bind(hash_state)
        .bind(now_micros())
        .bind(id)
        .bind(to_i64(from))
        .bind(to_i64(reserved))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Upload sessions untouched since `before` (microseconds).
    pub async fn stale_uploads(&self, before: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM uploads WHERE updated_at < $1")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    // ---- blobs ----

    /// Records a verified blob and links it to `repo`; if `upload` is given, that session is
    /// closed in the same transaction (its bytes, counted until now, become the blob's).
    pub async fn link_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        upload: Option<&str>,
        actor: &Actor,
    ) -> Result<Linked> {
        let mut tx = self.write().await?;
        let repo_id = Self::ensure_repo_in(&mut tx, repo).await?;
        let now = now_micros();
        let over = self
            .over_quota(&mut tx, repo, quota::Counted::Blob, digest, size, upload)
            .await?;
        if let Some(over) = over {
            // Only when the quota changed since the caller's `admit_blob`: the bytes are in
            // place already. Keep a row for them, unlinked, so garbage collection removes
            // them (deleting them here would race another tenant linking the same digest);
            // only the session and the link are refused.
            sqlx::query("INSERT INTO blobs (digest, size, created_at, written_at) VALUES ($1, $2, $3, $3) ON CONFLICT (digest) DO NOTHING")
                .bind(digest)
                .bind(to_i64(size))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(id) = upload {
                sqlx::query("DELETE FROM uploads WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(Linked::OverQuota(over));
        }
        sqlx::query("INSERT INTO blobs (digest, size, created_at, written_at) VALUES ($1, $2, $3, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest)
            .bind(to_i64(size))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // A link written again counts as new: garbage collection keeps young links, and a
        // client that just pushed this blob is about to reference it.
        sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repo_id, digest) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(id) = upload {
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Self::audit(&mut tx, actor, "blob.link", Some(repo), Some(digest)).await?;
        tx.commit().await?;
        Ok(Linked::Linked)
    }

    /// Links a blob the registry already has to `repo` (a cross-repository mount).
    /// `Gone` if the blob went meanwhile, e.g. swept by a collection since the caller
    /// looked.
    pub async fn link_existing_blob(
        &self,
        repo: &str,
        digest: &str,
        actor: &Actor,
    ) -> Result<Linked> {
        let mut tx = self.write().await?;
        let repo_id = Self::ensure_repo_in(&mut tx, repo).await?;
        if let Some(size) = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?
        {
            let size = to_u64(size.try_get(0)?);
            let over = self
                .over_quota(&mut tx, repo, quota::Counted::Blob, digest, size, None)
                .await?;
            if let Some(over) = over {
                tx.rollback().await?;
                return Ok(Linked::OverQuota(over));
            }
        }
        let linked = sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at) SELECT $1, digest, $2 FROM blobs WHERE digest = $3 \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(now_micros())
        .bind(digest)
        .execute(&mut *tx)
        .await;
        match linked {
            Ok(_) => {}
            // The row went while this waited for the collection's lock.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Ok(Linked::Gone);
            }
            Err(e) => return Err(e.into()),
        }
        let present = sqlx::query("SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !present {
            tx.rollback().await?;
            return Ok(Linked::Gone);
        }
        Self::audit(&mut tx, actor, "blob.link", Some(repo), Some(digest)).await?;
        tx.commit().await?;
        Ok(Linked::Linked)
    }

    /// Records that a manifest was pulled now (callers rate-limit this per manifest).
    pub async fn mark_pulled(&self, repo: &str, digest: &str) -> Result<()> {
        sqlx::query(
            "UPDATE manifests SET pulled_at = $1 WHERE digest = $2 AND repo_id = (SELECT id FROM repositories WHERE name = $3)",
        )
        .bind(now_micros())
        .bind(digest)
        .bind(repo)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Size of a blob if it is linked to `repo`.
    pub async fn repo_blob(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id JOIN blobs b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2",
        )
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.map(to_u64))
    }

    /// Size of a blob known to the registry, in any repository.
    pub async fn blob(&self, digest: &str) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.map(to_u64))
    }

    /// Unlinks a blob from a repository, unless a manifest there still needs it.
    pub async fn unlink_blob(&self, repo: &str, digest: &str, actor: &Actor) -> Result<Removal> {
        let mut tx = self.write().await?;
        let Some(repo_id) = Self::repo_id_in(&mut *tx, repo).await? else {
            return Ok(Removal::NotFound);
        };
        // Delete first, then look for users: on PostgreSQL the row lock taken here orders
        // this against a concurrent manifest put that touches the same link.
        let gone = sqlx::query("DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(Removal::NotFound);
        }
        let inv = Invalidation::Blob {
            repo: repo.to_owned(),
            digest: digest.to_owned(),
        };
        self.notify(&mut tx, inv).await?;
        Self::commit_unless_used(
            tx,
            repo_id,
            digest,
            RefKind::Blob,
            actor,
            "blob.unlink",
            repo,
        )
        .await
    }

    /// Ends a removal whose row is already deleted in `tx`: if a manifest in the repository
    /// still needs `digest` as `kind`, roll back and name it; else audit and commit. Looking
    /// after the delete, not before, is what orders this against a concurrent put.
    async fn commit_unless_used(
        mut tx: Transaction<'static, sqlx::Any>,
        repo_id: i64,
        digest: &str,
        kind: RefKind,
        actor: &Actor,
        action: &str,
        repo: &str,
    ) -> Result<Removal> {
        let user = sqlx::query(
            "SELECT manifest_digest FROM manifest_refs WHERE repo_id = $1 AND child_digest = $2 AND kind = $3 LIMIT 1",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(kind.code())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(user) = user {
            tx.rollback().await?;
            return Ok(Removal::Referenced(user.try_get(0)?));
        }
        Self::audit(&mut tx, actor, action, Some(repo), Some(digest)).await?;
        tx.commit().await?;
        Ok(Removal::Removed)
    }

    // ---- manifests and tags ----

    /// Stores a manifest, its references and optionally a tag in one transaction, after
    /// checking that every required reference exists in the repository. No tag rules.
    pub async fn put_manifest(&self, m: &NewManifest<'_>) -> Result<PutManifest> {
        self.put_manifest_guarded(m, TagGuard::NONE).await
    }

    /// [`Self::put_manifest`] under tag rules: a tag the guard calls immutable is not moved
    /// to another digest, decided in the transaction that would move it, so of concurrent
    /// pushes to a new immutable tag exactly one wins.
    pub async fn put_manifest_guarded(
        &self,
        m: &NewManifest<'_>,
        guard: TagGuard<'_>,
    ) -> Result<PutManifest> {
        let mut tx = self.write().await?;
        let repo_id = Self::ensure_repo_in(&mut tx, m.repo).await?;
        // The tenant's row first (when it has a quota), as every quota decision locks it
        // before the rows below.
        let size = m.content.len() as u64;
        let over = self
            .over_quota(
                &mut tx,
                m.repo,
                quota::Counted::Manifest,
                m.digest,
                size,
                None,
            )
            .await?;
        if let Some(over) = over {
            tx.rollback().await?;
            return Ok(PutManifest::OverQuota(over));
        }
        // Locked in one order (blobs, then manifests, each by digest), the order garbage
        // collection locks in too, so the two never wait on each other in a cycle.
        let mut required: Vec<&ManifestRef> = m.refs.iter().filter(|r| r.required).collect();
        required.sort_by(|a, b| (a.kind.code(), &a.digest).cmp(&(b.kind.code(), &b.digest)));
        for r in required {
            // A no-op UPDATE rather than a SELECT: it locks the row on PostgreSQL, so a
            // concurrent delete of the blob or child cannot slip in before this commits.
            let sql = match r.kind {
                RefKind::Blob => {
                    "UPDATE repo_blobs SET created_at = created_at WHERE repo_id = $1 AND digest = $2"
                }
                RefKind::Manifest => {
                    "UPDATE manifests SET created_at = created_at WHERE repo_id = $1 AND digest = $2"
                }
            };
            let found = sqlx::query(sql)
                .bind(repo_id)
                .bind(r.digest.as_str())
                .execute(&mut *tx)
                .await?;
            if found.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(PutManifest::Missing(r.digest.clone()));
            }
        }
        let now = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, artifact_type, subject, annotations, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(m.digest)
        .bind(m.media_type)
        .bind(m.artifact_type)
        .bind(m.subject)
        .bind(m.annotations)
        .bind(m.content)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            for r in m.refs {
                sqlx::query(
                    "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, kind) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (repo_id, manifest_digest, child_digest) DO NOTHING",
                )
                .bind(repo_id)
                .bind(m.digest)
                .bind(r.digest.as_str())
                .bind(r.kind.code())
                .execute(&mut *tx)
                .await?;
            }
            Self::audit(
                &mut tx,
                m.actor,
                "manifest.put",
                Some(m.repo),
                Some(m.digest),
            )
            .await?;
        }
        // In one order, so two pushes tagging the same names lock them alike and cannot
        // wait on each other in a cycle.
        let mut tags: Vec<&str> = m.tags.to_vec();
        tags.sort_unstable();
        tags.dedup();
        // Each tag written, with the manifest it named before when the push moved it.
        let mut written: Vec<(&str, Option<String>)> = Vec::with_capacity(tags.len());
        for tag in tags {
            let mut previous = None;
            let rule = (guard.immutable)(tag);
            let write = tags::TagWrite {
                repo_id,
                tag,
                digest: m.digest,
                kind: None,
                expected: None,
                immutable: rule.as_deref(),
                // A push never moves an immutable tag, not even an admin's.
                override_immutable: false,
                actor: m.actor,
            };
            match Self::write_tag(&mut tx, &write).await? {
                tags::Written::Immutable(current) => {
                    tx.rollback().await?;
                    return Ok(PutManifest::Immutable {
                        tag: tag.to_owned(),
                        current,
                        rule: rule.unwrap_or_default(),
                    });
                }
                tags::Written::Changed { previous: p } => previous = p,
                tags::Written::Unchanged | tags::Written::Moved(_) => {}
            }
            let target = format!("{tag}@{}", m.digest);
            Self::audit(&mut tx, m.actor, "tag.set", Some(m.repo), Some(&target)).await?;
            let inv = Invalidation::Tag {
                repo: m.repo.to_owned(),
                tag: tag.to_owned(),
            };
            self.notify(&mut tx, inv).await?;
            written.push((tag, previous));
        }
        // One change per tag, as Distribution sends one push event per tag; an untagged
        // push is one change without a tag.
        let untagged = [(None, None)];
        let changes: Vec<(Option<&str>, Option<&str>)> = if written.is_empty() {
            untagged.to_vec()
        } else {
            written
                .iter()
                .map(|(t, p)| (Some(*t), p.as_deref()))
                .collect()
        };
        for (tag, previous) in changes {
            let change = Change {
                kind: ChangeKind::Push,
                repo: m.repo,
                digest: m.digest,
                media_type: Some(m.media_type),
                size: Some(size),
                tag,
                previous,
                tags: &[],
                actor: m.actor,
                at: now,
            };
            Self::queue_jobs_for(&mut tx, guard.jobs, &change).await?;
        }
        if m.subject.is_some() || m.tags.iter().any(|t| verdicts::may_sign(t)) {
            self.bump_verify_epoch(&mut tx, m.repo).await?;
        }
        tx.commit().await?;
        Ok(PutManifest::Stored)
    }

    pub async fn get_manifest(&self, repo: &str, digest: &str) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.media_type, m.content FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<StoredManifest> {
            Ok(StoredManifest {
                media_type: r.try_get(0)?,
                content: r.try_get(1)?,
            })
        })
        .transpose()
    }

    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo)
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Deletes a manifest and every tag on it, unless an index in the repository still
    /// lists it. No tag rules.
    pub async fn delete_manifest(
        &self,
        repo: &str,
        digest: &str,
        actor: &Actor,
    ) -> Result<Removal> {
        self.delete_manifest_guarded(repo, digest, actor, TagGuard::NONE)
            .await
    }

    /// [`Self::delete_manifest`] under tag rules: refused while an immutable tag points at
    /// the manifest, unless the guard acts as an admin. Each removed tag is recorded in the
    /// tag history.
    pub async fn delete_manifest_guarded(
        &self,
        repo: &str,
        digest: &str,
        actor: &Actor,
        guard: TagGuard<'_>,
    ) -> Result<Removal> {
        let mut tx = self.write().await?;
        let Some(repo_id) = Self::repo_id_in(&mut *tx, repo).await? else {
            return Ok(Removal::NotFound);
        };
        let removed = match Self::remove_tags_of(&mut tx, repo_id, digest, actor, guard).await? {
            Ok(names) => names,
            Err(refused) => {
                tx.rollback().await?;
                return Ok(refused);
            }
        };
        let gone = sqlx::query("DELETE FROM manifests WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Removal::NotFound);
        }
        let inv = Invalidation::Manifest {
            repo: repo.to_owned(),
            digest: digest.to_owned(),
        };
        self.notify(&mut tx, inv).await?;
        // A signature, or an index whose signature covered its children, may be gone.
        self.bump_verify_epoch(&mut tx, repo).await?;
        // Rolled back with the rest if an index still lists the manifest.
        let change = Change {
            kind: ChangeKind::DeleteManifest,
            repo,
            digest,
            media_type: None,
            size: None,
            tag: None,
            previous: None,
            tags: &removed,
            actor,
            at: now_micros(),
        };
        Self::queue_jobs_for(&mut tx, guard.jobs, &change).await?;
        Self::commit_unless_used(
            tx,
            repo_id,
            digest,
            RefKind::Manifest,
            actor,
            "manifest.delete",
            repo,
        )
        .await
    }

    pub async fn delete_tag(&self, repo: &str, tag: &str, actor: &Actor) -> Result<Removal> {
        self.delete_tag_guarded(repo, tag, actor, TagGuard::NONE)
            .await
    }

    /// Deletes a tag, recording it in the tag history; an immutable one only as an admin.
    pub async fn delete_tag_guarded(
        &self,
        repo: &str,
        tag: &str,
        actor: &Actor,
        guard: TagGuard<'_>,
    ) -> Result<Removal> {
        let mut tx = self.write().await?;
        let Some(repo_id) = Self::repo_id_in(&mut *tx, repo).await? else {
            return Ok(Removal::NotFound);
        };
        let Some(old) = Self::lock_tag(&mut tx, repo_id, tag).await? else {
            tx.rollback().await?;
            return Ok(Removal::NotFound);
        };
        if !guard.admin
            && let Some(rule) = (guard.immutable)(tag)
        {
            tx.rollback().await?;
            return Ok(Removal::Immutable {
                tag: tag.to_owned(),
                rule,
            });
        }
        sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        Self::record_tag(
            &mut tx,
            repo_id,
            tag,
            TagChange::Delete,
            Some(&old),
            None,
            actor,
        )
        .await?;
        Self::audit(&mut tx, actor, "tag.delete", Some(repo), Some(tag)).await?;
        let change = Change {
            kind: ChangeKind::DeleteTag,
            repo,
            digest: &old,
            media_type: None,
            size: None,
            tag: Some(tag),
            previous: None,
            tags: &[],
            actor,
            at: now_micros(),
        };
        Self::queue_jobs_for(&mut tx, guard.jobs, &change).await?;
        let inv = Invalidation::Tag {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
        };
        self.notify(&mut tx, inv).await?;
        if verdicts::may_sign(tag) {
            self.bump_verify_epoch(&mut tx, repo).await?;
        }
        tx.commit().await?;
        Ok(Removal::Removed)
    }

    /// Up to `limit` tags after `last` in the one tag order; `None` if the repository is
    /// unknown.
    pub async fn list_tags(
        &self,
        repo: &str,
        last: Option<&str>,
        limit: u64,
    ) -> Result<Option<Vec<String>>> {
        let Some(repo_id) = Self::repo_id_in(&self.pool, repo).await? else {
            return Ok(None);
        };
        let after = last.map(berth_oci::tag_sort_key).unwrap_or_default();
        // One row holding the page joined by newlines (which no tag can contain), not a row
        // per tag: the driver's per-row cost was most of a large page's time. The page is
        // read in order from the covering index `tags_listing`. SQLite runs an ordered,
        // limited subquery as a co-routine that hands the aggregate its rows in that
        // order, so it needs no ORDER BY of its own, which would sort the page again (it
        // tripled a walk's time); PostgreSQL only promises the order with one.
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT string_agg(name, $4) FROM \
                 (SELECT name FROM tags WHERE repo_id = $1 AND sort_key > $2 \
                  ORDER BY sort_key LIMIT $3) page"
            }
            Backend::Postgres => {
                "SELECT string_agg(name, $4 ORDER BY sort_key) FROM \
                 (SELECT name, sort_key FROM tags WHERE repo_id = $1 AND sort_key > $2 \
                  ORDER BY sort_key LIMIT $3) page"
            }
        };
        let page: Option<String> = sqlx::query_scalar(sql)
            .bind(repo_id)
            .bind(after)
            .bind(to_i64(limit))
            .bind("\n")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(match page {
            Some(p) => p.split('\n').map(str::to_owned).collect(),
            None => Vec::new(),
        }))
    }

    /// Repositories holding at least one manifest, in byte order, after `last`.
    pub async fn catalog(&self, last: Option<&str>, limit: u64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT name FROM repositories r WHERE name > $1 \
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) ORDER BY name LIMIT $2",
        )
        .bind(last.unwrap_or(""))
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Like [`MetaStore::catalog`], only names containing `needle` (repository names are
    /// lowercase, as the needle must be). The database compares each name where it lies:
    /// no name that does not match leaves it, so a rare match costs one pass over the
    /// names' index, not a round trip per hundred names.
    pub async fn catalog_matching(
        &self,
        needle: &str,
        last: Option<&str>,
        limit: u64,
    ) -> Result<Vec<String>> {
        let mut pattern = String::from("%");
        for c in needle.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        let rows = sqlx::query(
            "SELECT name FROM repositories r WHERE name > $1 AND name LIKE $3 ESCAPE '\\' \
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) ORDER BY name LIMIT $2",
        )
        .bind(last.unwrap_or(""))
        .bind(to_i64(limit))
        .bind(pattern)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Manifests in `repo` whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, length(m.content), m.artifact_type, m.annotations \
             FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3) ORDER BY m.digest",
        )
        .bind(repo)
        .bind(subject)
        .bind(artifact_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Referrer {
                    digest: r.try_get(0)?,
                    media_type: r.try_get(1)?,
                    size: to_u64(r.try_get::<i64, _>(2)?),
                    artifact_type: r.try_get(3)?,
                    annotations: r.try_get(4)?,
                })
            })
            .collect()
    }
}
