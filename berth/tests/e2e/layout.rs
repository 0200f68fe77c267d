//! `berth export` and `berth import`: OCI image layouts written and read by the real binary,
//! checked with skopeo and by pulling back.

use crate::harness::{
    Berth, Layout, assert_same_image_blobs, run, run_fails, run_stdout, skopeo_copy, skopeo_raw,
    tempdir, unique,
};
use crate::multiarch::two_arch_layout;

#[test]
fn export_and_import_round_trip_with_identical_digests() {
    let a = Berth::start();
    let work = tempdir();
    let (src, index, children) = two_arch_layout(work.path().join("src"));
    skopeo_copy(&["--all"], &src.oci("multi"), &a.docker("team-a/app:multi"));
    let single = src.build("single", "amd64", &[("f", unique("single image"))]);
    skopeo_copy(&[], &src.oci("single"), &a.docker("team-a/app:single"));

    // Every tag of the repository, offline while the server runs.
    let out = work.path().join("backup");
    let report = run_stdout(a.cli().args(["export", "team-a/app", "--output"]).arg(&out));
    assert!(report.contains("exported 2 images"), "{report}");
    // skopeo reads the layout by tag and finds the very bytes the registry served.
    assert_eq!(
        skopeo_raw(&format!("oci:{}:multi", out.display())),
        src.blob(&index)
    );
    assert_eq!(
        skopeo_raw(&format!("oci:{}:single", out.display())),
        src.blob(&single)
    );
    let backup = Layout::at(out.clone());
    for (child, _) in &children {
        assert_same_image_blobs(&src, &backup, child);
    }
    assert_same_image_blobs(&src, &backup, &single);

    // Exporting again adds nothing: every blob is already there.
    let again = run_stdout(
        a.cli()
            .args(["export", "team-a/app:multi", "--output"])
            .arg(&out),
    );
    assert!(again.contains("0 blobs written"), "{again}");

    // Restore into another registry, and pull back by tag and by digest.
    let b = Berth::start();
    let report = run_stdout(b.cli().arg("import").arg(&out));
    assert!(report.contains("imported 2 images"), "{report}");
    assert_eq!(skopeo_raw(&b.docker("team-a/app:multi")), src.blob(&index));
    assert_eq!(
        skopeo_raw(&b.docker("team-a/app:single")),
        src.blob(&single)
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--all"],
        &b.docker(&format!("team-a/app@{index}")),
        &back.oci("multi"),
    );
    for (child, _) in &children {
        assert_same_image_blobs(&src, &back, child);
    }
    // Importing twice pushes nothing new.
    let twice = run_stdout(b.cli().arg("import").arg(&out));
    assert!(twice.contains("0 blobs pushed"), "{twice}");
}

#[test]
fn import_refuses_a_corrupt_layout_and_links_nothing() {
    let a = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("f", unique("to corrupt"))]);
    skopeo_copy(&[], &src.oci("v1"), &a.docker("team-a/app:v1"));
    let out = work.path().join("backup");
    run(a
        .cli()
        .args(["export", "team-a/app:v1", "--output"])
        .arg(&out));

    // Flip one byte of the layer in the layout.
    let layer = src.image_blobs(&digest).pop().expect("a layer");
    let hex = layer.trim_start_matches("sha256:");
    let path = out.join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&path).expect("layer file");
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");

    let b = Berth::start();
    let err = run_fails(b.cli().arg("import").arg(&out));
    assert!(err.contains(&layer) || err.contains("digest"), "{err}");
    assert_eq!(
        b.manifest("team-a/app", "v1", crate::harness::OCI_MANIFEST)
            .status,
        404
    );
    assert_eq!(b.get(&format!("/v2/team-a/app/blobs/{layer}")).status, 404);
}
