//! Reading the store back for `berth fsck`: re-hashing a blob from disk or S3, and listing
//! what is under `blobs/`. Both only read, so they are safe beside a serving process.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use berth_oci::{Algorithm, Digest};
use tokio::fs::{self, File};
use tokio::io::AsyncReadExt;

use crate::hash::Hasher;
use crate::{BlobStore, FsStore, Result, S3Store, StorageError};

/// Bytes hashed per read: large enough that syscalls do not dominate, small enough that
/// memory stays flat whatever the blob's size.
const READ_BUFFER: usize = 1 << 20;

/// What is really stored under a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    /// No file.
    Missing,
    /// The file's length and the digest of its bytes, in the algorithm of the digest asked.
    Present { size: u64, actual: Digest },
}

/// One thing found under `blobs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEntry {
    /// A file at the place of a digest.
    Blob { digest: Digest, size: u64 },
    /// Anything else (a name that is no digest, a file in the wrong shard, a directory
    /// where a blob belongs), as a path relative to the store's root.
    Stray { path: String },
}

impl BlobStore {
    /// Re-hashes the stored bytes of `digest`, streaming; `progress` is told each batch of
    /// bytes read.
    pub async fn verify_blob(
        &self,
        digest: &Digest,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<BlobCheck> {
        match self {
            BlobStore::Fs(s) => s.verify_blob(digest, progress).await,
            BlobStore::S3(s) => s.verify_blob(digest, progress).await,
        }
    }

    /// Lists what is under `blobs/`, a batch at a time, so memory does not grow with the
    /// number of blobs.
    pub fn scan_blobs(&self) -> BlobScan {
        match self {
            BlobStore::Fs(s) => BlobScan(Inner::Fs(FsScan {
                root: s.root().to_owned(),
                shards: None,
                first: Vec::new(),
            })),
            BlobStore::S3(s) => BlobScan(Inner::S3 {
                store: s.clone(),
                token: None,
                done: false,
            }),
        }
    }
}

impl FsStore {
    async fn verify_blob(
        &self,
        digest: &Digest,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<BlobCheck> {
        let mut file = match File::open(self.blob_path(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BlobCheck::Missing),
            Err(e) => return Err(StorageError::io("opening a blob")(e)),
        };
        let mut hasher = Hasher::new(digest.algorithm());
        let mut buf = vec![0u8; READ_BUFFER];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(StorageError::io("reading a blob"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            progress(n as u64);
        }
        Ok(BlobCheck::Present {
            size,
            actual: hasher.finish(),
        })
    }
}

/// A listing of `blobs/` in progress; see [`BlobStore::scan_blobs`].
pub struct BlobScan(Inner);

enum Inner {
    Fs(FsScan),
    /// One batch per page of the bucket listing.
    S3 {
        store: S3Store,
        token: Option<String>,
        done: bool,
    },
}

impl BlobScan {
    /// The next batch, or `None` when the listing is done.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<ScanEntry>>> {
        match &mut self.0 {
            Inner::Fs(s) => s.next_batch().await,
            Inner::S3 { store, token, done } => {
                if *done {
                    return Ok(None);
                }
                let (page, next) = store.list_blobs_page(token.as_deref()).await?;
                *done = next.is_none();
                *token = next;
                if page.is_empty() && *done {
                    return Ok(None);
                }
                Ok(Some(
                    page.into_iter()
                        .map(|(key, size)| match digest_of_key(&key) {
                            Some(digest) => ScanEntry::Blob { digest, size },
                            None => ScanEntry::Stray { path: key },
                        })
                        .collect(),
                ))
            }
        }
    }
}

/// The digest a key `blobs/<algorithm>/<2 hex>/<hex>` stands for, if it is one.
fn digest_of_key(key: &str) -> Option<Digest> {
    let mut parts = key.strip_prefix("blobs/")?.split('/');
    let (algorithm, shard, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || shard.len() != 2 {
        return None;
    }
    algorithm_named(algorithm)?;
    format!("{algorithm}:{hex}")
        .parse::<Digest>()
        .ok()
        .filter(|d| d.hex().starts_with(shard))
}

struct FsScan {
    root: PathBuf,
    /// Shard directories still to list, with their algorithm; `None` until the top levels
    /// were read.
    shards: Option<VecDeque<(Algorithm, PathBuf)>>,
    /// Strays found while reading the top levels, returned with the first batch.
    first: Vec<ScanEntry>,
}

fn algorithm_named(name: &str) -> Option<Algorithm> {
    [Algorithm::Sha256, Algorithm::Sha512]
        .into_iter()
        .find(|a| a.as_str() == name)
}

async fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut rd = match fs::read_dir(dir).await {
        Ok(rd) => rd,
        // A shard removed meanwhile holds nothing to report.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing blobs")(e)),
    };
    let mut out = Vec::new();
    while let Some(entry) = rd
        .next_entry()
        .await
        .map_err(StorageError::io("listing blobs"))?
    {
        let is_dir = entry
            .file_type()
            .await
            .map_err(StorageError::io("listing blobs"))?
            .is_dir();
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
            is_dir,
        ));
    }
    out.sort();
    Ok(out)
}

impl FsScan {
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&*self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    async fn list_top(&mut self) -> Result<VecDeque<(Algorithm, PathBuf)>> {
        let mut shards = VecDeque::new();
        for (name, path, is_dir) in sorted_entries(&self.root.join("blobs")).await? {
            let Some(algorithm) = algorithm_named(&name).filter(|_| is_dir) else {
                self.first.push(ScanEntry::Stray {
                    path: self.relative(&path),
                });
                continue;
            };
            for (shard, path, is_dir) in sorted_entries(&path).await? {
                if is_dir && shard.len() == 2 {
                    shards.push_back((algorithm, path));
                } else {
                    self.first.push(ScanEntry::Stray {
                        path: self.relative(&path),
                    });
                }
            }
        }
        Ok(shards)
    }

    /// The next batch (one shard directory's worth), or `None` when the listing is done.
    async fn next_batch(&mut self) -> Result<Option<Vec<ScanEntry>>> {
        if self.shards.is_none() {
            let shards = self.list_top().await?;
            self.shards = Some(shards);
        }
        let mut batch = std::mem::take(&mut self.first);
        let Some((algorithm, dir)) = self.shards.as_mut().and_then(VecDeque::pop_front) else {
            return Ok((!batch.is_empty()).then_some(batch));
        };
        let shard = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (name, path, is_dir) in sorted_entries(&dir).await? {
            let digest = format!("{}:{name}", algorithm.as_str())
                .parse::<Digest>()
                .ok()
                .filter(|d| !is_dir && d.hex().starts_with(&shard));
            match digest {
                Some(digest) => {
                    let size = fs::metadata(&path)
                        .await
                        .map_err(StorageError::io("reading blob metadata"))?
                        .len();
                    batch.push(ScanEntry::Blob { digest, size });
                }
                None => batch.push(ScanEntry::Stray {
                    path: self.relative(&path),
                }),
            }
        }
        Ok(Some(batch))
    }
}
