//! Maven's version order (as `ComparableVersion` defines it): a version is a list of
//! items split at `.`, with `-` and each digit/letter transition opening a sublist;
//! numbers compare numerically, qualifiers by rank (`alpha` < `beta` < `milestone` <
//! `rc` = `cr` < `snapshot` < release (`ga`, `final`, `release`, empty) < `sp` <
//! anything else, lexically), trailing zeros and release qualifiers do not count
//! (`1.0.0` = `1`), a number beats a qualifier and a sublist.

use std::cmp::Ordering;

use super::dpkg::cmp_numeric;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Digits without leading zeros ("" is 0).
    Int(String),
    Str(String),
    List(Vec<Item>),
}

fn qualifier(s: &str) -> (u8, &str) {
    match s {
        "alpha" => (0, ""),
        "beta" => (1, ""),
        "milestone" => (2, ""),
        "rc" | "cr" => (3, ""),
        "snapshot" => (4, ""),
        "" | "ga" | "final" | "release" => (5, ""),
        "sp" => (6, ""),
        other => (7, other),
    }
}

impl Item {
    fn is_null(&self) -> bool {
        match self {
            Item::Int(s) => s.is_empty(),
            Item::Str(s) => qualifier(s).0 == 5,
            Item::List(l) => l.is_empty(),
        }
    }

    fn cmp_null(&self) -> Ordering {
        match self {
            Item::Int(s) => {
                if s.is_empty() {
                    Ordering::Equal
                } else {
                    Ordering::Greater
                }
            }
            Item::Str(s) => qualifier(s).cmp(&qualifier("")),
            // Item by item, as against an empty list: Maven looks at the first item only,
            // which makes `1-0.1` equal to `1` but above `1-sp`, and `1-sp` above `1`.
            Item::List(l) => cmp_lists(l, &[]),
        }
    }

    fn cmp(&self, other: Option<&Item>) -> Ordering {
        let Some(other) = other else {
            return self.cmp_null();
        };
        match (self, other) {
            (Item::Int(a), Item::Int(b)) => cmp_numeric(a.as_bytes(), b.as_bytes()),
            (Item::Int(_), _) => Ordering::Greater,
            (Item::Str(_), Item::Int(_)) => Ordering::Less,
            (Item::Str(a), Item::Str(b)) => qualifier(a).cmp(&qualifier(b)),
            (Item::Str(_), Item::List(_)) => Ordering::Less,
            (Item::List(_), Item::Int(_)) => Ordering::Less,
            (Item::List(_), Item::Str(_)) => Ordering::Greater,
            (Item::List(a), Item::List(b)) => cmp_lists(a, b),
        }
    }
}

fn cmp_lists(a: &[Item], b: &[Item]) -> Ordering {
    for i in 0..a.len().max(b.len()) {
        let o = match (a.get(i), b.get(i)) {
            (Some(x), y) => x.cmp(y),
            (None, Some(y)) => y.cmp(None).reverse(),
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn item(token: &str, followed_by_digit: bool) -> Item {
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return Item::Int(token.trim_start_matches('0').to_owned());
    }
    let t = match (token, followed_by_digit) {
        ("a", true) => "alpha",
        ("b", true) => "beta",
        ("m", true) => "milestone",
        (t, _) => t,
    };
    Item::Str(t.to_owned())
}

/// Drops trailing null items of a list (before a sublist too, as Maven does).
fn normalize(list: &mut Vec<Item>) {
    for l in list.iter_mut() {
        if let Item::List(inner) = l {
            normalize(inner);
        }
    }
    // From the end: null items go, non-null sublists are stepped over, anything else
    // stops (so `1.0-1` is `1-1`).
    let mut i = list.len();
    while i > 0 {
        i -= 1;
        if list[i].is_null() {
            list.remove(i);
        } else if !matches!(list[i], Item::List(_)) {
            break;
        }
    }
    // A list left holding only a sublist (`1-final-alpha`, `1--alpha`: the null before
    // it went) is that sublist: otherwise it would sort after `1-sp` (a list beats a
    // string) yet before `1` (its first item, `alpha`, is below release), and the order
    // would not be transitive. A sublist is always its parent's last item, so there is
    // nothing else in the list to lose.
    while let [Item::List(_)] = list.as_slice() {
        match list.pop() {
            Some(Item::List(inner)) => *list = inner,
            _ => break,
        }
    }
}

fn parse(v: &str) -> Option<Vec<Item>> {
    let v = v.trim().to_ascii_lowercase();
    // Versions starting with a qualifier order inconsistently in Maven itself
    // (`0.alpha` < `0` < `sp` < `0.alpha`); no artifact is versioned so.
    if v.len() > 256 || !v.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    // A stack of open lists; each new sublist is pushed, all closed at the end.
    let mut stack: Vec<Vec<Item>> = vec![Vec::new()];
    let bytes = v.as_bytes();
    let mut start = 0;
    let mut digit = false;
    let push_list = |stack: &mut Vec<Vec<Item>>| stack.push(Vec::new());
    let top = |stack: &mut Vec<Vec<Item>>, it: Item| {
        if let Some(l) = stack.last_mut() {
            l.push(it);
        }
    };
    for (i, &c) in bytes.iter().enumerate() {
        if c == b'.' || c == b'-' {
            if i == start {
                top(&mut stack, Item::Int(String::new()));
            } else {
                top(&mut stack, item(&v[start..i], false));
            }
            start = i + 1;
            if c == b'-' {
                push_list(&mut stack);
            }
        } else if c.is_ascii_digit() {
            if !digit && i > start {
                top(&mut stack, item(&v[start..i], true));
                start = i;
                push_list(&mut stack);
            }
            digit = true;
        } else {
            if !c.is_ascii_alphanumeric() && c != b'_' && c != b'+' {
                return None;
            }
            if digit && i > start {
                top(&mut stack, item(&v[start..i], false));
                start = i;
                push_list(&mut stack);
            }
            digit = false;
        }
    }
    if bytes.len() > start {
        top(&mut stack, item(&v[start..], false));
    }
    while stack.len() > 1 {
        let l = stack.pop().unwrap_or_default();
        top(&mut stack, Item::List(l));
    }
    let mut root = stack.pop().unwrap_or_default();
    normalize(&mut root);
    Some(root)
}

pub fn valid(v: &str) -> bool {
    parse(v).is_some()
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(cmp_lists(&parse(a)?, &parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn maven_order() {
        let ordered = [
            "1-alpha",
            "1-alpha2",
            "1-beta",
            "1-milestone",
            "1-rc",
            "1-snapshot",
            "1",
            "1-sp",
            "1-abc",
            "1-1",
            "1.1",
            "1.2",
            "1.10",
            "2.0.0-M1",
            "2.0.0",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
        }
        for (a, b) in [
            ("1.0.0", "1"),
            ("1.0-ga", "1"),
            ("1.0.Final", "1.0"),
            ("1-cr1", "1-rc1"),
            ("1a1", "1-alpha-1"),
            ("2.14.0", "2.14"),
            ("1.0-1", "1-1"),
            ("1-final-alpha", "1-alpha"),
            ("1.final-alpha", "1-alpha"),
            ("1--alpha", "1-alpha"),
        ] {
            assert_eq!(compare(a, b), Some(Equal), "{a} == {b}");
        }
        assert_eq!(compare("2.15.0", "2.14.1"), Some(Greater));
        assert_eq!(compare("2.17.1", "2.17.0"), Some(Greater));
        assert_eq!(compare("2.12.4", "2.13.0-rc1"), Some(Less));
        // Found by the property test: 1 < 01-sp, and 1-final-alpha (a pre-release of 1)
        // must then sort below both.
        assert_eq!(compare("1", "01-sp"), Some(Less));
        assert_eq!(compare("1-final-alpha", "1"), Some(Less));
        assert_eq!(compare("1-final-alpha", "01-sp"), Some(Less));
        assert_eq!(compare("01-0.1", "01"), Some(Greater));
        assert_eq!(compare("01-0.1", "01-sp"), Some(Greater));
    }
}
