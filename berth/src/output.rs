//! What the CLI prints for people: tables with a header row and aligned columns, times in
//! RFC 3339, and every value with its control characters escaped. Names in the audit log
//! and elsewhere can come from anyone (a failed login records the name as typed), so a
//! tab, a newline or an escape sequence in one must not forge a line or a column, or
//! repaint the terminal.

use std::borrow::Cow;
use std::io::Write;

/// `s` with control characters (C0, DEL, C1) and the Unicode bidirectional overrides
/// written as escapes (`\n`, `\t`, `\u{1b}`, `\u{202e}`); unchanged if it has none.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Seconds since the epoch, as people read them.
pub fn time(secs: i64) -> String {
    berth_oci::time::rfc3339(secs)
}

/// A byte count as people read it: `512 B`, `2.0 KiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An optional value: `-` when absent.
pub fn opt(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// Writes `text` to stdout. A closed pipe (`| head`) is not an error worth a panic.
pub fn print(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// A table printed with a header row and columns padded to their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; its cells are escaped here, so callers pass values as stored.
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| clean(c.as_ref()).into_owned())
                .collect(),
        );
    }

    /// The table as text, one line per row, header first.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut l = String::new();
            for (i, c) in cells.enumerate().take(cols) {
                if i + 1 == cols {
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    l.extend(std::iter::repeat_n(' ', width[i] - c.chars().count() + 2));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut self.header.iter().copied());
        for r in &self.rows {
            line(&mut r.iter().map(String::as_str));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines_or_columns() {
        assert_eq!(clean("alice"), "alice");
        assert!(matches!(clean("alice"), Cow::Borrowed(_)));
        assert_eq!(
            clean("x\tok\n2026-01-01\tadmin\r\u{1b}[2J\u{7f}\u{85}"),
            "x\\tok\\n2026-01-01\\tadmin\\r\\u{1b}[2J\\u{7f}\\u{85}"
        );
        assert_eq!(clean("abc\u{202e}fed"), "abc\\u{202e}fed");
        // Ordinary non-ASCII text stays readable.
        assert_eq!(clean("José ✓"), "José ✓");
    }

    #[test]
    fn tables_align_and_escape() {
        let mut t = Table::new(&["NAME", "ADMIN", "CREATED"]);
        t.row(["alice", "yes", "2026-01-01T00:00:00Z"]);
        t.row(["evil\n3\tadmin", "no", "-"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "NAME            ADMIN  CREATED");
        assert_eq!(lines[1], "alice           yes    2026-01-01T00:00:00Z");
        assert_eq!(lines[2], "evil\\n3\\tadmin  no     -");
    }
}
