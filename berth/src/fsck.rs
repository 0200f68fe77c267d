//! `berth fsck`: the command-line face of `Registry::fsck` — configuration as `serve` reads
//! it, a progress bar on a terminal, and the report as text or JSON.

use std::path::PathBuf;

use anyhow::Context;
use berth_meta::MetaStore;
use berth_registry::fsck::FsckReport;
use berth_registry::{Registry, RegistryConfig};

use crate::config::Config;
use crate::output;
use crate::progress::PhaseBar;

/// Entries of each kind the text report lists; `--json` lists all.
const TEXT_LIST_LIMIT: usize = 20;

#[derive(clap::Args)]
pub struct FsckArgs {
    /// Configuration file (TOML), the same one `serve` reads.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory; overrides `data_dir` in the config.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Metadata database URL; overrides `[metadata] url`.
    #[arg(long, env = "BERTH_METADATA_URL", hide_env_values = true)]
    metadata_url: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs the check; `Ok(true)` when nothing is missing or corrupt.
pub async fn run(args: FsckArgs) -> anyhow::Result<bool> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(u) = args.metadata_url {
        config.metadata.url = Some(u);
    }
    crate::logging::init_quiet();

    let blobs = crate::open::open_blobs(&config, true).await?;
    let meta = MetaStore::connect_read_only(&config.metadata_url())
        .await
        .context("opening the metadata store read-only")?;
    let registry = Registry::new(
        blobs,
        meta.clone(),
        RegistryConfig {
            allow_sparse_index: config.allow_sparse_index,
            ..RegistryConfig::default()
        },
    );
    let keyring = config.keyring()?;
    let registry = crate::open::check_keyring(registry, &config, keyring).await?;
    let bar = PhaseBar::new();
    let report = registry.fsck(&bar).await;
    bar.finish();
    meta.close().await;
    let report = report.context("checking the registry")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.is_clean())
}

fn section<T>(out: &mut String, title: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    out.push_str(&format!("{title}: {}\n", items.len()));
    for item in items.iter().take(TEXT_LIST_LIMIT) {
        out.push_str(&format!("  {}\n", line(item)));
    }
    if items.len() > TEXT_LIST_LIMIT {
        out.push_str(&format!(
            "  ... and {} more (--json lists all)\n",
            items.len() - TEXT_LIST_LIMIT
        ));
    }
}

fn render(r: &FsckReport) -> String {
    let mut out = format!(
        "checked {} blobs ({}), {} manifests, {} suspect references, {} files under blobs/\n",
        r.blobs_checked,
        output::bytes(r.bytes_checked),
        r.manifests_checked,
        r.references_checked,
        r.files_scanned,
    );
    section(
        &mut out,
        "MISSING blobs (in metadata, not in storage)",
        &r.missing_blobs,
        |b| {
            format!(
                "{} ({}) linked in: {}",
                b.digest,
                output::bytes(b.size),
                b.repositories.join(", ")
            )
        },
    );
    section(&mut out, "CORRUPT blobs", &r.corrupt_blobs, |b| {
        let found = match (&b.error, b.actual_size, &b.actual_digest) {
            (Some(e), _, _) => format!("unreadable: {e}"),
            (None, Some(size), Some(d)) => format!("{} hashing to {d}", output::bytes(size)),
            _ => "unreadable".to_owned(),
        };
        format!(
            "{}: expected {}, found {found}; linked in: {}",
            b.digest,
            output::bytes(b.expected_size),
            b.repositories.join(", ")
        )
    });
    section(&mut out, "CORRUPT manifests", &r.corrupt_manifests, |m| {
        format!(
            "{}@{}: stored bytes hash to {}",
            m.repository, m.digest, m.actual_digest
        )
    });
    section(
        &mut out,
        "BROKEN manifests (a required reference cannot be served)",
        &r.broken_manifests,
        |m| {
            format!(
                "{}@{} -> {} {}: {}",
                m.repository, m.manifest, m.kind, m.reference, m.problem
            )
        },
    );
    section(
        &mut out,
        "orphan blobs (in storage, unknown to metadata; harmless, left by interrupted pushes)",
        &r.orphan_blobs,
        |b| format!("{} ({})", b.digest, output::bytes(b.size)),
    );
    section(
        &mut out,
        "stray files under blobs/ (harmless, not served)",
        &r.stray_files,
        |p| p.clone(),
    );
    let problems = r.missing_blobs.len()
        + r.corrupt_blobs.len()
        + r.corrupt_manifests.len()
        + r.broken_manifests.len();
    if problems == 0 {
        out.push_str("result: clean\n");
    } else {
        out.push_str(&format!("result: DAMAGED ({problems} problems)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_report_names_damage_and_caps_lists() {
        let mut r = FsckReport::default();
        assert!(render(&r).ends_with("result: clean\n"));
        r.orphan_blobs = (0..25)
            .map(|i| berth_registry::fsck::OrphanBlob {
                digest: format!("sha256:{i:064}"),
                size: 2048,
            })
            .collect();
        let text = render(&r);
        assert!(text.contains("orphan blobs"));
        assert!(text.contains("... and 5 more"));
        assert!(text.ends_with("result: clean\n"), "orphans are harmless");
        r.broken_manifests
            .push(berth_registry::fsck::BrokenManifest {
                repository: "team/app".into(),
                manifest: "sha256:aa".into(),
                reference: "sha256:bb".into(),
                kind: "blob",
                problem: "blob bytes are missing from storage",
            });
        assert!(render(&r).ends_with("result: DAMAGED (1 problems)\n"));
        assert_eq!(output::bytes(2048), "2.0 KiB");
    }
}
