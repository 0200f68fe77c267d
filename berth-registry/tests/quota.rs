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

/// The whole metadata store copied SQLite -> PostgreSQL -> SQLite (`berth migrate-storage`
/// with another `[metadata] url`): tags, manifests, history, tenants and quotas, the audit
/// log, and new rows after the copy get fresh ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_copies_between_sqlite_and_postgres() {
    use berth_oci::Reference;
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite:{}", dir.path().join("meta.db").display());
    let a = replica(dir.path(), &sqlite).await;
    let admin = Actor::named("admin");
    let meta = a.meta();
    assert!(
        meta.create_tenant("team", true, &admin)
            .await
            .expect("tenant")
    );
    assert!(
        meta.set_tenant_quota("team", Some(5000), &admin)
            .await
            .expect("quota")
    );
    let rp = repo("team/app");
    let config = b"{}";
    let mut digests = Vec::new();
    for n in 0..2u8 {
        push(&a, &rp, config).await.expect("config");
        let layer = vec![n; 100];
        push(&a, &rp, &layer).await.expect("layer");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":100}}]}}"#,
            sha(config),
            sha(&layer)
        );
        let out = a
            .put_manifest(
                &rp,
                &Reference::Tag("stable".parse().expect("tag")),
                None,
                Bytes::from(m),
                &admin,
            )
            .await
            .expect("manifest");
        digests.push(out.digest);
    }

    let pg = common::postgres_url().await;
    let b = replica(dir.path(), &pg).await;
    let rows = meta
        .copy_into(b.meta(), &mut |_, _| {})
        .await
        .expect("copy to postgres");
    assert!(rows > 10, "{rows}");
    // A second copy into a store that is no longer empty is refused.
    assert!(meta.copy_into(b.meta(), &mut |_, _| {}).await.is_err());
    let back_dir = tempfile::tempdir().expect("tempdir");
    let c = replica(
        dir.path(),
        &format!("sqlite:{}", back_dir.path().join("meta.db").display()),
    )
    .await;
    b.meta()
        .copy_into(c.meta(), &mut |_, _| {})
        .await
        .expect("copy back to sqlite");

    for r in [&b, &c] {
        let got = r
            .get_manifest(&rp, &Reference::Tag("stable".parse().expect("tag")))
            .await
            .expect("tag");
        assert_eq!(got.digest, digests[1]);
        r.get_manifest(&rp, &Reference::Digest(digests[0].clone()))
            .await
            .expect("old manifest");
        let history = r
            .tag_history(&rp, &"stable".parse().expect("tag"), 10)
            .await
            .expect("history");
        assert_eq!(history.len(), 2);
        assert_eq!(
            r.meta().tenant_quota("team").await.expect("quota"),
            meta.tenant_quota("team").await.expect("quota")
        );
        assert_eq!(r.meta().public_tenants().await.expect("public"), ["team"]);
        // New rows get ids after the copied ones (PostgreSQL sequences moved past them).
        push(r, &repo("team/new"), b"new")
            .await
            .expect("a new repository");
        let all = berth_meta::AuditQuery {
            limit: 1000,
            ..Default::default()
        };
        let copied = meta.audit_query(&all).await.expect("audit");
        let here = r.meta().audit_query(&all).await.expect("audit");
        assert!(copied.len() > 5);
        // Every source row, with its id, and the new push's rows after them.
        assert!(copied.iter().all(|row| here.contains(row)));
        assert!(here.len() > copied.len());
        assert!(here[0].0 > copied[0].0, "newest first, with a fresh id");
    }
}
