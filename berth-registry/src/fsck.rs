//! `fsck`: checks that what the metadata promises is what storage holds.
//!
//! * every blob row: its bytes are present, re-hash to its digest and have its size;
//! * every manifest: its stored bytes hash to its digest;
//! * every reference a manifest requires (by the same rule that admitted it) is linked in
//!   its repository, and the blob behind it is neither missing nor corrupt;
//! * every file under `blobs/`: known to the metadata (an unknown one is an orphan, left by
//!   a crash between placing the bytes and committing them: harmless, reported only).
//!
//! It only reads, one page at a time, so it runs beside a serving registry. What a
//! concurrent push changes while it runs can at worst show up as an orphan (bytes placed,
//! metadata not yet committed), never as damage: bytes are in place before any row names
//! them, and a manifest commits together with the check of its references.

use std::collections::{HashMap, HashSet};

use berth_meta::{ManifestCursor, ManifestRef, RefKind};
use berth_oci::Digest;
use berth_oci::manifest::parse_manifest;
use berth_storage::{BlobCheck, ScanEntry, digest_of};
use serde::Serialize;

use crate::{Registry, Result, refs};

/// Rows per metadata page: bounds memory (a page of manifests holds their bytes) and how
/// long one read holds a snapshot.
const BLOB_PAGE: u64 = 500;
const MANIFEST_PAGE: u64 = 100;

/// Told how far the check is. Units are bytes in the blob phase and items elsewhere.
pub trait Progress: Send + Sync {
    /// A phase starts; `total` is its length when known in advance.
    fn phase(&self, name: &'static str, total: Option<u64>);
    fn advance(&self, n: u64);
}

/// For callers that want no progress reports.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &'static str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// A blob the metadata knows whose bytes are gone.
#[derive(Debug, Clone, Serialize)]
pub struct MissingBlob {
    pub digest: String,
    pub size: u64,
    pub repositories: Vec<String>,
}

/// A blob whose stored bytes are not what the metadata says.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptBlob {
    pub digest: String,
    pub expected_size: u64,
    pub actual_size: Option<u64>,
    pub actual_digest: Option<String>,
    /// Set when the bytes could not be read at all.
    pub error: Option<String>,
    pub repositories: Vec<String>,
}

/// A manifest whose stored bytes do not hash to its digest.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptManifest {
    pub repository: String,
    pub digest: String,
    pub actual_digest: String,
}

/// A manifest that requires something its repository cannot serve.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenManifest {
    pub repository: String,
    pub manifest: String,
    pub reference: String,
    /// `blob` or `manifest`.
    pub kind: &'static str,
    pub problem: &'static str,
}

/// Bytes under `blobs/` that no metadata row names.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanBlob {
    pub digest: String,
    pub size: u64,
}

/// What `fsck` found. Orphans and strays are reported but are not damage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub manifests_checked: u64,
    pub references_checked: u64,
    pub files_scanned: u64,
    pub missing_blobs: Vec<MissingBlob>,
    pub corrupt_blobs: Vec<CorruptBlob>,
    pub corrupt_manifests: Vec<CorruptManifest>,
    pub broken_manifests: Vec<BrokenManifest>,
    pub orphan_blobs: Vec<OrphanBlob>,
    pub stray_files: Vec<String>,
}

impl FsckReport {
    /// Nothing is missing or corrupt.
    pub fn is_clean(&self) -> bool {
        self.missing_blobs.is_empty()
            && self.corrupt_blobs.is_empty()
            && self.corrupt_manifests.is_empty()
            && self.broken_manifests.is_empty()
    }
}

fn kind_name(kind: RefKind) -> &'static str {
    match kind {
        RefKind::Blob => "blob",
        RefKind::Manifest => "manifest",
    }
}

impl Registry {
    /// Checks storage against metadata; see the module documentation. Errors are for the
    /// check itself failing (metadata unreachable, `blobs/` unreadable); damage is in the
    /// report.
    pub async fn fsck(&self, progress: &dyn Progress) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let bad_blobs = self.fsck_blobs(progress, &mut report).await?;
        self.fsck_manifests(progress, &mut report).await?;
        self.fsck_references(progress, &bad_blobs, &mut report)
            .await?;
        self.fsck_storage(progress, &mut report).await?;
        Ok(report)
    }

    /// Re-hashes every blob the metadata knows; returns the digests found missing or
    /// corrupt, with what is wrong with them.
    async fn fsck_blobs(
        &self,
        progress: &dyn Progress,
        report: &mut FsckReport,
    ) -> Result<HashMap<String, &'static str>> {
        let (_, total_bytes) = self.meta.blob_totals().await?;
        progress.phase("blobs", Some(total_bytes));
        let mut bad = HashMap::new();
        let mut after = String::new();
        loop {
            let page = self.meta.blobs_after(&after, BLOB_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.digest.clone();
            for row in page {
                report.blobs_checked += 1;
                let corrupt = |actual_size, actual_digest, error| CorruptBlob {
                    digest: row.digest.clone(),
                    expected_size: row.size,
                    actual_size,
                    actual_digest,
                    error,
                    repositories: Vec::new(),
                };
                let digest: Digest = match row.digest.parse() {
                    Ok(d) => d,
                    Err(e) => {
                        let mut c = corrupt(None, None, Some(format!("digest in metadata: {e}")));
                        c.repositories = self.meta.blob_repositories(&row.digest).await?;
                        report.corrupt_blobs.push(c);
                        bad.insert(row.digest, "blob digest in metadata is malformed");
                        continue;
                    }
                };
                let mut read = 0u64;
                let mut count = |n| {
                    read += n;
                    progress.advance(n);
                };
                // Sealed or plaintext is the metadata's word, never the bytes'.
                let state = self.meta.blob_key_state(&row.digest).await?;
                // Mid-conversion the object is either form; its size says which.
                let state = match state {
                    Some((_, s))
                        if s.converting
                            && self.blobs.stat(&digest).await.ok().flatten() == Some(row.size) =>
                    {
                        None
                    }
                    other => other,
                };
                let check = match state {
                    None => self.blobs.verify_blob(&digest, &mut count).await,
                    Some((w, s)) => match &self.encryption {
                        None => Err(berth_storage::StorageError::Config(
                            "the blob is encrypted and no keyring is configured".into(),
                        )),
                        Some(k) => {
                            match k.open_data_key(&w.key_id, row.digest.as_bytes(), &w.wrapped) {
                                Err(e) => Err(berth_storage::StorageError::Sealed(e)),
                                Ok(key) => {
                                    let key = crate::encryption::key_in_format(key, &row.digest, s);
                                    self.blobs
                                        .verify_sealed(&digest, row.size, &key, &mut count)
                                        .await
                                }
                            }
                        }
                    },
                };
                report.bytes_checked += read;
                let problem = match check {
                    Ok(BlobCheck::Present { size, actual })
                        if size == row.size && actual == digest =>
                    {
                        continue;
                    }
                    Ok(BlobCheck::Present { size, actual }) => {
                        Err(corrupt(Some(size), Some(actual.to_string()), None))
                    }
                    Ok(BlobCheck::Missing) => Ok(MissingBlob {
                        digest: row.digest.clone(),
                        size: row.size,
                        repositories: Vec::new(),
                    }),
                    // One unreadable blob is damage to report, not a reason to stop.
                    Err(e) => Err(corrupt(None, None, Some(e.to_string()))),
                };
                let repositories = self.meta.blob_repositories(&row.digest).await?;
                match problem {
                    Ok(mut missing) => {
                        missing.repositories = repositories;
                        report.missing_blobs.push(missing);
                        bad.insert(row.digest, "blob bytes are missing from storage");
                    }
                    Err(mut c) => {
                        c.repositories = repositories;
                        report.corrupt_blobs.push(c);
                        bad.insert(row.digest, "blob bytes are corrupt");
                    }
                }
            }
        }
        Ok(bad)
    }

    async fn fsck_manifests(&self, progress: &dyn Progress, report: &mut FsckReport) -> Result<()> {
        progress.phase("manifests", Some(self.meta.manifest_count().await?));
        let mut cursor = ManifestCursor::default();
        loop {
            let page = self.meta.manifests_after(&cursor, MANIFEST_PAGE).await?;
            let Some(last) = page.last() else { break };
            cursor = last.cursor();
            for m in page {
                report.manifests_checked += 1;
                progress.advance(1);
                let algorithm = m
                    .digest
                    .parse::<Digest>()
                    .map(|d| d.algorithm())
                    .unwrap_or(berth_oci::Algorithm::Sha256);
                let actual = digest_of(algorithm, &m.content);
                if actual.as_str() != m.digest {
                    report.corrupt_manifests.push(CorruptManifest {
                        repository: m.repo,
                        digest: m.digest,
                        actual_digest: actual.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Finds required references that cannot be served: targets absent from the
    /// repository, and blobs whose bytes `fsck_blobs` found bad.
    async fn fsck_references(
        &self,
        progress: &dyn Progress,
        bad_blobs: &HashMap<String, &'static str>,
        report: &mut FsckReport,
    ) -> Result<()> {
        let dangling = self.meta.dangling_refs().await?;
        progress.phase(
            "references",
            Some((dangling.len() + bad_blobs.len()) as u64),
        );
        let mut rules = RefRules::new(self);
        for d in dangling {
            progress.advance(1);
            report.references_checked += 1;
            if rules.requires(&d.repo, &d.manifest, &d.child).await? {
                report.broken_manifests.push(BrokenManifest {
                    repository: d.repo,
                    manifest: d.manifest,
                    reference: d.child,
                    kind: kind_name(d.kind),
                    problem: "required reference is not in the repository",
                });
            }
        }
        let mut bad: Vec<_> = bad_blobs.iter().collect();
        bad.sort();
        for (digest, problem) in bad {
            progress.advance(1);
            for (repo, manifest) in self.meta.blob_users(digest).await? {
                report.references_checked += 1;
                if rules.requires(&repo, &manifest, digest).await? {
                    report.broken_manifests.push(BrokenManifest {
                        repository: repo,
                        manifest,
                        reference: digest.clone(),
                        kind: "blob",
                        problem,
                    });
                }
            }
        }
        Ok(())
    }

    /// Lists `blobs/` for bytes no metadata row names.
    async fn fsck_storage(&self, progress: &dyn Progress, report: &mut FsckReport) -> Result<()> {
        progress.phase("storage", None);
        let mut scan = self.blobs.scan_blobs();
        while let Some(batch) = scan.next_batch().await? {
            for entry in batch {
                progress.advance(1);
                report.files_scanned += 1;
                match entry {
                    ScanEntry::Blob { digest, size } => {
                        if self.meta.blob(digest.as_str()).await?.is_none() {
                            report.orphan_blobs.push(OrphanBlob {
                                digest: digest.to_string(),
                                size,
                            });
                        }
                    }
                    ScanEntry::Stray { path } => report.stray_files.push(path),
                }
            }
        }
        Ok(())
    }
}

/// Which references stored manifests require, parsed on demand and remembered: only
/// manifests with a suspect reference are ever parsed.
struct RefRules<'a> {
    registry: &'a Registry,
    parsed: HashMap<(String, String), Option<HashSet<String>>>,
}

impl<'a> RefRules<'a> {
    fn new(registry: &'a Registry) -> Self {
        RefRules {
            registry,
            parsed: HashMap::new(),
        }
    }

    /// Whether manifest `manifest` in `repo` requires `child`. A manifest deleted
    /// meanwhile requires nothing; one that no longer parses is assumed to require all.
    async fn requires(&mut self, repo: &str, manifest: &str, child: &str) -> Result<bool> {
        let key = (repo.to_owned(), manifest.to_owned());
        if !self.parsed.contains_key(&key) {
            let required = match self.registry.meta.get_manifest(repo, manifest).await? {
                None => Some(HashSet::new()),
                Some(m) => parse_manifest(&m.content, Some(&m.media_type))
                    .ok()
                    .and_then(|p| {
                        refs::manifest_refs(&p, self.registry.config.allow_sparse_index).ok()
                    })
                    .map(|refs: Vec<ManifestRef>| {
                        refs.into_iter()
                            .filter(|r| r.required)
                            .map(|r| r.digest)
                            .collect()
                    }),
            };
            self.parsed.insert(key.clone(), required);
        }
        Ok(match self.parsed.get(&key) {
            Some(Some(required)) => required.contains(child),
            _ => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Actor, RegistryConfig};
    use berth_meta::MetaStore;
    use berth_oci::{Reference, RepoName};
    use berth_storage::{BlobStore, FsStore};
    use bytes::Bytes;

    async fn registry(dir: &std::path::Path) -> Registry {
        let blobs = BlobStore::Fs(FsStore::new(dir).await.expect("store"));
        let meta = MetaStore::connect(&format!("sqlite:{}", dir.join("meta.db").display()))
            .await
            .expect("meta");
        Registry::new(blobs, meta, RegistryConfig::default())
    }

    async fn push(reg: &Registry, repo: &RepoName, data: &'static [u8]) -> Digest {
        let digest = digest_of(berth_oci::Algorithm::Sha256, data);
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(data))]);
        reg.put_blob(repo, &digest, None, body, &Actor::anonymous())
            .await
            .expect("push");
        digest
    }

    fn blob_file(dir: &std::path::Path, d: &Digest) -> std::path::PathBuf {
        dir.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex())
    }

    #[tokio::test]
    async fn finds_missing_corrupt_orphan_and_the_manifests_they_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = registry(dir.path()).await;
        let repo: RepoName = "team/app".parse().expect("name");
        let config = push(&reg, &repo, b"{}").await;
        let layer = push(&reg, &repo, b"layer bytes").await;
        let spare = push(&reg, &repo, b"spare").await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":11}}]}}"#
        );
        let out = reg
            .put_manifest(
                &repo,
                &Reference::Tag("v1".parse().expect("tag")),
                None,
                Bytes::from(manifest),
                &Actor::anonymous(),
            )
            .await
            .expect("manifest");

        let clean = reg.fsck(&NoProgress).await.expect("fsck");
        assert!(clean.is_clean(), "{clean:?}");
        assert_eq!((clean.blobs_checked, clean.manifests_checked), (3, 1));
        assert_eq!(clean.bytes_checked, 2 + 11 + 5);

        std::fs::write(blob_file(dir.path(), &layer), b"layer bytez").expect("corrupt");
        std::fs::remove_file(blob_file(dir.path(), &spare)).expect("lose");
        let orphan = digest_of(berth_oci::Algorithm::Sha256, b"orphan");
        let orphan_path = blob_file(dir.path(), &orphan);
        std::fs::create_dir_all(orphan_path.parent().expect("shard")).expect("shard");
        std::fs::write(&orphan_path, b"orphan").expect("orphan");

        let r = reg.fsck(&NoProgress).await.expect("fsck");
        assert!(!r.is_clean());
        assert_eq!(r.corrupt_blobs.len(), 1, "{r:?}");
        assert_eq!(r.corrupt_blobs[0].digest, layer.as_str());
        assert_eq!(r.corrupt_blobs[0].repositories, vec!["team/app".to_owned()]);
        assert_eq!(r.missing_blobs.len(), 1, "{r:?}");
        assert_eq!(r.missing_blobs[0].digest, spare.as_str());
        assert_eq!(r.orphan_blobs.len(), 1, "{r:?}");
        assert_eq!(r.orphan_blobs[0].digest, orphan.as_str());
        // The corrupt layer breaks the manifest; the lost spare blob breaks nothing.
        assert_eq!(r.broken_manifests.len(), 1, "{r:?}");
        assert_eq!(r.broken_manifests[0].manifest, out.digest.as_str());
        assert_eq!(r.broken_manifests[0].reference, layer.as_str());
        assert_eq!(r.broken_manifests[0].problem, "blob bytes are corrupt");
    }

    #[tokio::test]
    async fn a_reference_that_is_not_required_may_dangle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = registry(dir.path()).await;
        let repo: RepoName = "team/app".parse().expect("name");
        let config = push(&reg, &repo, b"{}").await;
        let foreign = digest_of(berth_oci::Algorithm::Sha256, b"hosted elsewhere");
        // A non-distributable layer (it has urls) need not be in the registry.
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{foreign}","size":16,"urls":["https://example.com/l"]}}]}}"#
        );
        reg.put_manifest(
            &repo,
            &Reference::Tag("v1".parse().expect("tag")),
            None,
            Bytes::from(manifest),
            &Actor::anonymous(),
        )
        .await
        .expect("manifest");
        let r = reg.fsck(&NoProgress).await.expect("fsck");
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.references_checked, 1);
    }
}
