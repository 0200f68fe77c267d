//! Signature verification, pure: bytes and trust material in, verdicts out. No I/O, no
//! clock (the caller passes the time), no async. Cosign's simple-signing payloads and
//! DSSE attestations (`cosign`), Notary Project JWS and COSE envelopes with X.509 chains
//! (`notary`), what a manifest is by its content (`artifact`), public keys (`keys`), and
//! the bounded readers they need (`der`, `cbor`).
//!
//! Every signature check goes through ring; chains through webpki on ring. Every
//! function is panic-free on any input (the property tests and the fuzz target check
//! the parsers).

pub mod artifact;
pub mod bundle;
pub mod cbor;
pub mod cosign;
pub mod der;
#[doc(hidden)]
pub mod fuzzing;
pub mod keyless;
pub mod keys;
pub mod notary;
pub mod tsa;
pub mod x509;

pub use artifact::{Kind, SignatureLayer, classify, signature_layers};
pub use keys::{KeyError, KeyKind, PublicKey};

/// Largest envelope or payload read; anything larger is "invalid" before it is parsed.
pub const MAX_ENVELOPE: usize = 1 << 20;

/// Why a signature does not count. Each names one cause, for `berth verify` to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Failure {
    /// The envelope or payload is not what its format says (or too large, too deep).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Bytes were changed after signing: the signature does not verify with the key that
    /// the envelope itself names, or a payload does not match its digest.
    #[error("tampered: {0}")]
    Tampered(String),
    /// The signature verifies under none of the trusted keys.
    #[error("wrong key: the signature verifies under none of the {0} trusted key(s)")]
    WrongKey(usize),
    /// A valid signature, over a payload naming another manifest.
    #[error("the payload is signed for {signed}, not this manifest")]
    OtherDigest { signed: String },
    /// The certificate chain does not lead to a certificate of the trust store.
    #[error("untrusted chain: {0}")]
    UntrustedChain(String),
    /// The signing certificate lacks the code-signing extended key usage.
    #[error("the signing certificate has no code-signing extended key usage")]
    NoCodeSigningEku,
    /// The certificate's subject is none of the policy's trusted identities.
    #[error("untrusted identity: {0}")]
    UntrustedIdentity(String),
    /// An algorithm Berth does not verify, or one that does not fit the key.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// Expired, or signed outside the certificate's validity.
    #[error("expired: {0}")]
    Expired(String),
    /// The certificate's OIDC issuer is none of the rule's.
    #[error("untrusted issuer: {0}")]
    UntrustedIssuer(String),
    /// The path from the signing certificate to its root is longer than allowed.
    #[error("chain too long: {0}")]
    ChainTooLong(String),
    /// A transparency-log entry or timestamp that should date the signature does not
    /// verify (forged, from an unknown log or authority, or about other bytes).
    #[error("untrusted time: {0}")]
    UntrustedTime(String),
}

impl Failure {
    /// A short stable name, for metrics and the API.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "invalid",
            Failure::Tampered(_) => "tampered",
            Failure::WrongKey(_) => "wrong_key",
            Failure::OtherDigest { .. } => "other_digest",
            Failure::UntrustedChain(_) => "untrusted_chain",
            Failure::NoCodeSigningEku => "no_code_signing_eku",
            Failure::UntrustedIdentity(_) => "untrusted_identity",
            Failure::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Failure::Expired(_) => "expired",
            Failure::UntrustedIssuer(_) => "untrusted_issuer",
            Failure::ChainTooLong(_) => "chain_too_long",
            Failure::UntrustedTime(_) => "untrusted_time",
        }
    }

    /// Every code, in a fixed order (the metrics' labels).
    pub const CODES: [&'static str; 12] = [
        "invalid",
        "tampered",
        "wrong_key",
        "other_digest",
        "untrusted_chain",
        "no_code_signing_eku",
        "untrusted_identity",
        "unsupported_algorithm",
        "expired",
        "untrusted_issuer",
        "chain_too_long",
        "untrusted_time",
    ];

    /// The position of this failure's code in `CODES`.
    pub fn index(&self) -> usize {
        Failure::CODES
            .iter()
            .position(|c| *c == self.code())
            .unwrap_or(0)
    }
}

/// SHA-256 of `bytes` as an OCI digest string.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

/// Whether `bytes` hash to `digest` (SHA-256 or SHA-512; other algorithms never match).
pub fn digest_matches(digest: &str, bytes: &[u8]) -> bool {
    let (alg, want) = match digest.split_once(':') {
        Some(x) => x,
        None => return false,
    };
    let alg = match alg {
        "sha256" => &ring::digest::SHA256,
        "sha512" => &ring::digest::SHA512,
        _ => return false,
    };
    let got = ring::digest::digest(alg, bytes);
    hex::encode(got.as_ref()) == want
}
