//! Pull-through caching over real HTTP: an upstream Berth and a caching Berth, both
//! `berth_server::run` on 127.0.0.1:0, driven by a plain HTTP client.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_auth::policy::CachePull;
use berth_meta::MetaStore;
use berth_registry::access::{AccessConfig, cli_identity};
use berth_registry::{Registry, RegistryConfig, UpstreamConfig, UpstreamSettings};
use berth_server::tls::TlsSettings;
use berth_server::{ChallengeKind, ServerConfig};
use berth_storage::{BlobStore, FsStore};
use common::{Cred, OCI_MANIFEST, Setup, TestServer as Server, sha256};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn start(upstreams: Vec<UpstreamSettings>) -> Server {
    start_with(Setup {
        upstreams,
        ..Setup::default()
    })
    .await
}

async fn start_with(setup: Setup) -> Server {
    common::start(setup).await
}

/// Authentication on, with these settings; `Basic` challenges.
fn basic_auth(config: AccessConfig) -> Option<(AccessConfig, ChallengeKind)> {
    Some((config, ChallengeKind::Basic))
}

fn upstream_settings(name: &str, url: &str, tag_ttl: Duration) -> UpstreamSettings {
    UpstreamSettings {
        client: UpstreamConfig {
            timeout: Duration::from_secs(2),
            ..UpstreamConfig::new(name, url)
        },
        tag_ttl,
        negative_ttl: Duration::from_secs(30),
        repositories: Vec::new(),
        cache: true,
    }
}

/// A caching Berth whose `docker.io` is the given upstream.
async fn cache_for(upstream: &Server, tag_ttl: Duration) -> Server {
    start(vec![upstream_settings(
        "docker.io",
        &upstream.base,
        tag_ttl,
    )])
    .await
}

/// How many requests of `route` and `method` a Berth has answered, by its `/metrics`.
async fn served(server: &Server, route: &str, method: &str) -> u64 {
    let text = server.metrics().await;
    let prefix = format!(r#"berth_http_requests_total{{route="{route}",method="{method}","#);
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

impl Server {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(method, path, &Cred::Anonymous)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.req(Method::GET, path).send().await.expect("send")
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.push_blob_as(&Cred::Anonymous, repo, data).await
    }

    /// Pushes an image (config + one layer) under `repo:tag`; returns manifest bytes and
    /// digest and the layer digest.
    async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, String, String) {
        self.push_image_as(&Cred::Anonymous, repo, &[tag], layer)
            .await
    }

    fn req_as(&self, method: Method, path: &str, user: Option<&str>) -> reqwest::RequestBuilder {
        let cred = user.map_or(Cred::Anonymous, Cred::user);
        self.request_as(method, path, &cred)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }
}

async fn body(r: reqwest::Response) -> Vec<u8> {
    r.bytes().await.expect("body").to_vec()
}

fn corrupt(path: &Path) {
    let mut data = std::fs::read(path).expect("read stored blob");
    data[0] ^= 0xff;
    std::fs::write(path, data).expect("write stored blob");
}

#[tokio::test]
async fn pulls_by_prefix_and_by_mirror_ns_then_serves_from_cache_when_upstream_is_down() {
    let mut upstream = start(Vec::new()).await;
    let layer = vec![7u8; 300_000];
    let (manifest, mdigest, ldigest) = upstream.push_image("library/app", "1.0", &layer).await;
    let cache = cache_for(&upstream, Duration::ZERO).await;

    // By prefix; Docker Hub's `library/` is explicit here.
    let r = cache.get("/v2/docker.io/library/app/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().ok(),
        Some(mdigest.as_str())
    );
    assert_eq!(
        r.headers()["content-type"].to_str().ok(),
        Some(OCI_MANIFEST)
    );
    assert!(r.headers().get("warning").is_none());
    assert_eq!(body(r).await, manifest, "exact upstream bytes");

    let r = cache
        .get(&format!("/v2/docker.io/library/app/blobs/{ldigest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, layer);

    // As a containerd mirror: upstream-relative single-segment name plus `?ns=`.
    let r = cache.get("/v2/app/manifests/1.0?ns=docker.io").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, manifest);
    let r = cache
        .get(&format!("/v2/docker.io/library/app/manifests/{mdigest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Unknown upstream tag and blob are plain misses, not upstream failures.
    let r = cache.get("/v2/docker.io/library/app/manifests/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let missing = sha256(b"not there");
    let r = cache
        .get(&format!("/v2/docker.io/library/app/blobs/{missing}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Upstream gone: the tag (TTL 0, so it is re-checked every time) is served from its
    // last known digest with a Warning; digests and blobs come from the cache.
    upstream.stop().await;
    let r = cache.get("/v2/docker.io/library/app/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()
            .get("warning")
            .and_then(|w| w.to_str().ok())
            .is_some_and(|w| w.starts_with("299 ")),
        "stale tag carries a Warning"
    );
    assert_eq!(body(r).await, manifest);
    let r = cache.get("/v2/app/manifests/1.0?ns=docker.io").await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = cache
        .get(&format!("/v2/app/blobs/{ldigest}?ns=docker.io"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, layer);

    // Never fetched and the upstream is down: 503, not a misleading 404.
    let r = cache.get("/v2/docker.io/library/other/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// What a cluster pinned by digest pulled through the cache is no garbage: a collection
/// keeps it, untagged as it is, and it still pulls with the upstream down. Only eviction
/// removes it, and then the collection frees its bytes.
#[tokio::test]
async fn cached_content_survives_gc_until_evicted() {
    use berth_registry::gc::GcOptions;
    use berth_registry::retention::CacheLimits;
    let mut upstream = start(Vec::new()).await;
    let layer = vec![9u8; 70_000];
    let (manifest, mdigest, ldigest) = upstream.push_image("library/pinned", "1.0", &layer).await;
    let cache = cache_for(&upstream, Duration::ZERO).await;
    let by_digest = format!("/v2/docker.io/library/pinned/manifests/{mdigest}");
    let blob = format!("/v2/docker.io/library/pinned/blobs/{ldigest}");
    assert_eq!(body(cache.get(&by_digest).await).await, manifest);
    assert_eq!(body(cache.get(&blob).await).await, layer);
    upstream.stop().await;

    let no_grace = GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
        rollback_window: Duration::ZERO,
    };
    let report = cache
        .registry
        .collect_garbage(&no_grace, &|_| {})
        .await
        .expect("gc");
    assert!(report.manifests_deleted.is_empty(), "{report:?}");
    assert!(report.blobs_deleted.is_empty(), "{report:?}");
    assert_eq!(body(cache.get(&by_digest).await).await, manifest);
    assert_eq!(body(cache.get(&blob).await).await, layer);

    let evicted = cache
        .registry
        .evict_cache(
            "docker.io",
            &CacheLimits {
                max_age: Some(Duration::ZERO),
                max_bytes: None,
            },
            false,
        )
        .await
        .expect("evict");
    assert_eq!(evicted.evicted.len(), 1);
    let report = cache
        .registry
        .collect_garbage(&no_grace, &|_| {})
        .await
        .expect("gc");
    assert!(report.blobs_deleted.iter().any(|(d, _)| *d == ldigest));
    assert!(!cache.blob_path(&ldigest).exists());
    // Gone from the cache and the upstream is down: unavailable, not a stale answer.
    assert_eq!(
        cache.get(&by_digest).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // And /metrics says what happened.
    let metrics = cache.metrics().await;
    for line in [
        "berth_upstream_manifests_fetched_total 1",
        "berth_upstream_blobs_fetched_total 1",
        "berth_gc_runs_total 2",
        "berth_cache_manifests_evicted_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.trim_end().ends_with("# EOF"));
}

/// An upstream serves only the repositories its globs name, and one with `cache = false`
/// passes everything through and keeps nothing.
#[tokio::test]
async fn repository_filter_and_pass_through_without_cache() {
    let mut upstream = start(Vec::new()).await;
    let layer = vec![3u8; 50_000];
    let (manifest, _, ldigest) = upstream.push_image("library/allowed", "1.0", &layer).await;
    upstream.push_image("library/other", "1.0", &layer).await;
    let total = |text: String| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("berth_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };

    let filtered = start(vec![UpstreamSettings {
        repositories: vec!["library/allowed*".into()],
        ..upstream_settings("docker.io", &upstream.base, Duration::ZERO)
    }])
    .await;
    let r = filtered
        .get("/v2/docker.io/library/allowed/manifests/1.0")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Its signatures are looked up in the background: done before counting.
    signature_lookups_settle(&filtered, 4).await;
    let before = total(upstream.metrics().await);
    let r = filtered
        .get("/v2/docker.io/library/other/manifests/1.0")
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = filtered.get("/v2/other/manifests/1.0?ns=docker.io").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let after = total(upstream.metrics().await);
    // A /metrics request is counted after it answers: only the first one's own count
    // separates the two readings.
    assert!(
        after - before <= 1,
        "the upstream was asked for a filtered-out name"
    );

    let pass = start(vec![UpstreamSettings {
        cache: false,
        ..upstream_settings("quay.io", &upstream.base, Duration::from_secs(300))
    }])
    .await;
    let r = pass.get("/v2/quay.io/library/allowed/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, manifest);
    let r = pass
        .get(&format!("/v2/quay.io/library/allowed/blobs/{ldigest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, layer);
    assert!(!pass.blob_path(&ldigest).exists(), "nothing stored");
    let local: berth_oci::RepoName = "quay.io/library/allowed".parse().expect("name");
    assert!(
        !pass
            .registry
            .meta()
            .repo_exists(local.as_str())
            .await
            .expect("meta")
    );
    upstream.stop().await;
    let r = pass.get("/v2/quay.io/library/allowed/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn fresh_tags_are_not_rechecked_and_moved_tags_are_seen_after_the_ttl() {
    let upstream = start(Vec::new()).await;
    let (_, first, _) = upstream.push_image("team/app", "latest", b"one").await;
    let cache = cache_for(&upstream, Duration::from_secs(3600)).await;
    let digest_of = |r: &reqwest::Response| {
        r.headers()["docker-content-digest"]
            .to_str()
            .expect("digest")
            .to_owned()
    };
    let r = cache.get("/v2/docker.io/team/app/manifests/latest").await;
    assert_eq!(digest_of(&r), first);
    let (_, second, _) = upstream.push_image("team/app", "latest", b"two").await;
    // Within the TTL the cache does not ask again.
    let r = cache.get("/v2/docker.io/team/app/manifests/latest").await;
    assert_eq!(digest_of(&r), first);

    let short = cache_for(&upstream, Duration::ZERO).await;
    let r = short.get("/v2/docker.io/team/app/manifests/latest").await;
    assert_eq!(digest_of(&r), second);
    let (_, third, _) = upstream.push_image("team/app", "latest", b"three").await;
    let r = short.get("/v2/docker.io/team/app/manifests/latest").await;
    assert_eq!(digest_of(&r), third);
}

#[tokio::test]
async fn corrupt_upstream_blob_is_refused_and_not_cached() {
    let upstream = start(Vec::new()).await;
    let layer = vec![42u8; 200_000];
    let (_, _, ldigest) = upstream.push_image("library/app", "1.0", &layer).await;
    corrupt(&upstream.blob_path(&ldigest));
    let cache = cache_for(&upstream, Duration::ZERO).await;

    let path = format!("/v2/docker.io/library/app/blobs/{ldigest}");
    let r = cache.get(&path).await;
    // Headers went out before the digest could be checked; the body must then fail
    // rather than complete with the wrong bytes.
    assert!(
        r.bytes().await.is_err(),
        "a corrupt blob never completes for the client"
    );
    // Nothing was linked: a HEAD asks the upstream again rather than claiming to have it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let head = cache.req(Method::HEAD, &path).send().await.expect("send");
    assert_eq!(head.status(), StatusCode::OK);
    assert!(
        !cache.blob_path(&ldigest).exists(),
        "corrupt blob not stored"
    );

    // Once the upstream serves the right bytes, the same pull works and is cached.
    std::fs::write(upstream.blob_path(&ldigest), &layer).expect("repair upstream blob");
    let r = cache.get(&path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, layer);
    assert_eq!(
        std::fs::read(cache.blob_path(&ldigest)).expect("cached"),
        layer
    );
}

/// `Prefetch` (behind `berth mirror`) through a real upstream: only the platforms asked
/// for land in the cache, a second run fetches nothing, and a copy into an ordinary
/// repository is served with the upstream gone.
#[tokio::test]
async fn prefetch_takes_the_platforms_asked_for_and_copies_into_a_repository() {
    use berth_registry::prefetch::{Prefetch, upstream_image};
    use berth_registry::transfer::NoProgress;
    let mut upstream = start(Vec::new()).await;
    let (amd, amd_digest, amd_layer) = upstream
        .push_image("library/app", "amd", &[1u8; 5000])
        .await;
    let (arm, arm_digest, arm_layer) = upstream
        .push_image("library/app", "arm", &[2u8; 7000])
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd_digest, "size": amd.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": arm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))
    .expect("json");
    let r = upstream
        .req(Method::PUT, "/v2/library/app/manifests/multi")
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let cache = cache_for(&upstream, Duration::from_secs(300)).await;
    let config_len = br#"{"architecture":"amd64","os":"linux"}"#.len() as u64;

    let (repo, reference) = upstream_image("docker.io/library/app:multi").expect("image");
    let cli = || berth_registry::Actor::named("cli");
    let mut arm_only = Prefetch::new(
        &cache.registry,
        vec!["linux/arm64".into()],
        cli(),
        &NoProgress,
    );
    let got = arm_only.image(&repo, &reference).await.expect("prefetch");
    assert_eq!(got.digest.to_string(), sha256(&index));
    let kept: Vec<String> = got.kept.iter().map(ToString::to_string).collect();
    assert_eq!(kept, [arm_digest.clone(), sha256(&index)]);
    let t = &arm_only.tally;
    assert_eq!(
        (
            t.manifests,
            t.blobs_fetched,
            t.bytes,
            t.blobs_skipped,
            t.platforms_skipped
        ),
        (2, 2, config_len + 7000, 0, 1)
    );
    let digest = |d: &str| d.parse::<berth_oci::Digest>().expect("digest");
    assert!(
        cache
            .registry
            .stat_blob(&repo, &digest(&arm_layer))
            .await
            .is_ok()
    );
    assert!(
        cache
            .registry
            .stat_blob(&repo, &digest(&amd_layer))
            .await
            .is_err(),
        "amd64 was not asked for"
    );
    let mut again = Prefetch::new(
        &cache.registry,
        vec!["linux/arm64".into()],
        cli(),
        &NoProgress,
    );
    again.image(&repo, &reference).await.expect("again");
    assert_eq!(
        (again.tally.blobs_fetched, again.tally.blobs_skipped),
        (0, 2)
    );

    // Every platform, copied into an ordinary repository under the tag.
    let mut all = Prefetch::new(&cache.registry, Vec::new(), cli(), &NoProgress);
    let got = all.image(&repo, &reference).await.expect("all");
    assert_eq!((all.tally.blobs_fetched, all.tally.blobs_skipped), (1, 3));
    let target: berth_oci::RepoName = "team-a/app".parse().expect("name");
    let tag = "multi".parse().expect("tag");
    all.copy(&repo, &got, &target, Some(&tag))
        .await
        .expect("copy");
    upstream.stop().await;
    let r = cache.get("/v2/team-a/app/manifests/multi").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, index);
    for (m, bytes) in [(&amd_digest, &amd), (&arm_digest, &arm)] {
        let r = cache.get(&format!("/v2/team-a/app/manifests/{m}")).await;
        assert_eq!(body(r).await, *bytes);
    }
    let r = cache
        .get(&format!("/v2/team-a/app/blobs/{amd_layer}"))
        .await;
    assert_eq!(body(r).await, vec![1u8; 5000]);
    let r = cache
        .get(&format!("/v2/docker.io/library/app/blobs/{arm_layer}"))
        .await;
    assert_eq!(body(r).await, vec![2u8; 7000], "served from the cache");
}

#[tokio::test]
async fn unconfigured_names_and_namespaces_stay_local() {
    let upstream = start(Vec::new()).await;
    upstream.push_image("library/app", "1.0", b"x").await;
    let cache = cache_for(&upstream, Duration::ZERO).await;
    // `?ns=` for a host with no upstream: an ordinary local lookup.
    let r = cache.get("/v2/library/app/manifests/1.0?ns=ghcr.io").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = cache.get("/v2/ghcr.io/library/app/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_cold_pulls_fetch_each_object_from_the_upstream_once() {
    let upstream = start(Vec::new()).await;
    let layer: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (manifest, _, ldigest) = upstream.push_image("library/app", "1.0", &layer).await;
    // TTL 0: without single flight every request would re-check the tag upstream.
    let cache = cache_for(&upstream, Duration::ZERO).await;
    let (m0, h0, b0) = (
        served(&upstream, "manifest", "GET").await,
        served(&upstream, "manifest", "HEAD").await,
        served(&upstream, "blob", "GET").await,
    );

    let cache = Arc::new(cache);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            // Half by prefix, half as a containerd mirror: one cached copy either way.
            let path = if i % 2 == 0 {
                "/v2/docker.io/library/app/manifests/1.0".to_owned()
            } else {
                "/v2/app/manifests/1.0?ns=docker.io".to_owned()
            };
            let r = cache.get(&path).await;
            assert_eq!(r.status(), StatusCode::OK);
            body(r).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), manifest);
    }
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let cache = cache.clone();
        let path = format!("/v2/docker.io/library/app/blobs/{ldigest}");
        tasks.push(tokio::spawn(async move {
            let r = cache.get(&path).await;
            assert_eq!(r.status(), StatusCode::OK);
            body(r).await
        }));
    }
    for t in tasks {
        assert!(
            t.await.expect("task") == layer,
            "every client gets the layer"
        );
    }
    // The image's signature tags (.sig, .att, .sbom: none here) are looked up once too,
    // one HEAD each, and its referrers listed once.
    signature_lookups_settle(&cache, 4).await;
    assert_eq!(served(&upstream, "manifest", "HEAD").await - h0, 1 + 3);
    assert_eq!(served(&upstream, "manifest", "GET").await - m0, 1);
    assert_eq!(served(&upstream, "blob", "GET").await - b0, 1);
}

#[tokio::test]
async fn upstream_misses_are_remembered_for_the_negative_ttl() {
    let upstream = start(Vec::new()).await;
    upstream.push_image("library/app", "1.0", b"x").await;
    let cache = cache_for(&upstream, Duration::ZERO).await;
    let missing = sha256(b"nowhere");
    let asked = async || {
        served(&upstream, "manifest", "HEAD").await
            + served(&upstream, "manifest", "GET").await
            + served(&upstream, "blob", "GET").await
    };
    let before = asked().await;
    for _ in 0..5 {
        let r = cache.get("/v2/docker.io/library/app/manifests/nope").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = cache
            .get(&format!("/v2/docker.io/library/app/blobs/{missing}"))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // One HEAD for the tag, one GET for the blob; the other four rounds never left Berth.
    assert_eq!(asked().await - before, 2);

    let no_memory = start(vec![UpstreamSettings {
        negative_ttl: Duration::ZERO,
        ..upstream_settings("docker.io", &upstream.base, Duration::ZERO)
    }])
    .await;
    let before = asked().await;
    for _ in 0..3 {
        let r = no_memory
            .get("/v2/docker.io/library/app/manifests/nope")
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(asked().await - before, 3, "negative_ttl 0 asks every time");
}

/// A registry that is rate limiting everyone: every request gets 429 with `Retry-After`.
async fn rate_limited_upstream(retry_after: &str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (seen, answer) = (seen.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

#[tokio::test]
async fn a_rate_limited_upstream_is_left_alone_until_retry_after() {
    let upstream = start(Vec::new()).await;
    let layer = vec![3u8; 100_000];
    let (manifest, _, ldigest) = upstream.push_image("library/app", "1.0", &layer).await;
    let mut warm = cache_for(&upstream, Duration::ZERO).await;
    assert_eq!(
        warm.get("/v2/docker.io/library/app/manifests/1.0")
            .await
            .status(),
        StatusCode::OK
    );
    let r = warm
        .get(&format!("/v2/docker.io/library/app/blobs/{ldigest}"))
        .await;
    assert_eq!(body(r).await, layer);
    warm.stop().await;

    // The same cache, restarted against an upstream that now rate-limits it.
    let (url, asked) = rate_limited_upstream("120").await;
    let cache = start_with(Setup {
        upstreams: vec![upstream_settings("docker.io", &url, Duration::ZERO)],
        dir: Some(warm.dir.clone()),
        ..Setup::default()
    })
    .await;
    for _ in 0..3 {
        let r = cache.get("/v2/docker.io/library/app/manifests/1.0").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().contains_key("warning"), "stale tag is flagged");
        assert_eq!(body(r).await, manifest);
    }
    let r = cache
        .get(&format!("/v2/docker.io/library/app/blobs/{ldigest}"))
        .await;
    assert_eq!(body(r).await, layer, "cached blobs need no upstream");
    // Never cached: the client is told to come back when the upstream allows.
    let r = cache.get("/v2/docker.io/library/other/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((100..=120).contains(&wait), "{wait}");
    let text = r.text().await.expect("body");
    assert!(
        text.contains("TOOMANYREQUESTS") && text.contains("docker.io"),
        "{text}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "one 429, then no request until Retry-After"
    );
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = common::make_pki(pki.path());
    let upstream = start_with(Setup {
        server: ServerConfig {
            tls: Some(TlsSettings {
                cert,
                key,
                reload_interval: Duration::from_secs(60),
            }),
            ..ServerConfig::default()
        },
        client_ca: Some(ca.clone()),
        ..Setup::default()
    })
    .await;
    assert!(upstream.base.starts_with("https://"));
    let layer = vec![9u8; 500_000];
    let (manifest, _, ldigest) = upstream.push_image("team/app", "1.0", &layer).await;

    let cache = start(vec![UpstreamSettings {
        client: UpstreamConfig {
            ca_file: Some(ca),
            ..upstream_settings("ghcr.io", &upstream.base, Duration::ZERO).client
        },
        ..upstream_settings("ghcr.io", &upstream.base, Duration::ZERO)
    }])
    .await;
    let r = cache.get("/v2/ghcr.io/team/app/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, manifest);
    let r = cache
        .get(&format!("/v2/team/app/blobs/{ldigest}?ns=ghcr.io"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, layer);

    // Without the CA the upstream's certificate is not trusted: no content, no 200.
    let untrusting = start(vec![upstream_settings(
        "ghcr.io",
        &upstream.base,
        Duration::ZERO,
    )])
    .await;
    let r = untrusting.get("/v2/ghcr.io/team/app/manifests/1.0").await;
    assert!(r.status().is_server_error(), "{}", r.status());

    // A CA file that is not there stops the cache from starting, naming the file.
    let bad = Registry::new(
        BlobStore::Fs(FsStore::new(pki.path()).await.expect("fs")),
        MetaStore::connect(&format!("sqlite:{}", pki.path().join("m.db").display()))
            .await
            .expect("sqlite"),
        RegistryConfig::default(),
    )
    .with_upstreams(vec![UpstreamSettings {
        client: UpstreamConfig {
            ca_file: Some(pki.path().join("absent.pem")),
            ..UpstreamConfig::new("ghcr.io", "https://127.0.0.1:1")
        },
        ..upstream_settings("ghcr.io", "https://127.0.0.1:1", Duration::ZERO)
    }]);
    match bad {
        Err(e) => assert!(e.to_string().contains("absent.pem"), "{e}"),
        Ok(_) => panic!("a missing ca_file must be refused"),
    }
}

#[tokio::test]
async fn cached_content_obeys_access_control() {
    let upstream = start(Vec::new()).await;
    let (manifest, _, ldigest) = upstream.push_image("library/app", "1.0", b"layer").await;
    let url = upstream.base.clone();
    let cache = start_with(Setup {
        upstreams: ["docker.io", "quay.io", "ghcr.io"]
            .iter()
            .map(|n| upstream_settings(n, &url, Duration::from_secs(60)))
            .collect(),
        auth: basic_auth(AccessConfig {
            cache_tenants: vec![
                ("docker.io".into(), CachePull::Authenticated),
                ("quay.io".into(), CachePull::Anonymous),
                ("ghcr.io".into(), CachePull::Members),
            ],
            ..AccessConfig::default()
        }),
        ..Setup::default()
    })
    .await;
    let access = cache.access();
    let me = cli_identity();
    common::add_users(access, &[("admin", true), ("alice", false), ("bob", false)]).await;
    access
        .set_member(&me, None, "ghcr.io", "bob", Some("reader"))
        .await
        .expect("bob reads ghcr.io");
    // `library` public: a `?ns=` request judged on its unrewritten name (`app`) would pass.
    access
        .set_tenant_public(&me, None, "library", true)
        .await
        .expect("library public");

    let status = async |path: &str, user: Option<&str>| {
        cache
            .req_as(Method::GET, path, user)
            .send()
            .await
            .expect("send")
            .status()
    };
    let hub = "/v2/docker.io/library/app/manifests/1.0";
    let mirror = "/v2/app/manifests/1.0?ns=docker.io";
    assert_eq!(status(hub, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(mirror, None).await, StatusCode::UNAUTHORIZED);
    for who in ["alice", "bob", "admin"] {
        assert_eq!(status(hub, Some(who)).await, StatusCode::OK, "{who}");
        assert_eq!(status(mirror, Some(who)).await, StatusCode::OK, "{who}");
    }
    let r = cache
        .req_as(Method::GET, mirror, Some("alice"))
        .send()
        .await
        .expect("send");
    assert_eq!(body(r).await, manifest);
    // quay.io: public.
    assert_eq!(
        status("/v2/quay.io/library/app/manifests/1.0", None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&format!("/v2/quay.io/library/app/blobs/{ldigest}"), None).await,
        StatusCode::OK
    );
    // ghcr.io: members only.
    let ghcr = "/v2/ghcr.io/library/app/manifests/1.0";
    assert_eq!(status(ghcr, Some("alice")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(ghcr, Some("bob")).await, StatusCode::OK);
    assert_eq!(status(ghcr, Some("admin")).await, StatusCode::OK);

    // Nobody writes into a cache, admins included, and the answer says why.
    let writes = [
        (
            Method::POST,
            "/v2/docker.io/library/app/blobs/uploads/".to_owned(),
        ),
        (
            Method::PUT,
            "/v2/docker.io/library/app/manifests/2.0".to_owned(),
        ),
        (
            Method::DELETE,
            "/v2/docker.io/library/app/manifests/1.0".to_owned(),
        ),
        (
            Method::DELETE,
            format!("/v2/quay.io/library/app/blobs/{ldigest}"),
        ),
    ];
    for (method, path) in &writes {
        for who in [None, Some("admin"), Some("bob")] {
            let r = cache
                .req_as(method.clone(), path, who)
                .header("content-type", OCI_MANIFEST)
                .body("{}")
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path} {who:?}");
            let text = r.text().await.expect("body");
            assert!(
                text.contains("DENIED") && text.contains("pull-through cache"),
                "{text}"
            );
        }
    }
    // Uploads are never rewritten by `?ns=` (containerd only pulls that way): this one is
    // an ordinary push to the local `library/app`.
    let r = cache
        .req_as(
            Method::POST,
            "/v2/app/blobs/uploads/?ns=docker.io",
            Some("admin"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The cache tenants' visibility belongs to the configuration.
    assert!(
        access
            .set_tenant_public(&me, None, "docker.io", true)
            .await
            .is_err()
    );
    assert!(access.delete_tenant(&me, None, "quay.io").await.is_err());
}

/// Polls `path` on `server` as `user` until it answers 200; its body.
async fn eventually(
    server: &Server,
    path: &str,
    user: Option<&str>,
    want: Option<&[u8]>,
) -> Vec<u8> {
    for _ in 0..200 {
        let r = server
            .req_as(Method::GET, path, user)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("send");
        if r.status() == StatusCode::OK {
            let b = body(r).await;
            if want.is_none_or(|w| w == b.as_slice()) {
                return b;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never became what was pushed");
}

#[tokio::test]
async fn pushes_are_replicated_with_blobs_and_referrers() {
    // The target authenticates: replication logs in as a robot of its tenant.
    let target = start_with(Setup {
        auth: basic_auth(AccessConfig::default()),
        ..Setup::default()
    })
    .await;
    let access = target.access();
    let me = cli_identity();
    common::add_users(access, &[("admin", true)]).await;
    common::add_tenant(access, "team-a", false, &[]).await;
    let robot = access
        .create_robot(
            &me,
            None,
            "team-a",
            "replicator",
            &berth_registry::access::NewRobot {
                actions: berth_auth::Actions::PULL.union(berth_auth::Actions::PUSH),
                repositories: Vec::new(),
                description: None,
                expires_in: None,
            },
        )
        .await
        .expect("robot");
    let rule = berth_registry::replicate::ReplicaRule {
        repositories: "team-a/*".into(),
        target: Arc::new(
            berth_upstream::Upstream::new(UpstreamConfig {
                username: Some(robot.robot.login.clone()),
                password: Some(robot.secret.clone()),
                ..UpstreamConfig::new("backup", &target.base)
            })
            .expect("target client"),
        ),
        prefix: String::new(),
    };
    let source = start_with(Setup {
        replicas: vec![rule],
        ..Setup::default()
    })
    .await;

    let (manifest, digest, layer) = source
        .push_image("team-a/app", "v1", b"replicated layer")
        .await;
    // A signature-like referrer of the image, pushed after it.
    let empty = source.push_blob("team-a/app", b"{}").await;
    let sig = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len()},
    });
    let sig_bytes = serde_json::to_vec(&sig).expect("json");
    let sig_digest = sha256(&sig_bytes);
    let r = source
        .req(
            Method::PUT,
            &format!("/v2/team-a/app/manifests/{sig_digest}"),
        )
        .header("content-type", OCI_MANIFEST)
        .body(sig_bytes.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    // Outside the rule: stays here.
    source
        .push_image("team-b/app", "v1", b"not replicated")
        .await;

    let admin = Some("admin");
    let got = eventually(
        &target,
        "/v2/team-a/app/manifests/v1",
        admin,
        Some(&manifest),
    )
    .await;
    assert_eq!(got, manifest, "the exact bytes arrive");
    let blob = target
        .req_as(Method::GET, &format!("/v2/team-a/app/blobs/{layer}"), admin)
        .send()
        .await
        .expect("blob");
    assert_eq!(body(blob).await, b"replicated layer");
    eventually(
        &target,
        &format!("/v2/team-a/app/manifests/{sig_digest}"),
        admin,
        Some(&sig_bytes),
    )
    .await;
    let refs = target
        .req_as(
            Method::GET,
            &format!("/v2/team-a/app/referrers/{digest}"),
            admin,
        )
        .send()
        .await
        .expect("referrers");
    let refs: serde_json::Value = refs.json().await.expect("json");
    assert_eq!(
        refs["manifests"][0]["digest"],
        sig_digest.as_str(),
        "{refs}"
    );
    let other = target
        .req_as(Method::GET, "/v2/team-b/app/manifests/v1", admin)
        .send()
        .await
        .expect("send");
    assert_eq!(
        other.status(),
        StatusCode::NOT_FOUND,
        "team-b is not replicated"
    );

    // A cosign `.sig` tag is a push of its own: it follows, with its layer.
    let payload = common::payload(&digest);
    let sig_layer = source.push_blob("team-a/app", &payload).await;
    let cosign_sig = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": common::SIMPLE_SIGNING, "digest": sig_layer, "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": "c2lnbmF0dXJl"}}],
    });
    let sig_tag = format!("sha256-{}.sig", &digest[7..]);
    source.put_json("team-a/app", &sig_tag, &cosign_sig).await;
    eventually(
        &target,
        &format!("/v2/team-a/app/manifests/{sig_tag}"),
        admin,
        Some(&serde_json::to_vec(&cosign_sig).expect("json")),
    )
    .await;
    let blob = target
        .req_as(
            Method::GET,
            &format!("/v2/team-a/app/blobs/{sig_layer}"),
            admin,
        )
        .send()
        .await
        .expect("blob");
    assert_eq!(body(blob).await, payload);

    // A moved tag follows.
    let (moved, _, _) = source
        .push_image("team-a/app", "v1", b"second version")
        .await;
    eventually(&target, "/v2/team-a/app/manifests/v1", admin, Some(&moved)).await;
}

/// A cached image is cataloged like a pushed one: the catalog job is written with the
/// cached manifest and runs once its layer has been pulled through.
#[tokio::test]
async fn cached_images_are_cataloged() {
    let upstream = start(Vec::new()).await;
    let layer = berth_catalog::fuzzing::tar(&[berth_catalog::fuzzing::Item::File(
        "lib/apk/db/installed",
        b"P:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\n",
    )]);
    let (_, mdigest, ldigest) = upstream.push_image("library/alpine", "3.19", &layer).await;
    let cache = start_with(Setup {
        upstreams: vec![upstream_settings(
            "docker.io",
            &upstream.base,
            Duration::ZERO,
        )],
        catalog: Some(berth_registry::catalog::CatalogSettings::default()),
        ..Setup::default()
    })
    .await;
    let r = cache
        .get("/v2/docker.io/library/alpine/manifests/3.19")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = cache
        .get(&format!("/v2/docker.io/library/alpine/blobs/{ldigest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let repo = "docker.io/library/alpine".parse().expect("name");
    let reference = berth_oci::Reference::Digest(mdigest.parse().expect("digest"));
    let start = std::time::Instant::now();
    let view = loop {
        if let Some(v) = cache
            .registry
            .catalog_of(&repo, &reference, None)
            .await
            .expect("catalog")
        {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cached image was not cataloged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let purls: Vec<&str> = view.packages.iter().map(|p| p.purl.as_str()).collect();
    assert_eq!(purls, ["pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64"]);
}

/// The cache's `berth_upstream_signature_fetches_total` counter of `outcome`.
async fn signature_lookups(cache: &Server, outcome: &str) -> u64 {
    let line = format!(r#"berth_upstream_signature_fetches_total{{outcome="{outcome}"}} "#);
    cache
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

/// Waits until a cache has made `n` signature lookups (any outcome), as a pull's
/// background fetch does; 20 s at most.
async fn signature_lookups_settle(cache: &Server, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut done = 0;
        for outcome in ["fetched", "absent", "failed"] {
            done += signature_lookups(cache, outcome).await;
        }
        if done >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of {n} signature lookups:\n{}",
            cache.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Server {
    /// Puts `body` as a manifest under `reference`; its digest.
    async fn put_json(&self, repo: &str, reference: &str, body: &serde_json::Value) -> String {
        let bytes = serde_json::to_vec(body).expect("json");
        let r = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", OCI_MANIFEST)
            .body(bytes.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::CREATED, "put {repo}:{reference}");
        sha256(&bytes)
    }
}

/// An image's cosign `.sig` tag and an OCI referrer come through the cache with it, once
/// however many clients pull it at once, and keep serving when the upstream is down;
/// eviction keeps them while their image is cached and evicts them with it.
#[tokio::test]
async fn signatures_and_referrers_travel_with_cached_images_and_go_with_them() {
    use berth_registry::gc::GcOptions;
    use berth_registry::retention::CacheLimits;
    let mut upstream = start(Vec::new()).await;
    let repo = "library/signed";
    let (manifest, digest, _) = upstream.push_image(repo, "1.0", b"signed layer").await;
    let payload = common::payload(&digest);
    let sig_layer = upstream.push_blob(repo, &payload).await;
    let empty = upstream.push_blob(repo, b"{}").await;
    let sig_tag = format!("sha256-{}.sig", &digest[7..]);
    let sig = upstream
        .put_json(
            repo,
            &sig_tag,
            &json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty, "size": 2},
                "layers": [{"mediaType": common::SIMPLE_SIGNING, "digest": sig_layer, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": "c2lnbmF0dXJl"}}],
            }),
        )
        .await;
    let referrer = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len()},
    });
    let referrer_digest = sha256(&serde_json::to_vec(&referrer).expect("json"));
    upstream.put_json(repo, &referrer_digest, &referrer).await;

    let cache = Arc::new(cache_for(&upstream, Duration::from_secs(300)).await);
    let (h0, r0) = (
        served(&upstream, "manifest", "HEAD").await,
        served(&upstream, "referrers", "GET").await,
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let r = cache
                .get("/v2/docker.io/library/signed/manifests/1.0")
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            body(r).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), manifest);
    }
    // In the background (no rule judges this repository): the .sig tag and the
    // referrers found, the .att and .sbom tags absent.
    signature_lookups_settle(&cache, 4).await;
    assert_eq!(signature_lookups(&cache, "fetched").await, 2);
    assert_eq!(signature_lookups(&cache, "absent").await, 2);
    assert_eq!(signature_lookups(&cache, "failed").await, 0);
    // Once for eight pulls: the image tag and the three signature tags checked once
    // each, the referrers listed once.
    assert_eq!(served(&upstream, "manifest", "HEAD").await - h0, 4);
    assert_eq!(served(&upstream, "referrers", "GET").await - r0, 1);

    // The upstream goes away; what came along keeps serving.
    upstream.stop().await;
    let cached = "/v2/docker.io/library/signed";
    let r = cache.get(&format!("{cached}/manifests/{sig_tag}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sha256(&body(r).await), sig);
    let r = cache.get(&format!("{cached}/blobs/{sig_layer}")).await;
    assert_eq!(body(r).await, payload);
    let r = cache.get(&format!("{cached}/referrers/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let listed: serde_json::Value = r.json().await.expect("referrers index");
    assert_eq!(listed["manifests"][0]["digest"], referrer_digest.as_str());
    let r = cache
        .get(&format!("{cached}/manifests/{referrer_digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The image was pulled just now, its signature and referrer fetched over a second
    // ago and never pulled: eviction by age keeps them with their image.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cache
        .registry
        .meta()
        .mark_pulled("docker.io/library/signed", &digest)
        .await
        .expect("mark pulled");
    let kept = cache
        .registry
        .evict_cache(
            "docker.io",
            &CacheLimits {
                max_age: Some(Duration::from_millis(600)),
                max_bytes: None,
            },
            false,
        )
        .await
        .expect("evict");
    assert!(kept.evicted.is_empty(), "{kept:?}");
    let r = cache.get(&format!("{cached}/manifests/{sig_tag}")).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Evicting the image evicts what is attached to it; the collection frees the bytes.
    let evicted = cache
        .registry
        .evict_cache(
            "docker.io",
            &CacheLimits {
                max_age: Some(Duration::ZERO),
                max_bytes: None,
            },
            false,
        )
        .await
        .expect("evict");
    let mut gone: Vec<&str> = evicted.evicted.iter().map(|e| e.digest.as_str()).collect();
    gone.sort_unstable();
    let mut expected = vec![digest.as_str(), sig.as_str(), referrer_digest.as_str()];
    expected.sort_unstable();
    assert_eq!(gone, expected, "{evicted:?}");
    let no_grace = GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
        rollback_window: Duration::ZERO,
    };
    cache
        .registry
        .collect_garbage(&no_grace, &|_| {})
        .await
        .expect("gc");
    assert!(!cache.blob_path(&sig_layer).exists());
    assert_ne!(
        cache
            .get(&format!("{cached}/manifests/{sig_tag}"))
            .await
            .status(),
        StatusCode::OK
    );
}

/// A registry without the referrers API (404 there, as registries that predate it
/// answer): it serves `objects`, (path, content type, body), for GET and HEAD, with the
/// body's digest in `Docker-Content-Digest`, and 404 for everything else.
async fn static_upstream(objects: Vec<(String, &'static str, Vec<u8>)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let objects = Arc::new(objects);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let objects = objects.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let found = objects.iter().find(|(p, _, _)| p == path);
                let answer = match found {
                    Some((_, content_type, body)) => {
                        let mut a = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\
                             Docker-Content-Digest: {}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n",
                            sha256(body),
                            body.len()
                        )
                        .into_bytes();
                        if method == "GET" {
                            a.extend_from_slice(body);
                        }
                        a
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Without a referrers API upstream, the referrers come from the referrers tag schema's
/// index (`sha256-<hex>`).
#[tokio::test]
async fn referrers_come_from_the_tag_schema_when_the_upstream_has_no_api() {
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let layer = b"a layer".to_vec();
    let image = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("json");
    let digest = sha256(&image);
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": image.len()},
    }))
    .expect("json");
    let referrer_digest = sha256(&referrer);
    let schema_index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": common::OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": referrer_digest, "size": referrer.len(),
            "artifactType": "application/vnd.example.sbom"}],
    }))
    .expect("json");
    let m = |r: &str| format!("/v2/library/app/manifests/{r}");
    let b = |d: &str| format!("/v2/library/app/blobs/{d}");
    let url = static_upstream(vec![
        (m("1.0"), OCI_MANIFEST, image.clone()),
        (m(&digest), OCI_MANIFEST, image.clone()),
        (
            m(&format!("sha256-{}", &digest[7..])),
            common::OCI_INDEX,
            schema_index,
        ),
        (m(&referrer_digest), OCI_MANIFEST, referrer),
        (
            b(&sha256(b"{}")),
            "application/octet-stream",
            b"{}".to_vec(),
        ),
    ])
    .await;
    let cache = start(vec![upstream_settings(
        "docker.io",
        &url,
        Duration::from_secs(300),
    )])
    .await;
    let r = cache.get("/v2/docker.io/library/app/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    signature_lookups_settle(&cache, 4).await;
    assert_eq!(
        signature_lookups(&cache, "fetched").await,
        1,
        "the referrers"
    );
    assert_eq!(
        signature_lookups(&cache, "absent").await,
        3,
        ".sig .att .sbom"
    );
    let r = cache
        .get(&format!("/v2/docker.io/library/app/referrers/{digest}"))
        .await;
    let listed: serde_json::Value = r.json().await.expect("referrers index");
    assert_eq!(listed["manifests"][0]["digest"], referrer_digest.as_str());
}

/// Under an enforcing signature rule on the cache repository, the first pulls of a signed
/// upstream image are admitted (its signature is fetched before the answer, once for
/// eight concurrent pulls) and an unsigned one is refused.
#[tokio::test]
async fn an_enforcing_rule_admits_the_first_pulls_of_a_signed_upstream_image() {
    use berth_registry::policy::{Mode, Policy};
    let upstream = start(Vec::new()).await;
    let k = common::key();
    let (manifest, digest, _) = upstream
        .push_image("library/signed", "1.0", b"signed layer")
        .await;
    upstream
        .push_image("library/unsigned", "1.0", b"unsigned layer")
        .await;
    let payload = common::payload(&digest);
    let sig_layer = upstream.push_blob("library/signed", &payload).await;
    let empty = upstream.push_blob("library/signed", b"{}").await;
    upstream
        .put_json(
            "library/signed",
            &format!("sha256-{}.sig", &digest[7..]),
            &json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty, "size": 2},
                "layers": [{"mediaType": common::SIMPLE_SIGNING, "digest": sig_layer, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": common::sign(&k, &payload)}}],
            }),
        )
        .await;
    let cache = Arc::new(cache_for(&upstream, Duration::from_secs(300)).await);
    let mut spec = common::signature_policy(&[&k], Mode::Enforce)
        .spec()
        .clone();
    spec.trust[0].repositories = vec!["docker.io/library/*".into()];
    spec.rules[0].repositories = vec!["docker.io/library/*".into()];
    cache
        .registry
        .set_policy(Policy::new(spec).expect("policy"));
    let h0 = served(&upstream, "manifest", "HEAD").await;

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let r = cache
                .get("/v2/docker.io/library/signed/manifests/1.0")
                .await;
            (r.status(), body(r).await)
        }));
    }
    for t in tasks {
        let (status, got) = t.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&got));
        assert_eq!(got, manifest);
    }
    assert_eq!(
        served(&upstream, "manifest", "HEAD").await - h0,
        1 + 3,
        "the image tag and its three signature tags, once each"
    );
    assert_eq!(signature_lookups(&cache, "fetched").await, 1);
    let r = cache
        .get("/v2/docker.io/library/unsigned/manifests/1.0")
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
