//! Just enough of a Berkeley DB hash database (rpm's `Packages` before rpm 4.16) held in
//! memory to list its values: the metadata page (magic, byte order, page size), every
//! hash page in file order, and the overflow chains that hold values too big for a page.
//! Walking the pages in file order rather than bucket by bucket needs no bucket
//! arithmetic and ends by itself; an overflow page may belong to one value only, so a
//! chain that loops or is shared is an error.

const HASH_MAGIC: u32 = 0x0006_1561;
const P_HASHMETA: u8 = 8;
/// Hash pages: sorted (4.x and later) and the older unsorted kind.
const P_HASH: u8 = 13;
const P_HASH_UNSORTED: u8 = 2;
const P_OVERFLOW: u8 = 7;
const H_KEYDATA: u8 = 1;
const H_OFFPAGE: u8 = 3;
/// The generic page header: lsn, pgno, prev, next, entries, hf_offset, level, type.
const PAGE_HEADER: usize = 26;

pub struct Db<'a> {
    data: &'a [u8],
    big_endian: bool,
    page_size: usize,
    last_page: u32,
    /// The last page the metadata names, which a truncated file does not hold.
    meta_last_page: u32,
    /// Largest value reassembled from an overflow chain.
    max_value: usize,
}

/// An item of a hash page: inline bytes, or where an overflow chain starts and its length.
enum Item<'a> {
    Inline(&'a [u8]),
    Offpage { page: u32, len: u32 },
}

impl<'a> Db<'a> {
    pub fn open(data: &'a [u8], max_value: usize) -> Result<Db<'a>, String> {
        let magic = data.get(12..16).ok_or("not a Berkeley DB file")?;
        let magic = [magic[0], magic[1], magic[2], magic[3]];
        let big_endian = if u32::from_le_bytes(magic) == HASH_MAGIC {
            false
        } else if u32::from_be_bytes(magic) == HASH_MAGIC {
            true
        } else {
            return Err("not a Berkeley DB hash database".into());
        };
        let mut db = Db {
            data,
            big_endian,
            page_size: 0,
            last_page: 0,
            meta_last_page: 0,
            max_value,
        };
        let page_size = db.u32(data, 20)?;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("page size {page_size}"));
        }
        db.page_size = page_size as usize;
        if data.get(25) != Some(&P_HASHMETA) {
            return Err("first page is not hash metadata".into());
        }
        // Encryption and page checksums move the page layout; rpm uses neither.
        if data.get(24).is_some_and(|&e| e != 0) || data.get(26).is_some_and(|&f| f & 1 != 0) {
            return Err("encrypted or checksummed database".into());
        }
        let in_file = u32::try_from(data.len() / db.page_size).unwrap_or(u32::MAX);
        db.meta_last_page = db.u32(data, 32)?;
        db.last_page = db.meta_last_page.min(in_file.saturating_sub(1));
        Ok(db)
    }

    fn u16(&self, b: &[u8], at: usize) -> Result<u16, String> {
        let s = b.get(at..at + 2).ok_or("read past a page")?;
        let a = [s[0], s[1]];
        Ok(if self.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        })
    }

    fn u32(&self, b: &[u8], at: usize) -> Result<u32, String> {
        let s = b.get(at..at + 4).ok_or("read past a page")?;
        let a = [s[0], s[1], s[2], s[3]];
        Ok(if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    fn page(&self, n: u32) -> Result<&'a [u8], String> {
        let start = (n as usize)
            .checked_mul(self.page_size)
            .ok_or("page number overflows")?;
        self.data
            .get(start..start + self.page_size)
            .ok_or_else(|| format!("page {n} past the end of the file"))
    }

    fn item(&self, page: &'a [u8], i: usize) -> Result<Item<'a>, String> {
        let at = usize::from(self.u16(page, PAGE_HEADER + 2 * i)?);
        // Items fill the page from its end: each ends where the previous one starts.
        let end = if i == 0 {
            self.page_size
        } else {
            usize::from(self.u16(page, PAGE_HEADER + 2 * (i - 1))?)
        };
        let item = page.get(at..end).ok_or("item outside its page")?;
        match item.first() {
            Some(&H_KEYDATA) => Ok(Item::Inline(&item[1..])),
            Some(&H_OFFPAGE) => Ok(Item::Offpage {
                page: self.u32(item, 4)?,
                len: self.u32(item, 8)?,
            }),
            Some(t) => Err(format!("hash item of type {t}")),
            None => Err("empty hash item".into()),
        }
    }

    /// The bytes of an overflow chain.
    fn overflow(&self, first: u32, len: u32, used: &mut [bool]) -> Result<Vec<u8>, String> {
        let len = len as usize;
        if len > self.data.len().min(self.max_value) {
            return Err(format!("an overflow item of {len} bytes"));
        }
        let mut out = Vec::with_capacity(len);
        let mut n = first;
        while out.len() < len {
            match used.get_mut(n as usize) {
                Some(u) if !*u && n != 0 => *u = true,
                _ => return Err(format!("overflow page {n} reused or out of range")),
            }
            let page = self.page(n)?;
            if page.get(25) != Some(&P_OVERFLOW) {
                return Err(format!("page {n} is not an overflow page"));
            }
            let here = usize::from(self.u16(page, 22)?);
            let bytes = page
                .get(PAGE_HEADER..PAGE_HEADER + here)
                .ok_or("overflow page longer than a page")?;
            out.extend_from_slice(&bytes[..bytes.len().min(len - out.len())]);
            n = self.u32(page, 16)?;
            if n == 0 && out.len() < len {
                return Err("overflow chain ends early".into());
            }
        }
        Ok(out)
    }

    /// Calls `pair` with each key and value of the database, or why one could not be read:
    /// a broken overflow chain loses its pair, a broken page the rest of that page, and
    /// the walk goes on. `pair` returns false to stop.
    pub fn scan<F>(&self, mut pair: F) -> Result<(), String>
    where
        F: FnMut(Result<(&[u8], &[u8]), String>) -> Result<bool, String>,
    {
        let mut used = vec![false; self.last_page as usize + 1];
        for n in 1..=self.last_page {
            let page = self.page(n)?;
            if !matches!(page.get(25), Some(&P_HASH) | Some(&P_HASH_UNSORTED)) {
                continue;
            }
            let entries = usize::from(self.u16(page, 20)?);
            for i in (0..entries.saturating_sub(1)).step_by(2) {
                let items = match (self.item(page, i), self.item(page, i + 1)) {
                    (Ok(k), Ok(v)) => (k, v),
                    (Err(e), _) | (_, Err(e)) => {
                        if !pair(Err(format!("page {n}: {e}")))? {
                            return Ok(());
                        }
                        break;
                    }
                };
                let mut bytes = |item| match item {
                    Item::Inline(b) => Ok(<[u8]>::to_vec(b)),
                    Item::Offpage { page, len } => self.overflow(page, len, &mut used),
                };
                let key = bytes(items.0);
                let value = bytes(items.1);
                let kv = match (&key, &value) {
                    (Ok(k), Ok(v)) => Ok((&k[..], &v[..])),
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                };
                if !pair(kv)? {
                    return Ok(());
                }
            }
        }
        if self.last_page < self.meta_last_page {
            return Err(format!(
                "truncated: {} of {} pages",
                u64::from(self.last_page) + 1,
                u64::from(self.meta_last_page) + 1
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz seed made by `db5.3_load`: 512-byte pages, rpm's counter under key 0 and
    /// two rpm headers of about 1.3 KB on overflow pages.
    const SEED: &[u8] = include_bytes!("../../fuzz/corpus/layer/rpm-packages-small.bdb");

    fn values(max: usize) -> Result<Vec<usize>, String> {
        let db = Db::open(SEED, max)?;
        let mut sizes = Vec::new();
        db.scan(|kv| {
            sizes.push(kv?.1.len());
            Ok(true)
        })?;
        Ok(sizes)
    }

    #[test]
    fn the_value_cap_holds() {
        let mut sizes = values(1 << 20).expect("test");
        sizes.sort();
        assert_eq!(sizes, vec![4, 1240, 1284]);
        assert!(values(1000).expect_err("test").contains("an overflow item"));
    }
}
