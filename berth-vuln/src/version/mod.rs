//! Each ecosystem's own version order. `compare` is `None` when either version does not
//! parse in the scheme: an advisory range with such a bound is skipped at import, and a
//! package whose installed version does not parse is not matched (never guessed).

use std::cmp::Ordering;

mod apk;
mod dpkg;
mod maven;
mod pep440;
mod rpm;
mod semver;

pub use rpm::rpmvercmp;
pub use semver::go_normalize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Dpkg,
    Apk,
    Rpm,
    Pep440,
    Semver,
    Go,
    Maven,
    Gem,
}

impl Scheme {
    /// The scheme of a catalog ecosystem (`deb`, `apk`, `rpm`, `pypi`, `npm`, `cargo`,
    /// `golang`, `maven`, `gem`).
    pub fn of(ecosystem: &str) -> Option<Scheme> {
        Some(match ecosystem {
            "deb" => Scheme::Dpkg,
            "apk" => Scheme::Apk,
            "rpm" => Scheme::Rpm,
            "pypi" => Scheme::Pep440,
            "npm" | "cargo" => Scheme::Semver,
            "golang" => Scheme::Go,
            "maven" => Scheme::Maven,
            "gem" => Scheme::Gem,
            _ => return None,
        })
    }

    pub fn compare(self, a: &str, b: &str) -> Option<Ordering> {
        match self {
            Scheme::Dpkg => dpkg::compare(a, b),
            Scheme::Apk => apk::compare(a, b),
            Scheme::Rpm => rpm::compare(a, b),
            Scheme::Pep440 => pep440::compare(a, b),
            Scheme::Semver => semver::compare(a, b),
            Scheme::Go => semver::compare_go(a, b),
            Scheme::Maven => maven::compare(a, b),
            Scheme::Gem => gem_compare(a, b),
        }
    }

    pub fn valid(self, v: &str) -> bool {
        match self {
            Scheme::Dpkg => dpkg::valid(v),
            Scheme::Apk => apk::valid(v),
            Scheme::Rpm => rpm::valid(v),
            Scheme::Pep440 => pep440::valid(v),
            Scheme::Semver => semver::valid(v),
            Scheme::Go => semver::valid_go(v),
            Scheme::Maven => maven::valid(v),
            Scheme::Gem => gem_segments(v).is_some(),
        }
    }
}

/// RubyGems (`Gem::Version`): dot-separated segments, a letter starting a pre-release
/// segment (strings before numbers), trailing zeros ignored.
fn gem_segments(v: &str) -> Option<Vec<(bool, String)>> {
    let v = v.trim();
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || !v.as_bytes()[0].is_ascii_digit()
    {
        return None;
    }
    let v = v.replace('-', ".pre.");
    let mut out = Vec::new();
    for part in v.split('.') {
        let mut rest = part;
        while !rest.is_empty() {
            let digit = rest.as_bytes()[0].is_ascii_digit();
            let n = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() == digit)
                .count();
            let seg = &rest[..n];
            out.push((
                digit,
                if digit {
                    seg.trim_start_matches('0').to_owned()
                } else {
                    seg.to_owned()
                },
            ));
            rest = &rest[n..];
        }
    }
    while out.last().is_some_and(|(d, s)| *d && s.is_empty()) {
        out.pop();
    }
    Some(out)
}

fn gem_compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (gem_segments(a)?, gem_segments(b)?);
    for i in 0..a.len().max(b.len()) {
        let o = match (a.get(i), b.get(i)) {
            (Some((true, x)), Some((true, y))) => dpkg::cmp_numeric(x.as_bytes(), y.as_bytes()),
            (Some((false, x)), Some((false, y))) => x.cmp(y),
            (Some((true, _)), Some((false, _))) => Ordering::Greater,
            (Some((false, _)), Some((true, _))) => Ordering::Less,
            (Some((d, s)), None) => match d {
                true if s.is_empty() => Ordering::Equal,
                true => Ordering::Greater,
                false => Ordering::Less,
            },
            (None, Some((d, s))) => match d {
                true if s.is_empty() => Ordering::Equal,
                true => Ordering::Less,
                false => Ordering::Greater,
            },
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return Some(o);
        }
    }
    Some(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;
    use proptest::prelude::*;

    #[test]
    fn gem_order() {
        for (a, b, o) in [
            ("1.0.a", "1.0", Less),
            ("1.0.0", "1", Equal),
            ("1.10", "1.9", Greater),
            ("1.0.0-rc1", "1.0.0", Less),
            ("7.0.8.1", "7.0.8", Greater),
        ] {
            assert_eq!(gem_compare(a, b), Some(o), "{a} vs {b}");
        }
    }

    fn pick(items: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(items).prop_map(str::to_owned)
    }

    /// Versions of each scheme from small alphabets, so equal and near-equal versions are
    /// frequent (where order bugs hide).
    fn version(scheme: Scheme) -> BoxedStrategy<String> {
        let num = || pick(&["0", "1", "2", "10", "01", "9"]);
        match scheme {
            Scheme::Dpkg => (
                pick(&["", "1:", "0:", "2:"]),
                num(),
                prop::collection::vec(
                    (pick(&[".", "~", "+", "", "~rc", "a", "b", ".dfsg"]), num()),
                    0..3,
                ),
                pick(&["", "-1", "-1+deb12u1", "-0", "-1~bpo1", "-2"]),
            )
                .prop_map(|(e, n, rest, rev)| {
                    let mut s = format!("{e}{n}");
                    for (sep, m) in rest {
                        s.push_str(&sep);
                        s.push_str(&m);
                    }
                    s + &rev
                })
                .boxed(),
            Scheme::Apk => (
                prop::collection::vec(num(), 1..4),
                pick(&["", "a", "b"]),
                pick(&["", "_rc1", "_alpha", "_p2", "_git1", "_pre0"]),
                pick(&["", "-r0", "-r1", "-r10"]),
            )
                .prop_map(|(n, l, s, r)| format!("{}{l}{s}{r}", n.join(".")))
                .boxed(),
            Scheme::Rpm => (
                pick(&["", "1:"]),
                prop::collection::vec(
                    (num(), pick(&[".", "", "~rc", "^git", "a", "_", "p"])),
                    1..4,
                ),
                pick(&["", "-1.el9", "-2.el9", "-1.el9_2", "-10.fc39"]),
            )
                .prop_map(|(e, parts, rel)| {
                    let mut s = e;
                    for (n, sep) in parts {
                        s.push_str(&n);
                        s.push_str(&sep);
                    }
                    s.trim_end_matches(['.', '_']).to_owned() + &rel
                })
                .boxed(),
            Scheme::Pep440 => (
                pick(&["", "1!"]),
                prop::collection::vec(num(), 1..4),
                pick(&["", "a1", "b2", "rc1", "a0"]),
                pick(&["", ".post1", ".post0"]),
                pick(&["", ".dev0", ".dev3"]),
                pick(&["", "+local.1", "+abc", "+1"]),
            )
                .prop_map(|(e, r, pre, post, dev, l)| {
                    format!("{e}{}{pre}{post}{dev}{l}", r.join("."))
                })
                .boxed(),
            Scheme::Semver | Scheme::Go => (
                pick(&["0", "1", "2", "10"]),
                pick(&["0", "1", "10"]),
                pick(&["0", "1", "3"]),
                pick(&[
                    "",
                    "-alpha",
                    "-alpha.1",
                    "-beta.2",
                    "-0.20191109021931-daa7c04131f5",
                    "-0.20201109021931-aaa7c04131f5",
                    "-rc.1",
                    "-1",
                ]),
                pick(&["", "+build", "+incompatible"]),
            )
                .prop_map(|(a, b, c, p, m)| format!("v{a}.{b}.{c}{p}{m}"))
                .boxed(),
            // Maven's own order is not transitive when a qualifier follows a `.`
            // (`1-alpha` < `1` < `1.sp` < `1-alpha`, in Maven too); generated versions put
            // qualifiers after `-` or a digit, as published artifacts do.
            Scheme::Maven => (
                num(),
                prop::collection::vec(
                    prop_oneof![
                        (pick(&[".", "-"]), pick(&["0", "1", "2", "10"])),
                        (
                            pick(&["-", ""]),
                            pick(&["alpha", "rc", "sp", "final", "x", "beta2"])
                        ),
                    ],
                    0..4,
                ),
            )
                .prop_map(|(first, parts)| {
                    let mut s = first;
                    for (sep, p) in parts {
                        s.push_str(&sep);
                        s.push_str(&p);
                    }
                    s
                })
                .boxed(),
            Scheme::Gem => (
                prop::collection::vec(num(), 1..4),
                pick(&["", ".a", ".pre.1", ".rc1", "-beta"]),
            )
                .prop_map(|(n, s)| format!("{}{s}", n.join(".")))
                .boxed(),
        }
    }

    const SCHEMES: [Scheme; 8] = [
        Scheme::Dpkg,
        Scheme::Apk,
        Scheme::Rpm,
        Scheme::Pep440,
        Scheme::Semver,
        Scheme::Go,
        Scheme::Maven,
        Scheme::Gem,
    ];

    fn triple() -> impl Strategy<Value = (Scheme, String, String, String)> {
        proptest::sample::select(&SCHEMES[..])
            .prop_flat_map(|s| (Just(s), version(s), version(s), version(s)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn total_order((s, a, b, c) in triple()) {
            let ab = s.compare(&a, &b).unwrap_or_else(|| panic!("{s:?} {a} {b}"));
            let ba = s.compare(&b, &a).unwrap_or_else(|| panic!("{s:?} {b} {a}"));
            prop_assert_eq!(ab, ba.reverse(), "antisymmetry {:?} {} {}", s, a, b);
            prop_assert_eq!(s.compare(&a, &a), Some(Equal));
            let bc = s.compare(&b, &c).unwrap_or_else(|| panic!("{s:?} {b} {c}"));
            let ac = s.compare(&a, &c).unwrap_or_else(|| panic!("{s:?} {a} {c}"));
            if ab != Greater && bc != Greater {
                prop_assert!(ac != Greater, "transitivity {:?}: {} <= {} <= {} but {:?}", s, a, b, c, ac);
            }
            if ab == Equal && bc == Equal {
                prop_assert_eq!(ac, Equal);
            }
        }

        #[test]
        fn never_panics(s in proptest::sample::select(&SCHEMES[..]), a in ".{0,24}", b in ".{0,24}") {
            let _ = s.compare(&a, &b);
            let _ = s.valid(&a);
        }
    }
}
