//! Online garbage collection: mark per repository, sweep in locked batches, while pushes
//! and pulls go on.
//!
//! Roots: every tag; every manifest younger than the grace period (pushed by digest, or
//! part of a push still under way); every manifest the tag history names within the
//! rollback window (so `berth tag rollback` never points at swept content), or within the
//! grace period if that is longer (so a client that resolved a tag just before it moved
//! can still pull what it resolved). Children of live indexes and referrers of live
//! manifests are live. Blob links are live if a live manifest references them or they are
//! younger than the grace period (an upload whose manifest has not arrived yet); a blob's
//! bytes go once no repository links it and nothing wrote it within the grace period.
//!
//! Every deletion is re-checked under row locks in the metadata store
//! ([`berth_meta::MetaStore::gc_delete_manifests`] and its siblings), so a decision the
//! mark made on a state that has since changed is dropped, not acted on.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use berth_meta::{Actor, RepoGraph, now_micros};
use berth_oci::Digest;

use crate::retention::{Housekeeping, RetentionReport};
use crate::{Registry, Result};

/// Rows per sweep transaction: big enough that 100k blobs take few commits, small enough
/// that a batch holds its locks briefly.
const BATCH: usize = 500;
/// The lease name replicas compete for.
const LEASE: &str = "gc";

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would go; change nothing.
    pub dry_run: bool,
    /// How long new content, and content a tag left, is kept regardless.
    pub grace: Duration,
    /// How far back the tag history keeps its targets alive for rollback.
    pub rollback_window: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            rollback_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub repositories: usize,
    pub manifests_kept: usize,
    /// (repository, digest)
    pub manifests_deleted: Vec<(String, String)>,
    /// Blob links removed from repositories.
    pub links_removed: usize,
    /// (digest, size) of blobs whose bytes were deleted.
    pub blobs_deleted: Vec<(String, u64)>,
    pub bytes_freed: u64,
    pub uploads_purged: usize,
    /// Catalogs dropped because no repository holds their content any more: (images,
    /// layers).
    pub catalogs_pruned: (u64, u64),
    pub elapsed: Duration,
}

/// Progress as a collection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcProgress {
    /// Repositories marked and swept so far, of `total`.
    Repository { done: usize, total: usize },
    /// Orphaned blobs examined so far.
    Blobs { examined: usize },
}

/// The outcome of marking one repository.
struct Marked {
    /// Unreachable manifests, indexes and referrers before what they point at.
    doomed: Vec<String>,
    kept: usize,
}

/// A batch the database aborted for a concurrent transaction is left for the next
/// collection rather than failing this one.
fn tolerate<T: Default>(r: std::result::Result<T, berth_meta::MetaError>) -> Result<T> {
    match r {
        Err(e) if e.is_transient() => {
            tracing::info!(error = %e, "a collection batch met concurrent writes; left for the next run");
            Ok(T::default())
        }
        other => Ok(other?),
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Manifests reachable from `roots`: children of reached indexes, referrers of reached
/// manifests (a child an index lists but the repository lacks is reached too; callers
/// compare with what is stored).
pub(crate) fn reach<'a>(
    g: &'a RepoGraph,
    roots: impl IntoIterator<Item = &'a str>,
) -> HashSet<&'a str> {
    let mut next: HashMap<&str, Vec<&str>> = HashMap::new();
    for (parent, child) in &g.children {
        next.entry(parent).or_default().push(child);
    }
    for m in &g.manifests {
        if let Some(s) = &m.subject {
            next.entry(s).or_default().push(&m.digest);
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<&str> = roots.into_iter().collect();
    while let Some(d) = stack.pop() {
        if seen.insert(d) {
            stack.extend(next.get(d).into_iter().flatten());
        }
    }
    seen
}

/// Marks one repository's graph: which manifests are unreachable from the roots.
fn mark(g: &RepoGraph, cutoff: i64) -> Marked {
    let stored: HashSet<&str> = g.manifests.iter().map(|m| m.digest.as_str()).collect();
    let roots = g
        .tagged
        .iter()
        .chain(&g.history)
        .map(String::as_str)
        .chain(
            g.manifests
                .iter()
                .filter(|m| m.created_at >= cutoff)
                .map(|m| m.digest.as_str()),
        )
        .filter(|d| stored.contains(d));
    let live = reach(g, roots);
    let dead: HashSet<&str> = stored.difference(&live).copied().collect();
    // Order: a manifest only after every dead index listing it and every dead referrer
    // of it, so a batch never removes what a later-kept manifest still needs.
    let mut waits: HashMap<&str, usize> = dead.iter().map(|d| (*d, 0)).collect();
    let mut after: HashMap<&str, Vec<&str>> = HashMap::new();
    let edges = g
        .children
        .iter()
        .map(|(parent, child)| (parent.as_str(), child.as_str()))
        .chain(
            g.manifests
                .iter()
                .filter_map(|m| m.subject.as_deref().map(|s| (m.digest.as_str(), s))),
        );
    for (first, then) in edges {
        if dead.contains(first) && dead.contains(then) {
            after.entry(first).or_default().push(then);
            if let Some(n) = waits.get_mut(then) {
                *n += 1;
            }
        }
    }
    let mut ready: Vec<&str> = waits
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(d, _)| *d)
        .collect();
    ready.sort_unstable();
    let mut doomed = Vec::with_capacity(dead.len());
    while let Some(d) = ready.pop() {
        doomed.push(d.to_owned());
        for next in after.get(d).into_iter().flatten() {
            if let Some(n) = waits.get_mut(next) {
                *n -= 1;
                if *n == 0 {
                    ready.push(next);
                }
            }
        }
    }
    Marked {
        kept: live.len(),
        doomed,
    }
}

/// What one round of the schedule did: retention and eviction, then the collection.
/// Each can fail on its own; a failed housekeeping does not stop the collection.
#[derive(Debug)]
pub struct ScheduledRound {
    pub housekeeping: Result<RetentionReport>,
    pub collection: Result<GcReport>,
}

impl Registry {
    /// Takes the collection lease for `holder` unless another process holds it.
    async fn take_gc_lease(&self, holder: &str) -> Result<bool> {
        // Generous: a lease that lapses mid-run only lets a second collection start, and
        // every deletion is safe against a concurrent one anyway.
        let ttl = micros(Duration::from_secs(3600));
        Ok(self.meta.try_lease(LEASE, holder, ttl).await?)
    }

    async fn release_gc_lease(&self, holder: &str) {
        if let Err(e) = self.meta.release_lease(LEASE, holder).await {
            tracing::warn!(error = %e, "could not release the collection lease");
        }
    }

    /// Runs one collection unless another replica holds the lease; `None` if it does.
    /// `holder` names this process in the lease.
    pub async fn collect_garbage_leased(
        &self,
        holder: &str,
        options: &GcOptions,
        progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<Option<GcReport>> {
        if !self.take_gc_lease(holder).await? {
            return Ok(None);
        }
        let report = self.collect_garbage(options, progress).await;
        self.release_gc_lease(holder).await;
        report.map(Some)
    }

    /// One round of `serve`'s schedule, by one replica at a time (the collection lease):
    /// `housekeeping` applied, then a collection, which frees what it removed once the
    /// rollback window has passed. `None` if another replica holds the lease.
    pub async fn scheduled_round(
        &self,
        holder: &str,
        housekeeping: &Housekeeping,
        options: &GcOptions,
    ) -> Result<Option<ScheduledRound>> {
        if !self.take_gc_lease(holder).await? {
            return Ok(None);
        }
        let housekeeping = self.housekeeping(housekeeping, false).await;
        let collection = self.collect_garbage(options, &|_| {}).await;
        self.release_gc_lease(holder).await;
        Ok(Some(ScheduledRound {
            housekeeping,
            collection,
        }))
    }

    /// Marks and sweeps the whole registry once.
    pub async fn collect_garbage(
        &self,
        options: &GcOptions,
        progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<GcReport> {
        let started = Instant::now();
        let now = now_micros();
        let cutoff = now.saturating_sub(micros(options.grace));
        let history_since = now.saturating_sub(micros(options.grace.max(options.rollback_window)));
        let actor = Actor::named("system:gc");
        let mut report = GcReport::default();
        // Dry: links each blob would lose, to tell which blobs would end up orphaned.
        let mut would_unlink: HashMap<String, u64> = HashMap::new();

        let repos = self.meta.gc_repositories().await?;
        report.repositories = repos.len();
        for (i, (repo_id, repo)) in repos.iter().enumerate() {
            let g = self
                .meta
                .gc_repo_graph(*repo_id, repo, history_since)
                .await?;
            // A pull-through cache keeps what it fetched, tagged or not (a cluster may pin
            // digests); its content goes by eviction (`evict_cache`), not by reachability.
            let cached = repo
                .parse::<berth_oci::RepoName>()
                .is_ok_and(|r| self.cached_upstream(&r).is_some());
            let marked = mark(&g, if cached { i64::MIN } else { cutoff });
            report.manifests_kept += marked.kept;
            let deleted: HashSet<String> = if options.dry_run {
                marked.doomed.iter().cloned().collect()
            } else {
                let mut doomed: HashSet<String> = marked.doomed.iter().cloned().collect();
                let mut deleted = HashSet::new();
                for batch in marked.doomed.chunks(BATCH) {
                    let gone = tolerate(
                        self.meta
                            .gc_delete_manifests(*repo_id, repo, batch, &doomed, cutoff, &actor)
                            .await,
                    )?;
                    let gone: HashSet<String> = gone.into_iter().collect();
                    for d in batch {
                        if !gone.contains(d) {
                            doomed.remove(d);
                        }
                    }
                    for d in &gone {
                        self.cache.apply(berth_meta::Invalidation::Manifest {
                            repo: repo.clone(),
                            digest: d.clone(),
                        });
                    }
                    deleted.extend(gone);
                }
                report.manifests_kept += marked.doomed.len() - deleted.len();
                // A swept image's cosign `.sig`/`.att`/`.sbom` tags would keep its
                // signatures forever: they go with it (their bytes at the next run).
                if let Ok(name) = repo.parse::<berth_oci::RepoName>() {
                    for d in &deleted {
                        if let Ok(d) = d.parse() {
                            self.drop_signature_tags(&name, &d, &actor).await;
                        }
                    }
                }
                deleted
            };
            let mut sorted: Vec<&String> = deleted.iter().collect();
            sorted.sort();
            report
                .manifests_deleted
                .extend(sorted.into_iter().map(|d| (repo.clone(), d.clone())));

            // Links: needed by a manifest that stays, or young.
            let needed: HashSet<&str> = g
                .blobs
                .iter()
                .filter(|(m, _)| !deleted.contains(m))
                .map(|(_, b)| b.as_str())
                .collect();
            let mut unneeded: Vec<String> = g
                .links
                .iter()
                .filter(|(d, at, _)| *at < cutoff && !needed.contains(d.as_str()))
                .map(|(d, _, _)| d.clone())
                .collect();
            unneeded.sort();
            if options.dry_run {
                report.links_removed += unneeded.len();
                for d in unneeded {
                    *would_unlink.entry(d).or_default() += 1;
                }
            } else {
                for batch in unneeded.chunks(BATCH) {
                    let gone = tolerate(
                        self.meta
                            .gc_unlink_blobs(*repo_id, repo, batch, cutoff)
                            .await,
                    )?;
                    report.links_removed += gone.len();
                    for d in gone {
                        self.cache.apply(berth_meta::Invalidation::Blob {
                            repo: repo.clone(),
                            digest: d,
                        });
                    }
                }
            }
            progress(GcProgress::Repository {
                done: i + 1,
                total: repos.len(),
            });
        }

        self.orphans(
            cutoff,
            options.dry_run,
            &would_unlink,
            &mut report,
            progress,
        )
        .await?;
        if !options.dry_run {
            report.uploads_purged = self.purge_stale_uploads().await?;
            report.catalogs_pruned = self.meta.prune_catalogs().await?;
        }
        report.bytes_freed = report.blobs_deleted.iter().map(|(_, s)| s).sum();
        report.elapsed = started.elapsed();
        if !options.dry_run {
            let st = self.stats();
            crate::stats::bump(&st.gc_runs, 1);
            crate::stats::bump(&st.gc_manifests, report.manifests_deleted.len() as u64);
            crate::stats::bump(&st.gc_blobs, report.blobs_deleted.len() as u64);
            crate::stats::bump(&st.gc_bytes, report.bytes_freed);
            let detail = serde_json::json!({
                "manifests": report.manifests_deleted.len(),
                "links": report.links_removed,
                "blobs": report.blobs_deleted.len(),
                "bytes": report.bytes_freed,
                "uploads": report.uploads_purged,
                "catalogs": {"images": report.catalogs_pruned.0, "layers": report.catalogs_pruned.1},
            });
            self.meta
                .audit_run(&actor, "gc.run", &detail.to_string())
                .await?;
        }
        Ok(report)
    }

    /// Blobs linked nowhere: deleted page by page, or (dry) reported, together with the
    /// blobs that only links the sweep would remove keep (`would_unlink`: links each would
    /// lose).
    async fn orphans(
        &self,
        cutoff: i64,
        dry_run: bool,
        would_unlink: &HashMap<String, u64>,
        report: &mut GcReport,
        progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<()> {
        let mut after = String::new();
        let mut examined = 0;
        loop {
            let page = self
                .meta
                .gc_orphan_blobs(cutoff, &after, BATCH as u32)
                .await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.clone();
            examined += page.len();
            if dry_run {
                report.blobs_deleted.extend(page);
            } else {
                let digests: Vec<String> = page.into_iter().map(|(d, _)| d).collect();
                let gone = tolerate(self.delete_blobs(&digests, cutoff).await)?;
                report.blobs_deleted.extend(gone);
            }
            progress(GcProgress::Blobs { examined });
        }
        if dry_run {
            let candidates: Vec<String> = would_unlink.keys().cloned().collect();
            for batch in candidates.chunks(BATCH) {
                for (digest, size, links, written_at) in self.meta.gc_blob_links(batch).await? {
                    if written_at < cutoff && would_unlink.get(&digest) == Some(&links) {
                        report.blobs_deleted.push((digest, size));
                    }
                }
            }
            report.blobs_deleted.sort();
        }
        Ok(())
    }

    /// One locked batch of blob rows and their bytes.
    async fn delete_blobs(
        &self,
        digests: &[String],
        cutoff: i64,
    ) -> std::result::Result<Vec<(String, u64)>, berth_meta::MetaError> {
        let blobs = self.blobs.clone();
        self.meta
            .gc_delete_blobs(digests, cutoff, |doomed| async move {
                for d in doomed {
                    // A row whose text is no digest names no file either.
                    let Ok(digest) = d.parse::<Digest>() else {
                        continue;
                    };
                    blobs.delete(&digest).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_meta::GcManifest;

    fn m(d: &str, created_at: i64, subject: Option<&str>) -> GcManifest {
        GcManifest {
            digest: d.to_owned(),
            created_at,
            subject: subject.map(str::to_owned),
            pulled_at: None,
        }
    }

    #[test]
    fn mark_follows_children_and_referrers_and_orders_parents_first() {
        let g = RepoGraph {
            repo_id: 1,
            repo: "r".into(),
            manifests: vec![
                m("tagged-index", 0, None),
                m("child", 0, None),
                m("sig-of-child", 0, Some("child")),
                m("old-index", 0, None),
                m("old-child", 0, None),
                m("sig-of-old-child", 0, Some("old-child")),
                m("young", 100, None),
                m("in-history", 0, None),
            ],
            children: vec![
                ("tagged-index".into(), "child".into()),
                ("old-index".into(), "old-child".into()),
            ],
            tagged: vec!["tagged-index".into()],
            history: vec!["in-history".into(), "long-gone".into()],
            ..RepoGraph::default()
        };
        let marked = mark(&g, 50);
        assert_eq!(marked.kept, 5);
        let mut doomed = marked.doomed.clone();
        doomed.sort();
        assert_eq!(doomed, ["old-child", "old-index", "sig-of-old-child"]);
        let pos = |d: &str| marked.doomed.iter().position(|x| x == d);
        assert!(pos("old-index") < pos("old-child"));
        assert!(pos("sig-of-old-child") < pos("old-child"));
    }
}
