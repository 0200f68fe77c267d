//! Debian's version order (deb-version(7)): `[epoch:]upstream[-revision]`, each part
//! compared by alternating non-digit runs (`~` before everything, even the end; letters
//! before other characters) and digit runs (numerically).

use std::cmp::Ordering;

struct Parts<'a> {
    epoch: u64,
    upstream: &'a str,
    revision: &'a str,
}

fn parse(v: &str) -> Option<Parts<'_>> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().ok()?, r)
        }
        Some(_) => return None,
        None => (0, v),
    };
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let ok = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.~".contains(&b) || extra.contains(&b))
    };
    if upstream.is_empty()
        || !upstream.as_bytes()[0].is_ascii_digit()
        || !ok(upstream, b"-:")
        || !ok(revision, b"")
    {
        return None;
    }
    Some(Parts {
        epoch,
        upstream,
        revision,
    })
}

pub fn valid(v: &str) -> bool {
    parse(v).is_some()
}

fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    s.split_at(n)
}

/// Compares digit runs of any length without overflow.
pub(crate) fn cmp_numeric(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[a.iter().take_while(|&&c| c == b'0').count()..];
    let b = &b[b.iter().take_while(|&&c| c == b'0').count()..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        loop {
            let (ca, cb) = (a.first().copied(), b.first().copied());
            let a_nd = ca.is_some_and(|c| !c.is_ascii_digit());
            let b_nd = cb.is_some_and(|c| !c.is_ascii_digit());
            if !a_nd && !b_nd {
                break;
            }
            let o = weight(ca).cmp(&weight(cb));
            if o != Ordering::Equal {
                return o;
            }
            if a_nd {
                a = &a[1..];
            }
            if b_nd {
                b = &b[1..];
            }
        }
        let (da, ra) = digits(a);
        let (db, rb) = digits(b);
        let o = cmp_numeric(da, db);
        if o != Ordering::Equal {
            return o;
        }
        a = ra;
        b = rb;
    }
    Ordering::Equal
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse(a)?, parse(b)?);
    Some(
        a.epoch
            .cmp(&b.epoch)
            .then_with(|| verrevcmp(a.upstream, b.upstream))
            .then_with(|| verrevcmp(a.revision, b.revision)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn debian_order() {
        for (a, b, o) in [
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1:0.9", "2.0", Greater),
            ("0:1.0", "1.0", Equal),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ("3.0.11-1~deb12u2", "3.0.15-1~deb12u1", Less),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("1.2a", "1.2", Greater),
            ("1.2.0", "1.2", Greater),
            ("1.010", "1.10", Equal),
            ("7.88.1-10+deb12u5", "7.88.1-10+deb12u8", Less),
            ("1:2.3", "1:2.3-0", Equal),
        ] {
            assert_eq!(compare(a, b), Some(o), "{a} vs {b}");
        }
    }

    #[test]
    fn invalid() {
        for v in ["", "a1.0", "x:1.0", "1.0 2", "1.0-a_b"] {
            assert!(!valid(v), "{v:?}");
        }
    }
}
