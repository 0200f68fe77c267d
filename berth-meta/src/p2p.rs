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
