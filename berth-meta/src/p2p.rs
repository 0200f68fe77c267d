//! Node-local sharing's keys, shared by every replica: the first to start stores its
//! freshly made keys, the others (and later starts) read them.

use sqlx::Row;

use crate::{MetaStore, Result, now_micros};

impl MetaStore {
    /// The stored p2p key `name` (secret and the key-encryption key sealing it), storing
    /// `secret`/`sealed_by` first if there is none: replicas racing here all read the
    /// one that won.
    pub async fn ensure_p2p_key(
        &self,
        name: &str,
        secret: &[u8],
        sealed_by: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO p2p_keys (name, secret, sealed_by, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(secret.to_vec())
        .bind(sealed_by)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT secret, sealed_by FROM p2p_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        let out = (row.try_get(0)?, row.try_get(1)?);
        tx.commit().await?;
        Ok(out)
    }
}

impl MetaStore {
    /// Every stored p2p key: name, secret (sealed when `sealed_by` is set) and the
    /// key-encryption key sealing it, for `berth keys status`, `rewrap` and `retire`.
    pub async fn p2p_keys(&self) -> Result<Vec<(String, Vec<u8>, Option<String>)>> {
        sqlx::query("SELECT name, secret, sealed_by FROM p2p_keys ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Replaces the sealed p2p key `name` only if it is still `old` under `old_sealed_by`
    /// (a replica or another `rewrap` may have changed it since it was read).
    pub async fn reseal_p2p_key(
        &self,
        name: &str,
        old: &[u8],
        old_sealed_by: &str,
        new: &[u8],
        sealed_by: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE p2p_keys SET secret = $1, sealed_by = $2 WHERE name = $3 AND secret = $4 \
             AND sealed_by = $5",
        )
        .bind(new.to_vec())
        .bind(sealed_by)
        .bind(name)
        .bind(old.to_vec())
        .bind(old_sealed_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The first key of the advisory locks serialising announcements of one blob (the second
/// is the digest's [`lock_key`]); the migration lock uses the one-key form.
const ANNOUNCE_LOCK_CLASS: i32 = 0x5032_5031;

/// A key for `digest` that every replica computes alike (FNV-1a, folded to 32 bits).
fn lock_key(digest: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in digest.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h >> 32) ^ h) as u32 as i32
}

/// A manifest pull of a node, as its agent learns it: the blobs its node may now fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pGrant {
    /// The cursor: grants are answered in this order.
    pub id: i64,
    pub manifest: String,
    pub repo: String,
    pub blobs: Vec<String>,
    pub expires_at: i64,
}

/// One holder of a blob as the tracker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pHolder {
    pub digest: String,
    pub node: String,
    /// `ip:port` peers reach it on.
    pub addr: String,
}

/// Node-local sharing's state, shared by every replica (table per kind, each row with its
/// expiry in unix seconds). Every query on the agents' path goes by a primary key or an
/// index prefix: the node's address, (address, digest), or the digest.
impl MetaStore {
    /// Records that the agent `name` is the node at `addr`, until `expires_at`. When the
    /// address had another name, what was announced from it was another agent's and is
    /// forgotten.
    pub async fn p2p_enroll_node(
        &self,
        addr: &str,
        name: &str,
        port: u16,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let old: Option<String> = sqlx::query("SELECT name FROM p2p_nodes WHERE addr = $1")
            .bind(addr)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        sqlx::query(
            "INSERT INTO p2p_nodes (addr, name, port, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (addr) DO UPDATE SET name = excluded.name, port = excluded.port, \
             expires_at = excluded.expires_at",
        )
        .bind(addr)
        .bind(name)
        .bind(i64::from(port))
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if old.is_some_and(|o| o != name) {
            sqlx::query("DELETE FROM p2p_holders WHERE host = $1")
                .bind(addr)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The node enrolled at `addr` (name, peer port), unless its enrollment expired.
    pub async fn p2p_node(&self, addr: &str, now: i64) -> Result<Option<(String, u16)>> {
        sqlx::query("SELECT name, port FROM p2p_nodes WHERE addr = $1 AND expires_at > $2")
            .bind(addr)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| {
                let port: i64 = r.try_get(1)?;
                Ok((r.try_get(0)?, u16::try_from(port).unwrap_or(0)))
            })
            .transpose()
    }

    /// Every enrolled node (address, name, port), for the tracker's view.
    pub async fn p2p_nodes(&self, now: i64) -> Result<Vec<(String, String, u16)>> {
        sqlx::query("SELECT addr, name, port FROM p2p_nodes WHERE expires_at > $1 ORDER BY name")
            .bind(now)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let port: i64 = r.try_get(2)?;
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    u16::try_from(port).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// A manifest naming `blobs` was served to the node at `addr` through `repo`: its
    /// agent may fetch them until `expires_at`, and learns so through a new grant (one per
    /// node and manifest: pulling it again replaces the old one, with a new cursor).
    pub async fn p2p_record_pull(
        &self,
        addr: &str,
        manifest: &str,
        repo: &str,
        blobs: &[String],
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        // Locks the node's row first: a node's grants are then written one after the
        // other, so their cursors (drawn at insert) commit in order and an agent reading
        // from a cursor misses none (PostgreSQL; SQLite writes one at a time anyway).
        sqlx::query("UPDATE p2p_nodes SET port = port WHERE addr = $1")
            .bind(addr)
            .execute(&mut *tx)
            .await?;
        for d in blobs {
            sqlx::query(
                "INSERT INTO p2p_pulls (addr, digest, repo, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (addr, digest) DO UPDATE SET repo = excluded.repo, \
                 expires_at = excluded.expires_at",
            )
            .bind(addr)
            .bind(d)
            .bind(repo)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM p2p_grants WHERE addr = $1 AND manifest = $2")
            .bind(addr)
            .bind(manifest)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO p2p_grants (addr, manifest, repo, blobs, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(addr)
        .bind(manifest)
        .bind(repo)
        .bind(blobs.join("\n"))
        .bind(now_micros())
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        self.notify(
            &mut tx,
            crate::Invalidation::Granted {
                addr: addr.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The repository through which the node at `addr` may fetch `digest`, if it may.
    pub async fn p2p_pull(&self, addr: &str, digest: &str, now: i64) -> Result<Option<String>> {
        sqlx::query(
            "SELECT repo FROM p2p_pulls WHERE addr = $1 AND digest = $2 AND expires_at > $3",
        )
        .bind(addr)
        .bind(digest)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(Into::into)
    }

    /// Authorized pulls not expired (the tracker's view; counts every row).
    pub async fn p2p_pull_count(&self, now: i64) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM p2p_pulls WHERE expires_at > $1")
            .bind(now)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(crate::to_u64(n))
    }

    /// Rows in the pulls table, expired or not (what its cap is about).
    pub async fn p2p_pull_rows(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM p2p_pulls")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(crate::to_u64(n))
    }

    /// The node's grants after cursor `after`, in cursor order (a node's grants are
    /// written one at a time, see [`MetaStore::p2p_record_pull`], so none can appear
    /// later below a cursor already answered).
    pub async fn p2p_grants(&self, addr: &str, after: i64, now: i64) -> Result<Vec<P2pGrant>> {
        sqlx::query(
            "SELECT id, manifest, repo, blobs, expires_at FROM p2p_grants \
             WHERE addr = $1 AND id > $2 AND expires_at > $3 ORDER BY id",
        )
        .bind(addr)
        .bind(after)
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let blobs: String = r.try_get(3)?;
            Ok(P2pGrant {
                id: r.try_get(0)?,
                manifest: r.try_get(1)?,
                repo: r.try_get(2)?,
                blobs: blobs
                    .split('\n')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                expires_at: r.try_get(4)?,
            })
        })
        .collect()
    }

    /// The node `node` (at `host`, reached on `addr`) holds or fetches `digest`: answers
    /// the holders that announced it before, not expired, oldest first. One transaction
    /// reads, then writes: of two nodes announcing at once, at most one sees the other,
    /// so they never wait on each other. Past `max` holders the oldest are forgotten.
    #[allow(clippy::too_many_arguments)]
    pub async fn p2p_announce(
        &self,
        digest: &str,
        node: &str,
        host: &str,
        addr: &str,
        now_micros: i64,
        expires_at: i64,
        now: i64,
        max: usize,
    ) -> Result<Vec<P2pHolder>> {
        let mut tx = self.write().await?;
        if self.backend == crate::Backend::Postgres {
            // Announcements of one blob one at a time, across replicas: otherwise two
            // nodes announcing at once both read before either wrote, both find no holder
            // and both fetch from the registry. (SQLite's `BEGIN IMMEDIATE` serialises.)
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(ANNOUNCE_LOCK_CLASS)
                .bind(lock_key(digest))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM p2p_holders WHERE digest = $1 AND expires_at <= $2")
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut rows: Vec<(String, String)> = sqlx::query(
            "SELECT node, addr FROM p2p_holders WHERE digest = $1 ORDER BY announced_at",
        )
        .bind(digest)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_>>()?;
        rows.retain(|(n, _)| n != node);
        if rows.len() >= max {
            let drop = rows.len() + 1 - max;
            for (n, _) in rows.drain(..drop) {
                sqlx::query("DELETE FROM p2p_holders WHERE digest = $1 AND node = $2")
                    .bind(digest)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "INSERT INTO p2p_holders (digest, node, host, addr, announced_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest, node) DO UPDATE \
             SET host = excluded.host, addr = excluded.addr, announced_at = excluded.announced_at, \
             expires_at = excluded.expires_at",
        )
        .bind(digest)
        .bind(node)
        .bind(host)
        .bind(addr)
        .bind(now_micros)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(node, addr)| P2pHolder {
                digest: digest.to_owned(),
                node,
                addr,
            })
            .collect())
    }

    /// The holders of `digest` not expired, or of every blob when `None` (the tracker's
    /// view), oldest announcement first.
    pub async fn p2p_holders(&self, digest: Option<&str>, now: i64) -> Result<Vec<P2pHolder>> {
        let q = match digest {
            Some(d) => sqlx::query(
                "SELECT digest, node, addr FROM p2p_holders WHERE digest = $1 AND expires_at > $2 \
                 ORDER BY announced_at",
            )
            .bind(d)
            .bind(now),
            None => sqlx::query(
                "SELECT digest, node, addr FROM p2p_holders WHERE expires_at > $1 \
                 ORDER BY digest, announced_at",
            )
            .bind(now),
        };
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(P2pHolder {
                    digest: r.try_get(0)?,
                    node: r.try_get(1)?,
                    addr: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// `node` no longer holds `digest`: it leaves the tracker now, not at its expiry.
    /// Whether it was named.
    pub async fn p2p_withdraw(&self, digest: &str, node: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM p2p_holders WHERE digest = $1 AND node = $2")
            .bind(digest)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes every expired row of the sharing state; the number deleted.
    pub async fn p2p_purge(&self, now: i64) -> Result<u64> {
        let mut n = 0;
        for table in ["p2p_pulls", "p2p_grants", "p2p_holders", "p2p_nodes"] {
            n += sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE expires_at <= $1"
            )))
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(n)
    }
}
