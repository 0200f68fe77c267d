//! The registry's use cases, independent of HTTP: upload sessions, manifest put with
//! reference checks, reads, deletes, listings. The server and the CLI both call these, so
//! they cannot disagree about the rules.

pub mod access;
pub mod admission;
pub mod audit;
mod cache;
pub mod catalog;
mod encryption;
mod error;
pub mod events;
mod flight;
pub mod fsck;
pub mod gc;
pub mod health;
pub mod jobs;
pub mod layout;
mod login;
pub mod maintenance;
pub mod p2p;
pub mod policy;
pub mod prefetch;
mod proxy;
mod quota;
mod refs;
pub mod replicate;
pub mod retention;
pub mod stats;
pub mod tag_rules;
pub mod transfer;
mod versions;
pub mod vulns;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use berth_meta::{MetaStore, NewManifest, PutManifest, Removal, TagGuard};
use berth_oci::manifest::parse_manifest;
use berth_oci::range::{RangeError, resolve_range};
use berth_oci::{Algorithm, Digest, Reference, RepoName, Tag};
use berth_storage::{BlobReader, BlobStore, HashState, digest_of, failpoint};
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

pub use berth_meta::{Actor, Backend, Linked, Referrer};
pub use berth_upstream::UpstreamConfig;
pub use encryption::{EncryptSummary, KeyProblem, KeyUse, RewrapSummary};
pub use error::RegistryError;
pub use proxy::{
    BlobSource, Pulled, PulledBlob, UpstreamSettings, UpstreamStatus, upstream_prefix,
};
pub use tag_rules::{TagRuleSpec, TagRules};
pub use versions::{HistoryEntry, Rollback, VersionedTag};

use cache::TtlCache;

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The `Warning` of a manifest served from the stale cache (RFC 9111's 110).
fn stale_warning(age: Duration) -> String {
    format!(
        "110 - \"metadata store unavailable; served from this replica's cache, {} s old\"",
        age.as_secs()
    )
}

/// Passes a failpoint on the metadata side of a write (see `berth_storage::failpoint`).
fn failpoint(name: &'static str) -> Result<()> {
    failpoint::hit(name).map_err(|e| RegistryError::Internal(e.to_string()))
}

/// Rules that an operator may tune.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Accept an index whose children are not (yet) in the repository.
    pub allow_sparse_index: bool,
    /// Most entries one tags or catalog page returns.
    pub max_page: u64,
    /// Unfinished uploads untouched for this long are removed.
    pub upload_ttl: Duration,
    /// How long a cached tag, manifest or blob link may be served without asking the
    /// metadata store; bounds how long another replica's change can go unseen. Zero turns
    /// the cache off.
    pub cache_ttl: Duration,
    /// Entries kept in each read cache.
    pub cache_entries: usize,
    /// While the metadata store is unavailable, tags, manifests and blob links this
    /// replica read from it less than this long ago are still served (manifests with a
    /// `Warning`), so pulls go on through a short outage or a failover. Zero: never.
    pub stale_on_error: Duration,
    /// Immutable and refused tags.
    pub tag_rules: TagRules,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: u64::MAX,
            allow_sparse_index: false,
            max_page: 10_000,
            upload_ttl: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(2),
            cache_entries: 10_000,
            stale_on_error: Duration::from_secs(300),
            tag_rules: TagRules::default(),
        }
    }
}

/// An upload session's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

/// What a successful manifest put reports back.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    pub digest: Digest,
    /// The manifest's subject, for the `OCI-Subject` header.
    pub subject: Option<String>,
    /// The tags now pointing at it (one `OCI-Tag` header each).
    pub tags: Vec<String>,
}

/// A blob ready to stream, with the part of it requested.
pub struct BlobRead {
    pub size: u64,
    /// Inclusive byte range when a `Range` was honoured.
    pub range: Option<(u64, u64)>,
    pub reader: Option<BlobReader>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDescriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrersIndex<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<IndexDescriptor<'a>>,
}

struct Caches {
    tags: TtlCache<Digest>,
    manifests: TtlCache<Manifest>,
    blob_links: TtlCache<u64>,
    /// Manifests whose pull was recorded lately: a rollout pulls the same manifest from
    /// every node, and one write per manifest per interval is plenty for retention.
    pulls: TtlCache<()>,
}

/// How often at most a manifest's pull time is written.
const PULL_NOTE_INTERVAL: Duration = Duration::from_secs(3600);

impl Caches {
    /// Forgets what a change, here or on another replica, made stale.
    fn apply(&self, inv: berth_meta::Invalidation) {
        use berth_meta::Invalidation as I;
        match inv {
            I::Tag { repo, tag } => self.tags.remove(&cache::key(&repo, &tag)),
            I::Manifest { repo, digest } => {
                self.manifests.remove(&cache::key(&repo, &digest));
                self.tags.remove_prefix(&cache::repo_prefix(&repo));
            }
            I::Blob { repo, digest } => {
                self.blob_links.remove(&cache::key(&repo, &digest));
            }
            // The policy state forgets verdicts; nothing cached here depends on them.
            I::Verdicts { .. } => {}
            // For node agents' grants requests, woken by the listener itself.
            I::Granted { .. } => {}
            // Changes may have been missed: nothing cached until now is served as fresh
            // again, but it stays for stale reads while the store is unavailable.
            I::All => {
                self.tags.expire_all();
                self.manifests.expire_all();
                self.blob_links.expire_all();
            }
        }
    }
}

#[derive(Clone)]
pub struct Registry {
    blobs: BlobStore,
    meta: MetaStore,
    config: RegistryConfig,
    cache: Arc<Caches>,
    /// Pull-through upstreams, if any are configured.
    proxy: Option<Arc<proxy::Proxy>>,
    /// Push-mirror replication, if any rule is configured.
    replicator: Option<Arc<replicate::Replicator>>,
    /// Package catalogs and SBOMs of every image, if turned on.
    catalog: Option<Arc<catalog::Cataloger>>,
    /// Webhooks: the endpoints in force, the allowlist, the pull event queue.
    events: Arc<events::Events>,
    /// The job workers' settings and counters.
    jobs: Arc<jobs::JobsState>,
    stats: Arc<stats::Stats>,
    /// The tag rules in force: the configuration's and those managed through the API.
    rules: Arc<std::sync::RwLock<Arc<TagRules>>>,
    /// Signature trust, policy rules and the verdict cache.
    policy: Arc<policy::PolicyState>,
    /// Admission webhook rules, settings and counters.
    admission: Arc<admission::AdmissionState>,
    /// Whether the metadata store answers.
    health: Arc<health::MetaHealth>,
    /// Vulnerability import and matching counters.
    vulns: Arc<vulns::VulnStats>,
    /// The keyring when blobs are encrypted at rest.
    encryption: Option<Arc<berth_storage::seal::Keyring>>,
    /// Node-local sharing (tickets, tracker), if turned on.
    p2p: Option<Arc<p2p::P2p>>,
    /// What the operations page's dry runs use.
    maintenance: Arc<maintenance::MaintenanceSettings>,
}

impl Registry {
    pub fn new(blobs: BlobStore, meta: MetaStore, config: RegistryConfig) -> Registry {
        let rules = Arc::new(config.tag_rules.clone());
        let (n, ttl) = (config.cache_entries, config.cache_ttl);
        let keep = config.stale_on_error;
        Registry {
            blobs,
            meta,
            config,
            cache: Arc::new(Caches {
                tags: TtlCache::new(n, ttl).with_keep(keep),
                manifests: TtlCache::new(n, ttl).with_keep(keep),
                blob_links: TtlCache::new(n, ttl).with_keep(keep),
                pulls: TtlCache::new(n, PULL_NOTE_INTERVAL),
            }),
            proxy: None,
            replicator: None,
            catalog: None,
            events: Arc::new(events::Events::none()),
            jobs: Arc::new(jobs::JobsState::new(jobs::JobSettings::default())),
            stats: Arc::default(),
            rules: Arc::new(std::sync::RwLock::new(rules)),
            policy: Arc::new(policy::PolicyState::new(policy::Policy::default())),
            admission: Arc::default(),
            health: Arc::default(),
            vulns: Arc::default(),
            encryption: None,
            p2p: None,
            maintenance: Arc::default(),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Keeps this replica's read caches in step with changes other replicas commit
    /// (PostgreSQL `LISTEN`); without it they catch up within `cache_ttl`. On both, the
    /// policy counter is polled once a second, so an advisory import or a policy change
    /// made by another process is in force here within a second.
    pub async fn follow_other_replicas(&self) -> Result<()> {
        let caches = Arc::clone(&self.cache);
        let verdicts = Arc::clone(&self.policy);
        let stats = Arc::clone(&self.stats);
        let p2p = self.p2p.clone();
        let listening = self
            .meta
            .listen_invalidations(move |inv| {
                if let Some(p) = &p2p {
                    match &inv {
                        berth_meta::Invalidation::Granted { addr } => p.wake_grants(Some(addr)),
                        // Grants may have been missed meanwhile: every request looks.
                        berth_meta::Invalidation::All => p.wake_grants(None),
                        _ => {}
                    }
                }
                match &inv {
                    // The policy itself changed: the poller re-reads it at once.
                    berth_meta::Invalidation::Verdicts { repo: None } => {
                        verdicts.invalidate(None);
                        verdicts.wake();
                    }
                    berth_meta::Invalidation::Verdicts { repo } => {
                        verdicts.invalidate(repo.as_deref())
                    }
                    berth_meta::Invalidation::All => {
                        stats::bump(&stats.listener_resets, 1);
                        verdicts.invalidate(None)
                    }
                    _ => {}
                }
                caches.apply(inv)
            })
            .await?;
        // On PostgreSQL the fallback for notifications lost while the listener
        // reconnects; on SQLite how this process learns of what offline commands wrote
        // into its database (`berth advisories import` while it serves).
        let _ = listening;
        self.poll_verdict_counter();
        Ok(())
    }

    /// Records, in the background and at most once per interval, that a manifest was
    /// pulled.
    fn note_pull(&self, repo: &RepoName, digest: &Digest) {
        let k = cache::key(repo.as_str(), digest.as_str());
        if self.cache.pulls.get(&k).is_some() {
            return;
        }
        self.cache.pulls.insert(k, ());
        let (meta, repo, digest) = (self.meta.clone(), repo.to_string(), digest.to_string());
        tokio::spawn(async move {
            if let Err(e) = meta.mark_pulled(&repo, &digest).await {
                tracing::debug!(error = %e, %repo, %digest, "recording a pull failed");
            }
        });
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// A link refused for the tenant's quota is a `DENIED` naming the quota. `placed`: the
    /// bytes were moved into place before the link was refused (the quota was lowered
    /// meanwhile); garbage collection removes them.
    pub(crate) fn linked(&self, l: Linked, placed: bool) -> Result<()> {
        match l {
            Linked::Linked => Ok(()),
            Linked::Gone => Err(RegistryError::BlobUnknown),
            Linked::OverQuota(q) if placed => {
                stats::bump(&self.stats().quota_orphaned_blobs, 1);
                Err(self.over_quota_cancelled(quota::Refused::Blob, q))
            }
            Linked::OverQuota(q) => Err(self.over_quota(quota::Refused::Blob, q)),
        }
    }

    // ---- blobs ----

    /// Size of a blob linked to `repo`, checking that its bytes are really there.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let k = cache::key(repo.as_str(), digest.as_str());
        if let Some(size) = self.cache.blob_links.get(&k) {
            return Ok(size);
        }
        if let Some((size, _)) = self.stale_without_asking(&self.cache.blob_links, &k) {
            return Ok(size);
        }
        let generation = self.cache.blob_links.generation();
        let size = match self.meta.repo_blob(repo.as_str(), digest.as_str()).await {
            Ok(size) => size.ok_or(RegistryError::BlobUnknown)?,
            Err(e) => {
                let e = RegistryError::from(e);
                return match self.stale(&self.cache.blob_links, &k, &e) {
                    Some((size, _)) => Ok(size),
                    None => Err(e),
                };
            }
        };
        self.health.answered();
        self.cache.blob_links.insert_read(generation, k, size);
        Ok(size)
    }

    /// Opens a blob for reading; `range` is the request's `Range` header, if any.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<&str>,
        with_body: bool,
    ) -> Result<BlobRead> {
        let size = self.stat_blob(repo, digest).await?;
        let range = match range.map(|r| resolve_range(r, size)).transpose() {
            Ok(r) => r.flatten(),
            Err(RangeError::Unsatisfiable) => {
                return Err(RegistryError::RangeNotSatisfiable { size });
            }
            Err(RangeError::Malformed) => None,
        };
        let reader = if with_body {
            let reader = self.open_blob(digest, range, size).await?;
            if reader.is_none() {
                tracing::error!(%digest, "blob is linked but its bytes are missing from storage");
                return Err(RegistryError::BlobUnknown);
            }
            reader
        } else {
            None
        };
        Ok(BlobRead {
            size,
            range,
            reader,
        })
    }

    /// Unlinks a blob from a repository. Refused while a manifest there needs it.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest, actor: &Actor) -> Result<()> {
        let k = cache::key(repo.as_str(), digest.as_str());
        self.cache.blob_links.remove(&k);
        let outcome = self
            .meta
            .unlink_blob(repo.as_str(), digest.as_str(), actor)
            .await?;
        // Again once the unlink is in: a read between the first removal and the commit
        // saw the link and may have cached it.
        self.cache.blob_links.remove(&k);
        match outcome {
            Removal::Removed => Ok(()),
            Removal::NotFound => Err(RegistryError::BlobUnknown),
            Removal::Referenced(by) => Err(RegistryError::InUse(format!(
                "blob is referenced by manifest {by}; delete the manifest first"
            ))),
            Removal::Immutable { .. } => Err(RegistryError::Internal(
                "a blob unlink reported an immutable tag".into(),
            )),
        }
    }

    /// Links a blob from another repository; false if it cannot be mounted from there.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
        actor: &Actor,
    ) -> Result<bool> {
        if self
            .meta
            .repo_blob(from.as_str(), digest.as_str())
            .await?
            .is_none()
        {
            return Ok(false);
        }
        if self.blobs.stat(digest).await?.is_none() {
            return Ok(false);
        }
        match self
            .meta
            .link_existing_blob(repo.as_str(), digest.as_str(), actor)
            .await?
        {
            Linked::Gone => Ok(false),
            other => self.linked(other, false).map(|()| true),
        }
    }

    // ---- uploads ----

    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.create_upload(&id).await?;
        self.meta
            .create_upload(&id, repo.as_str(), &HashState::new().to_bytes())
            .await?;
        Ok(UploadStatus { id, offset: 0 })
    }

    async fn session(&self, repo: &RepoName, id: &str) -> Result<berth_meta::Upload> {
        match self.meta.get_upload(id).await? {
            Some(u) if u.repo == repo.as_str() => Ok(u),
            _ => Err(RegistryError::UploadUnknown),
        }
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        let u = self.session(repo, id).await?;
        Ok(UploadStatus {
            id: id.to_owned(),
            offset: u.size,
        })
    }

    /// Appends a chunk. `content_range` is the inclusive range the client says it sends;
    /// it must start where the upload stands. `length` is the body's announced length
    /// (`Content-Length`), if any: within a quota, a body that cannot fit is refused before
    /// a byte of it is read.
    pub async fn upload_chunk<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        content_range: Option<(u64, u64)>,
        length: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        // Tenants without a quota pay this one lookup; the others stream only reserved bytes.
        let limited = self.meta.quota_of(repo.as_str()).await?.is_some();
        self.append_chunk(repo, id, content_range, length, body, limited, None)
            .await
    }

    /// [`Registry::upload_chunk`] for a PATCH (`completes: None`), or for the last chunk of
    /// an upload that completes as `completes`: such a chunk needs no room up to the size of
    /// a blob of that digest the tenant already counts. `limited`: the tenant has a quota.
    #[allow(clippy::too_many_arguments)]
    async fn append_chunk<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        content_range: Option<(u64, u64)>,
        length: Option<u64>,
        body: S,
        limited: bool,
        completes: Option<&Digest>,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let u = self.session(repo, id).await?;
        if let Some((start, _)) = content_range
            && start != u.size
        {
            return Err(RegistryError::ChunkOutOfOrder { offset: u.size });
        }
        let mut state = HashState::from_bytes(&u.hash_state)?;
        let (new_size, reserved) = if !limited {
            let n = self
                .append_upload(id, u.size, &mut state, body, self.config.max_blob_bytes)
                .await?;
            (n, 0)
        } else {
            let announced = content_range.map(|(start, end)| end - start + 1).or(length);
            let (free, what) = match completes {
                Some(d) => {
                    let counted = self.meta.counted_blob(repo.as_str(), d.as_str()).await?;
                    let free = counted.map_or(0, |n| n.saturating_sub(u.size));
                    (free, quota::Refused::Blob)
                }
                None => (0, quota::Refused::Chunk),
            };
            self.append_within_quota(id, u.size, &mut state, body, announced, free, what)
                .await?
        };
        if let Some((start, end)) = content_range
            && new_size - u.size != end - start + 1
        {
            self.release(id, reserved).await;
            return Err(RegistryError::UploadInvalid(format!(
                "Content-Range {start}-{end} announced {} bytes, the body had {}",
                end - start + 1,
                new_size - u.size
            )));
        }
        let advanced = self
            .meta
            .advance_upload(id, u.size, new_size, &state.to_bytes(), reserved)
            .await;
        if !matches!(advanced, Ok(true)) {
            self.release(id, reserved).await;
        }
        if !advanced? {
            // Another request moved the session meanwhile; our bytes are not acknowledged.
            let now = self.session(repo, id).await?;
            return Err(RegistryError::ChunkOutOfOrder { offset: now.size });
        }
        Ok(UploadStatus {
            id: id.to_owned(),
            offset: new_size,
        })
    }

    /// Closes an upload with its last (possibly empty) chunk and links the verified blob.
    /// `content_range` and `length` as for [`Registry::upload_chunk`].
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        content_range: Option<(u64, u64)>,
        length: Option<u64>,
        body: S,
        actor: &Actor,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let limited = self.meta.quota_of(repo.as_str()).await?.is_some();
        self.complete(
            repo,
            id,
            digest,
            content_range,
            length,
            body,
            actor,
            limited,
        )
        .await
    }

    /// [`Registry::complete_upload`]; `limited`: the tenant has a quota.
    #[allow(clippy::too_many_arguments)]
    async fn complete<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        content_range: Option<(u64, u64)>,
        length: Option<u64>,
        body: S,
        actor: &Actor,
        limited: bool,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let status = self
            .append_chunk(repo, id, content_range, length, body, limited, Some(digest))
            .await?;
        let u = self.session(repo, id).await?;
        let state = HashState::from_bytes(&u.hash_state)?;
        // Asked before the bytes move into `blobs/`: refused bytes never land there. (A
        // quota set since `limited` was read is still decided by the link.)
        if limited
            && let Some(q) = self
                .meta
                .admit_blob(repo.as_str(), digest.as_str(), status.offset, Some(id))
                .await?
        {
            self.discard_upload(id).await;
            return Err(self.over_quota_cancelled(quota::Refused::Blob, q));
        }
        match self.place_blob(id, status.offset, &state, digest).await {
            Ok(()) => {}
            Err(RegistryError::DigestMismatch { expected, actual }) => {
                // These bytes can never become the claimed blob: drop the session.
                self.cancel_upload(repo, id).await?;
                return Err(RegistryError::DigestMismatch { expected, actual });
            }
            Err(e) => return Err(e),
        }
        failpoint(failpoint::BEFORE_BLOB_LINK)?;
        let l = self
            .meta
            .link_blob(
                repo.as_str(),
                digest.as_str(),
                status.offset,
                Some(id),
                actor,
            )
            .await?;
        self.linked(l, true)?;
        failpoint(failpoint::AFTER_BLOB_LINK)?;
        Ok(status.offset)
    }

    /// Uploads a whole blob in one request (`POST ?digest=` or a monolithic `PUT`);
    /// `length` is the body's announced length, if any (see [`Registry::upload_chunk`]).
    pub async fn put_blob<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        length: Option<u64>,
        body: S,
        actor: &Actor,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        if self.meta.quota_of(repo.as_str()).await?.is_some() {
            // A session row of its own, so the body's bytes are reserved against the
            // quota as they stream, like a chunked upload's.
            let s = self.start_upload(repo).await?;
            let put = self
                .complete(repo, &s.id, digest, None, length, body, actor, true)
                .await;
            if put.is_err() {
                self.discard_upload(&s.id).await;
            }
            return put;
        }
        // No session row: a crash leaves only a data file, which the stale-upload sweep
        // removes.
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.create_upload(&id).await?;
        let result = async {
            let mut state = HashState::new();
            let size = self
                .append_upload(&id, 0, &mut state, body, self.config.max_blob_bytes)
                .await?;
            self.place_blob(&id, size, &state, digest).await?;
            Ok::<u64, RegistryError>(size)
        }
        .await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                self.blobs.delete_upload(&id).await?;
                return Err(e);
            }
        };
        failpoint(failpoint::BEFORE_BLOB_LINK)?;
        let l = self
            .meta
            .link_blob(repo.as_str(), digest.as_str(), size, None, actor)
            .await?;
        self.linked(l, true)?;
        failpoint(failpoint::AFTER_BLOB_LINK)?;
        Ok(size)
    }

    /// Verifies an upload and moves it into place as `digest`'s bytes. The blob's write
    /// time moves first, so a collection sweeping an old copy of the same blob either
    /// finishes before the bytes land (and this writes them anew) or leaves it alone.
    pub(crate) async fn place_blob(
        &self,
        id: &str,
        size: u64,
        state: &HashState,
        digest: &Digest,
    ) -> Result<()> {
        // A metadata failure stays one (the database being away is a 503, not a storage
        // fault).
        self.meta.touch_blob(digest.as_str()).await?;
        self.finish_upload(id, size, state, digest).await
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.session(repo, id).await?;
        self.meta.delete_upload(id).await?;
        self.blobs.delete_upload(id).await?;
        Ok(())
    }

    /// Removes upload sessions and data files older than the configured age.
    pub async fn purge_stale_uploads(&self) -> Result<usize> {
        let cutoff = berth_meta::now_micros()
            - i64::try_from(self.config.upload_ttl.as_micros()).unwrap_or(i64::MAX);
        let mut removed = 0;
        for id in self.meta.stale_uploads(cutoff).await? {
            self.meta.delete_upload(&id).await?;
            self.blobs.delete_upload(&id).await?;
            removed += 1;
        }
        removed += self
            .blobs
            .purge_stale_uploads(self.config.upload_ttl)
            .await?;
        Ok(removed)
    }

    // ---- manifests ----

    /// Validates and stores a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        actor: &Actor,
    ) -> Result<PutOutcome> {
        self.put_manifest_tagged(repo, reference, &[], content_type, body, actor)
            .await
    }

    /// [`Registry::put_manifest`] that also points `more_tags` at the manifest (the
    /// distribution spec's `?tag=` parameters on a push by digest): every tag is checked
    /// against the tag rules and all are written in the manifest's transaction, so either
    /// every tag moves or, if one is refused, none does and nothing is stored.
    pub async fn put_manifest_tagged(
        &self,
        repo: &RepoName,
        reference: &Reference,
        more_tags: &[Tag],
        content_type: Option<&str>,
        body: Bytes,
        actor: &Actor,
    ) -> Result<PutOutcome> {
        if body.len() as u64 > self.config.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge {
                limit: self.config.max_manifest_bytes,
            });
        }
        let digest = match reference {
            Reference::Digest(claimed) => {
                let actual = digest_of(claimed.algorithm(), &body);
                if &actual != claimed {
                    return Err(RegistryError::DigestMismatch {
                        expected: claimed.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => digest_of(Algorithm::Sha256, &body),
        };
        let parsed = parse_manifest(&body, content_type)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;

        let refs = refs::manifest_refs(&parsed, self.config.allow_sparse_index)?;
        let subject = parsed
            .subject
            .as_ref()
            .and_then(|s| s.known_digest())
            .map(|d| d.to_string());
        let annotations = if parsed.annotations.is_empty() {
            None
        } else {
            serde_json::to_string(&parsed.annotations).ok()
        };
        let mut tags: Vec<&str> = match reference {
            Reference::Tag(t) => vec![t.as_str()],
            Reference::Digest(_) => Vec::new(),
        };
        for t in more_tags {
            if !tags.contains(&t.as_str()) {
                tags.push(t.as_str());
            }
        }
        // A signature, attestation or SBOM (by content) under the referrers tag
        // convention (`sha256-<hex>.sig`, ...) is not a release: tag rules never block
        // it, and cosign moves its `.sig` tag as signers append.
        let kind = berth_verify::classify(&body).kind;
        let attached = kind.is_supply_chain();
        // A signature or attestation for an image (its `subject`, or the image its cosign
        // tag names): the push also tells the webhooks that subscribe to signatures.
        let signature_added = match kind {
            berth_verify::Kind::CosignSignature
            | berth_verify::Kind::NotarySignature
            | berth_verify::Kind::Attestation => subject
                .clone()
                .or_else(|| tags.iter().find_map(|t| policy::attached_subject(t)))
                .map(|subject| events::SignatureAdded { subject, kind }),
            _ => None,
        };
        let exempt = |t: &str| attached && policy::attached_subject(t).is_some();
        for t in &tags {
            if exempt(t) {
                continue;
            }
            if let Some(why) = self.tag_rules().refusal(repo.as_str(), t) {
                return Err(RegistryError::Denied(why));
            }
        }
        let rules = self.tag_rules();
        let immutable = |t: &str| {
            if exempt(t) {
                None
            } else {
                rules.immutable(repo.as_str(), t)
            }
        };
        let queued = std::sync::atomic::AtomicBool::new(false);
        let change_jobs = self.jobs_for(&queued);
        // One signature event per push, however many tags it sets.
        let signature_told = std::sync::atomic::AtomicBool::new(false);
        let jobs = |c: &berth_meta::Change<'_>| {
            let mut out = change_jobs(c);
            if let Some(added) = &signature_added
                && !signature_told.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let more = self.events.signature_jobs(c, added);
                if !more.is_empty() {
                    queued.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                out.extend(more);
            }
            out
        };
        let guard = TagGuard {
            immutable: &immutable,
            admin: false,
            jobs: &jobs,
        };
        failpoint(failpoint::BEFORE_MANIFEST_COMMIT)?;
        let outcome = self
            .meta
            .put_manifest_guarded(
                &NewManifest {
                    repo: repo.as_str(),
                    digest: digest.as_str(),
                    media_type: parsed.kind.media_type(),
                    artifact_type: parsed.artifact_type.as_deref(),
                    subject: subject.as_deref(),
                    annotations: annotations.as_deref(),
                    content: &body,
                    refs: &refs,
                    tags: &tags,
                    actor,
                },
                guard,
            )
            .await?;
        if queued.load(std::sync::atomic::Ordering::Relaxed) {
            self.wake_jobs();
        }
        failpoint(failpoint::AFTER_MANIFEST_COMMIT)?;
        match outcome {
            PutManifest::Stored => {
                if subject.is_some() || tags.iter().any(|t| t.starts_with("sha256-")) {
                    self.invalidate_verdicts(Some(repo.as_str()));
                }
                for tag in &tags {
                    self.cache
                        .tags
                        .replace(cache::key(repo.as_str(), tag), digest.clone());
                }
                Ok(PutOutcome {
                    digest,
                    subject,
                    tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                })
            }
            PutManifest::Missing(d) => Err(RegistryError::ManifestBlobUnknown(d)),
            PutManifest::Immutable { tag, current, rule } => Err(RegistryError::Denied(format!(
                "tag {tag} is immutable (rule: {rule}); it points at {current}"
            ))),
            PutManifest::OverQuota(q) => Err(self.over_quota(quota::Refused::Manifest, q)),
        }
    }

    /// Resolves a reference to the digest it names in `repo`.
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        Ok(self.resolve_or_stale(repo, reference).await?.0)
    }

    /// [`Registry::resolve`]; with the age of the answer when it came from the stale
    /// cache because the metadata store is unavailable.
    async fn resolve_or_stale(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, Option<Duration>)> {
        match reference {
            Reference::Digest(d) => Ok((d.clone(), None)),
            Reference::Tag(t) => {
                let k = cache::key(repo.as_str(), t.as_str());
                if let Some((d, due)) = self.cache.tags.get_refreshing(&k) {
                    if due {
                        self.refresh_cached_tag(repo, t, k);
                    }
                    return Ok((d, None));
                }
                if let Some((d, age)) = self.stale_without_asking(&self.cache.tags, &k) {
                    return Ok((d, Some(age)));
                }
                let generation = self.cache.tags.generation();
                stats::bump(&self.stats.tag_cache_misses, 1);
                let d = match self.meta.resolve_tag(repo.as_str(), t.as_str()).await {
                    Ok(d) => d.ok_or(RegistryError::ManifestUnknown)?,
                    Err(e) => {
                        let e = RegistryError::from(e);
                        return match self.stale(&self.cache.tags, &k, &e) {
                            Some((d, age)) => Ok((d, Some(age))),
                            None => Err(e),
                        };
                    }
                };
                self.health.answered();
                let d: Digest = d.parse().map_err(|_| {
                    RegistryError::Internal(format!("stored tag points at bad digest {d:?}"))
                })?;
                self.cache.tags.insert_read(generation, k, d.clone());
                Ok((d, None))
            }
        }
    }

    /// Reads a tag the cache holds again, in the background (one refresh per key at a
    /// time): see [`TtlCache::get_refreshing`]. A tag gone from the store is forgotten; an
    /// error leaves the entry to expire as it would have.
    fn refresh_cached_tag(&self, repo: &RepoName, tag: &Tag, k: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.cache.tags.claim_refresh(&k) {
            return;
        }
        stats::bump(&self.stats.tag_cache_refreshes, 1);
        let (meta, caches, health) = (
            self.meta.clone(),
            Arc::clone(&self.cache),
            Arc::clone(&self.health),
        );
        let (repo, tag) = (repo.to_string(), tag.to_string());
        rt.spawn(async move {
            let generation = caches.tags.generation();
            match meta.resolve_tag(&repo, &tag).await {
                Ok(Some(d)) => {
                    health.answered();
                    if let Ok(d) = d.parse::<Digest>() {
                        caches.tags.insert_read(generation, k.clone(), d);
                    }
                }
                Ok(None) => {
                    health.answered();
                    caches.tags.remove(&k);
                }
                Err(e) => {
                    tracing::debug!(error = %e, %repo, %tag, "refreshing a cached tag failed")
                }
            }
            caches.tags.end_refresh(&k);
        });
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Manifest> {
        Ok(self.get_manifest_or_stale(repo, reference).await?.0)
    }

    /// [`Registry::get_manifest`], or while the metadata store is unavailable, what this
    /// replica read of it lately (tag and manifest within `stale_on_error`), with the
    /// `Warning` to send along.
    pub async fn get_manifest_or_stale(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Manifest, Option<String>)> {
        let (digest, tag_stale) = self.resolve_or_stale(repo, reference).await?;
        let k = cache::key(repo.as_str(), digest.as_str());
        if tag_stale.is_none()
            && let Some(m) = self.cache.manifests.get(&k)
        {
            return Ok((m, None));
        }
        let stale_manifest = |e: RegistryError| match self.stale(&self.cache.manifests, &k, &e) {
            Some((m, age)) => {
                let age = tag_stale.map_or(age, |t| t.max(age));
                Ok((m, Some(stale_warning(age))))
            }
            None => Err(e),
        };
        // The tag came from the stale cache: the store was just found unavailable, and a
        // second wait for it would take the answer past the client's patience.
        if tag_stale.is_some() {
            return stale_manifest(RegistryError::Meta(berth_meta::MetaError::Unavailable(
                "metadata store unavailable".into(),
            )));
        }
        if let Some((m, age)) = self.stale_without_asking(&self.cache.manifests, &k) {
            return Ok((m, Some(stale_warning(age))));
        }
        let generation = self.cache.manifests.generation();
        let m = match self.meta.get_manifest(repo.as_str(), digest.as_str()).await {
            Ok(m) => m.ok_or(RegistryError::ManifestUnknown)?,
            Err(e) => return stale_manifest(RegistryError::from(e)),
        };
        self.health.answered();
        let m = Manifest {
            digest,
            media_type: m.media_type,
            content: Bytes::from(m.content),
        };
        self.cache.manifests.insert_read(generation, k, m.clone());
        Ok((m, None))
    }

    /// The stale cache's entry for `k` when `e` says the metadata store is unavailable
    /// (counted, and noted for readiness).
    fn stale<V: Clone>(
        &self,
        cache: &TtlCache<V>,
        k: &str,
        e: &RegistryError,
    ) -> Option<(V, Duration)> {
        if !self.meta_failed(e) {
            return None;
        }
        let found = cache.get_stale(k, self.config.stale_on_error)?;
        stats::bump(&self.stats.meta_stale_served, 1);
        Some(found)
    }

    /// The stale cache's entry for `k` without asking the store, when a request found it
    /// unavailable within the last second: during an outage each read would otherwise
    /// wait for the pool's acquire timeout first.
    fn stale_without_asking<V: Clone>(
        &self,
        cache: &TtlCache<V>,
        k: &str,
    ) -> Option<(V, Duration)> {
        if !self.health.failed_lately() {
            return None;
        }
        let found = cache.get_stale(k, self.config.stale_on_error)?;
        stats::bump(&self.stats.meta_stale_served, 1);
        Some(found)
    }

    /// Deletes a manifest (by digest, with its tags) or just a tag. An immutable tag goes
    /// only for an `admin`, and so does a manifest an immutable tag points at.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        actor: &Actor,
        admin: bool,
    ) -> Result<()> {
        let rules = self.tag_rules();
        let immutable = |t: &str| rules.immutable(repo.as_str(), t);
        let queued = std::sync::atomic::AtomicBool::new(false);
        let jobs = self.jobs_for(&queued);
        let guard = TagGuard {
            immutable: &immutable,
            admin,
            jobs: &jobs,
        };
        let outcome = match reference {
            Reference::Digest(d) => {
                let outcome = self
                    .meta
                    .delete_manifest_guarded(repo.as_str(), d.as_str(), actor, guard)
                    .await?;
                self.cache
                    .manifests
                    .remove(&cache::key(repo.as_str(), d.as_str()));
                // Its tags went with it; which ones is not worth a query.
                self.cache
                    .tags
                    .remove_prefix(&cache::repo_prefix(repo.as_str()));
                outcome
            }
            Reference::Tag(t) => {
                let outcome = self
                    .meta
                    .delete_tag_guarded(repo.as_str(), t.as_str(), actor, guard)
                    .await?;
                self.cache
                    .tags
                    .remove(&cache::key(repo.as_str(), t.as_str()));
                outcome
            }
        };
        if outcome == Removal::Removed {
            if let Reference::Digest(d) = reference {
                self.drop_generated_sboms(repo, d).await;
                self.drop_signature_tags(repo, d, actor).await;
            }
            self.invalidate_verdicts(Some(repo.as_str()));
            if queued.load(std::sync::atomic::Ordering::Relaxed) {
                self.wake_jobs();
            }
        }
        match outcome {
            Removal::Removed => Ok(()),
            Removal::NotFound => Err(RegistryError::ManifestUnknown),
            Removal::Referenced(by) => Err(RegistryError::InUse(format!(
                "manifest is listed by index {by}; delete the index first"
            ))),
            Removal::Immutable { tag, rule } => Err(RegistryError::Denied(format!(
                "tag {tag} is immutable (rule: {rule}); only an admin may delete it"
            ))),
        }
    }

    // ---- listings ----

    /// One page of tags; the second value says whether more follow.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        n: Option<u64>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool)> {
        let limit = n.unwrap_or(self.config.max_page).min(self.config.max_page);
        if limit == 0 {
            if !self.meta.repo_exists(repo.as_str()).await? {
                return Err(RegistryError::NameUnknown);
            }
            return Ok((Vec::new(), false));
        }
        let mut tags = self
            .meta
            .list_tags(repo.as_str(), last, limit + 1)
            .await?
            .ok_or(RegistryError::NameUnknown)?;
        let more = tags.len() as u64 > limit;
        tags.truncate(limit as usize);
        Ok((tags, more))
    }

    pub async fn catalog(&self, n: Option<u64>, last: Option<&str>) -> Result<(Vec<String>, bool)> {
        let limit = n.unwrap_or(self.config.max_page).min(self.config.max_page);
        if limit == 0 {
            return Ok((Vec::new(), false));
        }
        let mut repos = self.meta.catalog(last, limit + 1).await?;
        let more = repos.len() as u64 > limit;
        repos.truncate(limit as usize);
        Ok((repos, more))
    }

    /// A catalog page of only the repositories `visible` accepts, so a caller never learns
    /// the names of repositories it cannot read. Pages of the full catalog are read until
    /// `n` visible names are found or the catalog ends.
    pub async fn catalog_visible(
        &self,
        n: Option<u64>,
        last: Option<&str>,
        visible: impl Fn(&str) -> bool,
    ) -> Result<(Vec<String>, bool)> {
        self.catalog_search(None, n, last, visible).await
    }

    /// [`Registry::catalog_visible`] of the names containing `needle` (matched in the
    /// metadata store, lowercase), when given.
    pub async fn catalog_search(
        &self,
        needle: Option<&str>,
        n: Option<u64>,
        last: Option<&str>,
        visible: impl Fn(&str) -> bool,
    ) -> Result<(Vec<String>, bool)> {
        let limit = n.unwrap_or(self.config.max_page).min(self.config.max_page);
        if limit == 0 {
            return Ok((Vec::new(), false));
        }
        let batch = limit.max(100) + 1;
        let mut out = Vec::new();
        let mut cursor = last.map(str::to_owned);
        loop {
            let repos = match needle {
                Some(needle) => {
                    self.meta
                        .catalog_matching(needle, cursor.as_deref(), batch)
                        .await?
                }
                None => self.meta.catalog(cursor.as_deref(), batch).await?,
            };
            let exhausted = (repos.len() as u64) < batch;
            cursor = repos.last().cloned();
            for r in repos {
                if visible(&r) {
                    if out.len() as u64 == limit {
                        // One more visible name exists: there is a next page.
                        return Ok((out, true));
                    }
                    out.push(r);
                }
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    /// The referrers index for `subject`, as JSON bytes.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<u8>> {
        let rows = self
            .meta
            .referrers(repo.as_str(), subject.as_str(), artifact_type)
            .await?;
        let manifests = rows
            .iter()
            .map(|r| IndexDescriptor {
                media_type: &r.media_type,
                digest: &r.digest,
                size: r.size,
                artifact_type: r.artifact_type.as_deref(),
                annotations: r
                    .annotations
                    .as_deref()
                    .and_then(|a| serde_json::value::RawValue::from_string(a.to_owned()).ok()),
            })
            .collect();
        serde_json::to_vec(&ReferrersIndex {
            schema_version: 2,
            media_type: berth_oci::media::OCI_INDEX,
            manifests,
        })
        .map_err(|e| RegistryError::Internal(e.to_string()))
    }
}
