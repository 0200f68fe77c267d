//! Property checks shared by the `cargo fuzz` target (`fuzz/fuzz_targets/envelope.rs`) and
//! the corpus replay (`berth-verify/tests/fuzz_corpus.rs`): any bytes, read as every
//! envelope and manifest format, give a verdict and never panic.

use crate::notary::{Level, NotaryTrust};
use crate::{Failure, artifact, cbor, cosign, keys, notary, sha256_digest};

/// Runs every parser of this crate on `data`.
pub fn envelope(data: &[u8]) {
    let digest = sha256_digest(data);
    let subject = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let trust = NotaryTrust {
        name: "fuzz".into(),
        roots: Vec::new(),
        identities: vec![notary::Identity::Any],
        level: Level::Strict,
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
