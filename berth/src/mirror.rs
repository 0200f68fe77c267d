//! `berth mirror`: fetch images from an upstream ahead of time, into the pull-through cache
//! (so the first pull on a node is already warm, and survives the upstream being down) or
//! into an ordinary repository (a pinned copy that the cache's freshness rules never touch).
//!
//! It goes through the same cache code as a pull (`get_manifest_proxied`, `fetch_blob`),
//! so digests are verified the same way, and what is already stored is skipped: running it
//! again after an interruption resumes where it stopped.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use berth_meta::Actor;
use berth_oci::manifest::parse_manifest;
use berth_oci::{Digest, Reference, RepoName};
use berth_registry::BlobSource;
use berth_registry::Registry;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::open::StoreArgs;

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

#[derive(Default)]
struct Tally {
    manifests: u64,
    blobs_fetched: u64,
    bytes: u64,
    blobs_skipped: u64,
    platforms_skipped: u64,
}

struct Mirror {
    registry: Registry,
    platforms: Vec<String>,
    bars: MultiProgress,
    tally: Tally,
    actor: Actor,
}

/// `os/arch[/variant]` of an index entry.
fn platform_of(entry: &Value) -> Option<String> {
    let p = entry.get("platform")?;
    let mut s = format!("{}/{}", p["os"].as_str()?, p["architecture"].as_str()?);
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    Some(s)
}

/// Is an index entry of `platform` among `wanted` (all when empty)? `linux/arm64` also
/// takes its variants (`linux/arm64/v8`), not `linux/arm64x`.
fn platform_wanted(wanted: &[String], platform: Option<&str>) -> bool {
    if wanted.is_empty() {
        return true;
    }
    // Entries without a platform (attestations, artifacts) follow the images.
    let Some(p) = platform else { return true };
    wanted.iter().any(|w| {
        p == w
            || p.strip_prefix(w.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

impl Mirror {
    fn bar(&self, len: Option<u64>, label: &str) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(len.unwrap_or(0)));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        bar
    }

    async fn blob(&mut self, repo: &RepoName, d: &Digest) -> anyhow::Result<()> {
        if self.registry.stat_blob(repo, d).await.is_ok() {
            self.tally.blobs_skipped += 1;
            return Ok(());
        }
        match self
            .registry
            .fetch_blob(repo, d, true)
            .await
            .with_context(|| format!("fetching blob {d} of {repo}"))?
        {
            BlobSource::Stored => self.tally.blobs_skipped += 1,
            BlobSource::Upstream(pulled) => {
                let Some(mut body) = pulled.body else {
                    bail!("the upstream sent no body for blob {d}");
                };
                let bar = self.bar(pulled.size, &d.hex()[..12]);
                // The cache stores the blob as it streams past; reading it to the end is
                // what makes it land (and be verified).
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.with_context(|| format!("fetching blob {d} of {repo}"))?;
                    bar.inc(chunk.len() as u64);
                    self.tally.bytes += chunk.len() as u64;
                }
                bar.finish_and_clear();
                self.tally.blobs_fetched += 1;
            }
        }
        Ok(())
    }

    /// Fetches a manifest and what it needs; returns the digests of the manifests it kept
    /// (children first), for copying.
    async fn manifest(
        &mut self,
        repo: &RepoName,
        reference: &Reference,
        kept: &mut Vec<Digest>,
    ) -> anyhow::Result<Digest> {
        let pulled = self
            .registry
            .get_manifest_proxied(repo, reference)
            .await
            .with_context(|| format!("fetching manifest {repo}:{reference}"))?;
        let m = pulled.manifest;
        if let Some(w) = pulled.warning {
            eprintln!("warning: {w}");
        }
        self.tally.manifests += 1;
        let parsed = parse_manifest(&m.content, Some(&m.media_type))
            .map_err(|e| anyhow::anyhow!("manifest {} of {repo}: {e}", m.digest))?;
        if !parsed.manifests.is_empty() {
            let raw: Value = serde_json::from_slice(&m.content)?;
            let entries = raw["manifests"].as_array().cloned().unwrap_or_default();
            for entry in entries {
                let Some(d) = entry["digest"]
                    .as_str()
                    .and_then(|d| d.parse::<Digest>().ok())
                else {
                    continue;
                };
                if !platform_wanted(&self.platforms, platform_of(&entry).as_deref()) {
                    self.tally.platforms_skipped += 1;
                    continue;
                }
                Box::pin(self.manifest(repo, &Reference::Digest(d), kept)).await?;
            }
        }
        for blob in parsed.config.iter().chain(&parsed.layers) {
            if blob.has_urls {
                continue;
            }
            if let Some(d) = blob.known_digest() {
                self.blob(repo, &d).await?;
            }
        }
        kept.push(m.digest.clone());
        Ok(m.digest)
    }

    /// Copies what was fetched into `target`: blobs mounted from the cache repository, then
    /// manifests children first, then the tag. A sparse copy (some platforms skipped) needs
    /// `allow_sparse_index` for the index itself; otherwise the children are all there.
    async fn copy(
        &mut self,
        from: &RepoName,
        target: &RepoName,
        kept: &[Digest],
        tag: Option<&str>,
    ) -> anyhow::Result<()> {
        for d in kept {
            let m = self
                .registry
                .get_manifest(from, &Reference::Digest(d.clone()))
                .await?;
            let parsed = parse_manifest(&m.content, Some(&m.media_type))
                .map_err(|e| anyhow::anyhow!("manifest {d}: {e}"))?;
            for blob in parsed.config.iter().chain(&parsed.layers) {
                if let Some(b) = blob.known_digest().filter(|_| !blob.has_urls)
                    && !self
                        .registry
                        .mount_blob(target, &b, from, &self.actor)
                        .await?
                {
                    bail!("blob {b} is not in {from} to copy");
                }
            }
            let reference = match (tag, Some(d) == kept.last()) {
                (Some(t), true) => t.parse()?,
                _ => Reference::Digest(d.clone()),
            };
            self.registry
                .put_manifest(
                    target,
                    &reference,
                    Some(&m.media_type),
                    m.content,
                    &self.actor,
                )
                .await
                .with_context(|| format!("storing manifest {d} in {target}"))?;
        }
        Ok(())
    }
}

/// Splits `host/name:tag` or `host/name@digest`; no reference means `latest`, as clients
/// do.
fn split(image: &str) -> anyhow::Result<(RepoName, Reference)> {
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (n, d),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (image, "latest"),
        },
    };
    // An upstream with a port is named as clients name it (`registry.internal:5000/app`);
    // its cache lives under the prefix without the `:`.
    let name = match name.split_once('/') {
        Some((host, rest)) if host.contains(':') => {
            format!("{}/{rest}", berth_registry::upstream_prefix(host))
        }
        _ => name.to_owned(),
    };
    let repo: RepoName = name
        .parse()
        .map_err(|e| anyhow::anyhow!("{name:?} is not a repository name: {e}"))?;
    let reference: Reference = reference
        .parse()
        .map_err(|e| anyhow::anyhow!("{reference:?} is not a tag or digest: {e}"))?;
    Ok((repo, reference))
}

pub async fn run(store: &StoreArgs, args: MirrorArgs) -> anyhow::Result<()> {
    let config = store.load()?;
    config.check_upstreams()?;
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
    let bars = MultiProgress::with_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let mut m = Mirror {
        registry,
        platforms: args.platform.clone(),
        bars,
        tally: Tally::default(),
        actor: Actor::named("cli"),
    };
    let mut failed = 0;
    for image in &images {
        let (repo, reference) = split(image)?;
        if m.registry.cached_upstream(&repo).is_none() {
            bail!(
                "{image}: {} is not a configured [[upstream]] name",
                berth_auth::tenant_of(repo.as_str())
            );
        }
        let mut kept = Vec::new();
        match m.manifest(&repo, &reference, &mut kept).await {
            Ok(digest) => {
                if let Some(target) = &into {
                    let tag = match &reference {
                        Reference::Tag(t) => Some(t.as_str()),
                        Reference::Digest(_) => None,
                    };
                    m.copy(&repo, target, &kept, tag).await?;
                    eprintln!("mirrored {image} ({digest}) into {target}");
                } else {
                    eprintln!("mirrored {image} ({digest})");
                }
            }
            Err(e) => {
                // One unreachable image does not stop the list; the summary counts it.
                eprintln!("failed {image}: {e:#}");
                failed += 1;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        let (r, t) = split("docker.io/library/nginx:1.27").expect("tag");
        assert_eq!(
            (r.as_str(), t.to_string().as_str()),
            ("docker.io/library/nginx", "1.27")
        );
        let (_, t) = split("ghcr.io/org/app").expect("latest");
        assert_eq!(t.to_string(), "latest");
        assert!(split("docker.io/Nginx:1").is_err());
        let (r, t) = split("registry.internal:5000/team/app:v2").expect("port");
        assert_eq!(
            (r.as_str(), t.to_string().as_str()),
            ("registry.internal_5000/team/app", "v2")
        );
        let (r, t) = split("127.0.0.1:5001/app").expect("port, no tag");
        assert_eq!(
            (r.as_str(), t.to_string().as_str()),
            ("127.0.0.1_5001/app", "latest")
        );
    }

    #[test]
    fn platform_filter() {
        let entry = serde_json::json!({"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}});
        assert_eq!(platform_of(&entry).as_deref(), Some("linux/arm64/v8"));
        let want = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(platform_wanted(
            &want(&["linux/arm64"]),
            Some("linux/arm64/v8")
        ));
        assert!(platform_wanted(
            &want(&["linux/arm64"]),
            Some("linux/arm64")
        ));
        assert!(!platform_wanted(&want(&["linux/arm"]), Some("linux/arm64")));
        assert!(!platform_wanted(
            &want(&["linux/amd64"]),
            Some("linux/arm64")
        ));
        assert!(platform_wanted(&want(&["linux/amd64"]), None));
        assert!(platform_wanted(&[], Some("windows/amd64")));
    }
}
