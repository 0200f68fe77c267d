//! The parsers on every request's path: digests, names, references, manifests.

use std::hint::black_box;

use berth_oci::manifest::parse_manifest;
use berth_oci::{Digest, Reference, RepoName, tag_sort_key};
use criterion::{Criterion, criterion_group, criterion_main};

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn image_manifest(layers: usize) -> String {
    let layer = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{DIGEST}","size":32654}}"#
    );
    let layers = vec![layer; layers].join(",");
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{DIGEST}","size":7023}},"layers":[{layers}],"annotations":{{"org.opencontainers.image.created":"2026-11-22T00:00:00Z"}}}}"#
    )
}

fn index(children: usize) -> String {
    let child = format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{DIGEST}","size":1234,"platform":{{"architecture":"amd64","os":"linux"}}}}"#
    );
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        vec![child; children].join(",")
    )
}

fn benches(c: &mut Criterion) {
    c.bench_function("digest parse", |b| {
        b.iter(|| black_box(DIGEST).parse::<Digest>())
    });
    c.bench_function("repo name parse (3 components)", |b| {
        b.iter(|| black_box("team-a/platform/web-frontend").parse::<RepoName>())
    });
    c.bench_function("reference parse (tag)", |b| {
        b.iter(|| black_box("v1.24.3-alpine").parse::<Reference>())
    });
    c.bench_function("tag sort key", |b| {
        b.iter(|| tag_sort_key(black_box("v1.24.3-Alpine")))
    });
    let m = image_manifest(8);
    c.bench_function("manifest parse (8 layers)", |b| {
        b.iter(|| {
            parse_manifest(
                black_box(m.as_bytes()),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
        })
    });
    let i = index(6);
    c.bench_function("index parse (6 platforms)", |b| {
        b.iter(|| parse_manifest(black_box(i.as_bytes()), None))
    });
}

criterion_group!(parse, benches);
criterion_main!(parse);
