//! Pull-through caching over real HTTP: an upstream Berth and a caching Berth, both
//! `berth_server::run` on 127.0.0.1:0, driven by a plain HTTP client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_meta::MetaStore;
use berth_registry::{Registry, RegistryConfig, UpstreamConfig, UpstreamSettings};
use berth_server::{AppState, ServerConfig};
use berth_storage::{BlobStore, FsStore};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Server {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

async fn start(upstreams: Vec<UpstreamSettings>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::Fs(FsStore::new(dir.path()).await.expect("fs store"));
    let meta = MetaStore::connect(&format!("sqlite:{}", dir.path().join("meta.db").display()))
        .await
        .expect("sqlite");
    let registry = Registry::new(blobs, meta, RegistryConfig::default())
        .with_upstreams(upstreams)
        .expect("upstreams");
    let state = AppState::new(registry, ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(berth_server::run(listener, state, async move {
        let _ = stopped.await;
    }));
    Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        stop: Some(stop),
        task: Some(task),
        dir,
    }
}

/// A caching Berth whose `docker.io` is the given upstream.
async fn cache_for(upstream: &Server, tag_ttl: Duration) -> Server {
    start(vec![UpstreamSettings {
        client: UpstreamConfig {
            timeout: Duration::from_secs(2),
            ..UpstreamConfig::new("docker.io", upstream.base.clone())
        },
        tag_ttl,
    }])
    .await
}

impl Server {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.req(Method::GET, path).send().await.expect("send")
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "monolithic push");
        d
    }

    /// Pushes an image (config + one layer) under `repo:tag`; returns manifest bytes and
    /// digest and the layer digest.
    async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, String, String) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let c = self.push_blob(repo, config).await;
        let l = self.push_blob(repo, layer).await;
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": layer.len()}],
        });
        // Odd spacing on purpose: the cache must keep these exact bytes.
        let bytes = format!("{}\n\n", serde_json::to_string_pretty(&m).expect("json")).into_bytes();
        let r = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(bytes.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "manifest push");
        let d = sha256(&bytes);
        (bytes, d, l)
    }

    /// Stops the server and waits until its port refuses connections.
    async fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
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
