//! The checks of the `advisory` and `version` fuzz targets and of their corpus replay.

use std::cmp::Ordering;

use crate::{Index, Package, Scheme, parse};

const SCHEMES: [Scheme; 8] = [
    Scheme::Dpkg,
    Scheme::Apk,
    Scheme::Rpm,
    Scheme::Pep440,
    Scheme::Semver,
    Scheme::Go,
    Scheme::Maven,
    Scheme::Gem,
];

/// Any bytes as an advisory input: never a panic; every record kept passes its check,
/// and matching with it does not panic either.
pub fn advisory(data: &[u8]) {
    // The input as a CVSS vector too: scored within 0..=10 or not at all.
    let text = String::from_utf8_lossy(data);
    for line in text.lines().take(4) {
        if let Some(s) = crate::cvss::base_score(line) {
            assert!((0.0..=10.0).contains(&s), "{line:?} {s}");
        }
    }
    let feed = parse("fuzz", data);
    for r in &feed.records {
        assert!(r.check().is_ok());
    }
    let index = Index::new(feed.records.clone());
    for r in &feed.records {
        for v in ["0", "1.0", "1.0.0", "1:1.0-1", "1.0-r0"] {
            let _ = index.matches(&Package {
                purl: "pkg:deb/debian/x@1?distro=debian-12",
                ecosystem: &r.ecosystem,
                name: &r.package,
                version: v,
                source_name: None,
                source_version: None,
            });
        }
    }
}

/// Two versions (split at the first newline) in every scheme: antisymmetric, reflexive,
/// never a panic.
pub fn version(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let (a, b) = s.split_once('\n').unwrap_or((&s, ""));
    for scheme in SCHEMES {
        let ab = scheme.compare(a, b);
        let ba = scheme.compare(b, a);
        assert_eq!(ab, ba.map(Ordering::reverse), "{scheme:?} {a:?} {b:?}");
        if scheme.valid(a) {
            assert_eq!(
                scheme.compare(a, a),
                Some(Ordering::Equal),
                "{scheme:?} {a:?}"
            );
        }
    }
}

/// A zip of stored members (CRCs left zero: the reader does not check them), for tests
/// and seeds; with `zip64`, the count is written only in a zip64 end record, as
/// archivers do past 65,535 members.
pub fn stored_zip(members: &[(&str, &[u8])], zip64: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let offset = out.len() as u32;
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u64;
    out.extend_from_slice(&central);
    let n = members.len() as u64;
    if zip64 {
        let z = out.len() as u64;
        out.extend_from_slice(b"PK\x06\x06");
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(central.len() as u64).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(b"PK\x06\x07");
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&z.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    let count: u16 = if zip64 { 0xffff } else { n as u16 };
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    let cdo: u32 = if zip64 { u32::MAX } else { cd_offset as u32 };
    out.extend_from_slice(&cdo.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}
