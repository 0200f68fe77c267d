//! Push-mirror replication: every manifest stored in a repository that a rule selects is
//! copied to another registry (children, blobs and referrers with it), in the background.
//!
//! One worker takes jobs in push order, so a tag moved twice ends on the target where it
//! ended here. A job that fails (target down, credentials refused) is retried with growing
//! pauses; after the last try it is logged and counted, and the next push of the same
//! repository carries the tag forward again. The queue lives in memory: a restart forgets
//! jobs not yet done, which `berth mirror`/`export` cannot replace, so the README says to
//! re-push (or re-run a full copy) after a crash if the target must be exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_auth::policy::glob;
use berth_oci::manifest::parse_manifest;
use berth_oci::{Digest, Reference, RepoName};
use berth_upstream::Upstream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{Registry, RegistryError, Result};

/// Jobs waiting; more are dropped (and counted) rather than growing without bound.
const QUEUE: usize = 10_000;
/// Tries per job before it is given up.
const ATTEMPTS: u32 = 5;

/// One replication target and what goes there.
pub struct ReplicaRule {
    /// Glob over full repository names (`team-a/*`, `*`).
    pub repositories: String,
    pub target: Arc<Upstream>,
    /// Prepended to the repository name on the target (`backup/` → `backup/team-a/app`).
    pub prefix: String,
}

#[derive(Debug, Clone)]
struct Job {
    repo: RepoName,
    digest: Digest,
    tag: Option<String>,
    attempt: u32,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub replicated: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

pub(crate) struct Replicator {
    rules: Vec<ReplicaRule>,
    tx: mpsc::Sender<Job>,
    stats: Arc<ReplicationStats>,
}

impl Replicator {
    /// Queues `repo@digest` (and its tag) if a rule selects the repository.
    pub(crate) fn enqueue(&self, repo: &RepoName, digest: &Digest, tag: Option<&str>) {
        if !self
            .rules
            .iter()
            .any(|r| glob(&r.repositories, repo.as_str()))
        {
            return;
        }
        let job = Job {
            repo: repo.clone(),
            digest: digest.clone(),
            tag: tag.map(str::to_owned),
            attempt: 0,
        };
        if self.tx.try_send(job).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(repository = %repo, %digest, "replication queue full; push not replicated");
        }
    }
}

impl Registry {
    /// Starts replicating to `rules`' targets (on the current runtime).
    pub fn with_replication(mut self, rules: Vec<ReplicaRule>) -> Registry {
        if rules.is_empty() {
            return self;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ReplicationStats::default());
        self.replicator = Some(Arc::new(Replicator {
            rules,
            tx: tx.clone(),
            stats,
        }));
        tokio::spawn(work(self.clone(), rx, tx));
        self
    }

    /// Replication counters, if replication is configured.
    pub fn replication_stats(&self) -> Option<Arc<ReplicationStats>> {
        self.replicator.as_ref().map(|r| Arc::clone(&r.stats))
    }

    /// Copies `repo@digest` to `rule`'s target: children and blobs first, then the
    /// manifest, its tag, and the referrers of the manifest.
    async fn replicate(&self, rule: &ReplicaRule, job: &Job) -> Result<()> {
        let target_repo = format!("{}{}", rule.prefix, job.repo);
        let m = self
            .copy_manifest(rule, &job.repo, &target_repo, &job.digest)
            .await?;
        if let Some(tag) = &job.tag {
            let reference: Reference = tag
                .parse()
                .map_err(|_| RegistryError::Internal(format!("bad tag {tag}")))?;
            // A retried job may run after a newer push of the same tag: only the job whose
            // digest the tag still names here moves it on the target.
            let current = self.resolve(&job.repo, &reference).await.ok();
            if current.as_ref() != Some(&job.digest) {
                return Ok(());
            }
            rule.target
                .put_manifest(&target_repo, &reference, &m.media_type, m.content)
                .await
                .map_err(up)?;
        }
        let referrers = self
            .meta
            .referrers(job.repo.as_str(), job.digest.as_str(), None)
            .await?;
        for r in referrers {
            if let Ok(d) = r.digest.parse::<Digest>() {
                self.copy_manifest(rule, &job.repo, &target_repo, &d)
                    .await?;
            }
        }
        Ok(())
    }

    async fn copy_manifest(
        &self,
        rule: &ReplicaRule,
        repo: &RepoName,
        target_repo: &str,
        digest: &Digest,
    ) -> Result<crate::Manifest> {
        let m = self
            .get_manifest(repo, &Reference::Digest(digest.clone()))
            .await?;
        let parsed = parse_manifest(&m.content, Some(&m.media_type))
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        for child in &parsed.manifests {
            if let Some(c) = child.known_digest() {
                Box::pin(self.copy_manifest(rule, repo, target_repo, &c)).await?;
            }
        }
        for blob in parsed.config.iter().chain(&parsed.layers) {
            let Some(d) = blob.known_digest().filter(|_| !blob.has_urls) else {
                continue;
            };
            if rule.target.has_blob(target_repo, &d).await.map_err(up)? {
                continue;
            }
            let read = self.read_blob(repo, &d, None, true).await?;
            let Some(reader) = read.reader else {
                return Err(RegistryError::Internal(format!("blob {d} has no body")));
            };
            rule.target
                .push_blob(target_repo, &d, read.size, reader.body.boxed())
                .await
                .map_err(up)?;
        }
        rule.target
            .put_manifest(
                target_repo,
                &Reference::Digest(digest.clone()),
                &m.media_type,
                m.content.clone(),
            )
            .await
            .map_err(up)?;
        Ok(m)
    }

    pub(crate) fn replicate_later(&self, repo: &RepoName, digest: &Digest, tag: Option<&str>) {
        if let Some(r) = &self.replicator {
            r.enqueue(repo, digest, tag);
        }
    }
}

fn up(e: berth_upstream::UpstreamError) -> RegistryError {
    RegistryError::UpstreamFailed(e.to_string())
}

async fn work(registry: Registry, mut rx: mpsc::Receiver<Job>, tx: mpsc::Sender<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(rep) = registry.replicator.clone() else {
            return;
        };
        let mut failed = false;
        for rule in rep
            .rules
            .iter()
            .filter(|r| glob(&r.repositories, job.repo.as_str()))
        {
            match registry.replicate(rule, &job).await {
                Ok(()) => {
                    tracing::debug!(repository = %job.repo, digest = %job.digest, target = rule.target.name(), "replicated");
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(
                        repository = %job.repo,
                        digest = %job.digest,
                        target = rule.target.name(),
                        attempt = job.attempt + 1,
                        error = %e,
                        "replication failed"
                    );
                }
            }
        }
        if !failed {
            rep.stats.replicated.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if job.attempt + 1 >= ATTEMPTS {
            rep.stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Retry later without holding up the jobs behind it (replaying an already copied
        // rule is cheap: blobs present on the target are skipped).
        let retry = Job {
            attempt: job.attempt + 1,
            ..job
        };
        let tx = tx.clone();
        let pause = Duration::from_secs(1 << retry.attempt.min(6));
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            let _ = tx.send(retry).await;
        });
    }
}
