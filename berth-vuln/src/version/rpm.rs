//! RPM's version order: `[epoch:]version[-release]`, version and release each compared
//! by rpmvercmp (alphanumeric segments; digits beat letters; `~` sorts before
//! everything, `^` after the end but before anything else).

use std::cmp::Ordering;

use super::dpkg::cmp_numeric;

pub fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: &u8| !c.is_ascii_alphanumeric() && *c != b'~' && *c != b'^';
    loop {
        while a.first().is_some_and(sep) {
            a = &a[1..];
        }
        while b.first().is_some_and(sep) {
            b = &b[1..];
        }
        let (at, bt) = (a.first() == Some(&b'~'), b.first() == Some(&b'~'));
        if at || bt {
            if !at {
                return Ordering::Greater;
            }
            if !bt {
                return Ordering::Less;
            }
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        let (ac, bc) = (a.first() == Some(&b'^'), b.first() == Some(&b'^'));
        if ac || bc {
            if a.is_empty() {
                return Ordering::Less;
            }
            if b.is_empty() {
                return Ordering::Greater;
            }
            if !ac {
                return Ordering::Greater;
            }
            if !bc {
                return Ordering::Less;
            }
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        if a.is_empty() || b.is_empty() {
            break;
        }
        let numeric = a[0].is_ascii_digit();
        let take = |s: &[u8]| {
            if numeric {
                s.iter().take_while(|c| c.is_ascii_digit()).count()
            } else {
                s.iter().take_while(|c| c.is_ascii_alphabetic()).count()
            }
        };
        let (na, nb) = (take(a), take(b));
        if nb == 0 {
            // Segments of different types: the numeric one is newer.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let o = if numeric {
            cmp_numeric(&a[..na], &b[..nb])
        } else {
            a[..na].cmp(&b[..nb])
        };
        if o != Ordering::Equal {
            return o;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

fn split(v: &str) -> Option<(u64, &str, &str)> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) => (e.parse().ok()?, r),
        None => (0, v),
    };
    let (ver, rel) = rest.rsplit_once('-').unwrap_or((rest, ""));
    if ver.is_empty()
        || v.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return None;
    }
    Some((epoch, ver, rel))
}

pub fn valid(v: &str) -> bool {
    split(v).is_some()
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (ea, va, ra) = split(a)?;
    let (eb, vb, rb) = split(b)?;
    // A missing release sorts before any release, so the order stays total.
    Some(
        ea.cmp(&eb)
            .then_with(|| rpmvercmp(va, vb))
            .then_with(|| rpmvercmp(ra, rb)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn rpmvercmp_cases() {
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("2.0.1a", "2.0.1", Greater),
            ("5.5p1", "5.5p2", Less),
            ("5.5p10", "5.5p1", Greater),
            ("10xyz", "10.1xyz", Less),
            ("xyz10", "xyz10.1", Less),
            ("1.0aa", "1.0a", Greater),
            ("1.0", "1.0a", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~rc1~git123", "1.0~rc1", Less),
            ("1.0^", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("1.0^git1", "1.0^git2", Less),
            ("1_0", "1.0", Equal),
            ("a", "1", Less),
            ("2a", "2.0", Less),
            ("1.05", "1.5", Equal),
        ] {
            assert_eq!(rpmvercmp(a, b), o, "{a} vs {b}");
        }
        assert_eq!(compare("1:1.0-1", "2.0-1"), Some(Greater));
        assert_eq!(compare("3.0.7-27.el9", "3.0.7-24.el9"), Some(Greater));
        assert_eq!(compare("3.0.7", "3.0.7-24.el9"), Some(Less));
    }
}
