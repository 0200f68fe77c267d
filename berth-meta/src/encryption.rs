//! Encryption at rest: which blobs are sealed and under which wrapped data key, and the
//! check values of the key-encryption keys. The keys themselves are never here, only
//! wrapped (opaque bytes to this crate).

use sqlx::Row;

use crate::{MetaStore, Result, now_micros};

/// A blob's data key as stored: wrapped by the key-encryption key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: String,
    pub wrapped: Vec<u8>,
}

/// What uses one key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub key_id: String,
    pub blobs: u64,
}

/// The blob's bytes are sealed under the row's key, in format 1 (written by the release
/// before format 2; these rows are only read, never written, now).
const SEALED_V1: &str = "sealed";
/// `berth encrypt` of that release was sealing the blob's plaintext in place in format 1:
/// the stored object is either the plaintext (its size is the blob's) or format 1.
const CONVERTING_V1: &str = "converting";
/// The blob's bytes are sealed under the row's key, in format 2 (every new seal).
const SEALED: &str = "sealed2";
/// `berth encrypt` is sealing the blob's plaintext bytes in place, in format 2: until the
/// row says `sealed2`, the stored object is either the plaintext (its size is the blob's)
/// or the sealed form (longer by a nonce and a tag per segment), and readers tell them
/// apart by that size.
const CONVERTING: &str = "converting2";

/// How a blob with a data key is stored, from its `blob_keys.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// Sealed in format 1 (the previous release's); otherwise format 2.
    pub format1: bool,
    /// `berth encrypt` is converting it: the object may still be the plaintext.
    pub converting: bool,
}

impl KeyState {
    fn parse(state: &str) -> std::result::Result<KeyState, crate::MetaError> {
        let (format1, converting) = match state {
            SEALED_V1 => (true, false),
            CONVERTING_V1 => (true, true),
            SEALED => (false, false),
            CONVERTING => (false, true),
            other => {
                return Err(crate::MetaError::Corrupt(format!(
                    "blob_keys.state {other:?} is not one this version knows"
                )));
            }
        };
        Ok(KeyState {
            format1,
            converting,
        })
    }
}

impl MetaStore {
    /// The wrapped data key of a sealed blob; `None`: the blob is stored as plaintext.
    pub async fn blob_key(&self, digest: &str) -> Result<Option<WrappedKey>> {
        let row = sqlx::query("SELECT key_id, wrapped FROM blob_keys WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| {
                Ok::<_, sqlx::Error>(WrappedKey {
                    key_id: r.try_get(0)?,
                    wrapped: r.try_get(1)?,
                })
            })
            .transpose()?)
    }

    /// The wrapped data key of a blob, the format its bytes are sealed in, and whether its
    /// conversion from plaintext is still under way (the stored object may be either form).
    pub async fn blob_key_state(&self, digest: &str) -> Result<Option<(WrappedKey, KeyState)>> {
        let row = sqlx::query("SELECT key_id, wrapped, state FROM blob_keys WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let state: String = r.try_get(2)?;
        Ok(Some((
            WrappedKey {
                key_id: r.try_get(0)?,
                wrapped: r.try_get(1)?,
            },
            KeyState::parse(&state)?,
        )))
    }

    /// Moves a format-1 row to format 2 (its key unchanged) before bytes are sealed anew
    /// under it: from `converting` (the object is still the plaintext) to `converting2`, or
    /// from `sealed` (its object is gone, and an upload puts it back) to `sealed2`. Returns
    /// whether the row was in the expected format-1 state.
    pub async fn move_blob_key_to_format2(&self, digest: &str, converting: bool) -> Result<bool> {
        let (from, to) = if converting {
            (CONVERTING_V1, CONVERTING)
        } else {
            (SEALED_V1, SEALED)
        };
        let done = sqlx::query(
            "UPDATE blob_keys SET state = $1, updated_at = $2 WHERE digest = $3 AND state = $4",
        )
        .bind(to)
        .bind(now_micros())
        .bind(digest)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Starts converting a plaintext blob: records its new data key with the state
    /// `converting` unless it has a key already; returns the key it has.
    pub async fn start_blob_conversion(
        &self,
        digest: &str,
        key: &WrappedKey,
    ) -> Result<WrappedKey> {
        sqlx::query(
            "INSERT INTO blob_keys (digest, key_id, wrapped, state, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(&key.key_id)
        .bind(&key.wrapped)
        .bind(CONVERTING)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        self.blob_key(digest).await?.ok_or_else(|| {
            crate::MetaError::Corrupt(format!(
                "the data key of {digest} vanished as it was written"
            ))
        })
    }

    /// Records a data key row exactly as the release before format 2 wrote it (state
    /// `sealed`, or `converting` mid-conversion), replacing any row of the digest. For
    /// tests that reproduce a registry that release left behind; nothing else writes
    /// format-1 rows.
    #[doc(hidden)]
    pub async fn put_format1_blob_key(
        &self,
        digest: &str,
        key: &WrappedKey,
        converting: bool,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO blob_keys (digest, key_id, wrapped, state, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (digest) DO UPDATE SET key_id = $2, wrapped = $3, state = $4, updated_at = $5",
        )
        .bind(digest)
        .bind(&key.key_id)
        .bind(&key.wrapped)
        .bind(if converting { CONVERTING_V1 } else { SEALED_V1 })
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a conversion: the stored object is the sealed form from now on, in the format
    /// the conversion was in (a format-1 conversion whose object was sealed before the
    /// upgrade stays format 1).
    pub async fn finish_blob_conversion(&self, digest: &str) -> Result<()> {
        sqlx::query(
            "UPDATE blob_keys SET state = CASE state WHEN $1 THEN $2 WHEN $3 THEN $4 ELSE state END, \
             updated_at = $5 WHERE digest = $6",
        )
        .bind(CONVERTING_V1)
        .bind(SEALED_V1)
        .bind(CONVERTING)
        .bind(SEALED)
        .bind(now_micros())
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` blobs after `after` (digest order) that are not sealed yet, with their
    /// sizes: plaintext ones and ones whose conversion was interrupted.
    pub async fn blobs_to_seal(&self, after: &str, limit: u32) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size FROM blobs b LEFT JOIN blob_keys k ON k.digest = b.digest \
             WHERE b.digest > $1 AND (k.digest IS NULL OR (k.state <> $2 AND k.state <> $3)) \
             ORDER BY b.digest LIMIT $4",
        )
        .bind(after)
        .bind(SEALED)
        .bind(SEALED_V1)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, crate::to_u64(r.try_get(1)?))))
            .collect()
    }

    /// How many blobs are not sealed yet.
    pub async fn count_blobs_to_seal(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM blobs b LEFT JOIN blob_keys k ON k.digest = b.digest \
             WHERE k.digest IS NULL OR (k.state <> $1 AND k.state <> $2)",
        )
        .bind(SEALED)
        .bind(SEALED_V1)
        .fetch_one(&self.pool)
        .await?;
        Ok(crate::to_u64(n))
    }

    /// Records `key` as the data key of `digest` unless it has one already, and returns the
    /// one it has: two uploads of one blob racing both seal under the same key.
    pub async fn insert_blob_key(&self, digest: &str, key: &WrappedKey) -> Result<WrappedKey> {
        sqlx::query(
            "INSERT INTO blob_keys (digest, key_id, wrapped, state, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(&key.key_id)
        .bind(&key.wrapped)
        .bind(SEALED)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        self.blob_key(digest).await?.ok_or_else(|| {
            crate::MetaError::Corrupt(format!(
                "the data key of {digest} vanished as it was written"
            ))
        })
    }

    /// Whether any blob is sealed (a registry that holds sealed blobs cannot serve without
    /// its keyring).
    pub async fn any_sealed_blob(&self) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM blob_keys LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Sealed blobs per key-encryption key.
    pub async fn key_uses(&self) -> Result<Vec<KeyUse>> {
        let rows =
            sqlx::query("SELECT key_id, COUNT(*) FROM blob_keys GROUP BY key_id ORDER BY key_id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok(KeyUse {
                    key_id: r.try_get(0)?,
                    blobs: crate::to_u64(r.try_get(1)?),
                })
            })
            .collect()
    }

    /// Up to `limit` sealed blobs whose data key is wrapped by another key than `except`,
    /// in digest order after `after`: the next page of a rewrap.
    pub async fn blob_keys_not_under(
        &self,
        except: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, WrappedKey)>> {
        let rows = sqlx::query(
            "SELECT digest, key_id, wrapped FROM blob_keys WHERE key_id <> $1 AND digest > $2 \
             ORDER BY digest LIMIT $3",
        )
        .bind(except)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    WrappedKey {
                        key_id: r.try_get(1)?,
                        wrapped: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    /// How many sealed blobs have their data key wrapped by another key than `except`.
    pub async fn count_blob_keys_not_under(&self, except: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_keys WHERE key_id <> $1")
            .bind(except)
            .fetch_one(&self.pool)
            .await?;
        Ok(crate::to_u64(n))
    }

    /// Replaces the wrapped form of data keys (the keys themselves unchanged), each only if
    /// it is still wrapped as `old` says, in one transaction. Returns how many changed.
    pub async fn rewrap_blob_keys(
        &self,
        changes: &[(String, WrappedKey, WrappedKey)],
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let now = now_micros();
        let mut changed = 0;
        for (digest, old, new) in changes {
            let done = sqlx::query(
                "UPDATE blob_keys SET key_id = $1, wrapped = $2, updated_at = $3 \
                 WHERE digest = $4 AND key_id = $5 AND wrapped = $6",
            )
            .bind(&new.key_id)
            .bind(&new.wrapped)
            .bind(now)
            .bind(digest)
            .bind(&old.key_id)
            .bind(&old.wrapped)
            .execute(&mut *tx)
            .await?;
            changed += done.rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// The check value sealed under key-encryption key `key_id`, if it was used before.
    pub async fn kek_check(&self, key_id: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT sealed FROM kek_checks WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Records the check value of a key used for the first time (a concurrent first use
    /// keeps the one written first; the caller reads it back).
    pub async fn insert_kek_check(&self, key_id: &str, sealed: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO kek_checks (key_id, sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(sealed)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a retired key's check value.
    pub async fn delete_kek_check(&self, key_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM kek_checks WHERE key_id = $1")
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Key ids that have check values (every key ever used by this registry, not retired).
    pub async fn kek_check_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT key_id FROM kek_checks ORDER BY key_id")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
