//! The one place where failures become HTTP: status, OCI error code and JSON body.

use axum::response::{IntoResponse, Response};
use berth_oci::ErrorCode;
use berth_registry::RegistryError;
use http::{HeaderValue, StatusCode, header};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such endpoint")]
    NotFound,
    #[error("invalid repository name")]
    NameInvalid,
    #[error("invalid digest")]
    DigestInvalid,
    #[error("invalid tag or digest in the manifest reference")]
    ManifestInvalidReference,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{1}")]
    BadRequest(ErrorCode, String),
    /// More `?tag=` parameters than one manifest push may set: 414, as the spec allows.
    #[error("at most {limit} tag parameters per request")]
    TooManyTags { limit: usize },
    /// A chunk that does not continue the upload: 416 with where the upload stands.
    #[error("chunk does not start at offset {offset}")]
    ChunkOutOfOrder { location: String, offset: u64 },
    /// No or bad credentials on a registry request: 401 with the challenge that tells the
    /// client where and how to authenticate.
    #[error("{message}")]
    Unauthorized { challenge: String, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The message clients show after the code: without the code's own words in front, since
/// clients print `code: message` (skopeo showed `denied: denied: tag 1.0.0 is immutable`).
/// The library's errors keep their prefix for the CLI, which prints the message alone.
fn message(code: &str, text: &str) -> String {
    let words = code.to_ascii_lowercase().replace('_', " ");
    match text.get(..words.len() + 1) {
        Some(head) if head.eq_ignore_ascii_case(&format!("{words}:")) => {
            text[words.len() + 1..].trim_start().to_owned()
        }
        _ => text.to_owned(),
    }
}

/// Builds the spec's `Range` value for an upload holding `offset` bytes.
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn is_no_space(e: &RegistryError) -> bool {
    match e {
        RegistryError::Storage(berth_storage_error) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(berth_storage_error);
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<std::io::Error>()
                    && io.kind() == std::io::ErrorKind::StorageFull
                {
                    return true;
                }
                src = s.source();
            }
            false
        }
        _ => false,
    }
}

impl ApiError {
    /// The metadata store could not be reached (503 `UNAVAILABLE`).
    pub fn is_metadata_unavailable(&self) -> bool {
        matches!(self, ApiError::Registry(RegistryError::Meta(m)) if m.is_unavailable())
    }

    /// The blob store failed after its retries (503 `UNAVAILABLE`).
    pub fn is_storage_unavailable(&self) -> bool {
        matches!(self, ApiError::Registry(RegistryError::Storage(e)) if e.is_unavailable())
    }

    /// The status table. Server faults carry no OCI code: the spec's codes all describe
    /// something the client can act on, and the log names the cause.
    pub(crate) fn status_and_code(&self) -> (StatusCode, Option<&'static str>) {
        let (status, code) = self.status_and_spec_code();
        let code = code.map(ErrorCode::as_str).or(match self {
            // Management API answers that have no distribution-spec code.
            ApiError::Registry(RegistryError::NotFound(_)) => Some("NOT_FOUND"),
            ApiError::Registry(RegistryError::Conflict(_)) => Some("CONFLICT"),
            ApiError::Registry(RegistryError::Invalid(_)) => Some("INVALID"),
            // Not a fault of this server, and the message (which upstream, how long to
            // wait) is what the client needs.
            ApiError::Registry(
                RegistryError::UpstreamUnavailable { .. } | RegistryError::Busy { .. },
            ) => Some("UNAVAILABLE"),
            ApiError::Registry(RegistryError::Meta(m)) if m.is_unavailable() => Some("UNAVAILABLE"),
            ApiError::Registry(RegistryError::Storage(e)) if e.is_unavailable() => {
                Some("UNAVAILABLE")
            }
            _ => None,
        });
        (status, code)
    }

    fn status_and_spec_code(&self) -> (StatusCode, Option<ErrorCode>) {
        use RegistryError as R;
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, Some(ErrorCode::Unsupported)),
            ApiError::NameInvalid => (StatusCode::BAD_REQUEST, Some(ErrorCode::NameInvalid)),
            ApiError::DigestInvalid => (StatusCode::BAD_REQUEST, Some(ErrorCode::DigestInvalid)),
            ApiError::ManifestInvalidReference => {
                (StatusCode::BAD_REQUEST, Some(ErrorCode::ManifestInvalid))
            }
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, Some(ErrorCode::Unsupported))
            }
            ApiError::BadRequest(code, _) => (StatusCode::BAD_REQUEST, Some(*code)),
            ApiError::TooManyTags { .. } => {
                (StatusCode::URI_TOO_LONG, Some(ErrorCode::Unsupported))
            }
            ApiError::ChunkOutOfOrder { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                Some(ErrorCode::BlobUploadInvalid),
            ),
            ApiError::Unauthorized { .. } => {
                (StatusCode::UNAUTHORIZED, Some(ErrorCode::Unauthorized))
            }
            ApiError::Registry(e) => match e {
                R::Unauthorized(_) => (StatusCode::UNAUTHORIZED, Some(ErrorCode::Unauthorized)),
                R::Denied(_) | R::OverQuota(_) => (StatusCode::FORBIDDEN, Some(ErrorCode::Denied)),
                R::Throttled { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(ErrorCode::TooManyRequests),
                ),
                R::NotFound(_) => (StatusCode::NOT_FOUND, None),
                R::Conflict(_) => (StatusCode::CONFLICT, None),
                R::Invalid(_) => (StatusCode::BAD_REQUEST, None),
                R::BlobUnknown => (StatusCode::NOT_FOUND, Some(ErrorCode::BlobUnknown)),
                R::UploadUnknown => (StatusCode::NOT_FOUND, Some(ErrorCode::BlobUploadUnknown)),
                R::UploadInvalid(_) | R::Body(_) => {
                    (StatusCode::BAD_REQUEST, Some(ErrorCode::BlobUploadInvalid))
                }
                R::ChunkOutOfOrder { .. } => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Some(ErrorCode::BlobUploadInvalid),
                ),
                R::RangeNotSatisfiable { .. } => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Some(ErrorCode::SizeInvalid),
                ),
                R::DigestMismatch { .. } => {
                    (StatusCode::BAD_REQUEST, Some(ErrorCode::DigestInvalid))
                }
                R::ManifestBlobUnknown(_) => (
                    StatusCode::BAD_REQUEST,
                    Some(ErrorCode::ManifestBlobUnknown),
                ),
                R::ManifestInvalid(_) => {
                    (StatusCode::BAD_REQUEST, Some(ErrorCode::ManifestInvalid))
                }
                R::ManifestTooLarge { .. } | R::BlobTooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, Some(ErrorCode::SizeInvalid))
                }
                R::ManifestUnknown => (StatusCode::NOT_FOUND, Some(ErrorCode::ManifestUnknown)),
                R::NameUnknown => (StatusCode::NOT_FOUND, Some(ErrorCode::NameUnknown)),
                R::InUse(_) => (StatusCode::METHOD_NOT_ALLOWED, Some(ErrorCode::Unsupported)),
                R::Storage(_) if is_no_space(e) => (StatusCode::INSUFFICIENT_STORAGE, None),
                R::Meta(m) if m.is_storage_full() => (StatusCode::INSUFFICIENT_STORAGE, None),
                // The database is down, restarting or failing over: nothing was written,
                // and the same request may succeed in a moment.
                R::Meta(m) if m.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, None),
                // The bucket still failed, throttled or stalled after the client's
                // retries: nothing was stored, the client may retry.
                R::Storage(s) if s.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, None),
                R::UpstreamUnavailable { .. } | R::Busy { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, None)
                }
                R::UpstreamThrottled { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(ErrorCode::TooManyRequests),
                ),
                R::UpstreamFailed(_) => (StatusCode::BAD_GATEWAY, None),
                R::Internal(_) | R::Storage(_) | R::Meta(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, None)
                }
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = match code {
            // The database's own words (addresses, SQL states) stay in the log.
            Some(code) if self.is_metadata_unavailable() => {
                tracing::warn!(error = %self, "request failed: metadata store unavailable");
                serde_json::json!({"errors": [{"code": code, "message": "the metadata store is unavailable; retry shortly", "detail": null}]})
            }
            Some(code) if self.is_storage_unavailable() => {
                tracing::warn!(error = %self, "request failed: blob store unavailable");
                serde_json::json!({"errors": [{"code": code, "message": "the blob store is unavailable; retry shortly", "detail": null}]})
            }
            Some(code) => {
                serde_json::json!({"errors": [{"code": code, "message": message(code, &self.to_string()), "detail": null}]})
            }
            None => {
                tracing::error!(error = %self, "request failed");
                serde_json::json!({"errors": []})
            }
        };
        let mut resp = (status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::ChunkOutOfOrder { location, offset } => {
                if let Ok(v) = HeaderValue::from_str(location) {
                    h.insert(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(&upload_range(*offset)) {
                    h.insert(header::RANGE, v);
                }
            }
            ApiError::Unauthorized { challenge, .. } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::Registry(
                RegistryError::Throttled { retry_after_secs }
                | RegistryError::Busy { retry_after_secs }
                | RegistryError::UpstreamThrottled {
                    retry_after_secs, ..
                }
                | RegistryError::UpstreamUnavailable {
                    retry_after_secs: Some(retry_after_secs),
                    ..
                },
            ) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ if self.is_metadata_unavailable() || self.is_storage_unavailable() => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            ApiError::Registry(RegistryError::RangeNotSatisfiable { size }) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_error_has_a_spec_code() {
        let cases = [
            (ApiError::NameInvalid, 400, "NAME_INVALID"),
            (ApiError::DigestInvalid, 400, "DIGEST_INVALID"),
            (
                ApiError::Registry(RegistryError::BlobUnknown),
                404,
                "BLOB_UNKNOWN",
            ),
            (
                ApiError::Registry(RegistryError::UploadUnknown),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            ),
            (
                ApiError::Registry(RegistryError::ManifestUnknown),
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                ApiError::Registry(RegistryError::NameUnknown),
                404,
                "NAME_UNKNOWN",
            ),
            (
                ApiError::Registry(RegistryError::ManifestBlobUnknown("x".into())),
                400,
                "MANIFEST_BLOB_UNKNOWN",
            ),
            (
                ApiError::Registry(RegistryError::ManifestTooLarge { limit: 1 }),
                413,
                "SIZE_INVALID",
            ),
            (
                ApiError::Registry(RegistryError::ChunkOutOfOrder { offset: 3 }),
                416,
                "BLOB_UPLOAD_INVALID",
            ),
        ];
        for (err, status, code) in cases {
            let (s, c) = err.status_and_code();
            assert_eq!(s.as_u16(), status, "{err}");
            assert_eq!(c, Some(code), "{err}");
        }
    }

    #[tokio::test]
    async fn messages_do_not_repeat_the_code() {
        let body = |e: ApiError| async move {
            let resp = e.into_response();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            (
                v["errors"][0]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                v["errors"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        let denied = ApiError::Registry(RegistryError::Denied("tag 1.0.0 is immutable".into()));
        assert_eq!(denied.to_string(), "denied: tag 1.0.0 is immutable");
        assert_eq!(
            body(denied).await,
            ("DENIED".into(), "tag 1.0.0 is immutable".into())
        );
        let invalid = ApiError::Registry(RegistryError::ManifestInvalid("no layers".into()));
        assert_eq!(
            body(invalid).await,
            ("MANIFEST_INVALID".into(), "no layers".into())
        );
        // Other messages are left alone.
        assert_eq!(
            body(ApiError::Registry(RegistryError::BlobUnknown)).await,
            ("BLOB_UNKNOWN".into(), "blob unknown to registry".into())
        );
        assert_eq!(message("DENIED", "denied"), "denied");
        assert_eq!(message("DENIED", "Denied: x"), "x");
        assert_eq!(message("DENIED", "é"), "é");
    }
}
