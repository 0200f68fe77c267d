//! Version management use cases: tag history, rollback, semver listing and resolution.
//! Permission checks are the caller's (the API checks the repository's grants; the CLI is
//! an admin), like the `/v2` use cases in `lib.rs`.

use berth_meta::{SetTag, TagEvent, TagGuard};
use berth_oci::semver::{Version, VersionPrefix, sort_versions};
use berth_oci::{Digest, RepoName, Tag};
use serde::Serialize;

use crate::{Actor, Registry, RegistryError, Result, cache};

/// History rows a rollback looks through for its target.
const ROLLBACK_WINDOW: u64 = 10_000;

/// One change of a tag, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub kind: &'static str,
    pub old_digest: Option<String>,
    pub new_digest: Option<String>,
    pub actor: String,
    pub source: Option<String>,
    /// Seconds since the epoch.
    pub at: i64,
    pub at_micros: i64,
}

impl From<TagEvent> for HistoryEntry {
    fn from(e: TagEvent) -> Self {
        HistoryEntry {
            kind: e.kind.as_str(),
            old_digest: e.old_digest,
            new_digest: e.new_digest,
            actor: e.actor,
            source: e.source,
            at: e.at / 1_000_000,
            at_micros: e.at,
        }
    }
}

/// Where a rollback goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// The N-th distinct digest back through the history (1 = the previous one).
    Steps(u32),
    /// A digest the tag has pointed at.
    To(Digest),
}

/// A tag that is a version, with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionedTag {
    pub tag: String,
    pub digest: String,
    pub prerelease: bool,
}

/// The digest a rollback should go to: the distinct digests the tag pointed at, newest
/// first, without the current one; `Steps(n)` takes the n-th. So two rollbacks in a row
/// return to the start, like `helm rollback`, and `--steps 2` goes further back.
fn rollback_target(
    history: &[TagEvent],
    current: Option<&str>,
    how: &Rollback,
) -> std::result::Result<String, String> {
    let mut seen: Vec<&str> = Vec::new();
    for d in history.iter().filter_map(|e| e.new_digest.as_deref()) {
        if Some(d) != current && !seen.contains(&d) {
            seen.push(d);
        }
    }
    match how {
        Rollback::To(d) => seen
            .iter()
            .find(|s| **s == d.as_str())
            .map(|s| (*s).to_owned())
            .ok_or_else(|| {
                if Some(d.as_str()) == current {
                    format!("the tag already points at {d}")
                } else {
                    format!("the tag has never pointed at {d}")
                }
            }),
        Rollback::Steps(0) => Err("--steps must be at least 1".into()),
        Rollback::Steps(n) => seen
            .get(*n as usize - 1)
            .map(|s| (*s).to_owned())
            .ok_or_else(|| match seen.len() {
                0 => "the tag has no earlier digest to roll back to".to_owned(),
                k => format!("the tag has only {k} earlier digest(s) to roll back to"),
            }),
    }
}

impl Registry {
    /// A tag's history, newest first.
    pub async fn tag_history(
        &self,
        repo: &RepoName,
        tag: &Tag,
        limit: u64,
    ) -> Result<Vec<HistoryEntry>> {
        let events = self
            .meta
            .tag_history(
                repo.as_str(),
                tag.as_str(),
                limit.clamp(1, self.config.max_page),
            )
            .await?;
        if events.is_empty() && !self.meta.repo_exists(repo.as_str()).await? {
            return Err(RegistryError::NameUnknown);
        }
        Ok(events.into_iter().map(HistoryEntry::from).collect())
    }

    /// Moves a tag back to a digest from its history, recorded as a rollback. An immutable
    /// tag is rolled back only by an admin. Returns the digest the tag now points at.
    pub async fn rollback_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        how: &Rollback,
        actor: &Actor,
        admin: bool,
    ) -> Result<Digest> {
        let history = self
            .meta
            .tag_history(repo.as_str(), tag.as_str(), ROLLBACK_WINDOW)
            .await?;
        if history.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "{repo}:{tag} has no history to roll back through"
            )));
        }
        let current = self.meta.resolve_tag(repo.as_str(), tag.as_str()).await?;
        let target = rollback_target(&history, current.as_deref(), how)
            .map_err(|why| RegistryError::Invalid(format!("{repo}:{tag}: {why}")))?;
        let rules = self.tag_rules();
        let immutable = |t: &str| rules.immutable(repo.as_str(), t);
        let queued = std::sync::atomic::AtomicBool::new(false);
        let jobs = self.jobs_for(&queued);
        let outcome = self
            .meta
            .rollback_tag(
                repo.as_str(),
                tag.as_str(),
                &target,
                current.as_deref(),
                actor,
                TagGuard {
                    immutable: &immutable,
                    admin,
                    jobs: &jobs,
                },
            )
            .await?;
        if queued.load(std::sync::atomic::Ordering::Relaxed) {
            self.wake_jobs();
        }
        let digest: Digest = target.parse().map_err(|_| {
            RegistryError::Internal(format!("tag history holds a bad digest {target:?}"))
        })?;
        match outcome {
            SetTag::Set => {
                self.cache
                    .tags
                    .insert(cache::key(repo.as_str(), tag.as_str()), digest.clone());
                Ok(digest)
            }
            SetTag::ManifestUnknown => Err(RegistryError::NotFound(format!(
                "manifest {target} that {repo}:{tag} pointed at is no longer in the repository"
            ))),
            SetTag::Moved { .. } => Err(RegistryError::Conflict(format!(
                "{repo}:{tag} moved while rolling back; look at its history and retry"
            ))),
            SetTag::Immutable { rule } => Err(RegistryError::Denied(format!(
                "tag {tag} is immutable (rule: {rule}); only an admin may roll it back"
            ))),
        }
    }

    /// The repository's version tags in ascending semver order; other tags are left out.
    pub async fn semver_tags(&self, repo: &RepoName) -> Result<Vec<VersionedTag>> {
        let tags = self
            .meta
            .tag_digests(repo.as_str())
            .await?
            .ok_or(RegistryError::NameUnknown)?;
        Ok(sort_versions(tags, |(t, _)| t.as_str())
            .into_iter()
            .map(|(tag, digest)| VersionedTag {
                prerelease: Version::parse(&tag).is_some_and(|v| v.is_prerelease()),
                tag,
                digest,
            })
            .collect())
    }

    /// The newest version tag matching `prefix` (`1.4` → the highest `1.4.x`), leaving
    /// pre-releases out unless `prerelease`.
    pub async fn resolve_version(
        &self,
        repo: &RepoName,
        prefix: &str,
        prerelease: bool,
    ) -> Result<VersionedTag> {
        let want = VersionPrefix::parse(prefix).ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{prefix:?} is not a version prefix like 1, 1.4 or v1.4.2"
            ))
        })?;
        self.semver_tags(repo)
            .await?
            .into_iter()
            .rev()
            .find(|t| {
                (prerelease || !t.prerelease)
                    && Version::parse(&t.tag).is_some_and(|v| want.matches(&v))
            })
            .ok_or_else(|| RegistryError::NotFound(format!("no tag of {repo} matches {prefix}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_meta::TagChange;

    fn ev(new: Option<&str>) -> TagEvent {
        TagEvent {
            id: 0,
            kind: TagChange::Move,
            old_digest: None,
            new_digest: new.map(str::to_owned),
            actor: "t".into(),
            source: None,
            at: 0,
        }
    }

    #[test]
    fn rollback_targets() {
        // Newest first: created A, moved to B, to C, rolled back to B.
        let h = [ev(Some("B")), ev(Some("C")), ev(Some("B")), ev(Some("A"))];
        let t = |cur, how| rollback_target(&h, cur, &how);
        assert_eq!(t(Some("B"), Rollback::Steps(1)).as_deref(), Ok("C"));
        assert_eq!(t(Some("B"), Rollback::Steps(2)).as_deref(), Ok("A"));
        assert!(t(Some("B"), Rollback::Steps(3)).is_err());
        assert!(t(Some("B"), Rollback::Steps(0)).is_err());
        // Deleted: the last digest it had comes back.
        let deleted = [ev(None), ev(Some("B")), ev(Some("A"))];
        assert_eq!(
            rollback_target(&deleted, None, &Rollback::Steps(1)).as_deref(),
            Ok("B")
        );
        let a: Digest = format!("sha256:{}", "a".repeat(64))
            .parse()
            .expect("digest");
        let h2 = [ev(Some(a.as_str()))];
        assert!(rollback_target(&h2, None, &Rollback::To(a.clone())).is_ok());
        assert!(
            rollback_target(&h2, Some(a.as_str()), &Rollback::To(a.clone()))
                .is_err_and(|e| e.contains("already"))
        );
    }
}
