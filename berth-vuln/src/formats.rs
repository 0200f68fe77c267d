//! The offline dumps Berth reads: OSV JSON (one advisory, a list, or an ecosystem's
//! `all.zip`), the Debian security tracker's JSON (`/tracker/data/json`) and Alpine's
//! secdb (`<branch>/<repo>.json`). Each input becomes a `Feed`: its records, the ids it
//! withdraws, and what was skipped and why. A bad record never stops the rest.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::advisory::{Event, Record, Severity, Status, alpine_branch, debian_codename};
use crate::cvss;

/// Largest input read (the Debian tracker's dump is about 70 MiB today).
pub const MAX_FILE: u64 = 512 << 20;
/// Largest member of an OSV zip read (one advisory).
pub const MAX_MEMBER: u64 = 16 << 20;
/// Most records kept from one input.
pub const MAX_RECORDS: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    /// The record (an id, a package, a zip member) or the input.
    pub what: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feed {
    /// `osv`, `osv:PyPI`, `debian-tracker`, `alpine:v3.19/main`, ...
    pub name: String,
    pub format: &'static str,
    /// A complete dump replaces everything its feed held before; an incomplete one (OSV
    /// files) adds and replaces by id.
    pub complete: bool,
    pub records: Vec<Record>,
    pub withdrawn: Vec<String>,
    pub skipped: Vec<Skip>,
}

impl Feed {
    fn new(name: impl Into<String>, format: &'static str, complete: bool) -> Feed {
        Feed {
            name: name.into(),
            format,
            complete,
            records: Vec::new(),
            withdrawn: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn skip(&mut self, what: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(Skip {
            what: what.into(),
            reason: reason.into(),
        });
    }

    fn push(&mut self, r: Record) {
        if self.records.len() >= MAX_RECORDS {
            self.skip(&r.id, "too many records in one input");
            return;
        }
        match r.check() {
            Ok(()) => self.records.push(r),
            Err(why) => self.skip(format!("{} ({} {})", r.id, r.ecosystem, r.package), why),
        }
    }
}

/// Reads one input, telling the format from its content. `name` (the file name) only
/// labels what is skipped.
pub fn parse(name: &str, data: &[u8]) -> Feed {
    if data.len() as u64 > MAX_FILE {
        let mut f = Feed::new(format!("file:{name}"), "unknown", false);
        f.skip(name, format!("larger than {MAX_FILE} bytes"));
        return f;
    }
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        return osv_zip(name, data);
    }
    let head: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .take(1)
        .collect();
    if head.first() == Some(&b'[') {
        let mut feed = Feed::new("osv", "osv", false);
        match serde_json::from_slice::<Vec<Box<RawValue>>>(data) {
            Ok(list) => {
                for (i, raw) in list.iter().enumerate() {
                    osv_one(&mut feed, &format!("{name}[{i}]"), raw.get());
                }
            }
            Err(e) => feed.skip(name, format!("bad JSON: {e}")),
        }
        return feed;
    }
    let top: BTreeMap<String, Box<RawValue>> = match serde_json::from_slice(data) {
        Ok(t) => t,
        Err(e) => {
            let mut f = Feed::new(format!("file:{name}"), "unknown", false);
            f.skip(name, format!("bad JSON: {e}"));
            return f;
        }
    };
    if top.contains_key("packages") && top.contains_key("distroversion") {
        return alpine(name, &top);
    }
    if top.contains_key("id") && (top.contains_key("affected") || top.contains_key("withdrawn")) {
        let mut feed = Feed::new("osv", "osv", false);
        match std::str::from_utf8(data) {
            Ok(s) => osv_one(&mut feed, name, s),
            Err(_) => feed.skip(name, "not UTF-8"),
        }
        return feed;
    }
    debian_tracker(name, top)
}

// ---- OSV ----

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Osv {
    id: String,
    #[serde(default)]
    modified: Option<String>,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    /// The CVEs an rpm erratum fixes: AlmaLinux and Red Hat name them in `related`,
    /// Rocky in `upstream`.
    #[serde(default)]
    related: Vec<String>,
    #[serde(default)]
    upstream: Vec<String>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    details: String,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

/// An erratum is an alias of the CVEs it fixes, so an allowlist entry naming the CVE
/// covers the erratum's finding. Only for rpm feeds: elsewhere (Debian's OSV records)
/// `upstream` names advisories the record merely derives from, and must not widen it.
fn record_aliases(o: &Osv, eco: &str) -> Vec<String> {
    let mut aliases = o.aliases.clone();
    if eco == "rpm" {
        for id in o.related.iter().chain(&o.upstream) {
            if id != &o.id && !aliases.contains(id) {
                aliases.push(id.clone());
            }
        }
    }
    aliases
}

/// OSV's ecosystem name to the catalog's, with the release for distributions.
fn osv_ecosystem(e: &str) -> Option<(&'static str, Option<String>)> {
    let (base, release) = match e.split_once(':') {
        Some((b, r)) => (b, Some(r)),
        None => (e, None),
    };
    Some(match base {
        "Debian" => (
            "deb",
            match release {
                Some(r) => Some(debian_codename(r).map(str::to_owned)?),
                None => None,
            },
        ),
        "Alpine" => ("apk", release.map(str::to_owned)),
        // The rpm distributions' OSV feeds list binary packages (each erratum names every
        // rpm it ships), versioned `[epoch:]version-release`, per major release.
        "AlmaLinux" => ("rpm", Some(rpm_release("almalinux", release?)?)),
        "Rocky Linux" => ("rpm", Some(rpm_release("rocky", release?)?)),
        // `Red Hat:enterprise_linux:9::baseos` (and appstream, crb, ...): the repository
        // does not matter to an installed package. Other products (EUS, E4S, AUS,
        // software collections) ship their own builds an image of the base stream does
        // not get, so they are not matched.
        "Red Hat" => {
            let (product, rest) = release?.split_once(':')?;
            if product != "enterprise_linux" {
                return None;
            }
            let version = rest.split(':').next()?;
            ("rpm", Some(rpm_release("rhel", version)?))
        }
        "PyPI" => ("pypi", None),
        "npm" => ("npm", None),
        "crates.io" => ("cargo", None),
        "Go" => ("golang", None),
        "Maven" => ("maven", None),
        "RubyGems" => ("gem", None),
        _ => return None,
    })
}

/// `almalinux:9` from `9` or `9.4`: rpm advisories are per major release, and the
/// catalog's purl says `distro=almalinux-9.4` (see `matching::release_of`).
pub(crate) fn rpm_release(distro: &str, version: &str) -> Option<String> {
    let major = version.split('.').next()?;
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{distro}:{major}"))
}

pub(crate) fn normalize_name(ecosystem: &str, name: &str) -> String {
    match ecosystem {
        "pypi" => berth_catalog::purl::pep503(name),
        _ => name.to_owned(),
    }
}

fn severity_word(v: &Option<serde_json::Value>) -> Option<Severity> {
    let v = v.as_ref()?;
    ["severity", "urgency"]
        .iter()
        .find_map(|k| v.get(k)?.as_str().and_then(Severity::parse))
}

/// The score of `severity` entries: the highest computable CVSS v4.0 score when there is
/// one, else the highest v3.x. v4.0 first because a source that scores in both wrote the
/// v4.0 vector later, with the finer metrics (attack requirements, subsequent systems),
/// and that is the one it shows first.
fn best_score(sev: &[OsvSeverity]) -> Option<f64> {
    let highest = |kind: &str, score: fn(&str) -> Option<f64>| {
        sev.iter()
            .filter(|s| s.kind == kind)
            .filter_map(|s| score(&s.score))
            .fold(None, |m, s| Some(m.map_or(s, |m: f64| m.max(s))))
    };
    highest("CVSS_V4", cvss::v4_base_score).or_else(|| highest("CVSS_V3", cvss::v3_base_score))
}

fn osv_one(feed: &mut Feed, what: &str, json: &str) {
    let o: Osv = match serde_json::from_str(json) {
        Ok(o) => o,
        Err(e) => {
            feed.skip(what, format!("not an OSV record: {e}"));
            return;
        }
    };
    if o.withdrawn.is_some() {
        feed.withdrawn.push(o.id);
        return;
    }
    let summary = if o.summary.is_empty() {
        o.details.chars().take(200).collect()
    } else {
        o.summary.clone()
    };
    let first = feed.records.len();
    for a in &o.affected {
        let Some(pkg) = &a.package else {
            continue;
        };
        let Some((eco, release)) = osv_ecosystem(&pkg.ecosystem) else {
            feed.skip(
                format!("{} ({})", o.id, pkg.ecosystem),
                format!("unsupported ecosystem {}", pkg.ecosystem),
            );
            continue;
        };
        let mut ranges = Vec::new();
        let mut bad = None;
        for r in &a.ranges {
            match r.kind.as_str() {
                "ECOSYSTEM" | "SEMVER" => {}
                // Commit ranges need the repository; the ecosystem ranges beside them
                // say the same in versions.
                "GIT" => continue,
                other => {
                    bad = Some(format!("unknown range type {other:?}"));
                    break;
                }
            }
            let mut events = Vec::new();
            for e in &r.events {
                for (k, v) in e {
                    let v = if r.kind == "SEMVER" && v != "0" {
                        v.trim_start_matches('v').to_owned()
                    } else {
                        v.clone()
                    };
                    events.push(match k.as_str() {
                        "introduced" => Event::Introduced(v),
                        "fixed" => Event::Fixed(v),
                        "last_affected" => Event::LastAffected(v),
                        "limit" => Event::Limit(v),
                        other => {
                            bad = Some(format!("unknown range event {other:?}"));
                            continue;
                        }
                    });
                }
            }
            if !events.is_empty() {
                ranges.push(events);
            }
        }
        if let Some(why) = bad {
            feed.skip(format!("{} ({} {})", o.id, eco, pkg.name), why);
            continue;
        }
        if ranges.is_empty() && a.versions.is_empty() {
            if !a.ranges.is_empty() {
                feed.skip(
                    format!("{} ({} {})", o.id, eco, pkg.name),
                    "only commit (GIT) ranges",
                );
            }
            continue;
        }
        // RustSec keeps its vector in `database_specific.cvss`.
        let db_vector = o
            .database_specific
            .as_ref()
            .and_then(|d| d.get("cvss")?.as_str())
            .and_then(cvss::base_score);
        let score = best_score(&a.severity)
            .or_else(|| best_score(&o.severity))
            .or(db_vector);
        let severity = score
            .map(cvss::rating)
            .or_else(|| severity_word(&a.ecosystem_specific))
            .or_else(|| severity_word(&a.database_specific))
            .or_else(|| severity_word(&o.database_specific))
            .unwrap_or_default();
        let package = normalize_name(eco, &pkg.name);
        // One package in two entries of a record (Red Hat's baseos and appstream become
        // one release): one record, with both entries' ranges.
        if let Some(r) = feed.records[first..].iter_mut().find(|r| {
            r.id == o.id && r.ecosystem == eco && r.package == package && r.release == release
        }) {
            r.ranges.extend(ranges);
            r.versions.extend(a.versions.iter().cloned());
            continue;
        }
        feed.push(Record {
            id: o.id.clone(),
            aliases: record_aliases(&o, eco),
            ecosystem: eco.to_owned(),
            package,
            release,
            ranges,
            versions: a.versions.clone(),
            status: Status::Affected,
            severity,
            score,
            summary: summary.clone(),
            modified: o.modified.clone(),
        });
    }
}

fn osv_zip(name: &str, data: &[u8]) -> Feed {
    let mut feed = Feed::new("osv", "osv", true);
    let entries = match berth_catalog::zip::entries(data) {
        Ok(e) => e,
        Err(e) => {
            feed.complete = false;
            feed.skip(name, format!("bad zip: {e}"));
            return feed;
        }
    };
    for e in &entries {
        if !e.name.ends_with(".json") {
            continue;
        }
        let what = format!("{name}:{}", e.name);
        match berth_catalog::zip::read(data, e, MAX_MEMBER) {
            Ok(Some(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(s) => osv_one(&mut feed, &what, s),
                Err(_) => feed.skip(what, "not UTF-8"),
            },
            Ok(None) => feed.skip(what, "member too large or not stored/deflated"),
            Err(err) => feed.skip(what, err),
        }
    }
    // An ecosystem's dump is one feed, whatever the file is called, so importing the next
    // day's `all.zip` replaces it (and what it no longer lists goes).
    let mut ecos: Vec<String> = feed
        .records
        .iter()
        .map(|r| {
            format!(
                "{}{}",
                r.ecosystem,
                r.release
                    .as_deref()
                    .map(|x| format!(":{x}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    ecos.sort();
    ecos.dedup();
    feed.name = match ecos.as_slice() {
        [one] => format!("osv:{one}"),
        [] => format!("osv:{name}"),
        _ => {
            // Each rpm distribution's dump is its own feed (AlmaLinux's and Rocky Linux's
            // both hold releases 8 and 9; importing one must not replace the other).
            let mut bases: Vec<String> = feed
                .records
                .iter()
                .map(|r| match (r.ecosystem.as_str(), &r.release) {
                    ("rpm", Some(rel)) => {
                        format!("rpm:{}", rel.split(':').next().unwrap_or_default())
                    }
                    (e, _) => e.to_owned(),
                })
                .collect();
            bases.sort();
            bases.dedup();
            match bases.as_slice() {
                [one] => format!("osv:{one}"),
                _ => format!("osv:{name}"),
            }
        }
    };
    feed
}

// ---- Debian security tracker ----

#[derive(Deserialize)]
struct TrackerRelease {
    status: String,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    urgency: Option<String>,
    #[serde(default)]
    nodsa: Option<String>,
    #[serde(default)]
    nodsa_reason: Option<String>,
}

#[derive(Deserialize)]
struct TrackerCve {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    releases: HashMap<String, TrackerRelease>,
}

fn debian_tracker(name: &str, top: BTreeMap<String, Box<RawValue>>) -> Feed {
    let mut feed = Feed::new("debian-tracker", "debian-tracker", true);
    for (source, raw) in top {
        let cves: BTreeMap<String, Box<RawValue>> = match serde_json::from_str(raw.get()) {
            Ok(c) => c,
            Err(e) => {
                feed.skip(
                    format!("{name}: {source}"),
                    format!("not a tracker package: {e}"),
                );
                continue;
            }
        };
        for (id, raw) in cves {
            let cve: TrackerCve = match serde_json::from_str(raw.get()) {
                Ok(c) => c,
                Err(e) => {
                    feed.skip(
                        format!("{id} ({source})"),
                        format!("not a tracker entry: {e}"),
                    );
                    continue;
                }
            };
            for (release, r) in &cve.releases {
                let urgency = r.urgency.as_deref().unwrap_or("");
                let fixed = r.fixed_version.as_deref().filter(|v| !v.is_empty());
                // Resolved with version 0: the release never had the vulnerable code.
                if r.status == "resolved" && fixed == Some("0") {
                    continue;
                }
                let status = match r.status.as_str() {
                    "resolved" if fixed.is_some() => Status::Affected,
                    "resolved" => continue,
                    "open" => {
                        if urgency == "end-of-life" {
                            Status::EndOfLife
                        } else {
                            match (r.nodsa.is_some(), r.nodsa_reason.as_deref()) {
                                (_, Some("postponed")) => Status::Postponed,
                                (_, Some("ignored")) => Status::Ignored,
                                (true, _) => Status::NoDsa,
                                _ => Status::Open,
                            }
                        }
                    }
                    "undetermined" => Status::Undetermined,
                    other => {
                        feed.skip(
                            format!("{id} ({source} {release})"),
                            format!("unknown status {other:?}"),
                        );
                        continue;
                    }
                };
                let ranges = match fixed {
                    Some(f) if status == Status::Affected => {
                        vec![vec![
                            Event::Introduced("0".into()),
                            Event::Fixed(f.to_owned()),
                        ]]
                    }
                    _ => vec![vec![Event::Introduced("0".into())]],
                };
                feed.push(Record {
                    id: id.clone(),
                    aliases: Vec::new(),
                    ecosystem: "deb".into(),
                    package: source.clone(),
                    release: Some(release.clone()),
                    ranges,
                    versions: Vec::new(),
                    status,
                    severity: Severity::parse(urgency).unwrap_or_default(),
                    score: None,
                    summary: cve
                        .description
                        .as_deref()
                        .unwrap_or("")
                        .chars()
                        .take(200)
                        .collect(),
                    modified: None,
                });
            }
        }
    }
    feed
}

// ---- Alpine secdb ----

#[derive(Deserialize)]
struct SecdbPkg {
    name: String,
    #[serde(default)]
    secfixes: BTreeMap<String, Option<Vec<String>>>,
}

#[derive(Deserialize)]
struct SecdbEntry {
    pkg: SecdbPkg,
}

fn alpine(name: &str, top: &BTreeMap<String, Box<RawValue>>) -> Feed {
    let field = |k: &str| -> String {
        top.get(k)
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
            .unwrap_or_default()
    };
    let branch = field("distroversion");
    let repo = field("reponame");
    let mut feed = Feed::new(format!("alpine:{branch}/{repo}"), "alpine-secdb", true);
    let packages: Vec<Box<RawValue>> =
        match top.get("packages").map(|r| serde_json::from_str(r.get())) {
            Some(Ok(p)) => p,
            _ => {
                feed.complete = false;
                feed.skip(name, "packages is not a list");
                return feed;
            }
        };
    if alpine_branch(branch.trim_start_matches('v')).is_none() && branch != "edge" {
        feed.complete = false;
        feed.skip(name, format!("distroversion {branch:?} is not a branch"));
        return feed;
    }
    for raw in packages {
        let e: SecdbEntry = match serde_json::from_str(raw.get()) {
            Ok(e) => e,
            Err(err) => {
                feed.skip(
                    format!("{name}: package"),
                    format!("not a secdb package: {err}"),
                );
                continue;
            }
        };
        for (fixed, ids) in &e.pkg.secfixes {
            for line in ids.iter().flatten() {
                let mut words = line.split_whitespace();
                let Some(id) = words.next() else { continue };
                // Fixed in `0`: the package was never affected in this branch.
                if fixed == "0" {
                    continue;
                }
                feed.push(Record {
                    id: id.to_owned(),
                    aliases: words.map(str::to_owned).collect(),
                    ecosystem: "apk".into(),
                    package: e.pkg.name.clone(),
                    release: Some(branch.clone()),
                    ranges: vec![vec![
                        Event::Introduced("0".into()),
                        Event::Fixed(fixed.clone()),
                    ]],
                    versions: Vec::new(),
                    status: Status::Affected,
                    severity: Severity::Unknown,
                    score: None,
                    summary: String::new(),
                    modified: None,
                });
            }
        }
    }
    feed
}
