//! Repository names, tags and references, validated by the distribution spec's grammar.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted. The spec notes that clients limit host + name to 255.
pub const MAX_NAME_LEN: usize = 255;
/// Tags are `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository name")]
    InvalidName,
    #[error("invalid tag")]
    InvalidTag,
    #[error("invalid digest: {0}")]
    InvalidDigest(#[from] DigestError),
}

/// A repository name such as `team-a/app/web`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Box<str>);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &[u8]) -> bool {
    let mut i = 0;
    loop {
        // an alphanumeric run
        let start = i;
        while i < c.len() && matches!(c[i], b'a'..=b'z' | b'0'..=b'9') {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == c.len() {
            return true;
        }
        // a separator
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < c.len() && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < c.len() && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(NameError::InvalidName);
        }
        if s.split('/').all(|c| valid_component(c.as_bytes())) {
            Ok(RepoName(s.into()))
        } else {
            Err(NameError::InvalidName)
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A tag such as `1.4.2` or `latest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tag(Box<str>);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(Tag(s.into()))
        } else {
            Err(NameError::InvalidTag)
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A tag can never contain ':', a digest always does.
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// An image as people name it on a command line: `repo` (no reference), `repo:tag` or
/// `repo@digest`. A colon before the last slash belongs to no tag (a name cannot hold one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repo: RepoName,
    pub reference: Option<Reference>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("{0:?} is not a repository name: {1}")]
    Name(String, NameError),
    #[error("{0:?} is not a tag or digest: {1}")]
    Reference(String, NameError),
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, reference) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => match s.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, Some(t)),
                _ => (s, None),
            },
        };
        let repo = name
            .parse()
            .map_err(|e| ImageRefError::Name(name.to_owned(), e))?;
        let reference = reference
            .map(|r| {
                r.parse()
                    .map_err(|e| ImageRefError::Reference(r.to_owned(), e))
            })
            .transpose()?;
        Ok(ImageRef { repo, reference })
    }
}

/// The one ordering of tags: case-insensitive lexical order, ties broken by byte order.
///
/// The key is `lowercase(tag) ' ' tag`. Space sorts below every byte a tag may contain, so
/// comparing keys bytewise (SQLite `BINARY`, PostgreSQL `COLLATE "C"`, Rust `Ord`) gives the
/// same order everywhere: a prefix sorts first, and tags equal but for case fall back to their
/// bytes.
pub fn tag_sort_key(tag: &str) -> String {
    let mut key = String::with_capacity(tag.len() * 2 + 1);
    key.extend(tag.chars().map(|c| c.to_ascii_lowercase()));
    key.push(' ');
    key.push_str(tag);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn image_references() {
        let i: ImageRef = "team-a/app:1.0".parse().expect("tag");
        assert_eq!(
            (i.repo.as_str(), i.reference.map(|r| r.to_string())),
            ("team-a/app", Some("1.0".into()))
        );
        let i: ImageRef = "team-a/app".parse().expect("repo");
        assert_eq!((i.repo.as_str(), i.reference), ("team-a/app", None));
        let d = format!("sha256:{}", "a".repeat(64));
        let i: ImageRef = format!("alpine@{d}").parse().expect("digest");
        assert_eq!(i.reference.map(|r| r.to_string()), Some(d));
        assert!(matches!(
            "Bad/Name:1".parse::<ImageRef>(),
            Err(ImageRefError::Name(..))
        ));
        assert!(matches!(
            "app:bad tag".parse::<ImageRef>(),
            Err(ImageRefError::Reference(..))
        ));
        // A port-like colon before a slash is part of the name (and so refused there).
        assert!(matches!(
            "host:5000/app".parse::<ImageRef>(),
            Err(ImageRefError::Name(..))
        ));
    }

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "a",
            "library/ubuntu",
            "team-a/app/web",
            "a.b_c__d---e/f0",
            "conformance-1a2b/sub",
            &"a".repeat(255),
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "A",
            "Library/ubuntu",
            "a//b",
            "/a",
            "a/",
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e",
            "a___b",
            "a._b",
            "-a",
            "a-",
            "a\0b",
            "a b",
            "a:b",
            &"a".repeat(256),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags() {
        for ok in ["latest", "1.4.2", "_x", "A-b.C_d", &"t".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok:?} refused");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a+b", &"t".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references() {
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert!("sha256:xyz".parse::<Reference>().is_err());
    }

    #[test]
    fn tag_order_is_case_insensitive_then_bytes() {
        let mut tags = vec!["b", "A", "a", "B10", "b1", "_z", "1", "a-1", "a.1", "ab"];
        tags.sort_by_key(|t| tag_sort_key(t));
        assert_eq!(
            tags,
            vec!["1", "_z", "A", "a", "a-1", "a.1", "ab", "b", "b1", "B10"]
        );
    }

    proptest! {
        #[test]
        fn name_parser_never_panics(s in ".{0,300}") {
            let _ = s.parse::<RepoName>();
            let _ = s.parse::<Reference>();
            let _ = s.parse::<ImageRef>();
        }

        #[test]
        fn generated_names_parse(s in "[a-z0-9]{1,5}(([._]|__|-{1,3})[a-z0-9]{1,5}){0,3}(/[a-z0-9]{1,8}){0,3}") {
            prop_assert!(s.parse::<RepoName>().is_ok());
        }

        #[test]
        fn sort_key_preserves_case_insensitive_order(a in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,10}", b in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,10}") {
            let (la, lb) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
            if la != lb {
                prop_assert_eq!(la.cmp(&lb), tag_sort_key(&a).cmp(&tag_sort_key(&b)));
            } else {
                prop_assert_eq!(a.cmp(&b), tag_sort_key(&a).cmp(&tag_sort_key(&b)));
            }
        }
    }
}
