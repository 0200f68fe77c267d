//! What the registry's integration tests share: stores on the backends a test names, and
//! images built and pushed through the use cases.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use berth_meta::MetaStore;
use berth_oci::{Digest, Reference, RepoName};
use berth_registry::{Actor, Registry, RegistryConfig, RegistryError};
use berth_storage::{BlobStore, FsStore, ScanEntry};
use bytes::Bytes;
use futures_util::StreamExt;

pub const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub use berth_testkit::postgres_url;

/// The metadata URL of a test: SQLite in `dir`, or a fresh PostgreSQL schema.
pub async fn meta_url(dir: &std::path::Path, postgres: bool) -> String {
    if postgres {
        postgres_url().await
    } else {
        format!("sqlite:{}", dir.join("meta.db").display())
    }
}

/// The filesystem under `dir`, or a fresh prefix of the S3 bucket `BERTH_TEST_S3_URL`
/// serves.
pub async fn blob_store(s3: bool, dir: &std::path::Path) -> BlobStore {
    if !s3 {
        return BlobStore::Fs(FsStore::new(dir).await.expect("fs store"));
    }
    berth_testkit::s3_store().await
}

/// A registry with the default rules on `blobs` and the metadata at `url`.
pub async fn registry_on(blobs: &BlobStore, url: &str) -> Registry {
    let meta = MetaStore::connect(url).await.expect("metadata store");
    Registry::new(blobs.clone(), meta, RegistryConfig::default())
}

/// A registry with the default rules over the filesystem in `dir` and SQLite there, or a
/// fresh PostgreSQL schema.
pub async fn registry(dir: &std::path::Path, postgres: bool) -> Registry {
    let blobs = blob_store(false, dir).await;
    registry_on(&blobs, &meta_url(dir, postgres).await).await
}

/// Every digest under `blobs/`, from the store's own listing.
pub async fn stored(blobs: &BlobStore) -> Vec<Digest> {
    let mut scan = blobs.scan_blobs();
    let mut out = Vec::new();
    while let Some(batch) = scan.next_batch().await.expect("list") {
        for e in batch {
            match e {
                ScanEntry::Blob { digest, .. } => out.push(digest),
                ScanEntry::Stray { path } => panic!("stray {path}"),
            }
        }
    }
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    out
}

pub fn repo(name: &str) -> RepoName {
    name.parse().expect("repository name")
}

pub fn sha(data: &[u8]) -> Digest {
    berth_storage::digest_of(berth_oci::Algorithm::Sha256, data)
}

/// `data` as a request body of one frame.
pub fn body(data: &[u8]) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + use<> {
    futures_util::stream::iter([Ok(Bytes::copy_from_slice(data))])
}

/// Pushes `data` as a blob of `repo` (monolithic, length unannounced).
pub async fn blob(r: &Registry, repo: &RepoName, data: &[u8]) -> Result<Digest, RegistryError> {
    let d = sha(data);
    r.put_blob(repo, &d, None, body(data), &Actor::anonymous())
        .await?;
    Ok(d)
}

pub fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha(data).to_string(), "size": data.len()})
}

/// An image manifest's bytes over a config and layers (their contents).
pub fn image(config: &[u8], layers: &[&[u8]], subject: Option<&[u8]>) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": IMAGE,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    });
    if let Some(s) = subject {
        m["subject"] = descriptor(IMAGE, s);
        m["artifactType"] = "application/vnd.example.signature".into();
    }
    serde_json::to_vec(&m).expect("json")
}

/// An image index's bytes over image manifests (their bytes).
pub fn index(children: &[&[u8]]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": children.iter().map(|c| descriptor(IMAGE, c)).collect::<Vec<_>>(),
    }))
    .expect("json")
}

/// Pushes the blobs, then the manifest under `tag` or by digest; the manifest's bytes.
pub async fn push_image(
    r: &Registry,
    repo: &RepoName,
    tag: Option<&str>,
    config: &[u8],
    layers: &[&[u8]],
    subject: Option<&[u8]>,
) -> Result<Vec<u8>, RegistryError> {
    blob(r, repo, config).await?;
    for l in layers {
        blob(r, repo, l).await?;
    }
    let m = image(config, layers, subject);
    put(r, repo, tag, &m).await?;
    Ok(m)
}

/// Stores manifest bytes under `tag`, or by their digest.
pub async fn put(
    r: &Registry,
    repo: &RepoName,
    tag: Option<&str>,
    m: &[u8],
) -> Result<Digest, RegistryError> {
    let reference = match tag {
        Some(t) => Reference::Tag(t.parse().expect("tag")),
        None => Reference::Digest(sha(m)),
    };
    let out = r
        .put_manifest(
            repo,
            &reference,
            None,
            Bytes::copy_from_slice(m),
            &Actor::anonymous(),
        )
        .await?;
    Ok(out.digest)
}

/// Reads a blob of `repo` whole.
pub async fn read_all(r: &Registry, repo: &RepoName, d: &Digest) -> Result<Vec<u8>, RegistryError> {
    let read = r.read_blob(repo, d, None, true).await?;
    let mut out = Vec::new();
    if let Some(mut body) = read.reader.map(|b| b.body) {
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.map_err(|e| RegistryError::Internal(e.to_string()))?);
        }
    }
    Ok(out)
}
