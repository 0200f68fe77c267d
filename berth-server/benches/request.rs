//! The request path in-process (no sockets): what one manifest GET, blob HEAD or tags list
//! costs the server, with the read cache warm and with it off.

use std::time::Duration;

use axum::body::Body;
use berth_meta::MetaStore;
use berth_oci::{Reference, RepoName};
use berth_registry::{Actor, Registry, RegistryConfig};
use berth_server::{AppState, ServerConfig};
use berth_storage::{BlobStore, FsStore};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

struct Fixture {
    app: axum::Router,
    manifest_digest: String,
    layer_digest: String,
    _dir: tempfile::TempDir,
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

async fn fixture(cache_ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::Fs(FsStore::new(dir.path()).await.expect("fs"));
    let meta = MetaStore::connect(&format!("sqlite:{}", dir.path().join("m.db").display()))
        .await
        .expect("sqlite");
    let config = RegistryConfig {
        cache_ttl,
        ..RegistryConfig::default()
    };
    let registry = Registry::new(blobs, meta, config);
    let repo: RepoName = "bench/app".parse().expect("name");
    let actor = Actor::anonymous();
    let put = |data: &'static [u8]| {
        let (registry, repo, actor) = (registry.clone(), repo.clone(), actor.clone());
        async move {
            let d = sha256(data);
            let stream =
                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(data))]);
            registry
                .put_blob(&repo, &d.parse().expect("digest"), None, stream, &actor)
                .await
                .expect("blob");
            d
        }
    };
    let config = put(b"{\"os\":\"linux\"}").await;
    let layer = put(b"layer bytes").await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":14}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":11}}]}}"#
    );
    for i in 0..1000 {
        let tag: Reference = format!("v{i}").parse().expect("tag");
        registry
            .put_manifest(&repo, &tag, None, Bytes::from(manifest.clone()), &actor)
            .await
            .expect("manifest");
    }
    let app = berth_server::router(AppState::new(registry, ServerConfig::default()));
    Fixture {
        app,
        manifest_digest: sha256(manifest.as_bytes()),
        layer_digest: layer,
        _dir: dir,
    }
}

async fn call(app: &axum::Router, method: &str, uri: &str) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    assert!(resp.status().is_success(), "{uri}: {}", resp.status());
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (label, ttl) in [
        ("cached", Duration::from_secs(3600)),
        ("uncached", Duration::ZERO),
    ] {
        let f = rt.block_on(fixture(ttl));
        let by_tag = "/v2/bench/app/manifests/v500".to_owned();
        let by_digest = format!("/v2/bench/app/manifests/{}", f.manifest_digest);
        let head = format!("/v2/bench/app/blobs/{}", f.layer_digest);
        c.bench_function(&format!("manifest GET by tag ({label})"), |b| {
            b.to_async(&rt).iter(|| call(&f.app, "GET", &by_tag))
        });
        c.bench_function(&format!("manifest GET by digest ({label})"), |b| {
            b.to_async(&rt).iter(|| call(&f.app, "GET", &by_digest))
        });
        c.bench_function(&format!("blob HEAD ({label})"), |b| {
            b.to_async(&rt).iter(|| call(&f.app, "HEAD", &head))
        });
        if ttl.is_zero() {
            c.bench_function("tags list, page of 100 of 1000", |b| {
                b.to_async(&rt)
                    .iter(|| call(&f.app, "GET", "/v2/bench/app/tags/list?n=100&last=v3"))
            });
        }
    }
}

criterion_group! {
    name = request;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(request);
