//! Matching packages against advisories: advisories are indexed by (ecosystem, name),
//! so a package costs one hash lookup plus its few candidates, each judged in the
//! ecosystem's own version order. Debian and Alpine packages match through their source
//! package and source version, as those advisories name them; rpm packages by their own
//! name and `[epoch:]version-release`, as the rpm distributions' OSV feeds name them;
//! distribution packages only against advisories of their own release.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Scheme;
use crate::advisory::{Event, Record, Severity, Status, alpine_branch, debian_codename};
use crate::formats::{normalize_name, rpm_release};

/// A package as the catalog stores it.
#[derive(Debug, Clone, Copy)]
pub struct Package<'a> {
    pub purl: &'a str,
    pub ecosystem: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub source_name: Option<&'a str>,
    pub source_version: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// `fix-available`, `no-fix`, or Debian's `open`, `no-dsa`, `postponed`, `ignored`,
    /// `end-of-life`, `undetermined`.
    pub status: String,
    /// The first fixed version above the installed one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// The distribution release a package's purl names (`distro=debian-12` → `bookworm`,
/// `distro=alpine-3.19.1` → `v3.19`).
pub fn release_of(purl: &str) -> Option<String> {
    let q = purl.split_once('?')?.1;
    let d = q.split('&').find_map(|kv| kv.strip_prefix("distro="))?;
    let (os, ver) = d.split_once('-')?;
    match os {
        "debian" => debian_codename(ver).map(str::to_owned),
        "alpine" => alpine_branch(ver),
        "almalinux" | "rocky" | "rhel" => rpm_release(os, ver),
        _ => None,
    }
}

/// The (ecosystem, package) advisories name a catalog package by: Debian and Alpine
/// advisories name the source package; rpm ones (AlmaLinux, Rocky Linux, Red Hat) and
/// language ecosystems the package itself (PEP 503 for PyPI).
pub fn advisory_key(ecosystem: &str, name: &str, source_name: Option<&str>) -> (String, String) {
    let name = if by_source(ecosystem) {
        source_name.unwrap_or(name)
    } else {
        name
    };
    (ecosystem.to_owned(), normalize_name(ecosystem, name))
}

fn by_source(ecosystem: &str) -> bool {
    matches!(ecosystem, "deb" | "apk")
}

fn is_zero(e: &Event) -> bool {
    matches!(e, Event::Introduced(v) if v == "0")
}

/// Whether `version` lies in the range, and the first fix above it.
fn in_range(scheme: Scheme, version: &str, events: &[Event]) -> Option<(bool, Option<String>)> {
    let cmp = |a: &Event, b: &Event| -> Ordering {
        match (is_zero(a), is_zero(b)) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => scheme
                .compare(a.version(), b.version())
                .unwrap_or(Ordering::Equal),
        }
    };
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by(|a, b| cmp(a, b));
    let mut affected = false;
    let mut fix = None;
    for e in sorted {
        let at_or_above = is_zero(e) || scheme.compare(version, e.version())? != Ordering::Less;
        match e {
            Event::Introduced(_) if at_or_above => affected = true,
            Event::Fixed(_) if at_or_above => affected = false,
            Event::LastAffected(v)
                if at_or_above && scheme.compare(version, v)? != Ordering::Equal =>
            {
                affected = false
            }
            Event::Limit(_) if at_or_above => return Some((false, None)),
            Event::Fixed(v) if affected && fix.is_none() => fix = Some(v.clone()),
            _ => {}
        }
    }
    Some((affected, if affected { fix } else { None }))
}

/// Whether `version` is affected by `r`, and the fix to report.
fn affects(scheme: Scheme, version: &str, r: &Record) -> Option<Option<String>> {
    let mut hit = r
        .versions
        .iter()
        .any(|v| v == version || scheme.compare(v, version) == Some(Ordering::Equal));
    let mut fixed = None;
    for range in &r.ranges {
        if let Some((true, f)) = in_range(scheme, version, range) {
            hit = true;
            if fixed.is_none() {
                fixed = f;
            }
        }
    }
    hit.then_some(fixed)
}

pub struct Index {
    by_package: HashMap<(String, String), Vec<Record>>,
    records: usize,
}

impl Index {
    pub fn new(records: impl IntoIterator<Item = Record>) -> Index {
        let mut by_package: HashMap<(String, String), Vec<Record>> = HashMap::new();
        let mut n = 0;
        for r in records {
            n += 1;
            by_package
                .entry((r.ecosystem.clone(), r.package.clone()))
                .or_default()
                .push(r);
        }
        // Distribution feeds first: their record of a CVE is the one to keep.
        for v in by_package.values_mut() {
            v.sort_by(|a, b| {
                b.release
                    .is_some()
                    .cmp(&a.release.is_some())
                    .then(a.id.cmp(&b.id))
            });
        }
        Index {
            by_package,
            records: n,
        }
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Every advisory that affects `p`, one finding per vulnerability (an advisory whose
    /// id or alias was already reported is left out).
    pub fn matches(&self, p: &Package<'_>) -> Vec<Finding> {
        let Some(scheme) = Scheme::of(p.ecosystem) else {
            return Vec::new();
        };
        let version = if by_source(p.ecosystem) {
            p.source_version.unwrap_or(p.version)
        } else {
            p.version
        };
        if !scheme.valid(version) {
            return Vec::new();
        }
        let key = advisory_key(p.ecosystem, p.name, p.source_name);
        let Some(candidates) = self.by_package.get(&key) else {
            return Vec::new();
        };
        let distro = matches!(p.ecosystem, "deb" | "apk" | "rpm");
        let release = if distro { release_of(p.purl) } else { None };
        let mut out: Vec<Finding> = Vec::new();
        for r in candidates {
            if r.release.is_some() && r.release != release {
                continue;
            }
            let Some(fixed) = affects(scheme, version, r) else {
                continue;
            };
            let seen = out
                .iter()
                .any(|f| f.id == r.id || f.aliases.contains(&r.id) || r.aliases.contains(&f.id));
            if seen {
                continue;
            }
            let status = match r.status {
                Status::Affected if fixed.is_some() => "fix-available",
                Status::Affected => "no-fix",
                s => s.as_str(),
            };
            out.push(Finding {
                id: r.id.clone(),
                aliases: r.aliases.clone(),
                severity: r.severity,
                score: r.score,
                status: status.to_owned(),
                fixed,
                summary: r.summary.clone(),
            });
        }
        out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        out
    }
}
