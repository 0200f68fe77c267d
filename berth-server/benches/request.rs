//! The request path in-process (no sockets): what one manifest GET, blob HEAD or tags list
//! costs the server, with the read cache warm and with it off. And the same manifest GET
//! through `run` over a loopback socket, HTTP/1.1 keep-alive and HTTP/2, which adds what
//! each connection and request costs around the router (protocol, connection table,
//! in-flight accounting).

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
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

struct Fixture {
    app: axum::Router,
    state: AppState,
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
    let state = AppState::new(registry, ServerConfig::default());
    let app = berth_server::router(state.clone());
    Fixture {
        app,
        state,
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

/// Serves `state` on a loopback port until the runtime ends.
async fn serve(state: AppState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(berth_server::run(listener, state, std::future::pending()));
    addr
}

type Send1 = hyper::client::conn::http1::SendRequest<Body>;
type Send2 = hyper::client::conn::http2::SendRequest<Body>;

async fn h1(addr: std::net::SocketAddr) -> Send1 {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

async fn h2(addr: std::net::SocketAddr) -> Send2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    send
}

fn get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header("host", "bench")
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .body(Body::empty())
        .expect("request")
}

async fn drain(resp: http::Response<hyper::body::Incoming>) {
    assert!(resp.status().is_success(), "{}", resp.status());
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");
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
        if !ttl.is_zero() {
            let addr = rt.block_on(serve(f.state.clone()));
            let send1 = tokio::sync::Mutex::new(rt.block_on(h1(addr)));
            c.bench_function(
                "manifest GET by tag over a socket, HTTP/1.1 (cached)",
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let mut send = send1.lock().await;
                        send.ready().await.expect("ready");
                        drain(send.send_request(get(&by_tag)).await.expect("response")).await;
                    })
                },
            );
            let send2 = rt.block_on(h2(addr));
            // HTTP/2 needs the scheme and authority (`:scheme`, `:authority`).
            let absolute = format!("http://bench{by_tag}");
            c.bench_function("manifest GET by tag over a socket, HTTP/2 (cached)", |b| {
                b.to_async(&rt).iter(|| async {
                    let mut send = send2.clone();
                    drain(send.send_request(get(&absolute)).await.expect("response")).await;
                })
            });
        }
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
