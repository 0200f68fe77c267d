//! `berth export` and `berth import`: OCI image layouts for backup and restore.
//!
//! Export walks each image from its tag or digest through index children to configs and
//! layers, and writes every blob into `blobs/<alg>/<hex>` of the layout, hashing it on the
//! way: a blob whose bytes do not match its digest is not written, and the export fails.
//! `index.json` names each exported image with `org.opencontainers.image.ref.name` (the
//! tag, as skopeo and umoci read it) and `dev.berth.repository` (so `import` knows where it
//! came from). Exporting into an existing layout adds to it and skips blobs already there,
//! which also makes an interrupted export resumable.
//!
//! Import reads a layout and pushes through the same use cases as the HTTP API: children
//! before parents, blobs before the manifests that need them, every blob hashed by the
//! registry as it arrives. Blobs already in the repository are skipped.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_meta::Actor;
use berth_oci::manifest::parse_manifest;
use berth_oci::{Algorithm, Digest, Reference, RepoName};
use berth_registry::Registry;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::open::StoreArgs;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const REPOSITORY: &str = "dev.berth.repository";

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Images: `repo` (every tag), `repo:tag` or `repo@digest`.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// The OCI layout directory to write (created, or added to).
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The OCI layout directory to read.
    pub input: PathBuf,
    /// Import every image into this repository instead of the one recorded at export
    /// (needed for layouts made by other tools).
    #[arg(long)]
    pub repository: Option<String>,
}

async fn open(store: &StoreArgs) -> anyhow::Result<Registry> {
    Ok(store.registry().await?.1)
}

fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    let alg = match d.algorithm() {
        Algorithm::Sha256 => "sha256",
        Algorithm::Sha512 => "sha512",
    };
    root.join("blobs").join(alg).join(d.hex())
}

/// Splits `repo`, `repo:tag` and `repo@digest`. A colon before the last slash belongs to
/// no tag (names cannot hold one anyway).
fn split_image(image: &str) -> anyhow::Result<(RepoName, Option<Reference>)> {
    let (name, reference) = if let Some((n, d)) = image.split_once('@') {
        (n, Some(d))
    } else {
        match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (image, None),
        }
    };
    let repo: RepoName = name
        .parse()
        .map_err(|e| anyhow::anyhow!("{name:?} is not a repository name: {e}"))?;
    let reference = reference
        .map(|r| {
            r.parse::<Reference>()
                .map_err(|e| anyhow::anyhow!("{r:?} is not a tag or digest: {e}"))
        })
        .transpose()?;
    Ok((repo, reference))
}

/// Hashes `bytes` with the digest's own algorithm.
struct Hasher(HasherKind);

enum HasherKind {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_digest(d: &Digest) -> Hasher {
        Hasher(match d.algorithm() {
            Algorithm::Sha256 => HasherKind::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => HasherKind::Sha512(sha2::Sha512::new()),
        })
    }

    fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            HasherKind::Sha256(h) => h.update(bytes),
            HasherKind::Sha512(h) => h.update(bytes),
        }
    }

    fn hex(self) -> String {
        match self.0 {
            HasherKind::Sha256(h) => hex::encode(h.finalize()),
            HasherKind::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

struct Exporter {
    registry: Registry,
    root: PathBuf,
    bar: ProgressBar,
    written: u64,
    skipped: u64,
    bytes: u64,
    done: HashSet<String>,
}

impl Exporter {
    /// Writes `bytes` as the blob `d` unless it is there.
    async fn write_small(&mut self, d: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let path = blob_path(&self.root, d);
        if path.exists() {
            return Ok(());
        }
        let mut h = Hasher::for_digest(d);
        h.update(bytes);
        if h.hex() != d.hex() {
            bail!(
                "manifest {d} does not hash to its digest: the store is corrupt (run berth fsck)"
            );
        }
        write_atomically(&path, bytes).await
    }

    /// Streams the blob `d` of `repo` into the layout, verifying its digest.
    async fn copy_blob(&mut self, repo: &RepoName, d: &Digest) -> anyhow::Result<()> {
        if !self.done.insert(d.to_string()) {
            return Ok(());
        }
        let path = blob_path(&self.root, d);
        if path.exists() {
            self.skipped += 1;
            return Ok(());
        }
        let read = self
            .registry
            .read_blob(repo, d, None, true)
            .await
            .with_context(|| format!("reading blob {d} of {repo}"))?;
        let Some(reader) = read.reader else {
            bail!("blob {d} of {repo} has no body");
        };
        self.bar
            .set_message(d.hex().chars().take(12).collect::<String>());
        let parent = path.parent().context("blob path has a parent")?;
        tokio::fs::create_dir_all(parent).await?;
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut h = Hasher::for_digest(d);
        let mut body = reader.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("reading blob {d}"))?;
            h.update(&chunk);
            file.write_all(&chunk).await?;
            self.bar.inc(chunk.len() as u64);
            self.bytes += chunk.len() as u64;
        }
        file.sync_all().await?;
        drop(file);
        if h.hex() != d.hex() {
            let _ = tokio::fs::remove_file(&partial).await;
            bail!(
                "blob {d} of {repo} does not hash to its digest: the store is corrupt (run berth fsck)"
            );
        }
        tokio::fs::rename(&partial, &path).await?;
        self.written += 1;
        Ok(())
    }

    /// Exports the manifest `reference` of `repo` and everything it needs; returns its
    /// descriptor fields (media type, digest, size).
    async fn manifest(
        &mut self,
        repo: &RepoName,
        reference: &Reference,
    ) -> anyhow::Result<(String, Digest, u64)> {
        let m = self
            .registry
            .get_manifest(repo, reference)
            .await
            .with_context(|| format!("reading manifest {repo}:{reference}"))?;
        let parsed = parse_manifest(&m.content, Some(&m.media_type))
            .map_err(|e| anyhow::anyhow!("manifest {} of {repo}: {e}", m.digest))?;
        for child in &parsed.manifests {
            if let Some(d) = child.known_digest() {
                Box::pin(self.manifest(repo, &Reference::Digest(d))).await?;
            }
        }
        for blob in parsed.config.iter().chain(&parsed.layers) {
            // Non-distributable layers (with urls) are not in the registry to export.
            if blob.has_urls {
                continue;
            }
            if let Some(d) = blob.known_digest() {
                self.copy_blob(repo, &d).await?;
            }
        }
        self.write_small(&m.digest, &m.content).await?;
        Ok((m.media_type, m.digest, m.content.len() as u64))
    }
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let partial = path.with_extension("partial");
    let mut f = tokio::fs::File::create(&partial).await?;
    f.write_all(bytes).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

fn read_index(root: &Path) -> anyhow::Result<Value> {
    let path = root.join("index.json");
    if !path.exists() {
        return Ok(
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}),
        );
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))
}

pub async fn export(store: &StoreArgs, args: ExportArgs) -> anyhow::Result<()> {
    let registry = open(store).await?;
    let root = args.output.clone();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut images: Vec<(RepoName, Reference)> = Vec::new();
    for image in &args.images {
        let (repo, reference) = split_image(image)?;
        match reference {
            Some(r) => images.push((repo, r)),
            None => {
                let mut last: Option<String> = None;
                loop {
                    let (tags, more) = registry
                        .list_tags(&repo, Some(1000), last.as_deref())
                        .await?;
                    last = tags.last().cloned();
                    for t in tags {
                        images.push((repo.clone(), t.parse()?));
                    }
                    if !more {
                        break;
                    }
                }
            }
        }
    }
    let mut ex = Exporter {
        registry,
        root: root.clone(),
        bar: bar(0),
        written: 0,
        skipped: 0,
        bytes: 0,
        done: HashSet::new(),
    };
    let mut index = read_index(&root)?;
    let mut entries: BTreeMap<(String, String), Value> = BTreeMap::new();
    if let Some(list) = index["manifests"].as_array() {
        for e in list {
            let key = (
                e["annotations"][REPOSITORY]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                e["annotations"][REF_NAME]
                    .as_str()
                    .or(e["digest"].as_str())
                    .unwrap_or("")
                    .to_owned(),
            );
            entries.insert(key, e.clone());
        }
    }
    for (repo, reference) in &images {
        let (media_type, digest, size) = ex.manifest(repo, reference).await?;
        let mut annotations = json!({ REPOSITORY: repo.as_str() });
        if let Reference::Tag(t) = reference {
            annotations[REF_NAME] = Value::from(t.as_str());
        }
        let key = (repo.to_string(), reference.to_string());
        entries.insert(
            key,
            json!({"mediaType": media_type, "digest": digest.as_str(), "size": size, "annotations": annotations}),
        );
        eprintln!("exported {repo}:{reference} ({digest})");
    }
    ex.bar.finish_and_clear();
    index["manifests"] = Value::from(entries.into_values().collect::<Vec<_>>());
    write_atomically(
        &root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .await?;
    write_atomically(
        &root.join("index.json"),
        &serde_json::to_vec_pretty(&index)?,
    )
    .await?;
    println!(
        "exported {} images: {} blobs written ({} bytes), {} already in the layout",
        images.len(),
        ex.written,
        ex.bytes,
        ex.skipped
    );
    Ok(())
}

struct Importer {
    registry: Registry,
    root: PathBuf,
    actor: Actor,
    bar: ProgressBar,
    pushed: u64,
    skipped: u64,
    bytes: u64,
    done: HashSet<String>,
}

impl Importer {
    async fn blob(&mut self, repo: &RepoName, d: &Digest) -> anyhow::Result<()> {
        if !self.done.insert(format!("{repo}@{d}")) {
            return Ok(());
        }
        if self.registry.stat_blob(repo, d).await.is_ok() {
            self.skipped += 1;
            return Ok(());
        }
        let path = blob_path(&self.root, d);
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("the layout has no blob {d} ({})", path.display()))?;
        // Its length, so a quota without room refuses the blob before it is read.
        let length = file.metadata().await.ok().map(|m| m.len());
        self.bar
            .set_message(d.hex().chars().take(12).collect::<String>());
        let bar = self.bar.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |c| {
                if let Ok(c) = c {
                    bar.inc(c.len() as u64);
                }
            });
        // The registry hashes as it stores: a layout blob that does not match its name is
        // refused here and nothing is linked.
        let n = self
            .registry
            .put_blob(repo, d, length, stream, &self.actor)
            .await
            .with_context(|| format!("importing blob {d} into {repo}"))?;
        self.pushed += 1;
        self.bytes += n;
        Ok(())
    }

    async fn manifest(
        &mut self,
        repo: &RepoName,
        d: &Digest,
        tag: Option<&str>,
    ) -> anyhow::Result<()> {
        let path = blob_path(&self.root, d);
        let bytes = tokio::fs::read(&path)
            .await
            .with_context(|| format!("the layout has no manifest {d} ({})", path.display()))?;
        let parsed =
            parse_manifest(&bytes, None).map_err(|e| anyhow::anyhow!("manifest {d}: {e}"))?;
        if self.done.insert(format!("{repo}@{d}")) {
            for child in &parsed.manifests {
                if let Some(c) = child.known_digest() {
                    Box::pin(self.manifest(repo, &c, None)).await?;
                }
            }
            for blob in parsed.config.iter().chain(&parsed.layers) {
                if blob.has_urls {
                    continue;
                }
                if let Some(b) = blob.known_digest() {
                    self.blob(repo, &b).await?;
                }
            }
        }
        let body = bytes::Bytes::from(bytes);
        let reference = match tag {
            Some(t) => t.parse()?,
            None => Reference::Digest(d.clone()),
        };
        // By digest the registry checks the bytes against `d`; by tag it computes the digest,
        // which must then be `d` too.
        let out = self
            .registry
            .put_manifest(
                repo,
                &reference,
                Some(parsed.kind.media_type()),
                body,
                &self.actor,
            )
            .await
            .with_context(|| format!("importing manifest {d} into {repo}"))?;
        if &out.digest != d {
            bail!(
                "manifest file {} hashes to {}, not {d}",
                path.display(),
                out.digest
            );
        }
        Ok(())
    }
}

pub async fn import(store: &StoreArgs, args: ImportArgs) -> anyhow::Result<()> {
    let registry = open(store).await?;
    let root = args.input.clone();
    let layout = std::fs::read(root.join("oci-layout")).with_context(|| {
        format!(
            "{} is not an OCI layout (no oci-layout file)",
            root.display()
        )
    })?;
    let layout: Value = serde_json::from_slice(&layout).context("oci-layout is not JSON")?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        bail!(
            "unsupported imageLayoutVersion {}",
            layout["imageLayoutVersion"]
        );
    }
    let index = read_index(&root)?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let override_repo = args
        .repository
        .as_deref()
        .map(|r| {
            r.parse::<RepoName>()
                .map_err(|e| anyhow::anyhow!("{r:?}: {e}"))
        })
        .transpose()?;
    let mut plan = Vec::new();
    let mut total = 0u64;
    for e in &entries {
        let digest: Digest = e["digest"]
            .as_str()
            .context("index.json entry without digest")?
            .parse()
            .map_err(|err| anyhow::anyhow!("index.json digest: {err}"))?;
        let repo = match (&override_repo, e["annotations"][REPOSITORY].as_str()) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => r.parse().map_err(|err| anyhow::anyhow!("{r:?}: {err}"))?,
            (None, None) => {
                bail!("index.json entry {digest} names no repository: pass --repository")
            }
        };
        let tag = e["annotations"][REF_NAME].as_str().map(str::to_owned);
        total += e["size"].as_u64().unwrap_or(0);
        plan.push((repo, digest, tag));
    }
    // The bar counts blob bytes; their total is unknown before the manifests are read, so
    // it grows with what is found.
    let mut im = Importer {
        registry,
        root,
        actor: Actor::named("cli"),
        bar: bar(total),
        pushed: 0,
        skipped: 0,
        bytes: 0,
        done: HashSet::new(),
    };
    im.bar.set_length(dir_size(&im.root.join("blobs")));
    for (repo, digest, tag) in &plan {
        im.manifest(repo, digest, tag.as_deref()).await?;
        eprintln!(
            "imported {repo}{} ({digest})",
            tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default()
        );
    }
    im.bar.finish_and_clear();
    println!(
        "imported {} images: {} blobs pushed ({} bytes), {} already present",
        plan.len(),
        im.pushed,
        im.bytes,
        im.skipped
    );
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let (r, t) = split_image("team-a/app:1.0").expect("tag");
        assert_eq!(
            (r.as_str(), t.map(|t| t.to_string())),
            ("team-a/app", Some("1.0".into()))
        );
        let (r, t) = split_image("team-a/app").expect("repo");
        assert_eq!((r.as_str(), t), ("team-a/app", None));
        let d = format!("sha256:{}", "a".repeat(64));
        let (_, t) = split_image(&format!("alpine@{d}")).expect("digest");
        assert_eq!(t.map(|t| t.to_string()), Some(d));
        assert!(split_image("Bad/Name:1").is_err());
        assert!(split_image("app:bad tag").is_err());
    }
}
