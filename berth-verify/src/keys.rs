//! Public keys and signature checks, all through ring.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;

use crate::der::{self, BIT_STRING, OID, Reader, SEQUENCE};

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// What kind of key a SubjectPublicKeyInfo holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    /// RSA of this many bits of modulus.
    Rsa,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ecdsa-p256",
            KeyKind::EcdsaP384 => "ecdsa-p384",
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        Some(match s {
            "ecdsa-p256" => KeyKind::EcdsaP256,
            "ecdsa-p384" => KeyKind::EcdsaP384,
            "ed25519" => KeyKind::Ed25519,
            "rsa" => KeyKind::Rsa,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM public key (-----BEGIN PUBLIC KEY-----)")]
    NotPem,
    #[error("malformed SubjectPublicKeyInfo")]
    Malformed,
    #[error("unsupported key algorithm {0}")]
    Unsupported(String),
    #[error("the key is {found}, but {declared} was declared")]
    KindMismatch {
        declared: &'static str,
        found: &'static str,
    },
}

/// A public key ready for ring: its kind and the bytes ring's verifiers take (the EC
/// point, the Ed25519 key, or the RSAPublicKey structure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: KeyKind,
    raw: Vec<u8>,
    /// SHA-256 of the SubjectPublicKeyInfo, hex: how reports name a key.
    pub fingerprint: String,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (what `cosign generate-key-pair` writes as `cosign.pub`).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, KeyError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        PublicKey::from_spki(spki.as_ref())
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki(spki: &[u8]) -> Result<PublicKey, KeyError> {
        let inner = der::single(spki, SEQUENCE).map_err(|_| KeyError::Malformed)?;
        let mut r = Reader::new(inner);
        let alg = r.expect(SEQUENCE).map_err(|_| KeyError::Malformed)?;
        let bits = r.expect(BIT_STRING).map_err(|_| KeyError::Malformed)?;
        if !r.is_empty() {
            return Err(KeyError::Malformed);
        }
        let key = der::bit_string_bytes(bits).map_err(|_| KeyError::Malformed)?;
        let mut a = Reader::new(alg);
        let oid = a.expect(OID).map_err(|_| KeyError::Malformed)?;
        let kind = if oid == OID_EC_PUBLIC_KEY {
            let curve = a.expect(OID).map_err(|_| KeyError::Malformed)?;
            if curve == OID_P256 {
                KeyKind::EcdsaP256
            } else if curve == OID_P384 {
                KeyKind::EcdsaP384
            } else if curve == OID_P521 {
                return Err(KeyError::Unsupported("ECDSA P-521".into()));
            } else {
                return Err(KeyError::Unsupported(format!(
                    "ECDSA curve {}",
                    der::oid_to_string(curve)
                )));
            }
        } else if oid == OID_ED25519 {
            KeyKind::Ed25519
        } else if oid == OID_RSA {
            KeyKind::Rsa
        } else {
            return Err(KeyError::Unsupported(der::oid_to_string(oid)));
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        Ok(PublicKey {
            kind,
            raw: key.to_vec(),
            fingerprint: hex::encode(digest.as_ref()),
        })
    }

    /// Checks the key is of the kind the operator declared for it.
    pub fn expect_kind(&self, declared: KeyKind) -> Result<(), KeyError> {
        if self.kind == declared {
            Ok(())
        } else {
            Err(KeyError::KindMismatch {
                declared: declared.as_str(),
                found: self.kind.as_str(),
            })
        }
    }

    /// Verifies a cosign signature (ASN.1 ECDSA, PKCS#1 v1.5 RSA, or Ed25519) over
    /// `message`. For ECDSA the hash follows the curve (sigstore's default) and SHA-256 is
    /// accepted on P-384 too, as cosign's key loading allows either.
    pub fn verify_cosign(&self, message: &[u8], sig: &[u8]) -> bool {
        let algs: &[&dyn VerificationAlgorithm] = match self.kind {
            KeyKind::EcdsaP256 => &[&signature::ECDSA_P256_SHA256_ASN1],
            KeyKind::EcdsaP384 => &[
                &signature::ECDSA_P384_SHA384_ASN1,
                &signature::ECDSA_P384_SHA256_ASN1,
            ],
            KeyKind::Ed25519 => &[&signature::ED25519],
            KeyKind::Rsa => &[&signature::RSA_PKCS1_2048_8192_SHA256],
        };
        algs.iter().any(|alg| {
            UnparsedPublicKey::new(*alg, &self.raw)
                .verify(message, sig)
                .is_ok()
        })
    }

    /// Verifies with one exact algorithm (Notary: the envelope names it).
    pub fn verify_with(&self, alg: SigAlg, message: &[u8], sig: &[u8]) -> bool {
        let ring_alg: &dyn VerificationAlgorithm = match alg {
            SigAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            SigAlg::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            SigAlg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            SigAlg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            SigAlg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        };
        UnparsedPublicKey::new(ring_alg, &self.raw)
            .verify(message, sig)
            .is_ok()
    }

    /// Bits of an RSA modulus, for the Notary rule tying PS256/384/512 to key sizes.
    pub fn rsa_bits(&self) -> Option<usize> {
        if self.kind != KeyKind::Rsa {
            return None;
        }
        let seq = der::single(&self.raw, SEQUENCE).ok()?;
        let n = Reader::new(seq).expect(der::INTEGER).ok()?;
        let n = match n.split_first() {
            Some((0, rest)) => rest,
            _ => n,
        };
        Some(n.len() * 8)
    }
}

/// The Notary Project's signature algorithms Berth verifies. ES512 (P-521) is named in
/// the specification but ring has no P-521, so such signatures are "unsupported".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    Es256,
    Es384,
    Ps256,
    Ps384,
    Ps512,
}

impl SigAlg {
    /// The key a signature of this algorithm must come from (the specification ties
    /// the algorithm to the key: ES256 ↔ P-256, PS256 ↔ RSA 2048, and so on).
    pub fn fits(self, key: &PublicKey) -> bool {
        match self {
            SigAlg::Es256 => key.kind == KeyKind::EcdsaP256,
            SigAlg::Es384 => key.kind == KeyKind::EcdsaP384,
            SigAlg::Ps256 | SigAlg::Ps384 | SigAlg::Ps512 => key.kind == KeyKind::Rsa,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SigAlg::Es256 => "ES256",
            SigAlg::Es384 => "ES384",
            SigAlg::Ps256 => "PS256",
            SigAlg::Ps384 => "PS384",
            SigAlg::Ps512 => "PS512",
        }
    }
}
