//! One layer, streamed once: each entry's header is read, the files that matter are read
//! whole (up to the file cap), everything else is skipped as it streams past.

use std::io::Read;
use std::time::Instant;

use crate::parsers::{self, Kind};
use crate::tar::{self, TarReader};
use crate::{CATALOGER_VERSION, FileIssue, LayerCatalog, Limits, decompress};

/// Executables smaller than this are scripts or stubs, not binaries with build info.
const MIN_BINARY: u64 = 4096;

/// Catalogs one layer. Never fails: an unreadable layer is a catalog marked partial,
/// holding what was found before the stream went bad.
pub fn catalog_layer<R: Read>(r: R, limits: &Limits) -> LayerCatalog {
    let mut cat = LayerCatalog {
        cataloger_version: CATALOGER_VERSION,
        ..Default::default()
    };
    let (compression, stream) = match decompress::open(r) {
        Ok(x) => x,
        Err(e) => {
            cat.partial = Some(format!("read failed: {e}"));
            return cat;
        }
    };
    cat.compression = Some(compression);
    let mut tar = TarReader::new(stream);
    cat.partial = walk(&mut tar, &mut cat, limits);
    cat.entries = tar.entries();
    cat.tar_bytes = tar.consumed;
    cat.packages.sort_by(|a, b| {
        (a.ecosystem, &a.name, &a.version, &a.path).cmp(&(
            b.ecosystem,
            &b.name,
            &b.version,
            &b.path,
        ))
    });
    cat
}

fn walk<R: Read>(
    tar: &mut TarReader<R>,
    cat: &mut LayerCatalog,
    limits: &Limits,
) -> Option<String> {
    let scratch = &mut Vec::new();
    loop {
        if limits.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some("scan time over the cap".into());
        }
        if tar.entries() >= limits.max_entries {
            return Some(format!("more than {} entries", limits.max_entries));
        }
        if tar.consumed > limits.max_tar_bytes {
            return Some(format!(
                "more than {} uncompressed bytes",
                limits.max_tar_bytes
            ));
        }
        let e = match tar.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(err) => return Some(err.to_string()),
        };
        let (parent, name) = match e.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&e.path[..i], &e.path[i + 1..]),
            None => (&b""[..], &e.path[..]),
        };
        if name == b".wh..wh..opq" {
            cat.opaque
                .push(String::from_utf8_lossy(parent).into_owned());
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let mut p = parent.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(hidden);
            cat.whiteouts.push(String::from_utf8_lossy(&p).into_owned());
            continue;
        }
        let path = e.path_lossy();
        let kind = parsers::classify(&path);
        match e.kind {
            tar::Kind::File => {}
            tar::Kind::Symlink => {
                if kind.is_some() {
                    cat.seen.push(path.clone());
                }
                if kind == Some(Kind::OsRelease) {
                    let target = if e.link.starts_with(b"/") {
                        tar::normalize(&e.link)
                    } else {
                        let mut t = parent.to_vec();
                        t.push(b'/');
                        t.extend_from_slice(&e.link);
                        tar::normalize(&t)
                    };
                    cat.symlinks
                        .push((path, String::from_utf8_lossy(&target).into_owned()));
                }
                continue;
            }
            _ => {
                if kind.is_some() {
                    cat.seen.push(path);
                }
                continue;
            }
        }
        let executable = kind.is_none() && e.mode & 0o111 != 0 && e.size >= MIN_BINARY;
        if kind.is_none() && !executable {
            continue;
        }
        if kind.is_some() {
            cat.seen.push(path.clone());
        }
        scratch.clear();
        if kind.is_none() {
            // Most executables are not Go or Rust binaries with build info, and many are
            // not ELF at all: look at the magic before reading the rest.
            let mut magic = [0u8; 4];
            let mut got = 0;
            while got < magic.len() {
                match tar.read_data(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(err) => return Some(err.to_string()),
                }
            }
            if magic[..got] != *b"\x7fELF" {
                continue;
            }
            scratch.extend_from_slice(&magic);
        }
        let data = match tar.read_rest_into(limits.max_file_bytes, scratch) {
            Ok(true) => &scratch[..],
            Ok(false) => {
                if kind.is_some() {
                    cat.issues
                        .push(issue(&path, format!("{} bytes, over the file cap", e.size)));
                }
                continue;
            }
            Err(err) => return Some(err.to_string()),
        };
        let found = match kind {
            None => {
                cat.seen.push(path.clone());
                let mut found = parsers::go_buildinfo(data, &path);
                match parsers::cargo_auditable(data, &path) {
                    Some(Ok(p)) => found.extend(p),
                    Some(Err(r)) => cat.issues.push(issue(&path, r)),
                    None => {}
                }
                Ok(found)
            }
            Some(Kind::OsRelease) => {
                match parsers::os_release(data) {
                    Ok(r) => cat.os_release.push((path.clone(), r)),
                    Err(r) => cat.issues.push(issue(&path, r)),
                }
                Ok(Vec::new())
            }
            Some(Kind::DpkgStatus) => parsers::dpkg(data, &path, false),
            Some(Kind::DpkgStatusD) => parsers::dpkg(data, &path, true),
            Some(Kind::Apk) => parsers::apk(data, &path),
            Some(Kind::PythonMetadata) => parsers::python(data, &path),
            Some(Kind::NpmPackageJson) => parsers::npm_package_json(data, &path),
            Some(Kind::NpmLock) => parsers::npm_lock(data, &path),
            Some(Kind::CargoLock) => parsers::cargo_lock(data, &path),
            Some(Kind::Jar) => parsers::jar(data, &path, limits.max_nested_bytes),
            Some(k @ (Kind::RpmSqlite | Kind::RpmBdb)) => {
                let room = limits.max_packages.saturating_sub(cat.packages.len());
                let read = if k == Kind::RpmSqlite {
                    parsers::rpmdb_sqlite(data, &path, room)
                } else {
                    parsers::rpmdb_bdb(data, &path, room)
                };
                read.map(|(found, trouble)| {
                    if let Some(r) = trouble {
                        cat.issues.push(issue(&path, r));
                    }
                    found
                })
            }
        };
        match found {
            Ok(p) => cat.packages.extend(p),
            Err(r) => cat.issues.push(issue(&path, r)),
        }
        if cat.packages.len() > limits.max_packages {
            cat.packages.truncate(limits.max_packages);
            return Some(format!("more than {} packages", limits.max_packages));
        }
    }
}

fn issue(path: &str, reason: String) -> FileIssue {
    FileIssue {
        path: path.to_string(),
        reason,
    }
}
