//! Prefetching images from upstreams ahead of time (`berth mirror`): into the pull-through
//! cache, so the first pull on a node is already warm and survives the upstream being
//! down, or on into an ordinary repository, a pinned copy that the cache's freshness rules
//! never touch.
//!
//! It goes through the same cache code as a pull (`get_manifest_proxied`, `fetch_blob`),
//! so digests are verified the same way, and what is already stored is skipped: running
//! it again after an interruption resumes where it stopped.

use berth_meta::Actor;
use berth_oci::{Digest, ImageRef, Reference, RepoName, Tag};
use futures_util::StreamExt;
use serde_json::Value;

use crate::layout::needed_blobs;
use crate::transfer::{Context as _, Progress, TransferError, parse};
use crate::{BlobSource, Registry, upstream_prefix};

/// What prefetching has done so far (over every image of a run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchTally {
    pub manifests: u64,
    pub blobs_fetched: u64,
    /// Bytes of the blobs fetched.
    pub bytes: u64,
    /// Blobs the cache held already.
    pub blobs_skipped: u64,
    /// Index entries left out for their platform.
    pub platforms_skipped: u64,
}

/// One image fetched: its manifest (or index) and every manifest kept with it, children
/// first and the image itself last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefetched {
    pub digest: Digest,
    pub kept: Vec<Digest>,
}

/// An image as nodes name it, `docker.io/library/nginx:1.27` or
/// `registry.internal:5000/team/app@sha256:…`: the cached repository it lives in (an
/// upstream with a port is cached under its prefix, without the `:`) and its reference
/// (`latest` when it names none, as clients do).
pub fn upstream_image(image: &str) -> Result<(RepoName, Reference), TransferError> {
    let name = match image.split_once('/') {
        Some((host, rest)) if host.contains(':') => {
            format!("{}/{rest}", upstream_prefix(host))
        }
        _ => image.to_owned(),
    };
    let parsed: ImageRef = name
        .parse()
        .map_err(|e| TransferError::Invalid(format!("{image}: {e}")))?;
    let reference = match parsed.reference {
        Some(r) => r,
        None => Reference::Tag(
            "latest"
                .parse()
                .map_err(|e| TransferError::Invalid(format!("latest: {e}")))?,
        ),
    };
    Ok((parsed.repo, reference))
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

/// A prefetching run: the platforms it keeps, who it acts as, and its tally.
pub struct Prefetch<'a> {
    registry: &'a Registry,
    platforms: Vec<String>,
    actor: Actor,
    progress: &'a dyn Progress,
    pub tally: PrefetchTally,
}

impl<'a> Prefetch<'a> {
    /// `platforms`: `linux/amd64`, `linux/arm64/v8`...; empty keeps every platform.
    pub fn new(
        registry: &'a Registry,
        platforms: Vec<String>,
        actor: Actor,
        progress: &'a dyn Progress,
    ) -> Prefetch<'a> {
        Prefetch {
            registry,
            platforms,
            actor,
            progress,
            tally: PrefetchTally::default(),
        }
    }

    /// Fetches `repo:reference` from its upstream into the cache, with the children of
    /// the platforms wanted and every blob they need.
    pub async fn image(
        &mut self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Prefetched, TransferError> {
        let mut kept = Vec::new();
        let digest = self.manifest(repo, reference, &mut kept).await?;
        // Their signatures too, before the command ends (a pull fetches them in the
        // background); joins a fetch a pull already started.
        for d in &kept {
            self.registry.fetch_signatures(repo, d).await;
        }
        Ok(Prefetched { digest, kept })
    }

    async fn blob(&mut self, repo: &RepoName, d: &Digest) -> Result<(), TransferError> {
        if self.registry.stat_blob(repo, d).await.is_ok() {
            self.tally.blobs_skipped += 1;
            return Ok(());
        }
        let source = self
            .registry
            .fetch_blob(repo, d, true)
            .await
            .context(|| format!("fetching blob {d} of {repo}"))?;
        let pulled = match source {
            BlobSource::Stored => {
                self.tally.blobs_skipped += 1;
                return Ok(());
            }
            BlobSource::Upstream(pulled) => pulled,
        };
        let Some(mut body) = pulled.body else {
            return Err(TransferError::Invalid(format!(
                "the upstream sent no body for blob {d}"
            )));
        };
        self.progress.blob_started(d, pulled.size);
        // The cache stores the blob as it streams past; reading it to the end is what
        // makes it land (and be verified).
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| TransferError::Invalid(format!("fetching blob {d} of {repo}: {e}")))?;
            self.progress.bytes(chunk.len() as u64);
            self.tally.bytes += chunk.len() as u64;
        }
        self.progress.blob_finished(d);
        self.tally.blobs_fetched += 1;
        Ok(())
    }

    /// Fetches a manifest and what it needs, adding the manifests it keeps to `kept`
    /// (children first); its digest.
    async fn manifest(
        &mut self,
        repo: &RepoName,
        reference: &Reference,
        kept: &mut Vec<Digest>,
    ) -> Result<Digest, TransferError> {
        let pulled = self
            .registry
            .get_manifest_proxied(repo, reference)
            .await
            .context(|| format!("fetching manifest {repo}:{reference}"))?;
        let m = pulled.manifest;
        if let Some(w) = pulled.warning {
            self.progress.warning(&w);
        }
        self.tally.manifests += 1;
        let parsed = parse(&m.content, Some(&m.media_type), || {
            format!("manifest {} of {repo}", m.digest)
        })?;
        if !parsed.manifests.is_empty() {
            // The parsed index keeps no platforms: read them from the raw entries.
            let raw: Value = serde_json::from_slice(&m.content).map_err(|e| {
                TransferError::Invalid(format!("manifest {} of {repo}: {e}", m.digest))
            })?;
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
        for d in needed_blobs(&parsed) {
            self.blob(repo, &d).await?;
        }
        kept.push(m.digest.clone());
        Ok(m.digest)
    }

    /// Copies what `image` fetched from the cache repository `from` into the ordinary
    /// repository `target`: blobs mounted, then manifests children first, then `tag` on
    /// the image itself. A sparse copy (some platforms left out) needs
    /// `allow_sparse_index` for the index; otherwise the children are all there.
    pub async fn copy(
        &mut self,
        from: &RepoName,
        image: &Prefetched,
        target: &RepoName,
        tag: Option<&Tag>,
    ) -> Result<(), TransferError> {
        for d in &image.kept {
            let m = self
                .registry
                .get_manifest(from, &Reference::Digest(d.clone()))
                .await
                .context(|| format!("reading manifest {d} of {from}"))?;
            let reference = match tag {
                Some(t) if *d == image.digest => Reference::Tag(t.clone()),
                _ => Reference::Digest(d.clone()),
            };
            self.put_copy(from, target, d, &reference, m).await?;
        }
        // The signatures, attestations, SBOMs and referrers the cache holds for them,
        // after their subjects (a copy is judged like the cached image).
        for d in &image.kept {
            self.copy_attached(from, d, target).await?;
        }
        Ok(())
    }

    /// Mounts the blobs of `m` (manifest `d` of `from`) into `target` and stores it there
    /// as `reference`.
    async fn put_copy(
        &mut self,
        from: &RepoName,
        target: &RepoName,
        d: &Digest,
        reference: &Reference,
        m: crate::Manifest,
    ) -> Result<(), TransferError> {
        let parsed = parse(&m.content, Some(&m.media_type), || format!("manifest {d}"))?;
        for b in needed_blobs(&parsed) {
            let mounted = self
                .registry
                .mount_blob(target, &b, from, &self.actor)
                .await
                .context(|| format!("mounting blob {b} into {target}"))?;
            if !mounted {
                return Err(TransferError::Invalid(format!(
                    "blob {b} is not in {from} to copy"
                )));
            }
        }
        self.registry
            .put_manifest(
                target,
                reference,
                Some(&m.media_type),
                m.content,
                &self.actor,
            )
            .await
            .context(|| format!("storing manifest {d} in {target}"))?;
        Ok(())
    }

    /// Copies what is attached to `subject` in `from` (the cosign `sha256-<hex>.sig`,
    /// `.att`, `.sbom` tags and the referrers) into `target`. One whose blobs the cache
    /// does not hold is left out with a warning: the image copy stands without it.
    async fn copy_attached(
        &mut self,
        from: &RepoName,
        subject: &Digest,
        target: &RepoName,
    ) -> Result<(), TransferError> {
        let attached = self
            .registry
            .attached_refs(from, subject)
            .await
            .context(|| format!("listing what is attached to {subject} in {from}"))?;
        for reference in attached {
            let m = match self.registry.get_manifest(from, &reference).await {
                Ok(m) => m,
                Err(crate::RegistryError::ManifestUnknown) => continue,
                Err(source) => {
                    return Err(TransferError::Registry {
                        what: format!("reading {from}:{reference}"),
                        source,
                    });
                }
            };
            let d = m.digest.clone();
            if let Err(e) = self.put_copy(from, target, &d, &reference, m).await {
                self.progress
                    .warning(&format!("{from}:{reference} not copied: {e}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        let name = |i: &str| {
            let (r, t) = upstream_image(i).expect(i);
            (r.to_string(), t.to_string())
        };
        assert_eq!(
            name("docker.io/library/nginx:1.27"),
            ("docker.io/library/nginx".into(), "1.27".into())
        );
        assert_eq!(name("ghcr.io/org/app").1, "latest");
        assert!(upstream_image("docker.io/Nginx:1").is_err());
        assert_eq!(
            name("registry.internal:5000/team/app:v2"),
            ("registry.internal_5000/team/app".into(), "v2".into())
        );
        assert_eq!(
            name("127.0.0.1:5001/app"),
            ("127.0.0.1_5001/app".into(), "latest".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(name(&format!("ghcr.io/org/app@{d}")).1, d);
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
