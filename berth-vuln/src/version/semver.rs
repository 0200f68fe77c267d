//! Semantic versions (2.0.0 precedence) for npm, Cargo and Go. A leading `v` or `=` is
//! accepted (npm and Go write them), build metadata (`+...`, Go's `+incompatible`)
//! does not order. Go pseudo-versions (`v0.0.0-20191109021931-daa7c04131f5`,
//! `v1.2.4-0.20191109021931-...`) are pre-releases whose fixed-width timestamps order
//! them, so semver precedence is Go's order for them too.

use std::cmp::Ordering;

use super::dpkg::cmp_numeric;

struct Semver<'a> {
    core: [&'a str; 3],
    pre: Option<&'a str>,
}

fn numeric_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn parse(v: &str) -> Option<Semver<'_>> {
    let v = v.trim();
    let v = v.strip_prefix(['v', '=']).unwrap_or(v);
    let v = v
        .split_once('+')
        .map_or(v, |(h, build)| if build.is_empty() { "" } else { h });
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let mut it = core.split('.');
    let core = [it.next()?, it.next()?, it.next()?];
    if it.next().is_some() || !core.iter().all(|c| numeric_ok(c)) {
        return None;
    }
    if let Some(p) = pre
        && !p.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && (!id.bytes().all(|b| b.is_ascii_digit()) || numeric_ok(id))
        })
    {
        return None;
    }
    Some(Semver { core, pre })
}

pub fn valid(v: &str) -> bool {
    parse(v).is_some()
}

fn cmp_pre(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let xn = x.bytes().all(|b| b.is_ascii_digit());
                let yn = y.bytes().all(|b| b.is_ascii_digit());
                let o = match (xn, yn) {
                    (true, true) => cmp_numeric(x.as_bytes(), y.as_bytes()),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse(a)?, parse(b)?);
    for i in 0..3 {
        let o = cmp_numeric(a.core[i].as_bytes(), b.core[i].as_bytes());
        if o != Ordering::Equal {
            return Some(o);
        }
    }
    Some(match (a.pre, b.pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => cmp_pre(x, y),
    })
}

/// Go's versions: semver with `v`, and the toolchain's own (`go1.21.3`, `go1.21`,
/// `go1.21rc2`) turned into semver (`1.21.0-rc.2`) as the Go vulnerability database does.
pub fn go_normalize(v: &str) -> String {
    let Some(t) = v.strip_prefix("go") else {
        return v.to_owned();
    };
    let (num, pre) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], Some(&t[i..])),
        None => (t, None),
    };
    let mut parts: Vec<&str> = num.split('.').collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    let mut s = parts.join(".");
    if let Some(p) = pre {
        let n = p.bytes().take_while(u8::is_ascii_alphabetic).count();
        s.push('-');
        s.push_str(&p[..n]);
        if n < p.len() {
            s.push('.');
            s.push_str(&p[n..]);
        }
    }
    s
}

pub fn compare_go(a: &str, b: &str) -> Option<Ordering> {
    compare(&go_normalize(a), &go_normalize(b))
}

pub fn valid_go(v: &str) -> bool {
    valid(&go_normalize(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn semver_order() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
            "2.0.0",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare("v1.2.3", "1.2.3+build.5"), Some(Equal));
        assert_eq!(compare("=1.2.3", "1.2.3"), Some(Equal));
        assert!(!valid("1.2"));
        assert!(!valid("01.2.3"));
        assert!(!valid("1.2.3-01"));
    }

    #[test]
    fn go_order() {
        let ordered = [
            "v0.0.0-20191109021931-daa7c04131f5",
            "v0.0.0-20201109021931-aaa7c04131f5",
            "v0.1.0",
            "v1.2.3",
            "v1.2.4-0.20191109021931-daa7c04131f5",
            "v1.2.4-0.20211109021931-daa7c04131f5",
            "v1.2.4",
            "v2.0.0+incompatible",
            "v2.0.1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare_go(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare_go("go1.21.3", "1.21.3"), Some(Equal));
        assert_eq!(compare_go("go1.21", "1.21.0"), Some(Equal));
        assert_eq!(compare_go("go1.21rc2", "1.21.0"), Some(Less));
        assert_eq!(compare_go("go1.21rc2", "1.21.0-rc.2"), Some(Equal));
        assert_eq!(compare_go("go1.22.1", "1.22.0"), Some(Greater));
    }
}
