//! Semantic versions as they appear in tags: `1.4.2`, `v1.4.2`, `1.4.2-rc.1`.
//!
//! Semver 2.0.0 precedence, with a leading `v` accepted. Tags cannot hold `+`, so build
//! metadata never occurs. Parsing is strict (no leading zeros, exactly three numbers), so
//! `1.4` or `2024.01.02` are not versions: a tag rule keyed on "semver" must not catch
//! date tags by accident.

use std::cmp::Ordering;

/// A parsed version. Two tags may parse to the same version (`1.4.2` and `v1.4.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Pre-release identifiers; empty for a release.
    pub pre: Vec<PreId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreId {
    Numeric(u64),
    Alpha(String),
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

fn strip_v(s: &str) -> &str {
    s.strip_prefix('v').unwrap_or(s)
}

impl Version {
    /// Parses a tag as a version, or `None` if it is not one.
    pub fn parse(tag: &str) -> Option<Version> {
        let s = strip_v(tag);
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (s, None),
        };
        let mut parts = core.split('.');
        let major = number(parts.next()?)?;
        let minor = number(parts.next()?)?;
        let patch = number(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(p) => p
                .split('.')
                .map(|id| {
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        None
                    } else if id.bytes().all(|b| b.is_ascii_digit()) {
                        number(id).map(PreId::Numeric)
                    } else {
                        Some(PreId::Alpha(id.to_owned()))
                    }
                })
                .collect::<Option<Vec<_>>>()?,
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl Ord for PreId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PreId::Numeric(a), PreId::Numeric(b)) => a.cmp(b),
            (PreId::Numeric(_), PreId::Alpha(_)) => Ordering::Less,
            (PreId::Alpha(_), PreId::Numeric(_)) => Ordering::Greater,
            (PreId::Alpha(a), PreId::Alpha(b)) => a.as_bytes().cmp(b.as_bytes()),
        }
    }
}

impl PartialOrd for PreId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                // A release ranks above its pre-releases.
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                // Vec's order is semver's: identifier by identifier, then the longer wins.
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A version prefix to resolve: `1`, `1.4`, `1.4.2`, each with an optional leading `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionPrefix {
    pub major: u64,
    pub minor: Option<u64>,
    pub patch: Option<u64>,
}

impl VersionPrefix {
    pub fn parse(s: &str) -> Option<VersionPrefix> {
        let mut parts = strip_v(s).split('.');
        let major = number(parts.next()?)?;
        // A part that is present must be a number: `1.` or `1.x` are not prefixes.
        let minor = match parts.next() {
            Some(m) => Some(number(m)?),
            None => None,
        };
        let patch = match parts.next() {
            Some(p) => Some(number(p)?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(VersionPrefix {
            major,
            minor,
            patch,
        })
    }

    pub fn matches(&self, v: &Version) -> bool {
        v.major == self.major
            && self.minor.is_none_or(|m| v.minor == m)
            && self.patch.is_none_or(|p| v.patch == p)
    }
}

/// A key whose byte order is semver precedence, for the metadata store to index: the
/// three numbers as 20 digits each, then `~` for a release (above any pre-release) or `-`
/// and the pre-release identifiers, numeric ones as `0` and 20 digits (below alphanumeric
/// ones, `1` and the text), separated by `\u{1}`, which sorts below every identifier byte,
/// so a shorter list of equal identifiers sorts first. Empty for a tag that is no version.
/// Equal versions (`1.4.2`, `v1.4.2`) get equal keys; the index breaks ties by name.
pub fn version_key(tag: &str) -> String {
    let Some(v) = Version::parse(tag) else {
        return String::new();
    };
    let mut k = format!("{:020}.{:020}.{:020}", v.major, v.minor, v.patch);
    if v.pre.is_empty() {
        k.push('~');
        return k;
    }
    k.push('-');
    for (i, id) in v.pre.iter().enumerate() {
        if i > 0 {
            k.push('\u{1}');
        }
        match id {
            PreId::Numeric(n) => {
                k.push('0');
                k.push_str(&format!("{n:020}"));
            }
            PreId::Alpha(a) => {
                k.push('1');
                k.push_str(a);
            }
        }
    }
    k
}

/// Sorts tags into ascending version order, dropping tags that are not versions. Tags of
/// equal version (`1.4.2`, `v1.4.2`) keep the one tag order among themselves.
pub fn sort_versions<T>(tags: impl IntoIterator<Item = T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    let mut v: Vec<(Version, String, T)> = tags
        .into_iter()
        .filter_map(|t| {
            let n = name(&t);
            let v = Version::parse(n)?;
            let key = crate::tag_sort_key(n);
            Some((v, key, t))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    v.into_iter().map(|(_, _, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version_tag() -> impl Strategy<Value = String> {
        let num = prop_oneof![0u64..4, Just(u64::MAX), any::<u64>()];
        let id = prop_oneof![
            (0u64..12).prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            "[0-9A-Za-z-]{0,3}[A-Za-z-][0-9A-Za-z-]{0,3}",
        ];
        (
            any::<bool>(),
            num.clone(),
            num.clone(),
            num,
            proptest::collection::vec(id, 0..4),
        )
            .prop_map(|(v, a, b, c, pre)| {
                let mut t = format!("{}{a}.{b}.{c}", if v { "v" } else { "" });
                if !pre.is_empty() {
                    t.push('-');
                    t.push_str(&pre.join("."));
                }
                t
            })
    }

    proptest! {
        #[test]
        fn version_keys_order_as_semver(a in version_tag(), b in version_tag()) {
            let (va, vb) = (Version::parse(&a), Version::parse(&b));
            prop_assume!(va.is_some() && vb.is_some());
            let (va, vb) = (va.expect("parsed"), vb.expect("parsed"));
            prop_assert_eq!(
                version_key(&a).as_bytes().cmp(version_key(&b).as_bytes()),
                va.cmp(&vb),
                "{} vs {}", a, b
            );
        }
    }

    #[test]
    fn version_keys_of_known_orders() {
        let ordered = [
            "1.0.0-1",
            "1.0.0-2",
            "1.0.0-10",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-alpha-x",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.2.0",
            "1.10.0",
            "2.0.0",
        ];
        for w in ordered.windows(2) {
            assert!(version_key(w[0]) < version_key(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(version_key("v1.4.2"), version_key("1.4.2"));
        assert_eq!(version_key("latest"), "");
        assert_eq!(version_key("1.4"), "");
    }

    #[test]
    fn parses_tags() {
        assert!(Version::parse("1.4.2").is_some());
        assert!(Version::parse("v1.4.2").is_some());
        assert!(Version::parse("1.4.2-rc.1").is_some_and(|v| v.is_prerelease()));
        assert!(Version::parse("0.0.0").is_some());
        for bad in [
            "1.4",
            "1",
            "latest",
            "v",
            "1.4.2.1",
            "01.4.2",
            "1.04.2",
            "1.4.2-",
            "1.4.2-rc..1",
            "1.4.2-01",
            "V1.4.2",
            "vv1.4.2",
            "1.4.x",
            "",
            "2024.01.02",
            "1.4.2_1",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn precedence_is_semvers() {
        // The example from semver.org, item 11.
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "2.0.0",
            "2.1.0",
            "2.1.1",
            "2.10.0",
        ];
        let parsed: Vec<Version> = order.iter().filter_map(|t| Version::parse(t)).collect();
        assert_eq!(parsed.len(), order.len());
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{parsed:?}");
        let mut shuffled: Vec<&str> = order.iter().rev().copied().collect();
        shuffled.extend(["latest", "main"]);
        assert_eq!(sort_versions(shuffled, |t| t), order);
        assert_eq!(
            sort_versions(["v1.0.0", "1.0.0", "0.9.9"], |t| t),
            ["0.9.9", "1.0.0", "v1.0.0"]
        );
    }

    #[test]
    fn prefixes() {
        let p = VersionPrefix::parse("1.4").expect("prefix");
        assert!(p.matches(&Version::parse("1.4.9").expect("v")));
        assert!(!p.matches(&Version::parse("1.5.0").expect("v")));
        assert!(!p.matches(&Version::parse("11.4.0").expect("v")));
        assert_eq!(
            VersionPrefix::parse("v2"),
            Some(VersionPrefix {
                major: 2,
                minor: None,
                patch: None
            })
        );
        assert!(VersionPrefix::parse("1.4.2").is_some());
        for bad in ["", "x", "1.", "1.4.", "1.4.2.0", "1.x", "01"] {
            assert_eq!(VersionPrefix::parse(bad), None, "{bad}");
        }
    }
}
