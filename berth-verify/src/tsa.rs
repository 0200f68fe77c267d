//! RFC 3161 timestamp tokens: a CMS SignedData whose content is a TSTInfo. A token counts
//! as a trusted signing time when its message imprint is the hash of exactly the bytes
//! it dates (a signature), its signed attributes carry the TSTInfo's digest, their
//! signature verifies with a certificate of the token, and that certificate leads to a
//! configured authority's root with the time-stamping EKU at the token's own time.
//! Read with the bounded DER reader: a hostile token is "invalid" or "untrusted time",
//! never a panic.

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::EndEntityCert;

use crate::der::{
    self, DerError, GENERALIZED_TIME, INTEGER, OCTET_STRING, OID, Reader, SEQUENCE, SET,
};
use crate::keyless::{LeafEku, TrustedTime};
use crate::keys::PublicKey;
use crate::{Failure, MAX_ENVELOPE};

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
/// id-kp-timeStamping.
const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];
/// Most certificates and signers read from one token.
const MAX_ITEMS: usize = 10;

/// The parts of a token its verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub tst_info: &'a [u8],
    pub certificates: Vec<&'a [u8]>,
    pub signers: Vec<SignerInfo<'a>>,
    pub imprint_alg: &'a [u8],
    pub imprint: &'a [u8],
    pub gen_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerInfo<'a> {
    pub digest_alg: &'a [u8],
    /// The signed attributes re-tagged as the SET they are signed as.
    pub signed_attrs: Vec<u8>,
    pub message_digest: &'a [u8],
    pub signature: &'a [u8],
}

fn alg_oid(seq: &[u8]) -> Result<&[u8], DerError> {
    Reader::new(seq).expect(OID)
}

/// The token of a DER TimeStampResp (what a TSA answers, and what cosign stores), or
/// `bytes` itself when it is already a TimeStampToken.
pub fn token_of(bytes: &[u8]) -> Result<&[u8], DerError> {
    let mut outer = Reader::new(der::single(bytes, SEQUENCE)?);
    if outer.peek_tag() == Some(OID) {
        return Ok(bytes);
    }
    // PKIStatusInfo: granted (0) or granted with modifications (1) only.
    let mut status = Reader::new(outer.expect(SEQUENCE)?);
    match status.expect(INTEGER)? {
        [0] | [1] => {}
        _ => return Err(DerError),
    }
    let (t, raw) = outer.read_raw()?;
    if t.tag != SEQUENCE || !outer.is_empty() {
        return Err(DerError);
    }
    Ok(raw)
}

/// Parses a DER TimeStampToken (a ContentInfo), or the TimeStampResp holding one.
pub fn parse_token(token: &[u8]) -> Result<Token<'_>, DerError> {
    let token = token_of(token)?;
    let mut ci = Reader::new(der::single(token, SEQUENCE)?);
    if ci.expect(OID)? != OID_SIGNED_DATA {
        return Err(DerError);
    }
    let sd = der::single(ci.expect(0xa0)?, SEQUENCE)?;
    let mut sd = Reader::new(sd);
    sd.expect(INTEGER)?;
    sd.expect(SET)?; // digestAlgorithms
    let mut encap = Reader::new(sd.expect(SEQUENCE)?);
    if encap.expect(OID)? != OID_TST_INFO {
        return Err(DerError);
    }
    let tst_info = der::single(encap.expect(0xa0)?, OCTET_STRING)?;
    let mut certificates = Vec::new();
    if sd.peek_tag() == Some(0xa0) {
        let mut certs = Reader::new(sd.expect(0xa0)?);
        while !certs.is_empty() {
            let (t, raw) = certs.read_raw()?;
            if t.tag == SEQUENCE && certificates.len() < MAX_ITEMS {
                certificates.push(raw);
            }
        }
    }
    sd.skip_if(0xa1)?; // crls
    let mut signers = Vec::new();
    let mut sis = Reader::new(sd.expect(SET)?);
    while !sis.is_empty() {
        if signers.len() == MAX_ITEMS {
            return Err(DerError);
        }
        signers.push(signer_info(sis.expect(SEQUENCE)?)?);
    }
    let mut tst = Reader::new(der::single(tst_info, SEQUENCE)?);
    tst.expect(INTEGER)?;
    tst.expect(OID)?; // policy
    let mut mi = Reader::new(tst.expect(SEQUENCE)?);
    let imprint_alg = alg_oid(mi.expect(SEQUENCE)?)?;
    let imprint = mi.expect(OCTET_STRING)?;
    tst.expect(INTEGER)?; // serial
    if tst.peek_tag() != Some(GENERALIZED_TIME) {
        return Err(DerError);
    }
    let gen_time = crate::x509::time(&mut tst)?;
    Ok(Token {
        tst_info,
        certificates,
        signers,
        imprint_alg,
        imprint,
        gen_time,
    })
}

fn signer_info(si: &[u8]) -> Result<SignerInfo<'_>, DerError> {
    let mut r = Reader::new(si);
    r.expect(INTEGER)?;
    r.read()?; // sid
    let digest_alg = alg_oid(r.expect(SEQUENCE)?)?;
    let (attrs, raw) = r.read_raw()?;
    if attrs.tag != 0xa0 {
        return Err(DerError);
    }
    let mut signed_attrs = raw.to_vec();
    signed_attrs[0] = SET;
    let mut message_digest = None;
    let mut a = Reader::new(attrs.value);
    while !a.is_empty() {
        let mut attr = Reader::new(a.expect(SEQUENCE)?);
        if attr.expect(OID)? == OID_MESSAGE_DIGEST {
            let values = attr.expect(SET)?;
            message_digest = Some(der::single(values, OCTET_STRING)?);
        }
    }
    r.expect(SEQUENCE)?; // signatureAlgorithm
    let signature = r.expect(OCTET_STRING)?;
    Ok(SignerInfo {
        digest_alg,
        signed_attrs,
        message_digest: message_digest.ok_or(DerError)?,
        signature,
    })
}

fn hash(alg: &[u8], data: &[u8]) -> Option<ring::digest::Digest> {
    let a = match alg {
        OID_SHA256 => &ring::digest::SHA256,
        OID_SHA384 => &ring::digest::SHA384,
        OID_SHA512 => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(a, data))
}

/// Verifies `token` as a timestamp over `dated` from one of the authorities `roots`.
pub fn verify_token(
    token: &[u8],
    dated: &[u8],
    roots: &[CertificateDer<'static>],
    now: i64,
) -> Result<TrustedTime, Failure> {
    if token.len() > MAX_ENVELOPE {
        return Err(Failure::Invalid("timestamp token is too large".into()));
    }
    let t = parse_token(token)
        .map_err(|_| Failure::Invalid("RFC 3161 timestamp token: malformed".into()))?;
    let imprint = hash(t.imprint_alg, dated).ok_or_else(|| {
        Failure::UnsupportedAlgorithm("timestamp message imprint hash algorithm".into())
    })?;
    if imprint.as_ref() != t.imprint {
        return Err(Failure::UntrustedTime(
            "the timestamp is over other bytes than this signature".into(),
        ));
    }
    if t.gen_time > now + 300 {
        return Err(Failure::UntrustedTime(format!(
            "the timestamp is dated {}, in the future",
            berth_oci::time::rfc3339(t.gen_time)
        )));
    }
    // The certificates that signed the token's signed attributes, which must themselves
    // carry the TSTInfo's digest.
    let candidates: Vec<&[u8]> = t
        .certificates
        .iter()
        .copied()
        .chain(roots.iter().map(|r| r.as_ref()))
        .collect();
    let mut signer = None;
    for si in &t.signers {
        let Some(d) = hash(si.digest_alg, t.tst_info) else {
            continue;
        };
        if d.as_ref() != si.message_digest {
            continue;
        }
        signer = candidates.iter().copied().find(|c| {
            EndEntityCert::try_from(&CertificateDer::from(*c))
                .ok()
                .and_then(|ee| PublicKey::from_spki(ee.subject_public_key_info().as_ref()).ok())
                .is_some_and(|k| k.verify_cosign(&si.signed_attrs, si.signature))
        });
        if signer.is_some() {
            break;
        }
    }
    let signer = signer.ok_or_else(|| {
        Failure::UntrustedTime(
            "the timestamp's signature verifies with none of its certificates".into(),
        )
    })?;
    if !roots.iter().any(|r| r.as_ref() == signer) {
        let anchors: Vec<_> = roots
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        let intermediates: Vec<CertificateDer<'_>> = t
            .certificates
            .iter()
            .filter(|c| **c != signer)
            .map(|c| CertificateDer::from(*c))
            .collect();
        let der = CertificateDer::from(signer);
        let ee = EndEntityCert::try_from(&der)
            .map_err(|e| Failure::Invalid(format!("timestamp certificate: {e:?}")))?;
        let time =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.gen_time.max(0) as u64));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            LeafEku::new(EKU_TIME_STAMPING),
            None,
            None,
        )
        .map_err(|e| {
            Failure::UntrustedTime(format!(
                "the timestamp is not from a configured timestamp authority ({e:?})"
            ))
        })?;
    }
    Ok(TrustedTime {
        at: t.gen_time,
        source: "RFC 3161 timestamp".into(),
    })
}
