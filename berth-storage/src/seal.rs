//! Encryption at rest: the keyring of key-encryption keys (KEKs), per-blob data keys, and
//! the two sealed formats (upload records and blob segments). AES-256-GCM through ring.
//!
//! Blob format: the plaintext cut into [`SEGMENT`]-byte segments (the last may be shorter,
//! an empty blob is one empty segment), each stored as its ciphertext and 16-byte tag, back
//! to back, with nothing else in the file: where segment `i` starts follows from `i`, so a
//! `Range` read fetches only the segments it needs. The nonce is the segment index and a
//! final-segment flag; the associated data is the digest, the index and the flag. The data
//! key is per digest (kept wrapped in the metadata store, the wrap bound to the digest), and
//! only the bytes that hash to that digest are ever sealed under it, so sealing twice
//! (a retried completion, two uploads of the same blob racing) writes the same ciphertext
//! under the same nonces: no (key, nonce) pair ever protects two different plaintexts.
//!
//! Upload format: each append is a header (a fresh random key for this append, wrapped by
//! the active KEK) followed by records (a length and a sealed piece of at most [`RECORD`]
//! bytes, nonce = record counter under that append's key). A retried append gets a new key,
//! so overwriting unacknowledged bytes never reuses a nonce. The upload is decrypted once,
//! at completion, and sealed as a blob.

use std::fmt;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes per blob segment.
pub const SEGMENT: usize = 64 * 1024;
/// The GCM tag after every sealed piece.
pub const TAG: usize = 16;
/// Plaintext bytes per upload record at most.
pub const RECORD: usize = 256 * 1024;
/// Length of a key-encryption key and of a data key.
pub const KEY_LEN: usize = 32;

const UPLOAD_MAGIC: &[u8; 4] = b"BUP1";
const WRAP_CONTEXT: &[u8] = b"berth-wrap-v1";
const BLOB_CONTEXT: &[u8] = b"berth-blob-v1";
const RECORD_CONTEXT: &[u8] = b"berth-upload-record-v1";

/// Why sealed bytes or keys could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("key {0} is not in the keyring")]
    UnknownKey(String),
    #[error("a key wrapped by {0} does not open with it (wrong key, or tampered)")]
    Unwrap(String),
    #[error("sealed data failed authentication: {0}")]
    Tampered(String),
    #[error("keyring: {0}")]
    Keyring(String),
}

struct Kek {
    id: String,
    key: LessSafeKey,
}

/// The key-encryption keys Berth knows, one of them active (new wraps use it).
pub struct Keyring {
    keys: Vec<Kek>,
    /// Which key new wraps use; switched at run time by `berth keys rotate` (through the
    /// metadata store) without a restart.
    active: std::sync::atomic::AtomicUsize,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("active", &self.active_id())
            .finish()
    }
}

/// A key id: short, printable, no separators that could blur a wrapped record.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Keyring {
    /// A keyring of `(id, key)` pairs with `active` the one new wraps use.
    pub fn new(keys: Vec<(String, [u8; KEY_LEN])>, active: &str) -> Result<Keyring, SealError> {
        let mut ring_keys: Vec<Kek> = Vec::with_capacity(keys.len());
        for (id, bytes) in keys {
            if !valid_key_id(&id) {
                return Err(SealError::Keyring(format!(
                    "key id {id:?} must be 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
            if ring_keys.iter().any(|k| k.id == id) {
                return Err(SealError::Keyring(format!("key id {id} appears twice")));
            }
            ring_keys.push(Kek {
                id,
                key: aes_key(&bytes),
            });
        }
        let active = ring_keys
            .iter()
            .position(|k| k.id == active)
            .ok_or_else(|| {
                SealError::Keyring(format!("the active key {active} is not in the keyring"))
            })?;
        Ok(Keyring {
            keys: ring_keys,
            active: std::sync::atomic::AtomicUsize::new(active),
            rng: SystemRandom::new(),
        })
    }

    fn active_kek(&self) -> &Kek {
        &self.keys[self.active.load(std::sync::atomic::Ordering::Relaxed)]
    }

    pub fn active_id(&self) -> &str {
        &self.active_kek().id
    }

    /// Makes `id` the key new wraps use.
    pub fn set_active(&self, id: &str) -> Result<(), SealError> {
        let i = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        self.active.store(i, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether the keyring has a key `id`.
    pub fn has(&self, id: &str) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    fn kek(&self, id: &str) -> Result<&Kek, SealError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))
    }

    pub(crate) fn random<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        // The system generator failing is an unusable machine, not an input condition.
        if self.rng.fill(&mut out).is_err() {
            panic!("the system random number generator failed");
        }
        out
    }

    /// Seals `secret` under the active KEK, bound to `context` (what the secret is for: a
    /// digest, a setting's name), so a wrapped value moved to another row does not open.
    /// Returns the key id and `nonce || ciphertext || tag`.
    pub fn wrap(&self, context: &[u8], secret: &[u8]) -> (String, Vec<u8>) {
        let kek = self.active_kek();
        (kek.id.clone(), self.wrap_with(kek, context, secret))
    }

    /// [`Keyring::wrap`] under the named key rather than the active one.
    pub fn wrap_under(
        &self,
        id: &str,
        context: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        Ok(self.wrap_with(self.kek(id)?, context, secret))
    }

    fn wrap_with(&self, kek: &Kek, context: &[u8], secret: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = self.random();
        let mut buf = secret.to_vec();
        let aad = wrap_aad(&kek.id, context);
        // Sealing in place with a fresh nonce cannot fail for inputs this small.
        if kek
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .is_err()
        {
            panic!("AES-GCM sealing of a key failed");
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Opens what [`Keyring::wrap`] sealed under key `id` for `context`.
    pub fn unwrap(&self, id: &str, context: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
        let kek = self.kek(id)?;
        if wrapped.len() < NONCE_LEN + TAG {
            return Err(SealError::Unwrap(id.to_owned()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        let mut buf = wrapped[NONCE_LEN..].to_vec();
        let plain = kek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(id, context)),
                &mut buf,
            )
            .map_err(|_| SealError::Unwrap(id.to_owned()))?;
        Ok(plain.to_vec())
    }

    /// A fresh random data key for `context`, with its wrapped form under the active KEK.
    pub fn new_data_key(&self, context: &[u8]) -> (DataKey, String, Vec<u8>) {
        let raw: [u8; KEY_LEN] = self.random();
        let (id, wrapped) = self.wrap(context, &raw);
        (DataKey::from_raw(&raw), id, wrapped)
    }

    /// The data key wrapped under `id` for `context`.
    pub fn open_data_key(
        &self,
        id: &str,
        context: &[u8],
        wrapped: &[u8],
    ) -> Result<DataKey, SealError> {
        let raw = self.unwrap(id, context, wrapped)?;
        let raw: [u8; KEY_LEN] = raw
            .try_into()
            .map_err(|_| SealError::Unwrap(id.to_owned()))?;
        Ok(DataKey::from_raw(&raw))
    }

    /// Re-wraps a secret wrapped under any known key with the active one (rotation). The
    /// secret itself does not change, so nothing sealed under it needs rewriting.
    pub fn rewrap(
        &self,
        id: &str,
        context: &[u8],
        wrapped: &[u8],
    ) -> Result<(String, Vec<u8>), SealError> {
        let raw = self.unwrap(id, context, wrapped)?;
        Ok(self.wrap(context, &raw))
    }
}

fn wrap_aad(id: &str, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_CONTEXT.len() + id.len() + context.len() + 2);
    aad.extend_from_slice(WRAP_CONTEXT);
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

fn aes_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // A 32-byte key is always a valid AES-256 key.
    match UnboundKey::new(&AES_256_GCM, bytes) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => panic!("AES-256 rejected a 32-byte key"),
    }
}

/// A blob's (or one append's) own key, unwrapped.
#[derive(Clone)]
pub struct DataKey(Arc<LessSafeKey>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    fn from_raw(raw: &[u8; KEY_LEN]) -> DataKey {
        DataKey(Arc::new(aes_key(raw)))
    }

    /// Seals segment `index` of the blob `digest` in place (appending the tag).
    pub fn seal_segment(&self, digest: &str, index: u64, last: bool, buf: &mut Vec<u8>) {
        let (nonce, aad) = segment_nonce_aad(digest, index, last);
        if self
            .0
            .seal_in_place_append_tag(nonce, Aad::from(aad), buf)
            .is_err()
        {
            panic!("AES-GCM sealing of a segment failed");
        }
    }

    /// Opens segment `index` of `digest` in place; the plaintext is the first
    /// `buf.len() - TAG` bytes.
    pub fn open_segment(
        &self,
        digest: &str,
        index: u64,
        last: bool,
        buf: &mut [u8],
    ) -> Result<usize, SealError> {
        let (nonce, aad) = segment_nonce_aad(digest, index, last);
        self.0
            .open_in_place(nonce, Aad::from(aad), buf)
            .map(|p| p.len())
            .map_err(|_| {
                SealError::Tampered(format!(
                    "segment {index} of {digest} does not authenticate (altered, moved, truncated or extended)"
                ))
            })
    }

    fn seal_record(&self, counter: u64, buf: &mut Vec<u8>) {
        if self
            .0
            .seal_in_place_append_tag(record_nonce(counter), Aad::from(RECORD_CONTEXT), buf)
            .is_err()
        {
            panic!("AES-GCM sealing of an upload record failed");
        }
    }

    fn open_record(&self, counter: u64, buf: &mut [u8]) -> Result<usize, SealError> {
        self.0
            .open_in_place(record_nonce(counter), Aad::from(RECORD_CONTEXT), buf)
            .map(|p| p.len())
            .map_err(|_| SealError::Tampered(format!("upload record {counter}")))
    }
}

/// The nonce of segment `index`: its index in the first eight bytes, the final flag in the
/// ninth. Unique per (key, digest, position, finality); see the module comment.
pub fn segment_nonce(index: u64, last: bool) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[8] = u8::from(last);
    n
}

fn segment_nonce_aad(digest: &str, index: u64, last: bool) -> (Nonce, Vec<u8>) {
    let mut aad = Vec::with_capacity(BLOB_CONTEXT.len() + digest.len() + 11);
    aad.extend_from_slice(BLOB_CONTEXT);
    aad.push(0);
    aad.extend_from_slice(digest.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    (
        Nonce::assume_unique_for_key(segment_nonce(index, last)),
        aad,
    )
}

fn record_nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Segments of a blob of `plain` bytes (an empty blob has one, empty).
pub fn segments(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT as u64).max(1)
}

/// Stored size of a sealed blob of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    plain + segments(plain) * TAG as u64
}

/// Where segment `index` starts in the sealed blob.
pub fn segment_offset(index: u64) -> u64 {
    index * (SEGMENT + TAG) as u64
}

/// Seals a blob's plaintext, fed in pieces of any size, into its stored form.
pub struct BlobSealer {
    key: DataKey,
    digest: String,
    total: u64,
    fed: u64,
    index: u64,
    buf: Vec<u8>,
}

impl BlobSealer {
    pub fn new(key: DataKey, digest: &str, total: u64) -> BlobSealer {
        BlobSealer {
            key,
            digest: digest.to_owned(),
            total,
            fed: 0,
            index: 0,
            buf: Vec::with_capacity(SEGMENT + TAG),
        }
    }

    /// Feeds plaintext; returns the sealed bytes that are complete. More input than the
    /// announced total is an error: nothing past it is ever sealed.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, SealError> {
        if self.fed + data.len() as u64 > self.total {
            return Err(SealError::Tampered(
                "more plaintext than the blob's size".into(),
            ));
        }
        self.fed += data.len() as u64;
        let mut out = Vec::new();
        while !data.is_empty() {
            let take = (SEGMENT - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full segment is sealed at once unless it is the last one (which is sealed
            // by `finish`, flagged final).
            if self.buf.len() == SEGMENT && (!data.is_empty() || self.fed < self.total) {
                self.seal_one(false, &mut out);
            }
        }
        Ok(out)
    }

    fn seal_one(&mut self, last: bool, out: &mut Vec<u8>) {
        let mut seg = std::mem::replace(&mut self.buf, Vec::with_capacity(SEGMENT + TAG));
        self.key
            .seal_segment(&self.digest, self.index, last, &mut seg);
        self.index += 1;
        out.extend_from_slice(&seg);
    }

    /// Seals the final segment; an error if less plaintext came than announced (then
    /// nothing final is written).
    pub fn finish(mut self) -> Result<Vec<u8>, SealError> {
        if self.fed != self.total {
            return Err(SealError::Tampered(format!(
                "{} bytes of plaintext, {} announced",
                self.fed, self.total
            )));
        }
        let mut out = Vec::new();
        self.seal_one(true, &mut out);
        Ok(out)
    }
}

/// Opens sealed blob bytes starting at segment `first`, fed in pieces of any size.
pub struct BlobOpener {
    key: DataKey,
    digest: String,
    segments: u64,
    total: u64,
    index: u64,
    buf: Vec<u8>,
}

impl BlobOpener {
    /// `total`: the blob's plaintext size (from the metadata store, never from the bytes).
    pub fn new(key: DataKey, digest: &str, total: u64, first: u64) -> BlobOpener {
        BlobOpener {
            key,
            digest: digest.to_owned(),
            segments: segments(total),
            total,
            index: first,
            buf: Vec::with_capacity(SEGMENT + TAG),
        }
    }

    fn expected(&self, index: u64) -> usize {
        if index + 1 < self.segments {
            SEGMENT + TAG
        } else {
            (self.total - (self.segments - 1) * SEGMENT as u64) as usize + TAG
        }
    }

    /// Feeds sealed bytes; appends the plaintext of every segment completed to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        while !data.is_empty() {
            if self.index >= self.segments {
                return Err(SealError::Tampered(format!(
                    "{} has bytes past its last segment",
                    self.digest
                )));
            }
            let want = self.expected(self.index);
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == want {
                let last = self.index + 1 == self.segments;
                let n = self
                    .key
                    .open_segment(&self.digest, self.index, last, &mut self.buf)?;
                out.extend_from_slice(&self.buf[..n]);
                self.buf.clear();
                self.index += 1;
            }
        }
        Ok(())
    }

    /// The input ended: it must have ended on a segment boundary.
    pub fn finish(&self) -> Result<(), SealError> {
        if !self.buf.is_empty() {
            return Err(SealError::Tampered(format!(
                "{} ends inside segment {}",
                self.digest, self.index
            )));
        }
        Ok(())
    }

    /// Segments opened so far, counting from 0.
    pub fn position(&self) -> u64 {
        self.index
    }
}

/// Seals one append of an upload: a header with this append's own key, then records.
pub struct UploadSealer {
    key: DataKey,
    counter: u64,
    buf: Vec<u8>,
    header: Option<Vec<u8>>,
}

impl UploadSealer {
    pub fn new(keyring: &Keyring) -> UploadSealer {
        let (key, id, wrapped) = keyring.new_data_key(UPLOAD_MAGIC);
        let mut header = UPLOAD_MAGIC.to_vec();
        header.push(id.len() as u8);
        header.extend_from_slice(id.as_bytes());
        header.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        header.extend_from_slice(&wrapped);
        UploadSealer {
            key,
            counter: 0,
            buf: Vec::with_capacity(RECORD),
            header: Some(header),
        }
    }

    /// Feeds plaintext; returns the stored bytes ready to write.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = self.header.take().unwrap_or_default();
        while !data.is_empty() {
            let take = (RECORD - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == RECORD {
                self.seal_record(&mut out);
            }
        }
        out
    }

    fn seal_record(&mut self, out: &mut Vec<u8>) {
        let mut rec = std::mem::replace(&mut self.buf, Vec::with_capacity(RECORD));
        let len = rec.len() as u32;
        self.key.seal_record(self.counter, &mut rec);
        self.counter += 1;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&rec);
    }

    /// The rest: the header if nothing came, and the last partial record.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = self.header.take().unwrap_or_default();
        if !self.buf.is_empty() {
            self.seal_record(&mut out);
        }
        out
    }
}

/// Reads an upload's stored bytes (appends one after the other) back into plaintext.
pub struct UploadOpener {
    keyring: Arc<Keyring>,
    key: Option<DataKey>,
    counter: u64,
    buf: Vec<u8>,
}

impl UploadOpener {
    pub fn new(keyring: Arc<Keyring>) -> UploadOpener {
        UploadOpener {
            keyring,
            key: None,
            counter: 0,
            buf: Vec::new(),
        }
    }

    /// Feeds stored bytes; appends the plaintext of every complete record to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            if rest.len() < 4 {
                break;
            }
            if &rest[..4] == UPLOAD_MAGIC {
                let Some(&idlen) = rest.get(4) else { break };
                let idlen = idlen as usize;
                if rest.len() < 5 + idlen + 2 {
                    break;
                }
                let id = std::str::from_utf8(&rest[5..5 + idlen])
                    .map_err(|_| SealError::Tampered("upload header".into()))?
                    .to_owned();
                let wl = u16::from_be_bytes([rest[5 + idlen], rest[6 + idlen]]) as usize;
                let end = 7 + idlen + wl;
                if rest.len() < end {
                    break;
                }
                let key = self
                    .keyring
                    .open_data_key(&id, UPLOAD_MAGIC, &rest[7 + idlen..end])?;
                self.key = Some(key);
                self.counter = 0;
                pos += end;
                continue;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > RECORD {
                return Err(SealError::Tampered("upload record length".into()));
            }
            if rest.len() < 4 + len + TAG {
                break;
            }
            let key = self
                .key
                .as_ref()
                .ok_or_else(|| SealError::Tampered("upload record before a header".into()))?;
            let mut rec = rest[4..4 + len + TAG].to_vec();
            let n = key.open_record(self.counter, &mut rec)?;
            self.counter += 1;
            out.extend_from_slice(&rec[..n]);
            pos += 4 + len + TAG;
        }
        self.buf.drain(..pos);
        Ok(())
    }

    pub fn finish(&self) -> Result<(), SealError> {
        if !self.buf.is_empty() {
            return Err(SealError::Tampered("upload ends inside a record".into()));
        }
        Ok(())
    }
}

/// A record of a stored upload: (its key's fingerprint, its nonce counter, its ciphertext).
#[doc(hidden)]
pub type UploadRecord = (Vec<u8>, u64, Vec<u8>);

/// Every record of an upload's stored bytes as (a fingerprint of its key, its nonce
/// counter, its ciphertext). For tests that check no (key, nonce) pair repeats.
#[doc(hidden)]
pub fn upload_records(keyring: &Keyring, stored: &[u8]) -> Result<Vec<UploadRecord>, SealError> {
    use sha2::Digest as _;
    let mut out = Vec::new();
    let mut pos = 0;
    let mut current: Option<(Vec<u8>, u64)> = None;
    let bad = || SealError::Tampered("upload bytes do not parse".into());
    while pos < stored.len() {
        let rest = &stored[pos..];
        if rest.len() >= 4 && &rest[..4] == UPLOAD_MAGIC {
            let idlen = *rest.get(4).ok_or_else(bad)? as usize;
            let id =
                std::str::from_utf8(rest.get(5..5 + idlen).ok_or_else(bad)?).map_err(|_| bad())?;
            let wl = rest.get(5 + idlen..7 + idlen).ok_or_else(bad)?;
            let wl = u16::from_be_bytes([wl[0], wl[1]]) as usize;
            let end = 7 + idlen + wl;
            let raw =
                keyring.unwrap(id, UPLOAD_MAGIC, rest.get(7 + idlen..end).ok_or_else(bad)?)?;
            current = Some((sha2::Sha256::digest(&raw).to_vec(), 0));
            pos += end;
            continue;
        }
        let (fp, counter) = current.as_mut().ok_or_else(bad)?;
        let len = rest.get(..4).ok_or_else(bad)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let ct = rest.get(4..4 + len + TAG).ok_or_else(bad)?;
        out.push((fp.clone(), *counter, ct.to_vec()));
        *counter += 1;
        pos += 4 + len + TAG;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(vec![("k1".into(), [7; 32]), ("k2".into(), [9; 32])], "k2").expect("ok")
    }

    fn seal(key: &DataKey, digest: &str, data: &[u8], piece: usize) -> Vec<u8> {
        let mut s = BlobSealer::new(key.clone(), digest, data.len() as u64);
        let mut out = Vec::new();
        for c in data.chunks(piece.max(1)) {
            out.extend(s.push(c).expect("ok"));
        }
        out.extend(s.finish().expect("ok"));
        out
    }

    fn open(key: &DataKey, digest: &str, total: u64, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut o = BlobOpener::new(key.clone(), digest, total, 0);
        let mut out = Vec::new();
        o.push(sealed, &mut out)?;
        o.finish()?;
        if o.position() != segments(total) {
            return Err(SealError::Tampered("short".into()));
        }
        Ok(out)
    }

    #[test]
    fn blobs_round_trip_and_detect_tampering() {
        let k = ring();
        let (key, _, _) = k.new_data_key(b"d");
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            200_000,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for piece in [1000, SEGMENT, 7 * SEGMENT] {
                let s = seal(&key, "d", &data, piece);
                assert_eq!(s.len() as u64, sealed_len(len as u64));
                assert_eq!(open(&key, "d", len as u64, &s).expect("ok"), data);
                // Deterministic: sealing again gives the same bytes.
                assert_eq!(seal(&key, "d", &data, 999), s);
            }
            let s = seal(&key, "d", &data, 4096);
            let mut flipped = s.clone();
            let at = flipped.len() / 2;
            flipped[at] ^= 1;
            assert!(open(&key, "d", len as u64, &flipped).is_err());
            assert!(
                open(&key, "other", len as u64, &s).is_err(),
                "bound to the digest"
            );
            let mut longer = s.clone();
            longer.extend_from_slice(&[0; TAG + 1]);
            assert!(open(&key, "d", len as u64, &longer).is_err(), "extended");
            if len > SEGMENT {
                // Cut at a segment boundary: the new last segment was not sealed as final.
                let cut = &s[..SEGMENT + TAG];
                assert!(open(&key, "d", SEGMENT as u64, cut).is_err(), "truncated");
                // Two segments swapped.
                let mut swapped = s.clone();
                let (a, b) = swapped.split_at_mut(SEGMENT + TAG);
                if b.len() >= SEGMENT + TAG {
                    a.swap_with_slice(&mut b[..SEGMENT + TAG]);
                    assert!(open(&key, "d", len as u64, &swapped).is_err(), "reordered");
                }
            }
        }
    }

    #[test]
    fn uploads_round_trip_across_appends() {
        let k = Arc::new(ring());
        let mut stored = Vec::new();
        let mut plain = Vec::new();
        for (n, piece) in [
            (10usize, 3usize),
            (RECORD * 2 + 5, 4096),
            (0, 1),
            (700_000, 65536),
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
            let mut s = UploadSealer::new(&k);
            for c in data.chunks(piece) {
                stored.extend(s.push(c));
            }
            stored.extend(s.finish());
            plain.extend(data);
        }
        let mut o = UploadOpener::new(Arc::clone(&k));
        let mut out = Vec::new();
        for c in stored.chunks(1234) {
            o.push(c, &mut out).expect("ok");
        }
        o.finish().expect("ok");
        assert_eq!(out, plain);
        let mut bad = stored.clone();
        let at = bad.len() - 3;
        bad[at] ^= 0x80;
        let mut o = UploadOpener::new(k);
        assert!(o.push(&bad, &mut Vec::new()).is_err());
    }

    #[test]
    fn wraps_are_bound_to_key_and_context() {
        let k = ring();
        let (id, w) = k.wrap(b"sha256:aa", b"secret");
        assert_eq!(id, "k2");
        assert_eq!(k.unwrap(&id, b"sha256:aa", &w).expect("ok"), b"secret");
        assert!(k.unwrap(&id, b"sha256:bb", &w).is_err());
        assert!(k.unwrap("k1", b"sha256:aa", &w).is_err());
        assert_eq!(
            k.unwrap("k3", b"x", &w),
            Err(SealError::UnknownKey("k3".into()))
        );
        let other = Keyring::new(vec![("k2".into(), [1; 32])], "k2").expect("ok");
        assert!(other.unwrap(&id, b"sha256:aa", &w).is_err(), "wrong key");
    }
}
