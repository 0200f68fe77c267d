//! PEP 440 versions, normalized as PEP 440 says (case, a leading `v`, `alpha`/`beta`/
//! `c`/`pre`/`preview`, `rev`/`r`, `-N` as a post release, optional separators) and
//! ordered by its key: epoch, release (trailing zeros ignored), pre, post, dev, local.

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum Local {
    Num(u64),
    // Strings sort before numbers within a local segment.
    Str(String),
}

impl Local {
    fn rank(&self) -> (u8, u64, &str) {
        match self {
            Local::Str(s) => (0, 0, s),
            Local::Num(n) => (1, *n, ""),
        }
    }
}

#[derive(Debug, Clone)]
struct Pep440 {
    epoch: u64,
    release: Vec<u64>,
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<Local>,
}

fn number(s: &str) -> (Option<u64>, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return (None, s);
    }
    (s[..n].parse().ok(), &s[n..])
}

fn strip_sep(s: &str) -> &str {
    s.strip_prefix(['.', '-', '_']).unwrap_or(s)
}

fn parse(v: &str) -> Option<Pep440> {
    let lower = v.trim().to_ascii_lowercase();
    let mut s = lower.strip_prefix('v').unwrap_or(&lower);
    let (public, local) = match s.split_once('+') {
        Some((p, l)) => (p, Some(l)),
        None => (s, None),
    };
    s = public;
    let mut epoch = 0;
    if let Some((e, r)) = s.split_once('!') {
        epoch = e.parse().ok()?;
        s = r;
    }
    let mut release = Vec::new();
    loop {
        let (n, r) = number(s);
        release.push(n?);
        s = r;
        match s.strip_prefix('.') {
            Some(r) if r.bytes().next().is_some_and(|b| b.is_ascii_digit()) => s = r,
            _ => break,
        }
    }
    let mut pre = None;
    let t = strip_sep(s);
    for (word, rank) in [
        ("alpha", 0),
        ("a", 0),
        ("beta", 1),
        ("b", 1),
        ("preview", 2),
        ("pre", 2),
        ("rc", 2),
        ("c", 2),
    ] {
        if let Some(r) = t.strip_prefix(word) {
            let (n, r) = number(strip_sep(r));
            pre = Some((rank, n.unwrap_or(0)));
            s = r;
            break;
        }
    }
    let mut post = None;
    let t = strip_sep(s);
    for word in ["post", "rev", "r"] {
        if let Some(r) = t.strip_prefix(word) {
            let (n, r) = number(strip_sep(r));
            post = Some(n.unwrap_or(0));
            s = r;
            break;
        }
    }
    if post.is_none()
        && let Some(r) = s.strip_prefix('-')
    {
        let (n, r) = number(r);
        if let Some(n) = n {
            post = Some(n);
            s = r;
        }
    }
    let mut dev = None;
    let t = strip_sep(s);
    if let Some(r) = t.strip_prefix("dev") {
        let (n, r) = number(strip_sep(r));
        dev = Some(n.unwrap_or(0));
        s = r;
    }
    if !s.is_empty() {
        return None;
    }
    let mut loc = Vec::new();
    if let Some(l) = local {
        for part in l.split(['.', '-', '_']) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            loc.push(match part.parse() {
                Ok(n) => Local::Num(n),
                Err(_) => Local::Str(part.to_owned()),
            });
        }
    }
    while release.len() > 1 && release.last() == Some(&0) {
        release.pop();
    }
    Some(Pep440 {
        epoch,
        release,
        pre,
        post,
        dev,
        local: loc,
    })
}

pub fn valid(v: &str) -> bool {
    parse(v).is_some()
}

/// Pre-release key: a dev release of a final version sorts before its pre-releases.
fn pre_key(v: &Pep440) -> (i8, u64) {
    match (v.pre, v.post, v.dev) {
        (None, None, Some(_)) => (-1, 0),
        (None, _, _) => (3, 0),
        (Some((r, n)), _, _) => (r as i8, n),
    }
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse(a)?, parse(b)?);
    let post = |v: &Pep440| v.post.map_or(-1, |n| n as i128);
    let dev = |v: &Pep440| v.dev.map_or(i128::MAX, i128::from);
    let local = |v: &Pep440| -> Vec<(u8, u64, String)> {
        v.local
            .iter()
            .map(|l| {
                let (r, n, s) = l.rank();
                (r, n, s.to_owned())
            })
            .collect()
    };
    Some(
        a.epoch
            .cmp(&b.epoch)
            .then_with(|| a.release.cmp(&b.release))
            .then_with(|| pre_key(&a).cmp(&pre_key(&b)))
            .then_with(|| post(&a).cmp(&post(&b)))
            .then_with(|| dev(&a).cmp(&dev(&b)))
            .then_with(|| local(&a).cmp(&local(&b))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn pep440_order() {
        let ordered = [
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.0.15",
            "1.1.dev1",
            "1!0.5",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
        }
        for (a, b) in [
            ("1.0", "1.0.0"),
            ("1.0-1", "1.0.post1"),
            ("1.0.0RC1", "1.0rc1"),
            ("v2.0", "2.0"),
            ("1.0alpha", "1.0a0"),
            ("1.0-r2", "1.0.post2"),
            ("1.0c3", "1.0rc3"),
        ] {
            assert_eq!(compare(a, b), Some(Equal), "{a} == {b}");
        }
        assert!(!valid("1.0-foo"));
        assert!(!valid("not a version"));
    }
}
