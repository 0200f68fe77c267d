//! `berth mirror`: fetch images from configured upstreams ahead of time, into the
//! pull-through cache or on into an ordinary repository. The walk is
//! `berth_registry::prefetch`'s; here: the arguments, a progress bar and the summary.

use std::path::PathBuf;

use anyhow::{Context, bail};
use berth_meta::Actor;
use berth_oci::{Reference, RepoName};
use berth_registry::prefetch::{Prefetch, upstream_image};

use crate::open::StoreArgs;
use crate::progress::TransferBar;

#[derive(clap::Args)]
pub struct MirrorArgs {
    /// Images as nodes name them: `docker.io/library/nginx:1.27`, `ghcr.io/org/app@sha256:…`.
    /// The first component must be a configured `[[upstream]]` name.
    pub images: Vec<String>,
    /// A file with one image per line (`#` starts a comment).
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// Only these platforms of multi-platform images (`linux/amd64`, `linux/arm64/v8`);
    /// repeatable. Default: all.
    #[arg(long)]
    pub platform: Vec<String>,
    /// Copy into this ordinary repository instead of leaving the images in the cache only
    /// (one image per run; the tag is kept).
    #[arg(long)]
    pub into: Option<String>,
}

/// The images named on the command line and in `--file`.
fn images(args: &MirrorArgs) -> anyhow::Result<Vec<String>> {
    let mut images = args.images.clone();
    if let Some(f) = &args.file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        images.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    if images.is_empty() {
        bail!("no images: name them as arguments or with --file");
    }
    Ok(images)
}

pub async fn run(store: &StoreArgs, args: MirrorArgs) -> anyhow::Result<()> {
    let config = store.load()?;
    config.check_upstreams()?;
    let images = images(&args)?;
    let into = args
        .into
        .as_deref()
        .map(|r| {
            r.parse::<RepoName>()
                .map_err(|e| anyhow::anyhow!("--into {r:?}: {e}"))
        })
        .transpose()?;
    if into.is_some() && images.len() != 1 {
        bail!("--into copies one image; name exactly one");
    }
    let registry = crate::open::open_registry(&config).await?;
    let bar = TransferBar::new(None, None);
    let mut m = Prefetch::new(&registry, args.platform.clone(), Actor::named("cli"), &bar);
    let mut failed = 0;
    for image in &images {
        let (repo, reference) = upstream_image(image)?;
        if registry.cached_upstream(&repo).is_none() {
            bail!(
                "{image}: {} is not a configured [[upstream]] name",
                berth_auth::tenant_of(repo.as_str())
            );
        }
        match m.image(&repo, &reference).await {
            Ok(fetched) => {
                if let Some(target) = &into {
                    let tag = match &reference {
                        Reference::Tag(t) => Some(t),
                        Reference::Digest(_) => None,
                    };
                    m.copy(&repo, &fetched, target, tag).await?;
                    eprintln!("mirrored {image} ({}) into {target}", fetched.digest);
                } else {
                    eprintln!("mirrored {image} ({})", fetched.digest);
                }
            }
            Err(e) => {
                // One unreachable image does not stop the list; the summary counts it.
                eprintln!("failed {image}: {:#}", anyhow::Error::new(e));
                failed += 1;
            }
        }
    }
    bar.finish();
    let t = &m.tally;
    println!(
        "{} images mirrored, {failed} failed: {} manifests, {} blobs fetched ({} bytes), {} blobs already here, {} platforms skipped",
        images.len() - failed,
        t.manifests,
        t.blobs_fetched,
        t.bytes,
        t.blobs_skipped,
        t.platforms_skipped
    );
    if failed > 0 {
        bail!("{failed} of {} images failed", images.len());
    }
    Ok(())
}
