//! Cosign's key-based signatures: simple-signing payloads with the signature in a layer
//! annotation (`.sig` tags and OCI 1.1 referrers alike), and DSSE envelopes carrying
//! in-toto statements (`cosign attest`, `.att`).
//!
//! The payload's `docker-reference` is not compared with the repository: mirrors,
//! `--into`, replication and `COSIGN_REPOSITORY` all change it, and cosign itself does
//! not require it by default. What binds a signature to an image is the manifest digest.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::Deserialize;

use crate::keys::PublicKey;
use crate::{Failure, MAX_ENVELOPE, digest_matches};

/// A key the operator trusts, with the name reports use for it.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub name: String,
    pub key: PublicKey,
}

/// The simple-signing payload type cosign writes.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Which trusted key verified a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key: String,
    /// For attestations: the in-toto predicate type.
    pub predicate_type: Option<String>,
}

pub(crate) fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    STANDARD.decode(s).ok().or_else(|| URL_SAFE.decode(s).ok())
}

fn find_key<'k>(keys: &'k [TrustedKey], message: &[u8], sig: &[u8]) -> Option<&'k TrustedKey> {
    keys.iter().find(|k| k.key.verify_cosign(message, sig))
}

/// Verifies one simple-signing layer: `payload` is the layer's blob, `payload_digest` the
/// digest its descriptor names, `signature` the `dev.cosignproject.cosign/signature`
/// annotation, `subject` the digest of the manifest it should sign.
pub fn verify_simple_signing(
    subject: &str,
    payload: &[u8],
    payload_digest: &str,
    signature: &str,
    keys: &[TrustedKey],
) -> Result<Verified, Failure> {
    if payload.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("payload is too large".into()));
    }
    if !digest_matches(payload_digest, payload) {
        return Err(Failure::Tampered(
            "payload bytes do not match their digest".into(),
        ));
    }
    let sig = decode_b64(signature)
        .ok_or_else(|| Failure::Invalid("signature annotation is not base64".into()))?;
    let key = find_key(keys, payload, &sig).ok_or(Failure::WrongKey(keys.len()))?;
    check_simple_signing(payload, subject)?;
    Ok(Verified {
        key: key.name.clone(),
        predicate_type: None,
    })
}

/// A verified simple-signing payload must be a cosign image signature naming `subject`.
pub(crate) fn check_simple_signing(payload: &[u8], subject: &str) -> Result<(), Failure> {
    let p: SimpleSigning = serde_json::from_slice(payload)
        .map_err(|e| Failure::Invalid(format!("simple-signing payload: {e}")))?;
    if !p.critical.kind.eq_ignore_ascii_case(SIMPLE_SIGNING_TYPE) {
        return Err(Failure::Invalid(format!(
            "payload type {:?} is not a cosign image signature",
            p.critical.kind
        )));
    }
    if p.critical.image.digest != subject {
        return Err(Failure::OtherDigest {
            signed: p.critical.image.digest,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    pub(crate) payload_type: String,
    pub(crate) payload: String,
    pub(crate) signatures: Vec<DsseSignature>,
}

#[derive(Deserialize)]
pub(crate) struct DsseSignature {
    pub(crate) sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    predicate_type: Option<String>,
    subject: Vec<StatementSubject>,
}

#[derive(Deserialize)]
struct StatementSubject {
    digest: std::collections::BTreeMap<String, String>,
}

/// DSSE's pre-authentication encoding: what the signature actually covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Most signatures read from one envelope.
pub(crate) const MAX_DSSE_SIGNATURES: usize = 16;

/// Verifies a DSSE envelope holding an in-toto statement about `subject`.
pub fn verify_dsse(
    subject: &str,
    envelope: &[u8],
    envelope_digest: &str,
    keys: &[TrustedKey],
) -> Result<Verified, Failure> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("envelope is too large".into()));
    }
    if !digest_matches(envelope_digest, envelope) {
        return Err(Failure::Tampered(
            "envelope bytes do not match their digest".into(),
        ));
    }
    let env: Envelope = serde_json::from_slice(envelope)
        .map_err(|e| Failure::Invalid(format!("DSSE envelope: {e}")))?;
    let payload = decode_b64(&env.payload)
        .ok_or_else(|| Failure::Invalid("DSSE payload is not base64".into()))?;
    if env.signatures.is_empty() || env.signatures.len() > MAX_DSSE_SIGNATURES {
        return Err(Failure::Invalid(format!(
            "DSSE envelope has {} signatures",
            env.signatures.len()
        )));
    }
    let message = pae(&env.payload_type, &payload);
    let key = env
        .signatures
        .iter()
        .filter_map(|s| decode_b64(&s.sig))
        .find_map(|sig| find_key(keys, &message, &sig))
        .ok_or(Failure::WrongKey(keys.len()))?;
    let predicate_type = check_statement(&env.payload_type, &payload, subject)?;
    Ok(Verified {
        key: key.name.clone(),
        predicate_type,
    })
}

/// A verified DSSE payload must be an in-toto statement with `subject` among its subjects;
/// its predicate type.
pub(crate) fn check_statement(
    payload_type: &str,
    payload: &[u8],
    subject: &str,
) -> Result<Option<String>, Failure> {
    if payload_type != "application/vnd.in-toto+json" {
        return Err(Failure::Invalid(format!(
            "DSSE payload type {payload_type:?} is not an in-toto statement"
        )));
    }
    let st: Statement = serde_json::from_slice(payload)
        .map_err(|e| Failure::Invalid(format!("in-toto statement: {e}")))?;
    let (alg, hex) = subject.split_once(':').unwrap_or(("", subject));
    if !st.subject.iter().any(|s| {
        s.digest
            .get(alg)
            .is_some_and(|h| h.eq_ignore_ascii_case(hex))
    }) {
        let signed = st
            .subject
            .iter()
            .flat_map(|s| s.digest.iter().map(|(a, h)| format!("{a}:{h}")))
            .next()
            .unwrap_or_else(|| "nothing".into());
        return Err(Failure::OtherDigest { signed });
    }
    Ok(st.predicate_type)
}
