//! Vulnerabilities, offline: importing advisory dumps, matching them against the stored
//! package catalogs (never a layer), and the findings of an image.
//!
//! Matching is per distinct package (purl), not per image: a registry's images share a
//! few base layers, so 10,000 images of 300 packages hold a few thousand distinct
//! packages. An import re-matches all of them at once; a package cataloged later, or
//! left stale by an import whose re-match did not finish, is matched when its image's
//! findings are first read (`berth_meta::vulns` keeps the generation per package).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use berth_meta::{AdvisoryRow, FeedImport, FindingRow, PackageKey};
use berth_oci::{Digest, Reference, RepoName};
use berth_vuln::{Feed, Finding, Index, Package, Record, Severity, Skip};
use serde::Serialize;

use crate::{Registry, RegistryError, Result};

/// Counters for `/metrics` (per process).
#[derive(Debug, Default)]
pub struct VulnStats {
    pub imports: AtomicU64,
    pub records_imported: AtomicU64,
    pub records_skipped: AtomicU64,
    pub rematches: AtomicU64,
    /// Of the last full re-match, in milliseconds.
    pub rematch_millis: AtomicU64,
    pub packages_matched: AtomicU64,
    /// Images whose findings were read (scans, the API, policy verdicts computed).
    pub scans: AtomicU64,
    /// Pulls refused by an enforcing vulnerability rule.
    pub refused: AtomicU64,
}

/// What one feed of an import brought.
#[derive(Debug, Clone, Serialize)]
pub struct FeedReport {
    pub name: String,
    pub format: String,
    pub complete: bool,
    pub records: u64,
    pub withdrawn: u64,
    pub skipped: u64,
    /// The first reasons (at most 50).
    pub skipped_examples: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RematchReport {
    pub generation: i64,
    pub advisories: u64,
    pub packages: u64,
    pub findings: u64,
    pub millis: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub feeds: Vec<FeedReport>,
    pub generation: i64,
    pub rematch: Option<RematchReport>,
}

/// One finding in one image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageFinding {
    pub id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub package: String,
    pub version: String,
    /// The source package an advisory named (Debian, Alpine), when it is another name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub purl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub status: String,
    /// The layer that brought the package.
    pub layer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// `berth scan`'s and the API's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub digest: String,
    /// The catalog's status (`complete`, `partial`): a partial catalog may miss packages.
    pub catalog: String,
    pub packages: u64,
    /// The advisories' generation the findings were matched under.
    pub generation: i64,
    /// Worst first, then by id and package.
    pub findings: Vec<ImageFinding>,
    /// Findings per severity.
    pub counts: BTreeMap<String, u64>,
}

/// What an import would change for the vulnerability rules.
#[derive(Debug, Clone, Serialize)]
pub struct ImportPreview {
    pub feeds: Vec<FeedReport>,
    /// Image manifests judged (per rule).
    pub checked: u64,
    /// What the rules would refuse after the import and do not refuse now.
    pub newly_refused: Vec<NewlyRefused>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewlyRefused {
    pub rule: String,
    pub mode: crate::policy::Mode,
    pub repository: String,
    pub digest: String,
    pub why: String,
}

/// `berth advisories status`.
#[derive(Debug, Clone, Serialize)]
pub struct AdvisoryStatus {
    pub generation: i64,
    /// When every package was last re-matched (Unix microseconds; 0 never).
    pub matched_at: i64,
    pub feeds: Vec<FeedStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedStatus {
    pub name: String,
    pub format: String,
    pub records: i64,
    pub skipped: i64,
    pub newest_modified: Option<String>,
    pub imported_at: i64,
}

/// The source package an advisory named, when it is not the package itself: Debian's and
/// Alpine's name source packages; rpm advisories name the binary rpm.
fn advisory_source(ecosystem: &str, name: &str, source: Option<&str>) -> Option<String> {
    let (_, key) = berth_vuln::matching::advisory_key(ecosystem, name, source);
    (key != name && matches!(ecosystem, "deb" | "apk")).then_some(key)
}

fn internal(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Internal(e.to_string())
}

fn package_of(k: &PackageKey) -> Package<'_> {
    Package {
        purl: &k.purl,
        ecosystem: &k.ecosystem,
        name: &k.name,
        version: &k.version,
        source_name: k.source_name.as_deref(),
        source_version: k.source_version.as_deref(),
    }
}

fn finding_rows(index: &Index, packages: &[PackageKey]) -> Vec<FindingRow> {
    let mut out = Vec::new();
    for k in packages {
        for f in index.matches(&package_of(k)) {
            out.push(FindingRow {
                purl: k.purl.clone(),
                id: f.id.clone(),
                severity: f.severity.as_str().to_owned(),
                finding: serde_json::to_string(&f).unwrap_or_default(),
            });
        }
    }
    out
}

/// Merges the feeds of one import by name (a directory of OSV files is one `osv` feed).
fn merge_feeds(feeds: Vec<Feed>) -> Vec<Feed> {
    let mut by_name: BTreeMap<String, Feed> = BTreeMap::new();
    for f in feeds {
        match by_name.get_mut(&f.name) {
            Some(m) => {
                m.complete &= f.complete;
                m.records.extend(f.records);
                m.withdrawn.extend(f.withdrawn);
                m.skipped.extend(f.skipped);
            }
            None => {
                by_name.insert(f.name.clone(), f);
            }
        }
    }
    by_name.into_values().collect()
}

/// The findings of a stored catalog under `index`, as an image's findings read.
pub(crate) fn catalog_findings(
    index: &Index,
    catalog: &berth_meta::ImageCatalogRow,
) -> Vec<ImageFinding> {
    let mut out = Vec::new();
    for p in &catalog.packages {
        let k = Package {
            purl: &p.purl,
            ecosystem: &p.ecosystem,
            name: &p.name,
            version: &p.version,
            source_name: p.source_name.as_deref(),
            source_version: p.source_version.as_deref(),
        };
        for f in index.matches(&k) {
            out.push(ImageFinding {
                id: f.id,
                aliases: f.aliases,
                package: p.name.clone(),
                version: p.version.clone(),
                source: advisory_source(&p.ecosystem, &p.name, p.source_name.as_deref()),
                purl: p.purl.clone(),
                fixed: f.fixed,
                severity: f.severity,
                score: f.score,
                status: f.status,
                layer: p.layer_digest.clone(),
                summary: f.summary,
            });
        }
    }
    out
}

/// The advisories in force now and those an import of `feeds` would leave, without
/// writing anything: `(now, after)`.
pub(crate) fn indexes_around(
    stored: Vec<(String, String, String)>,
    feeds: &[Feed],
) -> (Index, Index) {
    let replaced: HashSet<&str> = feeds
        .iter()
        .filter(|f| f.complete && (!f.records.is_empty() || f.skipped.is_empty()))
        .map(|f| f.name.as_str())
        .collect();
    let updated: HashSet<(&str, &str)> = feeds
        .iter()
        .filter(|f| !f.complete)
        .flat_map(|f| {
            f.records
                .iter()
                .map(move |r| (f.name.as_str(), r.id.as_str()))
        })
        .collect();
    let withdrawn: HashSet<&str> = feeds
        .iter()
        .flat_map(|f| f.withdrawn.iter().map(String::as_str))
        .collect();
    let mut now = Vec::new();
    let mut after = Vec::new();
    for (feed, id, json) in &stored {
        let Ok(r) = serde_json::from_str::<Record>(json) else {
            continue;
        };
        let osv = feed == "osv" || feed.starts_with("osv:");
        let gone = replaced.contains(feed.as_str())
            || updated.contains(&(feed.as_str(), id.as_str()))
            || (osv && withdrawn.contains(id.as_str()));
        if !gone {
            after.push(r.clone());
        }
        now.push(r);
    }
    after.extend(feeds.iter().flat_map(|f| f.records.iter().cloned()));
    (Index::new(now), Index::new(after))
}

impl Registry {
    pub fn vuln_stats(&self) -> Arc<VulnStats> {
        Arc::clone(&self.vulns)
    }

    /// What importing `feeds` would start refusing under the vulnerability rules in force
    /// (audit and enforce, and dry-run ones), without writing anything: `berth
    /// advisories import --dry-run`.
    pub async fn preview_import(&self, feeds: Vec<Feed>) -> Result<ImportPreview> {
        let feeds = merge_feeds(feeds);
        let stored = self.meta.advisories_by_feed().await?;
        let (now, after) = {
            let feeds = feeds.clone();
            tokio::task::spawn_blocking(move || indexes_around(stored, &feeds))
                .await
                .map_err(internal)?
        };
        let (checked, newly_refused) = self.judge_import(&now, &after).await?;
        Ok(ImportPreview {
            feeds: feeds
                .iter()
                .map(|f| FeedReport {
                    name: f.name.clone(),
                    format: f.format.to_owned(),
                    complete: f.complete,
                    records: f.records.len() as u64,
                    withdrawn: f.withdrawn.len() as u64,
                    skipped: f.skipped.len() as u64,
                    skipped_examples: f
                        .skipped
                        .iter()
                        .take(50)
                        .map(|s| (s.what.clone(), s.reason.clone()))
                        .collect(),
                })
                .collect(),
            checked,
            newly_refused,
        })
    }

    /// Imports parsed advisory inputs in one transaction, then re-matches every stored
    /// catalog. Inputs that yielded nothing but skips (a file that is no advisory dump)
    /// change nothing but are reported.
    pub async fn import_advisories(&self, feeds: Vec<Feed>) -> Result<ImportReport> {
        let feeds = merge_feeds(feeds);
        let mut imports = Vec::new();
        let mut reports = Vec::new();
        for f in &feeds {
            let skipped = f.skipped.len() as u64;
            self.vulns
                .records_skipped
                .fetch_add(skipped, Ordering::Relaxed);
            for s in f.skipped.iter().take(20) {
                tracing::warn!(feed = %f.name, record = %s.what, reason = %s.reason, "advisory record skipped");
            }
            reports.push(FeedReport {
                name: f.name.clone(),
                format: f.format.to_owned(),
                complete: f.complete,
                records: f.records.len() as u64,
                withdrawn: f.withdrawn.len() as u64,
                skipped,
                skipped_examples: f
                    .skipped
                    .iter()
                    .take(50)
                    .map(|Skip { what, reason }| (what.clone(), reason.clone()))
                    .collect(),
            });
            if f.records.is_empty() && f.withdrawn.is_empty() && f.format == "unknown" {
                continue;
            }
            // A complete dump of which nothing could be read is more likely a damaged
            // file than an empty database: it does not wipe what the feed held.
            let complete = f.complete && (!f.records.is_empty() || f.skipped.is_empty());
            let mut rows = Vec::with_capacity(f.records.len());
            for r in &f.records {
                rows.push(AdvisoryRow {
                    id: r.id.clone(),
                    ecosystem: r.ecosystem.clone(),
                    package: r.package.clone(),
                    release: r.release.clone().unwrap_or_default(),
                    record: serde_json::to_string(r).map_err(internal)?,
                });
            }
            self.vulns
                .records_imported
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            imports.push(FeedImport {
                name: f.name.clone(),
                format: f.format.to_owned(),
                complete,
                rows,
                withdrawn: f.withdrawn.clone(),
                skipped: f.skipped.len() as u64,
                newest_modified: f.records.iter().filter_map(|r| r.modified.clone()).max(),
            });
        }
        if imports.is_empty() {
            let generation = self.meta.vuln_state().await?.0;
            return Ok(ImportReport {
                feeds: reports,
                generation,
                rematch: None,
            });
        }
        let generation = self.meta.import_advisories(&imports).await?;
        self.vulns.imports.fetch_add(1, Ordering::Relaxed);
        // Every replica forgets the findings its vulnerability rules judged by.
        self.meta.bump_policy().await?;
        self.policy.invalidate(None);
        let rematch = self.rematch_all().await?;
        Ok(ImportReport {
            feeds: reports,
            generation,
            rematch: Some(rematch),
        })
    }

    /// Matches every distinct package of every stored catalog against every advisory
    /// and replaces all findings in one transaction.
    pub async fn rematch_all(&self) -> Result<RematchReport> {
        let started = Instant::now();
        let (generation, records) = self.meta.all_advisories().await?;
        let packages = self.meta.distinct_packages().await?;
        let advisories = records.len() as u64;
        let (rows, packages) = tokio::task::spawn_blocking(move || {
            let index = Index::new(
                records
                    .iter()
                    .filter_map(|r| serde_json::from_str::<Record>(r).ok()),
            );
            (finding_rows(&index, &packages), packages)
        })
        .await
        .map_err(internal)?;
        let purls: Vec<String> = packages.iter().map(|p| p.purl.clone()).collect();
        let written = self
            .meta
            .put_findings(generation, &purls, &rows, true)
            .await?;
        if !written {
            tracing::info!(
                generation,
                "advisories changed during the re-match; the newer import re-matches"
            );
        }
        let millis = started.elapsed().as_millis() as u64;
        self.vulns.rematches.fetch_add(1, Ordering::Relaxed);
        self.vulns.rematch_millis.store(millis, Ordering::Relaxed);
        self.vulns
            .packages_matched
            .fetch_add(purls.len() as u64, Ordering::Relaxed);
        self.policy.invalidate(None);
        Ok(RematchReport {
            generation,
            advisories,
            packages: purls.len() as u64,
            findings: rows.len() as u64,
            millis,
        })
    }

    /// Matches the packages of `image` that were not matched under the current
    /// generation (cataloged since the last import, or left by an unfinished re-match).
    async fn match_stale(&self, image: &str) -> Result<i64> {
        let generation = self.meta.vuln_state().await?.0;
        let stale = self.meta.unmatched_packages(image, generation).await?;
        if stale.is_empty() {
            return Ok(generation);
        }
        let mut names: HashSet<(String, String)> = HashSet::new();
        for k in &stale {
            names.insert(berth_vuln::matching::advisory_key(
                &k.ecosystem,
                &k.name,
                k.source_name.as_deref(),
            ));
        }
        let mut records = Vec::new();
        for (eco, name) in &names {
            for r in self.meta.advisories_for(eco, name).await? {
                if let Ok(r) = serde_json::from_str::<Record>(&r) {
                    records.push(r);
                }
            }
        }
        let index = Index::new(records);
        let rows = finding_rows(&index, &stale);
        let purls: Vec<String> = stale.iter().map(|p| p.purl.clone()).collect();
        self.meta
            .put_findings(generation, &purls, &rows, false)
            .await?;
        self.vulns
            .packages_matched
            .fetch_add(purls.len() as u64, Ordering::Relaxed);
        Ok(generation)
    }

    /// The findings of one image manifest (not an index), `None` if it is not cataloged.
    pub async fn image_findings(&self, digest: &str) -> Result<Option<ScanReport>> {
        let Some(catalog) = self.meta.image_catalog(digest).await? else {
            return Ok(None);
        };
        let generation = self.match_stale(digest).await?;
        self.vulns.scans.fetch_add(1, Ordering::Relaxed);
        let by_purl: HashMap<&str, &berth_meta::CatalogPackage> = catalog
            .packages
            .iter()
            .map(|p| (p.purl.as_str(), p))
            .collect();
        let mut findings = Vec::new();
        for row in self.meta.image_findings(digest).await? {
            let Some(p) = by_purl.get(row.purl.as_str()) else {
                continue;
            };
            let Ok(f) = serde_json::from_str::<Finding>(&row.finding) else {
                continue;
            };
            findings.push(ImageFinding {
                id: f.id,
                aliases: f.aliases,
                package: p.name.clone(),
                version: p.version.clone(),
                source: advisory_source(&p.ecosystem, &p.name, p.source_name.as_deref()),
                purl: p.purl.clone(),
                fixed: f.fixed,
                severity: f.severity,
                score: f.score,
                status: f.status,
                layer: p.layer_digest.clone(),
                summary: f.summary,
            });
        }
        findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.package.cmp(&b.package))
        });
        let mut counts = BTreeMap::new();
        for f in &findings {
            *counts.entry(f.severity.as_str().to_owned()).or_insert(0) += 1;
        }
        Ok(Some(ScanReport {
            digest: digest.to_owned(),
            catalog: catalog.status,
            packages: catalog.packages.len() as u64,
            generation,
            findings,
            counts,
        }))
    }

    /// The findings of `repo@reference` (for an index, of `platform`'s image, else its
    /// first); `None` if that image is not cataloged yet.
    pub async fn scan(
        &self,
        repo: &RepoName,
        reference: &Reference,
        platform: Option<&str>,
    ) -> Result<Option<ScanReport>> {
        let m = self.get_manifest(repo, reference).await?;
        let digest: Digest = self.image_of(repo, &m, platform).await?;
        self.image_findings(digest.as_str()).await
    }

    pub async fn advisory_status(&self) -> Result<AdvisoryStatus> {
        let (generation, matched_at) = self.meta.vuln_state().await?;
        let feeds = self
            .meta
            .advisory_feeds()
            .await?
            .into_iter()
            .map(|f| FeedStatus {
                name: f.name,
                format: f.format,
                records: f.records,
                skipped: f.skipped,
                newest_modified: f.newest_modified,
                imported_at: f.imported_at,
            })
            .collect();
        Ok(AdvisoryStatus {
            generation,
            matched_at,
            feeds,
        })
    }
}
