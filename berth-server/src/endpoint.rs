//! `/v2/...` paths parsed into one enum before any handler runs. Repository names nest to
//! any depth, so the path is read from its end: the last one or two segments say which
//! endpoint it is, and everything before them is the name.

use berth_oci::{Digest, NameError, Reference, RepoName};

use crate::error::ApiError;

/// Every distribution API endpoint Berth serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags {
        name: RepoName,
    },
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
    UploadStart {
        name: RepoName,
    },
    Upload {
        name: RepoName,
        id: String,
    },
    Referrers {
        name: RepoName,
        digest: Digest,
    },
}

impl Endpoint {
    /// A low-cardinality label for metrics and logs.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::UploadStart { .. } | Endpoint::Upload { .. } => "upload",
            Endpoint::Referrers { .. } => "referrers",
        }
    }

    /// Parses the raw (still percent-encoded) request path.
    pub fn parse(path: &str) -> Result<Endpoint, ApiError> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Err(ApiError::NotFound);
        };
        let rest = match rest {
            "" | "/" => return Ok(Endpoint::Base),
            r => r.strip_prefix('/').ok_or(ApiError::NotFound)?,
        };
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name_of = |k: usize| -> Result<RepoName, ApiError> {
            if k == 0 {
                return Err(ApiError::NameInvalid);
            }
            segs[..k]
                .join("/")
                .parse()
                .map_err(|_| ApiError::NameInvalid)
        };
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Endpoint::Tags {
                name: name_of(n - 2)?,
            });
        }
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let name = name_of(n - 3)?;
            return Ok(if segs[n - 1].is_empty() {
                Endpoint::UploadStart { name }
            } else {
                Endpoint::Upload {
                    name,
                    id: segs[n - 1].to_owned(),
                }
            });
        }
        if n >= 2 {
            let last = segs[n - 1];
            match segs[n - 2] {
                "blobs" if last == "uploads" => {
                    return Ok(Endpoint::UploadStart {
                        name: name_of(n - 2)?,
                    });
                }
                "blobs" => {
                    let name = name_of(n - 2)?;
                    return Ok(Endpoint::Blob {
                        name,
                        digest: parse_digest(last)?,
                    });
                }
                "manifests" => {
                    let name = name_of(n - 2)?;
                    let reference = last.parse().map_err(|e| match e {
                        NameError::InvalidDigest(_) => ApiError::DigestInvalid,
                        _ => ApiError::ManifestInvalidReference,
                    })?;
                    return Ok(Endpoint::Manifest { name, reference });
                }
                "referrers" => {
                    let name = name_of(n - 2)?;
                    return Ok(Endpoint::Referrers {
                        name,
                        digest: parse_digest(last)?,
                    });
                }
                _ => {}
            }
        }
        Err(ApiError::NotFound)
    }
}

pub fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|_| ApiError::DigestInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(Endpoint::parse("/v2/").ok(), Some(Endpoint::Base));
        assert_eq!(Endpoint::parse("/v2").ok(), Some(Endpoint::Base));
        assert_eq!(
            Endpoint::parse("/v2/_catalog").ok(),
            Some(Endpoint::Catalog)
        );
        let name: RepoName = "a/blobs/uploads/manifests".parse().expect("name");
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/manifests/tags/list").ok(),
            Some(Endpoint::Tags { name: name.clone() })
        );
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/manifests/blobs/uploads/").ok(),
            Some(Endpoint::UploadStart { name: name.clone() })
        );
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/manifests/blobs/uploads").ok(),
            Some(Endpoint::UploadStart { name: name.clone() })
        );
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/manifests/blobs/uploads/abc-1").ok(),
            Some(Endpoint::Upload {
                name: name.clone(),
                id: "abc-1".into()
            })
        );
        assert!(matches!(
            Endpoint::parse(&format!("/v2/x/y/blobs/{D}")),
            Ok(Endpoint::Blob { .. })
        ));
        assert!(matches!(
            Endpoint::parse(&format!("/v2/x/referrers/{D}")),
            Ok(Endpoint::Referrers { .. })
        ));
        assert!(matches!(
            Endpoint::parse("/v2/x/manifests/v1.0"),
            Ok(Endpoint::Manifest {
                reference: Reference::Tag(_),
                ..
            })
        ));
    }

    #[test]
    fn refuses_tricks() {
        assert!(matches!(
            Endpoint::parse("/v2/../etc/manifests/x"),
            Err(ApiError::NameInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/%2e%2e/manifests/x"),
            Err(ApiError::NameInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/a//b/manifests/x"),
            Err(ApiError::NameInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/A/manifests/x"),
            Err(ApiError::NameInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/manifests/x"),
            Err(ApiError::NameInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/a/blobs/sha256:zz"),
            Err(ApiError::DigestInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/a/manifests/sha256:zz"),
            Err(ApiError::DigestInvalid)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/a/manifests/-bad"),
            Err(ApiError::ManifestInvalidReference)
        ));
        assert!(matches!(
            Endpoint::parse("/v2/a/other/x"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(Endpoint::parse("/v3/a"), Err(ApiError::NotFound)));
    }
}
