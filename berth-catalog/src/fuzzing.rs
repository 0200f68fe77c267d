//! The property checks of the `layer` fuzz target and of its corpus replay, and a small
//! tar writer the tests and the fuzzer's seeds share.

use crate::{LayerRef, Limits, catalog_layer, merge, parsers};

/// Any bytes, as a layer and as each file format: never a panic, the caps hold.
pub fn layer(data: &[u8]) {
    let limits = Limits {
        max_entries: 1000,
        max_file_bytes: 1 << 20,
        max_nested_bytes: 1 << 18,
        max_packages: 500,
        max_tar_bytes: 16 << 20,
        deadline: None,
    };
    let cat = catalog_layer(data, &limits);
    assert!(cat.packages.len() <= limits.max_packages);
    assert!(cat.entries <= limits.max_entries);
    let image = merge(&[LayerRef {
        digest: "sha256:0",
        catalog: &cat,
    }]);
    assert!(image.packages.len() <= cat.packages.len());
    for p in &image.packages {
        assert!(p.purl.starts_with("pkg:"));
    }
    let _ = parsers::os_release(data);
    let _ = parsers::dpkg(data, "x", false);
    let _ = parsers::dpkg(data, "x", true);
    let _ = parsers::apk(data, "x");
    let _ = parsers::python(data, "x");
    let _ = parsers::npm_package_json(data, "x");
    let _ = parsers::npm_lock(data, "x");
    let _ = parsers::cargo_lock(data, "x");
    let _ = parsers::jar(data, "x", 1 << 18);
    let _ = parsers::go_buildinfo(data, "x");
    let _ = parsers::cargo_auditable(data, "x");
    for found in [
        parsers::rpmdb_sqlite(data, "x", 500),
        parsers::rpmdb_bdb(data, "x", 500),
    ]
    .into_iter()
    .flatten()
    {
        assert!(found.0.len() <= 501);
    }
    let _ = crate::rpm::package(data, "x");
}

/// What a test layer holds.
pub enum Item<'a> {
    File(&'a str, &'a [u8]),
    Exec(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

/// A ustar archive of `items`, with a GNU long-name entry for paths over 100 bytes.
pub fn tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        let (path, kind, mode, data, link): (&str, u8, u32, &[u8], &str) = match it {
            Item::File(p, d) => (p, b'0', 0o644, d, ""),
            Item::Exec(p, d) => (p, b'0', 0o755, d, ""),
            Item::Dir(p) => (p, b'5', 0o755, b"", ""),
            Item::Symlink(p, t) => (p, b'2', 0o777, b"", t),
        };
        if path.len() > 100 {
            let mut name = path.as_bytes().to_vec();
            name.push(0);
            out.extend(header("././@LongLink", b'L', 0o644, name.len() as u64, ""));
            push_data(&mut out, &name);
        }
        out.extend(header(path, kind, mode, data.len() as u64, link));
        push_data(&mut out, data);
    }
    out.extend([0u8; 1024]);
    out
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// One ustar header block.
pub fn header(path: &str, kind: u8, mode: u32, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = path.as_bytes();
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        // GNU base-256 for sizes octal cannot hold.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    let l = link.as_bytes();
    let k = l.len().min(100);
    h[157..157 + k].copy_from_slice(&l[..k]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}
