//! Pull-through caching: a repository whose first name component is a configured upstream
//! (`docker.io/library/nginx`) is filled from that upstream on a miss.
//!
//! * Manifests by digest are fetched once and kept forever (content-addressed: they cannot
//!   change). Tags are re-checked with a `HEAD` at most once per the upstream's TTL; when
//!   the upstream is unavailable the last known digest is served with a warning.
//! * Blobs are streamed to the client while the same bytes go through the ordinary upload
//!   path (hashed while written); the blob is linked only if its digest verifies, and the
//!   client's last chunk is held back until then, so a corrupt blob is never completed
//!   for the client either.
//! * Concurrent misses of one manifest or blob are one upstream fetch (`flight`): the
//!   first request fetches, the others wait and are then answered from storage.
//! * An upstream "not found" is remembered for `negative_ttl`, so a client retrying a
//!   missing tag does not turn into a stream of upstream requests.
//! * An upstream's `429` (and `503` with `Retry-After`) is respected by the client in
//!   `berth-upstream`: until the time is up it is not contacted, cached content is served
//!   (tags with a warning) and misses get the remaining wait.
//!
//! * An image's signatures, attestations, SBOMs and referrers come with it
//!   (`fetch_signatures`), once per digest and TTL, coalesced like the manifests.
//!
//! Not yet: sharing one upstream stream among concurrent clients (followers
//! wait for the whole blob to be stored).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::{Actor, NewManifest, PutManifest};
use berth_oci::manifest::parse_manifest;
use berth_oci::{Digest, Reference, RepoName};
use berth_upstream::{FetchedManifest, Upstream, UpstreamConfig, UpstreamError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::flight::{self, Flights, Lead, Seat};
use crate::{Manifest, Registry, RegistryError, Result, cache};

/// One configured upstream and how long what it said is trusted.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub client: UpstreamConfig,
    /// A tag is re-checked upstream when it was last checked longer ago than this.
    pub tag_ttl: Duration,
    /// An upstream "not found" is believed this long without asking again.
    pub negative_ttl: Duration,
    /// Globs over upstream-relative repository names (`library/*`) this upstream serves;
    /// empty: all. Other names under its prefix are not asked for.
    pub repositories: Vec<String>,
    /// Keep what is fetched (a pull-through cache); false: pass every request through and
    /// store nothing.
    pub cache: bool,
}

/// The first component of the repositories an upstream's cache holds, and the name of its
/// tenant: the upstream's host, with `_` for the `:` before a port
/// (`registry.internal:5000` → `registry.internal_5000`). A repository name cannot hold
/// a `:`, and a host name cannot hold a `_`, so no two upstreams share a prefix and no
/// plain host can take one that means a port.
pub fn upstream_prefix(name: &str) -> String {
    name.replace(':', "_")
}

struct Route {
    upstream: Upstream,
    /// [`upstream_prefix`] of the upstream's name.
    prefix: String,
    tag_ttl: Duration,
    negative_ttl: Duration,
    repositories: Vec<crate::tag_rules::Glob>,
    cache: bool,
    counters: RouteCounters,
}

/// What one upstream's cache did on this replica since it started (the operations page).
#[derive(Default)]
struct RouteCounters {
    /// Manifest requests answered from the cache: fresh, by digest, or a tag the upstream
    /// confirmed unchanged with a HEAD.
    hits: AtomicU64,
    /// Manifest requests that fetched the manifest from the upstream.
    fills: AtomicU64,
    /// Cached tags served because the upstream was unavailable.
    stale: AtomicU64,
    /// Upstream requests that failed (not counting "not found"), and the latest one.
    failures: AtomicU64,
    last_failure: Mutex<Option<(i64, String)>>,
}

impl RouteCounters {
    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn fill(&self) {
        self.fills.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, e: &UpstreamError) {
        if matches!(e, UpstreamError::NotFound) {
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some((berth_meta::now_micros(), e.to_string()));
        }
    }
}

/// One upstream's cache as this replica saw it since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    pub name: String,
    /// Whether it caches (otherwise every request passes through).
    pub cache: bool,
    pub hits: u64,
    pub fills: u64,
    pub stale: u64,
    pub failures: u64,
    /// When (microseconds) and why the latest failure happened.
    pub last_failure: Option<(i64, String)>,
}

/// An outcome shared by a flight's leader with its followers.
type Shared<T> = std::result::Result<T, Arc<RegistryError>>;

pub(crate) struct Proxy {
    routes: Vec<Route>,
    /// When each (repo, tag) was last confirmed upstream. In memory: after a restart every
    /// tag is re-checked once, which costs one HEAD and is never wrong.
    checked: Mutex<HashMap<String, Instant>>,
    /// Until when an upstream "not found" for (repo, reference or digest) stands.
    missing: Mutex<HashMap<String, Instant>>,
    manifests: Flights<Shared<Pulled>>,
    blobs: Flights<Shared<()>>,
    /// One signature fetch per (repo, digest) at a time; when it last succeeded is in
    /// `checked` under [`signatures_key`].
    signatures: Flights<Shared<()>>,
}

impl Proxy {
    pub(crate) fn new(settings: Vec<UpstreamSettings>) -> Result<Proxy> {
        let routes = settings
            .into_iter()
            .map(|s| {
                let repositories = s
                    .repositories
                    .iter()
                    .map(|p| {
                        crate::tag_rules::Glob::new(p).map_err(|w| {
                            RegistryError::Invalid(format!(
                                "upstream {}: repositories pattern {p:?}: {w}",
                                s.client.name
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Route {
                    prefix: upstream_prefix(&s.client.name),
                    upstream: Upstream::new(s.client)
                        .map_err(|e| RegistryError::Invalid(e.to_string()))?,
                    tag_ttl: s.tag_ttl,
                    negative_ttl: s.negative_ttl,
                    repositories,
                    cache: s.cache,
                    counters: RouteCounters::default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Proxy {
            routes,
            checked: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            manifests: Flights::default(),
            blobs: Flights::default(),
            signatures: Flights::default(),
        })
    }

    fn status(&self) -> Vec<UpstreamStatus> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.routes
            .iter()
            .map(|r| UpstreamStatus {
                name: r.upstream.name().to_owned(),
                cache: r.cache,
                hits: get(&r.counters.hits),
                fills: get(&r.counters.fills),
                stale: get(&r.counters.stale),
                failures: get(&r.counters.failures),
                last_failure: r.counters.last_failure.lock().ok().and_then(|l| l.clone()),
            })
            .collect()
    }

    /// The upstream serving `repo`, and the repository name to ask it for.
    fn route(&self, repo: &RepoName) -> Option<(&Route, String)> {
        let (first, rest) = repo.as_str().split_once('/')?;
        let route = self.routes.iter().find(|r| r.prefix == first)?;
        let remote = route.upstream.config().remote_repo(rest);
        if !route.repositories.is_empty() && !route.repositories.iter().any(|g| g.matches(&remote))
        {
            return None;
        }
        Some((route, remote))
    }

    fn fresh(&self, key: &str, ttl: Duration) -> bool {
        self.checked
            .lock()
            .ok()
            .and_then(|m| m.get(key).map(|t| t.elapsed() < ttl))
            .unwrap_or(false)
    }

    fn mark_checked(&self, key: String) {
        if let Ok(mut m) = self.checked.lock() {
            // Signature lookups add a key per pulled digest: old entries go when the map
            // grows (a forgotten entry costs one more upstream check, never a wrong answer).
            if m.len() >= 65_536 {
                m.retain(|_, at| at.elapsed() < Duration::from_secs(600));
            }
            m.insert(key, Instant::now());
        }
    }

    fn known_missing(&self, key: &str) -> bool {
        let Ok(mut m) = self.missing.lock() else {
            return false;
        };
        match m.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                m.remove(key);
                false
            }
            None => false,
        }
    }

    fn mark_missing(&self, key: String, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.missing.lock() {
            let now = Instant::now();
            // Expired entries go when the map grows, so a scan of random names cannot
            // grow it for longer than one TTL.
            if m.len() >= 4096 {
                m.retain(|_, until| *until > now);
            }
            m.insert(key, now + ttl);
        }
    }
}

/// A manifest served through the cache; `warning` is set when it may be stale.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub manifest: Manifest,
    pub warning: Option<String>,
}

/// Where a blob that was not in storage comes from now.
pub enum BlobSource {
    /// Another request fetched it meanwhile (or it was there after all): read it locally.
    Stored,
    /// On its way from the upstream (stored as it passes).
    Upstream(PulledBlob),
}

/// A blob on its way from an upstream to the client (and into storage).
pub struct PulledBlob {
    /// The upstream's `Content-Length`, if it sent one.
    pub size: Option<u64>,
    /// None for a `HEAD`.
    pub body: Option<std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>>,
}

/// What an upstream failure means for a request that has nothing cached to fall back on.
fn upstream_error(upstream: &str, e: UpstreamError) -> RegistryError {
    match e {
        UpstreamError::Throttled { retry_after } => RegistryError::UpstreamThrottled {
            upstream: upstream.to_owned(),
            retry_after_secs: retry_after.as_secs().max(1),
        },
        UpstreamError::Unavailable {
            reason,
            retry_after,
        } => RegistryError::UpstreamUnavailable {
            reason: format!("{upstream}: {reason}"),
            retry_after_secs: retry_after.map(|d| d.as_secs().max(1)),
        },
        other => RegistryError::UpstreamFailed(format!("{upstream}: {other}")),
    }
}

/// A leader's error, rebuilt for a follower (errors are not `Clone`: they may hold I/O
/// errors). What a client can act on keeps its kind; the rest becomes `UpstreamFailed`.
fn replay(e: &RegistryError) -> RegistryError {
    use RegistryError as R;
    match e {
        R::ManifestUnknown => R::ManifestUnknown,
        R::BlobUnknown => R::BlobUnknown,
        R::UpstreamThrottled {
            upstream,
            retry_after_secs,
        } => R::UpstreamThrottled {
            upstream: upstream.clone(),
            retry_after_secs: *retry_after_secs,
        },
        R::UpstreamUnavailable {
            reason,
            retry_after_secs,
        } => R::UpstreamUnavailable {
            reason: reason.clone(),
            retry_after_secs: *retry_after_secs,
        },
        R::ManifestTooLarge { limit } => R::ManifestTooLarge { limit: *limit },
        other => R::UpstreamFailed(other.to_string()),
    }
}

fn share<T: Clone>(r: &Result<T>) -> Shared<T> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(Arc::new(replay(e))),
    }
}

fn unshare<T>(r: Shared<T>) -> Result<T> {
    r.map_err(|e| replay(&e))
}

impl Registry {
    /// Adds pull-through upstreams; repositories under their names are filled from them.
    pub fn with_upstreams(mut self, upstreams: Vec<UpstreamSettings>) -> Result<Registry> {
        self.proxy = if upstreams.is_empty() {
            None
        } else {
            Some(Arc::new(Proxy::new(upstreams)?))
        };
        Ok(self)
    }

    /// The upstream whose cache holds `repo`, if any. Its content is written only by the
    /// cache: pushes and deletes there are refused.
    pub fn cached_upstream(&self, repo: &RepoName) -> Option<&str> {
        let proxy = self.proxy.as_ref()?;
        proxy.route(repo).map(|(r, _)| r.upstream.name())
    }

    /// The repository of the cache holding `path` of the upstream registry `host` (as
    /// nodes name it: `docker.io`, `ghcr.io`), if an upstream of that name serves it.
    pub(crate) fn cache_repo_for_host(&self, host: &str, path: &str) -> Option<RepoName> {
        let proxy = self.proxy.as_ref()?;
        let route = proxy
            .routes
            .iter()
            .find(|r| r.upstream.name().eq_ignore_ascii_case(host))?;
        let remote = route.upstream.config().remote_repo(path);
        let repo: RepoName = format!("{}/{remote}", route.prefix).parse().ok()?;
        proxy.route(&repo).map(|_| repo)
    }

    /// The local repository a request names. containerd, used as a mirror, sends the
    /// upstream-relative name with `?ns=<host>` (with its port, if it has one); the cache
    /// keeps it under `<prefix>/<name>` so prefix and mirror requests share one copy
    /// (Docker Hub's `library/` applied). Host names compare without case, as DNS does.
    pub fn proxy_name(&self, name: RepoName, ns: Option<&str>) -> RepoName {
        let (Some(proxy), Some(ns)) = (&self.proxy, ns) else {
            return name;
        };
        let Some(route) = proxy
            .routes
            .iter()
            .find(|r| r.upstream.name().eq_ignore_ascii_case(ns))
        else {
            return name;
        };
        let remote = route.upstream.config().remote_repo(name.as_str());
        format!("{}/{remote}", route.prefix).parse().unwrap_or(name)
    }

    /// Each upstream's cache on this replica since it started, in configuration order.
    pub fn upstream_status(&self) -> Vec<UpstreamStatus> {
        self.proxy.as_ref().map(|p| p.status()).unwrap_or_default()
    }

    /// `get_manifest`, filling from the upstream when `repo` is under one. Notes the pull
    /// for retention policies and cache eviction.
    ///
    /// A cached image's signatures, attestations, SBOMs and referrers come along
    /// ([`Registry::fetch_signatures`]): before the answer when signatures judge pulls of
    /// `repo` (so the first pull is judged with them), else in the background, so the
    /// pull itself waits for nothing more.
    pub async fn get_manifest_proxied(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Pulled> {
        let pulled = self.get_manifest_filled(repo, reference).await?;
        self.note_pull(repo, &pulled.manifest.digest);
        if self.brings_signatures(repo, reference, &pulled.manifest) {
            // Served stale: the upstream is down, and waiting for it again helps no one.
            if pulled.warning.is_none() && self.policy().wants_signatures(repo.as_str()) {
                self.fetch_signatures(repo, &pulled.manifest.digest).await;
            } else {
                let (this, repo, digest) =
                    (self.clone(), repo.clone(), pulled.manifest.digest.clone());
                tokio::spawn(async move { this.fetch_signatures(&repo, &digest).await });
            }
        }
        Ok(pulled)
    }

    /// Whether a pull of `m` should bring its signatures: a cached repository, and not
    /// itself something attached to another manifest (its signatures are not fetched:
    /// one level, as `cosign verify` and `notation verify` read them).
    fn brings_signatures(&self, repo: &RepoName, reference: &Reference, m: &Manifest) -> bool {
        let cached = self
            .proxy
            .as_ref()
            .and_then(|p| p.route(repo))
            .is_some_and(|(route, _)| route.cache);
        if !cached {
            return false;
        }
        if let Reference::Tag(t) = reference
            && crate::policy::attached_subject(t.as_str()).is_some()
        {
            return false;
        }
        // A referrer names its subject; only manifests that name none are fetched for.
        !serde_json::from_slice::<serde_json::Value>(&m.content)
            .is_ok_and(|v| v.get("subject").is_some_and(|s| !s.is_null()))
    }

    /// Brings the signatures of the cached image `digest` of `repo` from its upstream:
    /// the cosign tags `sha256-<hex>.sig`, `.att` and `.sbom`, and every referrer (by the
    /// referrers API, else the referrers tag schema `sha256-<hex>`), each with its blobs,
    /// stored like any cached manifest. Once per digest within the longer of the
    /// upstream's tag and negative TTLs (signatures can be added later, so the lookup is
    /// a tag's), one fetch at a time for concurrent pulls (followers wait for it). Failures are counted and logged,
    /// never the pull's: what is stored already keeps serving when the upstream is down.
    pub async fn fetch_signatures(&self, repo: &RepoName, digest: &Digest) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        let Some((route, remote)) = proxy.route(repo) else {
            return;
        };
        if !route.cache {
            return;
        }
        let key = signatures_key(repo, digest);
        // Found signatures are believed for the tag TTL, absent ones for the negative
        // TTL: the lookup as a whole stands for the longer of the two.
        let ttl = route.tag_ttl.max(route.negative_ttl);
        let failed_key = format!("{key}!failed");
        if proxy.fresh(&key, ttl) || proxy.fresh(&failed_key, SIGNATURE_RETRY) {
            return;
        }
        loop {
            match proxy.signatures.join(&key) {
                Seat::Follower(rx) => match flight::wait(rx).await {
                    Some(_) => return,
                    None => continue, // the leader was cancelled: try again
                },
                Seat::Leader(lead) => {
                    // A flight that ended between our check and `join` did the work.
                    if proxy.fresh(&key, ttl) {
                        lead.land(Ok(()));
                        return;
                    }
                    let complete = self
                        .fetch_signatures_now(route, &remote, repo, digest)
                        .await;
                    if complete {
                        proxy.mark_checked(key);
                    } else {
                        // Not before a while: with the upstream down or hanging, every
                        // pull would otherwise wait for its timeouts again.
                        proxy.mark_checked(failed_key);
                    }
                    lead.land(Ok(()));
                    return;
                }
            }
        }
    }

    /// The work of [`Registry::fetch_signatures`]; true when every lookup had an answer
    /// (found or absent), so the digest need not be looked at again within the TTL.
    async fn fetch_signatures_now(
        &self,
        route: &Route,
        remote: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> bool {
        let Some(hex) = digest.as_str().strip_prefix("sha256:") else {
            return true; // the tag scheme and the tag schema know SHA-256 only
        };
        let mut complete = true;
        let stats = self.stats();
        for suffix in SIGNATURE_SUFFIXES {
            let Ok(tag) = format!("sha256-{hex}.{suffix}").parse() else {
                continue;
            };
            match self.get_manifest_filled(repo, &Reference::Tag(tag)).await {
                Ok(p) => match self.fetch_attached_blobs(repo, &p.manifest).await {
                    Ok(()) => crate::stats::bump(&stats.signature_fetched, 1),
                    Err(e) => {
                        complete = false;
                        crate::stats::bump(&stats.signature_failed, 1);
                        tracing::warn!(%repo, %digest, suffix, error = %e,
                            "signature blobs not fetched from the upstream");
                    }
                },
                Err(RegistryError::ManifestUnknown) => {
                    crate::stats::bump(&stats.signature_absent, 1)
                }
                Err(e) => {
                    complete = false;
                    crate::stats::bump(&stats.signature_failed, 1);
                    tracing::warn!(%repo, %digest, suffix, error = %e,
                        "signature not fetched from the upstream");
                }
            }
        }
        let up = &route.upstream;
        let listed = match up.referrers(remote, digest).await {
            Ok(Some(list)) => Ok(list),
            // No referrers API upstream: the referrers tag schema's index, if any.
            Ok(None) => {
                let schema = format!("sha256-{hex}");
                match schema.parse() {
                    Ok(tag) => match up.get_manifest(remote, &Reference::Tag(tag)).await {
                        Ok(f) => Ok(berth_upstream::index_digests(&f.content).unwrap_or_default()),
                        Err(UpstreamError::NotFound) => Ok(Vec::new()),
                        Err(e) => Err(e),
                    },
                    Err(_) => Ok(Vec::new()),
                }
            }
            Err(e) => Err(e),
        };
        match listed {
            Ok(list) if list.is_empty() => crate::stats::bump(&stats.signature_absent, 1),
            Ok(list) => {
                let mut ok = true;
                for d in list.into_iter().take(MAX_REFERRERS) {
                    let r = match self
                        .get_manifest_filled(repo, &Reference::Digest(d.clone()))
                        .await
                    {
                        Ok(p) => self.fetch_attached_blobs(repo, &p.manifest).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        ok = false;
                        tracing::warn!(%repo, %digest, referrer = %d, error = %e,
                            "referrer not fetched from the upstream");
                    }
                }
                if ok {
                    crate::stats::bump(&stats.signature_fetched, 1);
                } else {
                    complete = false;
                    crate::stats::bump(&stats.signature_failed, 1);
                }
            }
            Err(e) => {
                complete = false;
                crate::stats::bump(&stats.signature_failed, 1);
                tracing::warn!(%repo, %digest, error = %e, "referrers not listed by the upstream");
            }
        }
        complete
    }

    /// What is attached to `subject` in `repo`: the cosign tags (`sha256-<hex>.sig`,
    /// `.att`, `.sbom`) that exist, then every referrer by digest. What export, mirror
    /// copies and eviction carry along with an image.
    pub(crate) async fn attached_refs(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Reference>> {
        let mut out = Vec::new();
        if let Some(hex) = subject.as_str().strip_prefix("sha256:") {
            for suffix in SIGNATURE_SUFFIXES {
                let Ok(tag) = format!("sha256-{hex}.{suffix}").parse() else {
                    continue;
                };
                let reference = Reference::Tag(tag);
                match self.get_manifest(repo, &reference).await {
                    Ok(_) => out.push(reference),
                    Err(RegistryError::ManifestUnknown) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for r in self
            .meta
            .referrers(repo.as_str(), subject.as_str(), None)
            .await?
        {
            if let Ok(d) = r.digest.parse() {
                out.push(Reference::Digest(d));
            }
        }
        Ok(out)
    }

    /// Deletes the signatures, attestations and SBOMs the cosign tags of a deleted
    /// manifest hold (`sha256-<hex>.sig`, by content, not by name alone): they belong to
    /// it, and a tag would otherwise keep them from garbage collection forever.
    /// Referrers need no help there (unreachable once their subject is gone); eviction
    /// deletes those itself.
    pub(crate) async fn drop_signature_tags(
        &self,
        repo: &RepoName,
        subject: &Digest,
        actor: &Actor,
    ) {
        let Some(hex) = subject.as_str().strip_prefix("sha256:") else {
            return;
        };
        for suffix in SIGNATURE_SUFFIXES {
            let Ok(tag) = format!("sha256-{hex}.{suffix}").parse() else {
                continue;
            };
            let m = match self.get_manifest(repo, &Reference::Tag(tag)).await {
                Ok(m) => m,
                Err(RegistryError::ManifestUnknown) => continue,
                Err(e) => {
                    tracing::warn!(repository = %repo, %subject, suffix, error = %e,
                        "could not read the signature of a deleted manifest");
                    continue;
                }
            };
            if !berth_verify::classify(&m.content).kind.is_supply_chain() {
                continue;
            }
            let r = Box::pin(self.delete_manifest(
                repo,
                &Reference::Digest(m.digest.clone()),
                actor,
                true,
            ))
            .await;
            match r {
                Ok(()) | Err(RegistryError::ManifestUnknown) => {}
                Err(e) => tracing::warn!(repository = %repo, %subject, suffix, error = %e,
                    "could not delete the signature of a deleted manifest"),
            }
        }
    }

    /// Stores the blobs of an attached manifest (config and layers, small for
    /// signatures): verification reads them from the store, and the upstream may be
    /// gone by the time they are needed. Larger ones arrive when a client asks.
    async fn fetch_attached_blobs(&self, repo: &RepoName, m: &Manifest) -> Result<()> {
        let parsed = parse_manifest(&m.content, Some(m.media_type.as_str()))
            .map_err(|e| RegistryError::UpstreamFailed(format!("manifest: {e}")))?;
        for d in parsed.config.iter().chain(&parsed.layers) {
            let Some(digest) = d.known_digest() else {
                continue;
            };
            if d.has_urls || d.size > MAX_ATTACHED_BLOB {
                continue;
            }
            match self.stat_blob(repo, &digest).await {
                Ok(_) => continue,
                Err(RegistryError::BlobUnknown) => {}
                Err(e) => return Err(e),
            }
            if let BlobSource::Upstream(PulledBlob {
                body: Some(mut body),
                ..
            }) = self.fetch_blob(repo, &digest, true).await?
            {
                // Read to the end: the blob is stored as it passes, and the last chunk
                // comes only once it verified.
                while let Some(chunk) = body.next().await {
                    chunk.map_err(|e| RegistryError::UpstreamFailed(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    async fn get_manifest_filled(&self, repo: &RepoName, reference: &Reference) -> Result<Pulled> {
        let routed = self.proxy.as_ref().and_then(|p| {
            let (route, remote) = p.route(repo)?;
            Some((p, route, remote))
        });
        let Some((proxy, route, remote)) = routed else {
            let (manifest, warning) = self.get_manifest_or_stale(repo, reference).await?;
            return Ok(Pulled { manifest, warning });
        };
        if !route.cache {
            return self.pass_manifest(route, &remote, reference).await;
        }
        let key = cache::key(repo.as_str(), &reference.to_string());
        if let Some(p) = self
            .manifest_from_cache(proxy, route, repo, reference)
            .await?
        {
            route.counters.hit();
            return Ok(p);
        }
        if proxy.known_missing(&key) {
            return Err(RegistryError::ManifestUnknown);
        }
        loop {
            match proxy.manifests.join(&key) {
                Seat::Follower(rx) => match flight::wait(rx).await {
                    Some(outcome) => return unshare(outcome),
                    None => continue, // the leader was cancelled: try again
                },
                Seat::Leader(lead) => {
                    // A flight that ended between our miss and `join` stored it already.
                    let r = match self
                        .manifest_from_cache(proxy, route, repo, reference)
                        .await
                    {
                        Ok(Some(p)) => {
                            route.counters.hit();
                            Ok(p)
                        }
                        Ok(None) => {
                            self.pull_manifest(proxy, route, &remote, repo, reference)
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    if matches!(r, Err(RegistryError::ManifestUnknown)) {
                        proxy.mark_missing(key, route.negative_ttl);
                    }
                    lead.land(share(&r));
                    return r;
                }
            }
        }
    }

    /// The cached answer if it needs no upstream: a manifest by digest that is here, or a
    /// tag checked within its TTL.
    async fn manifest_from_cache(
        &self,
        proxy: &Proxy,
        route: &Route,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Pulled>> {
        let fresh = match reference {
            // Content-addressed: once here, it is right forever.
            Reference::Digest(_) => true,
            Reference::Tag(tag) => {
                proxy.fresh(&cache::key(repo.as_str(), tag.as_str()), route.tag_ttl)
            }
        };
        if !fresh {
            return Ok(None);
        }
        match self.get_manifest(repo, reference).await {
            Ok(manifest) => Ok(Some(Pulled {
                manifest,
                warning: None,
            })),
            Err(RegistryError::ManifestUnknown) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the upstream (the flight's leader only).
    async fn pull_manifest(
        &self,
        proxy: &Proxy,
        route: &Route,
        remote: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Pulled> {
        let up = &route.upstream;
        match reference {
            Reference::Digest(_) => {
                if let Ok(manifest) = self.get_manifest(repo, reference).await {
                    route.counters.hit();
                    return Ok(Pulled {
                        manifest,
                        warning: None,
                    });
                }
                let fetched = up.get_manifest(remote, reference).await.map_err(|e| {
                    route.counters.failed(&e);
                    miss_error(up.name(), e, RegistryError::ManifestUnknown)
                })?;
                route.counters.fill();
                let manifest = self.store_pulled(repo, None, fetched, up.name()).await?;
                Ok(Pulled {
                    manifest,
                    warning: None,
                })
            }
            Reference::Tag(tag) => {
                let key = cache::key(repo.as_str(), tag.as_str());
                let local = match self.get_manifest(repo, reference).await {
                    Ok(m) => Some(m),
                    Err(RegistryError::ManifestUnknown) => None,
                    Err(e) => return Err(e),
                };
                match self
                    .refresh_tag(repo, tag, remote, up, local.as_ref())
                    .await
                {
                    Ok(manifest) => {
                        proxy.mark_checked(key);
                        if local.as_ref().is_some_and(|m| m.digest == manifest.digest) {
                            route.counters.hit();
                        } else {
                            route.counters.fill();
                        }
                        Ok(Pulled {
                            manifest,
                            warning: None,
                        })
                    }
                    Err(e) if e.is_transient() => {
                        route.counters.failed(&e);
                        let Some(manifest) = local else {
                            return Err(upstream_error(up.name(), e));
                        };
                        route.counters.stale.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%repo, %tag, upstream = up.name(), reason = %e,
                            "upstream unavailable; serving the cached tag");
                        crate::stats::bump(&self.stats().upstream_failures, 1);
                        crate::stats::bump(&self.stats().stale_served, 1);
                        Ok(Pulled {
                            manifest,
                            warning: Some(format!(
                                "299 - \"upstream {} unavailable; serving cached {}\"",
                                up.name(),
                                tag
                            )),
                        })
                    }
                    Err(UpstreamError::NotFound) => Err(RegistryError::ManifestUnknown),
                    Err(e) => {
                        route.counters.failed(&e);
                        Err(upstream_error(up.name(), e))
                    }
                }
            }
        }
    }

    /// Asks the upstream where `tag` points now and stores what is new. `HEAD` first: an
    /// unchanged tag costs no body and, on Docker Hub, no rate-limited pull.
    async fn refresh_tag(
        &self,
        repo: &RepoName,
        tag: &berth_oci::Tag,
        remote: &str,
        up: &Upstream,
        local: Option<&Manifest>,
    ) -> std::result::Result<Manifest, UpstreamError> {
        let reference = Reference::Tag(tag.clone());
        let fetched = match up.head_manifest(remote, &reference).await {
            Ok(d) if local.is_some_and(|m| m.digest == d) => {
                return local.cloned().ok_or(UpstreamError::NotFound);
            }
            Ok(d) => up.get_manifest(remote, &Reference::Digest(d)).await?,
            // Some registries answer HEAD without a digest header: fall back to GET.
            Err(UpstreamError::Invalid(_)) => up.get_manifest(remote, &reference).await?,
            Err(e) => return Err(e),
        };
        self.store_pulled(repo, Some(tag.as_str()), fetched, up.name())
            .await
            .map_err(|e| UpstreamError::Invalid(e.to_string()))
    }

    /// An upstream without caching: the manifest as the upstream has it now, stored
    /// nowhere. By digest the upstream client checks the bytes; by tag, the client does.
    async fn pass_manifest(
        &self,
        route: &Route,
        remote: &str,
        reference: &Reference,
    ) -> Result<Pulled> {
        let up = &route.upstream;
        match up.get_manifest(remote, reference).await {
            Ok(f) => {
                crate::stats::bump(&self.stats().upstream_manifests, 1);
                route.counters.fill();
                Ok(Pulled {
                    manifest: Manifest {
                        digest: f.digest,
                        media_type: f.media_type,
                        content: f.content,
                    },
                    warning: None,
                })
            }
            Err(UpstreamError::NotFound) => Err(RegistryError::ManifestUnknown),
            Err(e) => {
                crate::stats::bump(&self.stats().upstream_failures, 1);
                route.counters.failed(&e);
                Err(upstream_error(up.name(), e))
            }
        }
    }

    /// Stores an upstream manifest (exact bytes) and, if given, points `tag` at it. Its
    /// blobs are not required to be present: they are fetched when a client asks.
    async fn store_pulled(
        &self,
        repo: &RepoName,
        tag: Option<&str>,
        fetched: FetchedManifest,
        upstream: &str,
    ) -> Result<Manifest> {
        crate::stats::bump(&self.stats().upstream_manifests, 1);
        if fetched.content.len() as u64 > self.config.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge {
                limit: self.config.max_manifest_bytes,
            });
        }
        let content_type = Some(fetched.media_type.as_str()).filter(|t| !t.is_empty());
        let parsed = parse_manifest(&fetched.content, content_type)
            .map_err(|e| RegistryError::UpstreamFailed(format!("manifest: {e}")))?;
        // References are recorded (so deletes and fsck see them) but none is required:
        // blobs arrive lazily.
        let mut refs = crate::refs::manifest_refs(&parsed, true)?;
        for r in &mut refs {
            r.required = false;
        }
        let subject = parsed
            .subject
            .as_ref()
            .and_then(|s| s.known_digest())
            .map(|d| d.to_string());
        let annotations = if parsed.annotations.is_empty() {
            None
        } else {
            serde_json::to_string(&parsed.annotations).ok()
        };
        let media_type = parsed.kind.media_type();
        let actor = Actor::named(&format!("proxy:{upstream}"));
        // A cached image is cataloged like a pushed one: its catalog job is written with
        // it (webhooks and replication are for pushes only).
        let queued = std::sync::atomic::AtomicBool::new(false);
        let catalog_jobs = |c: &berth_meta::Change<'_>| match &self.catalog {
            Some(cat) => {
                let jobs = cat.jobs_for(c);
                if !jobs.is_empty() {
                    queued.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                jobs
            }
            None => Vec::new(),
        };
        let guard = berth_meta::TagGuard {
            jobs: &catalog_jobs,
            ..berth_meta::TagGuard::NONE
        };
        let outcome = self
            .meta
            .put_manifest_guarded(
                &NewManifest {
                    repo: repo.as_str(),
                    digest: fetched.digest.as_str(),
                    media_type,
                    artifact_type: parsed.artifact_type.as_deref(),
                    subject: subject.as_deref(),
                    annotations: annotations.as_deref(),
                    content: &fetched.content,
                    refs: &refs,
                    tags: tag.as_slice(),
                    actor: &actor,
                },
                guard,
            )
            .await?;
        if queued.load(std::sync::atomic::Ordering::Relaxed) {
            self.wake_jobs();
        }
        // No reference is required, so nothing can be missing; kept exhaustive so a new
        // rule in the metadata store cannot be ignored here silently.
        if let PutManifest::Missing(d) = outcome {
            return Err(RegistryError::ManifestBlobUnknown(d));
        }
        // A signature arriving changes its subject's verdict, as a pushed one does.
        if subject.is_some() || tag.is_some_and(|t| t.starts_with("sha256-")) {
            self.invalidate_verdicts(Some(repo.as_str()));
        }
        if let Some(tag) = tag {
            self.cache
                .tags
                .insert(cache::key(repo.as_str(), tag), fetched.digest.clone());
        }
        Ok(Manifest {
            digest: fetched.digest,
            media_type: media_type.to_owned(),
            content: fetched.content,
        })
    }

    /// On a local blob miss: the blob from the upstream (stored as it passes), or
    /// `Stored` when a concurrent fetch stored it meanwhile. `BlobUnknown` if `repo` is
    /// under no upstream.
    pub async fn fetch_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        with_body: bool,
    ) -> Result<BlobSource> {
        let Some(proxy) = &self.proxy else {
            return Err(RegistryError::BlobUnknown);
        };
        let Some((route, remote)) = proxy.route(repo) else {
            return Err(RegistryError::BlobUnknown);
        };
        let up = &route.upstream;
        let key = cache::key(repo.as_str(), digest.as_str());
        if proxy.known_missing(&key) {
            return Err(RegistryError::BlobUnknown);
        }
        let missing = |e: UpstreamError| {
            route.counters.failed(&e);
            if matches!(e, UpstreamError::NotFound) {
                proxy.mark_missing(key.clone(), route.negative_ttl);
            }
            miss_error(up.name(), e, RegistryError::BlobUnknown)
        };
        if !with_body {
            let size = up.head_blob(&remote, digest).await.map_err(missing)?;
            return Ok(BlobSource::Upstream(PulledBlob { size, body: None }));
        }
        if !route.cache {
            let fetched = up.get_blob(&remote, digest).await.map_err(missing)?;
            crate::stats::bump(&self.stats().upstream_blobs, 1);
            let body = fetched
                .body
                .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string())));
            return Ok(BlobSource::Upstream(PulledBlob {
                size: fetched.size,
                body: Some(Box::pin(body)),
            }));
        }
        let lead = loop {
            match proxy.blobs.join(&key) {
                Seat::Follower(rx) => match flight::wait(rx).await {
                    Some(outcome) => return unshare(outcome).map(|()| BlobSource::Stored),
                    None => continue, // the leader was cancelled: try again
                },
                Seat::Leader(lead) => break lead,
            }
        };
        // A flight that ended between our miss and `join` stored it already.
        match self.stat_blob(repo, digest).await {
            Ok(_) => {
                lead.land(Ok(()));
                return Ok(BlobSource::Stored);
            }
            Err(RegistryError::BlobUnknown) => {}
            Err(e) => {
                lead.land(Err(Arc::new(replay(&e))));
                return Err(e);
            }
        }
        let fetched = match up.get_blob(&remote, digest).await.map_err(missing) {
            Ok(f) => {
                crate::stats::bump(&self.stats().upstream_blobs, 1);
                f
            }
            Err(e) => {
                if !matches!(e, RegistryError::BlobUnknown) {
                    crate::stats::bump(&self.stats().upstream_failures, 1);
                }
                lead.land(Err(Arc::new(replay(&e))));
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let this = self.clone();
        let (repo, digest, name) = (repo.clone(), digest.clone(), up.name().to_owned());
        // Its own task: the blob is worth keeping even if this client goes away mid-way,
        // and the followers wait for it.
        tokio::spawn(async move {
            this.tee_blob(&repo, &digest, &name, fetched.body, tx, lead)
                .await;
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(BlobSource::Upstream(PulledBlob {
            size: fetched.size,
            body: Some(Box::pin(body)),
        }))
    }

    /// Copies the upstream body to the client and into a new upload at once. The last
    /// chunk reaches the client only after the digest verified; otherwise the client gets
    /// an error instead, and nothing is linked. The flight lands once the blob is linked
    /// (or failed), so followers find it in storage.
    async fn tee_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        upstream: &str,
        mut body: std::pin::Pin<Box<dyn Stream<Item = berth_upstream::Result<Bytes>> + Send>>,
        client: mpsc::Sender<std::io::Result<Bytes>>,
        lead: Lead<Shared<()>>,
    ) {
        let (store_tx, store_rx) = mpsc::channel::<berth_upstream::Result<Bytes>>(8);
        // An ordinary monolithic upload: verified as it lands, within the cache tenant's
        // quota if it has one, and removed again if anything fails.
        let store = async {
            let rx = futures_util::stream::unfold(store_rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let actor = Actor::named(&format!("proxy:{upstream}"));
            self.put_blob(repo, digest, None, rx, &actor).await
        };
        let pump = async {
            let mut pending: Option<Bytes> = None;
            let mut to_client = Some(client);
            while let Some(chunk) = body.next().await {
                let failed = chunk.is_err();
                let for_client = chunk.as_ref().ok().cloned();
                if store_tx.send(chunk).await.is_err() || failed {
                    break; // storage gave up, or the upstream body broke
                }
                if let (Some(prev), Some(tx)) = (pending.take(), &to_client)
                    && tx.send(Ok(prev)).await.is_err()
                {
                    to_client = None; // the client left; keep filling the cache
                }
                pending = for_client;
            }
            drop(store_tx);
            (pending, to_client)
        };
        let (stored, (pending, to_client)) = tokio::join!(store, pump);
        match stored {
            Ok(size) => {
                tracing::info!(%repo, %digest, size, upstream, "cached blob from upstream");
                lead.land(Ok(()));
                if let (Some(last), Some(tx)) = (pending, to_client) {
                    let _ = tx.send(Ok(last)).await;
                }
            }
            Err(e) => {
                tracing::warn!(%repo, %digest, upstream, error = %e, "upstream blob not cached");
                lead.land(Err(Arc::new(RegistryError::UpstreamFailed(format!(
                    "{upstream}: blob {digest} not stored: {e}"
                )))));
                if let Some(tx) = to_client {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                }
            }
        }
    }
}

/// The cosign tag scheme's suffixes fetched with an image: signatures, attestations,
/// SBOMs.
const SIGNATURE_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// How long after a signature lookup that failed (upstream down, say) it is not tried
/// again for the same digest.
const SIGNATURE_RETRY: Duration = Duration::from_secs(30);

/// Referrers of one image fetched at most; more is not a signed image but a flood.
const MAX_REFERRERS: usize = 64;

/// Blobs of attached manifests larger than this are left for a client to ask for.
const MAX_ATTACHED_BLOB: u64 = 16 << 20;

/// Where `checked` keeps when the signatures of `digest` were last fetched. A tag cannot
/// hold `+`, so no tag's key is the same.
fn signatures_key(repo: &RepoName, digest: &Digest) -> String {
    cache::key(repo.as_str(), &format!("{digest}+signatures"))
}

/// An upstream's "not found" is the registry's own miss; everything else keeps its cause.
fn miss_error(upstream: &str, e: UpstreamError, miss: RegistryError) -> RegistryError {
    match e {
        UpstreamError::NotFound => miss,
        other => upstream_error(upstream, other),
    }
}
