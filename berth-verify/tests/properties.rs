//! Properties over generated input: no input panics any parser, and no change to signed
//! bytes (payload, protected header, signature) of a real client's signature verifies.

use berth_verify::cosign::{self, TrustedKey};
use berth_verify::notary::{self, Identity, Level, NotaryTrust};
use berth_verify::{PublicKey, fuzzing, sha256_digest};
use proptest::prelude::*;

const IMAGE: &str = "sha256:cdd3f6b72d99a95285cbdb5e304e091fdc35c16c596f69ad372ef0cf128b1726";
const NOW: u64 = 1_798_761_600;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/real/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn keys() -> Vec<TrustedKey> {
    vec![TrustedKey {
        name: "ci".into(),
        key: PublicKey::from_pem(&fixture("cosign.pub")).expect("key"),
    }]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_give_a_verdict(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzzing::envelope(&data);
    }

    #[test]
    fn a_changed_cosign_payload_never_verifies(at in 0usize..234, bit in 0u8..8) {
        let mut p = fixture("cosign-payload.json");
        let sig = "MEQCIAlal1I+yYXn6YJmKd44xCydR9WmjUBhgdDjsxCi5GBnAiAYjgNParPC0QvVf2c4968LttyGWfq94WVRDHq/Ml67EQ==";
        prop_assert!(cosign::verify_simple_signing(IMAGE, &p, &sha256_digest(&p), sig, &keys()).is_ok());
        let at = at % p.len();
        p[at] ^= 1 << bit;
        prop_assert!(cosign::verify_simple_signing(IMAGE, &p, &sha256_digest(&p), sig, &keys()).is_err());
    }

    #[test]
    fn a_changed_cose_payload_or_signature_never_verifies(off in 0usize..4096, bit in 0u8..8) {
        let trust = NotaryTrust {
            name: "t".into(),
            roots: NotaryTrust::roots_from_pem(&fixture("root.crt")).expect("root"),
            identities: vec![Identity::Any],
            level: Level::Strict,
            max_chain: notary::MAX_CHAIN,
            tsa_roots: Vec::new(),
        };
        let mut b = fixture("notary-cose.sig");
        let start = b.windows(14).position(|w| w == b"targetArtifact").expect("payload") - 2;
        let at = start + off % (b.len() - start);
        b[at] ^= 1 << bit;
        prop_assert!(notary::verify(notary::COSE_MEDIA_TYPE, &b, &sha256_digest(&b), IMAGE, &trust, NOW).is_err());
    }

    #[test]
    fn a_changed_jws_protected_header_never_verifies(at in 0usize..4096, bit in 0u8..6) {
        let trust = NotaryTrust {
            name: "t".into(),
            roots: NotaryTrust::roots_from_pem(&fixture("root.crt")).expect("root"),
            identities: vec![Identity::Any],
            level: Level::Strict,
            max_chain: notary::MAX_CHAIN,
            tsa_roots: Vec::new(),
        };
        let mut env: serde_json::Value = serde_json::from_slice(&fixture("notary-jws.sig")).expect("json");
        for field in ["protected", "payload", "signature"] {
            let mut s = env[field].as_str().expect("str").as_bytes().to_vec();
            let i = at % s.len();
            // Stay inside the base64url alphabet so the change reaches the decoder.
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let pos = alphabet.iter().position(|&c| c == s[i]).unwrap_or(0);
            let replacement = alphabet[(pos + 1 + usize::from(bit)) % 64];
            s[i] = replacement;
            let orig = env[field].clone();
            env[field] = String::from_utf8(s).expect("ascii").into();
            let b = serde_json::to_vec(&env).expect("json");
            let r = notary::verify(notary::JWS_MEDIA_TYPE, &b, &sha256_digest(&b), IMAGE, &trust, NOW);
            // base64url's last character may carry unused bits: only a changed decoding counts.
            let same = field != "protected" && r.is_ok() && {
                use base64::Engine;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                e.decode(env[field].as_str().expect("s")).ok() == e.decode(orig.as_str().expect("s")).ok()
            };
            prop_assert!(r.is_err() || same, "{field} at {i}: {r:?}");
            env[field] = orig;
        }
    }
}
