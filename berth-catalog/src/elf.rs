//! Finds a named section in an ELF file held in memory (32/64-bit, either byte order).

fn rd(d: &[u8], at: usize, n: usize, le: bool) -> Option<u64> {
    let b = d.get(at..at.checked_add(n)?)?;
    let mut v: u64 = 0;
    for i in 0..n {
        let byte = if le { b[n - 1 - i] } else { b[i] };
        v = (v << 8) | u64::from(byte);
    }
    Some(v)
}

pub fn section<'a>(d: &'a [u8], want: &str) -> Option<&'a [u8]> {
    if !d.starts_with(b"\x7fELF") {
        return None;
    }
    let wide = *d.get(4)? == 2;
    let le = *d.get(5)? == 1;
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (
            rd(d, 0x28, 8, le)?,
            rd(d, 0x3a, 2, le)?,
            rd(d, 0x3c, 2, le)?,
            rd(d, 0x3e, 2, le)?,
        )
    } else {
        (
            rd(d, 0x20, 4, le)?,
            rd(d, 0x2e, 2, le)?,
            rd(d, 0x30, 2, le)?,
            rd(d, 0x32, 2, le)?,
        )
    };
    let hdr = |i: u64| -> Option<(u64, u64, u64)> {
        let at = usize::try_from(shoff.checked_add(i.checked_mul(shentsize)?)?).ok()?;
        Some(if wide {
            (
                rd(d, at, 4, le)?,
                rd(d, at + 0x18, 8, le)?,
                rd(d, at + 0x20, 8, le)?,
            )
        } else {
            (
                rd(d, at, 4, le)?,
                rd(d, at + 0x10, 4, le)?,
                rd(d, at + 0x14, 4, le)?,
            )
        })
    };
    let (_, stroff, strsize) = hdr(shstrndx)?;
    let strtab =
        d.get(usize::try_from(stroff).ok()?..usize::try_from(stroff.checked_add(strsize)?).ok()?)?;
    for i in 0..shnum.min(4096) {
        let Some((name, off, size)) = hdr(i) else {
            continue;
        };
        let Some(n) = strtab.get(usize::try_from(name).ok()?..) else {
            continue;
        };
        let n = &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())];
        if n == want.as_bytes() {
            return d
                .get(usize::try_from(off).ok()?..usize::try_from(off.checked_add(size)?).ok()?);
        }
    }
    None
}
