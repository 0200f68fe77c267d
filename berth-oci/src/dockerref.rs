//! Image references as Kubernetes pod specs name them, normalised the way Docker and
//! containerd do (`nginx` is `docker.io/library/nginx`, `index.docker.io` is
//! `docker.io`), so that a policy compares what the node will actually pull.

use std::fmt;

use crate::{Digest, RepoName, Tag};

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";

/// A fully qualified image reference: registry host, repository path, optional tag and
/// optional digest (both may be present: `nginx:1.27@sha256:…`, the tag for people, the
/// digest for the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    /// Registry host with an optional port, as written (lowercase for Docker Hub).
    pub domain: String,
    /// The repository path on that registry (`library/nginx`).
    pub path: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerRefError {
    #[error("empty reference")]
    Empty,
    #[error("reference longer than 4096 bytes")]
    TooLong,
    #[error("invalid registry host {0:?}")]
    Domain(String),
    #[error("invalid repository path {0:?}")]
    Path(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid digest {0:?}")]
    Digest(String),
}

/// Whether the first component of a name is a registry host rather than a path
/// component (Docker's rule: it holds a `.` or a `:`, is `localhost`, or has uppercase
/// letters, which no path component may).
fn is_domain(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.strip_prefix('[') {
        // An IPv6 literal: `[::1]:5000`.
        Some(rest) => match rest.split_once(']') {
            Some((h, p)) => {
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                (None, p)
            }
            None => return false,
        },
        None => match d.split_once(':') {
            Some((h, p)) => (Some(h), &d[h.len()..][..p.len() + 1]),
            None => (Some(d), ""),
        },
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return false;
        }
    }
    match port {
        "" => true,
        p => p.strip_prefix(':').is_some_and(|n| {
            !n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit())
        }),
    }
}

impl DockerRef {
    /// Parses and normalises a reference as a pod spec's `image` field holds it.
    pub fn parse(s: &str) -> Result<DockerRef, DockerRefError> {
        if s.is_empty() {
            return Err(DockerRefError::Empty);
        }
        if s.len() > 4096 {
            return Err(DockerRefError::TooLong);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let digest: Digest = d.parse().map_err(|_| DockerRefError::Digest(d.into()))?;
                (r, Some(digest))
            }
            None => (s, None),
        };
        // A tag's `:` comes after the last `/`; an earlier one is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                let tag: Tag = t.parse().map_err(|_| DockerRefError::Tag(t.into()))?;
                (&rest[..last_slash + i], Some(tag))
            }
            None => (rest, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder)) if is_domain(first) => {
                (first.to_owned(), remainder.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_domain(&domain) {
            return Err(DockerRefError::Domain(domain));
        }
        let domain = if domain.eq_ignore_ascii_case("index.docker.io")
            || domain.eq_ignore_ascii_case(DOCKER_HUB)
        {
            DOCKER_HUB.to_owned()
        } else {
            domain
        };
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let path: RepoName = path.parse().map_err(|_| DockerRefError::Path(path))?;
        Ok(DockerRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// Names neither a tag nor a digest (the runtime takes `latest`).
    pub fn untagged(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// Names `:latest` or nothing, without a digest: what runs can change under it.
    pub fn floating_latest(&self) -> bool {
        self.digest.is_none() && self.tag.as_ref().is_none_or(|t| t.as_str() == "latest")
    }
}

impl fmt::Display for DockerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_and_its_full_form_is_a_fixed_point(s in "[a-zA-Z0-9.:/@_\\[\\]-]{0,80}") {
            if let Ok(r) = DockerRef::parse(&s) {
                let full = r.to_string();
                let again = DockerRef::parse(&full);
                prop_assert_eq!(again.as_ref().ok(), Some(&r), "{} -> {}", s, full);
            }
        }

        #[test]
        fn any_text_is_judged_without_panic(s in ".{0,300}") {
            let _ = DockerRef::parse(&s);
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn full(s: &str) -> String {
        DockerRef::parse(s)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(full("nginx"), "docker.io/library/nginx");
        assert_eq!(full("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(full("bitnami/redis"), "docker.io/bitnami/redis");
        assert_eq!(full("index.docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(
            full("docker.io/library/nginx:1"),
            "docker.io/library/nginx:1"
        );
        assert_eq!(full("ghcr.io/org/app:v1"), "ghcr.io/org/app:v1");
        assert_eq!(full("localhost/app"), "localhost/app");
        assert_eq!(full("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(
            full("registry.internal:5000/team/app"),
            "registry.internal:5000/team/app"
        );
        assert_eq!(full("[::1]:5000/app:1"), "[::1]:5000/app:1");
        assert_eq!(
            full(&format!("nginx@{D}")),
            format!("docker.io/library/nginx@{D}")
        );
        assert_eq!(
            full(&format!("nginx:1.27@{D}")),
            format!("docker.io/library/nginx:1.27@{D}")
        );
        // Not a domain: no dot, no colon, not localhost.
        assert_eq!(full("team/app"), "docker.io/team/app");
    }

    #[test]
    fn refuses_what_docker_refuses() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:short",
            "ghcr.io/",
            "ghcr.io//app",
            "bad host!/app",
            "host:port/app",
            "a/B",
            "nginx:1 ",
        ] {
            assert!(DockerRef::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn latest_and_untagged() {
        let r = |s| DockerRef::parse(s).expect("parses");
        assert!(r("nginx").untagged() && r("nginx").floating_latest());
        assert!(!r("nginx:latest").untagged() && r("nginx:latest").floating_latest());
        assert!(!r("nginx:1").floating_latest());
        assert!(!r(&format!("nginx:latest@{D}")).floating_latest());
    }

    #[test]
    fn never_panics_on_junk() {
        for s in [
            "@",
            ":",
            "/",
            "a@",
            "@a",
            "a:b:c",
            "::::",
            "[",
            "[]/a",
            "a/b/c:d/e",
            "\u{0}",
        ] {
            let _ = DockerRef::parse(s);
        }
    }
}
