//! Two registries over one PostgreSQL database and one blob directory, as two replicas of
//! a Deployment: a change committed through one is seen by the other at once, not after
//! its cache TTL (set to a minute here so only the invalidation can explain it).
//! Needs `BERTH_TEST_POSTGRES_URL`, like the metadata suite.

mod common;

use std::time::{Duration, Instant};

use berth_meta::MetaStore;
use berth_oci::{Reference, RepoName};
use berth_registry::{Actor, Registry, RegistryConfig};
use berth_storage::{BlobStore, FsStore};

async fn replica(url: &str, dir: &std::path::Path) -> Registry {
    let blobs = BlobStore::Fs(FsStore::new(dir).await.expect("fs store"));
    let meta = MetaStore::connect(url).await.expect("postgres");
    let r = Registry::new(
        blobs,
        meta,
        RegistryConfig {
            cache_ttl: Duration::from_secs(60),
            ..RegistryConfig::default()
        },
    );
    r.follow_other_replicas().await.expect("listen");
    r
}

/// An image manifest over one config blob, pushed through `r`; its digest.
async fn push(r: &Registry, repo: &RepoName, tag: &str, config: &[u8]) -> String {
    let m = common::push_image(r, repo, Some(tag), config, &[], None)
        .await
        .expect("push");
    common::sha(&m).to_string()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not seen within 10 s (the cache TTL is 60 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_another_replicas_changes_at_once() {
    let url = common::postgres_url().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(&url, dir.path()).await;
    let b = replica(&url, dir.path()).await;
    let repo: RepoName = "team-a/app".parse().expect("name");
    let v1: Reference = "v1".parse().expect("tag");

    let first = push(&a, &repo, "v1", b"{\"n\":1}").await;
    // b reads (and caches) the tag.
    let got = b.get_manifest(&repo, &v1).await.expect("pull");
    assert_eq!(got.digest.to_string(), first);

    // Moved on a: b follows well before its 60 s TTL.
    let second = push(&a, &repo, "v1", b"{\"n\":2}").await;
    let took = until("tag move", async || {
        b.get_manifest(&repo, &v1)
            .await
            .map(|m| m.digest.to_string())
            .ok()
            == Some(second.clone())
    })
    .await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Deleted on a: b stops serving it, and its tag.
    let by_digest: Reference = second.parse().expect("digest");
    assert!(b.get_manifest(&repo, &by_digest).await.is_ok());
    a.delete_manifest(&repo, &by_digest, &Actor::anonymous(), true)
        .await
        .expect("delete");
    until("manifest delete", async || {
        b.get_manifest(&repo, &by_digest).await.is_err()
    })
    .await;
    until("its tag", async || {
        b.get_manifest(&repo, &v1).await.is_err()
    })
    .await;
}
