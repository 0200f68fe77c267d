//! `berth export` and `berth import`: OCI image layouts for backup and restore. The walk,
//! the verification and the pushes are `berth_registry::layout`'s; the files are
//! `berth_storage::layout`'s. Here: the arguments, a progress bar and the summary.

use std::path::PathBuf;

use anyhow::Context;
use berth_meta::Actor;
use berth_oci::{ImageRef, RepoName};
use berth_storage::layout::OciLayout;

use crate::open::StoreArgs;
use crate::progress::TransferBar;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Images: `repo` (every tag), `repo:tag` or `repo@digest`.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// The OCI layout directory to write (created, or added to).
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The OCI layout directory to read.
    pub input: PathBuf,
    /// Import every image into this repository instead of the one recorded at export
    /// (needed for layouts made by other tools).
    #[arg(long)]
    pub repository: Option<String>,
}

pub async fn export(store: &StoreArgs, args: ExportArgs) -> anyhow::Result<()> {
    let images = args
        .images
        .iter()
        .map(|i| i.parse::<ImageRef>())
        .collect::<Result<Vec<_>, _>>()?;
    let (_, registry) = store.registry().await?;
    let layout = OciLayout::create(&args.output)
        .await
        .with_context(|| format!("creating {}", args.output.display()))?;
    let bar = TransferBar::new(None, Some("exported"));
    let result = registry.export_layout(&layout, &images, &bar).await;
    bar.finish();
    registry.meta().close().await;
    let r = result?;
    println!(
        "exported {} images: {} blobs written ({} bytes), {} already in the layout",
        r.images, r.blobs_written, r.bytes, r.blobs_skipped
    );
    Ok(())
}

pub async fn import(store: &StoreArgs, args: ImportArgs) -> anyhow::Result<()> {
    let into = args
        .repository
        .as_deref()
        .map(|r| {
            r.parse::<RepoName>()
                .map_err(|e| anyhow::anyhow!("{r:?}: {e}"))
        })
        .transpose()?;
    let (_, registry) = store.registry().await?;
    let layout = OciLayout::open(&args.input).await?;
    let bar = TransferBar::new(Some(layout.blob_bytes()), Some("imported"));
    let result = registry
        .import_layout(&layout, into.as_ref(), &Actor::named("cli"), &bar)
        .await;
    bar.finish();
    registry.meta().close().await;
    let r = result?;
    println!(
        "imported {} images: {} blobs pushed ({} bytes), {} already present",
        r.images, r.blobs_pushed, r.bytes, r.blobs_skipped
    );
    Ok(())
}
