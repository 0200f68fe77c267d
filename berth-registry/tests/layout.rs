//! Export to and import from OCI image layouts through the registry's use cases, against
//! real stores (the filesystem, and SQLite or PostgreSQL).

mod common;

use std::sync::Mutex;

use berth_oci::{Digest, ImageRef, Reference, RepoName};
use berth_registry::layout::REPOSITORY;
use berth_registry::transfer::{NoProgress, Progress, TransferError};
use berth_registry::{Actor, Registry, RegistryError};
use berth_storage::layout::{OciLayout, REF_NAME};
use common::{index, push_image, put, read_all, registry, repo, sha};

/// Records what a copy reports.
#[derive(Default)]
struct Recorded {
    bytes: Mutex<u64>,
    images: Mutex<Vec<String>>,
}

impl Progress for Recorded {
    fn bytes(&self, n: u64) {
        *self.bytes.lock().expect("lock") += n;
    }

    fn image_done(&self, repo: &RepoName, reference: &Reference, digest: &Digest) {
        self.images
            .lock()
            .expect("lock")
            .push(format!("{repo} {reference} {digest}"));
    }
}

fn images(names: &[&str]) -> Vec<ImageRef> {
    names.iter().map(|n| n.parse().expect("image")).collect()
}

/// A two-platform index tagged `multi` and a single image tagged `single` in `team-a/app`,
/// and an image in `team-b/other` that no export names. The index's and the single
/// image's bytes, and every blob's content.
async fn seed(r: &Registry) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let app = repo("team-a/app");
    let blobs: Vec<Vec<u8>> = ["amd64 config", "amd64 layer", "arm64 config", "arm64 layer"]
        .iter()
        .chain(&["single config", "single layer"])
        .map(|s| format!("{s} {}", uuid::Uuid::new_v4()).into_bytes())
        .collect();
    let amd = push_image(r, &app, None, &blobs[0], &[&blobs[1]], None)
        .await
        .expect("amd64");
    let arm = push_image(r, &app, None, &blobs[2], &[&blobs[3]], None)
        .await
        .expect("arm64");
    let multi = index(&[&amd, &arm]);
    put(r, &app, Some("multi"), &multi).await.expect("index");
    let single = push_image(r, &app, Some("single"), &blobs[4], &[&blobs[5]], None)
        .await
        .expect("single");
    push_image(r, &repo("team-b/other"), Some("v1"), b"other", &[], None)
        .await
        .expect("other");
    (multi, single, blobs)
}

fn layout_file(root: &std::path::Path, d: &Digest) -> std::path::PathBuf {
    root.join("blobs/sha256").join(d.hex())
}

/// `team-a/app:v1` (a config and `layer`) pushed to a new registry in `dir/a` and exported
/// to `dir/backup`: the registry, the manifest's bytes and the layout.
async fn exported(dir: &std::path::Path, layer: &[u8]) -> (Registry, Vec<u8>, OciLayout) {
    let a = registry(&dir.join("a"), false).await;
    let m = push_image(
        &a,
        &repo("team-a/app"),
        Some("v1"),
        b"config",
        &[layer],
        None,
    )
    .await
    .expect("push");
    let layout = OciLayout::create(dir.join("backup")).await.expect("layout");
    a.export_layout(&layout, &images(&["team-a/app:v1"]), &NoProgress)
        .await
        .expect("export");
    (a, m, layout)
}

async fn round_trip(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = registry(&dir.path().join("a"), postgres).await;
    let (multi, single, blobs) = seed(&a).await;
    let out = dir.path().join("backup");
    let layout = OciLayout::create(&out).await.expect("layout");

    let seen = Recorded::default();
    let r = a
        .export_layout(&layout, &images(&["team-a/app"]), &seen)
        .await
        .expect("export");
    let blob_bytes: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    assert_eq!(
        (r.images, r.blobs_written, r.bytes, r.blobs_skipped),
        (2, 6, blob_bytes, 0)
    );
    assert_eq!(*seen.bytes.lock().expect("lock"), blob_bytes);
    let mut done = seen.images.lock().expect("lock").clone();
    done.sort();
    assert_eq!(
        done,
        [
            format!("team-a/app multi {}", sha(&multi)),
            format!("team-a/app single {}", sha(&single)),
        ]
    );
    // Every blob and manifest is in the layout under its digest, byte for byte.
    for b in &blobs {
        assert_eq!(&std::fs::read(layout_file(&out, &sha(b))).expect("blob"), b);
    }
    assert_eq!(
        std::fs::read(layout_file(&out, &sha(&multi))).expect("index"),
        multi
    );
    assert!(
        !layout_file(&out, &sha(b"other")).exists(),
        "an image no one named"
    );
    let written = OciLayout::open(&out).await.expect("a layout");
    let entries = written.read_index().await.expect("index.json").manifests;
    let named: Vec<(Option<&str>, Option<&str>, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.annotations.get(REPOSITORY).map(String::as_str),
                e.ref_name(),
                e.digest.as_str(),
            )
        })
        .collect();
    let (multi_digest, single_digest) = (sha(&multi).to_string(), sha(&single).to_string());
    assert_eq!(
        named,
        [
            (Some("team-a/app"), Some("multi"), multi_digest.as_str()),
            (Some("team-a/app"), Some("single"), single_digest.as_str()),
        ]
    );

    // Again, one tag: nothing new is written and the index keeps both entries.
    let again = a
        .export_layout(&layout, &images(&["team-a/app:multi"]), &NoProgress)
        .await
        .expect("export again");
    assert_eq!((again.blobs_written, again.blobs_skipped), (0, 4));
    assert_eq!(
        written.read_index().await.expect("index").manifests.len(),
        2
    );

    // Into another registry, then pulled back.
    let b = registry(&dir.path().join("b"), postgres).await;
    let r = b
        .import_layout(&written, None, &Actor::named("cli"), &NoProgress)
        .await
        .expect("import");
    assert_eq!(
        (r.images, r.blobs_pushed, r.bytes, r.blobs_skipped),
        (2, 6, blob_bytes, 0)
    );
    let app = repo("team-a/app");
    let got = b
        .get_manifest(&app, &"multi".parse().expect("tag"))
        .await
        .expect("multi");
    assert_eq!(got.content, multi);
    assert_eq!(got.digest, sha(&multi));
    let got = b
        .get_manifest(&app, &"single".parse().expect("tag"))
        .await
        .expect("single");
    assert_eq!(got.content, single);
    for data in &blobs {
        assert_eq!(&read_all(&b, &app, &sha(data)).await.expect("blob"), data);
    }
    let twice = b
        .import_layout(&written, None, &Actor::named("cli"), &NoProgress)
        .await
        .expect("import again");
    assert_eq!((twice.blobs_pushed, twice.blobs_skipped), (0, 6));
}

#[tokio::test]
async fn export_and_import_round_trip_identical_bytes_sqlite() {
    round_trip(false).await;
}

#[tokio::test]
async fn export_and_import_round_trip_identical_bytes_postgres() {
    round_trip(true).await;
}

#[tokio::test]
async fn import_refuses_a_corrupt_layout_and_links_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = repo("team-a/app");
    let layer = format!("layer {}", uuid::Uuid::new_v4()).into_bytes();
    let (_, _, layout) = exported(dir.path(), &layer).await;
    let path = layout_file(layout.root(), &sha(&layer));
    let mut bytes = std::fs::read(&path).expect("layer");
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt");

    let b = registry(&dir.path().join("b"), false).await;
    let err = b
        .import_layout(&layout, None, &Actor::named("cli"), &NoProgress)
        .await
        .expect_err("a corrupt layer");
    assert!(
        matches!(
            &err,
            TransferError::Registry { what, source: RegistryError::DigestMismatch { expected, .. } }
                if what.contains(&sha(&layer).to_string()) && *expected == sha(&layer)
        ),
        "{err:?}"
    );
    assert!(matches!(
        b.get_manifest(&app, &"v1".parse().expect("tag")).await,
        Err(RegistryError::ManifestUnknown)
    ));
    assert!(b.stat_blob(&app, &sha(&layer)).await.is_err(), "linked");
}

#[tokio::test]
async fn export_refuses_a_corrupt_store_and_writes_nothing_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("a");
    let a = registry(&store, false).await;
    let app = repo("team-a/app");
    let layer = format!("layer {}", uuid::Uuid::new_v4()).into_bytes();
    push_image(&a, &app, Some("v1"), b"config", &[&layer], None)
        .await
        .expect("push");
    let d = sha(&layer);
    let stored = store.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex());
    let mut bytes = std::fs::read(&stored).expect("stored layer");
    bytes[0] ^= 0xff;
    std::fs::write(&stored, bytes).expect("corrupt");

    let out = dir.path().join("backup");
    let layout = OciLayout::create(&out).await.expect("layout");
    let err = a
        .export_layout(&layout, &images(&["team-a/app:v1"]), &NoProgress)
        .await
        .expect_err("a corrupt store");
    assert!(err.to_string().contains("the store is corrupt"), "{err}");
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    let left: Vec<String> = std::fs::read_dir(out.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.starts_with(d.hex())),
        "the corrupt layer landed: {left:?}"
    );
    assert!(
        !out.join("index.json").exists(),
        "an index naming an incomplete image"
    );
}

#[tokio::test]
async fn a_layout_from_another_tool_goes_where_it_is_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, m, layout) = exported(dir.path(), b"layer").await;
    // As skopeo writes it: the tag, no repository.
    let mut index = layout.read_index().await.expect("index");
    index.manifests[0].annotations.remove(REPOSITORY);
    layout.write_index(&index).await.expect("rewrite");

    let b = registry(&dir.path().join("b"), false).await;
    let err = b
        .import_layout(&layout, None, &Actor::named("cli"), &NoProgress)
        .await
        .expect_err("no repository");
    assert!(err.to_string().contains("pass --repository"), "{err}");
    let target = repo("team-c/copy");
    b.import_layout(&layout, Some(&target), &Actor::named("cli"), &NoProgress)
        .await
        .expect("import");
    let got = b
        .get_manifest(&target, &"v1".parse().expect("tag"))
        .await
        .expect("v1");
    assert_eq!(got.content, m);
    assert_eq!(index.manifests[0].ref_name(), Some("v1"));
    assert!(index.manifests[0].annotations.contains_key(REF_NAME));
}
