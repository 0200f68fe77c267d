//! Content-addressed blob storage and resumable uploads.
//!
//! A blob is reachable under a digest only after its bytes were hashed to that digest while
//! they streamed in. Uploads are written to their own file, hashed on the way, and on
//! completion fsynced and renamed into place; nothing else ever writes under `blobs/`.
//!
//! Backends: [`FsStore`] (a directory) and [`S3Store`] (an S3-compatible bucket, through
//! a small SigV4 client of our own).
//!
//! The SHA-256 state of an unfinished upload is serialisable ([`HashState`]), so the caller
//! keeps it with the upload's metadata and any process can continue the upload.
//!
//! [`layout::OciLayout`] reads and writes OCI image layouts (for export and import).
//!
//! This crate knows paths and keys; it knows nothing of SQL or HTTP.

mod copy;
pub mod failpoint;
mod fs;
mod hash;
pub mod layout;
pub mod s3;
mod scan;
pub mod seal;
mod sealed;

use std::pin::Pin;
use std::time::Duration;

use berth_oci::Digest;
use bytes::Bytes;
use futures_util::Stream;

pub use copy::{
    Copied, CopyEvent, CopyOne, CopySummary, SealedKeys, copy_all_blobs, copy_all_blobs_by,
    copy_all_blobs_with, copy_blob, copy_blob_with,
};
pub use fs::FsStore;
pub use hash::{HashState, digest_of};
pub use s3::{Credentials as S3Credentials, S3Config, S3Counters, S3Store, S3Tuning};
pub use scan::{BlobCheck, BlobScan, ScanEntry};

/// Errors from the blob store. Client-caused conditions are distinct variants so the
/// layers above can answer them with the right code.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("upload {0} is unknown or its data was lost")]
    UploadUnknown(String),
    #[error("upload is at offset {actual}, not {expected}")]
    OffsetMismatch { expected: u64, actual: u64 },
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload would exceed the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("saved hash state is corrupt")]
    CorruptHashState,
    #[error("storage is misconfigured: {0}")]
    Config(String),
    /// An OCI image layout that cannot be read as one.
    #[error("{0}")]
    Layout(String),
    /// S3 answered with an error.
    #[error("S3 {op} failed with {code} (HTTP {status}): {message}")]
    S3 {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    /// S3 could not be reached, or the connection broke.
    #[error("S3 {op} request failed: {source}")]
    S3Request {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Sealed bytes (or a wrapped key) did not authenticate: tampered, moved, cut, or a
    /// key that is not the one that sealed them.
    #[error("{0}")]
    Sealed(seal::SealError),
    #[error("storage I/O failed while {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// The object store is failing, throttling or unreachable right now (after the
    /// client's retries): nothing was stored, and the same request may succeed later, so
    /// the server answers 503 rather than 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::S3 { status, .. } => matches!(status, 500 | 502 | 503 | 504 | 429),
            StorageError::S3Request { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
        move |source| StorageError::Io { op, source }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// An open blob, positioned at the first byte to send.
pub struct BlobReader {
    /// Bytes this reader yields.
    pub len: u64,
    /// The blob's full size.
    pub total: u64,
    pub body: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
}

/// The blob store in use. Backends are enum variants, so every operation is one static match.
#[derive(Clone)]
pub enum BlobStore {
    Fs(FsStore),
    S3(S3Store),
}

impl BlobStore {
    /// Size of a stored blob, if present.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match self {
            BlobStore::Fs(s) => s.stat(digest).await,
            BlobStore::S3(s) => s.stat(digest).await,
        }
    }

    /// Opens a stored blob, optionally at an inclusive byte range the caller has checked
    /// against the blob's size.
    pub async fn open(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BlobReader>> {
        match self {
            BlobStore::Fs(s) => s.open(digest, range).await,
            BlobStore::S3(s) => s.open(digest, range).await,
        }
    }

    /// Removes a blob's bytes. Deciding that nothing needs it is the caller's job.
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.delete(digest).await,
            BlobStore::S3(s) => s.delete(digest).await,
        }
    }

    /// Starts an empty upload.
    pub async fn create_upload(&self, id: &str) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.create_upload(id).await,
            BlobStore::S3(s) => s.create_upload(id).await,
        }
    }

    /// Appends a body at `offset`, which must be the upload's acknowledged size, hashing as
    /// it writes. Bytes past `offset` left by an interrupted append are discarded first.
    /// Returns the new size; `state` is updated to match it.
    pub async fn append_upload<S, E>(
        &self,
        id: &str,
        offset: u64,
        state: &mut HashState,
        body: S,
        limit: u64,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        match self {
            BlobStore::Fs(s) => s.append_upload(id, offset, state, body, limit).await,
            BlobStore::S3(s) => s.append_upload(id, offset, state, body, limit).await,
        }
    }

    /// Verifies an upload of `size` bytes against `expected` and makes it the blob of that
    /// digest. On a mismatch the upload is left as it is (the caller decides its fate).
    pub async fn finish_upload(
        &self,
        id: &str,
        size: u64,
        state: &HashState,
        expected: &Digest,
    ) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.finish_upload(id, size, state, expected).await,
            BlobStore::S3(s) => s.finish_upload(id, size, state, expected).await,
        }
    }

    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.delete_upload(id).await,
            BlobStore::S3(s) => s.delete_upload(id).await,
        }
    }

    /// A URL the client may fetch the blob from directly (a presigned S3 URL), when the
    /// backend is configured to redirect reads; `None` means serve the bytes.
    pub fn presign_get(&self, digest: &Digest) -> Option<String> {
        match self {
            BlobStore::Fs(_) => None,
            BlobStore::S3(s) => s.presign_get(digest),
        }
    }

    /// Removes upload data untouched for longer than `age`; returns how many went.
    pub async fn purge_stale_uploads(&self, age: Duration) -> Result<usize> {
        match self {
            BlobStore::Fs(s) => s.purge_stale_uploads(age).await,
            BlobStore::S3(s) => s.purge_stale_uploads(age).await,
        }
    }
}
