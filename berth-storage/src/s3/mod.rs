//! The S3 backend: blobs and uploads as objects in one bucket, under a key prefix.
//!
//! Layout: `<prefix>blobs/<algorithm>/<2 hex>/<hex>` and, for uploads,
//! `<prefix>uploads/<id>/<offset, 20 digits>`: every append writes one object named after
//! the offset it starts at. Nothing about an upload lives in the process: the caller keeps
//! the acknowledged size and hash state, and the objects say where each byte is, so any
//! replica can continue an upload or finish it. A retried append at the same offset
//! overwrites the object an unacknowledged attempt left; `finish_upload` follows the
//! chain of offsets from 0 to the acknowledged size and ignores anything else.
//!
//! Memory per request is bounded by two parts (16 MiB), whatever the blob's size: appends
//! larger than a part become multipart uploads, reads stream, and assembling a blob copies
//! the large pieces inside S3 and streams only runs of small chunks through here.

mod client;
pub use client::{S3Counters, S3Tuning};
pub mod sign;
mod xml;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use berth_oci::{Algorithm, Digest};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::hash::Hasher;
use crate::{BlobCheck, BlobReader, HashState, Result, StorageError, failpoint};
use client::{Client, ClientConfig, Object};
pub use sign::Credentials;

/// An append larger than this becomes a multipart upload of parts this size; smaller ones
/// are one `PutObject`. One upload holds at most two of these in memory (see `PartWriter`).
const PART_SIZE: usize = 8 << 20;
/// S3's smallest part (all but the last part of a multipart upload).
const MIN_PART: u64 = 5 << 20;
/// S3's largest single copy (`CopyObject`, and one `UploadPartCopy`).
const MAX_COPY: u64 = 5 << 30;
/// S3 allows 10,000 parts; leave room for the copied ones.
const MAX_BUFFERED_PARTS: u64 = 9_000;
/// Deletes in flight at once when removing an upload's objects.
const DELETE_CONCURRENCY: usize = 8;

/// Where the bucket is and how to reach it.
#[derive(Clone)]
pub struct S3Config {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`, ...
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Prepended to every key; a `/` is added if missing. Empty: the bucket's root.
    pub prefix: String,
    pub credentials: Credentials,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key` (most S3-compatible
    /// servers want this).
    pub path_style: bool,
    /// Answer blob reads with presigned URLs valid this long, instead of streaming.
    pub redirect_expiry: Option<Duration>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("credentials", &self.credentials)
            .field("path_style", &self.path_style)
            .field("redirect_expiry", &self.redirect_expiry)
            .finish()
    }
}

#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    redirect_expiry: Option<Duration>,
}

/// A multipart upload in progress, aborted by its owner if anything fails.
struct Multipart {
    key: String,
    id: String,
    parts: Vec<(u32, String)>,
}

impl S3Store {
    /// Builds the client and checks that the bucket answers, so a wrong endpoint or
    /// credentials fail at startup rather than at the first push.
    pub async fn new(config: S3Config) -> Result<S3Store> {
        Self::new_tuned(config, S3Tuning::default()).await
    }

    /// [`S3Store::new`] with retries, timeouts and the in-flight limit chosen.
    pub async fn new_tuned(config: S3Config, tuning: S3Tuning) -> Result<S3Store> {
        let client = Client::new(
            &ClientConfig {
                endpoint: config.endpoint.clone(),
                bucket: config.bucket.clone(),
                region: config.region.clone(),
                credentials: config.credentials.clone(),
                path_style: config.path_style,
            },
            tuning,
        )?;
        let mut prefix = config.prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let store = S3Store {
            inner: Arc::new(Inner {
                client,
                prefix,
                redirect_expiry: config.redirect_expiry,
            }),
        };
        store
            .client()
            .list_page(&store.key("blobs/"), None, Some(1))
            .await?;
        Ok(store)
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Asks S3 to encrypt every object Berth writes with its own keys as well:
    /// `AES256` (SSE-S3) or `aws:kms` (SSE-KMS, with `kms_key_id` or the bucket's default
    /// key). Call right after opening the store.
    pub fn with_server_side_encryption(
        mut self,
        algorithm: &str,
        kms_key_id: Option<&str>,
    ) -> Result<S3Store> {
        let mut headers = match algorithm {
            "AES256" | "aws:kms" => vec![(
                "x-amz-server-side-encryption".to_owned(),
                algorithm.to_owned(),
            )],
            other => {
                return Err(StorageError::Config(format!(
                    "server-side encryption {other:?}: use \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS)"
                )));
            }
        };
        if let Some(id) = kms_key_id {
            if algorithm != "aws:kms" {
                return Err(StorageError::Config(
                    "a KMS key id needs server-side encryption \"aws:kms\"".into(),
                ));
            }
            headers.push((
                "x-amz-server-side-encryption-aws-kms-key-id".to_owned(),
                id.to_owned(),
            ));
        }
        let inner = Arc::get_mut(&mut self.inner).ok_or_else(|| {
            StorageError::Config(
                "server-side encryption must be set before the store is shared".into(),
            )
        })?;
        inner.client.sse = headers;
        Ok(self)
    }

    /// What the client retried and gave up on.
    pub fn counters(&self) -> &S3Counters {
        &self.inner.client.counters
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.inner.prefix)
    }

    /// A listed key without the prefix (a server that answered a listing with keys outside
    /// it gets them back whole rather than a panic).
    fn relative<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.inner.prefix.as_str()).unwrap_or(key)
    }

    fn blob_key(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        self.key(&format!(
            "blobs/{}/{}/{hex}",
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    /// `<prefix>uploads/<id>/`. Upload ids come back in URLs: allow nothing that could
    /// name another upload's objects (the trailing `/` keeps `ab` from covering `abc`).
    fn upload_dir(&self, id: &str) -> Result<String> {
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        Ok(self.key(&format!("uploads/{id}/")))
    }

    /// The objects of `dir` that hold bytes `0..size`, in order; `None` if they do not
    /// reach exactly `size` (acknowledged bytes are missing, or were overwritten by an
    /// append that was never acknowledged).
    fn chain(dir: &str, listed: &[Object], size: u64) -> Option<Vec<Object>> {
        let at: std::collections::HashMap<u64, &Object> = listed
            .iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(dir)?;
                (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| name.parse().ok())
                    .flatten()
                    .map(|offset| (offset, o))
            })
            .collect();
        let mut chain = Vec::new();
        let mut pos = 0;
        while pos < size {
            let o = at.get(&pos)?;
            // Zero-length chunks are never written, so this always advances.
            if o.size == 0 {
                return None;
            }
            pos += o.size;
            chain.push((*o).clone());
        }
        (pos == size).then_some(chain)
    }

    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        self.client().head_object(&self.blob_key(digest)).await
    }

    pub async fn open(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BlobReader>> {
        let range = range.filter(|(first, last)| first <= last);
        let Some(resp) = self
            .client()
            .get_object(&self.blob_key(digest), range)
            .await?
        else {
            return Ok(None);
        };
        let len = client::content_length(&resp);
        let total = match range {
            Some(_) if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT => resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, t)| t.parse().ok())
                .unwrap_or(len),
            _ => len,
        };
        Ok(Some(BlobReader {
            len,
            total,
            body: Box::pin(resp.bytes_stream().map_err(std::io::Error::other)),
        }))
    }

    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        self.client().delete_object(&self.blob_key(digest)).await
    }

    /// Nothing to create: an upload's objects appear with its first bytes, and the
    /// session itself lives in the metadata store.
    pub async fn create_upload(&self, id: &str) -> Result<()> {
        self.upload_dir(id).map(drop)
    }

    pub async fn append_upload<S, E>(
        &self,
        id: &str,
        offset: u64,
        state: &mut HashState,
        body: S,
        limit: u64,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let dir = self.upload_dir(id)?;
        // A turn before a byte of the body is read: with the bucket slow, appends wait here
        // (their clients held back by TCP) instead of each buffering its parts.
        let client = self.client();
        let _turn = match client.appends.clone().try_acquire_owned() {
            Ok(t) => t,
            Err(_) => {
                client
                    .counters
                    .waited_for_append
                    .fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    client.tuning.attempt_timeout,
                    client.appends.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(t)) => t,
                    _ => {
                        client.counters.failed.fetch_add(1, Ordering::Relaxed);
                        return Err(StorageError::S3Request {
                            op: "append",
                            source: "too many appends buffering; none finished in time".into(),
                        });
                    }
                }
            }
        };
        let listed = self.client().list_all(&dir).await?;
        if Self::chain(&dir, &listed, offset).is_none() {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        let key = format!("{dir}{offset:020}");
        // Work on a copy: the caller's state must keep matching the acknowledged size if
        // this append fails.
        let mut hash = state.clone();
        let mut size = offset;
        let mut parts = PartWriter::new(self.clone(), key.clone());
        let result = async {
            // Each part gets a buffer of exactly its size: a buffer grown by doubling, or
            // one split off while its neighbour is still uploading, would hold twice that.
            let mut buf = BytesMut::new();
            let mut body = std::pin::pin!(body);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::Body(Box::new(e)))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(StorageError::TooLarge { limit });
                }
                hash.update(&chunk);
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    if buf.capacity() == 0 {
                        buf = BytesMut::with_capacity(PART_SIZE);
                    }
                    let take = rest.len().min(PART_SIZE - buf.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == PART_SIZE {
                        parts.push(std::mem::take(&mut buf).freeze()).await?;
                    }
                }
            }
            failpoint::hit(failpoint::AFTER_TEMP_WRITE)
                .map_err(StorageError::io("writing an upload"))?;
            if !parts.started() {
                // An empty append writes nothing: chunks are never empty, so the chain of
                // offsets always advances.
                if buf.is_empty() {
                    return Ok(());
                }
                return self.client().put_object(&key, buf.freeze()).await;
            }
            if !buf.is_empty() {
                parts.push(buf.freeze()).await?;
            }
            parts.complete().await
        }
        .await;
        if let Err(e) = result {
            parts.abort().await;
            return Err(e);
        }
        *state = hash;
        Ok(size)
    }

    /// Uploads `data` as the next part of `mp`, starting the multipart upload first if
    /// this is its first part.
    async fn put_part(&self, key: &str, mp: &mut Option<Multipart>, data: Bytes) -> Result<()> {
        let mp = match mp {
            Some(m) => m,
            None => {
                let id = self.client().create_multipart(key).await?;
                mp.insert(Multipart {
                    key: key.to_owned(),
                    id,
                    parts: Vec::new(),
                })
            }
        };
        let n = u32::try_from(mp.parts.len() + 1).unwrap_or(u32::MAX);
        let etag = self.client().upload_part(&mp.key, &mp.id, n, data).await?;
        mp.parts.push((n, etag));
        Ok(())
    }

    async fn copy_part(
        &self,
        key: &str,
        mp: &mut Option<Multipart>,
        source: &str,
        range: (u64, u64),
    ) -> Result<()> {
        let mp = match mp {
            Some(m) => m,
            None => {
                let id = self.client().create_multipart(key).await?;
                mp.insert(Multipart {
                    key: key.to_owned(),
                    id,
                    parts: Vec::new(),
                })
            }
        };
        let n = u32::try_from(mp.parts.len() + 1).unwrap_or(u32::MAX);
        let etag = self
            .client()
            .upload_part_copy(&mp.key, &mp.id, n, source, range)
            .await?;
        mp.parts.push((n, etag));
        Ok(())
    }

    async fn complete(&self, mp: &mut Option<Multipart>) -> Result<()> {
        if let Some(m) = mp.as_ref() {
            self.client()
                .complete_multipart(&m.key, &m.id, &m.parts)
                .await?;
        }
        *mp = None;
        Ok(())
    }

    /// Aborts a multipart upload that failed; a failure to abort is only logged (the
    /// stale-upload sweep aborts what is left).
    async fn abort(&self, mp: Option<Multipart>) {
        if let Some(m) = mp
            && let Err(e) = self.client().abort_multipart(&m.key, &m.id).await
        {
            tracing::warn!(key = %m.key, error = %e, "could not abort an S3 multipart upload");
        }
    }

    pub async fn finish_upload(
        &self,
        id: &str,
        size: u64,
        state: &HashState,
        expected: &Digest,
    ) -> Result<()> {
        let dir = self.upload_dir(id)?;
        let listed = self.client().list_all(&dir).await?;
        let chain = Self::chain(&dir, &listed, size)
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => state.digest(),
            // Only SHA-256 is hashed while streaming; SHA-512 costs one more read here.
            Algorithm::Sha512 => {
                let mut h = Hasher::new(Algorithm::Sha512);
                for o in &chain {
                    self.read_range(&o.key, None, |b| h.update(b)).await?;
                }
                h.finish()
            }
        };
        if &actual != expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let dest = self.blob_key(expected);
        failpoint::hit(failpoint::BEFORE_RENAME)
            .map_err(StorageError::io("moving an upload into place"))?;
        // Same digest, same bytes: a blob already there is the right one.
        if self.client().head_object(&dest).await? != Some(size) {
            self.assemble(&dest, &chain, size).await?;
        }
        if let Err(e) = self.delete_keys(listed.into_iter().map(|o| o.key)).await {
            tracing::warn!(upload = id, error = %e, "finished upload left objects behind; the stale-upload sweep removes them");
        }
        Ok(())
    }

    /// Assembles the first `size` bytes of an upload as `dest`'s blob, unchecked: for
    /// sealed blobs, whose plaintext the caller has verified. The pieces are ciphertext
    /// already in their final form, so the server-side copies move sealed bytes only.
    pub(crate) async fn place_upload(&self, id: &str, size: u64, dest: &Digest) -> Result<()> {
        let dir = self.upload_dir(id)?;
        let listed = self.client().list_all(&dir).await?;
        let chain = Self::chain(&dir, &listed, size)
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
        let dest = self.blob_key(dest);
        failpoint::hit(failpoint::BEFORE_RENAME)
            .map_err(StorageError::io("moving an upload into place"))?;
        // Always written: sealed forms of one blob differ (fresh nonces), and the caller
        // places only the form sealed under the key the metadata store records.
        self.assemble(&dest, &chain, size).await?;
        if let Err(e) = self.delete_keys(listed.into_iter().map(|o| o.key)).await {
            tracing::warn!(upload = id, error = %e, "finished upload left objects behind; the stale-upload sweep removes them");
        }
        Ok(())
    }

    /// The stored bytes of an upload from `start`, at most `max`: `start` is where an
    /// append began, so an object of its own starts there.
    pub(crate) async fn read_upload_at(&self, id: &str, start: u64, max: u64) -> Result<Vec<u8>> {
        let dir = self.upload_dir(id)?;
        let key = format!("{dir}{start:020}");
        let resp = self
            .client()
            .get_object(&key, Some((0, max.saturating_sub(1))))
            .await?
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
        let mut out = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::S3Request {
                op: "GetObject",
                source: Box::new(e),
            })?;
            out.extend_from_slice(&chunk);
        }
        out.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(out)
    }

    /// The first `size` bytes of an upload, as stored, object after object.
    pub(crate) async fn read_upload(
        &self,
        id: &str,
        size: u64,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + use<>> {
        let dir = self.upload_dir(id)?;
        let listed = self.client().list_all(&dir).await?;
        let chain = Self::chain(&dir, &listed, size)
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
        let store = self.clone();
        let objects = futures_util::stream::iter(chain).then(move |o| {
            let store = store.clone();
            async move {
                let resp = store
                    .client()
                    .get_object(&o.key, None)
                    .await
                    .map_err(std::io::Error::other)?
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{} vanished while an upload was finishing", o.key),
                        )
                    })?;
                Ok::<_, std::io::Error>(resp.bytes_stream().map_err(std::io::Error::other))
            }
        });
        Ok(objects.try_flatten())
    }

    /// Writes the bytes of `chain` as the object `dest`: one copy inside S3 where it can,
    /// otherwise a multipart upload whose large pieces are copied inside S3 and whose runs
    /// of small chunks are streamed through here into parts of at least 5 MiB.
    async fn assemble(&self, dest: &str, chain: &[Object], size: u64) -> Result<()> {
        match chain {
            [] => return self.client().put_object(dest, Bytes::new()).await,
            [one] if one.size <= MAX_COPY => {
                return self.client().copy_object(dest, &one.key).await;
            }
            _ => {}
        }
        let target = MIN_PART.max(size.div_ceil(MAX_BUFFERED_PARTS));
        let mut mp: Option<Multipart> = None;
        let result = async {
            let mut buf = BytesMut::new();
            for o in chain {
                let mut pos = 0;
                while pos < o.size {
                    let rest = o.size - pos;
                    if buf.is_empty() && rest >= MIN_PART {
                        let piece = rest.min(MAX_COPY);
                        self.copy_part(dest, &mut mp, &o.key, (pos, pos + piece - 1))
                            .await?;
                        pos += piece;
                    } else {
                        let take = rest.min(target - buf.len() as u64);
                        self.read_range(&o.key, Some((pos, pos + take - 1)), |b| {
                            buf.extend_from_slice(b)
                        })
                        .await?;
                        pos += take;
                        if buf.len() as u64 >= target {
                            let part = buf.split().freeze();
                            self.put_part(dest, &mut mp, part).await?;
                        }
                    }
                }
            }
            match mp {
                // Everything fitted in one buffer: a plain upload.
                None => self.client().put_object(dest, buf.freeze()).await,
                Some(_) => {
                    if !buf.is_empty() {
                        self.put_part(dest, &mut mp, buf.freeze()).await?;
                    }
                    self.complete(&mut mp).await
                }
            }
        }
        .await;
        if result.is_err() {
            self.abort(mp).await;
        }
        result
    }

    /// Streams an object (or an inclusive range of it) into `sink`, checking that as many
    /// bytes came as were asked for.
    async fn read_range(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<u64> {
        let resp = self
            .client()
            .get_object(key, range)
            .await?
            .ok_or_else(|| StorageError::S3 {
                op: "GetObject",
                status: 404,
                code: "NoSuchKey".into(),
                message: format!("{key} vanished while an upload was finishing"),
            })?;
        let want = range.map(|(a, b)| b - a + 1);
        let mut got = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::S3Request {
                op: "GetObject",
                source: Box::new(e),
            })?;
            got += chunk.len() as u64;
            sink(&chunk);
        }
        if want.is_some_and(|w| w != got) {
            return Err(StorageError::S3 {
                op: "GetObject",
                status: 206,
                code: "ShortRead".into(),
                message: format!("{key}: {got} bytes instead of {}", want.unwrap_or(0)),
            });
        }
        Ok(got)
    }

    async fn delete_keys(&self, keys: impl Iterator<Item = String>) -> Result<()> {
        let results: Vec<Result<()>> = futures_util::stream::iter(keys)
            .map(|k| async move { self.client().delete_object(&k).await })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        let dir = self.upload_dir(id)?;
        let listed = self.client().list_all(&dir).await?;
        self.delete_keys(listed.into_iter().map(|o| o.key)).await
    }

    /// Removes every upload whose newest object is older than `age`, and aborts multipart
    /// uploads started longer ago than that (an append or a finish whose process died
    /// mid-way).
    pub async fn purge_stale_uploads(&self, age: Duration) -> Result<usize> {
        let root = self.key("uploads/");
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        // Keys list in order, so one upload's objects are consecutive (maybe across pages).
        let mut group: Option<(String, Vec<String>, bool)> = None;
        let mut token: Option<String> = None;
        loop {
            let (page, next) = self.client().list(&root, token.as_deref()).await?;
            for o in page {
                let id = o
                    .key
                    .strip_prefix(root.as_str())
                    .unwrap_or(&o.key)
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let fresh = o.last_modified.is_none_or(|t| t > cutoff);
                match &mut group {
                    Some((gid, keys, any_fresh)) if *gid == id => {
                        keys.push(o.key);
                        *any_fresh |= fresh;
                    }
                    _ => {
                        if let Some(done) = group.take() {
                            removed += self.purge_group(done).await?;
                        }
                        group = Some((id, vec![o.key], fresh));
                    }
                }
            }
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if let Some(done) = group.take() {
            removed += self.purge_group(done).await?;
        }
        // Appends (under uploads/) and blob assembly (under blobs/) abort their multipart
        // uploads on failure; these are the ones whose process died first.
        for area in [root, self.key("blobs/")] {
            for pending in self.client().list_multipart_uploads(&area).await? {
                if pending.initiated.is_some_and(|t| t < cutoff) {
                    self.client()
                        .abort_multipart(&pending.key, &pending.upload_id)
                        .await?;
                }
            }
        }
        Ok(removed)
    }

    async fn purge_group(
        &self,
        (_, keys, any_fresh): (String, Vec<String>, bool),
    ) -> Result<usize> {
        if any_fresh {
            return Ok(0);
        }
        self.delete_keys(keys.into_iter()).await?;
        Ok(1)
    }

    pub(crate) async fn verify_blob(
        &self,
        digest: &Digest,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<BlobCheck> {
        let key = self.blob_key(digest);
        if self.client().head_object(&key).await?.is_none() {
            return Ok(BlobCheck::Missing);
        }
        let mut h = Hasher::new(digest.algorithm());
        let size = self
            .read_range(&key, None, |b| {
                h.update(b);
                progress(b.len() as u64);
            })
            .await?;
        Ok(BlobCheck::Present {
            size,
            actual: h.finish(),
        })
    }

    /// One page of the listing of `blobs/`: entries with keys relative to the prefix,
    /// and the token of the next page.
    pub(crate) async fn list_blobs_page(
        &self,
        token: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, Option<String>)> {
        let (page, next) = self.client().list(&self.key("blobs/"), token).await?;
        let rel = page
            .into_iter()
            .map(|o| (self.relative(&o.key).to_owned(), o.size))
            .collect();
        Ok((rel, next))
    }

    /// A URL that serves the blob without credentials for the configured time, if
    /// redirects are on.
    pub fn presign_get(&self, digest: &Digest) -> Option<String> {
        let expiry = self.inner.redirect_expiry?;
        Some(self.client().presign_get(&self.blob_key(digest), expiry))
    }

    /// Writes an object at `rel` (relative to the prefix) directly, bypassing every
    /// check. For tests that plant strays or corrupt a blob, and for tools.
    #[doc(hidden)]
    pub async fn put_raw(&self, rel: &str, data: Bytes) -> Result<()> {
        self.client().put_object(&self.key(rel), data).await
    }

    /// Reads the object at `rel` (relative to the prefix) whole, bypassing every check. For
    /// tests that look at or tamper with stored bytes.
    #[doc(hidden)]
    pub async fn get_raw(&self, rel: &str) -> Result<Option<Bytes>> {
        let mut out = BytesMut::new();
        match self.client().head_object(&self.key(rel)).await? {
            None => Ok(None),
            Some(_) => {
                self.read_range(&self.key(rel), None, |b| out.extend_from_slice(b))
                    .await?;
                Ok(Some(out.freeze()))
            }
        }
    }

    /// The server-side encryption S3 reports for the object at `rel`. For tests.
    #[doc(hidden)]
    pub async fn object_encryption(&self, rel: &str) -> Result<Option<String>> {
        self.client()
            .head_header(&self.key(rel), "x-amz-server-side-encryption")
            .await
    }

    /// How many multipart uploads under the prefix are neither completed nor aborted. For
    /// tests: a failed append or finish must leave none.
    #[doc(hidden)]
    pub async fn pending_multipart_uploads(&self) -> Result<usize> {
        let mut n = 0;
        for area in ["uploads/", "blobs/"] {
            n += self
                .client()
                .list_multipart_uploads(&self.key(area))
                .await?
                .len();
        }
        Ok(n)
    }

    /// Lists objects under `rel` (relative to the prefix) with their sizes, keys relative
    /// to the prefix. For tests and tools.
    #[doc(hidden)]
    pub async fn list_raw(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let listed = self.client().list_all(&self.key(rel)).await?;
        Ok(listed
            .into_iter()
            .map(|o| (self.relative(&o.key).to_owned(), o.size))
            .collect())
    }
}

/// The parts of one append's multipart upload, sent one behind the receiving: part N
/// uploads while part N+1 arrives, so a large append is not slowed by waiting on each
/// part, and at most two parts (16 MiB) are in memory.
struct PartWriter {
    store: S3Store,
    key: String,
    mp: Option<Multipart>,
    in_flight: Option<(u32, tokio::task::JoinHandle<Result<String>>)>,
}

impl PartWriter {
    fn new(store: S3Store, key: String) -> PartWriter {
        PartWriter {
            store,
            key,
            mp: None,
            in_flight: None,
        }
    }

    fn started(&self) -> bool {
        self.mp.is_some()
    }

    /// Waits for the part in flight and records its ETag.
    async fn settle(&mut self) -> Result<()> {
        let Some((n, handle)) = self.in_flight.take() else {
            return Ok(());
        };
        let etag = handle.await.map_err(|e| StorageError::S3Request {
            op: "UploadPart",
            source: Box::new(e),
        })??;
        if let Some(mp) = self.mp.as_mut() {
            mp.parts.push((n, etag));
        }
        Ok(())
    }

    /// Sends `data` as the next part once the previous one is done.
    async fn push(&mut self, data: Bytes) -> Result<()> {
        self.settle().await?;
        let mp = match &mut self.mp {
            Some(m) => m,
            None => {
                let id = self.store.client().create_multipart(&self.key).await?;
                self.mp.insert(Multipart {
                    key: self.key.clone(),
                    id,
                    parts: Vec::new(),
                })
            }
        };
        let n = u32::try_from(mp.parts.len() + 1).unwrap_or(u32::MAX);
        let (store, key, id) = (self.store.clone(), mp.key.clone(), mp.id.clone());
        self.in_flight = Some((
            n,
            tokio::spawn(async move { store.client().upload_part(&key, &id, n, data).await }),
        ));
        Ok(())
    }

    async fn complete(&mut self) -> Result<()> {
        self.settle().await?;
        self.store.complete(&mut self.mp).await
    }

    /// Lets the part in flight end first, so the abort is not overtaken by it.
    async fn abort(mut self) {
        if let Some((_, handle)) = self.in_flight.take() {
            let _ = handle.await;
        }
        self.store.abort(self.mp.take()).await;
    }
}
