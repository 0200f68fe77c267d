//! Copying blobs from one store to another (`berth migrate-storage`), through the target's
//! ordinary upload path, so each copy is hashed while it streams and lands only if its
//! digest verifies: a corrupt source blob is refused, never copied.

use berth_oci::Digest;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::hash::Hasher;
use crate::seal::{DataKey, STRIDE, SealError, segments};
use crate::{BlobStore, HashState, Result, ScanEntry, StorageError};

/// Which blobs are stored sealed: a digest's plaintext size and data key, from the
/// metadata store (never guessed from the bytes).
pub type SealedKeys<'a> =
    &'a (dyn Fn(Digest) -> BoxFuture<'static, Result<Option<(u64, DataKey)>>> + Send + Sync);

/// Checks sealed bytes as they stream past: every segment must open under the blob's key,
/// and the plaintext must hash to the digest.
struct SealedCheck {
    key: DataKey,
    total: u64,
    index: u64,
    buf: Vec<u8>,
    hasher: Hasher,
}

impl SealedCheck {
    fn want(&self) -> usize {
        self.key.stored_segment_len(self.total, self.index)
    }

    fn push(&mut self, mut data: &[u8]) -> std::result::Result<(), SealError> {
        while !data.is_empty() {
            if self.index >= segments(self.total) {
                return Err(SealError::Tampered("bytes past the last segment".into()));
            }
            let want = self.want();
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == want {
                let n = self
                    .key
                    .open_stored(self.total, self.index, &mut self.buf)?;
                self.hasher.update(&self.buf[..n]);
                self.buf.clear();
                self.index += 1;
            }
        }
        Ok(())
    }
}

/// Copies a sealed blob's stored bytes as they are (its data key stays valid: it lives in
/// the metadata store, bound to the digest), landing them only if every segment opened and
/// the plaintext hashed to the digest on the way.
async fn copy_sealed(
    to: &BlobStore,
    digest: &Digest,
    reader: crate::BlobReader,
    size: u64,
    key: DataKey,
) -> Result<Copied> {
    let id = format!("migrate-{}", &digest.hex()[..48.min(digest.hex().len())]);
    to.delete_upload(&id).await?;
    to.create_upload(&id).await?;
    let check = std::sync::Arc::new(std::sync::Mutex::new(SealedCheck {
        key,
        total: size,
        index: 0,
        buf: Vec::with_capacity(STRIDE),
        hasher: Hasher::new(digest.algorithm()),
    }));
    let seen = std::sync::Arc::clone(&check);
    let body = reader.body.map(move |chunk: std::io::Result<Bytes>| {
        let chunk = chunk?;
        let mut c = seen.lock().unwrap_or_else(|e| e.into_inner());
        c.push(&chunk)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok::<_, std::io::Error>(chunk)
    });
    let result = async {
        let stored = to
            .append_upload(&id, 0, &mut HashState::scratch(), body, u64::MAX)
            .await?;
        let actual = {
            let mut c = check.lock().unwrap_or_else(|e| e.into_inner());
            let expected = c.key.sealed_len(size);
            if c.index != segments(size) || !c.buf.is_empty() || stored != expected {
                return Err(StorageError::Sealed(SealError::Tampered(format!(
                    "{digest} is stored as {stored} bytes, {expected} expected"
                ))));
            }
            std::mem::replace(&mut c.hasher, Hasher::new(digest.algorithm())).finish()
        };
        if &actual != digest {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        to.place_upload(&id, stored, digest).await?;
        Ok(Copied::Bytes(stored))
    }
    .await;
    if result.is_err()
        && let Err(cleanup) = to.delete_upload(&id).await
    {
        tracing::warn!(upload = id, error = %cleanup, "could not remove a failed copy");
    }
    result
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Copied, this many bytes.
    Bytes(u64),
    /// The target already holds a blob of that digest and size.
    AlreadyThere,
    /// The source has no such blob (deleted meanwhile).
    SourceMissing,
}

/// Copies `digest` from `from` to `to` unless `to` already has it.
pub async fn copy_blob(from: &BlobStore, to: &BlobStore, digest: &Digest) -> Result<Copied> {
    copy_blob_with(from, to, digest, None).await
}

/// [`copy_blob`] for a store holding sealed blobs: `sealed` (a size and a data key) says
/// the blob is stored sealed, and then its stored form is copied and checked by opening it.
pub async fn copy_blob_with(
    from: &BlobStore,
    to: &BlobStore,
    digest: &Digest,
    sealed: Option<(u64, DataKey)>,
) -> Result<Copied> {
    let Some(reader) = from.open(digest, None).await? else {
        return Ok(Copied::SourceMissing);
    };
    if to.stat(digest).await? == Some(reader.total) {
        return Ok(Copied::AlreadyThere);
    }
    // A blob `berth encrypt` is converting may still be plaintext: the stored size says.
    if let Some((size, key)) = sealed
        && reader.total == key.sealed_len(size)
    {
        return copy_sealed(to, digest, reader, size, key).await;
    }
    // Deterministic, so a re-run after a crash reuses (and overwrites) the same upload.
    let id = format!("migrate-{}", &digest.hex()[..48.min(digest.hex().len())]);
    // A previous run's leftover would refuse the create: start over.
    to.delete_upload(&id).await?;
    to.create_upload(&id).await?;
    let mut state = HashState::new();
    let result = async {
        let size = to
            .append_upload(&id, 0, &mut state, reader.body, u64::MAX)
            .await?;
        to.finish_upload(&id, size, &state, digest).await?;
        Ok(size)
    }
    .await;
    match result {
        Ok(size) => Ok(Copied::Bytes(size)),
        Err(e) => {
            if let Err(cleanup) = to.delete_upload(&id).await {
                tracing::warn!(upload = id, error = %cleanup, "could not remove a failed copy");
            }
            Err(e)
        }
    }
}

/// What copying a whole store did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopySummary {
    pub copied: u64,
    pub copied_bytes: u64,
    /// Already in the target.
    pub already: u64,
    /// Listed in the source, gone when copied (deleted meanwhile).
    pub vanished: u64,
    pub failed: u64,
    /// Things under `blobs/` that are no blob, not copied.
    pub strays: u64,
}

/// What [`copy_all_blobs`] tells its caller as it goes.
pub enum CopyEvent<'a> {
    /// One blob could not be copied; the rest go on.
    Failed {
        digest: &'a Digest,
        error: &'a StorageError,
    },
    /// Not a blob, so not copied.
    Stray { path: &'a str },
    /// Another blob is done (copied, there already, or failed).
    Done(&'a CopySummary),
}

/// Copies every blob of `from` into `to` with [`copy_blob`], a listing batch at a time.
/// A blob that fails is counted and reported, and the copy goes on; running it again
/// copies only what is missing. Fails only if the source cannot be listed.
pub async fn copy_all_blobs(
    from: &BlobStore,
    to: &BlobStore,
    on: &mut (dyn FnMut(CopyEvent<'_>) + Send),
) -> Result<CopySummary> {
    copy_all_blobs_with(from, to, None, on).await
}

/// [`copy_all_blobs`] for a store holding sealed blobs (see [`copy_blob_with`]).
pub async fn copy_all_blobs_with(
    from: &BlobStore,
    to: &BlobStore,
    keys: Option<SealedKeys<'_>>,
    on: &mut (dyn FnMut(CopyEvent<'_>) + Send),
) -> Result<CopySummary> {
    let copy = |digest: Digest| -> BoxFuture<'_, Result<Copied>> {
        Box::pin(async move {
            let sealed = match keys {
                Some(k) => k(digest.clone()).await?,
                None => None,
            };
            copy_blob_with(from, to, &digest, sealed).await
        })
    };
    copy_all_blobs_by(from, &copy, on).await
}

/// Copies one blob the way the caller decides (`migrate-storage` into an encrypted target
/// seals plaintext blobs on the way, which needs the metadata store).
pub type CopyOne<'a> = &'a (dyn Fn(Digest) -> BoxFuture<'a, Result<Copied>> + Send + Sync);

/// Walks every blob of `from`, a listing batch at a time, copying each with `copy`; the
/// counting and reporting of [`copy_all_blobs`].
pub async fn copy_all_blobs_by(
    from: &BlobStore,
    copy: CopyOne<'_>,
    on: &mut (dyn FnMut(CopyEvent<'_>) + Send),
) -> Result<CopySummary> {
    let mut summary = CopySummary::default();
    let mut scan = from.scan_blobs();
    while let Some(batch) = scan.next_batch().await? {
        for entry in batch {
            let digest = match entry {
                ScanEntry::Blob { digest, .. } => digest,
                ScanEntry::Stray { path } => {
                    summary.strays += 1;
                    on(CopyEvent::Stray { path: &path });
                    continue;
                }
            };
            match copy(digest.clone()).await {
                Ok(Copied::Bytes(n)) => {
                    summary.copied += 1;
                    summary.copied_bytes += n;
                }
                Ok(Copied::AlreadyThere) => summary.already += 1,
                Ok(Copied::SourceMissing) => summary.vanished += 1,
                Err(error) => {
                    summary.failed += 1;
                    on(CopyEvent::Failed {
                        digest: &digest,
                        error: &error,
                    });
                }
            }
            on(CopyEvent::Done(&summary));
        }
    }
    Ok(summary)
}
