//! `berth mirror`: images fetched from an upstream ahead of time, into the cache and into
//! an ordinary repository, then served with the upstream gone.

use crate::harness::{
    Berth, Layout, OCI_MANIFEST, assert_same_image_blobs, run_fails, run_stdout, skopeo_copy,
    tempdir,
};
use crate::multiarch::two_arch_layout;

#[test]
fn mirror_prefetches_chosen_platforms_and_copies_into_a_repository() {
    let upstream = Berth::start();
    let work = tempdir();
    let (src, index, children) = two_arch_layout(work.path().join("src"));
    skopeo_copy(
        &["--all"],
        &src.oci("multi"),
        &upstream.docker("library/app:multi"),
    );
    let config = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"http://{}\"\n",
        upstream.addr()
    );
    let cache = Berth::start_with(&config, &[]);
    let image = "docker.io/library/app:multi";
    let (amd, _) = &children[0];
    let (arm, _) = &children[1];

    // Only arm64, into the cache, offline beside the running cache server.
    let out = run_stdout(
        cache
            .cli()
            .args(["mirror", image, "--platform", "linux/arm64"]),
    );
    assert!(out.contains("1 images mirrored, 0 failed"), "{out}");
    assert!(out.contains("1 platforms skipped"), "{out}");
    // Run again: everything is already here.
    let again = run_stdout(
        cache
            .cli()
            .args(["mirror", image, "--platform", "linux/arm64"]),
    );
    assert!(again.contains("0 blobs fetched"), "{again}");

    // With the upstream down, the cache serves what was mirrored and only that.
    drop(upstream);
    let served = cache.manifest("docker.io/library/app", arm, OCI_MANIFEST);
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.body, src.blob(arm));
    for blob in src.image_blobs(arm) {
        let r = cache.get(&format!("/v2/docker.io/library/app/blobs/{blob}"));
        assert_eq!(r.status, 200, "arm64 blob {blob}");
        assert_eq!(r.body, src.blob(&blob));
    }
    let skipped = cache.manifest("docker.io/library/app", amd, OCI_MANIFEST);
    assert_ne!(skipped.status, 200, "amd64 was not mirrored: {skipped:?}");
    // A mirror run against the dead upstream fails, saying which image.
    let err = run_fails(cache.cli().args(["mirror", "docker.io/library/other:v1"]));
    assert!(err.contains("docker.io/library/other:v1"), "{err}");

    // Every platform, copied into an ordinary repository, from a live upstream again.
    let upstream2 = Berth::start();
    skopeo_copy(
        &["--all"],
        &src.oci("multi"),
        &upstream2.docker("library/app:multi"),
    );
    let config2 = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"http://{}\"\n",
        upstream2.addr()
    );
    let cache2 = Berth::start_with(&config2, &[]);
    let out = run_stdout(cache2.cli().args(["mirror", image, "--into", "team-a/app"]));
    assert!(out.contains("1 images mirrored"), "{out}");
    drop(upstream2);
    let served = cache2.manifest("team-a/app", "multi", crate::harness::OCI_INDEX);
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(
        served.body,
        src.blob(&index),
        "the copy keeps the index bytes and digest"
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--all"],
        &cache2.docker("team-a/app:multi"),
        &back.oci("multi"),
    );
    for (child, _) in &children {
        assert_same_image_blobs(&src, &back, child);
    }
    // Not an upstream name: refused before anything is fetched.
    let err = run_fails(cache2.cli().args(["mirror", "quay.io/org/app:1"]));
    assert!(err.contains("not a configured [[upstream]]"), "{err}");
}
