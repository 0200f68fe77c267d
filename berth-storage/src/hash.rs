//! The resumable SHA-256 state of an upload.

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

use berth_oci::{Algorithm, Digest};

use crate::StorageError;

/// SHA-256 over the bytes of an upload so far. Serialises to a few bytes so it can be saved
/// with the upload's metadata and resumed by any process.
#[derive(Clone, Default)]
pub struct HashState(Sha256);

impl HashState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn digest(&self) -> Digest {
        Digest::from_hash(Algorithm::Sha256, &self.0.clone().finalize())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let state = SerializedState::<Sha256>::try_from(bytes)
            .map_err(|_| StorageError::CorruptHashState)?;
        Sha256::deserialize(&state)
            .map(HashState)
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
    }
}
