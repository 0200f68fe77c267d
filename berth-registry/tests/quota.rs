//! Storage quotas per tenant, on SQLite and on PostgreSQL (`BERTH_TEST_POSTGRES_URL`),
//! with blobs on the filesystem and on S3 (`BERTH_TEST_S3_URL`): shared blobs count once, a
//! push past the quota is refused naming it and leaves nothing linked and no bytes under
//! `blobs/`, and concurrent pushes through two replicas never overshoot, whether their
//! lengths are announced or not.

mod common;

use berth_meta::{MetaStore, Usage};
use berth_oci::RepoName;
use berth_registry::{Actor, Registry, RegistryError};
use berth_storage::BlobStore;
use bytes::Bytes;
use common::{blob_store, body, registry_on, repo, sha, stored};

async fn replica(dir: &std::path::Path, url: &str) -> Registry {
    registry_on(&blob_store(false, dir).await, url).await
}

async fn push(r: &Registry, repo: &RepoName, data: &[u8]) -> Result<u64, RegistryError> {
    push_as(r, repo, data, true).await
}

/// A monolithic push; `announced`: with its length, as a request with a Content-Length.
async fn push_as(
    r: &Registry,
    repo: &RepoName,
    data: &[u8],
    announced: bool,
) -> Result<u64, RegistryError> {
    let length = announced.then_some(data.len() as u64);
    r.put_blob(repo, &sha(data), length, body(data), &Actor::anonymous())
        .await
}

async fn used(meta: &MetaStore) -> Usage {
    meta.tenant_quota("team")
        .await
        .expect("usage")
        .expect("tenant")
        .1
}

fn blobs_only(n: u64) -> Usage {
    Usage {
        blobs: n,
        manifests: 0,
        uploads: 0,
    }
}

async fn quotas(postgres: bool, s3: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = if postgres {
        common::postgres_url().await
    } else {
        format!("sqlite:{}", dir.path().join("meta.db").display())
    };
    let store = blob_store(s3, dir.path()).await;
    let a = registry_on(&store, &url).await;
    let b = registry_on(&store, &url).await;
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
    assert_eq!(used(meta).await, blobs_only(600));

    let over = vec![2u8; 500];
    for announced in [true, false] {
        let err = push_as(&a, &repo("team/two"), &over, announced)
            .await
            .expect_err("over the quota");
        let RegistryError::OverQuota(msg) = &err else {
            panic!("expected a quota refusal, got {err:?}");
        };
        assert!(
            msg.contains("quota of tenant team") && msg.contains("600 of 1000"),
            "{msg}"
        );
    }
    // Nothing linked, nothing counted, no bytes placed.
    assert!(matches!(
        a.stat_blob(&repo("team/two"), &sha(&over)).await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(used(meta).await, blobs_only(600));
    assert_eq!(stored(&store).await, [sha(&big)]);
    // Other tenants are not bound by it; a mount into the tenant counts like a push.
    push(&a, &repo("other/x"), &over)
        .await
        .expect("no quota there");
    assert!(matches!(
        a.mount_blob(&repo("team/three"), &sha(&over), &repo("other/x"), &admin)
            .await,
        Err(RegistryError::OverQuota(_))
    ));

    // Concurrent pushes through both replicas, half with their length announced and half
    // streamed: 300-byte blobs into the 400 bytes left.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            push_as(&r, &repo("team/race"), &vec![10 + i; 300], i < 4).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(RegistryError::OverQuota(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won, 1, "400 bytes left fit exactly one 300-byte blob");
    assert_eq!(used(meta).await, blobs_only(900));

    // The refused bytes were never placed: `blobs/` holds what is linked, and nothing of
    // the refused uploads is left.
    let mut expected = vec![sha(&big), sha(&over)];
    for i in 0..8u8 {
        let d = sha(&vec![10 + i; 300]);
        match a.stat_blob(&repo("team/race"), &d).await {
            Ok(_) => expected.push(d),
            Err(_) => assert_eq!(a.blobs().stat(&d).await.expect("stat"), None, "{d}"),
        }
    }
    expected.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(stored(&store).await, expected);
    match &store {
        BlobStore::Fs(_) => {
            let left = std::fs::read_dir(dir.path().join("uploads")).expect("uploads");
            assert_eq!(left.count(), 0, "uploads/");
        }
        BlobStore::S3(s) => {
            assert!(s.list_raw("uploads/").await.expect("list").is_empty());
            assert_eq!(s.pending_multipart_uploads().await.expect("multipart"), 0);
        }
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
    quotas(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_postgres() {
    quotas(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_sqlite_s3() {
    quotas(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_postgres_s3() {
    quotas(true, true).await;
}

/// Chunked uploads racing through two replicas for the same room: each PATCH streams
/// only bytes its session reserved, so of eight 300-byte chunks into 400 bytes of room
/// exactly one is accepted, the others are refused and their sessions cancelled, and the
/// sessions' bytes count while they are open.
async fn chunked_uploads_race_for_the_room(postgres: bool) {
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
        meta.set_tenant_quota("team", Some(400), &admin)
            .await
            .expect("quota")
    );
    let rp = repo("team/race");
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        let rp = rp.clone();
        tasks.push(tokio::spawn(async move {
            let s = r.start_upload(&rp).await.expect("session");
            // Three frames of 100 bytes, length not announced.
            let frames = (0..3).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![i; 100])));
            let body = futures_util::stream::iter(frames);
            (
                s.id.clone(),
                r.upload_chunk(&rp, &s.id, None, None, body).await,
            )
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        let (id, out) = t.await.expect("task");
        match out {
            Ok(st) => {
                assert_eq!(st.offset, 300);
                open.push(id);
            }
            Err(RegistryError::OverQuota(_)) => {
                assert!(matches!(
                    a.upload_status(&rp, &id).await,
                    Err(RegistryError::UploadUnknown)
                ));
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(open.len(), 1, "400 bytes of room fit one 300-byte chunk");
    assert_eq!(
        used(meta).await,
        Usage {
            blobs: 0,
            manifests: 0,
            uploads: 300
        },
        "the open session counts, the refused ones do not"
    );
    // Only the open session's data is left under uploads/.
    let left = std::fs::read_dir(dir.path().join("uploads")).expect("uploads");
    assert_eq!(left.count(), 1);
    // Cancelling it frees the room.
    a.cancel_upload(&rp, &open[0]).await.expect("cancel");
    assert_eq!(used(meta).await, Usage::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_race_sqlite() {
    chunked_uploads_race_for_the_room(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_race_postgres() {
    chunked_uploads_race_for_the_room(true).await;
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
