//! Alpine's version order (apk-tools): dotted numbers, an optional letter, suffixes
//! (`_alpha` < `_beta` < `_pre` < `_rc` < none < `_cvs` < `_svn` < `_git` < `_hg` <
//! `_p`, each with an optional number), an optional `~hash`, and `-rN`.

use std::cmp::Ordering;

use super::dpkg::cmp_numeric;

#[derive(Debug)]
struct Apk<'a> {
    numbers: Vec<&'a str>,
    letter: Option<u8>,
    suffixes: Vec<(i8, &'a str)>,
    revision: &'a str,
}

fn suffix_rank(s: &str) -> Option<i8> {
    Some(match s {
        "alpha" => -4,
        "beta" => -3,
        "pre" => -2,
        "rc" => -1,
        "cvs" => 1,
        "svn" => 2,
        "git" => 3,
        "hg" => 4,
        "p" => 5,
        _ => return None,
    })
}

fn parse(v: &str) -> Option<Apk<'_>> {
    let (v, revision) = match v.rsplit_once("-r") {
        Some((head, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => (head, r),
        _ => (v, "0"),
    };
    // A commit hash after `~` does not order.
    let v = v.split_once('~').map_or(v, |(h, _)| h);
    let mut rest = v;
    let mut numbers = Vec::new();
    loop {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        numbers.push(&rest[..n]);
        rest = &rest[n..];
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    let mut letter = None;
    if let Some(&c) = rest.as_bytes().first()
        && c.is_ascii_lowercase()
    {
        letter = Some(c);
        rest = &rest[1..];
    }
    let mut suffixes = Vec::new();
    while let Some(r) = rest.strip_prefix('_') {
        let name_len = r.bytes().take_while(u8::is_ascii_lowercase).count();
        let rank = suffix_rank(&r[..name_len])?;
        let num_len = r[name_len..].bytes().take_while(u8::is_ascii_digit).count();
        suffixes.push((rank, &r[name_len..name_len + num_len]));
        rest = &r[name_len + num_len..];
    }
    if !rest.is_empty() {
        return None;
    }
    Some(Apk {
        numbers,
        letter,
        suffixes,
        revision,
    })
}

pub fn valid(v: &str) -> bool {
    parse(v).is_some()
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse(a)?, parse(b)?);
    for (i, (x, y)) in a.numbers.iter().zip(&b.numbers).enumerate() {
        // After the first, a component with a leading zero compares as a decimal fraction.
        let o = if i > 0 && (x.starts_with('0') || y.starts_with('0')) {
            x.trim_end_matches('0').cmp(y.trim_end_matches('0'))
        } else {
            cmp_numeric(x.as_bytes(), y.as_bytes())
        };
        if o != Ordering::Equal {
            return Some(o);
        }
    }
    let o = a.numbers.len().cmp(&b.numbers.len());
    if o != Ordering::Equal {
        return Some(o);
    }
    let o = a.letter.cmp(&b.letter);
    if o != Ordering::Equal {
        return Some(o);
    }
    let n = a.suffixes.len().max(b.suffixes.len());
    for i in 0..n {
        let (x, y) = (a.suffixes.get(i), b.suffixes.get(i));
        let o = match (x, y) {
            (Some(x), Some(y)) => {
                x.0.cmp(&y.0)
                    .then_with(|| cmp_numeric(x.1.as_bytes(), y.1.as_bytes()))
            }
            (Some(x), None) => x.0.cmp(&0),
            (None, Some(y)) => 0.cmp(&y.0),
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return Some(o);
        }
    }
    Some(cmp_numeric(a.revision.as_bytes(), b.revision.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn alpine_order() {
        for (a, b, o) in [
            ("3.1.4-r1", "3.1.4-r0", Greater),
            ("3.1.4-r5", "3.1.4-r10", Less),
            ("1.2.3_rc1", "1.2.3", Less),
            ("1.2.3_alpha", "1.2.3_beta", Less),
            ("1.2.3_p1", "1.2.3", Greater),
            ("1.2.3", "1.2.3a", Less),
            ("1.2", "1.2.1", Less),
            ("1.02", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("2.38-r0", "2.38", Equal),
            ("1.36.1-r15", "1.36.1-r19", Less),
            ("1.0_git20230101", "1.0", Greater),
        ] {
            assert_eq!(compare(a, b), Some(o), "{a} vs {b}");
        }
        assert!(!valid("abc"));
        assert!(!valid("1.0_foo"));
    }
}
