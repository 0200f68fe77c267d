//! Everything pushed survives a restart of the server on the same data directory.

use crate::harness::{
    Berth, Layout, OCI_INDEX, OCI_MANIFEST, assert_same_image_blobs, cmd, run, run_stdout,
    skopeo_copy, skopeo_inspect, strings, tempdir, unique,
};

#[test]
fn data_survives_a_restart() {
    let mut berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build(
        "v1",
        "amd64",
        &[("keep.txt", unique("persisted")), ("also.txt", unique("2"))],
    );
    for tag in ["v1", "stable"] {
        skopeo_copy(
            &[],
            &src.oci("v1"),
            &berth.docker(&format!("e2e/persist:{tag}")),
        );
    }
    std::fs::write(work.path().join("note.json"), unique("{\"note\":1}")).expect("note.json");
    let attached = run_stdout(
        cmd("oras")
            .current_dir(work.path())
            .args(["attach", "--plain-http", "--format", "json"])
            .args(["--artifact-type", "application/vnd.berth.e2e.note.v1"])
            .arg(berth.image("e2e/persist:v1"))
            .arg("note.json:application/json"),
    );
    let note = crate::harness::parse_json(attached.as_bytes(), "oras attach output");
    let before_referrers = berth.get(&format!("/v2/e2e/persist/referrers/{digest}"));
    assert_eq!(before_referrers.status, 200);

    berth.restart();

    assert_eq!(berth.tags("e2e/persist"), ["stable", "v1"]);
    let catalog = berth.get("/v2/_catalog");
    assert_eq!(
        strings(&catalog.json()["repositories"], "repositories"),
        ["e2e/persist"]
    );
    let info = skopeo_inspect(&berth.docker("e2e/persist:stable"));
    assert_eq!(info["Digest"], digest.as_str(), "{info:#}");
    let resp = berth.manifest("e2e/persist", "v1", OCI_MANIFEST);
    assert_eq!(resp.body, src.blob(&digest));

    let referrers = berth.get(&format!("/v2/e2e/persist/referrers/{digest}"));
    assert_eq!(referrers.status, 200, "{referrers:?}");
    assert_eq!(referrers.header("content-type"), Some(OCI_INDEX));
    assert_eq!(referrers.body, before_referrers.body, "referrers changed");
    assert_eq!(referrers.json()["manifests"][0]["digest"], note["digest"]);

    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &berth.docker("e2e/persist:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);

    // Still writable after the restart.
    skopeo_copy(
        &[],
        &berth.docker("e2e/persist:v1"),
        &berth.docker("e2e/persist:after"),
    );
    assert_eq!(berth.tags("e2e/persist"), ["after", "stable", "v1"]);
    run(cmd("skopeo").args([
        "delete",
        "--tls-verify=false",
        &berth.docker("e2e/persist:after"),
    ]));
    let gone = berth.manifest("e2e/persist", "v1", OCI_MANIFEST);
    assert_eq!(gone.status, 404, "deleting by digest removes every tag");
    assert_eq!(berth.tags("e2e/persist"), Vec::<String>::new());
}
