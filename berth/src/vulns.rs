//! Vulnerabilities, offline: `[[vulnerability_policy]]` (rules of the shared policy
//! layer), `berth advisories import|status` and `berth scan`, offline against the data
//! directory or database like `berth sbom`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_registry::policy::{AllowEntry, Mode, Pending, RuleSpec, UnknownSeverity, VulnRuleSpec};
use berth_vuln::{Feed, Severity};
use clap::Subcommand;
use serde::Deserialize;

use crate::open::StoreArgs;
use crate::output::{self, Table};

/// One `[[vulnerability_policy]]` table: a rule of kind `vulnerability`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VulnPolicyEntry {
    pub name: String,
    pub repositories: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Images not cataloged (or matched) yet: `refuse` (default) or `allow`.
    #[serde(default)]
    pub pending: Pending,
    #[serde(default = "yes")]
    pub push_bypass: bool,
    /// Refuse findings at or above this severity.
    pub severity: Severity,
    #[serde(default)]
    pub fixed_only: bool,
    #[serde(default)]
    pub unknown: UnknownSeverity,
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
}

fn yes() -> bool {
    true
}

impl VulnPolicyEntry {
    pub fn rule(&self) -> RuleSpec {
        RuleSpec {
            name: self.name.clone(),
            repositories: self.repositories.clone(),
            kind: "vulnerability".into(),
            mode: self.mode,
            pending: self.pending,
            push_bypass: self.push_bypass,
            vulnerability: Some(VulnRuleSpec {
                severity: self.severity,
                fixed_only: self.fixed_only,
                unknown: self.unknown,
                allow: self.allow.clone(),
            }),
        }
    }
}

#[derive(Subcommand)]
pub enum AdvisoriesCommand {
    /// Import advisory dumps: OSV JSON files, directories of them and per-ecosystem
    /// `all.zip` archives, the Debian security tracker's JSON, Alpine secdb JSON. One
    /// transaction; every stored catalog is matched again afterwards.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Import nothing: list what the vulnerability rules (in any mode but off) would
        /// start refusing after this import.
        #[arg(long)]
        dry_run: bool,
    },
    /// The imported feeds: records, skipped records, newest advisory, age.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// The files under `path` (a directory is walked; `.json` and `.zip` files only).
fn inputs(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let is_dir = e.is_dir();
            let ext = e.extension().and_then(|x| x.to_str()).unwrap_or("");
            if is_dir || ext == "json" || ext == "zip" {
                inputs(&e, out)?;
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}

fn read_feed(path: &Path) -> Feed {
    let name = path.display().to_string();
    let parsed = std::fs::metadata(path)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            if m.len() > berth_vuln::formats::MAX_FILE {
                Err(format!(
                    "larger than {} bytes",
                    berth_vuln::formats::MAX_FILE
                ))
            } else {
                std::fs::read(path).map_err(|e| e.to_string())
            }
        });
    match parsed {
        Ok(data) => berth_vuln::parse(&name, &data),
        Err(why) => berth_vuln::parse(&name, why.as_bytes()),
    }
}

pub async fn advisories(store: &StoreArgs, cmd: AdvisoriesCommand) -> anyhow::Result<()> {
    let (_, registry) = store.registry().await?;
    let result = match cmd {
        AdvisoriesCommand::Import {
            paths,
            json,
            dry_run,
        } => {
            let mut files = Vec::new();
            for p in &paths {
                inputs(p, &mut files)?;
            }
            let feeds: Vec<Feed> = files.iter().map(|f| read_feed(f)).collect();
            if dry_run {
                let preview = registry
                    .preview_import(feeds)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"));
                registry.meta().close().await;
                let preview = preview?;
                if json {
                    output::print(&format!("{}\n", serde_json::to_string(&preview)?));
                } else {
                    let mut t = Table::new(&["RULE", "MODE", "IMAGE", "WHY"]);
                    for n in &preview.newly_refused {
                        t.row([
                            output::clean(&n.rule).into_owned(),
                            serde_json::to_value(n.mode)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            output::clean(&format!("{}@{}", n.repository, n.digest)).into_owned(),
                            output::clean(&n.why).into_owned(),
                        ]);
                    }
                    output::print(&t.render());
                    output::print(&format!(
                        "{} judged; {} would be refused newly (nothing imported)\n",
                        preview.checked,
                        preview.newly_refused.len()
                    ));
                }
                return Ok(());
            }
            let report = registry.import_advisories(feeds).await;
            let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                output::print(&format!("{}\n", serde_json::to_string(&report)?));
            } else {
                let mut t = Table::new(&["FEED", "FORMAT", "RECORDS", "WITHDRAWN", "SKIPPED"]);
                for f in &report.feeds {
                    t.row([
                        output::clean(&f.name).into_owned(),
                        f.format.clone(),
                        f.records.to_string(),
                        f.withdrawn.to_string(),
                        f.skipped.to_string(),
                    ]);
                }
                output::print(&t.render());
                for f in &report.feeds {
                    for (what, why) in &f.skipped_examples {
                        eprintln!("skipped {}: {}", output::clean(what), output::clean(why));
                    }
                }
                if let Some(r) = &report.rematch {
                    output::print(&format!(
                        "re-matched {} packages against {} advisories: {} findings in {} ms (generation {})\n",
                        r.packages, r.advisories, r.findings, r.millis, r.generation
                    ));
                }
            }
            Ok(())
        }
        AdvisoriesCommand::Status { json } => {
            let s = registry
                .advisory_status()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                output::print(&format!("{}\n", serde_json::to_string(&s)?));
            } else {
                let mut t =
                    Table::new(&["FEED", "FORMAT", "RECORDS", "SKIPPED", "NEWEST", "IMPORTED"]);
                for f in &s.feeds {
                    t.row([
                        output::clean(&f.name).into_owned(),
                        f.format.clone(),
                        f.records.to_string(),
                        f.skipped.to_string(),
                        output::opt(f.newest_modified.as_deref()),
                        output::time(f.imported_at / 1_000_000),
                    ]);
                }
                output::print(&t.render());
                output::print(&format!(
                    "generation {}, last re-matched {}\n",
                    s.generation,
                    if s.matched_at == 0 {
                        "never".to_owned()
                    } else {
                        output::time(s.matched_at / 1_000_000)
                    }
                ));
            }
            Ok(())
        }
    };
    registry.meta().close().await;
    result
}

#[derive(clap::Args)]
pub struct ScanArgs {
    /// `repository@sha256:...` or `repository:tag`.
    pub reference: String,
    /// For an index: the platform (`linux/arm64`); by default its first image.
    #[arg(long)]
    pub platform: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// Prints an image's findings; false when it is not cataloged (yet).
pub async fn scan(store: &StoreArgs, args: ScanArgs) -> anyhow::Result<bool> {
    let (repo, reference) = crate::policy::parse_reference(&args.reference)?;
    let (_, registry) = store.registry().await?;
    let report = registry
        .scan(&repo, &reference, args.platform.as_deref())
        .await;
    registry.meta().close().await;
    let Some(report) = report.map_err(|e| anyhow::anyhow!("{e}"))? else {
        eprintln!("{}: not cataloged (yet)", args.reference);
        return Ok(false);
    };
    if args.json {
        output::print(&format!("{}\n", serde_json::to_string(&report)?));
        return Ok(true);
    }
    let mut t = Table::new(&[
        "ID",
        "SEVERITY",
        "PACKAGE",
        "INSTALLED",
        "FIXED",
        "STATUS",
        "LAYER",
    ]);
    for f in &report.findings {
        let package = match &f.source {
            Some(src) => format!("{} ({src})", f.package),
            None => f.package.clone(),
        };
        t.row([
            output::clean(&f.id).into_owned(),
            match f.score {
                Some(s) => format!("{} {s:.1}", f.severity.as_str()),
                None => f.severity.as_str().to_owned(),
            },
            output::clean(&package).into_owned(),
            output::clean(&f.version).into_owned(),
            output::clean(f.fixed.as_deref().unwrap_or("-")).into_owned(),
            f.status.clone(),
            f.layer.chars().take(19).collect(),
        ]);
    }
    output::print(&t.render());
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    output::print(&format!(
        "{}: {} packages ({} catalog), {} findings{}\n",
        report.digest,
        report.packages,
        report.catalog,
        report.findings.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(": {}", counts.join(", "))
        }
    ));
    Ok(true)
}
