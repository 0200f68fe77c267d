//! The resumable SHA-256 state of an upload.

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

use berth_oci::{Algorithm, Digest};

use crate::StorageError;

/// SHA-256 over the bytes of an upload so far. Serialises to a few bytes so it can be saved
/// with the upload's metadata and resumed by any process.
///
/// For an encrypted upload it also carries how many bytes the store holds for it (the
/// sealed form is longer than the plaintext the hash and the acknowledged offset count).
#[derive(Clone, Default)]
pub struct HashState(Sha256, Option<u64>, bool);

/// Marks the stored length appended to a serialised state.
const STORED_MARK: u8 = b'S';

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
        HashState(Sha256::new(), None, true)
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
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let plain = Sha256::new().serialize().len();
        let (hash, stored) = match bytes.len() {
            n if n == plain => (bytes, None),
            n if n == plain + 9 && bytes[plain] == STORED_MARK => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[plain + 1..]);
                (&bytes[..plain], Some(u64::from_be_bytes(n)))
            }
            _ => return Err(StorageError::CorruptHashState),
        };
        let state = SerializedState::<Sha256>::try_from(hash)
            .map_err(|_| StorageError::CorruptHashState)?;
        Sha256::deserialize(&state)
            .map(|h| HashState(h, stored, false))
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
    }
}
