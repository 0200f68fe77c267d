//! Content digests as the image spec defines them: `algorithm ":" encoded`.

use std::fmt;
use std::str::FromStr;

/// The digest algorithms Berth can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest is not of the form algorithm:encoded")]
    Malformed,
    #[error("digest algorithm {0:?} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("digest encoding does not match its algorithm")]
    BadEncoding,
}

/// A verified-syntax digest of a known algorithm. The string form is kept because it is
/// what goes over the wire and into the database; parsing happens once, at the edge.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: Box<str>,
    algorithm: Algorithm,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The encoded (hex) part.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.as_str().len() + 1..]
    }

    /// Builds a digest from an algorithm and a hash output.
    pub fn from_hash(algorithm: Algorithm, hash: &[u8]) -> Digest {
        let mut text = String::with_capacity(algorithm.as_str().len() + 1 + hash.len() * 2);
        text.push_str(algorithm.as_str());
        text.push(':');
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in hash {
            text.push(HEX[(b >> 4) as usize] as char);
            text.push(HEX[(b & 15) as usize] as char);
        }
        Digest {
            text: text.into(),
            algorithm,
        }
    }

    /// Checks the general grammar of the image spec without requiring a known algorithm.
    /// Used for descriptors inside manifests, where unknown algorithms are tolerated.
    pub fn is_well_formed(s: &str) -> bool {
        let Some((alg, enc)) = s.split_once(':') else {
            return false;
        };
        algorithm_grammar(alg)
            && !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
    }
}

/// `algorithm-component (algorithm-separator algorithm-component)*`,
/// component `[a-z0-9]+`, separator `[+._-]`.
fn algorithm_grammar(alg: &str) -> bool {
    let mut prev_sep = true;
    for b in alg.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_sep = false,
            b'+' | b'.' | b'_' | b'-' if !prev_sep => prev_sep = true,
            _ => return false,
        }
    }
    !prev_sep
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !Digest::is_well_formed(s) {
            return Err(DigestError::Malformed);
        }
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Malformed)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        if enc.len() != algorithm.hex_len()
            || !enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::BadEncoding);
        }
        Ok(Digest {
            text: s.into(),
            algorithm,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_sha256_and_sha512() {
        let d: Digest = D.parse().expect("valid");
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        let s512 = format!("sha512:{}", "a".repeat(128));
        assert_eq!(
            s512.parse::<Digest>().map(|d| d.algorithm()),
            Ok(Algorithm::Sha512)
        );
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:../../etc/passwd",
            "sha256+:abc",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm("md5".into()))
        );
    }

    #[test]
    fn well_formed_tolerates_unknown_algorithms() {
        assert!(Digest::is_well_formed(
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
        ));
        assert!(!Digest::is_well_formed("no colon"));
    }

    #[test]
    fn from_hash_round_trips() {
        let d = Digest::from_hash(Algorithm::Sha256, &[0xab; 32]);
        assert_eq!(d.as_str().parse::<Digest>(), Ok(d.clone()));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn hex_round_trip(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let d = Digest::from_hash(Algorithm::Sha256, &bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        }
    }
}
