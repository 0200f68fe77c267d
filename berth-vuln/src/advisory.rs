//! Advisories as Berth keeps them: one `Record` per advisory and affected package (and
//! distribution release), whatever the format it came in, with its version ranges in the
//! ecosystem's own order, its status and its severity.

use serde::{Deserialize, Serialize};

use crate::Scheme;

/// Ordered from least to most severe; `Unknown` sorts lowest, and rules say what to do
/// with it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Unknown,
    Negligible,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Negligible => "negligible",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Database-specific words (GitHub's `MODERATE`, Debian's urgencies, ...).
    pub fn parse(s: &str) -> Option<Severity> {
        Some(
            match s.trim().trim_end_matches('*').to_ascii_lowercase().as_str() {
                "unknown" | "not yet assigned" => Severity::Unknown,
                "negligible" | "unimportant" | "none" => Severity::Negligible,
                "low" => Severity::Low,
                "medium" | "moderate" => Severity::Medium,
                "high" | "important" => Severity::High,
                "critical" => Severity::Critical,
                _ => return None,
            },
        )
    }
}

/// One event of an OSV range, in the ecosystem's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// `0` means every version.
    Introduced(String),
    Fixed(String),
    LastAffected(String),
    Limit(String),
}

impl Event {
    pub fn version(&self) -> &str {
        match self {
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => v,
        }
    }
}

/// What the advisory's source says of the package in its release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Affected in the ranges; a fix exists where a range has `fixed`.
    #[default]
    Affected,
    /// Debian: open, no fix in the release yet.
    Open,
    /// Debian: fixed later through a point release or not at all (`no-dsa`).
    NoDsa,
    Postponed,
    Ignored,
    /// Debian: the release no longer gets security support for the package.
    EndOfLife,
    /// Debian: not yet triaged.
    Undetermined,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Affected => "affected",
            Status::Open => "open",
            Status::NoDsa => "no-dsa",
            Status::Postponed => "postponed",
            Status::Ignored => "ignored",
            Status::EndOfLife => "end-of-life",
            Status::Undetermined => "undetermined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The catalog's ecosystem: `deb`, `apk`, `rpm`, `pypi`, `npm`, `cargo`, `golang`,
    /// `maven`, `gem`.
    pub ecosystem: String,
    /// Normalized as the catalog's names are matched (PEP 503 for PyPI); the source
    /// package for Debian and Alpine; the binary package for rpm.
    pub package: String,
    /// A distribution release (`bookworm`, `v3.19`, `almalinux:9`, `rocky:9`, `rhel:9`);
    /// `None` for language ecosystems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Each range's events; a version is affected if any range says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Vec<Event>>,
    /// Versions listed as affected one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// When the source last changed it (RFC 3339 as the source wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
}

impl Record {
    /// Checks every version against the ecosystem's scheme: a record with a version that
    /// does not parse would match wrongly, so it is refused whole.
    pub fn check(&self) -> Result<(), String> {
        let scheme = Scheme::of(&self.ecosystem)
            .ok_or_else(|| format!("unsupported ecosystem {}", self.ecosystem))?;
        if self.package.is_empty() {
            return Err("no package name".into());
        }
        for r in &self.ranges {
            if r.is_empty() {
                return Err("empty range".into());
            }
            for e in r {
                let v = e.version();
                if matches!(e, Event::Introduced(_)) && v == "0" {
                    continue;
                }
                if !scheme.valid(v) {
                    return Err(format!(
                        "version {v:?} does not parse in {}",
                        self.ecosystem
                    ));
                }
            }
        }
        if self.ranges.is_empty() && self.versions.is_empty() && self.status == Status::Affected {
            return Err("no affected range or version".into());
        }
        Ok(())
    }
}

/// The release names Debian's tracker uses, from the `VERSION_ID` os-release gives.
pub fn debian_codename(version_id: &str) -> Option<&'static str> {
    Some(match version_id.split('.').next()? {
        "8" => "jessie",
        "9" => "stretch",
        "10" => "buster",
        "11" => "bullseye",
        "12" => "bookworm",
        "13" => "trixie",
        "14" => "forky",
        "15" => "duke",
        _ => return None,
    })
}

/// Alpine's secdb branch (`v3.19`) from `VERSION_ID` (`3.19.1`); `edge` for snapshots.
pub fn alpine_branch(version_id: &str) -> Option<String> {
    let mut it = version_id.split('.');
    let (major, minor) = (it.next()?, it.next()?);
    if major.bytes().all(|b| b.is_ascii_digit()) && minor.bytes().all(|b| b.is_ascii_digit()) {
        if it.next().is_some_and(|p| p.contains('_')) {
            return Some("edge".into());
        }
        return Some(format!("v{major}.{minor}"));
    }
    None
}
