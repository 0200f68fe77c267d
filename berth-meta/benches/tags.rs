//! Listing tags: one page of a large repository, and a walk through all of it in pages,
//! the way a client follows `Link` headers. 100,000 tags on one manifest in SQLite.

use criterion::{Criterion, criterion_group, criterion_main};

use berth_meta::{Actor, MetaStore, NewManifest};

const TAGS: usize = 100_000;
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn setup(rt: &tokio::runtime::Runtime) -> (MetaStore, tempfile::TempDir) {
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("meta.db").display());
        let meta = MetaStore::connect(&url).await.expect("sqlite");
        let actor = Actor::named("bench");
        for i in 0..TAGS {
            let tag = format!("v{i}");
            meta.put_manifest(&NewManifest {
                repo: "bench/app",
                digest: DIGEST,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                artifact_type: None,
                subject: None,
                annotations: None,
                content: b"{}",
                refs: &[],
                tags: &[&tag],
                actor: &actor,
            })
            .await
            .expect("tag");
        }
        (meta, dir)
    })
}

fn walk(rt: &tokio::runtime::Runtime, meta: &MetaStore, page: u64) -> usize {
    rt.block_on(async {
        let mut last: Option<String> = None;
        let mut seen = 0;
        loop {
            let tags = meta
                .list_tags("bench/app", last.as_deref(), page)
                .await
                .expect("list")
                .expect("repository");
            seen += tags.len();
            if (tags.len() as u64) < page {
                return seen;
            }
            last = tags.last().cloned();
        }
    })
}

fn tags(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (meta, _dir) = setup(&rt);
    let mut g = c.benchmark_group("tags of 100k");
    g.sample_size(10);
    g.bench_function("first page of 1000", |b| {
        b.iter(|| {
            rt.block_on(meta.list_tags("bench/app", None, 1000))
                .expect("list")
        })
    });
    for page in [1000, 10_000] {
        g.bench_function(format!("walk in pages of {page}"), |b| {
            b.iter(|| assert_eq!(walk(&rt, &meta, page), TAGS))
        });
    }
    g.finish();
}

criterion_group!(benches, tags);
criterion_main!(benches);
