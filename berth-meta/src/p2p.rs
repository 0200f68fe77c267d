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
