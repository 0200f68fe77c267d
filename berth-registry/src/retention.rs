//! Retention policies (which tags to keep) and pull-through cache eviction (which cached
//! manifests to drop). Both only remove tags or manifests, recorded like any deletion;
//! the bytes go with the next garbage collection, after its grace period and rollback
//! window, so a policy never breaks a pull in progress or a rollback.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_meta::{Actor, RepoGraph, now_micros};
use berth_oci::semver::Version;
use berth_oci::{Reference, RepoName};
use serde::{Deserialize, Serialize};

use crate::gc::reach;
use crate::tag_rules::Glob;
use crate::{Registry, RegistryError, Result};

/// One `[[retention]]` policy: in the repositories it matches, a tag stays if any of its
/// keep rules holds; the others are deleted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Glob over full repository names (`team-a/*`).
    pub repositories: String,
    /// Keep the newest N tags that are semantic versions.
    #[serde(default)]
    pub keep_last_semver: Option<usize>,
    /// Keep tags pushed or pulled within this many days.
    #[serde(default)]
    pub keep_days: Option<u64>,
    /// Keep tags matching these globs (or `semver`).
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Immutable tags are kept unless this is set; when it is, the policy removes them as
    /// an admin would (recorded in the tag history).
    #[serde(default)]
    pub include_immutable: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("retention policy for {repositories:?}: {why}")]
pub struct PolicyError {
    pub repositories: String,
    pub why: String,
}

#[derive(Debug, Clone)]
struct Policy {
    spec: RetentionSpec,
    repositories: Glob,
    keep_tags: Vec<Option<Glob>>,
}

/// The configured policies, checked.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicies {
    policies: Vec<Policy>,
}

impl RetentionPolicies {
    pub fn new(specs: Vec<RetentionSpec>) -> std::result::Result<Self, PolicyError> {
        let mut policies = Vec::new();
        for spec in specs {
            let err = |why: String| PolicyError {
                repositories: spec.repositories.clone(),
                why,
            };
            if spec.keep_last_semver.is_none()
                && spec.keep_days.is_none()
                && spec.keep_tags.is_empty()
            {
                // A policy that keeps nothing deletes every tag: surely not what was meant.
                return Err(err(
                    "has no keep rule (keep_last_semver, keep_days or keep_tags)".into(),
                ));
            }
            let repositories = Glob::new(&spec.repositories).map_err(|w| err(w.into()))?;
            let keep_tags = spec
                .keep_tags
                .iter()
                .map(|p| {
                    if p == "semver" {
                        Ok(None)
                    } else {
                        Glob::new(p)
                            .map(Some)
                            .map_err(|w| err(format!("pattern {p:?}: {w}")))
                    }
                })
                .collect::<std::result::Result<_, _>>()?;
            policies.push(Policy {
                spec,
                repositories,
                keep_tags,
            });
        }
        Ok(RetentionPolicies { policies })
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// A tag a policy removes (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expired {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

/// A cached manifest eviction removes (or would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evicted {
    pub repository: String,
    pub digest: String,
    /// Why: `age` or `size`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub expired: Vec<Expired>,
    pub evicted: Vec<Evicted>,
    /// Tags kept in repositories some policy covers.
    pub kept: usize,
    /// Bytes of blobs that only the removed content uses (in its repository, and linked
    /// from no other): what the next garbage collection frees once the rollback window
    /// has passed.
    pub bytes: u64,
    /// Removals refused when applied (an index still lists the manifest, say).
    pub skipped: Vec<String>,
}

/// Limits for one upstream's cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheLimits {
    /// Cached manifests neither fetched nor pulled for this long are evicted.
    pub max_age: Option<Duration>,
    /// Past this many bytes, the least recently pulled manifests are evicted until the
    /// cache fits.
    pub max_bytes: Option<u64>,
}

/// What housekeeping applies: the retention policies, and each upstream's cache limits
/// (by upstream prefix).
#[derive(Debug, Clone, Default)]
pub struct Housekeeping {
    pub policies: RetentionPolicies,
    pub cache_limits: Vec<(String, CacheLimits)>,
}

/// Blobs the manifests in `set` reference.
fn blobs_of<'a>(g: &'a RepoGraph, set: &HashSet<&str>) -> HashSet<&'a str> {
    g.blobs
        .iter()
        .filter(|(m, _)| set.contains(m.as_str()))
        .map(|(_, b)| b.as_str())
        .collect()
}

impl Registry {
    /// Applies the retention policies, then each upstream's eviction limits, as one
    /// report (`dry_run`: only reports).
    pub async fn housekeeping(&self, h: &Housekeeping, dry_run: bool) -> Result<RetentionReport> {
        let mut report = self.apply_retention(&h.policies, dry_run).await?;
        for (upstream, limits) in &h.cache_limits {
            let r = self.evict_cache(upstream, limits, dry_run).await?;
            report.evicted.extend(r.evicted);
            report.bytes += r.bytes;
            report.skipped.extend(r.skipped);
        }
        Ok(report)
    }

    /// Applies `policies` to every repository they cover (`dry_run`: only reports).
    pub async fn apply_retention(
        &self,
        policies: &RetentionPolicies,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        if policies.is_empty() {
            return Ok(report);
        }
        let actor = Actor::named("system:retention");
        let now = now_micros();
        for (repo_id, repo) in self.meta.gc_repositories().await? {
            let matching: Vec<&Policy> = policies
                .policies
                .iter()
                .filter(|p| p.repositories.matches(&repo))
                .collect();
            if matching.is_empty() {
                continue;
            }
            let Ok(name) = repo.parse::<RepoName>() else {
                continue;
            };
            let tags = self.meta.tags_with_times(repo_id).await?;
            // Newest semver tags first, for keep_last_semver.
            let mut versions: Vec<(Version, &str)> = tags
                .iter()
                .filter_map(|(t, ..)| Version::parse(t).map(|v| (v, t.as_str())))
                .collect();
            versions.sort_by(|a, b| b.0.cmp(&a.0));
            // Signatures, attestations and SBOMs under the referrers tag convention (by
            // content) follow their image: judged after the other tags, not by the rules.
            let mut attached: HashMap<&str, String> = HashMap::new();
            for (tag, digest, ..) in &tags {
                if let Some(subject) = crate::policy::attached_subject(tag)
                    && let Some(m) = self.meta.get_manifest(&repo, digest).await?
                    && berth_verify::classify(&m.content).kind.is_supply_chain()
                {
                    attached.insert(tag.as_str(), subject);
                }
            }
            let mut expired = Vec::new();
            for (tag, digest, updated_at, pulled_at) in &tags {
                if attached.contains_key(tag.as_str()) {
                    continue;
                }
                let immutable = self.tag_rules().immutable(&repo, tag).is_some();
                let last_used = pulled_at.unwrap_or(0).max(*updated_at);
                // Kept if any matching policy keeps it.
                let kept = matching.iter().any(|p| {
                    if immutable && !p.spec.include_immutable {
                        return true;
                    }
                    let newest = p
                        .spec
                        .keep_last_semver
                        .is_some_and(|n| versions.iter().take(n).any(|(_, t)| *t == tag.as_str()));
                    let recent = p.spec.keep_days.is_some_and(|d| {
                        let window =
                            i64::try_from(d.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX);
                        last_used >= now.saturating_sub(window)
                    });
                    let named = p.keep_tags.iter().any(|g| match g {
                        None => Version::parse(tag).is_some(),
                        Some(g) => g.matches(tag),
                    });
                    newest || recent || named
                });
                if kept {
                    report.kept += 1;
                } else {
                    expired.push((tag.clone(), digest.clone(), immutable));
                }
            }
            let g = self.meta.gc_repo_graph(repo_id, &repo, i64::MAX).await?;
            if !attached.is_empty() {
                // An attached tag goes when its image goes: its subject was reached only
                // from removed tags. Subjects no tag reaches are not retention's to judge.
                let gone: HashSet<&str> = expired.iter().map(|(t, ..)| t.as_str()).collect();
                let kept_roots = tags
                    .iter()
                    .filter(|(t, ..)| {
                        !gone.contains(t.as_str()) && !attached.contains_key(t.as_str())
                    })
                    .map(|(_, d, ..)| d.as_str());
                let removed_roots = expired.iter().map(|(_, d, _)| d.as_str());
                let kept: HashSet<String> = reach(&g, kept_roots)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                let removed: HashSet<String> = reach(&g, removed_roots)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                for (tag, digest, ..) in &tags {
                    let Some(subject) = attached.get(tag.as_str()) else {
                        continue;
                    };
                    if removed.contains(subject) && !kept.contains(subject) {
                        let immutable = self.tag_rules().immutable(&repo, tag).is_some();
                        expired.push((tag.clone(), digest.clone(), immutable));
                    } else {
                        report.kept += 1;
                    }
                }
            }
            if expired.is_empty() {
                continue;
            }
            let gone_tags: HashSet<&str> = expired.iter().map(|(t, ..)| t.as_str()).collect();
            let kept_roots = tags
                .iter()
                .filter(|(t, ..)| !gone_tags.contains(t.as_str()))
                .map(|(_, d, ..)| d.as_str());
            let removed_roots = expired.iter().map(|(_, d, _)| d.as_str());
            report.bytes += self
                .bytes_only_in(&g, reach(&g, removed_roots), reach(&g, kept_roots))
                .await?;
            for (tag, digest, immutable) in expired {
                if !dry_run {
                    let reference = Reference::Tag(
                        tag.parse()
                            .map_err(|e| RegistryError::Internal(format!("stored tag: {e}")))?,
                    );
                    match self
                        .delete_manifest(&name, &reference, &actor, immutable)
                        .await
                    {
                        Ok(()) | Err(RegistryError::ManifestUnknown) => {}
                        Err(e) => {
                            report.skipped.push(format!("{repo}:{tag}: {e}"));
                            continue;
                        }
                    }
                }
                if !dry_run {
                    crate::stats::bump(&self.stats().retention_tags, 1);
                }
                report.expired.push(Expired {
                    repository: repo.clone(),
                    tag,
                    digest,
                });
            }
        }
        Ok(report)
    }

    /// Bytes of the blobs that manifests in `gone` use and those in `staying` do not, and
    /// that no other repository links.
    async fn bytes_only_in(
        &self,
        g: &RepoGraph,
        gone: HashSet<&str>,
        staying: HashSet<&str>,
    ) -> Result<u64> {
        let keep = blobs_of(g, &staying);
        let candidates: Vec<String> = blobs_of(g, &gone)
            .into_iter()
            .filter(|b| !keep.contains(b))
            .map(str::to_owned)
            .collect();
        let mut bytes = 0;
        for batch in candidates.chunks(500) {
            for (_, size, links, _) in self.meta.gc_blob_links(batch).await? {
                if links <= 1 {
                    bytes += size;
                }
            }
        }
        Ok(bytes)
    }

    /// Evicts cached manifests from one upstream's cache: those unused for longer than
    /// `max_age`, then the least recently used until the cache fits `max_bytes`. A
    /// manifest's use is its last pull, or its fetch if it was never pulled since.
    pub async fn evict_cache(
        &self,
        upstream: &str,
        limits: &CacheLimits,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        if limits.max_age.is_none() && limits.max_bytes.is_none() {
            return Ok(report);
        }
        let now = now_micros();
        let prefix = format!("{upstream}/");
        let mut graphs = Vec::new();
        for (repo_id, repo) in self.meta.gc_repositories().await? {
            if repo.starts_with(&prefix) {
                graphs.push(self.meta.gc_repo_graph(repo_id, &repo, i64::MAX).await?);
            }
        }
        // How many manifests in the cache use each blob, and its size: a blob's bytes
        // count once, and go only when its last user goes.
        let mut users: HashMap<&str, usize> = HashMap::new();
        let mut sizes: HashMap<&str, u64> = HashMap::new();
        for g in &graphs {
            for (_, b) in &g.blobs {
                *users.entry(b).or_default() += 1;
            }
            for (b, _, size) in &g.links {
                sizes.insert(b, *size);
            }
        }
        let mut total: u64 = sizes.values().sum();
        // Every cached manifest, least recently used first; an index before its children
        // (containerd pulls the index first, so the index is older), which keeps a delete
        // from being refused because an index still lists the child.
        // What is attached to a cached manifest (referrers, and what the cosign tags
        // `sha256-<hex>.sig`/`.att`/`.sbom` hold) is part of it: never evicted on its own
        // while its image is cached, and evicted with it.
        let mut attached: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        let mut is_attached: HashSet<(&str, &str)> = HashSet::new();
        for g in &graphs {
            let stored: HashSet<&str> = g.manifests.iter().map(|m| m.digest.as_str()).collect();
            let by_subject = g
                .manifests
                .iter()
                .filter_map(|m| Some((m.subject.as_deref()?, m.digest.as_str())));
            let by_tag = g.tag_names.iter().filter_map(|(tag, d)| {
                let subject = crate::policy::attached_subject(tag)?;
                let subject = stored.get(subject.as_str())?;
                Some((*subject, d.as_str()))
            });
            for (subject, d) in by_subject.chain(by_tag) {
                if subject == d || !stored.contains(subject) {
                    continue;
                }
                if is_attached.insert((g.repo.as_str(), d)) {
                    attached
                        .entry((g.repo.as_str(), subject))
                        .or_default()
                        .push(d);
                }
            }
        }
        let mut all: Vec<(i64, usize, &str, &str)> = Vec::new();
        for g in &graphs {
            let parents: HashSet<&str> = g.children.iter().map(|(p, _)| p.as_str()).collect();
            for m in &g.manifests {
                if is_attached.contains(&(g.repo.as_str(), m.digest.as_str())) {
                    continue;
                }
                let used = m.pulled_at.unwrap_or(m.created_at).max(m.created_at);
                let rank = usize::from(!parents.contains(m.digest.as_str()));
                all.push((used, rank, &g.repo, &m.digest));
            }
        }
        all.sort();
        let age_cutoff = limits
            .max_age
            .map(|a| now.saturating_sub(i64::try_from(a.as_micros()).unwrap_or(i64::MAX)));
        let actor = Actor::named("system:eviction");
        let blob_refs: HashMap<(&str, &str), Vec<&str>> = {
            let mut m: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
            for g in &graphs {
                for (man, b) in &g.blobs {
                    m.entry((g.repo.as_str(), man.as_str()))
                        .or_default()
                        .push(b);
                }
            }
            m
        };
        for (used, _, repo, subject) in all {
            let reason = if age_cutoff.is_some_and(|c| used < c) {
                "age"
            } else if limits.max_bytes.is_some_and(|max| total > max) {
                "size"
            } else {
                continue;
            };
            // The image first (a refusal keeps its signatures too), then what is attached.
            let mut with: Vec<&str> = vec![subject];
            let mut i = 0;
            while let Some(d) = with.get(i).copied() {
                with.extend(attached.get(&(repo, d)).into_iter().flatten().copied());
                i += 1;
            }
            for (n, digest) in with.into_iter().enumerate() {
                if !dry_run {
                    let (Ok(name), Ok(d)) = (repo.parse::<RepoName>(), digest.parse()) else {
                        continue;
                    };
                    // As the system, which a cache tenant's own refusal of deletes does not
                    // bind; tags on the manifest go with it.
                    match self
                        .delete_manifest(&name, &Reference::Digest(d), &actor, true)
                        .await
                    {
                        Ok(()) | Err(RegistryError::ManifestUnknown) => {}
                        Err(e) => {
                            report.skipped.push(format!("{repo}@{digest}: {e}"));
                            if n == 0 {
                                break;
                            }
                            continue;
                        }
                    }
                }
                for b in blob_refs.get(&(repo, digest)).into_iter().flatten() {
                    if let Some(n) = users.get_mut(b) {
                        *n -= 1;
                        if *n == 0 {
                            let size = sizes.get(b).copied().unwrap_or(0);
                            total = total.saturating_sub(size);
                            report.bytes += size;
                        }
                    }
                }
                if !dry_run {
                    crate::stats::bump(&self.stats().evicted, 1);
                }
                report.evicted.push(Evicted {
                    repository: repo.to_owned(),
                    digest: digest.to_owned(),
                    reason,
                });
            }
        }
        Ok(report)
    }
}
