//! `[catalog]` (package catalogs and SBOMs of every image) and `berth sbom`, which prints
//! an image's SBOM from its stored catalog, offline against the data directory or
//! database like `berth verify`.

use std::time::Duration;

use anyhow::Context;
use berth_catalog::Limits;
use berth_catalog::sbom::Format;
use berth_registry::catalog::CatalogSettings;
use serde::Deserialize;

use crate::open::StoreArgs;
use crate::output;

/// `[catalog]`: cataloging every pushed or cached image in the background.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Catalog every image pushed or cached (a `catalog` job per manifest).
    pub enabled: bool,
    /// Push each image's CycloneDX and SPDX documents as its referrers.
    pub referrers: bool,
    /// Longest one layer is read (seconds); the rest of a slower layer is not cataloged
    /// and the image is `partial`.
    pub layer_timeout_secs: u64,
    /// Layers scanned at once by each replica.
    pub concurrency: usize,
    /// Entries of one layer read at most.
    pub max_entries: u64,
    /// Largest file read (MiB): package databases, jars, binaries.
    pub max_file_mib: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        let l = Limits::default();
        CatalogConfig {
            enabled: true,
            referrers: true,
            layer_timeout_secs: 600,
            concurrency: 1,
            max_entries: l.max_entries,
            max_file_mib: l.max_file_bytes >> 20,
        }
    }
}

impl CatalogConfig {
    pub fn settings(&self) -> Option<CatalogSettings> {
        if !self.enabled {
            return None;
        }
        Some(CatalogSettings {
            limits: Limits {
                max_entries: self.max_entries.max(1),
                max_file_bytes: self.max_file_mib.clamp(1, 1024) << 20,
                ..Limits::default()
            },
            layer_timeout: Duration::from_secs(self.layer_timeout_secs.max(1)),
            concurrency: self.concurrency.max(1),
            referrers: self.referrers,
        })
    }
}

#[derive(clap::Args)]
pub struct SbomArgs {
    /// `repository@sha256:...` or `repository:tag`.
    pub reference: String,
    /// `cyclonedx` (CycloneDX 1.6 JSON) or `spdx` (SPDX 2.3 JSON).
    #[arg(long, default_value = "cyclonedx")]
    pub format: String,
    /// For an index: the platform (`linux/arm64`); by default its first image.
    #[arg(long)]
    pub platform: Option<String>,
}

/// Prints the SBOM; false when the image is not cataloged (yet).
pub async fn run(store: &StoreArgs, args: SbomArgs) -> anyhow::Result<bool> {
    let format = Format::parse(&args.format)
        .with_context(|| format!("--format {:?}: cyclonedx or spdx", args.format))?;
    let (repo, reference) = crate::policy::parse_reference(&args.reference)?;
    let (_, registry) = store.registry().await?;
    let doc = registry
        .sbom(&repo, &reference, args.platform.as_deref(), format)
        .await;
    registry.meta().close().await;
    match doc.context("reading the catalog")? {
        Some((_, bytes)) => {
            output::print(&format!("{}\n", String::from_utf8_lossy(&bytes)));
            Ok(true)
        }
        None => {
            eprintln!("{}: not cataloged (yet)", args.reference);
            Ok(false)
        }
    }
}
