//! `berth migrate-storage --to TARGET.toml`: copies every blob from the blob store the
//! current configuration names to the one `TARGET.toml` names (filesystem to S3, or back,
//! or between buckets), verifying each digest as it lands. Blobs already in the target are
//! skipped, so an interrupted run is resumed by running it again. If `TARGET.toml` names
//! another metadata store (`[metadata] url`), every table is copied into it too, which must
//! be new; otherwise the metadata stays where it is, valid, since blobs keep their digests.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use berth_storage::{CopyEvent, copy_all_blobs_with};

use crate::config::Config;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Configuration file of the current store (TOML), the same one `serve` reads.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the current store; overrides `data_dir` in the config.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file whose `[storage]` (and `data_dir`) name the target store.
    #[arg(long)]
    to: PathBuf,
}

/// Runs the migration; `Ok(true)` when every blob is in the target.
pub async fn run(args: MigrateArgs) -> anyhow::Result<bool> {
    let mut source = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        source.data_dir = d;
    }
    crate::logging::init_quiet();
    let target = Config::load(Some(&args.to))
        .with_context(|| format!("reading the target configuration {}", args.to.display()))?;
    let from = crate::open::open_blobs(&source, false)
        .await
        .context("opening the current blob store")?;
    let to = crate::open::open_blobs(&target, false)
        .await
        .context("opening the target blob store")?;

    // With encryption on, sealed blobs are copied in their stored form (their data keys
    // live in the metadata store, which keeps them or is copied whole) and checked by
    // opening them on the way; a keyring is needed for that.
    let registry = match source.keyring()? {
        Some(_) => Some(
            crate::open::open_registry(&source)
                .await
                .context("opening the metadata store for the blobs' data keys")?,
        ),
        None => None,
    };
    let lookup = registry.clone().map(|r| {
        move |d: berth_oci::Digest| -> futures_util::future::BoxFuture<
            'static,
            berth_storage::Result<Option<(u64, berth_storage::seal::DataKey)>>,
        > {
            let r = r.clone();
            Box::pin(async move {
                r.sealed_blob(&d)
                    .await
                    .map_err(|e| berth_storage::StorageError::Io {
                        op: "reading a blob's data key",
                        source: std::io::Error::other(e.to_string()),
                    })
            })
        }
    });
    let keys: Option<berth_storage::SealedKeys<'_>> = lookup.as_ref().map(|l| l as _);
    let started = Instant::now();
    let summary = copy_all_blobs_with(&from, &to, keys, &mut |e| match e {
        CopyEvent::Failed { digest, error } => {
            eprintln!("berth migrate-storage: {digest}: {error}");
        }
        CopyEvent::Stray { path } => tracing::warn!(path, "not a blob; not copied"),
        CopyEvent::Done(s) => {
            let done = s.copied + s.already + s.failed;
            if done % 100 == 0 {
                eprintln!(
                    "berth migrate-storage: {done} blobs, {} MiB copied",
                    s.copied_bytes >> 20
                );
            }
        }
    })
    .await
    .context("listing the current store")?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "copied {} blobs ({} bytes, {:.1} MiB/s), {} already in the target, {} failed, \
         {} vanished during the run, {} stray objects skipped; {secs:.1} s",
        summary.copied,
        summary.copied_bytes,
        summary.copied_bytes as f64 / (1 << 20) as f64 / secs.max(0.001),
        summary.already,
        summary.failed,
        summary.vanished,
        summary.strays,
    );
    if target.metadata.url.is_some() && target.metadata_url() != source.metadata_url() {
        // Another metadata store too (SQLite to PostgreSQL, or back): copy every table.
        let from = berth_meta::MetaStore::connect(&source.metadata_url())
            .await
            .context("opening the current metadata store")?;
        let to = berth_meta::MetaStore::connect(&target.metadata_url())
            .await
            .context("opening the target metadata store")?;
        let started = Instant::now();
        let rows = from
            .copy_into(&to, &mut |table, n| {
                eprintln!("berth migrate-storage: {table}: {n} rows");
            })
            .await
            .context("copying the metadata")?;
        println!(
            "copied the metadata: {rows} rows in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "metadata was not copied: the target names the same metadata store (or none); \
             point the serving configuration's [storage] at the target"
        );
    }
    Ok(summary.failed == 0)
}
