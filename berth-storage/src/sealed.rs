//! Encrypted uploads and blobs on top of either backend: the backends store sealed bytes
//! as opaque bytes, and this layer turns plaintext into them and back (format in
//! [`crate::seal`]).
//!
//! An upload is sealed as it arrives, already in its blob's final form, under the upload's
//! own random key; completion re-seals only the last segment (as final) and records the
//! key as the blob's data key, so it costs no pass over the bytes. Sealing and opening run
//! on the blocking pool, a batch of segments at a time, two batches in flight, so AES
//! overlaps hashing and I/O.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_oci::{Algorithm, Digest};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::hash::Hasher;
use crate::seal::{
    DataKey, Keyring, SEGMENT, STRIDE, SealError, SegmentBatch, UPLOAD_CONTEXT, sealed_len,
    segment_offset, segments, upload_len,
};
use crate::{BlobReader, BlobStore, HashState, Result, StorageError};

/// Segments sealed or opened per blocking task (1 MiB of plaintext).
const BATCH: usize = 16;
/// Batches in flight at once.
const IN_FLIGHT: usize = 2;
/// Body chunks queued for an upload's hashing thread.
const HASH_QUEUE: usize = 32;

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A body error passed through the sealing stream to the backend, which reports it as
/// [`StorageError::Body`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Relayed(Box<dyn std::error::Error + Send + Sync>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tampered(e: SealError) -> StorageError {
    StorageError::Sealed(e)
}

/// What the sealing stream leaves for its caller once the body ended.
#[derive(Default)]
struct Sealing {
    /// Plaintext bytes taken from the body.
    plain: u64,
    /// The last segment's plaintext, held back (appends only).
    tail: Vec<u8>,
    /// Segments written to the backend.
    written: u64,
    /// The body went past the limit.
    too_large: bool,
}

/// Seals `body` into stored bytes from segment `batch.first()` (`batch` may already hold
/// plaintext carried over). `inspect` sees every body chunk first (hashing, limits), and
/// `hash_to`, if given, gets every chunk too (a hashing thread, off this task). With
/// `final_at_end` the last segment is sealed as final; otherwise it is held back in
/// `shared.tail` for the caller, who writes it as an append of its own.
fn seal_stream<S, E, F>(
    body: S,
    batch: SegmentBatch,
    key: DataKey,
    final_at_end: bool,
    shared: Arc<Mutex<Sealing>>,
    inspect: F,
    hash_to: Option<tokio::sync::mpsc::Sender<Bytes>>,
) -> impl Stream<Item = std::result::Result<Bytes, Relayed>> + Send
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut(&[u8]) -> std::result::Result<(), Relayed> + Send,
{
    struct St<S, F> {
        body: Pin<Box<S>>,
        batch: Option<SegmentBatch>,
        chunk: Bytes,
        inspect: F,
        shared: Arc<Mutex<Sealing>>,
        hash_to: Option<tokio::sync::mpsc::Sender<Bytes>>,
    }
    let batches = futures_util::stream::unfold(
        St {
            body: Box::pin(body),
            batch: Some(batch),
            chunk: Bytes::new(),
            inspect,
            shared,
            hash_to,
        },
        move |mut st| async move {
            let mut batch = st.batch.take()?;
            loop {
                if !st.chunk.is_empty() {
                    if batch.is_full() {
                        // More plaintext follows, so this batch holds no last segment.
                        let next = SegmentBatch::new(batch.first() + batch.started() as u64, BATCH);
                        st.batch = Some(next);
                        lock(&st.shared).written += batch.started() as u64;
                        return Some((Ok((batch, false)), st));
                    }
                    let n = batch.push(&st.chunk);
                    st.chunk.advance(n);
                    continue;
                }
                match st.body.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = (st.inspect)(&chunk) {
                            return Some((Err(e), st));
                        }
                        if let Some(tx) = &st.hash_to
                            && tx.send(chunk.clone()).await.is_err()
                        {
                            return Some((Err(Relayed("the upload's hasher stopped".into())), st));
                        }
                        lock(&st.shared).plain += chunk.len() as u64;
                        st.chunk = chunk;
                    }
                    Some(Err(e)) => return Some((Err(Relayed(Box::new(e))), st)),
                    None => {
                        if !final_at_end {
                            let tail = batch.split_last();
                            lock(&st.shared).tail = tail;
                            if batch.started() == 0 {
                                return None;
                            }
                        }
                        lock(&st.shared).written += batch.started().max(1) as u64;
                        return Some((Ok((batch, final_at_end)), st));
                    }
                }
            }
        },
    );
    batches
        .map(move |item| {
            let key = key.clone();
            async move {
                let (batch, last) = item?;
                tokio::task::spawn_blocking(move || Bytes::from(batch.seal(&key, last)))
                    .await
                    .map_err(|e| Relayed(Box::new(e)))
            }
        })
        .buffered(IN_FLIGHT)
}

/// Where a sealed blob's stored bytes come from.
enum Source {
    /// A blob file: each batch is read with one positioned read straight into the buffer
    /// that is opened in place, so its bytes are not copied on the way.
    File { file: Arc<std::fs::File>, at: u64 },
    /// A byte stream (S3, uploads), copied into that buffer.
    Stream { raw: ByteStream, carry: Bytes },
}

/// One batch of stored segments, to be opened on the blocking pool.
enum Fill {
    /// Still on disk: read it there.
    Read {
        file: Arc<std::fs::File>,
        at: u64,
        len: usize,
    },
    /// Already gathered from a stream.
    Ready(BytesMut),
}

/// Reads stored segments a batch at a time.
struct Batches {
    source: Source,
    key: DataKey,
    total: u64,
    index: u64,
    end: u64,
}

impl Batches {
    async fn next_batch(&mut self) -> Option<std::io::Result<(Fill, u64)>> {
        if self.index >= self.end {
            return None;
        }
        let index = self.index;
        let n = (BATCH as u64).min(self.end - index);
        let want: usize = (index..index + n)
            .map(|i| self.key.stored_segment_len(self.total, i))
            .sum();
        let fill = match &mut self.source {
            Source::File { file, at } => {
                let fill = Fill::Read {
                    file: Arc::clone(file),
                    at: *at,
                    len: want,
                };
                *at += want as u64;
                fill
            }
            Source::Stream { raw, carry } => {
                let mut buf = BytesMut::with_capacity(want);
                loop {
                    if !carry.is_empty() {
                        let take = (want - buf.len()).min(carry.len());
                        buf.extend_from_slice(&carry[..take]);
                        carry.advance(take);
                    }
                    if buf.len() == want {
                        break;
                    }
                    match raw.next().await {
                        Some(Ok(c)) => *carry = c,
                        Some(Err(e)) => {
                            self.index = self.end;
                            return Some(Err(e));
                        }
                        None => {
                            self.index = self.end;
                            return Some(Err(ended_early()));
                        }
                    }
                }
                Fill::Ready(buf)
            }
        };
        self.index += n;
        Some(Ok((fill, index)))
    }
}

fn ended_early() -> std::io::Error {
    let e = SealError::Tampered("sealed bytes ended early".into());
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Reads (if still on disk) and opens one batch in place, and hands out each segment's
/// plaintext as a slice of that one buffer: no byte is copied after the read.
async fn open_batch(
    key: DataKey,
    total: u64,
    item: std::io::Result<(Fill, u64)>,
) -> std::io::Result<Vec<Bytes>> {
    let (fill, index) = item?;
    tokio::task::spawn_blocking(move || {
        let mut buf = match fill {
            Fill::Ready(buf) => buf,
            Fill::Read { file, at, len } => {
                use std::os::unix::fs::FileExt;
                let mut buf = BytesMut::zeroed(len);
                file.read_exact_at(&mut buf, at).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        ended_early()
                    } else {
                        e
                    }
                })?;
                buf
            }
        };
        let pieces = key
            .open_stored_in_place(total, index, &mut buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut out = Vec::with_capacity(pieces.len());
        let mut at = 0;
        for (start, n) in pieces {
            buf.advance(start - at);
            out.push(buf.split_to(n).freeze());
            at = start + n;
        }
        Ok(out)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Opens the stored bytes of segments `first..end` of a blob of `total` plaintext bytes,
/// yielding each segment's plaintext. Ends after the first error.
fn open_stream(source: Source, key: DataKey, total: u64, first: u64, end: u64) -> ByteStream {
    let batches = futures_util::stream::unfold(
        Batches {
            source,
            key: key.clone(),
            total,
            index: first,
            end,
        },
        |mut b| async move { b.next_batch().await.map(|item| (item, b)) },
    );
    let opened = Box::pin(
        batches
            .map(move |item| open_batch(key.clone(), total, item))
            .buffered(IN_FLIGHT),
    );
    Box::pin(futures_util::stream::unfold(
        (opened, Vec::new().into_iter(), false),
        |(mut s, mut pending, done)| async move {
            if let Some(piece) = pending.next() {
                return Some((Ok(piece), (s, pending, done)));
            }
            if done {
                return None;
            }
            match s.next().await? {
                Ok(pieces) => {
                    let mut pending = pieces.into_iter();
                    let first = pending.next().unwrap_or_default();
                    Some((Ok(first), (s, pending, false)))
                }
                Err(e) => Some((Err(e), (s, pending, true))),
            }
        },
    ))
}

/// What a completed sealed upload hands the metadata store: its key, wrapped for the
/// digest.
pub struct SealedUpload {
    pub key: DataKey,
    pub key_id: String,
    pub wrapped: Vec<u8>,
}

impl BlobStore {
    /// The upload's own key from its saved state, or a fresh one for an upload's first
    /// bytes.
    fn upload_key(
        keyring: &Keyring,
        id: &str,
        offset: u64,
        state: &HashState,
    ) -> Result<(DataKey, String, Vec<u8>)> {
        match state.upload_key() {
            Some((kid, wrapped)) => {
                let key = keyring
                    .open_data_key(kid, UPLOAD_CONTEXT, wrapped)
                    .map_err(tampered)?;
                Ok((key, kid.to_owned(), wrapped.to_vec()))
            }
            None if offset == 0 => Ok(keyring.new_data_key(UPLOAD_CONTEXT)),
            // Begun in the earlier record format, or not sealed at all.
            None => Err(StorageError::UploadUnknown(id.to_owned())),
        }
    }

    async fn read_upload_at(&self, id: &str, start: u64, max: u64) -> Result<Vec<u8>> {
        match self {
            BlobStore::Fs(s) => s.read_upload_at(id, start, max).await,
            BlobStore::S3(s) => s.read_upload_at(id, start, max).await,
        }
    }

    /// Keeps the stored bytes of an upload's last segment beside it until the segment
    /// sealed again is durable (filesystem; on S3 the object that holds it is replaced
    /// whole or not at all).
    async fn keep_tail(&self, id: &str, stored: &[u8]) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.keep_upload_tail(id, stored.to_vec()).await,
            BlobStore::S3(_) => Ok(()),
        }
    }

    async fn kept_tail(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match self {
            BlobStore::Fs(s) => s.kept_upload_tail(id).await,
            BlobStore::S3(_) => Ok(None),
        }
    }

    async fn drop_tail(&self, id: &str) {
        if let BlobStore::Fs(s) = self
            && let Err(e) = s.drop_upload_tail(id).await
        {
            tracing::warn!(upload = id, error = %e, "an upload's kept last segment stays behind");
        }
    }

    /// The first `len` plaintext bytes of segment `index` of an open upload, and the
    /// segment as stored. The segment stored there may be longer than `len` (an append
    /// continued it and was not acknowledged), or already final (a completion that failed
    /// later): its first `len` bytes are the acknowledged ones either way. If it does not
    /// authenticate (the process died while it was sealed again), the copy kept beside the
    /// upload is used.
    async fn upload_segment(
        &self,
        id: &str,
        key: &DataKey,
        index: u64,
        len: usize,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let stored = self
            .read_upload_at(id, segment_offset(index), STRIDE as u64)
            .await?;
        if let Some(found) = open_prefix(key, index, len, &stored) {
            return Ok(found);
        }
        if let Some(kept) = self.kept_tail(id).await?
            && let Some(found) = open_prefix(key, index, len, &kept)
        {
            tracing::info!(
                upload = id,
                segment = index,
                "an upload's last segment was cut off while sealed again; using the copy kept beside it"
            );
            return Ok(found);
        }
        // Neither the upload nor a kept copy holds the acknowledged bytes (lost with the
        // machine rather than the process): the client must push again.
        tracing::warn!(
            upload = id,
            segment = index,
            "an upload's last segment does not authenticate"
        );
        Err(StorageError::UploadUnknown(id.to_owned()))
    }

    /// [`BlobStore::append_upload`] for an encrypted registry: the body is sealed as it
    /// arrives, in the blob's final format, under the upload's own key (kept wrapped in
    /// `state`). `offset` and the returned size count plaintext; `state` also keeps the
    /// stored size.
    ///
    /// A partial last segment left by the previous append is read back, opened and sealed
    /// again (fresh nonce) with the new bytes. The last segment of every append is written
    /// as an append of its own, so the next append (or completion) that re-seals it starts
    /// where an object starts on S3.
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
        let (key, kid, wrapped) = Self::upload_key(keyring, id, offset, state)?;
        let index = offset / SEGMENT as u64;
        let carried = (offset % SEGMENT as u64) as usize;
        let start = segment_offset(index);
        let (head, kept) = if carried > 0 {
            let (head, stored) = self.upload_segment(id, &key, index, carried).await?;
            // The append begins by cutting this segment off: keep it until the segment
            // sealed again is durable, so a crash in between loses nothing acknowledged.
            self.keep_tail(id, &stored).await?;
            (head, Some(stored))
        } else {
            (Vec::new(), None)
        };
        let mut batch = SegmentBatch::new(index, BATCH);
        batch.push(&head);
        let shared = Arc::new(Mutex::new(Sealing::default()));
        // SHA-256 on a thread of its own, fed through a short queue: receiving, hashing,
        // sealing (blocking pool) and writing (the backend's writer) overlap.
        let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
        let (hashed_tx, hashed_rx) = tokio::sync::oneshot::channel::<HashState>();
        let mut hash = state.clone();
        std::thread::Builder::new()
            .name("berth-upload-hash".into())
            .spawn(move || {
                while let Some(chunk) = hash_rx.blocking_recv() {
                    hash.update(&chunk);
                }
                let _ = hashed_tx.send(hash);
            })
            .map_err(StorageError::io("starting an upload hasher"))?;
        let seen = Arc::clone(&shared);
        let mut taken = offset;
        let inspect = move |chunk: &[u8]| {
            taken = taken.saturating_add(chunk.len() as u64);
            if taken > limit {
                lock(&seen).too_large = true;
                return Err(Relayed("upload too large".into()));
            }
            Ok(())
        };
        let sealed = seal_stream(
            body,
            batch,
            key.clone(),
            false,
            Arc::clone(&shared),
            inspect,
            Some(hash_tx),
        );
        let mut scratch = HashState::scratch();
        let first = self
            .append_upload(id, start, &mut scratch, sealed, u64::MAX)
            .await;
        let result = async {
            let written = first?;
            let (tail, segs) = {
                let s = lock(&shared);
                (s.tail.clone(), s.written)
            };
            if !tail.is_empty() {
                let mut last = SegmentBatch::new(index + segs, 1);
                last.push(&tail);
                let bytes = Bytes::from(last.seal(&key, false));
                let once = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
                self.append_upload(id, written, &mut HashState::scratch(), once, u64::MAX)
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // The first append began by cutting the upload back to where the carried
            // segment starts: put the acknowledged segment back as it was stored (no new
            // sealing). If that fails too, the kept copy still holds it.
            if let Some(stored) = kept {
                let once =
                    futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(stored))]);
                match self
                    .append_upload(id, start, &mut HashState::scratch(), once, u64::MAX)
                    .await
                {
                    Ok(_) => self.drop_tail(id).await,
                    Err(e) => {
                        tracing::warn!(upload = id, error = %e, "could not restore an upload's last segment");
                    }
                }
            }
            if lock(&shared).too_large {
                return Err(StorageError::TooLarge { limit });
            }
            return Err(e);
        }
        if kept.is_some() {
            self.drop_tail(id).await;
        }
        let plain = lock(&shared).plain;
        let new = offset + plain;
        // The sealing stream (and the queue's sender with it) is gone: the hasher has
        // seen every chunk.
        let mut next = hashed_rx
            .await
            .map_err(|e| StorageError::io("hashing an upload")(std::io::Error::other(e)))?;
        next.set_stored(upload_len(new));
        next.set_upload_key(kid, wrapped);
        *state = next;
        Ok(new)
    }

    /// Completes an encrypted upload of `size` plaintext bytes: checks its digest, seals
    /// its last segment again as final (the only bytes rewritten), and returns its key
    /// wrapped for the digest, for the metadata store. Then [`BlobStore::place_sealed`]
    /// moves it into place if that key is the one recorded.
    pub async fn complete_sealed_upload(
        &self,
        keyring: &Arc<Keyring>,
        id: &str,
        size: u64,
        state: &HashState,
        expected: &Digest,
    ) -> Result<SealedUpload> {
        let (key, kid, wrapped) = Self::upload_key(keyring, id, size, state)?;
        if expected.algorithm() == Algorithm::Sha256 {
            let actual = state.digest();
            if &actual != expected {
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let index = size.saturating_sub(1) / SEGMENT as u64;
        let len = (size - index * SEGMENT as u64) as usize;
        let tail = if size == 0 {
            Vec::new()
        } else {
            let (tail, stored) = self.upload_segment(id, &key, index, len).await?;
            // Cut off and written again as final below: kept until that is durable.
            self.keep_tail(id, &stored).await?;
            tail
        };
        let mut last = SegmentBatch::new(index, 1);
        last.push(&tail);
        let bytes = Bytes::from(last.seal(&key, true));
        let once = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
        self.append_upload(
            id,
            segment_offset(index),
            &mut HashState::scratch(),
            once,
            u64::MAX,
        )
        .await?;
        if size > 0 {
            self.drop_tail(id).await;
        }
        if expected.algorithm() == Algorithm::Sha512 {
            let mut plain = self.upload_plaintext(id, size, &key).await?;
            let mut h = Hasher::new(Algorithm::Sha512);
            while let Some(piece) = plain.next().await {
                h.update(&piece.map_err(read_error)?);
            }
            let actual = h.finish();
            if &actual != expected {
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let (key_id, wrapped) = keyring
            .rewrap_for(&kid, UPLOAD_CONTEXT, expected.as_str().as_bytes(), &wrapped)
            .map_err(tampered)?;
        Ok(SealedUpload {
            key,
            key_id,
            wrapped,
        })
    }

    /// Moves a completed sealed upload into place as `dest`'s blob.
    pub async fn place_sealed(&self, id: &str, size: u64, dest: &Digest) -> Result<()> {
        self.place_upload(id, sealed_len(size), dest).await
    }

    /// The plaintext of a completed sealed upload.
    async fn upload_plaintext(&self, id: &str, size: u64, key: &DataKey) -> Result<ByteStream> {
        let stored = sealed_len(size);
        let raw: ByteStream = match self {
            BlobStore::Fs(s) => Box::pin(s.read_upload(id, stored).await?),
            BlobStore::S3(s) => Box::pin(s.read_upload(id, stored).await?),
        };
        let source = Source::Stream {
            raw,
            carry: Bytes::new(),
        };
        Ok(open_stream(source, key.clone(), size, 0, segments(size)))
    }

    /// Seals a completed upload again under `key` (another upload of the same digest
    /// recorded its key first, and its bytes are not in place) and places it.
    pub async fn reseal_upload(
        &self,
        id: &str,
        size: u64,
        upload_key: &DataKey,
        expected: &Digest,
        key: &DataKey,
    ) -> Result<()> {
        let plain = self.upload_plaintext(id, size, upload_key).await?;
        self.seal_blob(expected, size, key, plain).await?;
        if let Err(e) = self.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "sealed upload left behind; the stale-upload sweep removes it");
        }
        Ok(())
    }

    /// Writes `plain` (`size` bytes that must hash to `digest`) as `digest`'s sealed blob
    /// under `key`, replacing what is stored (the caller decides that is safe). Nothing is
    /// placed unless the bytes match.
    pub async fn seal_blob<S, E>(
        &self,
        digest: &Digest,
        size: u64,
        key: &DataKey,
        plain: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let target = uuid::Uuid::new_v4().to_string();
        self.create_upload(&target).await?;
        let shared = Arc::new(Mutex::new(Sealing::default()));
        let hasher = Arc::new(Mutex::new(Some(Hasher::new(digest.algorithm()))));
        let h = Arc::clone(&hasher);
        let mut n = 0u64;
        let inspect = move |chunk: &[u8]| {
            n += chunk.len() as u64;
            if n > size {
                return Err(Relayed("more bytes than the blob's size".into()));
            }
            if let Some(h) = lock(&h).as_mut() {
                h.update(chunk);
            }
            Ok(())
        };
        let sealed = seal_stream(
            plain,
            SegmentBatch::new(0, BATCH),
            key.clone(),
            true,
            Arc::clone(&shared),
            inspect,
            None,
        );
        let result = async {
            let written = self
                .append_upload(&target, 0, &mut HashState::scratch(), sealed, u64::MAX)
                .await?;
            let got = lock(&shared).plain;
            let actual = lock(&hasher)
                .take()
                .map(Hasher::finish)
                .ok_or(StorageError::CorruptHashState)?;
            if got != size || &actual != digest || written != sealed_len(size) {
                return Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            self.place_upload(&target, written, digest).await
        }
        .await;
        if let Err(e) = result {
            if let Err(cut) = self.delete_upload(&target).await {
                tracing::warn!(upload = target, error = %cut, "could not remove a failed sealing");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Moves an upload into place without checking it (sealed bytes, checked by the
    /// caller as plaintext).
    pub(crate) async fn place_upload(&self, id: &str, size: u64, dest: &Digest) -> Result<()> {
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
        let total = key.sealed_len(size);
        let (first, last) = match range {
            Some((a, b)) if a <= b && b < size => (a, b),
            _ => (0, size.saturating_sub(1)),
        };
        let len = if size == 0 { 0 } else { last - first + 1 };
        let seg_first = first / SEGMENT as u64;
        let seg_last = if size == 0 { 0 } else { last / SEGMENT as u64 };
        let ct_first = key.segment_offset(seg_first);
        let ct_last = key.segment_offset(seg_last + 1).min(total) - 1;
        let count = |failures: &Option<Arc<AtomicU64>>| {
            if let Some(f) = failures {
                f.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (source, stored, stored_len) = match self {
            // Straight from the file into the buffers that are opened in place.
            BlobStore::Fs(s) => {
                let Some((file, stored)) = s.open_file(digest).await? else {
                    return Ok(None);
                };
                let source = Source::File { file, at: ct_first };
                (source, stored, ct_last - ct_first + 1)
            }
            BlobStore::S3(_) => {
                let Some(reader) = self.open(digest, Some((ct_first, ct_last))).await? else {
                    return Ok(None);
                };
                let source = Source::Stream {
                    raw: reader.body,
                    carry: Bytes::new(),
                };
                (source, reader.total, reader.len)
            }
        };
        if stored != total || stored_len != ct_last - ct_first + 1 {
            count(&failures);
            let e = SealError::Tampered(format!(
                "{digest} is stored as {stored} bytes, {total} expected"
            ));
            tracing::error!(%digest, error = %e, "sealed blob failed authentication");
            return Err(tampered(e));
        }
        let mut opened = open_stream(source, key.clone(), size, seg_first, seg_last + 1);
        // Open the first batch now: a tampered blob is an error status, not a cut body.
        let head = match opened.next().await {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                return Err(match e.downcast::<SealError>() {
                    Ok(seal) => {
                        count(&failures);
                        tracing::error!(%digest, error = %seal, "sealed blob failed authentication");
                        tampered(seal)
                    }
                    Err(e) => StorageError::io("reading a sealed blob")(e),
                });
            }
            None => None,
        };
        let mut skip = first - seg_first * SEGMENT as u64;
        let mut remaining = len;
        let label = digest.to_string();
        let body = futures_util::stream::iter(head.map(Ok))
            .chain(opened)
            .map(move |piece| match piece {
                Ok(mut p) => {
                    let s = skip.min(p.len() as u64);
                    skip -= s;
                    p.advance(s as usize);
                    if p.len() as u64 > remaining {
                        p.truncate(remaining as usize);
                    }
                    remaining -= p.len() as u64;
                    Ok(p)
                }
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        count(&failures);
                        tracing::error!(digest = %label, error = %e, "sealed blob failed authentication while streaming");
                    }
                    Err(e)
                }
            })
            .filter(|p| futures_util::future::ready(!matches!(p, Ok(b) if b.is_empty())));
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
            let piece = piece.map_err(read_error)?;
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

fn read_error(e: std::io::Error) -> StorageError {
    match e.downcast::<SealError>() {
        Ok(seal) => StorageError::Sealed(seal),
        Err(e) => StorageError::io("reading a sealed blob")(e),
    }
}

/// Opens `stored` as segment `index` (not final, or final) holding at least `len`
/// plaintext bytes: its first `len` plaintext bytes and the segment as stored.
fn open_prefix(key: &DataKey, index: u64, len: usize, stored: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    for last in [false, true] {
        let mut seg = stored.to_vec();
        if let Ok(n) = key.open_segment(index, last, &mut seg)
            && n >= len
        {
            let plain = seg[crate::seal::NONCE..crate::seal::NONCE + len].to_vec();
            return Some((plain, stored[..n + crate::seal::OVERHEAD].to_vec()));
        }
    }
    None
}
