//! Copying blobs from one store to another (`berth migrate-storage`), through the target's
//! ordinary upload path, so each copy is hashed while it streams and lands only if its
//! digest verifies: a corrupt source blob is refused, never copied.

use berth_oci::Digest;

use crate::{BlobStore, HashState, Result, ScanEntry, StorageError};

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
    let Some(reader) = from.open(digest, None).await? else {
        return Ok(Copied::SourceMissing);
    };
    if to.stat(digest).await? == Some(reader.total) {
        return Ok(Copied::AlreadyThere);
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
            match copy_blob(from, to, &digest).await {
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
