//! Format 1, the sealed blob format of the release before per-segment random nonces, kept
//! so blobs sealed by it go on opening. Nothing new is written in it (the sealer is for
//! tests that reproduce such blobs).
//!
//! A blob in format 1 is the plaintext cut into [`SEGMENT`]-byte segments, each stored as
//! its ciphertext and 16-byte tag, back to back. The nonce is the segment index (eight
//! bytes, big-endian) and the final-segment flag (one byte), then three zero bytes; the
//! associated data is `berth-blob-v1`, a zero byte, the digest, a zero byte, the index
//! (eight bytes, big-endian) and the flag. The data key is the digest's own, wrapped bound
//! to the digest exactly as in format 2, so key rotation treats both formats alike.
//!
//! The metadata store records which format a blob is in (`blob_keys.state`: `sealed` and
//! `converting` mean format 1, `sealed2` and `converting2` format 2); the bytes are never
//! asked.

use ring::aead::{Aad, NONCE_LEN, Nonce};

use super::{DataKey, SEGMENT, SealError, TAG, segments};

const BLOB_CONTEXT: &[u8] = b"berth-blob-v1";

/// Stored bytes per segment beyond its plaintext.
pub const OVERHEAD: usize = TAG;
/// Stored bytes of a full segment.
pub const STRIDE: usize = SEGMENT + OVERHEAD;

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[8] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn aad(digest: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(BLOB_CONTEXT.len() + digest.len() + 11);
    aad.extend_from_slice(BLOB_CONTEXT);
    aad.push(0);
    aad.extend_from_slice(digest.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Stored size of a format-1 blob of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    plain + segments(plain) * OVERHEAD as u64
}

/// Stored length of segment `index` of a format-1 blob of `total` plaintext bytes.
pub fn stored_segment_len(total: u64, index: u64) -> usize {
    let count = segments(total);
    if index + 1 == count {
        (total - (count - 1) * SEGMENT as u64) as usize + OVERHEAD
    } else {
        STRIDE
    }
}

/// Opens, in place, stored bytes holding whole format-1 segments from index `first` of the
/// blob `digest` of `total` plaintext bytes; where each segment's plaintext lies in `buf`,
/// as (start, length). Nothing is moved.
pub fn open_segments_in_place(
    key: &DataKey,
    digest: &str,
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
        let want = stored_segment_len(total, index);
        if buf.len() - pos < want {
            return Err(SealError::Tampered(format!("segment {index} is cut short")));
        }
        let n = key
            .0
            .open_in_place(
                nonce(index, last),
                Aad::from(aad(digest, index, last)),
                &mut buf[pos..pos + want],
            )
            .map(|p| p.len())
            .map_err(|_| {
                SealError::Tampered(format!(
                    "segment {index} of {digest} (format 1) does not authenticate (altered, moved, truncated or extended)"
                ))
            })?;
        pieces.push((pos, n));
        pos += want;
        index += 1;
    }
    Ok(pieces)
}

/// [`open_segments_in_place`], then the plaintext moved to the front of `buf`. Returns the
/// plaintext length.
pub fn open_segments(
    key: &DataKey,
    digest: &str,
    total: u64,
    first: u64,
    buf: &mut [u8],
) -> Result<usize, SealError> {
    let pieces = open_segments_in_place(key, digest, total, first, buf)?;
    Ok(super::compact(buf, &pieces))
}

/// Seals a whole blob in format 1, as the previous release did. Only for tests that
/// reproduce blobs it stored: new blobs are always sealed in format 2.
#[doc(hidden)]
pub fn seal_blob(key: &DataKey, digest: &str, plain: &[u8]) -> Vec<u8> {
    let count = segments(plain.len() as u64);
    let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
    for index in 0..count {
        let start = (index as usize) * SEGMENT;
        let end = (start + SEGMENT).min(plain.len());
        let last = index + 1 == count;
        let mut seg = plain[start..end].to_vec();
        if key
            .0
            .seal_in_place_append_tag(
                nonce(index, last),
                Aad::from(aad(digest, index, last)),
                &mut seg,
            )
            .is_err()
        {
            panic!("AES-GCM sealing of a segment failed");
        }
        out.extend_from_slice(&seg);
    }
    out
}
