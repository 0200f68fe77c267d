//! `berth gc`: one garbage collection, offline or beside a serving process (every
//! deletion is re-checked under the metadata store's locks, so serving replicas need not
//! stop), with a progress bar and a summary.

use crate::open::StoreArgs;
use crate::progress::GcSpinner;

#[derive(clap::Args)]
pub struct GcArgs {
    /// Print what would be deleted, and how many bytes; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Override `[gc] grace_secs`.
    #[arg(long)]
    pub grace_secs: Option<u64>,
    /// Override `[gc] rollback_window_secs`.
    #[arg(long)]
    pub rollback_window_secs: Option<u64>,
    /// List every manifest and blob deleted (or, dry, to be deleted).
    #[arg(long, short)]
    pub verbose: bool,
}

pub async fn run(store: &StoreArgs, args: GcArgs) -> anyhow::Result<()> {
    let mut config = store.load()?;
    if let Some(g) = args.grace_secs {
        config.gc.grace_secs = g;
    }
    if let Some(w) = args.rollback_window_secs {
        config.gc.rollback_window_secs = w;
    }
    let registry = crate::open::open_registry(&config).await?;
    let meta = registry.meta().clone();
    let bar = GcSpinner::new();
    let progress = |p| bar.report(p);
    let options = config.gc.options(args.dry_run);
    let holder = format!("cli:{}", std::process::id());
    let result = if args.dry_run {
        registry
            .collect_garbage(&options, &progress)
            .await
            .map(Some)
    } else {
        registry
            .collect_garbage_leased(&holder, &options, &progress)
            .await
    };
    bar.finish();
    meta.close().await;
    let Some(report) = result? else {
        anyhow::bail!("another process is collecting garbage now (the gc lease is held)");
    };
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    if args.verbose {
        for (repo, digest) in &report.manifests_deleted {
            println!("manifest\t{repo}@{digest}");
        }
        for (digest, size) in &report.blobs_deleted {
            println!("blob\t{digest}\t{size}");
        }
    }
    println!(
        "{verb} {} manifests, {} blob links, {} blobs ({} bytes) in {} repositories; kept {} manifests; {:.2}s",
        report.manifests_deleted.len(),
        report.links_removed,
        report.blobs_deleted.len(),
        report.bytes_freed,
        report.repositories,
        report.manifests_kept,
        report.elapsed.as_secs_f64(),
    );
    if !args.dry_run && report.uploads_purged > 0 {
        println!("removed {} stale uploads", report.uploads_purged);
    }
    let (images, layers) = report.catalogs_pruned;
    if images + layers > 0 {
        println!(
            "dropped the package catalogs of {images} images and {layers} layers no longer stored"
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct RetentionArgs {
    /// Print what would be removed, and how many bytes it holds; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// List every tag and cached manifest removed (or, dry, to be removed).
    #[arg(long, short)]
    pub verbose: bool,
}

pub async fn retention(store: &StoreArgs, args: RetentionArgs) -> anyhow::Result<()> {
    let config = store.load()?;
    let housekeeping = config.housekeeping()?;
    let registry = crate::open::open_registry(&config).await?;
    let meta = registry.meta().clone();
    let result = registry.housekeeping(&housekeeping, args.dry_run).await;
    meta.close().await;
    let report = result?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    if args.verbose {
        for e in &report.expired {
            println!("tag\t{}:{}\t{}", e.repository, e.tag, e.digest);
        }
        for e in &report.evicted {
            println!("cached\t{}@{}\t{}", e.repository, e.digest, e.reason);
        }
    }
    for s in &report.skipped {
        eprintln!("skipped {s}");
    }
    println!(
        "{verb} {} tags and {} cached manifests ({} bytes, freed by the next gc once the rollback window has passed); kept {} tags",
        report.expired.len(),
        report.evicted.len(),
        report.bytes,
        report.kept,
    );
    Ok(())
}
