//! Just enough of the SQLite file format to read one rowid table from a database held in
//! memory: the 100-byte header, table b-tree pages (interior and leaf), overflow chains,
//! varints and the record format; the table's root page comes from `sqlite_schema`.
//! Each page is visited at most once (a b-tree or overflow chain that loops back is an
//! error), so the work is bounded by the file's page count. Pages a write-ahead log holds
//! are not seen: rpm checkpoints its log when it closes the database.

const MAGIC: &[u8; 16] = b"SQLite format 3\0";

const LEAF_TABLE: u8 = 13;
const INTERIOR_TABLE: u8 = 5;

/// One column's value, borrowed from the record (or its reassembled payload).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Blob(&'a [u8]),
    Text(&'a [u8]),
}

pub struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    usable: usize,
    pages: u32,
    /// Largest record reassembled from an overflow chain.
    max_payload: usize,
}

/// A varint: big-endian groups of 7 bits, the ninth byte whole.
pub fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Marks pages as visited; visiting one twice is a loop.
struct Visited(Vec<bool>);

impl Visited {
    fn visit(&mut self, page: u32) -> Result<(), String> {
        match self.0.get_mut(page as usize) {
            Some(v) if !*v => {
                *v = true;
                Ok(())
            }
            Some(_) => Err(format!("page {page} is linked twice")),
            None => Err(format!("page {page} out of range")),
        }
    }
}

impl<'a> Db<'a> {
    pub fn open(data: &'a [u8], max_payload: usize) -> Result<Db<'a>, String> {
        if data.len() < 100 || !data.starts_with(MAGIC) {
            return Err("not an SQLite database".into());
        }
        let page_size = match u16::from_be_bytes([data[16], data[17]]) {
            1 => 65536,
            n if n >= 512 && n.is_power_of_two() => usize::from(n),
            n => return Err(format!("page size {n}")),
        };
        let usable = page_size - usize::from(data[20]);
        // The format's own minimum, below which the overflow arithmetic breaks.
        if usable < 480 {
            return Err(format!("usable page size {usable}"));
        }
        if u32::from_be_bytes([data[56], data[57], data[58], data[59]]) > 1 {
            return Err("UTF-16 database".into());
        }
        // The header's page count may be stale (older writers); the file's length is not.
        let pages = u32::try_from(data.len() / page_size).unwrap_or(u32::MAX);
        Ok(Db {
            data,
            page_size,
            usable,
            pages,
            max_payload,
        })
    }

    fn page(&self, n: u32) -> Result<&'a [u8], String> {
        if n == 0 || n > self.pages {
            return Err(format!("page {n} outside the {} pages", self.pages));
        }
        let start = (n as usize - 1) * self.page_size;
        self.data
            .get(start..start + self.usable)
            .ok_or_else(|| format!("page {n} truncated"))
    }

    /// Calls `row` with each row of the table rooted at `root`, in b-tree order: its rowid
    /// and its record's payload, or why that one cell could not be read (the walk goes on:
    /// a broken overflow chain loses one row). A broken b-tree ends the walk with an error.
    /// `row` returns false to stop early.
    pub fn scan<F>(&self, root: u32, mut row: F) -> Result<(), String>
    where
        F: FnMut(i64, Result<&[u8], String>) -> Result<bool, String>,
    {
        let mut visited = Visited(vec![false; self.pages as usize + 1]);
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            visited.visit(n)?;
            let page = self.page(n)?;
            // Page 1 begins with the database header.
            let h = if n == 1 { 100 } else { 0 };
            let kind = *page.get(h).ok_or("short page")?;
            let cells = usize::from(be16(page, h + 3)?);
            let header_len = match kind {
                LEAF_TABLE => 8,
                INTERIOR_TABLE => 12,
                k => return Err(format!("page {n} of type {k} in a table b-tree")),
            };
            let pointers = h + header_len;
            if kind == INTERIOR_TABLE {
                // Children are pushed right to left so rows come out in rowid order.
                stack.push(be32(page, h + 8)?);
                for i in (0..cells).rev() {
                    let at = usize::from(be16(page, pointers + 2 * i)?);
                    stack.push(be32(page, at)?);
                }
                if stack.len() > self.pages as usize {
                    return Err("b-tree links more pages than the file holds".into());
                }
                continue;
            }
            for i in 0..cells {
                let at = usize::from(be16(page, pointers + 2 * i)?);
                let cell = page.get(at..).ok_or("cell outside its page")?;
                let (size, a) = varint(cell).ok_or("bad payload size")?;
                let (rowid, b) = varint(&cell[a..]).ok_or("bad rowid")?;
                let payload = self.payload(&cell[a + b..], size, &mut visited);
                if !row(rowid as i64, payload.as_deref().map_err(Clone::clone))? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A table leaf cell's payload: the part stored in the cell, then the overflow chain.
    fn payload(&self, cell: &[u8], size: u64, visited: &mut Visited) -> Result<Vec<u8>, String> {
        if size > self.data.len().min(self.max_payload) as u64 {
            return Err(format!("a record of {size} bytes"));
        }
        let size = size as usize;
        let u = self.usable;
        let x = u - 35;
        if size <= x {
            let local = cell.get(..size).ok_or("payload outside its page")?;
            return Ok(local.to_vec());
        }
        let m = (u - 12) * 32 / 255 - 23;
        let k = m + (size - m) % (u - 4);
        let local_len = if k <= x { k } else { m };
        let local = cell.get(..local_len).ok_or("payload outside its page")?;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(local);
        let mut next = be32(cell, local_len)?;
        while out.len() < size {
            if next == 0 {
                return Err("overflow chain ends early".into());
            }
            visited.visit(next)?;
            let page = self.page(next)?;
            next = be32(page, 0)?;
            let take = (size - out.len()).min(u - 4);
            out.extend_from_slice(page.get(4..4 + take).ok_or("short overflow page")?);
        }
        Ok(out)
    }

    /// The root page of table `name` (compared ignoring ASCII case, as SQL names are).
    pub fn table_root(&self, name: &str) -> Result<Option<u32>, String> {
        let mut root = None;
        self.scan(1, |_, payload| {
            let cols = record(payload?)?;
            let is = |i: usize, want: &str| {
                matches!(cols.get(i), Some(Value::Text(t)) if t.eq_ignore_ascii_case(want.as_bytes()))
            };
            if is(0, "table") && is(1, name) {
                if let Some(Value::Int(r)) = cols.get(3) {
                    root = u32::try_from(*r).ok();
                }
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(root)
    }
}

fn be16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "read past a page".to_string())
}

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "read past a page".to_string())
}

/// A record: a header of serial types (its length first), then the values.
pub fn record(payload: &[u8]) -> Result<Vec<Value<'_>>, String> {
    let (header_len, mut at) = varint(payload).ok_or("bad record header")?;
    let header_len = usize::try_from(header_len).map_err(|_| "bad record header")?;
    let header = payload.get(..header_len).ok_or("record header too long")?;
    let mut body = header_len;
    let mut out = Vec::new();
    while at < header.len() {
        let (t, n) = varint(&header[at..]).ok_or("bad serial type")?;
        at += n;
        let len = match t {
            0 | 8 | 9 => 0,
            1..=4 => t as usize,
            5 => 6,
            6 | 7 => 8,
            10 | 11 => return Err(format!("serial type {t}")),
            _ => usize::try_from((t - 12) / 2).map_err(|_| "value too long")?,
        };
        let v = payload
            .get(body..body.checked_add(len).ok_or("value too long")?)
            .ok_or("value past the record")?;
        body += len;
        out.push(match t {
            0 => Value::Null,
            8 => Value::Int(0),
            9 => Value::Int(1),
            1..=6 => {
                // Big-endian two's complement of 1 to 8 bytes.
                let mut x: i64 = if v[0] & 0x80 != 0 { -1 } else { 0 };
                for &b in v {
                    x = (x << 8) | i64::from(b);
                }
                Value::Int(x)
            }
            7 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(v);
                Value::Real(f64::from_be_bytes(a))
            }
            t if t % 2 == 0 => Value::Blob(v),
            _ => Value::Text(v),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
    }

    /// The fuzz seed made by the `sqlite3` shell: 512-byte pages, two rpm headers of about
    /// 1.3 KB, so each spills onto overflow pages.
    const SEED: &[u8] = include_bytes!("../../fuzz/corpus/layer/rpmdb-small.sqlite");

    #[test]
    fn the_record_cap_holds() {
        let rows = |max| -> Result<Vec<usize>, String> {
            let db = Db::open(SEED, max)?;
            let root = db.table_root("packages")?.ok_or("no table")?;
            let mut sizes = Vec::new();
            db.scan(root, |_, p| {
                sizes.push(p?.len());
                Ok(true)
            })?;
            Ok(sizes)
        };
        assert_eq!(rows(1 << 20).expect("test").len(), 2);
        assert!(rows(1000).expect_err("test").contains("a record of"));
    }

    #[test]
    fn records() {
        // NULL, int8 -2, text "ab", blob [1].
        let r = [5u8, 0, 1, 17, 14, 0xfe, b'a', b'b', 1];
        assert_eq!(
            record(&r).expect("test"),
            vec![
                Value::Null,
                Value::Int(-2),
                Value::Text(b"ab"),
                Value::Blob(&[1])
            ]
        );
        assert!(record(&r[..8]).is_err());
        assert!(record(&[5, 0, 1, 17, 10]).is_err());
    }
}
