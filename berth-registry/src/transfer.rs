//! What the bulk copies share: `export` and `import` of OCI image layouts (`layout`) and
//! `prefetch` from upstreams. They run as commands rather than requests, so they report
//! progress as they go and fail with errors that say which object of which image failed.

use berth_oci::manifest::{ParsedManifest, parse_manifest};
use berth_oci::{Digest, Reference, RepoName};
use berth_storage::StorageError;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::RegistryError;

/// Told how a copy is going. Every method does nothing unless implemented, so a caller
/// implements only what it shows.
pub trait Progress: Send + Sync {
    /// A blob starts moving; `size` when known before its bytes arrive.
    fn blob_started(&self, _digest: &Digest, _size: Option<u64>) {}
    /// `n` more bytes of the current blob moved.
    fn bytes(&self, _n: u64) {}
    /// The current blob is in place.
    fn blob_finished(&self, _digest: &Digest) {}
    /// An image the caller named is complete (`digest`: its manifest or index).
    fn image_done(&self, _repo: &RepoName, _reference: &Reference, _digest: &Digest) {}
    /// Something worth telling that does not stop the copy (a stale upstream tag).
    fn warning(&self, _message: &str) {}
}

/// For callers that show nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Why a copy failed, with the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A use case of the registry refused or failed (reading, pushing, fetching).
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: RegistryError,
    },
    /// The layout could not be read or written.
    #[error("{what}")]
    Layout {
        what: String,
        #[source]
        source: StorageError,
    },
    /// The input does not make sense (a layout entry naming no repository, a bad name).
    #[error("{0}")]
    Invalid(String),
}

/// `body`, telling `progress` of each frame as it passes.
pub(crate) fn counted<'a, S>(
    body: S,
    progress: &'a dyn Progress,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'a
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'a,
{
    body.inspect(move |c| {
        if let Ok(c) = c {
            progress.bytes(c.len() as u64);
        }
    })
}

/// A manifest parsed, or `Invalid` naming `what` it is.
pub(crate) fn parse(
    bytes: &[u8],
    media_type: Option<&str>,
    what: impl FnOnce() -> String,
) -> Result<ParsedManifest, TransferError> {
    parse_manifest(bytes, media_type)
        .map_err(|e| TransferError::Invalid(format!("{}: {e}", what())))
}

/// Attaches what was being done to a registry or storage error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, TransferError>;
}

impl<T> Context<T> for Result<T, RegistryError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, TransferError> {
        self.map_err(|source| TransferError::Registry {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, StorageError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, TransferError> {
        self.map_err(|source| TransferError::Layout {
            what: what(),
            source,
        })
    }
}
