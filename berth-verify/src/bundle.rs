//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, what `cosign attest
//! --new-bundle-format` attaches as an OCI 1.1 referrer), verified offline: a DSSE
//! envelope over an in-toto statement about the subject, signed by a configured cosign key
//! (`publicKey` material) or by a certificate (`certificate` / `x509CertificateChain`)
//! judged as `keyless` judges cosign's certificate signatures, at the integrated time of a
//! transparency-log entry whose inclusion promise (the signed entry timestamp) verifies
//! with a configured log key and whose `dsse` body is this signature and certificate, or
//! at the time of an RFC 3161 timestamp from a configured authority. The trust material
//! (CA certificates, log keys, timestamp authorities) can come from a Sigstore
//! `trusted_root.json` (`trusted_root`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use webpki::EndEntityCert;

use crate::cosign::{TrustedKey, Verified, check_statement, decode_b64, pae};
use crate::keyless::{CertTrust, Signed, TrustedTime, check_chain, check_identity};
use crate::keys::PublicKey;
use crate::{Failure, MAX_ENVELOPE, digest_matches, tsa, x509};

/// The bundle media types read (v0.1 and v0.2 spell it as a parameter).
pub fn is_bundle_type(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.dev.sigstore.bundle")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: Material,
    dsse_envelope: Option<Dsse>,
    message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    public_key: Option<serde_json::Value>,
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<Chain>,
    #[serde(default)]
    tlog_entries: Vec<TlogEntry>,
    timestamp_verification_data: Option<TimestampData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Chain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogEntry {
    log_index: String,
    log_id: LogId,
    integrated_time: String,
    inclusion_promise: Option<Promise>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampData {
    #[serde(default)]
    rfc3161_timestamps: Vec<SignedTimestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedTimestamp {
    signed_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dsse {
    payload: String,
    payload_type: String,
    signatures: Vec<DsseSig>,
}

#[derive(Deserialize)]
struct DsseSig {
    sig: String,
}

/// Most log entries, timestamps and certificates read from one bundle.
const MAX_ITEMS: usize = 10;

fn b64(s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    decode_b64(s).ok_or_else(|| Failure::Invalid(format!("{what} is not base64")))
}

/// Verifies one bundle layer (its bytes and digest) as an attestation of `subject`.
pub fn verify(
    subject: &str,
    bytes: &[u8],
    digest: &str,
    keys: &[TrustedKey],
    trusts: &[CertTrust],
    now: i64,
) -> Result<Verified, Failure> {
    if bytes.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("bundle is too large".into()));
    }
    if !digest_matches(digest, bytes) {
        return Err(Failure::Tampered(
            "bundle bytes do not match their digest".into(),
        ));
    }
    let b: Bundle =
        serde_json::from_slice(bytes).map_err(|e| Failure::Invalid(format!("bundle: {e}")))?;
    if !is_bundle_type(&b.media_type) {
        return Err(Failure::Invalid(format!(
            "bundle media type {:?}",
            b.media_type
        )));
    }
    let Some(env) = b.dsse_envelope else {
        return Err(Failure::UnsupportedAlgorithm(match b.message_signature {
            Some(_) => "a bundle with a message signature (not an attestation)".into(),
            None => "a bundle with no DSSE envelope".into(),
        }));
    };
    let payload = b64(&env.payload, "DSSE payload")?;
    let sig = match env.signatures.as_slice() {
        [one] => b64(&one.sig, "DSSE signature")?,
        _ => {
            return Err(Failure::Invalid(format!(
                "the bundle's envelope has {} signatures, not one",
                env.signatures.len()
            )));
        }
    };
    let message = pae(&env.payload_type, &payload);
    let m = &b.verification_material;
    if m.tlog_entries.len() > MAX_ITEMS {
        return Err(Failure::Invalid("too many log entries".into()));
    }
    let certs: Vec<CertificateDer<'static>> = match (&m.certificate, &m.x509_certificate_chain) {
        (Some(c), _) => vec![CertificateDer::from(b64(&c.raw_bytes, "certificate")?)],
        (None, Some(chain)) if chain.certificates.len() <= MAX_ITEMS => chain
            .certificates
            .iter()
            .map(|c| b64(&c.raw_bytes, "certificate").map(CertificateDer::from))
            .collect::<Result<_, _>>()?,
        (None, Some(_)) => return Err(Failure::Invalid("too many certificates".into())),
        (None, None) => Vec::new(),
    };
    let Some((leaf_der, chain)) = certs.split_first() else {
        if m.public_key.is_none() {
            return Err(Failure::Invalid(
                "the bundle carries no key material".into(),
            ));
        }
        let key = keys
            .iter()
            .find(|k| k.key.verify_cosign(&message, &sig))
            .ok_or(Failure::WrongKey(keys.len()))?;
        let predicate_type = check_statement(&env.payload_type, &payload, subject)?;
        return Ok(Verified {
            key: key.name.clone(),
            predicate_type,
        });
    };
    let leaf = EndEntityCert::try_from(leaf_der)
        .map_err(|e| Failure::Invalid(format!("signing certificate: {e:?}")))?;
    let key = PublicKey::from_spki(leaf.subject_public_key_info().as_ref())
        .map_err(|e| Failure::UnsupportedAlgorithm(format!("signing certificate key: {e}")))?;
    if !key.verify_cosign(&message, &sig) {
        return Err(Failure::Tampered(
            "the envelope's signature does not verify with its certificate's key".into(),
        ));
    }
    let predicate_type = check_statement(&env.payload_type, &payload, subject)?;
    let info = x509::parse(leaf_der.as_ref())
        .map_err(|_| Failure::Invalid("signing certificate: malformed".into()))?;
    let signed = Signed {
        payload: &payload,
        signature: &sig,
        leaf_der: leaf_der.as_ref(),
    };
    let mut first = None;
    for t in trusts {
        let judged = trusted_times(m, t, &signed, now)
            .and_then(|times| check_chain(&leaf, chain, &info, t, &times, now))
            .and_then(|()| check_identity(&info, &t.identities, &t.issuers, &t.name));
        match judged {
            Ok(key) => {
                return Ok(Verified {
                    key,
                    predicate_type,
                });
            }
            Err(f) => {
                first.get_or_insert(f);
            }
        }
    }
    Err(first.unwrap_or_else(|| Failure::UntrustedChain("no certificate trust applies".into())))
}

/// The signing times the bundle proves under `t`: every log entry must verify with one of
/// `t`'s log keys and every timestamp come from one of its authorities (a bundle that
/// carries evidence that does not verify is forged, not merely undated).
fn trusted_times(
    m: &Material,
    t: &CertTrust,
    signed: &Signed<'_>,
    now: i64,
) -> Result<Vec<TrustedTime>, Failure> {
    let mut times = Vec::new();
    if !t.log_keys.is_empty() {
        for e in &m.tlog_entries {
            times.push(verify_entry(e, signed, &t.log_keys)?);
        }
    }
    if !t.tsa_roots.is_empty()
        && let Some(ts) = &m.timestamp_verification_data
    {
        for s in ts.rfc3161_timestamps.iter().take(MAX_ITEMS) {
            let token = b64(&s.signed_timestamp, "signed timestamp")?;
            times.push(tsa::verify_token(
                &token,
                signed.signature,
                &t.tsa_roots,
                now,
            )?);
        }
    }
    Ok(times)
}

#[derive(Deserialize)]
struct DsseBody {
    kind: String,
    spec: DsseSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DsseSpec {
    payload_hash: Hash,
    signatures: Vec<BodySig>,
}

#[derive(Deserialize)]
struct Hash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
struct BodySig {
    signature: String,
    verifier: String,
}

fn verify_entry(
    e: &TlogEntry,
    signed: &Signed<'_>,
    log_keys: &[TrustedKey],
) -> Result<TrustedTime, Failure> {
    let key_id = hex::encode(b64(&e.log_id.key_id, "log id")?);
    let key = log_keys
        .iter()
        .find(|k| k.key.fingerprint == key_id)
        .ok_or_else(|| {
            Failure::UntrustedTime(format!(
                "the log entry names log {key_id}, none of the {} configured log key(s)",
                log_keys.len()
            ))
        })?;
    let integrated: i64 = e
        .integrated_time
        .parse()
        .map_err(|_| Failure::Invalid("integratedTime is not a number".into()))?;
    let index: i64 = e
        .log_index
        .parse()
        .map_err(|_| Failure::Invalid("logIndex is not a number".into()))?;
    let promise = e.inclusion_promise.as_ref().ok_or_else(|| {
        Failure::UntrustedTime("the log entry has no inclusion promise to verify offline".into())
    })?;
    let set = b64(&promise.signed_entry_timestamp, "signed entry timestamp")?;
    let msg = crate::keyless::rekor_set_message(&e.canonicalized_body, integrated, &key_id, index);
    if !key.key.verify_cosign(&msg, &set) {
        return Err(Failure::UntrustedTime(format!(
            "the log entry's signed entry timestamp does not verify with log key {:?}",
            key.name
        )));
    }
    let body = b64(&e.canonicalized_body, "log entry body")?;
    let body: DsseBody = serde_json::from_slice(&body)
        .map_err(|e| Failure::UntrustedTime(format!("log entry body: {e}")))?;
    let other =
        |what: &str| Failure::UntrustedTime(format!("the log entry is about another {what}"));
    if body.kind != "dsse" {
        return Err(Failure::UntrustedTime(format!(
            "log entry kind {:?} is not dsse",
            body.kind
        )));
    }
    let h = &body.spec.payload_hash;
    if h.algorithm != "sha256"
        || !digest_matches(
            &format!("sha256:{}", h.value.to_ascii_lowercase()),
            signed.payload,
        )
    {
        return Err(other("payload"));
    }
    let ours = body.spec.signatures.iter().take(MAX_ITEMS).any(|s| {
        decode_b64(&s.signature).as_deref() == Some(signed.signature)
            && decode_b64(&s.verifier)
                .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok())
                .is_some_and(|c| c.as_ref() == signed.leaf_der)
    });
    if !ours {
        return Err(other("signature or certificate"));
    }
    Ok(TrustedTime {
        at: integrated,
        source: format!("transparency log {:?}, entry {index}", key.name),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustedRoot {
    #[serde(default)]
    tlogs: Vec<Tlog>,
    #[serde(default)]
    certificate_authorities: Vec<Authority>,
    #[serde(default)]
    timestamp_authorities: Vec<Authority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tlog {
    #[serde(default)]
    base_url: String,
    public_key: RawBytes,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Authority {
    cert_chain: Chain,
}

/// What a `trusted_root.json` names: CA certificates, log keys, TSA certificates.
#[derive(Debug, Clone, Default)]
pub struct TrustedRootMaterial {
    pub roots: Vec<CertificateDer<'static>>,
    pub log_keys: Vec<TrustedKey>,
    pub tsa_roots: Vec<CertificateDer<'static>>,
}

/// Reads a Sigstore `trusted_root.json`. Every certificate of an authority's chain is
/// trusted as an anchor (the file lists the chain the operator trusts; Fulcio bundles
/// carry only the leaf).
pub fn trusted_root(json: &[u8]) -> Result<TrustedRootMaterial, String> {
    let r: TrustedRoot =
        serde_json::from_slice(json).map_err(|e| format!("trusted_root.json: {e}"))?;
    let certs = |auths: &[Authority], what: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        let mut out = Vec::new();
        for a in auths {
            for c in &a.cert_chain.certificates {
                let der = STANDARD
                    .decode(c.raw_bytes.trim())
                    .map_err(|_| format!("{what} certificate is not base64"))?;
                let der = CertificateDer::from(der);
                webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| format!("{what} certificate: {e:?}"))?;
                out.push(der);
            }
        }
        Ok(out)
    };
    let mut log_keys = Vec::new();
    for (i, t) in r.tlogs.iter().enumerate() {
        let spki = STANDARD
            .decode(t.public_key.raw_bytes.trim())
            .map_err(|_| "tlog public key is not base64".to_owned())?;
        let key = PublicKey::from_spki(&spki).map_err(|e| format!("tlog public key: {e}"))?;
        log_keys.push(TrustedKey {
            name: if t.base_url.is_empty() {
                format!("tlog{i}")
            } else {
                t.base_url.clone()
            },
            key,
        });
    }
    Ok(TrustedRootMaterial {
        roots: certs(&r.certificate_authorities, "certificate authority")?,
        log_keys,
        tsa_roots: certs(&r.timestamp_authorities, "timestamp authority")?,
    })
}
