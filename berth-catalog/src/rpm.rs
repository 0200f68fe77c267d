//! rpm headers as the rpm database stores them (without the 8-byte header magic, which a
//! header inside a `.rpm` file has and is accepted too): a count of index entries, the
//! length of the data store, the entries (`tag`, `type`, `offset`, `count`, big-endian
//! whatever the database's byte order) and the data store they point into.

use crate::{Ecosystem, Package};

const MAGIC: [u8; 4] = [0x8e, 0xad, 0xe8, 0x01];
/// rpm's own limits on a header (`HEADER_TAGS_MAX`, `HEADER_DATA_MAX`): a header over them
/// is corrupt, whatever its blob holds.
const MAX_TAGS: u32 = 0xffff;
const MAX_DATA: u32 = 0x0fff_ffff;

/// The largest header blob read from a database. Real headers stay well under a few MiB
/// (a file list is the bulk); this keeps one row's copy inside the scan's memory bound
/// (the database itself is one file read, under the file cap).
pub const MAX_HEADER_BYTES: usize = 16 << 20;

pub const TAG_NAME: u32 = 1000;
pub const TAG_VERSION: u32 = 1001;
pub const TAG_RELEASE: u32 = 1002;
pub const TAG_EPOCH: u32 = 1003;
pub const TAG_VENDOR: u32 = 1011;
pub const TAG_LICENSE: u32 = 1014;
pub const TAG_ARCH: u32 = 1022;
pub const TAG_SOURCERPM: u32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u32,
    ty: u32,
    offset: u32,
    count: u32,
}

/// A parsed header: its index and a borrowed data store. Every lookup checks its bounds,
/// so an index entry pointing outside the store reads as absent.
#[derive(Debug)]
pub struct Header<'a> {
    entries: Vec<Entry>,
    data: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> Header<'a> {
    pub fn parse(blob: &'a [u8]) -> Result<Header<'a>, String> {
        let blob = if blob.starts_with(&MAGIC) {
            blob.get(8..).unwrap_or_default()
        } else {
            blob
        };
        let (Some(il), Some(dl)) = (be32(blob, 0), be32(blob, 4)) else {
            return Err("rpm header shorter than 8 bytes".into());
        };
        if il == 0 || il > MAX_TAGS || dl > MAX_DATA {
            return Err(format!("rpm header with {il} tags and {dl} data bytes"));
        }
        // Both are capped above, so this cannot overflow.
        let index_end = 8 + il as usize * 16;
        let end = index_end + dl as usize;
        let Some(data) = blob.get(index_end..end) else {
            return Err(format!(
                "rpm header of {end} bytes in a blob of {}",
                blob.len()
            ));
        };
        let mut entries = Vec::with_capacity(il as usize);
        for i in 0..il as usize {
            let at = 8 + i * 16;
            let field = |k: usize| be32(blob, at + 4 * k).unwrap_or(0);
            entries.push(Entry {
                tag: field(0),
                ty: field(1),
                offset: field(2),
                count: field(3),
            });
        }
        Ok(Header { entries, data })
    }

    fn entry(&self, tag: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }

    /// A string tag; of an array or an i18n string (one per language), the first.
    pub fn string(&self, tag: u32) -> Option<String> {
        let e = self.entry(tag)?;
        if !matches!(e.ty, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING) || e.count == 0 {
            return None;
        }
        let rest = self.data.get(usize::try_from(e.offset).ok()?..)?;
        let n = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..n]).into_owned())
    }

    pub fn int32(&self, tag: u32) -> Option<u32> {
        let e = self.entry(tag)?;
        if e.ty != TYPE_INT32 || e.count == 0 {
            return None;
        }
        be32(self.data, usize::try_from(e.offset).ok()?)
    }
}

/// `name-version-release.src.rpm` (or `.nosrc.rpm`): the source package's name and
/// `version-release`.
pub fn source_rpm(file: &str) -> Option<(String, String)> {
    let stem = file
        .strip_suffix(".src.rpm")
        .or_else(|| file.strip_suffix(".nosrc.rpm"))?;
    let (rest, release) = stem.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    if name.is_empty() || version.is_empty() || release.is_empty() {
        return None;
    }
    Some((name.to_string(), format!("{version}-{release}")))
}

/// The installed package a header describes; `Ok(None)` for the `gpg-pubkey` entries
/// `rpm --import` adds, which are keys, not software.
pub fn package(blob: &[u8], path: &str) -> Result<Option<Package>, String> {
    let h = Header::parse(blob)?;
    let name = h.string(TAG_NAME).filter(|n| !n.is_empty());
    let (Some(name), Some(version), Some(release)) =
        (name, h.string(TAG_VERSION), h.string(TAG_RELEASE))
    else {
        return Err("rpm header without name, version or release".into());
    };
    if name == "gpg-pubkey" {
        return Ok(None);
    }
    // The epoch is part of the version that sorts and that advisories name (`1:2.3-4`);
    // an absent epoch is not written, as rpm -q and the purl spec do.
    let epoch = h
        .int32(TAG_EPOCH)
        .map(|e| format!("{e}:"))
        .unwrap_or_default();
    let version = format!("{epoch}{version}-{release}");
    // A source package carries the spec's epoch, which is not in its file name.
    let (source_name, source_version) =
        match h.string(TAG_SOURCERPM).as_deref().and_then(source_rpm) {
            Some((n, v)) => (Some(n), Some(format!("{epoch}{v}"))),
            None => (None, None),
        };
    Ok(Some(Package {
        ecosystem: Ecosystem::Rpm,
        name,
        version,
        arch: h.string(TAG_ARCH).filter(|a| !a.is_empty()),
        source_name,
        source_version,
        path: path.to_string(),
    }))
}

/// Packages from a database's header blobs, counting the blobs that are not headers: a
/// few bad rows do not lose the rest of the database.
pub(crate) struct Collector<'p> {
    path: &'p str,
    max: usize,
    pub packages: Vec<Package>,
    bad: usize,
    first_bad: Option<String>,
}

impl<'p> Collector<'p> {
    pub fn new(path: &'p str, max: usize) -> Self {
        Collector {
            path,
            max,
            packages: Vec::new(),
            bad: 0,
            first_bad: None,
        }
    }

    /// Takes one blob; false once more than `max` packages are held (the caller stops and
    /// the layer's package cap reports it).
    pub fn add(&mut self, blob: &[u8]) -> bool {
        match package(blob, self.path) {
            Ok(Some(p)) => self.packages.push(p),
            Ok(None) => {}
            Err(e) => {
                self.fail(e);
            }
        }
        self.packages.len() <= self.max
    }

    /// Counts a row or value that could not be read at all; the walk goes on.
    pub fn fail(&mut self, e: String) -> bool {
        self.bad += 1;
        self.first_bad.get_or_insert(e);
        true
    }

    pub fn finish(mut self) -> (Vec<Package>, Option<String>) {
        self.packages
            .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        let issue = self
            .first_bad
            .map(|e| format!("{} unreadable rpm headers, the first: {e}", self.bad));
        (self.packages, issue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header of string tags and one int32 tag, laid out as rpm does (strings first).
    fn header(strings: &[(u32, &str)], epoch: Option<u32>) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, s) in strings {
            index.push((*tag, TYPE_STRING, data.len() as u32, 1));
            data.extend_from_slice(s.as_bytes());
            data.push(0);
        }
        if let Some(e) = epoch {
            while data.len() % 4 != 0 {
                data.push(0);
            }
            index.push((TAG_EPOCH, TYPE_INT32, data.len() as u32, 1));
            data.extend_from_slice(&e.to_be_bytes());
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(index.len() as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        for (t, ty, o, c) in index {
            for v in [t, ty, o, c] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn reads_the_tags() {
        let blob = header(
            &[
                (TAG_NAME, "bash"),
                (TAG_VERSION, "5.1.8"),
                (TAG_RELEASE, "9.el9"),
                (TAG_ARCH, "x86_64"),
                (TAG_SOURCERPM, "bash-5.1.8-9.el9.src.rpm"),
                (TAG_LICENSE, "GPLv3+"),
            ],
            Some(1),
        );
        let p = package(&blob, "var/lib/rpm/rpmdb.sqlite")
            .expect("test")
            .expect("test");
        assert_eq!(p.name, "bash");
        assert_eq!(p.version, "1:5.1.8-9.el9");
        assert_eq!(p.arch.as_deref(), Some("x86_64"));
        assert_eq!(p.source_name.as_deref(), Some("bash"));
        assert_eq!(p.source_version.as_deref(), Some("1:5.1.8-9.el9"));
        let h = Header::parse(&blob).expect("test");
        assert_eq!(h.string(TAG_LICENSE).as_deref(), Some("GPLv3+"));
        assert_eq!(h.string(TAG_VENDOR), None);
    }

    #[test]
    fn source_rpm_names() {
        assert_eq!(
            source_rpm("python-six-1.15.0-9.el9.src.rpm"),
            Some(("python-six".into(), "1.15.0-9.el9".into()))
        );
        assert_eq!(source_rpm("x.src.rpm"), None);
        assert_eq!(source_rpm("a-1-2.rpm"), None);
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = header(
            &[(TAG_NAME, "a"), (TAG_VERSION, "1"), (TAG_RELEASE, "1")],
            None,
        );
        for cut in 0..good.len() {
            assert!(package(&good[..cut], "x").is_err(), "cut at {cut}");
        }
        // An index claiming every tag there can be, or a huge data store.
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        assert!(package(&huge, "x").is_err());
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&0x0fff_ffffu32.to_be_bytes());
        assert!(package(&huge, "x").is_err());
        // An offset far past the data store reads as a missing tag.
        let mut far = good;
        far[8 + 8..8 + 12].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(package(&far, "x").is_err());
    }
}
