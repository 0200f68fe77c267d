//! Property checks shared by the `cargo fuzz` target (`fuzz/fuzz_targets/envelope.rs`) and
//! the corpus replay (`berth-verify/tests/fuzz_corpus.rs`): any bytes, read as every
//! envelope and manifest format, give a verdict and never panic.

use crate::keyless::{self, CertTrust, Matcher, Material};
use crate::notary::{Level, NotaryTrust};
use crate::{Failure, artifact, cbor, cosign, keys, notary, sha256_digest, tsa, x509};

/// Runs every parser of this crate on `data`.
pub fn envelope(data: &[u8]) {
    let digest = sha256_digest(data);
    let subject = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let trust = NotaryTrust {
        name: "fuzz".into(),
        roots: Vec::new(),
        identities: vec![notary::Identity::Any],
        level: Level::Strict,
        max_chain: notary::MAX_CHAIN,
        tsa_roots: Vec::new(),
    };
    for mt in [notary::JWS_MEDIA_TYPE, notary::COSE_MEDIA_TYPE] {
        // No trust store: nothing can pass authenticity, so success is a bug.
        let r = notary::verify(mt, data, &digest, subject, &trust, 1_800_000_000);
        assert!(
            r.is_err(),
            "an envelope verified against an empty trust store"
        );
    }
    let r = cosign::verify_dsse(subject, data, &digest, &[]);
    assert!(matches!(r, Err(Failure::Invalid(_) | Failure::WrongKey(0))));
    let r = cosign::verify_simple_signing(subject, data, &digest, "AAAA", &[]);
    assert!(matches!(r, Err(Failure::Invalid(_) | Failure::WrongKey(0))));
    let _ = x509::parse(data);
    let _ = tsa::parse_token(data);
    assert!(tsa::verify_token(data, b"signature", &[], 1_800_000_000).is_err());
    // The bytes as every annotation of a certificate signature, judged by a rule with no
    // CA root: nothing may verify.
    let no_roots = CertTrust {
        name: "fuzz".into(),
        roots: Vec::new(),
        identities: vec![Matcher::Exact(String::new())],
        issuers: vec![Matcher::Exact(String::new())],
        max_chain: 10,
        log_keys: Vec::new(),
        tsa_roots: Vec::new(),
    };
    let text = String::from_utf8_lossy(data);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(data)
        }
    );
    for certificate in [text.as_ref(), pem.as_str()] {
        let m = Material {
            certificate,
            chain: Some(&text),
            bundle: Some(&text),
            rfc3161: Some(&text),
        };
        let r = keyless::verify_simple_signing(
            subject,
            data,
            &digest,
            "AAAA",
            &m,
            std::slice::from_ref(&no_roots),
            1_800_000_000,
        );
        assert!(
            r.is_err(),
            "a certificate signature verified without a CA root"
        );
        let r = keyless::verify_dsse(
            subject,
            data,
            &digest,
            &m,
            std::slice::from_ref(&no_roots),
            1_800_000_000,
        );
        assert!(
            r.is_err(),
            "a certificate attestation verified without a CA root"
        );
    }
    let r = crate::bundle::verify(
        subject,
        data,
        &digest,
        &[],
        std::slice::from_ref(&no_roots),
        1_800_000_000,
    );
    assert!(r.is_err(), "a bundle verified with no key and no CA root");
    let _ = crate::bundle::trusted_root(data);
    let _ = cbor::decode(data);
    let _ = keys::PublicKey::from_spki(data);
    let _ = keys::PublicKey::from_pem(data);
    let c = artifact::classify(data);
    if !c.kind.is_supply_chain() {
        assert!(c.layers.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = notary::parse_rfc3339(text);
        let _ = notary::Identity::parse(text);
    }
}
