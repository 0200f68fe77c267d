//! Just enough of the zip format to read small members of a jar (or an OSV dump) held
//! in memory: the central directory, stored and deflated members. Of zip64 only the
//! member count (OSV dumps hold more than 65,535 small files; a member needing zip64
//! sizes is over any cap).

use std::io::Read;

pub struct ZipEntry {
    pub name: String,
    method: u16,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

fn u16le(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}
fn u32le(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64le(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// The central directory's entries.
pub fn entries(d: &[u8]) -> Result<Vec<ZipEntry>, String> {
    // The end record is within the last 64 KiB + 22 bytes (its comment is at most 64 KiB).
    let lo = d.len().saturating_sub(22 + 0xffff);
    let eocd = (lo..d.len().saturating_sub(21))
        .rev()
        .find(|&i| d[i..].starts_with(b"PK\x05\x06"))
        .ok_or("not a zip: no end of central directory")?;
    let mut count = u64::from(u16le(d, eocd + 10).ok_or("short end record")?);
    let mut at = u32le(d, eocd + 16).ok_or("short end record")? as usize;
    // Over 65,535 members (an OSV ecosystem dump): the zip64 end record holds the count,
    // found through the locator just before the end record.
    if count == 0xffff
        && eocd >= 20
        && u32le(d, eocd - 20) == Some(0x0706_4b50)
        && let Some(z) = u64le(d, eocd - 12).and_then(|o| usize::try_from(o).ok())
        && u32le(d, z) == Some(0x0606_4b50)
    {
        count = u64le(d, z + 32).ok_or("short zip64 end record")?;
        at = u64le(d, z + 48)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or("short zip64 end record")?;
    }
    let mut out = Vec::with_capacity(usize::try_from(count.min(4096)).unwrap_or(4096));
    for _ in 0..count {
        if u32le(d, at) != Some(0x0201_4b50) {
            return Err("bad central directory entry".into());
        }
        let f = |o| u32le(d, at + o).ok_or("short central directory entry");
        let method = u16le(d, at + 10).ok_or("short entry")?;
        let compressed = u64::from(f(20)?);
        let size = u64::from(f(24)?);
        let name_len = usize::from(u16le(d, at + 28).ok_or("short entry")?);
        let extra_len = usize::from(u16le(d, at + 30).ok_or("short entry")?);
        let comment_len = usize::from(u16le(d, at + 32).ok_or("short entry")?);
        let local_offset = u64::from(f(42)?);
        let name = d
            .get(at + 46..at + 46 + name_len)
            .ok_or("short entry name")?;
        out.push(ZipEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            method,
            compressed,
            size,
            local_offset,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// A member's bytes, if its size is at most `cap`; `None` for larger or unsupported ones.
pub fn read(d: &[u8], e: &ZipEntry, cap: u64) -> Result<Option<Vec<u8>>, String> {
    if e.size > cap || e.compressed == u64::from(u32::MAX) {
        return Ok(None);
    }
    let lh = usize::try_from(e.local_offset).map_err(|_| "offset")?;
    if u32le(d, lh) != Some(0x0403_4b50) {
        return Err("bad local header".into());
    }
    let name_len = usize::from(u16le(d, lh + 26).ok_or("short local header")?);
    let extra_len = usize::from(u16le(d, lh + 28).ok_or("short local header")?);
    let start = lh + 30 + name_len + extra_len;
    let end = start.checked_add(e.compressed as usize).ok_or("size")?;
    let raw = d.get(start..end).ok_or("member past the end")?;
    match e.method {
        0 => Ok(Some(raw.to_vec())),
        8 => {
            let mut out = Vec::with_capacity(e.size.min(cap) as usize);
            // The declared size is not trusted: the inflater stops at the cap.
            flate2::read::DeflateDecoder::new(raw)
                .take(cap + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("inflate: {e}"))?;
            if out.len() as u64 > cap {
                return Ok(None);
            }
            Ok(Some(out))
        }
        _ => Ok(None),
    }
}
