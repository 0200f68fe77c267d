//! Copying a blob from one store to another (`berth migrate-storage`), through the target's
//! ordinary upload path, so the copy is hashed while it streams and lands only if its
//! digest verifies: a corrupt source blob is refused, never copied.

use berth_oci::Digest;

use crate::{BlobStore, HashState, Result};

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
