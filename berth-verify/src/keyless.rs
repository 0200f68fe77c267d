//! Cosign signatures made with a certificate (`cosign sign --certificate ...
//! --certificate-chain ...`, and Fulcio's keyless certificates): the layer carries the
//! leaf (`dev.sigstore.cosign/certificate`) and its chain (`dev.sigstore.cosign/chain`),
//! the signature verifies with the leaf's key, the chain leads to a configured CA root
//! with the code-signing EKU on the leaf, no longer than the rule allows, and the leaf's
//! identity (SAN email or URI) and OIDC issuer (Fulcio's extension) are the rule's,
//! matched exactly or by a fully anchored regular expression, as `cosign verify
//! --certificate-identity[-regexp] --certificate-oidc-issuer[-regexp]` does.
//!
//! Time: a short-lived certificate has expired long before anyone pulls, so it is judged
//! at a trusted signing time: the integrated time of a transparency-log entry whose
//! signed entry timestamp verifies with a configured log key and whose body is this
//! signature (`dev.sigstore.cosign/bundle`), or the time of an RFC 3161 timestamp from a
//! configured authority over the signature (`dev.sigstore.cosign/rfc3161timestamp`).
//! Without either, the chain is judged now, and an expired certificate is refused with a
//! message saying no trusted time was found.

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage};

use crate::cosign::{TrustedKey, Verified, check_simple_signing, decode_b64};
use crate::keys::PublicKey;
use crate::x509::{self, CertInfo};
use crate::{Failure, MAX_ENVELOPE, digest_matches, tsa};

pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
pub const RFC3161_ANNOTATION: &str = "dev.sigstore.cosign/rfc3161timestamp";

/// id-kp-codeSigning.
pub(crate) const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Most certificates read from one chain annotation.
pub const MAX_CHAIN_READ: usize = 10;
/// The default longest path, leaf to root inclusive (Fulcio's: leaf, intermediate, root).
pub const DEFAULT_MAX_CHAIN: usize = 3;

/// An identity or issuer as a rule names it.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    /// Compiled as `^(?:pattern)$`: a pattern never matches a longer identity.
    Regex(regex::Regex),
}

impl Matcher {
    pub fn regex(pattern: &str) -> Result<Matcher, String> {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map(Matcher::Regex)
            .map_err(|e| format!("regular expression {pattern:?}: {e}"))
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }

    fn describe(&self) -> String {
        match self {
            Matcher::Exact(e) => format!("{e:?}"),
            Matcher::Regex(r) => format!("/{}/", r.as_str()),
        }
    }
}

/// CA roots with the identities and issuers they vouch for, and the time authorities
/// trusted to date a signature.
#[derive(Debug, Clone)]
pub struct CertTrust {
    pub name: String,
    pub roots: Vec<CertificateDer<'static>>,
    pub identities: Vec<Matcher>,
    pub issuers: Vec<Matcher>,
    /// Longest path accepted, leaf to root inclusive.
    pub max_chain: usize,
    /// Transparency-log public keys (a Rekor entry's `logID` is the SHA-256 of its key).
    pub log_keys: Vec<TrustedKey>,
    /// RFC 3161 timestamp authorities' roots.
    pub tsa_roots: Vec<CertificateDer<'static>>,
}

/// Reads PEM certificates (CA roots, TSA roots), each usable as a trust anchor.
pub fn roots_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("the PEM holds no certificate".into());
    }
    for c in &certs {
        webpki::anchor_from_trusted_cert(c).map_err(|e| format!("certificate: {e:?}"))?;
    }
    Ok(certs)
}

/// What a cosign signature layer carries besides its signature.
#[derive(Debug, Clone, Copy, Default)]
pub struct Material<'a> {
    pub certificate: &'a str,
    pub chain: Option<&'a str>,
    pub bundle: Option<&'a str>,
    pub rfc3161: Option<&'a str>,
}

/// A PEM annotation's certificates, at most `MAX_CHAIN_READ`.
/// The signing certificate and the chain a signature layer carries in its annotations.
fn certificates(
    m: &Material<'_>,
) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), Failure> {
    let leaf = pem_certs(m.certificate, "certificate annotation")?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Invalid("certificate annotation holds no certificate".into()))?;
    let chain = match m.chain {
        Some(c) => pem_certs(c, "chain annotation")?,
        None => Vec::new(),
    };
    Ok((leaf, chain))
}

fn leaf_key(leaf: &EndEntityCert<'_>) -> Result<PublicKey, Failure> {
    PublicKey::from_spki(leaf.subject_public_key_info().as_ref())
        .map_err(|e| Failure::UnsupportedAlgorithm(format!("signing certificate key: {e}")))
}

fn pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let c = c.map_err(|e| Failure::Invalid(format!("{what}: {e}")))?;
        if out.len() == MAX_CHAIN_READ {
            return Err(Failure::Invalid(format!(
                "{what} holds more than {MAX_CHAIN_READ} certificates"
            )));
        }
        out.push(c);
    }
    Ok(out)
}

/// Verifies a simple-signing layer signed with a certificate.
pub fn verify_simple_signing(
    subject: &str,
    payload: &[u8],
    payload_digest: &str,
    signature: &str,
    m: &Material<'_>,
    trusts: &[CertTrust],
    now: i64,
) -> Result<Verified, Failure> {
    if payload.len() > MAX_ENVELOPE || m.certificate.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("payload is too large".into()));
    }
    if !digest_matches(payload_digest, payload) {
        return Err(Failure::Tampered(
            "payload bytes do not match their digest".into(),
        ));
    }
    let sig = decode_b64(signature)
        .ok_or_else(|| Failure::Invalid("signature annotation is not base64".into()))?;
    let (leaf_der, chain) = certificates(m)?;
    let leaf = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| Failure::Invalid(format!("signing certificate: {e:?}")))?;
    let key = leaf_key(&leaf)?;
    if !key.verify_cosign(payload, &sig) {
        return Err(Failure::Tampered(
            "the signature does not verify with its certificate's key".into(),
        ));
    }
    check_simple_signing(payload, subject)?;
    let info = x509::parse(leaf_der.as_ref())
        .map_err(|_| Failure::Invalid("signing certificate: malformed".into()))?;
    if trusts.is_empty() {
        return Err(Failure::UntrustedChain(
            "no certificate trust applies".into(),
        ));
    }
    let signed = Signed {
        payload,
        signature: &sig,
        leaf_der: leaf_der.as_ref(),
    };
    let mut first = None;
    for t in trusts {
        match judge(&leaf, &chain, &info, t, m, &signed, now) {
            Ok(key) => {
                return Ok(Verified {
                    key,
                    predicate_type: None,
                });
            }
            Err(f) => {
                first.get_or_insert(f);
            }
        }
    }
    Err(first.unwrap_or_else(|| Failure::UntrustedChain("no certificate trust applies".into())))
}

/// Verifies a DSSE attestation layer (`cosign attest --certificate ...`) signed with a
/// certificate: the envelope's signature with the leaf's key, the statement about
/// `subject`, then the chain, identity and issuer as for signatures. A Rekor bundle of
/// such a layer is an `intoto`/`dsse` entry, which this does not read: with a log key
/// configured, such evidence is refused as an unverifiable time rather than ignored.
pub fn verify_dsse(
    subject: &str,
    envelope: &[u8],
    envelope_digest: &str,
    m: &Material<'_>,
    trusts: &[CertTrust],
    now: i64,
) -> Result<Verified, Failure> {
    if envelope.len() > MAX_ENVELOPE || m.certificate.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("envelope is too large".into()));
    }
    if !digest_matches(envelope_digest, envelope) {
        return Err(Failure::Tampered(
            "envelope bytes do not match their digest".into(),
        ));
    }
    let env: crate::cosign::Envelope = serde_json::from_slice(envelope)
        .map_err(|e| Failure::Invalid(format!("DSSE envelope: {e}")))?;
    let payload = decode_b64(&env.payload)
        .ok_or_else(|| Failure::Invalid("DSSE payload is not base64".into()))?;
    if env.signatures.is_empty() || env.signatures.len() > crate::cosign::MAX_DSSE_SIGNATURES {
        return Err(Failure::Invalid(format!(
            "DSSE envelope has {} signatures",
            env.signatures.len()
        )));
    }
    let (leaf_der, chain) = certificates(m)?;
    let leaf = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| Failure::Invalid(format!("signing certificate: {e:?}")))?;
    let key = leaf_key(&leaf)?;
    let message = crate::cosign::pae(&env.payload_type, &payload);
    let sig = env
        .signatures
        .iter()
        .filter_map(|s| decode_b64(&s.sig))
        .find(|sig| key.verify_cosign(&message, sig))
        .ok_or_else(|| {
            Failure::Tampered(
                "the envelope's signature does not verify with its certificate's key".into(),
            )
        })?;
    let predicate_type = crate::cosign::check_statement(&env.payload_type, &payload, subject)?;
    let info = x509::parse(leaf_der.as_ref())
        .map_err(|_| Failure::Invalid("signing certificate: malformed".into()))?;
    let signed = Signed {
        payload: &payload,
        signature: &sig,
        leaf_der: leaf_der.as_ref(),
    };
    let mut first = None;
    for t in trusts {
        match judge(&leaf, &chain, &info, t, m, &signed, now) {
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

/// What a log entry or a timestamp must be about.
pub(crate) struct Signed<'a> {
    pub payload: &'a [u8],
    pub signature: &'a [u8],
    pub leaf_der: &'a [u8],
}

/// A signing time and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedTime {
    pub at: i64,
    pub source: String,
}

fn judge(
    leaf: &EndEntityCert<'_>,
    chain: &[CertificateDer<'_>],
    info: &CertInfo,
    t: &CertTrust,
    m: &Material<'_>,
    signed: &Signed<'_>,
    now: i64,
) -> Result<String, Failure> {
    let mut times = Vec::new();
    if let Some(b) = m.bundle
        && !t.log_keys.is_empty()
    {
        times.push(verify_rekor_bundle(b, signed, &t.log_keys)?);
    }
    if let Some(ts) = m.rfc3161
        && !t.tsa_roots.is_empty()
    {
        let token = cosign_timestamp(ts)?;
        times.push(tsa::verify_token(
            &token,
            signed.signature,
            &t.tsa_roots,
            now,
        )?);
    }
    check_chain(leaf, chain, info, t, &times, now)?;
    check_identity(info, &t.identities, &t.issuers, &t.name)
}

/// The chain at every trusted time (or now, without one), and its length.
pub(crate) fn check_chain(
    leaf: &EndEntityCert<'_>,
    chain: &[CertificateDer<'_>],
    info: &CertInfo,
    t: &CertTrust,
    times: &[TrustedTime],
    now: i64,
) -> Result<(), Failure> {
    let anchors: Vec<_> = t
        .roots
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let validity = format!(
        "valid from {} to {}",
        berth_oci::time::rfc3339(info.not_before),
        berth_oci::time::rfc3339(info.not_after)
    );
    let untimed = [TrustedTime {
        at: now,
        source: String::new(),
    }];
    let judged_at: &[TrustedTime] = if times.is_empty() { &untimed } else { times };
    for at in judged_at {
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.at.max(0) as u64));
        let path = leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            chain,
            time,
            LeafEku::new(EKU_CODE_SIGNING),
            None,
            None,
        );
        let len = match path {
            Ok(p) => 2 + p.intermediate_certificates().count(),
            Err(e) => {
                return Err(match e {
                    webpki::Error::RequiredEkuNotFoundContext(_) => Failure::NoCodeSigningEku,
                    webpki::Error::CertExpired { .. }
                    | webpki::Error::CertNotValidYet { .. }
                    | webpki::Error::InvalidCertValidity => {
                        if times.is_empty() {
                            Failure::Expired(format!(
                                "the certificate chain is not valid now (the leaf is \
                                 {validity}) and no trusted signing time (a transparency-log \
                                 entry verified with a configured log key, or an RFC 3161 \
                                 timestamp from a configured authority) shows it was signed \
                                 while valid"
                            ))
                        } else {
                            Failure::Expired(format!(
                                "signed at {} ({}), outside the certificate chain's validity \
                                 (the leaf is {validity})",
                                berth_oci::time::rfc3339(at.at),
                                at.source
                            ))
                        }
                    }
                    webpki::Error::UnknownIssuer => Failure::UntrustedChain(format!(
                        "no CA root of {:?} issued the certificate chain",
                        t.name
                    )),
                    other => Failure::UntrustedChain(format!("{other:?}")),
                });
            }
        };
        if len > t.max_chain {
            return Err(Failure::ChainTooLong(format!(
                "the certificate path has {len} certificates, {:?} allows {}",
                t.name, t.max_chain
            )));
        }
    }
    Ok(())
}

/// The leaf's identity and issuer against the rule's; the matched identity names it.
pub(crate) fn check_identity(
    info: &CertInfo,
    identities: &[Matcher],
    issuers: &[Matcher],
    trust: &str,
) -> Result<String, Failure> {
    let Some(identity) = info
        .identities()
        .find(|id| identities.iter().any(|m| m.matches(id)))
    else {
        let have: Vec<&str> = info.identities().collect();
        let want: Vec<String> = identities.iter().map(Matcher::describe).collect();
        return Err(Failure::UntrustedIdentity(format!(
            "certificate identities {have:?} match none of {trust:?}'s ({})",
            want.join(", ")
        )));
    };
    let issuer = info.issuer.as_deref().ok_or_else(|| {
        Failure::UntrustedIssuer("the certificate names no OIDC issuer (Fulcio extension)".into())
    })?;
    if !issuers.iter().any(|m| m.matches(issuer)) {
        let want: Vec<String> = issuers.iter().map(Matcher::describe).collect();
        return Err(Failure::UntrustedIssuer(format!(
            "issuer {issuer:?} matches none of {trust:?}'s ({})",
            want.join(", ")
        )));
    }
    Ok(format!("{identity} ({issuer}) via {trust}"))
}

/// The EKU a leaf must carry; past the leaf (webpki runs the validator on every
/// certificate of the path, leaf first) only required if the CA lists EKUs at all.
pub(crate) struct LeafEku {
    oid: &'static [u8],
    leaf_seen: Cell<bool>,
}

impl LeafEku {
    pub(crate) fn new(oid: &'static [u8]) -> LeafEku {
        LeafEku {
            oid,
            leaf_seen: Cell::new(false),
        }
    }
}

impl ExtendedKeyUsageValidator for LeafEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        if self.leaf_seen.replace(true) {
            KeyUsage::required_if_present(self.oid).validate(iter)
        } else {
            KeyUsage::required(self.oid).validate(iter)
        }
    }
}

// ---- Rekor bundles (`dev.sigstore.cosign/bundle`) ----

#[derive(Deserialize)]
struct RekorBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: RekorPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
struct HashedRekord {
    kind: String,
    spec: HashedRekordSpec,
}

#[derive(Deserialize)]
struct HashedRekordSpec {
    data: HrData,
    signature: HrSignature,
}

#[derive(Deserialize)]
struct HrData {
    hash: HrHash,
}

#[derive(Deserialize)]
struct HrHash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HrSignature {
    content: String,
    public_key: HrKey,
}

#[derive(Deserialize)]
struct HrKey {
    content: String,
}

/// The bytes a Rekor signed entry timestamp covers: the entry's canonical JSON (keys
/// sorted, no spaces).
pub fn rekor_set_message(
    body: &str,
    integrated_time: i64,
    log_id: &str,
    log_index: i64,
) -> Vec<u8> {
    let s = |v: &str| serde_json::Value::String(v.to_owned()).to_string();
    format!(
        "{{\"body\":{},\"integratedTime\":{integrated_time},\"logID\":{},\"logIndex\":{log_index}}}",
        s(body),
        s(log_id)
    )
    .into_bytes()
}

/// Verifies a cosign Rekor bundle: the signed entry timestamp with the configured log key
/// its `logID` names, and a `hashedrekord` body about exactly this payload, signature and
/// certificate. Its integrated time is then a trusted signing time.
pub(crate) fn verify_rekor_bundle(
    bundle: &str,
    signed: &Signed<'_>,
    log_keys: &[TrustedKey],
) -> Result<TrustedTime, Failure> {
    let b: RekorBundle =
        serde_json::from_str(bundle).map_err(|e| Failure::Invalid(format!("Rekor bundle: {e}")))?;
    let p = &b.payload;
    let key = log_keys
        .iter()
        .find(|k| k.key.fingerprint.eq_ignore_ascii_case(&p.log_id))
        .ok_or_else(|| {
            Failure::UntrustedTime(format!(
                "the log entry names log {:?}, none of the {} configured log key(s)",
                p.log_id,
                log_keys.len()
            ))
        })?;
    let set = decode_b64(&b.set)
        .ok_or_else(|| Failure::Invalid("SignedEntryTimestamp is not base64".into()))?;
    let msg = rekor_set_message(&p.body, p.integrated_time, &p.log_id, p.log_index);
    if !key.key.verify_cosign(&msg, &set) {
        return Err(Failure::UntrustedTime(format!(
            "the log entry's signed entry timestamp does not verify with log key {:?}",
            key.name
        )));
    }
    let body = decode_b64(&p.body)
        .ok_or_else(|| Failure::Invalid("log entry body is not base64".into()))?;
    let rec: HashedRekord = serde_json::from_slice(&body)
        .map_err(|e| Failure::UntrustedTime(format!("log entry body: {e}")))?;
    let other =
        |what: &str| Failure::UntrustedTime(format!("the log entry is about another {what}"));
    if rec.kind != "hashedrekord" {
        return Err(Failure::UntrustedTime(format!(
            "log entry kind {:?} is not hashedrekord",
            rec.kind
        )));
    }
    let h = &rec.spec.data.hash;
    if h.algorithm != "sha256"
        || !digest_matches(
            &format!("sha256:{}", h.value.to_ascii_lowercase()),
            signed.payload,
        )
    {
        return Err(other("payload"));
    }
    if decode_b64(&rec.spec.signature.content).as_deref() != Some(signed.signature) {
        return Err(other("signature"));
    }
    let key_pem =
        decode_b64(&rec.spec.signature.public_key.content).ok_or_else(|| other("certificate"))?;
    let logged = CertificateDer::from_pem_slice(&key_pem).map_err(|_| other("certificate"))?;
    if logged.as_ref() != signed.leaf_der {
        return Err(other("certificate"));
    }
    Ok(TrustedTime {
        at: p.integrated_time,
        source: format!("transparency log {:?}, entry {}", key.name, p.log_index),
    })
}

#[derive(Deserialize)]
struct CosignTimestamp {
    #[serde(rename = "SignedRFC3161Timestamp")]
    token: String,
}

/// The DER timestamp token of cosign's `rfc3161timestamp` annotation.
fn cosign_timestamp(annotation: &str) -> Result<Vec<u8>, Failure> {
    let t: CosignTimestamp = serde_json::from_str(annotation)
        .map_err(|e| Failure::Invalid(format!("RFC 3161 timestamp annotation: {e}")))?;
    STANDARD
        .decode(t.token.trim())
        .map_err(|_| Failure::Invalid("RFC 3161 timestamp is not base64".into()))
}
