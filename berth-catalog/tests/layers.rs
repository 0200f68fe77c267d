//! Layers built in the test (plain, gzip, zstd), through `catalog_layer` and `merge`.

use std::io::Write;

use berth_catalog::fuzzing::{Item, header, tar};
use berth_catalog::{Compression, Ecosystem, LayerCatalog, LayerRef, Limits, catalog_layer, merge};
use proptest::prelude::*;

const STATUS: &[u8] = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u4)\nVersion: 2.36-9+deb12u4\n\nPackage: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n";
const OS: &[u8] = b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("test");
    e.finish().expect("test")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ::zstd::encode_all(data, 1).expect("zstd")
}

fn names(c: &LayerCatalog) -> Vec<(Ecosystem, String, String)> {
    c.packages
        .iter()
        .map(|p| (p.ecosystem, p.name.clone(), p.version.clone()))
        .collect()
}

fn base() -> Vec<u8> {
    tar(&[
        Item::Dir("etc"),
        Item::Symlink("etc/os-release", "../usr/lib/os-release"),
        Item::File("usr/lib/os-release", OS),
        Item::File("var/lib/dpkg/status", STATUS),
        Item::File(
            "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n\nbody",
        ),
        Item::File(
            "app/node_modules/left-pad/package.json",
            br#"{"name":"left-pad","version":"1.3.0"}"#,
        ),
        Item::File(
            "app/Cargo.lock",
            b"[[package]]\nname = \"serde\"\nversion = \"1.0.200\"\n",
        ),
    ])
}

#[test]
fn the_three_encodings_give_the_same_catalog() {
    let raw = base();
    let plain = catalog_layer(&raw[..], &Limits::default());
    assert_eq!(plain.partial, None);
    assert_eq!(plain.compression, Some(Compression::None));
    let expected = vec![
        (
            Ecosystem::Deb,
            "bash".to_string(),
            "5.2.15-2+b2".to_string(),
        ),
        (Ecosystem::Deb, "libc6".into(), "2.36-9+deb12u4".into()),
        (Ecosystem::Pypi, "six".into(), "1.16.0".into()),
        (Ecosystem::Npm, "left-pad".into(), "1.3.0".into()),
        (Ecosystem::Cargo, "serde".into(), "1.0.200".into()),
    ];
    assert_eq!(names(&plain), expected);
    let gz = catalog_layer(&gzip(&raw)[..], &Limits::default());
    assert_eq!(gz.compression, Some(Compression::Gzip));
    assert_eq!(names(&gz), expected);
    let zs = catalog_layer(&zstd(&raw)[..], &Limits::default());
    assert_eq!(zs.compression, Some(Compression::Zstd));
    assert_eq!(zs.partial, None);
    assert_eq!(names(&zs), expected);
    // Read up to the first of the two closing zero blocks.
    assert_eq!(zs.tar_bytes, raw.len() as u64 - 512);
}

/// zstd:chunked layers are several frames with skippable metadata frames between them.
#[test]
fn zstd_frames_and_skippable_frames_are_one_stream() {
    let raw = base();
    let (a, b) = raw.split_at(1000);
    let mut layer = zstd(a);
    // A skippable frame: magic 0x184D2A5?, little-endian length, that many bytes.
    layer.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 1, 2, 3, 4, 5]);
    layer.extend(zstd(b));
    let c = catalog_layer(&layer[..], &Limits::default());
    assert_eq!(c.partial, None);
    assert_eq!(c.compression, Some(Compression::Zstd));
    assert_eq!(
        c.packages.len(),
        catalog_layer(&raw[..], &Limits::default()).packages.len()
    );
}

/// A frame asking for a window over 64 MiB would make the decoder allocate it.
#[test]
fn a_zstd_window_over_the_limit_is_refused() {
    use std::io::Write;
    let raw = base();
    let mut e = ::zstd::stream::Encoder::new(Vec::new(), 1).expect("encoder");
    e.window_log(27).expect("window");
    e.long_distance_matching(true).expect("ldm");
    e.include_contentsize(false).expect("size");
    e.write_all(&raw).expect("write");
    let layer = e.finish().expect("finish");
    let c = catalog_layer(&layer[..], &Limits::default());
    let reason = c.partial.expect("refused");
    assert!(reason.contains("zstd"), "{reason}");
    assert!(c.packages.is_empty());
}

#[test]
fn merge_follows_the_os_release_link_and_applies_whiteouts() {
    let l0 = catalog_layer(&base()[..], &Limits::default());
    // Layer 1 deletes six, hides app/ (opaque), and replaces the dpkg status.
    let newer =
        b"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n";
    let l1 = catalog_layer(
        &tar(&[
            Item::File(
                "usr/lib/python3/dist-packages/.wh.six-1.16.0.dist-info",
                b"",
            ),
            Item::File("app/.wh..wh..opq", b""),
            Item::File("var/lib/dpkg/status", newer),
        ])[..],
        &Limits::default(),
    );
    let image = merge(&[
        LayerRef {
            digest: "sha256:l0",
            catalog: &l0,
        },
        LayerRef {
            digest: "sha256:l1",
            catalog: &l1,
        },
    ]);
    let os = image.os.as_ref().expect("os-release through the symlink");
    assert_eq!((os.id.as_str(), os.version_id.as_str()), ("debian", "12"));
    let got: Vec<_> = image
        .packages
        .iter()
        .map(|p| (p.purl.as_str(), p.layer.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(
            "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12",
            "sha256:l1"
        )]
    );
    // Without the second layer everything of the first is there, with its layer.
    let only = merge(&[LayerRef {
        digest: "sha256:l0",
        catalog: &l0,
    }]);
    assert_eq!(only.packages.len(), 5);
    let libc = only
        .packages
        .iter()
        .find(|p| p.package.name == "libc6")
        .expect("test");
    assert_eq!(
        libc.purl,
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
    );
    assert_eq!(libc.package.source_name.as_deref(), Some("glibc"));
    assert!(only.packages.iter().all(|p| p.layer == "sha256:l0"));
}

#[test]
fn long_names_and_non_utf8_names_are_read() {
    let deep = format!("{}/node_modules/x/package.json", "d/".repeat(60));
    let mut raw = tar(&[Item::File(&deep, br#"{"name":"x","version":"1.0.0"}"#)]);
    // A non-UTF-8 name before it: skipped, not an error.
    let mut bad = header("caf\u{e9}", b'0', 0o644, 0, "").to_vec();
    bad[3] = 0xe9;
    bad[4] = 0;
    let sum: u32 = bad
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    bad[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    bad.extend(raw);
    raw = bad;
    let c = catalog_layer(&raw[..], &Limits::default());
    assert_eq!(c.partial, None, "{:?}", c.partial);
    assert_eq!(
        names(&c),
        vec![(Ecosystem::Npm, "x".into(), "1.0.0".into())]
    );
}

#[test]
fn caps_make_a_layer_partial_with_the_reason() {
    let many: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let items: Vec<Item<'_>> = many.iter().map(|n| Item::File(n, b"x")).collect();
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let c = catalog_layer(&tar(&items)[..], &limits);
    assert_eq!(c.partial.as_deref(), Some("more than 10 entries"));
    assert_eq!(c.entries, 10);

    let big = vec![b'a'; 5000];
    let limits = Limits {
        max_file_bytes: 4096,
        ..Limits::default()
    };
    let c = catalog_layer(
        &tar(&[
            Item::File("var/lib/dpkg/status", &big),
            Item::File("app/Cargo.lock", b""),
        ])[..],
        &limits,
    );
    assert_eq!(c.partial, None);
    assert_eq!(c.issues.len(), 1);
    assert!(
        c.issues[0].reason.contains("over the file cap"),
        "{:?}",
        c.issues
    );

    let limits = Limits {
        deadline: Some(std::time::Instant::now()),
        ..Limits::default()
    };
    let c = catalog_layer(&base()[..], &limits);
    assert_eq!(c.partial.as_deref(), Some("scan time over the cap"));
}

#[test]
fn a_huge_pax_header_is_refused_before_it_is_read() {
    let mut raw = header("pax", b'x', 0o644, 1 << 40, "").to_vec();
    raw.extend([0u8; 4096]);
    let c = catalog_layer(&raw[..], &Limits::default());
    assert!(
        c.partial
            .as_deref()
            .is_some_and(|r| r.contains("over the cap")),
        "{:?}",
        c.partial
    );
}

#[test]
fn truncated_and_corrupt_streams_are_partial_not_errors() {
    let raw = base();
    for enc in [gzip(&raw), zstd(&raw)] {
        let cut = &enc[..enc.len() / 2];
        let c = catalog_layer(cut, &Limits::default());
        assert!(c.partial.is_some(), "a truncated stream must be partial");
        let mut flipped = enc.clone();
        let mid = flipped.len() / 3;
        flipped[mid] ^= 0xff;
        flipped[mid + 1] ^= 0x55;
        let _ = catalog_layer(&flipped[..], &Limits::default());
    }
    let c = catalog_layer(&raw[..700], &Limits::default());
    assert!(c.partial.is_some());
}

#[test]
fn a_jar_and_a_nested_jar() {
    fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
        // Stored members only: enough to check the reader's offsets.
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in members {
            let off = out.len() as u32;
            let crc = 0u32;
            out.extend(b"PK\x03\x04");
            out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend(crc.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend([0, 0]);
            out.extend(name.as_bytes());
            out.extend(*data);
            central.extend(b"PK\x01\x02");
            central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend(crc.to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend([0u8; 12]);
            central.extend(off.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let cd = out.len() as u32;
        out.extend(&central);
        out.extend(b"PK\x05\x06");
        out.extend([0, 0, 0, 0]);
        out.extend((members.len() as u16).to_le_bytes());
        out.extend((members.len() as u16).to_le_bytes());
        out.extend((central.len() as u32).to_le_bytes());
        out.extend(cd.to_le_bytes());
        out.extend([0, 0]);
        out
    }
    let inner = zip(&[(
        "META-INF/maven/org.slf4j/slf4j-api/pom.properties",
        b"groupId=org.slf4j\nartifactId=slf4j-api\nversion=2.0.9\n",
    )]);
    let outer = zip(&[
        (
            "META-INF/maven/com.example/app/pom.properties",
            b"#c\ngroupId=com.example\nartifactId=app\nversion=1.0\n",
        ),
        ("BOOT-INF/lib/slf4j-api-2.0.9.jar", &inner),
    ]);
    let c = catalog_layer(
        &tar(&[Item::File("opt/app.jar", &outer)])[..],
        &Limits::default(),
    );
    let got: Vec<_> = c
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str(), p.path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("com.example:app", "1.0", "opt/app.jar"),
            (
                "org.slf4j:slf4j-api",
                "2.0.9",
                "opt/app.jar!BOOT-INF/lib/slf4j-api-2.0.9.jar"
            ),
        ]
    );
    let image = merge(&[LayerRef {
        digest: "sha256:a",
        catalog: &c,
    }]);
    assert_eq!(
        image.packages[1].purl,
        "pkg:maven/org.slf4j/slf4j-api@2.0.9"
    );
}

#[test]
fn this_test_binary_has_go_build_info_only_if_go_built_it() {
    // A real ELF binary that is not Go: no packages, and it is recorded as seen.
    let exe = std::fs::read(std::env::current_exe().expect("test")).expect("test");
    let limits = Limits {
        max_file_bytes: exe.len() as u64 + 1,
        ..Limits::default()
    };
    let c = catalog_layer(&tar(&[Item::Exec("usr/bin/t", &exe)])[..], &limits);
    assert!(c.packages.iter().all(|p| p.ecosystem != Ecosystem::Golang));
    assert_eq!(c.seen, vec!["usr/bin/t".to_string()]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_a_catalog_never_a_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        berth_catalog::fuzzing::layer(&data);
    }

    #[test]
    fn a_mutated_layer_never_panics(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut raw = gzip(&base());
        for (i, b) in flips {
            let at = i.index(raw.len());
            raw[at] = b;
        }
        berth_catalog::fuzzing::layer(&raw);
        let mut t = base();
        let len = t.len();
        t[len / 2] ^= 0x20;
        berth_catalog::fuzzing::layer(&t);
    }
}

/// Archives written by other tools (Python's tarfile in ustar, PAX and GNU formats, the
/// zstd CLI at level 19), committed as fuzz seeds.
#[test]
fn archives_from_other_writers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/layer");
    let read = |n: &str| {
        catalog_layer(
            &std::fs::read(dir.join(n)).expect("test")[..],
            &Limits::default(),
        )
    };
    let plain = read("plain.tar");
    assert_eq!(plain.partial, None);
    assert_eq!(plain.packages.len(), 7, "{:?}", names(&plain));
    assert_eq!(plain.whiteouts, vec!["a/gone".to_string()]);
    assert_eq!(plain.opaque, vec!["b".to_string()]);
    let z = read("zstd.tar.zst");
    assert_eq!(z.compression, Some(Compression::Zstd));
    assert_eq!(names(&z), names(&plain));
    assert_eq!(names(&read("gzip.tar.gz")), names(&plain));
    assert!(read("truncated.tar.gz").partial.is_some());
    let pax = read("pax.tar");
    assert_eq!(
        pax.packages[0].path,
        format!("{}/Cargo.lock", "p".repeat(200))
    );
    assert_eq!(
        names(&read("gnu.tar")),
        vec![(Ecosystem::Npm, "z".to_string(), "2".to_string())]
    );
}

/// umoci 0.4 ends a layer right after the last file's data, with no padding and no
/// closing blocks: complete, not partial. Cut inside the data, it is truncated.
#[test]
fn a_stream_ending_after_the_last_data_is_complete() {
    let data = b"ID=debian\nVERSION_ID=\"12\"\n";
    let mut raw = header("etc/os-release", b'0', 0o644, data.len() as u64, "").to_vec();
    raw.extend_from_slice(data);
    let c = catalog_layer(&gzip(&raw)[..], &Limits::default());
    assert_eq!(c.partial, None);
    assert_eq!(c.os_release.len(), 1);
    let c = catalog_layer(&raw[..raw.len() - 1], &Limits::default());
    assert_eq!(c.partial.as_deref(), Some("truncated archive"));
}

/// Tar bombs of the kinds that need no size: a path longer than any real one (a PAX path
/// of 8 KiB), and os-release symlinks that point at each other.
#[test]
fn deep_paths_and_symlink_loops_end() {
    let deep = "d/".repeat(4096);
    let record = format!("path={deep}x\n");
    let mut len = record.len() + 2;
    while format!("{len} {record}").len() != len {
        len += 1;
    }
    let pax = format!("{len} {record}");
    let mut raw = header("pax", b'x', 0o644, pax.len() as u64, "").to_vec();
    raw.extend_from_slice(pax.as_bytes());
    raw.resize(raw.len().div_ceil(512) * 512, 0);
    raw.extend(header("x", b'0', 0o644, 0, ""));
    raw.extend([0u8; 1024]);
    let c = catalog_layer(&raw[..], &Limits::default());
    assert!(
        c.partial
            .as_deref()
            .is_some_and(|r| r.starts_with("path of")),
        "{:?}",
        c.partial
    );

    let looped = catalog_layer(
        &tar(&[
            Item::Symlink("etc/os-release", "../usr/lib/os-release"),
            Item::Symlink("usr/lib/os-release", "/etc/os-release"),
            Item::File("var/lib/dpkg/status", STATUS),
        ])[..],
        &Limits::default(),
    );
    let image = merge(&[LayerRef {
        digest: "sha256:l",
        catalog: &looped,
    }]);
    assert_eq!(image.os, None);
    // Without a distribution the purls say debian, the dpkg default.
    assert_eq!(image.packages.len(), 2);
    assert!(image.packages[0].purl.starts_with("pkg:deb/debian/bash@"));
}
