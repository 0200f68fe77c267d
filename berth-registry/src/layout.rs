//! Export to and import from OCI image layouts, for backup and restore.
//!
//! Export walks each image from its tag or digest through index children to configs and
//! layers, and writes every blob into the layout, which hashes it on the way: a blob whose
//! bytes do not match its digest is not written, and the export fails. Each `index.json`
//! entry names its image with `org.opencontainers.image.ref.name` (the tag, as skopeo and
//! umoci read it) and [`REPOSITORY`] (so `import` knows where it came from). Exporting into
//! an existing layout adds to it and skips blobs already there, which also makes an
//! interrupted export resumable.
//!
//! Import pushes through the same use cases as the HTTP API: children before parents,
//! blobs before the manifests that need them, every blob hashed by the registry as it
//! arrives, so a layout is checked like a push. Blobs already in the repository are
//! skipped.

use std::collections::{BTreeMap, HashSet};

use berth_meta::Actor;
use berth_oci::manifest::ParsedManifest;
use berth_oci::{Digest, ImageRef, Reference, RepoName};
use berth_storage::StorageError;
use berth_storage::layout::{IndexEntry, OciLayout, REF_NAME, Written};
use bytes::Bytes;

use crate::Registry;
use crate::transfer::{Context as _, Progress, TransferError, counted, parse};

/// The annotation recording which repository an exported image came from.
pub const REPOSITORY: &str = "dev.berth.repository";

/// Tags listed per page when an export names a whole repository.
const TAG_PAGE: u64 = 1000;

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Images (tags and digests) written to the index.
    pub images: usize,
    pub blobs_written: u64,
    /// Bytes of the blobs written (manifests not counted).
    pub bytes: u64,
    /// Blobs the layout held already.
    pub blobs_skipped: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub images: usize,
    pub blobs_pushed: u64,
    pub bytes: u64,
    /// Blobs the repository held already.
    pub blobs_skipped: u64,
}

/// The blobs a manifest needs in its repository: config and layers, except
/// non-distributable ones (with `urls`), which are not in a registry to copy.
pub(crate) fn needed_blobs(parsed: &ParsedManifest) -> impl Iterator<Item = Digest> + '_ {
    parsed
        .config
        .iter()
        .chain(&parsed.layers)
        .filter(|b| !b.has_urls)
        .filter_map(|b| b.known_digest())
}

struct Exporter<'a> {
    registry: &'a Registry,
    layout: &'a OciLayout,
    progress: &'a dyn Progress,
    report: ExportReport,
    done: HashSet<Digest>,
}

impl Exporter<'_> {
    /// Streams the blob `d` of `repo` into the layout unless it is there.
    async fn blob(&mut self, repo: &RepoName, d: &Digest) -> Result<(), TransferError> {
        if !self.done.insert(d.clone()) {
            return Ok(());
        }
        if self.layout.has_blob(d).await {
            self.report.blobs_skipped += 1;
            return Ok(());
        }
        let read = self
            .registry
            .read_blob(repo, d, None, true)
            .await
            .context(|| format!("reading blob {d} of {repo}"))?;
        let Some(reader) = read.reader else {
            return Err(TransferError::Invalid(format!(
                "blob {d} of {repo} has no body"
            )));
        };
        self.progress.blob_started(d, Some(reader.len));
        let body = counted(reader.body, self.progress);
        match self.layout.write_blob(d, body).await {
            Ok(Written::Bytes(n)) => {
                self.report.blobs_written += 1;
                self.report.bytes += n;
            }
            Ok(Written::AlreadyThere) => self.report.blobs_skipped += 1,
            Err(e) => return Err(corrupt_or(e, || format!("blob {d} of {repo}"))),
        }
        self.progress.blob_finished(d);
        Ok(())
    }

    /// Exports the manifest `reference` of `repo` and everything it needs; its entry for
    /// `index.json` (without annotations).
    async fn manifest(
        &mut self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<IndexEntry, TransferError> {
        let m = self
            .registry
            .get_manifest(repo, reference)
            .await
            .context(|| format!("reading manifest {repo}:{reference}"))?;
        let parsed = parse(&m.content, Some(&m.media_type), || {
            format!("manifest {} of {repo}", m.digest)
        })?;
        for child in &parsed.manifests {
            if let Some(d) = child.known_digest() {
                Box::pin(self.manifest(repo, &Reference::Digest(d))).await?;
            }
        }
        for d in needed_blobs(&parsed) {
            self.blob(repo, &d).await?;
        }
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(m.content.clone())]);
        self.layout
            .write_blob(&m.digest, body)
            .await
            .map_err(|e| corrupt_or(e, || format!("manifest {} of {repo}", m.digest)))?;
        Ok(IndexEntry {
            media_type: m.media_type,
            digest: m.digest.to_string(),
            size: m.content.len() as u64,
            annotations: BTreeMap::new(),
            other: serde_json::Map::new(),
        })
    }
}

/// A layout write that failed: bytes read from the store that do not hash to their
/// digest mean the store is damaged, which deserves its own words.
fn corrupt_or(e: StorageError, what: impl FnOnce() -> String) -> TransferError {
    let what = what();
    match e {
        StorageError::DigestMismatch { .. } => TransferError::Layout {
            what: format!(
                "{what} does not hash to its digest: the store is corrupt (run berth fsck)"
            ),
            source: e,
        },
        e => TransferError::Layout {
            what: format!("writing {what} to the layout"),
            source: e,
        },
    }
}

/// The key an index entry is found under: its repository and its tag (or digest).
fn entry_key(e: &IndexEntry) -> (String, String) {
    (
        e.annotations.get(REPOSITORY).cloned().unwrap_or_default(),
        e.ref_name().unwrap_or(&e.digest).to_owned(),
    )
}

struct Importer<'a> {
    registry: &'a Registry,
    layout: &'a OciLayout,
    actor: &'a Actor,
    progress: &'a dyn Progress,
    report: ImportReport,
    done: HashSet<(RepoName, Digest)>,
}

impl Importer<'_> {
    fn missing(&self, what: &str, d: &Digest) -> TransferError {
        TransferError::Invalid(format!(
            "the layout {} has no {what} {d}",
            self.layout.root().display()
        ))
    }

    async fn blob(&mut self, repo: &RepoName, d: &Digest) -> Result<(), TransferError> {
        if !self.done.insert((repo.clone(), d.clone())) {
            return Ok(());
        }
        if self.registry.stat_blob(repo, d).await.is_ok() {
            self.report.blobs_skipped += 1;
            return Ok(());
        }
        let reader = self
            .layout
            .open_blob(d)
            .await
            .context(|| format!("reading blob {d} from the layout"))?
            .ok_or_else(|| self.missing("blob", d))?;
        self.progress.blob_started(d, Some(reader.len));
        let body = counted(reader.body, self.progress);
        // The registry hashes as it stores: a layout blob that does not match its name is
        // refused here and nothing is linked. Its length goes first, so a quota without
        // room refuses it before it is read.
        let n = self
            .registry
            .put_blob(repo, d, Some(reader.len), body, self.actor)
            .await
            .context(|| format!("importing blob {d} into {repo}"))?;
        self.report.blobs_pushed += 1;
        self.report.bytes += n;
        self.progress.blob_finished(d);
        Ok(())
    }

    async fn manifest(
        &mut self,
        repo: &RepoName,
        d: &Digest,
        tag: Option<&str>,
    ) -> Result<(), TransferError> {
        let bytes = self
            .layout
            .read_blob(d)
            .await
            .context(|| format!("reading manifest {d} from the layout"))?
            .ok_or_else(|| self.missing("manifest", d))?;
        let parsed = parse(&bytes, None, || format!("manifest {d}"))?;
        if self.done.insert((repo.clone(), d.clone())) {
            for child in &parsed.manifests {
                if let Some(c) = child.known_digest() {
                    Box::pin(self.manifest(repo, &c, None)).await?;
                }
            }
            for b in needed_blobs(&parsed) {
                self.blob(repo, &b).await?;
            }
        }
        let reference = match tag {
            Some(t) => Reference::Tag(
                t.parse()
                    .map_err(|e| TransferError::Invalid(format!("tag {t:?} of {d}: {e}")))?,
            ),
            None => Reference::Digest(d.clone()),
        };
        // By digest the registry checks the bytes against `d`; by tag it computes the
        // digest, which must then be `d` too.
        let out = self
            .registry
            .put_manifest(
                repo,
                &reference,
                Some(parsed.kind.media_type()),
                Bytes::from(bytes),
                self.actor,
            )
            .await
            .context(|| format!("importing manifest {d} into {repo}"))?;
        if &out.digest != d {
            return Err(TransferError::Invalid(format!(
                "the layout's manifest {d} hashes to {}",
                out.digest
            )));
        }
        Ok(())
    }
}

impl Registry {
    /// The images `images` name: each with its reference, or every tag of a repository
    /// named without one.
    async fn expand(
        &self,
        images: &[ImageRef],
    ) -> Result<Vec<(RepoName, Reference)>, TransferError> {
        let mut out = Vec::new();
        for image in images {
            if let Some(r) = &image.reference {
                out.push((image.repo.clone(), r.clone()));
                continue;
            }
            let mut last: Option<String> = None;
            loop {
                let (tags, more) = self
                    .list_tags(&image.repo, Some(TAG_PAGE), last.as_deref())
                    .await
                    .context(|| format!("listing the tags of {}", image.repo))?;
                last = tags.last().cloned();
                for t in tags {
                    let tag = t
                        .parse()
                        .map_err(|e| TransferError::Invalid(format!("stored tag {t:?}: {e}")))?;
                    out.push((image.repo.clone(), Reference::Tag(tag)));
                }
                if !more {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Writes `images` (a repository without a reference: all its tags) into `layout`,
    /// verifying every blob, and names them in its `index.json`, keeping the entries it
    /// had for other images.
    pub async fn export_layout(
        &self,
        layout: &OciLayout,
        images: &[ImageRef],
        progress: &dyn Progress,
    ) -> Result<ExportReport, TransferError> {
        let images = self.expand(images).await?;
        let mut index = layout
            .read_index()
            .await
            .context(|| "reading the layout's index.json".to_owned())?;
        let mut entries: BTreeMap<(String, String), IndexEntry> = index
            .manifests
            .drain(..)
            .map(|e| (entry_key(&e), e))
            .collect();
        let mut ex = Exporter {
            registry: self,
            layout,
            progress,
            report: ExportReport::default(),
            done: HashSet::new(),
        };
        for (repo, reference) in &images {
            let mut entry = ex.manifest(repo, reference).await?;
            entry
                .annotations
                .insert(REPOSITORY.to_owned(), repo.to_string());
            if let Reference::Tag(t) = reference {
                entry.annotations.insert(REF_NAME.to_owned(), t.to_string());
            }
            let digest = entry
                .digest
                .parse()
                .map_err(|e| TransferError::Invalid(format!("stored manifest digest: {e}")))?;
            entries.insert((repo.to_string(), reference.to_string()), entry);
            // Its signatures, attestations, SBOMs and referrers go with it, so an
            // imported copy is judged like the original.
            let attached = self
                .attached_refs(repo, &digest)
                .await
                .context(|| format!("listing what is attached to {repo}@{digest}"))?;
            for a in attached {
                let mut e = ex.manifest(repo, &a).await?;
                e.annotations
                    .insert(REPOSITORY.to_owned(), repo.to_string());
                if let Reference::Tag(t) = &a {
                    e.annotations.insert(REF_NAME.to_owned(), t.to_string());
                }
                entries.insert((repo.to_string(), a.to_string()), e);
            }
            progress.image_done(repo, reference, &digest);
        }
        index.manifests = entries.into_values().collect();
        layout
            .write_index(&index)
            .await
            .context(|| "writing the layout's index.json".to_owned())?;
        let mut report = ex.report;
        report.images = images.len();
        Ok(report)
    }

    /// Pushes every image `layout`'s `index.json` names, as `actor`, into the repository
    /// each entry records, or into `into`.
    pub async fn import_layout(
        &self,
        layout: &OciLayout,
        into: Option<&RepoName>,
        actor: &Actor,
        progress: &dyn Progress,
    ) -> Result<ImportReport, TransferError> {
        let index = layout
            .read_index()
            .await
            .context(|| "reading the layout's index.json".to_owned())?;
        let mut plan = Vec::new();
        for e in &index.manifests {
            let digest: Digest = e.digest.parse().map_err(|err| {
                TransferError::Invalid(format!("index.json digest {:?}: {err}", e.digest))
            })?;
            let repo = match (into, e.annotations.get(REPOSITORY)) {
                (Some(r), _) => r.clone(),
                (None, Some(r)) => r
                    .parse()
                    .map_err(|err| TransferError::Invalid(format!("{r:?}: {err}")))?,
                (None, None) => {
                    return Err(TransferError::Invalid(format!(
                        "index.json entry {digest} names no repository: pass --repository"
                    )));
                }
            };
            plan.push((repo, digest, e.ref_name().map(str::to_owned)));
        }
        let mut im = Importer {
            registry: self,
            layout,
            actor,
            progress,
            report: ImportReport::default(),
            done: HashSet::new(),
        };
        for (repo, digest, tag) in &plan {
            im.manifest(repo, digest, tag.as_deref()).await?;
            let reference = match tag.as_deref().map(str::parse) {
                Some(Ok(t)) => Reference::Tag(t),
                _ => Reference::Digest(digest.clone()),
            };
            progress.image_done(repo, &reference, digest);
        }
        let mut report = im.report;
        report.images = plan.len();
        Ok(report)
    }
}
