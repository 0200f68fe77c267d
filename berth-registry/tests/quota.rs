//! Storage quotas per tenant, on SQLite and on PostgreSQL (`BERTH_TEST_POSTGRES_URL`):
//! shared blobs count once, a push past the quota is refused naming it and leaves nothing
//! linked, and concurrent pushes through two replicas never overshoot.

mod common;

use std::time::Duration;

use berth_meta::MetaStore;
use berth_oci::{Digest, RepoName};
use berth_registry::gc::GcOptions;
use berth_registry::{Actor, Registry, RegistryConfig, RegistryError};
use berth_storage::{BlobStore, FsStore};
use bytes::Bytes;

async fn replica(dir: &std::path::Path, url: &str) -> Registry {
    let blobs = BlobStore::Fs(FsStore::new(dir).await.expect("fs store"));
    let meta = MetaStore::connect(url).await.expect("metadata store");
    Registry::new(blobs, meta, RegistryConfig::default())
}

fn repo(name: &str) -> RepoName {
    name.parse().expect("repository name")
}

fn sha(data: &[u8]) -> Digest {
    berth_storage::digest_of(berth_oci::Algorithm::Sha256, data)
}

async fn push(r: &Registry, repo: &RepoName, data: &[u8]) -> Result<u64, RegistryError> {
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
    r.put_blob(repo, &sha(data), body, &Actor::anonymous())
        .await
}

async fn quotas(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = if postgres {
        common::postgres_url().await
    } else {
        format!("sqlite:{}", dir.path().join("meta.db").display())
    };
    let a = replica(dir.path(), &url).await;
    let b = replica(dir.path(), &url).await;
    let admin = Actor::named("admin");
    let meta = a.meta();
    assert!(
        meta.create_tenant("team", false, &admin)
            .await
            .expect("tenant")
    );
    assert!(
        meta.set_tenant_quota("team", Some(1000), &admin)
            .await
            .expect("quota")
    );

    let big = vec![1u8; 600];
    push(&a, &repo("team/one"), &big)
        .await
        .expect("within the quota");
    // The same blob in another repository of the tenant costs nothing more.
    push(&b, &repo("team/two"), &big)
        .await
        .expect("shared blob");
    assert_eq!(
        meta.tenant_quota("team").await.expect("usage"),
        Some((Some(1000), 600))
    );

    let over = vec![2u8; 500];
    let err = push(&a, &repo("team/two"), &over)
        .await
        .expect_err("over the quota");
    let RegistryError::Denied(msg) = &err else {
        panic!("expected DENIED, got {err:?}");
    };
    assert!(
        msg.contains("quota of tenant team") && msg.contains("600 of 1000"),
        "{msg}"
    );
    // Nothing linked, nothing counted.
    assert!(matches!(
        a.stat_blob(&repo("team/two"), &sha(&over)).await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(
        meta.tenant_quota("team").await.expect("usage"),
        Some((Some(1000), 600))
    );
    // Other tenants are not bound by it; a mount into the tenant counts like a push.
    push(&a, &repo("other/x"), &over)
        .await
        .expect("no quota there");
    assert!(
        a.mount_blob(&repo("team/three"), &sha(&over), &repo("other/x"), &admin)
            .await
            .is_err()
    );

    // Concurrent pushes through both replicas: 300-byte blobs into the 400 bytes left.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            push(&r, &repo("team/race"), &vec![10 + i; 300]).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(RegistryError::Denied(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won, 1, "400 bytes left fit exactly one 300-byte blob");
    assert_eq!(
        meta.tenant_quota("team").await.expect("usage"),
        Some((Some(1000), 900))
    );

    // The refused bytes were stored before the link was refused: they are garbage, and
    // the next collection removes them.
    let mut refused = Vec::new();
    for i in 0..8u8 {
        let d = sha(&vec![10 + i; 300]);
        if a.stat_blob(&repo("team/race"), &d).await.is_err() {
            assert!(a.blobs().stat(&d).await.expect("stat").is_some());
            refused.push(d);
        }
    }
    assert_eq!(refused.len(), 7);
    a.collect_garbage(
        &GcOptions {
            dry_run: false,
            grace: Duration::ZERO,
            rollback_window: Duration::ZERO,
        },
        &|_| {},
    )
    .await
    .expect("gc");
    for d in &refused {
        assert_eq!(a.blobs().stat(d).await.expect("stat"), None, "{d}");
    }

    // Lifting the quota lets the push through.
    assert!(
        meta.set_tenant_quota("team", None, &admin)
            .await
            .expect("quota")
    );
    push(&a, &repo("team/two"), &over)
        .await
        .expect("no quota now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_sqlite() {
    quotas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_postgres() {
    quotas(true).await;
}
