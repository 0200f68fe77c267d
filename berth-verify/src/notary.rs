//! Notary Project signatures (notation): JWS (JSON serialization) and COSE_Sign1
//! envelopes whose payload names the signed manifest, signed by the leaf of an X.509
//! chain carried in the envelope (`x5c`, COSE header 33), checked against a trust store
//! and trusted identities as notation's trust policy defines them.
//!
//! Checks in notation's order: integrity (envelope well formed, the signature verifies
//! with the envelope's own leaf, the payload names this manifest), authenticity (the
//! chain leads to the trust store at signing time, the leaf has the code-signing EKU,
//! its subject is a trusted identity), authentic timestamp (for `notary.x509`, without a
//! timestamp authority: the chain is still valid now) and expiry. The verification level
//! decides which of them refuse and which only warn.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use webpki::EndEntityCert;

use crate::cbor::{self, Value};
use crate::der::{self, OID, Reader, SEQUENCE, SET};
use crate::keyless::{EKU_CODE_SIGNING, LeafEku};
use crate::keys::{PublicKey, SigAlg};
use crate::{Failure, MAX_ENVELOPE, digest_matches};

pub const JWS_MEDIA_TYPE: &str = "application/jose+json";
pub const COSE_MEDIA_TYPE: &str = "application/cose";
pub const PAYLOAD_CTY: &str = "application/vnd.cncf.notary.payload.v1+json";
const SCHEME: &str = "io.cncf.notary.signingScheme";
const SIGNING_TIME: &str = "io.cncf.notary.signingTime";
const EXPIRY: &str = "io.cncf.notary.expiry";
const AUTHENTIC_SIGNING_TIME: &str = "io.cncf.notary.authenticSigningTime";
/// The unsigned header holding an RFC 3161 timestamp token over the signature.
pub const TIMESTAMP_SIGNATURE: &str = "io.cncf.notary.timestampSignature";

/// Most certificates read from one chain, and the longest path accepted by default.
pub const MAX_CHAIN: usize = 10;

/// notation's verification levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Strict,
    Permissive,
    Audit,
    Skip,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "strict" => Level::Strict,
            "permissive" => Level::Permissive,
            "audit" => Level::Audit,
            "skip" => Level::Skip,
            _ => return None,
        })
    }
}

/// A trusted identity: `*`, or `x509.subject: C=US, O=Acme, CN=ci` (every attribute named
/// must be in the signing certificate's subject with that value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Any,
    Subject(Vec<(String, String)>),
}

impl Identity {
    pub fn parse(s: &str) -> Result<Identity, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Identity::Any);
        }
        let dn = s
            .strip_prefix("x509.subject:")
            .ok_or_else(|| format!("trusted identity {s:?} is neither * nor x509.subject: ..."))?;
        let attrs = split_dn(dn)?;
        if attrs.is_empty() {
            return Err(format!("trusted identity {s:?} names no attribute"));
        }
        Ok(Identity::Subject(attrs))
    }

    fn matches(&self, subject: &[(String, String)]) -> bool {
        match self {
            Identity::Any => true,
            Identity::Subject(want) => want.iter().all(|(k, v)| {
                subject
                    .iter()
                    .any(|(sk, sv)| sk.eq_ignore_ascii_case(k) && sv == v)
            }),
        }
    }
}

/// Splits `C=US, O=Acme\, Inc., CN=ci` into attributes (a backslash escapes the next
/// character).
fn split_dn(dn: &str) -> Result<Vec<(String, String)>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("{p:?} is not ATTRIBUTE=value"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// One trust store with the policy that uses it.
#[derive(Debug, Clone)]
pub struct NotaryTrust {
    pub name: String,
    pub roots: Vec<CertificateDer<'static>>,
    pub identities: Vec<Identity>,
    pub level: Level,
    /// Longest certificate path accepted, leaf to root inclusive.
    pub max_chain: usize,
    /// Roots of the timestamp authorities whose RFC 3161 countersignature dates a
    /// signature (`notation sign --timestamp-url`); empty: timestamps are not read.
    pub tsa_roots: Vec<CertificateDer<'static>>,
}

impl NotaryTrust {
    /// Reads the trust store's PEM certificates.
    pub fn roots_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("trust store PEM: {e}"))?;
        if certs.is_empty() {
            return Err("trust store PEM holds no certificate".into());
        }
        for c in &certs {
            webpki::anchor_from_trusted_cert(c)
                .map_err(|e| format!("trust store certificate: {e:?}"))?;
        }
        Ok(certs)
    }
}

/// A signature that satisfies the trust policy, possibly with warnings the level allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The leaf certificate's subject, `C=.., O=.., CN=..`.
    pub signer: String,
    /// Signing time: the timestamp authority's if a configured one dated the signature,
    /// else the signer's claim.
    pub signing_time: i64,
    pub warnings: Vec<String>,
}

struct Parsed {
    alg: SigAlg,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
    payload: Vec<u8>,
    certs: Vec<Vec<u8>>,
    signing_time: i64,
    expiry: Option<i64>,
    /// DER timestamp token of the unsigned header, if any.
    timestamp: Option<Vec<u8>>,
}

/// Verifies one Notary signature envelope of `media_type` against `target` (the digest
/// of the manifest it should sign). `now` is seconds since the epoch.
pub fn verify(
    media_type: &str,
    envelope: &[u8],
    envelope_digest: &str,
    target: &str,
    trust: &NotaryTrust,
    now: u64,
) -> Result<Verified, Failure> {
    if trust.level == Level::Skip {
        return Ok(Verified {
            signer: String::new(),
            signing_time: 0,
            warnings: vec!["verification level skip: not verified".into()],
        });
    }
    // Integrity: always enforced.
    if envelope.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("envelope is too large".into()));
    }
    if !digest_matches(envelope_digest, envelope) {
        return Err(Failure::Tampered(
            "envelope bytes do not match their digest".into(),
        ));
    }
    let mut p = match media_type {
        JWS_MEDIA_TYPE => parse_jws(envelope)?,
        COSE_MEDIA_TYPE => parse_cose(envelope)?,
        other => {
            return Err(Failure::Invalid(format!(
                "{other:?} is not a Notary envelope type"
            )));
        }
    };
    let leaf_der = CertificateDer::from(p.certs[0].as_slice());
    let leaf = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| Failure::Invalid(format!("signing certificate: {e:?}")))?;
    let key = PublicKey::from_spki(leaf.subject_public_key_info().as_ref())
        .map_err(|e| Failure::UnsupportedAlgorithm(format!("signing certificate key: {e}")))?;
    if !p.alg.fits(&key) {
        return Err(Failure::UnsupportedAlgorithm(format!(
            "{} signature from a {} key",
            p.alg.name(),
            key.kind.as_str()
        )));
    }
    if let Some(bits) = key.rsa_bits() {
        let want = match p.alg {
            SigAlg::Ps256 => 2048,
            SigAlg::Ps384 => 3072,
            _ => 4096,
        };
        if bits != want {
            return Err(Failure::UnsupportedAlgorithm(format!(
                "{} with a {bits}-bit RSA key",
                p.alg.name()
            )));
        }
    }
    if !key.verify_with(p.alg, &p.signing_input, &p.signature) {
        return Err(Failure::Tampered(
            "the signature does not verify with the envelope's own certificate".into(),
        ));
    }
    let payload: Payload = serde_json::from_slice(&p.payload)
        .map_err(|e| Failure::Invalid(format!("payload: {e}")))?;
    if payload.target_artifact.digest != target {
        return Err(Failure::OtherDigest {
            signed: payload.target_artifact.digest,
        });
    }
    let signer_attrs = subject_attributes(leaf.subject());
    let signer = signer_attrs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");

    let mut warnings = Vec::new();
    let mut late = Vec::new();
    // An RFC 3161 timestamp over the signature from a configured authority replaces the
    // signer's own claim of when it signed, and makes "the chain is still valid now"
    // unnecessary (notation's authentic timestamp).
    let mut trusted_time = None;
    if let Some(token) = &p.timestamp
        && !trust.tsa_roots.is_empty()
    {
        match crate::tsa::verify_token(token, &p.signature, &trust.tsa_roots, now as i64) {
            Ok(t) => trusted_time = Some(t.at),
            Err(f) => late.push(f),
        }
    }
    if let Some(t) = trusted_time {
        p.signing_time = t;
    }
    // Authenticity.
    let authenticity = authenticate(&leaf, &p, trust, &signer_attrs, &signer);
    let authentic = authenticity.is_ok();
    match (authenticity, trust.level) {
        (Ok(()), _) => {}
        (Err(f), Level::Audit) => warnings.push(f.to_string()),
        (Err(f), _) => return Err(f),
    }
    // Authentic timestamp and expiry: refused only under strict.
    let intermediates: Vec<CertificateDer<'_>> = p.certs[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    // Only a chain that was trusted when it signed can have expired since; an untrusted
    // one was already reported.
    if authentic
        && trusted_time.is_none()
        && let Err(e) = chain(&leaf, &intermediates, trust, now as i64)
    {
        late.push(Failure::Expired(format!(
            "the certificate chain is not valid now ({e:?}) and no trusted timestamp (RFC 3161, \
             from a configured timestamp authority) shows it signed while valid"
        )));
    }
    if let Some(exp) = p.expiry
        && exp <= now as i64
    {
        late.push(Failure::Expired(format!(
            "the signature expired at {}",
            rfc3339(exp)
        )));
    }
    for f in late {
        if trust.level == Level::Strict {
            return Err(f);
        }
        warnings.push(f.to_string());
    }
    Ok(Verified {
        signer,
        signing_time: p.signing_time,
        warnings,
    })
}

/// The chain at `at`; the path's length, leaf to root inclusive.
fn chain(
    leaf: &EndEntityCert<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &NotaryTrust,
    at: i64,
) -> Result<usize, webpki::Error> {
    let anchors: Vec<_> = trust
        .roots
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.max(0) as u64));
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        LeafEku::new(EKU_CODE_SIGNING),
        None,
        None,
    )
    .map(|p| 2 + p.intermediate_certificates().count())
}

fn authenticate(
    leaf: &EndEntityCert<'_>,
    p: &Parsed,
    trust: &NotaryTrust,
    signer_attrs: &[(String, String)],
    signer: &str,
) -> Result<(), Failure> {
    let intermediates: Vec<CertificateDer<'_>> = p.certs[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let len = chain(leaf, &intermediates, trust, p.signing_time).map_err(|e| match e {
        webpki::Error::RequiredEkuNotFoundContext(_) => Failure::NoCodeSigningEku,
        webpki::Error::CertExpired { .. }
        | webpki::Error::CertNotValidYet { .. }
        | webpki::Error::InvalidCertValidity => Failure::Expired(format!(
            "signed at {}, outside the certificate chain's validity",
            rfc3339(p.signing_time)
        )),
        webpki::Error::UnknownIssuer => Failure::UntrustedChain(format!(
            "no certificate of trust store {:?} issued the chain",
            trust.name
        )),
        other => Failure::UntrustedChain(format!("{other:?}")),
    })?;
    if len > trust.max_chain {
        return Err(Failure::ChainTooLong(format!(
            "the certificate path has {len} certificates, {:?} allows {}",
            trust.name, trust.max_chain
        )));
    }
    if !trust.identities.iter().any(|i| i.matches(signer_attrs)) {
        return Err(Failure::UntrustedIdentity(format!(
            "{signer} is not a trusted identity of {:?}",
            trust.name
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    target_artifact: TargetArtifact,
}

#[derive(Deserialize)]
struct TargetArtifact {
    digest: String,
}

fn alg_from_jws(alg: &str) -> Result<SigAlg, Failure> {
    Ok(match alg {
        "ES256" => SigAlg::Es256,
        "ES384" => SigAlg::Es384,
        "PS256" => SigAlg::Ps256,
        "PS384" => SigAlg::Ps384,
        "PS512" => SigAlg::Ps512,
        other => return Err(Failure::UnsupportedAlgorithm(other.to_owned())),
    })
}

fn alg_from_cose(alg: i64) -> Result<SigAlg, Failure> {
    Ok(match alg {
        -7 => SigAlg::Es256,
        -35 => SigAlg::Es384,
        -37 => SigAlg::Ps256,
        -38 => SigAlg::Ps384,
        -39 => SigAlg::Ps512,
        -36 => return Err(Failure::UnsupportedAlgorithm("ES512 (P-521)".into())),
        other => return Err(Failure::UnsupportedAlgorithm(format!("COSE alg {other}"))),
    })
}

/// Header names a verifier must understand when they are listed as critical.
fn check_crit(crit: &[String], has_expiry: bool) -> Result<(), Failure> {
    if !crit.iter().any(|c| c == SCHEME) {
        return Err(Failure::Invalid(format!("{SCHEME} is not marked critical")));
    }
    if has_expiry && !crit.iter().any(|c| c == EXPIRY) {
        return Err(Failure::Invalid(format!("{EXPIRY} is not marked critical")));
    }
    if let Some(c) = crit
        .iter()
        .find(|c| ![SCHEME, EXPIRY, AUTHENTIC_SIGNING_TIME].contains(&c.as_str()))
    {
        return Err(Failure::Invalid(format!("unknown critical header {c:?}")));
    }
    Ok(())
}

fn check_scheme(scheme: &str) -> Result<(), Failure> {
    match scheme {
        "notary.x509" => Ok(()),
        "notary.x509.signingAuthority" => Err(Failure::UnsupportedAlgorithm(
            "signing scheme notary.x509.signingAuthority (needs a timestamp authority)".into(),
        )),
        other => Err(Failure::Invalid(format!("signing scheme {other:?}"))),
    }
}

fn check_chain_len(certs: &[Vec<u8>]) -> Result<(), Failure> {
    if certs.is_empty() {
        return Err(Failure::Invalid(
            "the envelope carries no certificate".into(),
        ));
    }
    if certs.len() > MAX_CHAIN {
        return Err(Failure::Invalid(format!(
            "the envelope carries {} certificates",
            certs.len()
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Jws {
    payload: String,
    protected: String,
    header: JwsHeader,
    signature: String,
}

#[derive(Deserialize)]
struct JwsHeader {
    x5c: Vec<String>,
    #[serde(rename = "io.cncf.notary.timestampSignature")]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct JwsProtected {
    alg: String,
    #[serde(default)]
    crit: Vec<String>,
    cty: Option<String>,
    #[serde(rename = "io.cncf.notary.signingScheme")]
    scheme: Option<String>,
    #[serde(rename = "io.cncf.notary.signingTime")]
    signing_time: Option<String>,
    #[serde(rename = "io.cncf.notary.expiry")]
    expiry: Option<String>,
}

fn b64url(s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| Failure::Invalid(format!("{what} is not base64url")))
}

fn parse_jws(envelope: &[u8]) -> Result<Parsed, Failure> {
    let jws: Jws =
        serde_json::from_slice(envelope).map_err(|e| Failure::Invalid(format!("JWS: {e}")))?;
    let protected_raw = b64url(&jws.protected, "protected header")?;
    let protected: JwsProtected = serde_json::from_slice(&protected_raw)
        .map_err(|e| Failure::Invalid(format!("JWS protected header: {e}")))?;
    let alg = alg_from_jws(&protected.alg)?;
    if protected.cty.as_deref() != Some(PAYLOAD_CTY) {
        return Err(Failure::Invalid(format!(
            "content type {:?} is not {PAYLOAD_CTY}",
            protected.cty
        )));
    }
    check_crit(&protected.crit, protected.expiry.is_some())?;
    check_scheme(protected.scheme.as_deref().unwrap_or(""))?;
    let signing_time = protected
        .signing_time
        .as_deref()
        .and_then(parse_rfc3339)
        .ok_or_else(|| Failure::Invalid("no valid signing time".into()))?;
    let expiry = match protected.expiry.as_deref() {
        Some(e) => Some(parse_rfc3339(e).ok_or_else(|| Failure::Invalid("bad expiry".into()))?),
        None => None,
    };
    let certs = jws
        .header
        .x5c
        .iter()
        .take(MAX_CHAIN + 1)
        .map(|c| {
            STANDARD
                .decode(c)
                .map_err(|_| Failure::Invalid("x5c entry is not base64".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_chain_len(&certs)?;
    let timestamp = match &jws.header.timestamp {
        Some(t) => Some(
            STANDARD
                .decode(t)
                .map_err(|_| Failure::Invalid("timestamp signature is not base64".into()))?,
        ),
        None => None,
    };
    Ok(Parsed {
        alg,
        timestamp,
        signing_input: format!("{}.{}", jws.protected, jws.payload).into_bytes(),
        signature: b64url(&jws.signature, "signature")?,
        payload: b64url(&jws.payload, "payload")?,
        certs,
        signing_time,
        expiry,
    })
}

fn map_get<'v, 'a>(map: &'v [(Value<'a>, Value<'a>)], key: &Value<'_>) -> Option<&'v Value<'a>> {
    map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn cose_time(v: Option<&Value<'_>>) -> Option<i64> {
    match v? {
        Value::Tag(1, inner) => inner.as_int(),
        other => other.as_int(),
    }
}

fn parse_cose(envelope: &[u8]) -> Result<Parsed, Failure> {
    let v = cbor::decode(envelope).map_err(|e| Failure::Invalid(format!("COSE: {e}")))?;
    let v = match v {
        Value::Tag(18, inner) => *inner,
        Value::Tag(t, _) => return Err(Failure::Invalid(format!("COSE tag {t} is not Sign1"))),
        other => other,
    };
    let Value::Array(items) = v else {
        return Err(Failure::Invalid("COSE_Sign1 is not an array".into()));
    };
    let [
        Value::Bytes(protected_raw),
        Value::Map(unprotected),
        Value::Bytes(payload),
        Value::Bytes(signature),
    ] = items.as_slice()
    else {
        return Err(Failure::Invalid("COSE_Sign1 has the wrong shape".into()));
    };
    let protected = match cbor::decode(protected_raw) {
        Ok(Value::Map(m)) => m,
        _ => {
            return Err(Failure::Invalid(
                "COSE protected header is not a map".into(),
            ));
        }
    };
    let alg = map_get(&protected, &Value::Uint(1))
        .and_then(Value::as_int)
        .ok_or_else(|| Failure::Invalid("COSE header has no alg".into()))?;
    let alg = alg_from_cose(alg)?;
    let cty = match map_get(&protected, &Value::Uint(3)) {
        Some(Value::Text(t)) => *t,
        _ => "",
    };
    if cty != PAYLOAD_CTY {
        return Err(Failure::Invalid(format!(
            "content type {cty:?} is not {PAYLOAD_CTY}"
        )));
    }
    let crit: Vec<String> = match map_get(&protected, &Value::Uint(2)) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|c| match c {
                Value::Text(t) => (*t).to_owned(),
                other => format!("{other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    let expiry_value = map_get(&protected, &Value::Text(EXPIRY));
    check_crit(&crit, expiry_value.is_some())?;
    match map_get(&protected, &Value::Text(SCHEME)) {
        Some(Value::Text(s)) => check_scheme(s)?,
        _ => return Err(Failure::Invalid("no signing scheme".into())),
    }
    let signing_time = cose_time(map_get(&protected, &Value::Text(SIGNING_TIME)))
        .ok_or_else(|| Failure::Invalid("no valid signing time".into()))?;
    let expiry = match expiry_value {
        Some(v) => Some(cose_time(Some(v)).ok_or_else(|| Failure::Invalid("bad expiry".into()))?),
        None => None,
    };
    let certs: Vec<Vec<u8>> = match map_get(unprotected, &Value::Uint(33)) {
        Some(Value::Bytes(b)) => vec![b.to_vec()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|c| match c {
                Value::Bytes(b) => Ok(b.to_vec()),
                _ => Err(Failure::Invalid("x5chain entry is not bytes".into())),
            })
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    check_chain_len(&certs)?;
    // Sig_structure: ["Signature1", protected, external_aad = h'', payload]
    let mut tbs = Vec::with_capacity(protected_raw.len() + payload.len() + 32);
    cbor::encode_head(&mut tbs, 4, 4);
    cbor::encode_head(&mut tbs, 3, 10);
    tbs.extend_from_slice(b"Signature1");
    cbor::encode_head(&mut tbs, 2, protected_raw.len() as u64);
    tbs.extend_from_slice(protected_raw);
    cbor::encode_head(&mut tbs, 2, 0);
    cbor::encode_head(&mut tbs, 2, payload.len() as u64);
    tbs.extend_from_slice(payload);
    let timestamp = match map_get(unprotected, &Value::Text(TIMESTAMP_SIGNATURE)) {
        Some(Value::Bytes(b)) => Some(b.to_vec()),
        Some(_) => return Err(Failure::Invalid("timestamp signature is not bytes".into())),
        None => None,
    };
    Ok(Parsed {
        alg,
        timestamp,
        signing_input: tbs,
        signature: signature.to_vec(),
        payload: payload.to_vec(),
        certs,
        signing_time,
        expiry,
    })
}

/// The attributes of a certificate subject (`Name` contents), in order, with short names.
fn subject_attributes(name: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rdns = Reader::new(name);
    while let Ok(set) = rdns.expect(SET) {
        let mut atvs = Reader::new(set);
        while let Ok(atv) = atvs.expect(SEQUENCE) {
            let mut r = Reader::new(atv);
            let (Ok(oid), Ok(val)) = (r.expect(OID), r.read()) else {
                continue;
            };
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_owned(),
                [0x55, 0x04, 0x06] => "C".to_owned(),
                [0x55, 0x04, 0x07] => "L".to_owned(),
                [0x55, 0x04, 0x08] => "ST".to_owned(),
                [0x55, 0x04, 0x0a] => "O".to_owned(),
                [0x55, 0x04, 0x0b] => "OU".to_owned(),
                [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "E".to_owned(),
                other => der::oid_to_string(other),
            };
            out.push((key, String::from_utf8_lossy(val.value).into_owned()));
        }
    }
    out
}

/// Seconds since the epoch of an RFC 3339 time (`2026-12-06T07:28:13Z`, with optional
/// fraction and offset).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

fn rfc3339(secs: i64) -> String {
    berth_oci::time::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for t in [0i64, 951_782_400, 1_795_317_266, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_rfc3339("2026-12-06T08:28:13+01:00"),
            Some(1_796_542_093)
        );
        assert_eq!(parse_rfc3339("2026-12-06T07:28:13.5Z"), Some(1_796_542_093));
        assert_eq!(parse_rfc3339("2026-13-06T07:28:13Z"), None);
        assert_eq!(parse_rfc3339("2026-12-06T07:28:13"), None);
        assert_eq!(parse_rfc3339("€€€€-12-06T07:28:13Z"), None);
    }

    #[test]
    fn identities() {
        let id = Identity::parse("x509.subject: C=US, O=Acme\\, Inc., CN=ci").expect("parse");
        let subject = vec![
            ("C".to_owned(), "US".to_owned()),
            ("O".to_owned(), "Acme, Inc.".to_owned()),
            ("CN".to_owned(), "ci".to_owned()),
        ];
        assert!(id.matches(&subject));
        assert!(!id.matches(&subject[..2]));
        assert!(Identity::parse("*").expect("any").matches(&[]));
        assert!(Identity::parse("CN=ci").is_err());
    }
}
