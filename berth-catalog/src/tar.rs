//! A streaming tar reader: headers one at a time, file data read or skipped on demand.
//!
//! Why not the `tar` crate: it reads GNU long names and PAX headers whole, of whatever
//! size the archive claims, and a layer is hostile input. Here every header that is
//! buffered has a cap, and nothing else is kept.

use std::io::{self, Read};

const BLOCK: usize = 512;

/// Largest PAX extended header or GNU long name read into memory.
pub const MAX_EXTENDED_HEADER: u64 = 1 << 20;
/// Longest path kept (longer names are a tar bomb, not a real file).
pub const MAX_PATH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("truncated archive")]
    Truncated,
    #[error("bad header checksum at entry {0}")]
    Checksum(u64),
    #[error("bad number in header field {0}")]
    Number(&'static str),
    #[error("extended header of {0} bytes is over the cap")]
    HeaderTooLarge(u64),
    #[error("path of {0} bytes is over the cap")]
    PathTooLong(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Other,
}

/// One entry: its normalized path (no leading `/` or `./`, no `.` or `..` components),
/// as bytes because names need not be UTF-8.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub link: Vec<u8>,
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

pub struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    entries: u64,
    /// Bytes consumed from `inner` (the uncompressed tar stream).
    pub consumed: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            entries: 0,
            consumed: 0,
        }
    }

    fn read_exact_counted(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.consumed += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(TarError::Truncated),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarError::Io(e)),
            };
            self.consumed += got as u64;
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads the rest of an extended header's data, if it fits the cap.
    fn read_extended(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENDED_HEADER {
            return Err(TarError::HeaderTooLarge(size));
        }
        let mut data = vec![0u8; size as usize];
        self.read_exact_counted(&mut data)?;
        self.skip(pad(size))?;
        Ok(data)
    }

    /// Number of headers read so far (extended headers included).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Moves to the next entry, skipping what is left of the current one.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        let (rest, padding) = (self.remaining, self.padding);
        self.remaining = 0;
        self.padding = 0;
        self.skip(rest)?;
        // Some writers (umoci 0.4) end the stream right after the last entry's data,
        // without its padding or the closing zero blocks: the entry is whole, so that is
        // the end of the archive, not a truncation.
        match self.skip(padding) {
            Ok(()) => {}
            Err(TarError::Truncated) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut h = [0u8; BLOCK];
            // A clean end of stream where a header would start: some writers omit the
            // two zero blocks.
            let first = loop {
                match self.inner.read(&mut h) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(TarError::Io(e)),
                }
            };
            if first == 0 {
                return Ok(None);
            }
            self.consumed += first as u64;
            if first < BLOCK {
                self.read_exact_counted(&mut h[first..])?;
            }
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            // Only a header that checks out counts as an entry: a layer whose first block
            // does not is no tar archive (it has zero entries).
            if !checksum_ok(&h) {
                return Err(TarError::Checksum(self.entries + 1));
            }
            self.entries += 1;
            let typeflag = h[156];
            let size = number(&h[124..136]).ok_or(TarError::Number("size"))?;
            match typeflag {
                b'L' => {
                    long_name = Some(self.read_extended(size)?);
                    continue;
                }
                b'K' => {
                    long_link = Some(self.read_extended(size)?);
                    continue;
                }
                b'x' => {
                    let data = self.read_extended(size)?;
                    for (k, v) in pax_records(&data) {
                        match k {
                            b"path" => long_name = Some(v.to_vec()),
                            b"linkpath" => long_link = Some(v.to_vec()),
                            b"size" => {
                                pax_size = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                b'g' => {
                    // Global headers set defaults no layer relies on for the files read here.
                    self.skip(size + pad(size))?;
                    continue;
                }
                _ => {}
            }
            let size = pax_size.unwrap_or(size);
            let mode = number(&h[100..108]).unwrap_or(0) as u32;
            let raw_name = match long_name.take() {
                Some(n) => trim_nul(&n).to_vec(),
                None => {
                    let name = trim_nul(&h[0..100]);
                    if &h[257..262] == b"ustar" && h[345] != 0 {
                        let mut p = trim_nul(&h[345..500]).to_vec();
                        p.push(b'/');
                        p.extend_from_slice(name);
                        p
                    } else {
                        name.to_vec()
                    }
                }
            };
            if raw_name.len() > MAX_PATH {
                return Err(TarError::PathTooLong(raw_name.len()));
            }
            let link = long_link
                .take()
                .unwrap_or_else(|| trim_nul(&h[157..257]).to_vec());
            let kind = match typeflag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::Hardlink,
                b'2' => Kind::Symlink,
                b'5' => Kind::Dir,
                _ => Kind::Other,
            };
            let mut path = normalize(&raw_name);
            let kind = if kind == Kind::File && raw_name.ends_with(b"/") {
                Kind::Dir
            } else {
                kind
            };
            if kind == Kind::Dir && path.ends_with(b"/") {
                path.pop();
            }
            // Hard links and directories carry no data whatever their size field says;
            // other kinds (devices, sparse files, unknown types) are skipped by size.
            let data = match kind {
                Kind::Hardlink | Kind::Dir | Kind::Symlink => 0,
                _ => size,
            };
            self.remaining = data;
            self.padding = pad(data);
            return Ok(Some(Entry {
                path,
                kind,
                size: data,
                mode,
                link,
            }));
        }
    }

    /// Reads the current entry's data; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => {
                    self.remaining -= n as u64;
                    self.consumed += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
    }

    /// Appends the rest of the current entry's data to `out`, if `out` then holds at most
    /// `cap` bytes; false (nothing read) if it would not. The caller keeps one buffer for
    /// a whole layer: a fresh allocation per file would cost a page fault per 4 KiB of
    /// every file read, most of them binaries.
    pub fn read_rest_into(&mut self, cap: u64, out: &mut Vec<u8>) -> Result<bool, TarError> {
        let start = out.len();
        if self.remaining.saturating_add(start as u64) > cap {
            return Ok(false);
        }
        out.resize(start + self.remaining as usize, 0);
        let mut done = start;
        while done < out.len() {
            let n = self.read_data(&mut out[done..])?;
            if n == 0 {
                out.truncate(done);
                return Err(TarError::Truncated);
            }
            done += n;
        }
        Ok(true)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Octal (NUL/space terminated) or GNU base-256 (high bit of the first byte set).
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .take_while(|&&b| (b'0'..=b'7').contains(&b))
        .try_fold(0u64, |v, &b| {
            v.checked_mul(8)?.checked_add(u64::from(b - b'0'))
        })
}

fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Some(want) = number(&h[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    unsigned == want || signed == want as i64
}

/// `len key=value\n` records; malformed ones end the walk.
fn pax_records(mut data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Some(sp) = data.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > data.len() {
            break;
        }
        let rec = &data[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((&rec[..eq], &rec[eq + 1..]));
        }
        data = &data[len..];
    }
    out
}

/// `./a//b/../c` → `a/c`: what the path names inside the image's root, which `..` cannot
/// leave.
pub fn normalize(p: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"   12 \0"), Some(0o12));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(&[0xff; 12]), None);
    }

    #[test]
    fn paths() {
        assert_eq!(normalize(b"./a//b/../c"), b"a/c");
        assert_eq!(normalize(b"/../../etc/passwd"), b"etc/passwd");
        assert_eq!(normalize(b"usr/"), b"usr");
    }

    #[test]
    fn pax() {
        let d = b"18 path=some/path\n11 size=42\n";
        let r = pax_records(d);
        assert_eq!(
            r,
            vec![
                (&b"path"[..], &b"some/path"[..]),
                (&b"size"[..], &b"42"[..])
            ]
        );
        assert!(pax_records(b"999 path=x\n").is_empty());
    }
}
