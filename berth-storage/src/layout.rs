//! OCI image layouts on disk (the image spec's `image-layout.md`): an `oci-layout` file,
//! `index.json`, and every blob under `blobs/<algorithm>/<hex>`. `berth export` writes one
//! and `berth import` reads one, through the registry's use cases; this module only knows
//! the files.
//!
//! A blob is written to a `.partial` file, hashed on the way, synced, and renamed into
//! place only if it hashes to its name, so a layout never holds a blob under the wrong
//! digest and an interrupted write leaves no file that looks finished. `index.json` and
//! `oci-layout` are replaced the same way, whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_oci::Digest;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::hash::Hasher;
use crate::{BlobReader, Result, StorageError};

/// The annotation naming an index entry's tag, which skopeo and umoci read.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = "1.0.0";
const INDEX_FILE: &str = "index.json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One manifest `index.json` names. Fields Berth does not use (a platform, say) are kept
/// as they were read, so rewriting a layout made by another tool loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl IndexEntry {
    /// The tag this entry stands for, if it names one.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

/// `index.json`: the layout's entry points. Other top-level fields are kept as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for LayoutIndex {
    fn default() -> Self {
        LayoutIndex {
            schema_version: 2,
            media_type: Some(INDEX_MEDIA_TYPE.to_owned()),
            manifests: Vec::new(),
            other: Map::new(),
        }
    }
}

/// What writing one blob did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written and verified, this many bytes.
    Bytes(u64),
    /// The layout holds it already.
    AlreadyThere,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

fn layout_error(path: &Path, why: impl std::fmt::Display) -> StorageError {
    StorageError::Layout(format!("{}: {why}", path.display()))
}

impl OciLayout {
    /// A layout to write into: the directory is created if missing; an existing layout is
    /// added to.
    pub async fn create(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let root = root.into();
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(StorageError::io("creating the layout directory"))?;
        Ok(OciLayout { root })
    }

    /// A layout to read: its `oci-layout` file must say version 1.0.0.
    pub async fn open(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let root = root.into();
        let path = root.join(LAYOUT_FILE);
        let text = tokio::fs::read(&path).await.map_err(|_| {
            StorageError::Layout(format!(
                "{} is not an OCI layout (no oci-layout file)",
                root.display()
            ))
        })?;
        let layout: Value = serde_json::from_slice(&text).map_err(|e| layout_error(&path, e))?;
        let version = &layout["imageLayoutVersion"];
        if version != LAYOUT_VERSION {
            return Err(layout_error(
                &path,
                format!("unsupported imageLayoutVersion {version}"),
            ));
        }
        Ok(OciLayout { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// `index.json`, or an empty index if there is none yet.
    pub async fn read_index(&self) -> Result<LayoutIndex> {
        let path = self.root.join(INDEX_FILE);
        match tokio::fs::read(&path).await {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| layout_error(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LayoutIndex::default()),
            Err(e) => Err(StorageError::io("reading index.json")(e)),
        }
    }

    /// Replaces `index.json` (and writes `oci-layout`), each file whole or not at all.
    /// Written last, so a layout whose blobs are incomplete names none of them.
    pub async fn write_index(&self, index: &LayoutIndex) -> Result<()> {
        let layout = format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}");
        write_whole(&self.root.join(LAYOUT_FILE), layout.as_bytes()).await?;
        let json = serde_json::to_vec_pretty(index)
            .map_err(|e| StorageError::Layout(format!("index.json: {e}")))?;
        write_whole(&self.root.join(INDEX_FILE), &json).await
    }

    /// Whether the layout holds a blob of that digest.
    pub async fn has_blob(&self, digest: &Digest) -> bool {
        tokio::fs::metadata(self.blob_path(digest)).await.is_ok()
    }

    /// A blob's bytes as a stream, with its length; `None` if the layout lacks it. The
    /// bytes are not checked here: whoever stores them hashes them.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("opening a layout blob")(e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(StorageError::io("reading layout blob metadata"))?
            .len();
        Ok(Some(BlobReader {
            len,
            total: len,
            body: Box::pin(tokio_util::io::ReaderStream::with_capacity(
                file,
                256 * 1024,
            )),
        }))
    }

    /// A small blob (a manifest) read whole; `None` if the layout lacks it.
    pub async fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.blob_path(digest)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("reading a layout blob")(e)),
        }
    }

    /// Writes the blob `digest` from `body` unless the layout holds it, hashing as it
    /// writes: bytes that do not hash to `digest` are removed and the write fails with
    /// `DigestMismatch`.
    pub async fn write_blob<S, E>(&self, digest: &Digest, body: S) -> Result<Written>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let path = self.blob_path(digest);
        if self.has_blob(digest).await {
            return Ok(Written::AlreadyThere);
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(StorageError::io("creating the layout's blob directory"))?;
        }
        let partial = path.with_extension("partial");
        let result = write_verified(&partial, digest, body).await;
        let outcome = match result {
            Ok(n) => tokio::fs::rename(&partial, &path)
                .await
                .map(|()| n)
                .map_err(StorageError::io("moving a layout blob into place")),
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        outcome.map(Written::Bytes)
    }

    /// Bytes under `blobs/`, for a progress bar's total.
    pub fn blob_bytes(&self) -> u64 {
        dir_size(&self.root.join("blobs"))
    }
}

/// Streams `body` into `path`, hashing; the byte count if it hashes to `digest`.
async fn write_verified<S, E>(path: &Path, digest: &Digest, body: S) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(StorageError::io("creating a layout blob"))?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut written = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StorageError::Body(Box::new(e)))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(StorageError::io("writing a layout blob"))?;
        written += chunk.len() as u64;
    }
    file.sync_all()
        .await
        .map_err(StorageError::io("syncing a layout blob"))?;
    let actual = hasher.finish();
    if &actual != digest {
        return Err(StorageError::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(written)
}

/// Writes `bytes` to `path` through a `.partial` file and a rename.
async fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    let write = async {
        let mut f = tokio::fs::File::create(&partial).await?;
        f.write_all(bytes).await?;
        f.sync_all().await?;
        drop(f);
        tokio::fs::rename(&partial, path).await
    };
    write.await.map_err(|e| layout_error(path, e))
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
    use crate::digest_of;
    use berth_oci::Algorithm;

    fn body(parts: &[&[u8]]) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
        let parts: Vec<std::io::Result<Bytes>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures_util::stream::iter(parts)
    }

    #[tokio::test]
    async fn blobs_land_only_under_their_own_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path().join("out"))
            .await
            .expect("create");
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = digest_of(algorithm, b"hello world");
            assert_eq!(
                layout
                    .write_blob(&d, body(&[b"hello ", b"world"]))
                    .await
                    .expect("write"),
                Written::Bytes(11)
            );
            let file = dir
                .path()
                .join("out/blobs")
                .join(algorithm.as_str())
                .join(d.hex());
            assert_eq!(std::fs::read(&file).expect("file"), b"hello world");
            assert_eq!(
                layout.write_blob(&d, body(&[b"x"])).await.expect("again"),
                Written::AlreadyThere
            );
            assert_eq!(
                layout.read_blob(&d).await.expect("read").as_deref(),
                Some(&b"hello world"[..])
            );
        }

        let claimed = digest_of(Algorithm::Sha256, b"what was promised");
        let err = layout
            .write_blob(&claimed, body(&[b"something else"]))
            .await
            .expect_err("wrong bytes");
        assert!(
            matches!(err, StorageError::DigestMismatch { ref expected, .. } if *expected == claimed),
            "{err:?}"
        );
        assert!(
            !layout.has_blob(&claimed).await,
            "nothing under the claimed name"
        );
        let sha256_dir = dir.path().join("out/blobs/sha256");
        let names: Vec<String> = std::fs::read_dir(&sha256_dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".partial")),
            "no partial file left: {names:?}"
        );
        assert!(layout.open_blob(&claimed).await.expect("open").is_none());
    }

    #[tokio::test]
    async fn the_index_round_trips_and_keeps_what_berth_does_not_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("layout");
        assert!(
            OciLayout::open(&root).await.is_err(),
            "no oci-layout file, no layout"
        );
        let layout = OciLayout::create(&root).await.expect("create");
        assert_eq!(
            layout.read_index().await.expect("empty"),
            LayoutIndex::default()
        );
        // As another tool might write it: a platform and a top-level annotation.
        std::fs::write(
            root.join("index.json"),
            br#"{"schemaVersion":2,"annotations":{"a":"b"},"manifests":[
                {"mediaType":"application/vnd.oci.image.manifest.v1+json",
                 "digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000",
                 "size":7,"platform":{"os":"linux","architecture":"arm64"},
                 "annotations":{"org.opencontainers.image.ref.name":"v1"}}]}"#,
        )
        .expect("write");
        let index = layout.read_index().await.expect("read");
        assert_eq!(index.manifests[0].ref_name(), Some("v1"));
        assert_eq!(index.manifests[0].size, 7);
        layout.write_index(&index).await.expect("rewrite");
        let back: Value =
            serde_json::from_slice(&std::fs::read(root.join("index.json")).expect("index"))
                .expect("json");
        assert_eq!(back["annotations"]["a"], "b");
        assert_eq!(back["manifests"][0]["platform"]["architecture"], "arm64");
        let opened = OciLayout::open(&root).await.expect("a layout now");
        assert_eq!(opened.read_index().await.expect("read"), index);

        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .expect("write");
        let err = OciLayout::open(&root).await.expect_err("unknown version");
        assert!(err.to_string().contains("imageLayoutVersion"), "{err}");
        std::fs::write(root.join("index.json"), b"not json").expect("write");
        assert!(layout.read_index().await.is_err());
    }
}
