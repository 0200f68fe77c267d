//! Property checks over arbitrary input, shared by the fuzz targets in `fuzz/` and the corpus
//! replay test (`tests/fuzz_corpus.rs`), so both run exactly the same logic.
//!
//! Each function takes any bytes, feeds them to a parser and **panics** when a property does
//! not hold. That is their whole point: the parsers themselves never panic, these checks do
//! when a parser is wrong. They are not part of the API.
//!
//! Input layouts (chosen so hand-written seed files stay readable):
//! * [`manifest`]: `<content type> NUL <body>`, or just `<body>` (no `Content-Type`) when the
//!   input has no NUL byte. JSON can never contain a raw NUL, so the split is unambiguous.
//! * [`name_reference`]: the whole input as a string, and each of its lines; the first two
//!   lines are also compared as a pair of tags.
//! * [`digest`]: the whole input as a string, and each of its lines.
//! * [`content_range`]: `<blob length> LF <header value>`, or just `<header value>`; the
//!   value is tried as a `Content-Range` and as a `Range` against that length and a fixed
//!   set of awkward lengths (0, 1, `u64::MAX`, ...).
//!
//! Bytes that are not UTF-8 are converted lossily: headers and paths reach the parsers as
//! `&str`, so only the string matters.

use std::borrow::Cow;

use crate::digest::{Algorithm, Digest, DigestError};
use crate::manifest::{Descriptor, ManifestKind, parse_manifest};
use crate::name::{MAX_NAME_LEN, MAX_TAG_LEN, NameError, Reference, RepoName, Tag, tag_sort_key};
use crate::range::{RangeError, parse_content_range, resolve_range};

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The whole string, then each of its lines when it has more than one.
fn pieces(s: &str) -> impl Iterator<Item = &str> {
    let lines = s.contains('\n').then(|| s.split('\n'));
    std::iter::once(s).chain(lines.into_iter().flatten())
}

// ---- manifests ----

/// `parse_manifest` on `[content type NUL] body`.
pub fn manifest(data: &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(nul) => {
            let ct = text(&data[..nul]);
            check_manifest(&data[nul + 1..], Some(&ct));
        }
        None => check_manifest(data, None),
    }
}

/// Properties of one `parse_manifest` call.
pub fn check_manifest(body: &[u8], content_type: Option<&str>) {
    let first = parse_manifest(body, content_type);
    // Deterministic: the same bytes give the same answer.
    assert_eq!(
        first,
        parse_manifest(body, content_type),
        "not deterministic"
    );
    let Ok(m) = first else {
        return;
    };
    // Anything accepted is JSON text: UTF-8 (RFC 8259 section 8.1) and of JSON's grammar.
    // (Not `serde_json::Value`: it refuses lone surrogate escapes, which the grammar allows.)
    assert!(
        std::str::from_utf8(body).is_ok(),
        "accepted a body that is not UTF-8"
    );
    assert!(
        serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
        "accepted a body that is not JSON"
    );
    // The registry serves the manifest back with `kind.media_type()` as its Content-Type;
    // pushing it again with that Content-Type must give the same result.
    let mt = m.kind.media_type();
    assert_eq!(ManifestKind::from_media_type(mt), Some(m.kind));
    assert_eq!(
        parse_manifest(body, Some(mt)).as_ref(),
        Ok(&m),
        "re-parsing with the served Content-Type {mt:?} differs"
    );
    if m.kind.is_index() {
        assert!(
            m.config.is_none() && m.layers.is_empty(),
            "index with image parts"
        );
    } else {
        assert!(m.manifests.is_empty(), "image manifest with children");
        assert!(m.config.is_some(), "image manifest without config");
        assert!(
            m.artifact_type.is_some(),
            "image manifest without artifact type"
        );
    }
    let all = m
        .config
        .iter()
        .chain(&m.layers)
        .chain(&m.manifests)
        .chain(&m.subject);
    for d in all {
        check_descriptor(d);
    }
}

fn check_descriptor(d: &Descriptor) {
    assert!(
        Digest::is_well_formed(&d.digest),
        "descriptor digest {:?} is malformed",
        d.digest
    );
    match d.digest.parse::<Digest>() {
        Ok(known) => assert_eq!(d.known_digest(), Some(known)),
        Err(DigestError::UnsupportedAlgorithm(_)) => assert_eq!(d.known_digest(), None),
        Err(e) => panic!("descriptor digest {:?} accepted: {e}", d.digest),
    }
    assert!(
        i64::try_from(d.size).is_ok(),
        "descriptor size {} out of range",
        d.size
    );
}

// ---- names, tags, references ----

/// `RepoName`, `Tag` and `Reference` parsing, and the tag order.
pub fn name_reference(data: &[u8]) {
    let s = text(data);
    for piece in pieces(&s) {
        check_repo_name(piece);
        check_tag_and_reference(piece);
    }
    let mut lines = s.split('\n');
    if let (Some(a), Some(b)) = (lines.next(), lines.next()) {
        check_tag_order(a, b);
    }
}

/// Properties of `RepoName::from_str`.
pub fn check_repo_name(s: &str) {
    let Ok(name) = s.parse::<RepoName>() else {
        return;
    };
    assert_eq!(name.as_str(), s);
    assert_eq!(name.to_string().parse::<RepoName>().as_ref(), Ok(&name));
    assert!(
        !s.is_empty() && s.len() <= MAX_NAME_LEN,
        "length {}",
        s.len()
    );
    assert!(
        s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/')),
        "{s:?}: unexpected character"
    );
    // Safe as a path: no empty, `.` or `..` component, each starts and ends alphanumeric.
    for c in s.split('/') {
        let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        assert!(
            alnum(c.as_bytes().first()) && alnum(c.as_bytes().last()),
            "{s:?}: bad component {c:?}"
        );
    }
}

/// Properties of `Tag::from_str` and `Reference::from_str`.
pub fn check_tag_and_reference(s: &str) {
    let tag = s.parse::<Tag>();
    let digest = s.parse::<Digest>();
    let reference = s.parse::<Reference>();
    if let Ok(t) = &tag {
        assert_eq!(t.as_str(), s);
        assert_eq!(t.to_string().parse::<Tag>().as_ref(), Ok(t));
        assert!(
            !s.is_empty() && s.len() <= MAX_TAG_LEN,
            "length {}",
            s.len()
        );
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
            "{s:?}: unexpected character"
        );
        assert!(!s.starts_with(['.', '-']), "{s:?}: bad first character");
        assert!(digest.is_err(), "{s:?} is both a tag and a digest");
    }
    // A reference is a tag or a digest, never anything else, and never both.
    match (&reference, &tag, &digest) {
        (Ok(Reference::Tag(r)), Ok(t), _) => assert_eq!(r, t),
        (Ok(Reference::Digest(r)), _, Ok(d)) => assert_eq!(r, d),
        (Ok(r), _, _) => panic!("{s:?} parsed as {r:?} but not on its own"),
        (Err(NameError::InvalidTag), Err(_), _) | (Err(NameError::InvalidDigest(_)), _, Err(_)) => {
        }
        (Err(e), _, _) => panic!("{s:?} refused as a reference ({e}) but parses alone"),
    }
    if let Ok(r) = &reference {
        assert_eq!(r.to_string(), s);
        assert_eq!(r.to_string().parse::<Reference>().as_ref(), Ok(r));
    }
}

/// `tag_sort_key` orders valid tags case-insensitively, ties broken by bytes.
pub fn check_tag_order(a: &str, b: &str) {
    let (Ok(_), Ok(_)) = (a.parse::<Tag>(), b.parse::<Tag>()) else {
        return;
    };
    let (ka, kb) = (tag_sort_key(a), tag_sort_key(b));
    assert_eq!(ka, format!("{} {a}", a.to_ascii_lowercase()));
    let want = a
        .to_ascii_lowercase()
        .cmp(&b.to_ascii_lowercase())
        .then_with(|| a.cmp(b));
    assert_eq!(ka.cmp(&kb), want, "tag order of {a:?} and {b:?}");
    assert_eq!(ka == kb, a == b);
}

// ---- digests ----

/// `Digest::from_str` and `Digest::is_well_formed`.
pub fn digest(data: &[u8]) {
    let s = text(data);
    for piece in pieces(&s) {
        check_digest(piece);
    }
}

/// Properties of one digest string.
pub fn check_digest(s: &str) {
    let well_formed = Digest::is_well_formed(s);
    if well_formed {
        // Safe in a path and unambiguous to split.
        assert!(s.is_ascii(), "{s:?}");
        assert_eq!(s.matches(':').count(), 1, "{s:?}");
        assert!(!s.contains('/') && !s.contains(".."), "{s:?}");
    }
    match s.parse::<Digest>() {
        Ok(d) => {
            assert!(well_formed, "{s:?} parsed but is not well formed");
            assert_eq!(d.as_str(), s);
            assert_eq!(d.to_string(), s);
            assert_eq!(format!("{d:?}"), s);
            assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
            let alg = d.algorithm();
            assert_eq!(format!("{}:{}", alg.as_str(), d.hex()), s);
            assert_eq!(d.hex().len(), alg.hex_len());
            // The encoded part is the lowercase hex of a hash of the right size.
            let bytes = decode_hex(d.hex()).expect("hex part is lowercase hex");
            assert_eq!(Digest::from_hash(alg, &bytes), d);
            // Only known algorithms.
            assert!(matches!(alg, Algorithm::Sha256 | Algorithm::Sha512));
        }
        Err(DigestError::Malformed) => assert!(!well_formed, "{s:?} refused as malformed"),
        Err(DigestError::UnsupportedAlgorithm(alg)) => {
            assert!(well_formed);
            assert_eq!(s.split_once(':').map(|(a, _)| a), Some(alg.as_str()));
            assert!(alg != "sha256" && alg != "sha512", "{alg:?} is supported");
        }
        Err(DigestError::BadEncoding) => assert!(well_formed),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

// ---- ranges ----

/// Lengths every `Range` value is resolved against, besides the one the input names.
const LENGTHS: [u64; 8] = [0, 1, 2, 10, 4096, 1 << 32, u64::MAX - 1, u64::MAX];

/// Largest value a range position may have in the header: 19 decimal digits.
const MAX_POS: u64 = 9_999_999_999_999_999_999;

/// `parse_content_range` and `resolve_range` on `[length LF] value`.
pub fn content_range(data: &[u8]) {
    let s = text(data);
    let (len, value) = match s.split_once('\n') {
        Some((len, value)) => (len.trim().parse::<u64>().ok(), value),
        None => (None, &*s),
    };
    check_content_range(value);
    let extra = len
        .map(|l| [l.saturating_sub(1), l, l.saturating_add(1)])
        .unwrap_or_default();
    for len in LENGTHS.into_iter().chain(extra) {
        check_resolve_range(value, len);
    }
}

/// Properties of a chunk's `Content-Range`.
pub fn check_content_range(value: &str) {
    let Ok((start, end)) = parse_content_range(value) else {
        return;
    };
    assert!(start <= end, "{value:?} gave {start}-{end}");
    // The chunk length `end - start + 1` can be computed.
    assert!(end.checked_add(1).is_some(), "{value:?}: length overflows");
    // The canonical forms say the same.
    for canonical in [
        format!("{start}-{end}"),
        format!("bytes {start}-{end}/*"),
        format!("bytes {start}-{end}/{}", end + 1),
    ] {
        assert_eq!(
            parse_content_range(&canonical),
            Ok((start, end)),
            "{canonical:?}"
        );
    }
}

/// Properties of a `Range` resolved against a blob of `len` bytes.
pub fn check_resolve_range(value: &str, len: u64) {
    let got = resolve_range(value, len);
    let is_bytes = value.trim().starts_with("bytes=");
    match got {
        Ok(Some((first, last))) => {
            assert!(is_bytes, "{value:?} is not a bytes range");
            // Inside the blob, and not empty.
            assert!(
                first <= last && last < len,
                "{value:?} on {len} bytes gave {first}-{last}"
            );
            // The canonical form of the result asks for the same bytes.
            if last <= MAX_POS {
                let canonical = format!("bytes={first}-{last}");
                assert_eq!(
                    resolve_range(&canonical, len),
                    Ok(Some((first, last))),
                    "{canonical:?} on {len} bytes"
                );
                assert_eq!(
                    parse_content_range(&format!("{first}-{last}")),
                    Ok((first, last))
                );
            }
        }
        // Only other units and multiple ranges are ignored.
        Ok(None) => assert!(!is_bytes || value.contains(','), "{value:?} ignored"),
        Err(RangeError::Unsatisfiable) => {
            assert!(is_bytes);
            // A blob as large as can be holds every position the parser accepts, so only a
            // zero-length suffix (`-0`) or a range ending before it starts (`5-1`) cannot
            // be satisfied.
            if len == u64::MAX {
                let spec = value.trim().strip_prefix("bytes=").map(str::trim);
                let backwards = spec
                    .and_then(|s| s.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    .is_some_and(|(a, b)| b < a);
                assert!(
                    spec.is_some_and(|s| s.starts_with('-')) || backwards,
                    "{value:?} unsatisfiable on u64::MAX bytes"
                );
            }
        }
        Err(RangeError::Malformed) => assert!(is_bytes, "{value:?} malformed"),
    }
    // Determinism.
    assert_eq!(got, resolve_range(value, len));
}
