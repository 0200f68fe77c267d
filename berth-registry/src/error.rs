use berth_meta::MetaError;
use berth_oci::Digest;
use berth_storage::StorageError;

/// Why a use case failed. The server turns each into an OCI error response in one place.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    #[error("chunk does not start at the upload's offset {offset}")]
    ChunkOutOfOrder { offset: u64 },
    #[error("requested range is outside the blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("content has digest {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("manifest references {0}, which is not in the repository")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest exceeds the limit of {limit} bytes")]
    ManifestTooLarge { limit: u64 },
    #[error("blob exceeds the limit of {limit} bytes")]
    BlobTooLarge { limit: u64 },
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("{0}")]
    InUse(String),
    #[error("request body failed: {0}")]
    Body(String),
    /// No credentials, or credentials that do not check out.
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// Known identity, action not allowed.
    #[error("denied: {0}")]
    Denied(String),
    /// The tenant's storage quota has no room for the write; answered like `Denied`.
    #[error("denied: {0}")]
    OverQuota(String),
    #[error("too many failed logins; retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    /// Every password thread is busy and its queue full: a login flood is being shed.
    #[error("too many logins at once; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    /// A management object (user, tenant, robot) that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A management object that exists already.
    #[error("{0}")]
    Conflict(String),
    /// A management request that makes no sense (bad name, unknown role, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The pull-through upstream could not be reached and nothing was cached.
    #[error("upstream unavailable: {reason}")]
    UpstreamUnavailable {
        reason: String,
        /// Set when the upstream said how long to wait (a 503's `Retry-After`).
        retry_after_secs: Option<u64>,
    },
    /// The upstream rate-limited the cache (429) and nothing was cached: the client gets
    /// the remaining wait.
    #[error("upstream {upstream} is rate limiting this cache; retry in {retry_after_secs} s")]
    UpstreamThrottled {
        upstream: String,
        retry_after_secs: u64,
    },
    /// The pull-through upstream answered with something unusable (bad digest, refused
    /// credentials, a malformed reply).
    #[error("upstream failed: {0}")]
    UpstreamFailed(String),
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::UploadUnknown(_) => RegistryError::UploadUnknown,
            StorageError::OffsetMismatch { actual, .. } => {
                RegistryError::ChunkOutOfOrder { offset: actual }
            }
            StorageError::DigestMismatch { expected, actual } => {
                RegistryError::DigestMismatch { expected, actual }
            }
            StorageError::TooLarge { limit } => RegistryError::BlobTooLarge { limit },
            StorageError::Body(e) => RegistryError::Body(e.to_string()),
            other => RegistryError::Storage(other),
        }
    }
}
