//! Encryption at rest: the keyring of key-encryption keys (KEKs), per-blob data keys, and
//! the sealed format of uploads and blobs (one format for both). AES-256-GCM through ring.
//!
//! Format: the plaintext cut into [`SEGMENT`]-byte segments (the last may be shorter, an
//! empty blob is one empty segment), each stored as a random 12-byte nonce, its ciphertext
//! and its 16-byte tag, back to back, with nothing else in the file: where segment `i`
//! starts follows from `i`, so a `Range` read fetches only the segments it needs. The
//! associated data is the segment's index and a final-segment flag. The key is the upload's
//! own random key: an upload is sealed as it arrives, already in the blob's final form, and
//! at completion the key is wrapped bound to the digest and recorded in the metadata store
//! as the blob's data key. So the key identifies the blob (two blobs never share one) and
//! the wrap binds it to the digest.
//!
//! Nonces are random (96 bits) and drawn afresh for every sealing, so re-sealing the
//! partial last segment of an append when the next append continues it, re-sealing the
//! last segment as final at completion, retried and cut-back appends never reuse a (key,
//! nonce) pair (by chance: about 2^-33 after 2^32 sealings under one key, the GCM bound;
//! that is 256 TiB of segments under one key).

use std::fmt;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes per blob segment.
pub const SEGMENT: usize = 64 * 1024;
/// The GCM tag after every sealed piece.
pub const TAG: usize = 16;
/// The random nonce before every sealed segment.
pub const NONCE: usize = NONCE_LEN;
/// Stored bytes per segment beyond its plaintext.
pub const OVERHEAD: usize = NONCE + TAG;
/// Stored bytes of a full segment.
pub const STRIDE: usize = SEGMENT + OVERHEAD;
/// Length of a key-encryption key and of a data key.
pub const KEY_LEN: usize = 32;

/// What an upload's own key is wrapped for while the upload is open (at completion it is
/// re-wrapped for the digest).
pub const UPLOAD_CONTEXT: &[u8] = b"berth-upload-key-v2";
const WRAP_CONTEXT: &[u8] = b"berth-wrap-v1";
const SEGMENT_CONTEXT: &[u8; 14] = b"berth-blob-v2\0";

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

pub mod legacy;

/// The format a blob's stored bytes are in, as the metadata store records it with the
/// blob's key (never guessed from the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Format 1 ([`legacy`]), written by the release before format 2; only ever read. Its
    /// segments are bound to the digest.
    V1 { digest: Arc<str> },
    /// Format 2 (this module's), which every new seal writes.
    V2,
}

/// A blob's (or an open upload's) own key, unwrapped, with the format of the bytes it
/// opens. Sealing always writes format 2.
#[derive(Clone)]
pub struct DataKey(Arc<LessSafeKey>, Format);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Keyring {
    /// Re-wraps a secret wrapped for `from` so that it is bound to `to` (an upload's key
    /// becoming its blob's data key), under the active KEK.
    pub fn rewrap_for(
        &self,
        id: &str,
        from: &[u8],
        to: &[u8],
        wrapped: &[u8],
    ) -> Result<(String, Vec<u8>), SealError> {
        let raw = self.unwrap(id, from, wrapped)?;
        Ok(self.wrap(to, &raw))
    }
}

fn segment_aad(index: u64, last: bool) -> [u8; 23] {
    let mut aad = [0u8; 23];
    aad[..14].copy_from_slice(SEGMENT_CONTEXT);
    aad[14..22].copy_from_slice(&index.to_be_bytes());
    aad[22] = u8::from(last);
    aad
}

impl DataKey {
    fn from_raw(raw: &[u8; KEY_LEN]) -> DataKey {
        DataKey(Arc::new(aes_key(raw)), Format::V2)
    }

    /// This key, opening the format-1 blob `digest` (the metadata store says it is one).
    pub fn format1(self, digest: &str) -> DataKey {
        DataKey(
            self.0,
            Format::V1 {
                digest: Arc::from(digest),
            },
        )
    }

    /// The format of the bytes this key opens.
    pub fn format(&self) -> &Format {
        &self.1
    }

    /// Stored size of a blob of `plain` bytes in this key's format.
    pub fn sealed_len(&self, plain: u64) -> u64 {
        match &self.1 {
            Format::V1 { .. } => legacy::sealed_len(plain),
            Format::V2 => sealed_len(plain),
        }
    }

    /// Where segment `index` starts in this key's format.
    pub fn segment_offset(&self, index: u64) -> u64 {
        match &self.1 {
            Format::V1 { .. } => index * legacy::STRIDE as u64,
            Format::V2 => segment_offset(index),
        }
    }

    /// Stored length of segment `index` of a blob of `total` plaintext bytes in this key's
    /// format.
    pub fn stored_segment_len(&self, total: u64, index: u64) -> usize {
        match &self.1 {
            Format::V1 { .. } => legacy::stored_segment_len(total, index),
            Format::V2 => {
                let count = segments(total);
                if index + 1 == count {
                    (total - (count - 1) * SEGMENT as u64) as usize + OVERHEAD
                } else {
                    STRIDE
                }
            }
        }
    }

    /// Opens whole stored segments from `first` in this key's format (see
    /// [`open_segments`]).
    pub fn open_stored(&self, total: u64, first: u64, buf: &mut [u8]) -> Result<usize, SealError> {
        match &self.1 {
            Format::V1 { digest } => legacy::open_segments(self, digest, total, first, buf),
            Format::V2 => open_segments(self, total, first, buf),
        }
    }

    /// Opens whole stored segments from `first` in this key's format in place, moving
    /// nothing (see [`open_segments_in_place`]).
    pub fn open_stored_in_place(
        &self,
        total: u64,
        first: u64,
        buf: &mut [u8],
    ) -> Result<Vec<(usize, usize)>, SealError> {
        match &self.1 {
            Format::V1 { digest } => {
                legacy::open_segments_in_place(self, digest, total, first, buf)
            }
            Format::V2 => open_segments_in_place(self, total, first, buf),
        }
    }

    /// Seals in place one segment laid out as `nonce space || plaintext || tag space`,
    /// drawing its nonce from `rng`.
    fn seal_segment(&self, rng: &SystemRandom, index: u64, last: bool, seg: &mut [u8]) {
        let mut nonce = [0u8; NONCE];
        // The system generator failing is an unusable machine, not an input condition.
        if rng.fill(&mut nonce).is_err() {
            panic!("the system random number generator failed");
        }
        let n = seg.len();
        seg[..NONCE].copy_from_slice(&nonce);
        let tag = match self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(segment_aad(index, last)),
            &mut seg[NONCE..n - TAG],
        ) {
            Ok(t) => t,
            Err(_) => panic!("AES-GCM sealing of a segment failed"),
        };
        seg[n - TAG..].copy_from_slice(tag.as_ref());
    }

    /// Opens one stored segment in place; its plaintext is `seg[NONCE..NONCE + n]`.
    pub fn open_segment(&self, index: u64, last: bool, seg: &mut [u8]) -> Result<usize, SealError> {
        let bad = || {
            SealError::Tampered(format!(
                "segment {index} does not authenticate (altered, moved, truncated or extended)"
            ))
        };
        if seg.len() < OVERHEAD {
            return Err(bad());
        }
        let mut nonce = [0u8; NONCE];
        nonce.copy_from_slice(&seg[..NONCE]);
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(segment_aad(index, last)),
                &mut seg[NONCE..],
            )
            .map(|p| p.len())
            .map_err(|_| bad())
    }
}

/// Segments of a blob of `plain` bytes (an empty blob has one, empty).
pub fn segments(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT as u64).max(1)
}

/// Stored size of a sealed blob of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    plain + segments(plain) * OVERHEAD as u64
}

/// Stored size of an open upload of `plain` bytes (its last segment not yet final; none
/// while empty).
pub fn upload_len(plain: u64) -> u64 {
    if plain == 0 { 0 } else { sealed_len(plain) }
}

/// Where segment `index` starts in the sealed form.
pub fn segment_offset(index: u64) -> u64 {
    index * STRIDE as u64
}

/// Plaintext laid out for sealing in place: consecutive segments from `first`, each with
/// room for its nonce and tag, so sealing costs no copy beyond filling it.
pub struct SegmentBatch {
    first: u64,
    buf: Vec<u8>,
    /// Plaintext bytes in the segment being filled (0: none started).
    fill: usize,
    /// Whole segments in `buf`.
    whole: usize,
    capacity: usize,
}

impl SegmentBatch {
    /// Room for `capacity` segments starting at index `first`.
    pub fn new(first: u64, capacity: usize) -> SegmentBatch {
        SegmentBatch {
            first,
            buf: Vec::with_capacity(capacity.max(1) * STRIDE),
            fill: 0,
            whole: 0,
            capacity: capacity.max(1),
        }
    }

    /// Index of the first segment.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Segments started (whole or not).
    pub fn started(&self) -> usize {
        self.whole + usize::from(self.fill > 0)
    }

    /// Plaintext bytes held.
    pub fn plain_len(&self) -> usize {
        self.whole * SEGMENT + self.fill
    }

    /// Whether every segment is whole and no more fit.
    pub fn is_full(&self) -> bool {
        self.whole == self.capacity
    }

    /// Takes as much of `data` as fits; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        while taken < data.len() && !self.is_full() {
            if self.fill == 0 {
                self.buf.extend_from_slice(&[0u8; NONCE]);
            }
            let take = (SEGMENT - self.fill).min(data.len() - taken);
            self.buf.extend_from_slice(&data[taken..taken + take]);
            taken += take;
            self.fill += take;
            if self.fill == SEGMENT {
                self.buf.extend_from_slice(&[0u8; TAG]);
                self.whole += 1;
                self.fill = 0;
            }
        }
        taken
    }

    /// Removes the last segment started and returns its plaintext.
    pub fn split_last(&mut self) -> Vec<u8> {
        if self.fill > 0 {
            let start = self.buf.len() - self.fill - NONCE;
            let out = self.buf[start + NONCE..].to_vec();
            self.buf.truncate(start);
            self.fill = 0;
            out
        } else if self.whole > 0 {
            let start = self.buf.len() - STRIDE;
            let out = self.buf[start + NONCE..start + NONCE + SEGMENT].to_vec();
            self.buf.truncate(start);
            self.whole -= 1;
            out
        } else {
            Vec::new()
        }
    }

    /// Seals every segment (an empty batch becomes one empty segment); the last one
    /// flagged final if `last_is_final`. Returns the stored bytes.
    pub fn seal(mut self, key: &DataKey, last_is_final: bool) -> Vec<u8> {
        if self.started() == 0 {
            self.buf.extend_from_slice(&[0u8; NONCE]);
            self.fill = 0;
            self.buf.extend_from_slice(&[0u8; TAG]);
            self.whole = 1;
        } else if self.fill > 0 {
            self.buf.extend_from_slice(&[0u8; TAG]);
            self.whole += 1;
            self.fill = 0;
        }
        let rng = SystemRandom::new();
        let n = self.whole;
        let len = self.buf.len();
        for i in 0..n {
            let start = i * STRIDE;
            let end = (start + STRIDE).min(len);
            let last = last_is_final && i + 1 == n;
            key.seal_segment(&rng, self.first + i as u64, last, &mut self.buf[start..end]);
        }
        self.buf
    }
}

/// Opens, in place, stored bytes holding whole segments from index `first` of a blob of
/// `total` plaintext bytes (so which segment is final, and how long it is, come from the
/// metadata store, never from the bytes). Nothing is moved: returns where each segment's
/// plaintext lies in `buf`, as (start, length), in order, so a reader can hand out
/// slices of the one buffer.
pub fn open_segments_in_place(
    key: &DataKey,
    total: u64,
    first: u64,
    buf: &mut [u8],
) -> Result<Vec<(usize, usize)>, SealError> {
    let count = segments(total);
    let mut pos = 0usize;
    let mut index = first;
    let mut pieces = Vec::with_capacity(buf.len().div_ceil(STRIDE));
    while pos < buf.len() {
        if index >= count {
            return Err(SealError::Tampered("bytes past the last segment".into()));
        }
        let last = index + 1 == count;
        let want = if last {
            (total - (count - 1) * SEGMENT as u64) as usize + OVERHEAD
        } else {
            STRIDE
        };
        if buf.len() - pos < want {
            return Err(SealError::Tampered(format!("segment {index} is cut short")));
        }
        let n = key.open_segment(index, last, &mut buf[pos..pos + want])?;
        pieces.push((pos + NONCE, n));
        pos += want;
        index += 1;
    }
    Ok(pieces)
}

/// [`open_segments_in_place`], then the plaintext moved to the front of `buf`. Returns the
/// plaintext length.
pub fn open_segments(
    key: &DataKey,
    total: u64,
    first: u64,
    buf: &mut [u8],
) -> Result<usize, SealError> {
    let pieces = open_segments_in_place(key, total, first, buf)?;
    Ok(compact(buf, &pieces))
}

/// Moves `pieces` of `buf` to its front, in order; their total length.
pub(crate) fn compact(buf: &mut [u8], pieces: &[(usize, usize)]) -> usize {
    let mut out = 0;
    for &(start, n) in pieces {
        buf.copy_within(start..start + n, out);
        out += n;
    }
    out
}

/// Every stored segment in `stored` (an upload's or a blob's bytes from a segment
/// boundary) as (its nonce, its ciphertext and tag). For tests that check no (key, nonce)
/// pair repeats.
#[doc(hidden)]
pub fn stored_segments(stored: &[u8]) -> Vec<([u8; NONCE], Vec<u8>)> {
    stored
        .chunks(STRIDE)
        .filter(|c| c.len() >= OVERHEAD)
        .map(|c| {
            let mut n = [0u8; NONCE];
            n.copy_from_slice(&c[..NONCE]);
            (n, c[NONCE..].to_vec())
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(vec![("k1".into(), [7; 32]), ("k2".into(), [9; 32])], "k2").expect("ok")
    }

    fn seal(key: &DataKey, data: &[u8], batch: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        let mut first = 0u64;
        loop {
            let mut b = SegmentBatch::new(first, batch);
            let n = b.push(rest);
            rest = &rest[n..];
            first += b.started() as u64;
            let done = rest.is_empty();
            out.extend(b.seal(key, done));
            if done {
                return out;
            }
        }
    }

    fn open(key: &DataKey, total: u64, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() as u64 != sealed_len(total) {
            return Err(SealError::Tampered("size".into()));
        }
        let mut buf = sealed.to_vec();
        let n = open_segments(key, total, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn blobs_round_trip_and_detect_tampering() {
        let k = ring();
        let (key, _, _) = k.new_data_key(b"d");
        let (other, _, _) = k.new_data_key(b"d");
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
            for batch in [1, 2, 16] {
                let s = seal(&key, &data, batch);
                assert_eq!(s.len() as u64, sealed_len(len as u64));
                assert_eq!(open(&key, len as u64, &s).expect("ok"), data);
                // Fresh nonces: sealing again gives other bytes.
                assert_ne!(seal(&key, &data, batch), s);
            }
            let s = seal(&key, &data, 4);
            let mut flipped = s.clone();
            let at = flipped.len() / 2;
            flipped[at] ^= 1;
            assert!(open(&key, len as u64, &flipped).is_err());
            assert!(open(&other, len as u64, &s).is_err(), "another blob's key");
            let mut longer = s.clone();
            longer.extend_from_slice(&[0; OVERHEAD + 1]);
            assert!(open(&key, len as u64, &longer).is_err(), "extended");
            if len > SEGMENT {
                // Cut at a segment boundary: the new last segment was not sealed as final.
                let mut cut = s[..STRIDE].to_vec();
                assert!(
                    open_segments(&key, SEGMENT as u64, 0, &mut cut).is_err(),
                    "truncated"
                );
                let mut swapped = s.clone();
                let (a, b) = swapped.split_at_mut(STRIDE);
                if b.len() >= STRIDE {
                    a.swap_with_slice(&mut b[..STRIDE]);
                    assert!(open(&key, len as u64, &swapped).is_err(), "reordered");
                }
            }
        }
    }

    #[test]
    fn split_last_keeps_the_rest() {
        let k = ring();
        let (key, _, _) = k.new_data_key(b"d");
        for len in [1, SEGMENT, SEGMENT + 5, 3 * SEGMENT] {
            let data: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
            let mut b = SegmentBatch::new(0, 8);
            assert_eq!(b.push(&data), len);
            let tail = b.split_last();
            let keep = b.plain_len();
            assert_eq!(tail, data[keep..]);
            let mut head = b.seal(&key, false);
            if keep > 0 {
                let n = open_segments(&key, len as u64 + SEGMENT as u64, 0, &mut head).expect("ok");
                assert_eq!(head[..n], data[..keep]);
            }
        }
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
        let (id2, moved) = k
            .rewrap_for(&id, b"sha256:aa", b"sha256:cc", &w)
            .expect("ok");
        assert_eq!(k.unwrap(&id2, b"sha256:cc", &moved).expect("ok"), b"secret");
    }
}
