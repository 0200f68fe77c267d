//! The admission webhooks' certificates, made here so operators need no openssl: a CA
//! that exists only to sign one serving certificate, for the webhook Service's names
//! (`<name>-webhook`, `.<namespace>`, `.<namespace>.svc`, `.<namespace>.svc.cluster.local`).
//! The CA certificate becomes the webhook configurations' `caBundle`, the serving
//! certificate and its key one `kubernetes.io/tls` Secret shared by every replica. The CA's
//! key is thrown away: a new pair is made by running the command again (both halves
//! change together, in one `kubectl apply`).
//!
//! Node-local sharing's CA uses the same encoders: its self-signed certificate and the
//! agents' certificates (one IP address, serverAuth and clientAuth), from keys the caller
//! keeps.
//!
//! Both keys are ECDSA P-256 (ring, already Berth's only crypto provider); the X.509 DER is
//! written by the few encoders below, because a general certificate crate (rcgen) would
//! add `time`, `yasna`, `pem` and their dependencies for two fixed certificate shapes.
//! No clock and no randomness of its own: the caller passes both, so this stays pure and
//! a test can fix them.

use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest as _, Sha256};

/// Why the certificates could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Invalid(String),
    #[error("key generation or signing failed")]
    Crypto,
}

/// A CA certificate and the serving certificate it signed, PEM.
#[derive(Debug, Clone)]
pub struct WebhookPki {
    /// The CA certificate: the webhook configurations' `caBundle`.
    pub ca_pem: String,
    /// The serving certificate (`tls.crt`).
    pub cert_pem: String,
    /// Its key, PKCS#8 (`tls.key`).
    pub key_pem: String,
    /// The DNS names the serving certificate is for.
    pub dns_names: Vec<String>,
}

/// The DNS names the webhook Service `<name>-webhook` answers to in `namespace`.
pub fn webhook_dns_names(name: &str, namespace: &str) -> Vec<String> {
    let svc = format!("{name}-webhook");
    vec![
        format!("{svc}.{namespace}.svc"),
        format!("{svc}.{namespace}.svc.cluster.local"),
        format!("{svc}.{namespace}"),
        svc,
    ]
}

/// Makes a CA and a serving certificate for the webhooks of the install `name` in
/// `namespace`, valid from an hour before `now` (unix seconds; clocks differ) for `days`.
pub fn webhook_pki(
    name: &str,
    namespace: &str,
    days: u32,
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<WebhookPki, CertError> {
    if days == 0 || days > 3650 {
        return Err(CertError::Invalid(format!(
            "validity of {days} days: 1 to 3650"
        )));
    }
    let dns_names = webhook_dns_names(name, namespace);
    for n in &dns_names {
        if !dns_name_ok(n) {
            return Err(CertError::Invalid(format!("{n:?} is not a DNS name")));
        }
    }
    let not_before = now.saturating_sub(3600);
    let not_after = now + u64::from(days) * 86_400;
    let ca_key = new_key(rng)?;
    let leaf_key = new_key(rng)?;
    let ca_pair = pair(&ca_key, rng)?;
    let leaf_pair = pair(&leaf_key, rng)?;
    let ca_name = name_cn(&format!("Berth admission CA ({name}-webhook.{namespace})"));
    let ca_spki = spki(ca_pair.public_key().as_ref());
    let ca_kid = key_id(ca_pair.public_key().as_ref());
    let leaf_kid = key_id(leaf_pair.public_key().as_ref());

    let ca_ext = vec![
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            seq(&[boolean(true), integer(&[0])]),
        ),
        // keyCertSign and cRLSign: bits 5 and 6, one unused bit.
        extension(OID_KEY_USAGE, true, tlv(0x03, &[0x01, 0x06])),
        extension(OID_SUBJECT_KEY_ID, false, tlv(0x04, &ca_kid)),
    ];
    let ca_tbs = tbs(
        &serial(rng)?,
        &ca_name,
        (not_before, not_after),
        &ca_name,
        &ca_spki,
        ca_ext,
    );
    let ca_der = signed(&ca_pair, ca_tbs, rng)?;

    let sans: Vec<Vec<u8>> = dns_names.iter().map(|n| tlv(0x82, n.as_bytes())).collect();
    let leaf_ext = vec![
        extension(OID_BASIC_CONSTRAINTS, true, seq(&[])),
        // digitalSignature: bit 0, seven unused bits.
        extension(OID_KEY_USAGE, true, tlv(0x03, &[0x07, 0x80])),
        extension(OID_EXT_KEY_USAGE, false, seq(&[oid(OID_SERVER_AUTH)])),
        extension(OID_SUBJECT_ALT_NAME, false, seq(&sans)),
        extension(OID_SUBJECT_KEY_ID, false, tlv(0x04, &leaf_kid)),
        extension(OID_AUTHORITY_KEY_ID, false, seq(&[tlv(0x80, &ca_kid)])),
    ];
    let leaf_tbs = tbs(
        &serial(rng)?,
        &ca_name,
        (not_before, not_after),
        &name_cn(&dns_names[0]),
        &spki(leaf_pair.public_key().as_ref()),
        leaf_ext,
    );
    let leaf_der = signed(&ca_pair, leaf_tbs, rng)?;
    Ok(WebhookPki {
        ca_pem: pem("CERTIFICATE", &ca_der),
        cert_pem: pem("CERTIFICATE", &leaf_der),
        key_pem: pem("PRIVATE KEY", &leaf_key),
        dns_names,
    })
}

/// A new ECDSA P-256 key, PKCS#8: the p2p CA's, or a node agent's.
pub fn new_p256_key(rng: &dyn SecureRandom) -> Result<Vec<u8>, CertError> {
    new_key(rng)
}

/// The uncompressed public point of a P-256 PKCS#8 key (what an agent sends to enroll).
pub fn p256_public(pkcs8: &[u8], rng: &dyn SecureRandom) -> Result<Vec<u8>, CertError> {
    Ok(pair(pkcs8, rng)?.public_key().as_ref().to_vec())
}

/// The subject name of the node-local sharing CA. Every replica makes its own CA
/// certificate from the shared key with this name, so a node certificate issued by one
/// replica chains to the anchor any other replica hands out (an anchor is a name and a key).
const P2P_CA_NAME: &str = "Berth node-local sharing CA";

/// The p2p CA's self-signed certificate (DER) for its key, valid from an hour before
/// `now` for ten years: peers trust it as an anchor, whose validity webpki ignores anyway.
pub fn p2p_ca_certificate(
    ca_pkcs8: &[u8],
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, CertError> {
    let ca = pair(ca_pkcs8, rng)?;
    let name = name_cn(P2P_CA_NAME);
    let kid = key_id(ca.public_key().as_ref());
    let ext = vec![
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            seq(&[boolean(true), integer(&[0])]),
        ),
        extension(OID_KEY_USAGE, true, tlv(0x03, &[0x01, 0x06])),
        extension(OID_SUBJECT_KEY_ID, false, tlv(0x04, &kid)),
    ];
    let t = tbs(
        &serial(rng)?,
        &name,
        (now.saturating_sub(3600), now + 3650 * 86_400),
        &name,
        &spki(ca.public_key().as_ref()),
        ext,
    );
    signed(&ca, t, rng)
}

/// A node agent's certificate (DER), signed by the p2p CA: for `node` (the subject's CN)
/// at `addr` (the one subject alternative name, which peers check against the address
/// the tracker named), for the agent's P-256 public point, for both ends of a TLS
/// connection (peers authenticate each other), valid from a minute before `now` until
/// `not_after`.
pub fn p2p_node_certificate(
    ca_pkcs8: &[u8],
    node: &str,
    addr: std::net::IpAddr,
    public_point: &[u8],
    now: u64,
    not_after: u64,
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, CertError> {
    // An uncompressed P-256 point; ring checks it lies on the curve when a peer verifies.
    if public_point.len() != 65 || public_point[0] != 0x04 {
        return Err(CertError::Invalid(
            "the public key must be an uncompressed P-256 point (65 bytes, 0x04 first)".into(),
        ));
    }
    if node.is_empty() || node.len() > 253 {
        return Err(CertError::Invalid(format!("node name {node:?}")));
    }
    let ca = pair(ca_pkcs8, rng)?;
    let ca_kid = key_id(ca.public_key().as_ref());
    let ip = match addr {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let ext = vec![
        extension(OID_BASIC_CONSTRAINTS, true, seq(&[])),
        extension(OID_KEY_USAGE, true, tlv(0x03, &[0x07, 0x80])),
        extension(
            OID_EXT_KEY_USAGE,
            false,
            seq(&[oid(OID_SERVER_AUTH), oid(OID_CLIENT_AUTH)]),
        ),
        extension(OID_SUBJECT_ALT_NAME, false, seq(&[tlv(0x87, &ip)])),
        extension(OID_SUBJECT_KEY_ID, false, tlv(0x04, &key_id(public_point))),
        extension(OID_AUTHORITY_KEY_ID, false, seq(&[tlv(0x80, &ca_kid)])),
    ];
    let t = tbs(
        &serial(rng)?,
        &name_cn(P2P_CA_NAME),
        (now.saturating_sub(60), not_after),
        &name_cn(node),
        &spki(public_point),
        ext,
    );
    signed(&ca, t, rng)
}

fn dns_name_ok(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn new_key(rng: &dyn SecureRandom) -> Result<Vec<u8>, CertError> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| CertError::Crypto)
}

fn pair(pkcs8: &[u8], rng: &dyn SecureRandom) -> Result<EcdsaKeyPair, CertError> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, rng)
        .map_err(|_| CertError::Crypto)
}

/// A positive serial of 16 random bytes (RFC 5280: at most 20 octets, positive).
fn serial(rng: &dyn SecureRandom) -> Result<Vec<u8>, CertError> {
    let mut s = [0u8; 16];
    rng.fill(&mut s).map_err(|_| CertError::Crypto)?;
    s[0] = (s[0] & 0x7f) | 0x01;
    Ok(integer(&s))
}

/// The key identifier: the first 160 bits of the SHA-256 of the public key (RFC 7093).
fn key_id(public: &[u8]) -> Vec<u8> {
    Sha256::digest(public)[..20].to_vec()
}

fn tbs(
    serial: &[u8],
    issuer: &[u8],
    (not_before, not_after): (u64, u64),
    subject: &[u8],
    spki: &[u8],
    extensions: Vec<Vec<u8>>,
) -> Vec<u8> {
    seq(&[
        tlv(0xa0, &integer(&[2])),
        serial.to_vec(),
        seq(&[oid(OID_ECDSA_SHA256)]),
        issuer.to_vec(),
        seq(&[time(not_before), time(not_after)]),
        subject.to_vec(),
        spki.to_vec(),
        tlv(0xa3, &seq(&extensions)),
    ])
}

fn signed(key: &EcdsaKeyPair, tbs: Vec<u8>, rng: &dyn SecureRandom) -> Result<Vec<u8>, CertError> {
    let sig = key.sign(rng, &tbs).map_err(|_| CertError::Crypto)?;
    Ok(seq(&[
        tbs,
        seq(&[oid(OID_ECDSA_SHA256)]),
        bit_string(sig.as_ref()),
    ]))
}

fn spki(point: &[u8]) -> Vec<u8> {
    seq(&[
        seq(&[oid(OID_EC_PUBLIC_KEY), oid(OID_P256)]),
        bit_string(point),
    ])
}

fn name_cn(cn: &str) -> Vec<u8> {
    seq(&[tlv(
        0x31,
        &seq(&[oid(OID_COMMON_NAME), tlv(0x0c, cn.as_bytes())]),
    )])
}

fn extension(id: &[u64], critical: bool, value: Vec<u8>) -> Vec<u8> {
    let mut parts = vec![oid(id)];
    if critical {
        parts.push(boolean(true));
    }
    parts.push(tlv(0x04, &value));
    seq(&parts)
}

const OID_COMMON_NAME: &[u64] = &[2, 5, 4, 3];
const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
const OID_SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
const OID_AUTHORITY_KEY_ID: &[u64] = &[2, 5, 29, 35];
const OID_SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];
const OID_CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];

/// One DER element: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn boolean(v: bool) -> Vec<u8> {
    tlv(0x01, &[if v { 0xff } else { 0x00 }])
}

/// An unsigned big-endian number as a DER INTEGER (minimal, with a leading zero when the
/// high bit is set so it stays positive).
fn integer(be: &[u8]) -> Vec<u8> {
    let skip = be.iter().take_while(|b| **b == 0).count();
    let digits = &be[skip.min(be.len().saturating_sub(1))..];
    let mut c = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_some_and(|b| b & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(digits);
    if c.is_empty() {
        c.push(0);
    }
    tlv(0x02, &c)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(bytes.len() + 1);
    c.push(0);
    c.extend_from_slice(bytes);
    tlv(0x03, &c)
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut c = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        c.extend_from_slice(&tmp);
    };
    push(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        push(*a);
    }
    tlv(0x06, &c)
}

/// UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
fn time(unix: u64) -> Vec<u8> {
    let (y, mo, d) = civil(unix / 86_400);
    let s = unix % 86_400;
    let hms = format!("{:02}{:02}{:02}Z", s / 3600, s / 60 % 60, s % 60);
    if y < 2050 {
        tlv(0x17, format!("{:02}{mo:02}{d:02}{hms}", y % 100).as_bytes())
    } else {
        tlv(0x18, format!("{y:04}{mo:02}{d:02}{hms}").as_bytes())
    }
}

/// Year, month and day of a day count since 1970-01-01 (proleptic Gregorian calendar,
/// counted in 400-year eras of 146,097 days that start on 1 March).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = crate::manifests::base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_793), (2026, 12, 6));
        assert_eq!(civil(29_220), (2050, 1, 1));
        assert_eq!(time(0), tlv(0x17, b"700101000000Z"));
        assert_eq!(time(2_524_608_000), tlv(0x18, b"20500101000000Z"));
    }

    #[test]
    fn der_pieces() {
        assert_eq!(
            oid(OID_ECDSA_SHA256),
            [6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2]
        );
        assert_eq!(integer(&[0]), [2, 1, 0]);
        assert_eq!(integer(&[0, 0x80]), [2, 2, 0, 0x80]);
        assert_eq!(integer(&[0, 0, 5]), [2, 1, 5]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[4, 0x82, 1, 44]);
    }

    #[test]
    fn names_and_bounds() {
        let rng = ring::rand::SystemRandom::new();
        let p = webhook_pki("berth", "registry", 30, 1_800_000_000, &rng).expect("pki");
        assert_eq!(p.dns_names[0], "berth-webhook.registry.svc");
        assert!(p.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(p.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(webhook_pki("Berth", "registry", 30, 0, &rng).is_err());
        assert!(webhook_pki("berth", "registry", 0, 0, &rng).is_err());
    }
}
