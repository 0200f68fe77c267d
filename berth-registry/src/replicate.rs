//! Push-mirror replication: every manifest stored in a repository that a rule selects is
//! copied to another registry (children, blobs and referrers with it), in the background.
//!
//! Replication runs on the job queue: `put_manifest` (and a rollback, which moves a tag)
//! writes one job per target in its own transaction, so a push acknowledged to the client
//! is replicated even if Berth is killed right after, by this replica after a restart or
//! by any other. Each target is a queue, worked by one replica at a time, in push order
//! per repository, so a tag moved twice ends on the target where it ended here. A job
//! that fails (target down, credentials refused) is retried with growing pauses; after
//! its last attempt it is dead, listed by `berth events dead` and redeliverable.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use berth_auth::policy::glob;
use berth_meta::{Change, ChangeKind, Job, NewJob};
use berth_oci::manifest::parse_manifest;
use berth_oci::{Digest, Reference, RepoName};
use berth_upstream::Upstream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::events::DeliveryFailure;
use crate::{Registry, RegistryError, Result};

/// The job kind of a replication copy.
pub const REPLICATE_JOB: &str = "replicate";

/// One replication target and what goes there.
pub struct ReplicaRule {
    /// Glob over full repository names (`team-a/*`, `*`).
    pub repositories: String,
    pub target: Arc<Upstream>,
    /// Prepended to the repository name on the target (`backup/` → `backup/team-a/app`).
    pub prefix: String,
}

impl ReplicaRule {
    /// The rule's queue: one per target and prefix, so rules that copy to the same place
    /// share one order.
    pub fn queue(&self) -> String {
        format!("replicate:{}/{}", self.target.name(), self.prefix)
    }
}

/// A replication job's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Copy {
    repo: String,
    digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub replicated: AtomicU64,
    pub failed: AtomicU64,
}

pub(crate) struct Replicator {
    rules: Vec<ReplicaRule>,
    pub(crate) stats: Arc<ReplicationStats>,
}

impl Replicator {
    /// The jobs a change causes: one per target whose rule selects the repository, for
    /// pushes and rollbacks (deletes are not replicated).
    pub(crate) fn jobs_for(&self, c: &Change<'_>) -> Vec<NewJob> {
        if !matches!(c.kind, ChangeKind::Push | ChangeKind::Rollback) {
            return Vec::new();
        }
        let mut queues: Vec<String> = self
            .rules
            .iter()
            .filter(|r| glob(&r.repositories, c.repo))
            .map(ReplicaRule::queue)
            .collect();
        queues.dedup();
        if queues.is_empty() {
            return Vec::new();
        }
        let payload = serde_json::to_string(&Copy {
            repo: c.repo.to_owned(),
            digest: c.digest.to_owned(),
            tag: c.tag.map(str::to_owned),
        })
        .unwrap_or_default();
        queues
            .into_iter()
            .map(|queue| NewJob {
                kind: REPLICATE_JOB.to_owned(),
                queue,
                lane: c.repo.to_owned(),
                payload: payload.clone(),
            })
            .collect()
    }

    pub(crate) fn queues(&self) -> impl Iterator<Item = String> + '_ {
        self.rules.iter().map(ReplicaRule::queue)
    }
}

impl Registry {
    /// Replicates pushes to `rules`' targets: their jobs are queued from now on, and run
    /// once the job workers are started ([`Registry::start_jobs`]).
    pub fn with_replication(mut self, rules: Vec<ReplicaRule>) -> Registry {
        if rules.is_empty() {
            return self;
        }
        self.replicator = Some(Arc::new(Replicator {
            rules,
            stats: Arc::default(),
        }));
        self
    }

    /// Replication counters, if replication is configured.
    pub fn replication_stats(&self) -> Option<Arc<ReplicationStats>> {
        self.replicator.as_ref().map(|r| Arc::clone(&r.stats))
    }

    /// Runs one replication job: copies its manifest to the target of its queue.
    pub(crate) async fn run_replication(
        &self,
        job: &Job,
    ) -> std::result::Result<(), DeliveryFailure> {
        let Some(rep) = &self.replicator else {
            return Err(DeliveryFailure::permanent(
                "replication is not configured".into(),
            ));
        };
        let Some(rule) = rep.rules.iter().find(|r| r.queue() == job.queue) else {
            return Err(DeliveryFailure::permanent(format!(
                "{} is no longer a replication target",
                job.queue
            )));
        };
        let copy: Copy = serde_json::from_str(&job.payload)
            .map_err(|e| DeliveryFailure::permanent(format!("unreadable job: {e}")))?;
        let (Ok(repo), Ok(digest)) = (copy.repo.parse::<RepoName>(), copy.digest.parse::<Digest>())
        else {
            return Err(DeliveryFailure::permanent(
                "job names a bad repository or digest".into(),
            ));
        };
        match self
            .replicate(rule, &repo, &digest, copy.tag.as_deref())
            .await
        {
            Ok(()) => {
                tracing::debug!(repository = %repo, %digest, target = rule.target.name(), "replicated");
                Ok(())
            }
            // Deleted here since it was pushed: nothing left to copy.
            Err(RegistryError::ManifestUnknown) => Ok(()),
            Err(e) => Err(DeliveryFailure::transient(e.to_string())),
        }
    }

    /// Copies `repo@digest` to `rule`'s target: children and blobs first, then the
    /// manifest, its tag, and the referrers of the manifest.
    async fn replicate(
        &self,
        rule: &ReplicaRule,
        repo: &RepoName,
        digest: &Digest,
        tag: Option<&str>,
    ) -> Result<()> {
        let target_repo = format!("{}{}", rule.prefix, repo);
        let m = self.copy_manifest(rule, repo, &target_repo, digest).await?;
        if let Some(tag) = tag {
            let reference: Reference = tag
                .parse()
                .map_err(|_| RegistryError::Internal(format!("bad tag {tag}")))?;
            // A retried job may run after a newer push of the same tag: only the job whose
            // digest the tag still names here moves it on the target.
            let current = self.resolve(repo, &reference).await.ok();
            if current.as_ref() != Some(digest) {
                return Ok(());
            }
            rule.target
                .put_manifest(&target_repo, &reference, &m.media_type, m.content)
                .await
                .map_err(up)?;
        }
        let referrers = self
            .meta
            .referrers(repo.as_str(), digest.as_str(), None)
            .await?;
        for r in referrers {
            if let Ok(d) = r.digest.parse::<Digest>() {
                self.copy_manifest(rule, repo, &target_repo, &d).await?;
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
}

fn up(e: berth_upstream::UpstreamError) -> RegistryError {
    RegistryError::UpstreamFailed(e.to_string())
}
