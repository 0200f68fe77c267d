//! Encrypted uploads and blobs on top of either backend: the backends store sealed bytes
//! as opaque bytes, and this layer turns plaintext into them and back (formats in
//! [`crate::seal`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_oci::{Algorithm, Digest};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::hash::Hasher;
use crate::seal::{
    BlobOpener, BlobSealer, DataKey, Keyring, SEGMENT, SealError, UploadOpener, UploadSealer,
    sealed_len, segment_offset,
};
use crate::{BlobReader, BlobStore, HashState, Result, StorageError};

/// A body error passed through the sealing stream to the backend, which reports it as
/// [`StorageError::Body`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Relayed(Box<dyn std::error::Error + Send + Sync>);

struct AppendState {
    hash: HashState,
    plain: u64,
    too_large: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tampered(e: SealError) -> StorageError {
    StorageError::Sealed(e)
}

impl BlobStore {
    /// [`BlobStore::append_upload`] for an encrypted registry: the body is sealed under a
    /// fresh key of this append (see [`crate::seal`]) before it reaches the backend.
    /// `offset` and the returned size count plaintext; `state` also keeps the stored size.
    pub async fn append_upload_sealed<S, E>(
        &self,
        keyring: &Keyring,
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
        let stored = match state.stored() {
            Some(n) => n,
            None if offset == 0 => 0,
            None => return Err(StorageError::CorruptHashState),
        };
        let shared = Arc::new(Mutex::new(AppendState {
            hash: state.clone(),
            plain: 0,
            too_large: false,
        }));
        let sealer = UploadSealer::new(keyring);
        let seen = Arc::clone(&shared);
        let sealed = futures_util::stream::unfold(
            (Box::pin(body), Some(sealer)),
            move |(mut body, sealer)| {
                let shared = Arc::clone(&seen);
                async move {
                    let mut sealer = sealer?;
                    loop {
                        match body.next().await {
                            Some(Ok(chunk)) => {
                                {
                                    let mut s = lock(&shared);
                                    s.plain += chunk.len() as u64;
                                    if offset.saturating_add(s.plain) > limit {
                                        s.too_large = true;
                                        let e = Relayed("upload too large".into());
                                        return Some((Err(e), (body, None)));
                                    }
                                    s.hash.update(&chunk);
                                }
                                let out = sealer.push(&chunk);
                                if !out.is_empty() {
                                    return Some((Ok(Bytes::from(out)), (body, Some(sealer))));
                                }
                            }
                            Some(Err(e)) => {
                                return Some((Err(Relayed(Box::new(e))), (body, None)));
                            }
                            None => {
                                let out = sealer.finish();
                                return Some((Ok(Bytes::from(out)), (body, None)));
                            }
                        }
                    }
                }
            },
        );
        let mut scratch = HashState::scratch();
        let appended = self
            .append_upload(id, stored, &mut scratch, sealed, u64::MAX)
            .await;
        let s = lock(&shared);
        if s.too_large {
            return Err(StorageError::TooLarge { limit });
        }
        let new_stored = appended?;
        let mut hash = s.hash.clone();
        hash.set_stored(new_stored);
        *state = hash;
        Ok(offset + s.plain)
    }

    /// [`BlobStore::finish_upload`] for an encrypted registry: verifies the upload's
    /// plaintext against `expected`, then seals it once, under the digest's data key `key`,
    /// as the blob's bytes.
    pub async fn finish_upload_sealed(
        &self,
        keyring: &Arc<Keyring>,
        id: &str,
        size: u64,
        state: &HashState,
        expected: &Digest,
        key: &DataKey,
    ) -> Result<()> {
        let stored = match state.stored() {
            Some(n) => n,
            None if size == 0 => 0,
            None => return Err(StorageError::CorruptHashState),
        };
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => state.digest(),
            // Hashed in a pass of its own: nothing is sealed under the digest's key before
            // the bytes are known to be that digest's.
            Algorithm::Sha512 => {
                let mut h = Hasher::new(Algorithm::Sha512);
                let mut plain = self.upload_plaintext(keyring, id, stored).await?;
                let mut n = 0u64;
                while let Some(piece) = plain.next().await {
                    let piece = piece.map_err(StorageError::io("reading an upload"))?;
                    n += piece.len() as u64;
                    h.update(&piece);
                }
                if n != size {
                    return Err(StorageError::UploadUnknown(id.to_owned()));
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
        let target = uuid::Uuid::new_v4().to_string();
        self.create_upload(&target).await?;
        let result = async {
            let plain = self.upload_plaintext(keyring, id, stored).await?;
            let failure: Arc<Mutex<Option<SealError>>> = Arc::default();
            let sealer = BlobSealer::new(key.clone(), expected.as_str(), size);
            let seen = Arc::clone(&failure);
            let sealed =
                futures_util::stream::unfold((plain, Some(sealer)), move |(mut plain, sealer)| {
                    let failure = Arc::clone(&seen);
                    async move {
                        let mut sealer = sealer?;
                        loop {
                            let out = match plain.next().await {
                                Some(Ok(piece)) => sealer.push(&piece),
                                Some(Err(e)) => return Some((Err(e), (plain, None))),
                                None => match sealer.finish() {
                                    Ok(out) => {
                                        return Some((Ok(Bytes::from(out)), (plain, None)));
                                    }
                                    Err(e) => {
                                        *lock(&failure) = Some(e.clone());
                                        let e = std::io::Error::other(e);
                                        return Some((Err(e), (plain, None)));
                                    }
                                },
                            };
                            match out {
                                Ok(out) if out.is_empty() => {}
                                Ok(out) => {
                                    return Some((Ok(Bytes::from(out)), (plain, Some(sealer))));
                                }
                                Err(e) => {
                                    *lock(&failure) = Some(e.clone());
                                    let e = std::io::Error::other(e);
                                    return Some((Err(e), (plain, None)));
                                }
                            }
                        }
                    }
                });
            let written = self
                .append_upload(&target, 0, &mut HashState::scratch(), sealed, u64::MAX)
                .await;
            if let Some(e) = lock(&failure).take() {
                return Err(tampered(e));
            }
            let written = written?;
            if written != sealed_len(size) {
                return Err(tampered(SealError::Tampered(format!(
                    "sealed {written} bytes for {expected}, expected {}",
                    sealed_len(size)
                ))));
            }
            self.place_upload(&target, written, expected).await
        }
        .await;
        if let Err(e) = result {
            if let Err(cut) = self.delete_upload(&target).await {
                tracing::warn!(upload = target, error = %cut, "could not remove a failed sealing");
            }
            return Err(e);
        }
        if let Err(e) = self.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "sealed upload left behind; the stale-upload sweep removes it");
        }
        Ok(())
    }

    /// The plaintext of an encrypted upload's first `stored` stored bytes.
    async fn upload_plaintext(
        &self,
        keyring: &Arc<Keyring>,
        id: &str,
        stored: u64,
    ) -> Result<std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>> {
        let raw: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = match self {
            BlobStore::Fs(s) => Box::pin(s.read_upload(id, stored).await?),
            BlobStore::S3(s) => Box::pin(s.read_upload(id, stored).await?),
        };
        let opener = UploadOpener::new(Arc::clone(keyring));
        Ok(Box::pin(futures_util::stream::unfold(
            (raw, Some(opener)),
            |(mut raw, opener)| async move {
                let mut opener = opener?;
                loop {
                    match raw.next().await {
                        Some(Ok(chunk)) => {
                            let mut out = Vec::new();
                            if let Err(e) = opener.push(&chunk, &mut out) {
                                return Some((Err(std::io::Error::other(e)), (raw, None)));
                            }
                            if !out.is_empty() {
                                return Some((Ok(Bytes::from(out)), (raw, Some(opener))));
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), (raw, None))),
                        None => {
                            return match opener.finish() {
                                Ok(()) => None,
                                Err(e) => Some((Err(std::io::Error::other(e)), (raw, None))),
                            };
                        }
                    }
                }
            },
        )))
    }

    /// Moves an upload into place without checking it (sealed bytes, checked by the
    /// caller as plaintext).
    async fn place_upload(&self, id: &str, size: u64, dest: &Digest) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.place_upload(id, size, dest).await,
            BlobStore::S3(s) => s.place_upload(id, size, dest).await,
        }
    }

    /// Opens a sealed blob of `size` plaintext bytes (the size from the metadata store),
    /// optionally at an inclusive plaintext range checked against `size`. Only the segments
    /// the range touches are read. The first of them is opened before this returns, so a
    /// blob that does not authenticate is an error rather than a response cut short; any
    /// later segment that fails ends the stream with an error, never with wrong bytes.
    /// `failures` counts blobs that failed authentication.
    pub async fn open_sealed(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
        size: u64,
        key: &DataKey,
        failures: Option<Arc<AtomicU64>>,
    ) -> Result<Option<BlobReader>> {
        let total = sealed_len(size);
        let (first, last) = match range {
            Some((a, b)) if a <= b && b < size => (a, b),
            _ => (0, size.saturating_sub(1)),
        };
        let len = if size == 0 { 0 } else { last - first + 1 };
        let seg_first = first / SEGMENT as u64;
        let seg_last = if size == 0 { 0 } else { last / SEGMENT as u64 };
        let ct_first = segment_offset(seg_first);
        let ct_last = segment_offset(seg_last + 1).min(total) - 1;
        let fail = |failures: &Option<Arc<AtomicU64>>, e: SealError| {
            if let Some(f) = failures {
                f.fetch_add(1, Ordering::Relaxed);
            }
            tracing::error!(%digest, error = %e, "sealed blob failed authentication");
            tampered(e)
        };
        let Some(reader) = self.open(digest, Some((ct_first, ct_last))).await? else {
            return Ok(None);
        };
        if reader.total != total || reader.len != ct_last - ct_first + 1 {
            return Err(fail(
                &failures,
                SealError::Tampered(format!(
                    "{digest} is stored as {} bytes, {total} expected",
                    reader.total
                )),
            ));
        }
        let mut plain = PlainStream {
            body: reader.body,
            opener: BlobOpener::new(key.clone(), digest.as_str(), size, seg_first),
            skip: first - seg_first * SEGMENT as u64,
            remaining: len,
            segments_wanted: seg_last + 1,
            failures: failures.clone(),
            done: false,
        };
        // Open the first segment now: a tampered blob is an error status, not a cut body.
        let head = match plain.next_piece().await {
            Ok(p) => p,
            Err(e) => {
                let e = match e.downcast::<SealError>() {
                    Ok(seal) => fail(&None, seal),
                    Err(e) => StorageError::io("reading a sealed blob")(e),
                };
                return Err(e);
            }
        };
        let rest = futures_util::stream::unfold(plain, |mut p| async move {
            match p.next_piece().await {
                Ok(Some(b)) => Some((Ok(b), p)),
                Ok(None) => None,
                Err(e) => {
                    p.done = true;
                    Some((Err(e), p))
                }
            }
        });
        let body = futures_util::stream::iter(head.map(Ok)).chain(rest);
        Ok(Some(BlobReader {
            len,
            total: size,
            body: Box::pin(body),
        }))
    }

    /// Re-reads a sealed blob whole for `fsck`: every segment must authenticate, and the
    /// plaintext is hashed in the digest's algorithm. `progress` is told the stored bytes
    /// read.
    pub async fn verify_sealed(
        &self,
        digest: &Digest,
        size: u64,
        key: &DataKey,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<crate::BlobCheck> {
        let Some(mut r) = self.open_sealed(digest, None, size, key, None).await? else {
            return Ok(crate::BlobCheck::Missing);
        };
        let mut h = Hasher::new(digest.algorithm());
        let mut n = 0u64;
        while let Some(piece) = r.body.next().await {
            let piece = piece.map_err(|e| match e.downcast::<SealError>() {
                Ok(seal) => StorageError::Sealed(seal),
                Err(e) => StorageError::io("reading a sealed blob")(e),
            })?;
            n += piece.len() as u64;
            h.update(&piece);
            progress(piece.len() as u64);
        }
        Ok(crate::BlobCheck::Present {
            size: n,
            actual: h.finish(),
        })
    }
}

struct PlainStream {
    body: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    opener: BlobOpener,
    skip: u64,
    remaining: u64,
    segments_wanted: u64,
    failures: Option<Arc<AtomicU64>>,
    done: bool,
}

impl PlainStream {
    async fn next_piece(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.done {
                return Ok(None);
            }
            // Every segment asked for is opened, even when the range needs none of its
            // bytes (an empty blob's one segment).
            if self.remaining == 0 && self.opener.position() >= self.segments_wanted {
                self.done = true;
                return Ok(None);
            }
            let Some(chunk) = self.body.next().await else {
                self.done = true;
                let e = SealError::Tampered("sealed blob ended early".into());
                return Err(self.failed(e));
            };
            let chunk = chunk?;
            let mut out = Vec::new();
            if let Err(e) = self.opener.push(&chunk, &mut out) {
                self.done = true;
                return Err(self.failed(e));
            }
            if self.opener.position() > self.segments_wanted {
                self.done = true;
                return Err(self.failed(SealError::Tampered("read past the range".into())));
            }
            let mut piece = Bytes::from(out);
            let skip = self.skip.min(piece.len() as u64);
            self.skip -= skip;
            piece = piece.slice(skip as usize..);
            if piece.len() as u64 > self.remaining {
                piece.truncate(self.remaining as usize);
            }
            self.remaining -= piece.len() as u64;
            if !piece.is_empty() {
                return Ok(Some(piece));
            }
        }
    }

    fn failed(&self, e: SealError) -> std::io::Error {
        if let Some(f) = &self.failures {
            f.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(error = %e, "sealed blob failed authentication while streaming");
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
