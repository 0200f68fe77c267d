//! What is inside every image: the `catalog` job kind.
//!
//! Every manifest pushed (or stored by the pull-through cache) queues a `catalog` job in
//! the push's own transaction, through the guard's jobs hook, like webhooks and
//! replication. The runner reads the manifest (each platform of an index in turn), and
//! for each layer either reuses the stored per-layer result (a base layer shared by many
//! images is read once) or streams the blob from the store through
//! [`berth_catalog::catalog_layer`] on a thread of its own: the stream is handed over in
//! chunks through a channel of four, so a layer is never whole in memory. The layers'
//! results are merged in order (whiteouts, opaque directories) into the image's catalog,
//! stored with one row per package, and rendered as CycloneDX and SPDX documents pushed
//! as referrers of the image (so `oras discover` finds them).
//!
//! Signatures, attestations, SBOMs and other artifacts are not images: their jobs end at
//! once. An image whose layers are not stored yet (a cached image before its layers were
//! pulled) is retried with the job queue's backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_catalog::sbom;
pub use berth_catalog::sbom::Format;
use berth_catalog::{
    CATALOGER_VERSION, Ecosystem, ImageCatalog, ImagePackage, LayerCatalog, LayerRef, Limits,
    OsRelease, Package,
};
use berth_meta::{CatalogPackage, Change, ChangeKind, ImageCatalogRow, Job, NewJob};
use berth_oci::manifest::parse_manifest;
use berth_oci::{Digest, Reference, RepoName};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::events::DeliveryFailure;
use crate::{Actor, Registry, RegistryError};

/// The job kind, and its one queue: one replica at a time catalogs, each image a lane.
pub const CATALOG_JOB: &str = "catalog";
pub const CATALOG_QUEUE: &str = "catalog";

/// The config of Berth's SBOM artifact manifests. Not the empty `{}` descriptor other
/// artifacts use: a blob Berth's own documents need must never be one a client pushed
/// too, or a client deleting its blobs could find one still in use by a document Berth
/// pushed a moment before (its image being deleted meanwhile).
const SBOM_CONFIG: &[u8] = br#"{"generator":"berth"}"#;
const SBOM_CONFIG_MEDIA_TYPE: &str = "application/vnd.berth.sbom.config.v1+json";
/// Who pushes and deletes the SBOM documents (audit log). Not a user name (a user name
/// has no `:`). Its changes queue no jobs: the documents are derived from the image,
/// which already caused its events, and every Berth derives its own.
pub const CATALOG_ACTOR: &str = "system:catalog";
/// Marks the referrers Berth made (and which cataloger made them).
const SBOM_ANNOTATION: &str = "dev.berth.sbom.cataloger";

/// `[catalog]`: the bounds of a scan.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// Caps of one layer's scan (entries, bytes of a file read, packages).
    pub limits: Limits,
    /// Longest a layer is read; the rest of a slower layer is not cataloged.
    pub layer_timeout: Duration,
    /// Layers scanned at once by this process (each on a thread of its own).
    pub concurrency: usize,
    /// Push the SBOMs as referrers of each image.
    pub referrers: bool,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            limits: Limits::default(),
            layer_timeout: Duration::from_secs(600),
            concurrency: 1,
            referrers: true,
        }
    }
}

/// This process's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct CatalogStats {
    pub images: AtomicU64,
    pub images_partial: AtomicU64,
    pub images_failed: AtomicU64,
    pub layers_read: AtomicU64,
    pub layers_reused: AtomicU64,
    pub layers_partial: AtomicU64,
    /// Stored (compressed) bytes of the layers read.
    pub layer_bytes: AtomicU64,
    /// Uncompressed tar bytes of the layers read.
    pub tar_bytes: AtomicU64,
    pub packages: AtomicU64,
    pub sboms: AtomicU64,
    /// Layer scans running now.
    pub running: AtomicU64,
}

pub(crate) struct Cataloger {
    settings: CatalogSettings,
    pub(crate) stats: Arc<CatalogStats>,
    permits: tokio::sync::Semaphore,
}

impl Cataloger {
    /// One job per manifest stored; whether it is an image is decided when it runs (the
    /// hook has no manifest body at hand).
    pub(crate) fn jobs_for(&self, c: &Change<'_>) -> Vec<NewJob> {
        if c.kind != ChangeKind::Push {
            return Vec::new();
        }
        let payload = serde_json::to_string(&CatalogJob {
            repo: c.repo.to_owned(),
            digest: c.digest.to_owned(),
        })
        .unwrap_or_default();
        vec![NewJob {
            kind: CATALOG_JOB.to_owned(),
            queue: CATALOG_QUEUE.to_owned(),
            lane: c.digest.to_owned(),
            payload,
        }]
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogJob {
    repo: String,
    digest: String,
}

/// What is stored as an image catalog's `detail`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CatalogDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsRelease>,
    #[serde(default)]
    pub layers: Vec<String>,
    /// `(layer, reason)` of each layer not read to its end.
    #[serde(default)]
    pub partial: Vec<(String, String)>,
    /// `(layer, path, reason)` of files that could not be read.
    #[serde(default)]
    pub issues: Vec<(String, String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An image's catalog as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogView {
    pub digest: String,
    pub status: String,
    pub cataloged_at: i64,
    pub os: Option<OsRelease>,
    pub partial: Vec<(String, String)>,
    pub packages: Vec<ImagePackage>,
}

/// Nice value of scan threads. Scanning is decompression, all CPU; under the default
/// scheduler a thread at nice 10 gets about a tenth of a core another thread at 0
/// contends for, so pushes and pulls keep their speed while a backlog is worked off, and
/// an idle machine still gives the scan whole cores.
pub const SCAN_NICE: i32 = 10;

/// Linux keeps a nice value per thread: this lowers the calling scan thread's only, and
/// never raises it (a Berth started under `nice -n 15` scans at 15).
fn background_priority() {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), SCAN_NICE.max(current)) {
        tracing::debug!(error = %e, "could not lower a scan thread's priority");
    }
}

/// Whether a catalog found anything to list: an OS or a package.
fn has_inventory(row: &ImageCatalogRow) -> bool {
    !row.packages.is_empty()
        || serde_json::from_str::<CatalogDetail>(&row.detail).is_ok_and(|d| d.os.is_some())
}

fn transient(e: impl std::fmt::Display) -> DeliveryFailure {
    DeliveryFailure::transient(e.to_string())
}

/// A chunk channel read as `std::io::Read` by the scanning thread.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

fn is_filesystem_layer(media_type: &str) -> bool {
    media_type.contains(".tar")
        || media_type.contains("rootfs.diff")
        || media_type.ends_with(".layer.v1")
}

fn to_row(p: &ImagePackage) -> CatalogPackage {
    CatalogPackage {
        purl: p.purl.clone(),
        ecosystem: p.package.ecosystem.as_str().to_owned(),
        name: p.package.name.clone(),
        version: p.package.version.clone(),
        source_name: p.package.source_name.clone(),
        source_version: p.package.source_version.clone(),
        arch: p.package.arch.clone(),
        layer_digest: p.layer.clone(),
        path: p.package.path.clone(),
    }
}

fn from_row(r: &CatalogPackage) -> Option<ImagePackage> {
    Some(ImagePackage {
        package: Package {
            ecosystem: Ecosystem::parse(&r.ecosystem)?,
            name: r.name.clone(),
            version: r.version.clone(),
            arch: r.arch.clone(),
            source_name: r.source_name.clone(),
            source_version: r.source_version.clone(),
            path: r.path.clone(),
        },
        purl: r.purl.clone(),
        layer: r.layer_digest.clone(),
    })
}

/// A UUID-shaped identifier derived from the image and the format, so a document
/// rendered twice is the same document.
fn stable_uuid(digest: &str, format: Format) -> String {
    let h = sha2::Sha256::digest(format!("berth-sbom:{digest}:{}", format.name()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

impl Registry {
    /// Catalogs every image pushed or cached from now on: the jobs are queued from now on
    /// and run once the job workers are started ([`Registry::start_jobs`]).
    pub fn with_catalog(mut self, settings: CatalogSettings) -> Registry {
        let permits = tokio::sync::Semaphore::new(settings.concurrency.max(1));
        self.catalog = Some(Arc::new(Cataloger {
            settings,
            stats: Arc::default(),
            permits,
        }));
        self
    }

    /// The catalog counters, if cataloging is on.
    pub fn catalog_stats(&self) -> Option<Arc<CatalogStats>> {
        self.catalog.as_ref().map(|c| Arc::clone(&c.stats))
    }

    /// Runs one catalog job.
    pub(crate) async fn run_catalog(&self, job: &Job) -> Result<(), DeliveryFailure> {
        let Some(cat) = self.catalog.clone() else {
            return Err(DeliveryFailure::permanent(
                "cataloging is not configured".into(),
            ));
        };
        let j: CatalogJob = serde_json::from_str(&job.payload)
            .map_err(|e| DeliveryFailure::permanent(format!("unreadable job: {e}")))?;
        let (Ok(repo), Ok(digest)) = (j.repo.parse::<RepoName>(), j.digest.parse::<Digest>())
        else {
            return Err(DeliveryFailure::permanent(
                "job names a bad repository or digest".into(),
            ));
        };
        let m = match self
            .get_manifest(&repo, &Reference::Digest(digest.clone()))
            .await
        {
            Ok(m) => m,
            // Deleted since: nothing to catalog.
            Err(RegistryError::ManifestUnknown) => return Ok(()),
            Err(e) => return Err(transient(e)),
        };
        let Ok(parsed) = parse_manifest(&m.content, Some(&m.media_type)) else {
            return Ok(());
        };
        if parsed.manifests.is_empty() {
            return self
                .catalog_image(&cat, &repo, &digest, &m.media_type, &m.content)
                .await;
        }
        for child in &parsed.manifests {
            let Some(d) = child.known_digest() else {
                continue;
            };
            let cm = match self
                .get_manifest(&repo, &Reference::Digest(d.clone()))
                .await
            {
                Ok(cm) => cm,
                // A sparse index, or a child deleted since.
                Err(RegistryError::ManifestUnknown) => continue,
                Err(e) => return Err(transient(e)),
            };
            self.catalog_image(&cat, &repo, &d, &cm.media_type, &cm.content)
                .await?;
        }
        Ok(())
    }

    async fn catalog_image(
        &self,
        cat: &Cataloger,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        content: &Bytes,
    ) -> Result<(), DeliveryFailure> {
        if berth_verify::classify(content).kind != berth_verify::Kind::Image {
            return Ok(());
        }
        let Ok(parsed) = parse_manifest(content, Some(media_type)) else {
            return Ok(());
        };
        if parsed.layers.is_empty()
            || !parsed
                .layers
                .iter()
                .all(|l| is_filesystem_layer(&l.media_type))
        {
            // Not a container filesystem (a Helm chart, a Wasm module, a bare artifact).
            return Ok(());
        }
        let current = self
            .meta
            .image_catalog(digest.as_str())
            .await
            .map_err(transient)?;
        let mut inventory = current
            .as_ref()
            .map(|c| (c.status.clone(), has_inventory(c)));
        if current
            .as_ref()
            .is_none_or(|c| c.cataloger_version < i64::from(CATALOGER_VERSION))
        {
            let row = self
                .build_catalog(cat, repo, digest, &parsed.layers)
                .await?;
            self.meta.put_image_catalog(&row).await.map_err(transient)?;
            let s = &cat.stats;
            s.images.fetch_add(1, Ordering::Relaxed);
            s.packages
                .fetch_add(row.packages.len() as u64, Ordering::Relaxed);
            match row.status.as_str() {
                "partial" => s.images_partial.fetch_add(1, Ordering::Relaxed),
                "failed" => s.images_failed.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            tracing::info!(repository = %repo, %digest, status = %row.status, packages = row.packages.len(), "cataloged");
            inventory = Some((row.status.clone(), has_inventory(&row)));
        }
        // Only an image with something to list gets the documents as referrers: one none
        // of whose content reads as a filesystem, or in which no OS and no package was
        // found, would get an SBOM of nothing among its referrers, which every client
        // listing them (and the conformance suite, counting them) would see. Its catalog
        // is still there for `berth sbom` and the API.
        let worth = inventory
            .as_ref()
            .is_some_and(|(status, any)| status != "failed" && *any);
        if cat.settings.referrers && worth {
            self.attach_sboms(cat, repo, digest, media_type, content.len() as u64)
                .await
                .map_err(transient)?;
        }
        Ok(())
    }

    async fn build_catalog(
        &self,
        cat: &Cataloger,
        repo: &RepoName,
        digest: &Digest,
        layers: &[berth_oci::manifest::Descriptor],
    ) -> Result<ImageCatalogRow, DeliveryFailure> {
        let mut catalogs: Vec<(String, LayerCatalog)> = Vec::new();
        let mut detail = CatalogDetail::default();
        for l in layers {
            let Some(d) = l.known_digest() else {
                detail
                    .partial
                    .push((l.digest.clone(), "digest algorithm not supported".into()));
                continue;
            };
            detail.layers.push(d.to_string());
            if l.has_urls && !self.blob_stored(repo, &d).await {
                detail
                    .partial
                    .push((d.to_string(), "foreign layer, not stored here".into()));
                continue;
            }
            let lc = self.layer_catalog(cat, repo, &d).await?;
            catalogs.push((d.to_string(), lc));
        }
        let refs: Vec<LayerRef<'_>> = catalogs
            .iter()
            .map(|(d, c)| LayerRef {
                digest: d,
                catalog: c,
            })
            .collect();
        let image: ImageCatalog = berth_catalog::merge(&refs);
        detail.os = image.os.clone();
        detail.partial.extend(image.partial);
        detail.issues = image
            .issues
            .into_iter()
            .map(|(l, i)| (l, i.path, i.reason))
            .collect();
        // A layer with not one tar entry before it went bad is not a filesystem at all
        // (random test data, a mislabelled blob): nothing of the image is known.
        let unreadable: Vec<&str> = catalogs
            .iter()
            .filter(|(_, c)| c.entries == 0 && c.partial.is_some())
            .map(|(d, _)| d.as_str())
            .collect();
        let status = if !unreadable.is_empty() {
            detail.error = Some(format!("not a tar archive: {}", unreadable.join(", ")));
            "failed"
        } else if detail.partial.is_empty() {
            "complete"
        } else {
            "partial"
        };
        Ok(ImageCatalogRow {
            digest: digest.to_string(),
            status: status.into(),
            detail: serde_json::to_string(&detail).unwrap_or_default(),
            cataloger_version: i64::from(CATALOGER_VERSION),
            cataloged_at: berth_meta::now_micros(),
            packages: image.packages.iter().map(to_row).collect(),
        })
    }

    async fn blob_stored(&self, repo: &RepoName, d: &Digest) -> bool {
        self.read_blob(repo, d, None, false).await.is_ok()
    }

    /// A layer's catalog: stored, or read now and stored.
    async fn layer_catalog(
        &self,
        cat: &Cataloger,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<LayerCatalog, DeliveryFailure> {
        if let Some(row) = self
            .meta
            .layer_catalog(d.as_str())
            .await
            .map_err(transient)?
            && row.cataloger_version >= i64::from(CATALOGER_VERSION)
            && let Ok(lc) = serde_json::from_str::<LayerCatalog>(&row.result)
        {
            cat.stats.layers_reused.fetch_add(1, Ordering::Relaxed);
            return Ok(lc);
        }
        let read = match self.read_blob(repo, d, None, true).await {
            Ok(r) => r,
            Err(RegistryError::BlobUnknown) => {
                return Err(transient(format!("layer {d} is not stored (yet)")));
            }
            Err(e) => return Err(transient(e)),
        };
        let Some(reader) = read.reader else {
            return Err(transient(format!("layer {d} has no body")));
        };
        let _permit = cat.permits.acquire().await.map_err(transient)?;
        let stats = Arc::clone(&cat.stats);
        stats.running.fetch_add(1, Ordering::Relaxed);
        let limits = Limits {
            deadline: Some(Instant::now() + cat.settings.layer_timeout),
            ..cat.settings.limits.clone()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // A thread of its own, not the blocking pool: a scan runs for seconds or minutes,
        // and the pool serves blob reads.
        let spawned = std::thread::Builder::new()
            .name("berth-catalog".into())
            .spawn(move || {
                background_priority();
                let r = berth_catalog::catalog_layer(
                    ChannelReader {
                        rx,
                        current: Bytes::new(),
                    },
                    &limits,
                );
                let _ = done_tx.send(r);
            });
        if let Err(e) = spawned {
            stats.running.fetch_sub(1, Ordering::Relaxed);
            return Err(transient(format!("starting a scan thread: {e}")));
        }
        let mut body = reader.body;
        let mut sent: u64 = 0;
        let mut read_error = None;
        while let Some(chunk) = body.next().await {
            if let Err(e) = &chunk {
                read_error = Some(e.to_string());
            }
            let len = chunk.as_ref().map_or(0, Bytes::len) as u64;
            // The scan stopped reading (the tar ended, or a cap): the rest is not needed.
            if tx.send(chunk).await.is_err() {
                break;
            }
            sent += len;
        }
        drop(tx);
        let result = done_rx.await;
        stats.running.fetch_sub(1, Ordering::Relaxed);
        let lc = result.map_err(|_| transient("the scan thread ended without a result"))?;
        // The store failed to read (an S3 hiccup): not the layer's fault, so nothing is
        // stored and the job is tried again.
        if let Some(e) = read_error {
            return Err(transient(format!("reading layer {d}: {e}")));
        }
        stats.layers_read.fetch_add(1, Ordering::Relaxed);
        stats.layer_bytes.fetch_add(sent, Ordering::Relaxed);
        stats.tar_bytes.fetch_add(lc.tar_bytes, Ordering::Relaxed);
        if lc.partial.is_some() {
            stats.layers_partial.fetch_add(1, Ordering::Relaxed);
        }
        let json = serde_json::to_string(&lc).map_err(transient)?;
        self.meta
            .put_layer_catalog(
                d.as_str(),
                i64::from(lc.cataloger_version),
                lc.partial.as_deref(),
                &json,
            )
            .await
            .map_err(transient)?;
        Ok(lc)
    }

    /// The stored catalog of `repo@reference` (for an index, of `platform`'s child, or of
    /// its first image).
    pub async fn catalog_of(
        &self,
        repo: &RepoName,
        reference: &Reference,
        platform: Option<&str>,
    ) -> crate::Result<Option<CatalogView>> {
        let m = self.get_manifest(repo, reference).await?;
        let digest = self.image_of(repo, &m, platform).await?;
        let Some(row) = self.meta.image_catalog(digest.as_str()).await? else {
            return Ok(None);
        };
        let detail: CatalogDetail = serde_json::from_str(&row.detail).unwrap_or_default();
        Ok(Some(CatalogView {
            digest: row.digest,
            status: row.status,
            cataloged_at: row.cataloged_at,
            os: detail.os,
            partial: detail.partial,
            packages: row.packages.iter().filter_map(from_row).collect(),
        }))
    }

    /// The image a manifest names: itself, or the child of an index for `platform`
    /// (`os/arch`, `os/arch/variant`), by default the first child.
    pub(crate) async fn image_of(
        &self,
        repo: &RepoName,
        m: &crate::Manifest,
        platform: Option<&str>,
    ) -> crate::Result<Digest> {
        #[derive(Deserialize)]
        struct Platform {
            os: Option<String>,
            architecture: Option<String>,
            variant: Option<String>,
        }
        #[derive(Deserialize)]
        struct Child {
            digest: String,
            platform: Option<Platform>,
        }
        #[derive(Deserialize)]
        struct Index {
            manifests: Option<Vec<Child>>,
        }
        let idx: Index = serde_json::from_slice(&m.content)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let Some(children) = idx.manifests else {
            return Ok(m.digest.clone());
        };
        let name = |p: &Platform| {
            let mut s = format!(
                "{}/{}",
                p.os.as_deref().unwrap_or(""),
                p.architecture.as_deref().unwrap_or("")
            );
            if let Some(v) = &p.variant {
                s.push('/');
                s.push_str(v);
            }
            s
        };
        let chosen = children.iter().find(|c| match (platform, &c.platform) {
            (Some(want), Some(p)) => name(p) == want || name(p).starts_with(&format!("{want}/")),
            (Some(_), None) => false,
            // Attestation manifests (buildkit) are `unknown/unknown`: not an image to show.
            (None, p) => p
                .as_ref()
                .is_none_or(|p| p.os.as_deref() != Some("unknown")),
        });
        let Some(c) = chosen else {
            return Err(RegistryError::ManifestUnknown);
        };
        let d: Digest = c
            .digest
            .parse()
            .map_err(|_| RegistryError::ManifestInvalid("bad child digest".into()))?;
        let _ = repo;
        Ok(d)
    }

    /// An SBOM of `repo@reference` rendered from its stored catalog: (media type, bytes),
    /// the same bytes as the referrer stored beside the image.
    pub async fn sbom(
        &self,
        repo: &RepoName,
        reference: &Reference,
        platform: Option<&str>,
        format: Format,
    ) -> crate::Result<Option<(&'static str, Vec<u8>)>> {
        let Some(view) = self.catalog_of(repo, reference, platform).await? else {
            return Ok(None);
        };
        Ok(Some((format.media_type(), render(repo, &view, format))))
    }

    /// The SBOM referrers this registry generated for `subject` in `repo`.
    async fn generated_sboms(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> crate::Result<Vec<Digest>> {
        let referrers = self
            .meta
            .referrers(repo.as_str(), subject.as_str(), None)
            .await?;
        Ok(referrers
            .into_iter()
            .filter(|r| {
                r.annotations.as_deref().is_some_and(|a| {
                    serde_json::from_str::<serde_json::Value>(a)
                        .ok()
                        .is_some_and(|v| v.get(SBOM_ANNOTATION).is_some())
                })
            })
            .filter_map(|r| r.digest.parse().ok())
            .collect())
    }

    /// Deletes the SBOMs generated for a manifest just deleted. They describe that image
    /// only, and left behind they would keep blobs the client pushed (the shared empty
    /// config) in use after the client deleted everything of its own. A failure here
    /// leaves an orphan for garbage collection, never a failed delete.
    pub(crate) async fn drop_generated_sboms(&self, repo: &RepoName, subject: &Digest) {
        let doomed = match self.generated_sboms(repo, subject).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(repository = %repo, %subject, error = %e, "could not list the SBOMs of a deleted manifest");
                return;
            }
        };
        for d in doomed {
            let r = Box::pin(self.delete_manifest(
                repo,
                &Reference::Digest(d.clone()),
                &Actor::named(CATALOG_ACTOR),
                true,
            ))
            .await;
            match r {
                Ok(()) | Err(RegistryError::ManifestUnknown) => {}
                Err(e) => {
                    tracing::warn!(repository = %repo, sbom = %d, error = %e, "could not delete the SBOM of a deleted manifest");
                }
            }
        }
    }

    /// Pushes the CycloneDX and SPDX documents of an image as its referrers in `repo`,
    /// unless this cataloger's are there already.
    async fn attach_sboms(
        &self,
        cat: &Cataloger,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> crate::Result<()> {
        let existing = self
            .meta
            .referrers(repo.as_str(), digest.as_str(), None)
            .await?;
        let Some(view) = self
            .catalog_of(repo, &Reference::Digest(digest.clone()), None)
            .await?
        else {
            return Ok(());
        };
        let marker = format!("{CATALOGER_VERSION}");
        let actor = Actor::named(CATALOG_ACTOR);
        for format in [Format::CycloneDx, Format::Spdx] {
            let present = existing.iter().any(|r| {
                r.artifact_type.as_deref() == Some(format.media_type())
                    && r.annotations.as_deref().is_some_and(|a| {
                        serde_json::from_str::<serde_json::Value>(a)
                            .ok()
                            .and_then(|v| {
                                v.get(SBOM_ANNOTATION)
                                    .and_then(|m| m.as_str().map(str::to_owned))
                            })
                            == Some(marker.clone())
                    })
            });
            if present {
                continue;
            }
            let doc = render(repo, &view, format);
            let doc_digest = crate::digest_of(berth_oci::Algorithm::Sha256, &doc);
            let config_digest = crate::digest_of(berth_oci::Algorithm::Sha256, SBOM_CONFIG);
            for (d, bytes) in [
                (&config_digest, SBOM_CONFIG.to_vec()),
                (&doc_digest, doc.clone()),
            ] {
                let len = bytes.len() as u64;
                let body =
                    futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(bytes))]);
                self.put_blob(repo, d, Some(len), body, &actor).await?;
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": format.media_type(),
                "config": {"mediaType": SBOM_CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": SBOM_CONFIG.len()},
                "layers": [{"mediaType": format.media_type(), "digest": doc_digest.to_string(), "size": doc.len()}],
                "subject": {"mediaType": media_type, "digest": digest.to_string(), "size": size},
                "annotations": {
                    "org.opencontainers.image.created": sbom::rfc3339(view.cataloged_at),
                    SBOM_ANNOTATION: marker,
                },
            });
            let body = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
            let d = crate::digest_of(berth_oci::Algorithm::Sha256, &body);
            self.put_manifest(
                repo,
                &Reference::Digest(d),
                Some("application/vnd.oci.image.manifest.v1+json"),
                body,
                &actor,
            )
            .await?;
            cat.stats.sboms.fetch_add(1, Ordering::Relaxed);
        }
        // The image may have been deleted while its documents were pushed. Either that
        // delete saw them and took them along, or this read sees the image gone.
        // Read from the database, not this replica's cache: the delete may have been
        // another replica's.
        if self
            .meta
            .get_manifest(repo.as_str(), digest.as_str())
            .await?
            .is_none()
        {
            self.drop_generated_sboms(repo, digest).await;
        }
        Ok(())
    }
}

fn render(repo: &RepoName, view: &CatalogView, format: Format) -> Vec<u8> {
    let uuid = stable_uuid(&view.digest, format);
    let subject = sbom::Subject {
        repository: repo.as_str(),
        digest: &view.digest,
        created_micros: view.cataloged_at,
        uuid: &uuid,
        tool: "berth",
        tool_version: env!("CARGO_PKG_VERSION"),
        status: &view.status,
    };
    match format {
        Format::CycloneDx => sbom::cyclonedx(&subject, view.os.as_ref(), &view.packages),
        Format::Spdx => sbom::spdx(&subject, view.os.as_ref(), &view.packages),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("nice")
    }

    #[test]
    fn scan_threads_run_at_a_lower_priority_and_only_they() {
        let before = nice_of_this_thread();
        let scan = std::thread::spawn(|| {
            background_priority();
            nice_of_this_thread()
        })
        .join()
        .expect("thread");
        assert_eq!(scan, SCAN_NICE.max(before));
        assert_eq!(
            nice_of_this_thread(),
            before,
            "the caller keeps its priority"
        );
    }
}

/// The one field of a stored layer result the image page needs.
#[derive(Deserialize)]
struct TarBytes {
    tar_bytes: u64,
}

impl Registry {
    /// Uncompressed sizes (the bytes of the layer's tar stream, as the cataloger read it
    /// to its end) of those of `digests` that were cataloged completely; the others are
    /// not known and absent.
    pub async fn uncompressed_sizes(
        &self,
        digests: &[&str],
    ) -> crate::Result<std::collections::HashMap<String, u64>> {
        Ok(self
            .meta
            .complete_layer_catalogs(digests)
            .await?
            .into_iter()
            .filter_map(|(d, json)| {
                serde_json::from_str::<TarBytes>(&json)
                    .ok()
                    .map(|t| (d, t.tar_bytes))
            })
            .collect())
    }
}
