//! Docker image manifest v2 schema 2: pushed by skopeo with `--format v2s2`.

use crate::harness::{
    Berth, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, Layout, OCI_MANIFEST, image_blobs,
    sha256_digest, skopeo_copy, skopeo_inspect, skopeo_raw, tempdir, unique,
};

#[test]
fn docker_schema2_is_served_with_its_media_type_and_pulls_back() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let oci_digest = src.build(
        "v1",
        "amd64",
        &[("d.txt", &unique("docker v2s2")), ("e.txt", &unique("e"))],
    );

    skopeo_copy(
        &["--format", "v2s2"],
        &src.oci("v1"),
        &berth.docker("e2e/docker:v1"),
    );

    let accept = format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}");
    let resp = berth.manifest("e2e/docker", "v1", &accept);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some(DOCKER_MANIFEST),
        "{resp:?}"
    );
    let digest = sha256_digest(&resp.body);
    assert_ne!(
        digest, oci_digest,
        "the manifest should have been converted"
    );
    assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
    let manifest = resp.json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], DOCKER_CONFIG);
    for layer in manifest["layers"].as_array().expect("layers") {
        assert_eq!(layer["mediaType"], DOCKER_LAYER, "{manifest:#}");
    }
    // Conversion changes media types only: the blobs are the OCI image's.
    assert_eq!(image_blobs(&manifest), src.image_blobs(&oci_digest));

    let head = berth.request(
        "HEAD",
        "/v2/e2e/docker/manifests/v1",
        &[("Accept", DOCKER_MANIFEST)],
    );
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    let len = resp.body.len().to_string();
    assert_eq!(head.header("content-length"), Some(len.as_str()));

    // By digest too.
    let by_digest = berth.manifest("e2e/docker", &digest, DOCKER_MANIFEST);
    assert_eq!(by_digest.status, 200, "{by_digest:?}");
    assert_eq!(by_digest.body, resp.body);

    assert_eq!(skopeo_raw(&berth.docker("e2e/docker:v1")), resp.body);
    let info = skopeo_inspect(&berth.docker("e2e/docker:v1"));
    assert_eq!(info["Digest"], digest.as_str(), "{info:#}");

    // The `dir:` transport keeps the manifest as served and names blobs by digest.
    let back = work.path().join("back");
    skopeo_copy(
        &[],
        &berth.docker("e2e/docker:v1"),
        &format!("dir:{}", back.display()),
    );
    let manifest_back = std::fs::read(back.join("manifest.json")).expect("manifest.json");
    assert_eq!(manifest_back, resp.body, "pulled manifest bytes");
    for blob in src.image_blobs(&oci_digest) {
        let path = back.join(blob.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&path).expect("pulled blob");
        assert_eq!(bytes, src.blob(&blob), "blob {blob} pulled back");
    }
}
