//! The resumable SHA-256 state of an upload.

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

use berth_oci::{Algorithm, Digest};

use crate::StorageError;

/// SHA-256 over the bytes of an upload so far. Serialises to a few bytes so it can be saved
/// with the upload's metadata and resumed by any process.
///
/// For an encrypted upload it also carries how many bytes the store holds for it (the
/// sealed form is longer than the plaintext the hash and the acknowledged offset count),
/// and the upload's own key, wrapped by a key-encryption key (see [`crate::seal`]).
#[derive(Clone, Default)]
pub struct HashState(Sha256, Option<u64>, bool, Option<(String, Vec<u8>)>);

/// Marks the stored length appended to a serialised state.
const STORED_MARK: u8 = b'S';
/// Marks the wrapped upload key appended after the stored length.
const KEY_MARK: u8 = b'K';

impl HashState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        if !self.2 {
            self.0.update(data);
        }
    }

    /// A state that ignores what it is given: for sealed bytes passing through a backend,
    /// whose plaintext is hashed before sealing (hashing the ciphertext too would cost a
    /// second SHA-256 pass over every byte for nothing).
    pub(crate) fn scratch() -> Self {
        HashState(Sha256::new(), None, true, None)
    }

    /// The upload's own key (KEK id, wrapped), for an upload sealed as it arrives.
    pub fn upload_key(&self) -> Option<(&str, &[u8])> {
        self.3.as_ref().map(|(id, w)| (id.as_str(), w.as_slice()))
    }

    pub(crate) fn set_upload_key(&mut self, id: String, wrapped: Vec<u8>) {
        self.3 = Some((id, wrapped));
    }

    pub fn digest(&self) -> Digest {
        Digest::from_hash(Algorithm::Sha256, &self.0.clone().finalize())
    }

    /// Bytes the store holds for an encrypted upload, if it is one.
    pub fn stored(&self) -> Option<u64> {
        self.1
    }

    pub(crate) fn set_stored(&mut self, n: u64) {
        self.1 = Some(n);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.0.serialize().to_vec();
        if let Some(n) = self.1 {
            out.push(STORED_MARK);
            out.extend_from_slice(&n.to_be_bytes());
            if let Some((id, wrapped)) = &self.3 {
                out.push(KEY_MARK);
                out.push(id.len() as u8);
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
                out.extend_from_slice(wrapped);
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let plain = Sha256::new().serialize().len();
        let (hash, stored, key) = match bytes.len() {
            n if n == plain => (bytes, None, None),
            n if n >= plain + 9 && bytes[plain] == STORED_MARK => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[plain + 1..plain + 9]);
                let key = match &bytes[plain + 9..] {
                    [] => None,
                    [KEY_MARK, idlen, rest @ ..] => {
                        let idlen = *idlen as usize;
                        let bad = || StorageError::CorruptHashState;
                        let id = rest.get(..idlen).ok_or_else(bad)?;
                        let id = std::str::from_utf8(id).map_err(|_| bad())?.to_owned();
                        let wl = rest.get(idlen..idlen + 2).ok_or_else(bad)?;
                        let wl = u16::from_be_bytes([wl[0], wl[1]]) as usize;
                        let wrapped = rest.get(idlen + 2..).ok_or_else(bad)?;
                        if wrapped.len() != wl {
                            return Err(bad());
                        }
                        Some((id, wrapped.to_vec()))
                    }
                    _ => return Err(StorageError::CorruptHashState),
                };
                (&bytes[..plain], Some(u64::from_be_bytes(n)), key)
            }
            _ => return Err(StorageError::CorruptHashState),
        };
        let state = SerializedState::<Sha256>::try_from(hash)
            .map_err(|_| StorageError::CorruptHashState)?;
        Sha256::deserialize(&state)
            .map(|h| HashState(h, stored, false, key))
            .map_err(|_| StorageError::CorruptHashState)
    }
}

/// A digest computed as bytes stream past, in the algorithm of the digest they should
/// have.
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_hash(Algorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_hash(Algorithm::Sha512, &h.finalize()),
        }
    }
}

/// The digest of bytes already in memory (manifests); blobs are hashed as they stream.
pub fn digest_of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
    match algorithm {
        Algorithm::Sha256 => Digest::from_hash(algorithm, &Sha256::digest(bytes)),
        Algorithm::Sha512 => Digest::from_hash(algorithm, &Sha512::digest(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_from_saved_state() {
        let mut a = HashState::new();
        a.update(b"hello ");
        let mut b = HashState::from_bytes(&a.to_bytes()).expect("restores");
        b.update(b"world");
        let mut whole = HashState::new();
        whole.update(b"hello world");
        assert_eq!(b.digest(), whole.digest());
        assert!(HashState::from_bytes(&[1, 2, 3]).is_err());
        let mut sealed = b.clone();
        sealed.set_stored(12345);
        let back = HashState::from_bytes(&sealed.to_bytes()).expect("restores");
        assert_eq!(back.stored(), Some(12345));
        assert_eq!(back.digest(), b.digest());
        assert!(back.upload_key().is_none());
        sealed.set_upload_key("k1".into(), vec![1, 2, 3]);
        let back = HashState::from_bytes(&sealed.to_bytes()).expect("restores");
        assert_eq!(back.upload_key(), Some(("k1", &[1u8, 2, 3][..])));
        assert_eq!(back.stored(), Some(12345));
    }
}
