//! Multi-architecture images: an OCI image index over an amd64 and an arm64 image.

use crate::harness::{
    ACCEPT_ALL, Berth, DOCKER_LIST, DOCKER_MANIFEST, Layout, OCI_INDEX, OCI_MANIFEST,
    assert_same_image_blobs, parse_json, sha256_digest, skopeo_copy, skopeo_raw, tempdir, unique,
};

/// A layout holding an amd64 image, an arm64 image and an index `multi` over both.
/// Returns the layout, the index digest and the (digest, architecture) of the children.
pub fn two_arch_layout(dir: std::path::PathBuf) -> (Layout, String, Vec<(String, &'static str)>) {
    let src = Layout::init(dir);
    let amd = src.build("amd64", "amd64", &[("arch.txt", &unique("amd64 image"))]);
    let arm = src.build("arm64", "arm64", &[("arch.txt", &unique("arm64 image"))]);
    let index = src.add_index("multi", &[(&amd, "amd64"), (&arm, "arm64")]);
    (src, index, vec![(amd, "amd64"), (arm, "arm64")])
}

#[test]
fn multi_arch_index_push_fetch_children_and_pull_back() {
    let berth = Berth::start();
    let work = tempdir();
    let (src, index, children) = two_arch_layout(work.path().join("src"));

    skopeo_copy(&["--all"], &src.oci("multi"), &berth.docker("e2e/multi:v1"));

    let resp = berth.manifest("e2e/multi", "v1", OCI_INDEX);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some(OCI_INDEX));
    assert_eq!(resp.header("docker-content-digest"), Some(index.as_str()));
    assert_eq!(resp.body, src.blob(&index), "served index bytes");
    assert_eq!(skopeo_raw(&berth.docker("e2e/multi:v1")), src.blob(&index));

    for (child, arch) in &children {
        let resp = berth.manifest("e2e/multi", child, OCI_MANIFEST);
        assert_eq!(resp.status, 200, "{arch} child {child}: {resp:?}");
        assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(resp.header("docker-content-digest"), Some(child.as_str()));
        assert_eq!(resp.body, src.blob(child), "{arch} manifest bytes");
        let head = berth.request(
            "HEAD",
            &format!("/v2/e2e/multi/manifests/{child}"),
            &[("Accept", OCI_MANIFEST)],
        );
        assert_eq!(head.status, 200, "HEAD {child}: {head:?}");
        let len = src.blob(child).len().to_string();
        assert_eq!(head.header("content-length"), Some(len.as_str()));
        for blob in src.image_blobs(child) {
            let resp = berth.get(&format!("/v2/e2e/multi/blobs/{blob}"));
            assert_eq!(resp.status, 200, "{arch} blob {blob}");
            assert_eq!(resp.body, src.blob(&blob), "{arch} blob {blob}");
        }
    }

    // Resolving the index for one platform picks that platform's manifest.
    let (arm, _) = &children[1];
    let single = Layout::at(work.path().join("single"));
    skopeo_copy(
        &["--override-arch", "arm64", "--override-os", "linux"],
        &berth.docker("e2e/multi:v1"),
        &single.oci("arm"),
    );
    assert_eq!(&single.digest("arm"), arm, "arm64 instance of the index");
    assert_same_image_blobs(&src, &single, arm);

    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--all"],
        &berth.docker("e2e/multi:v1"),
        &back.oci("multi"),
    );
    assert_eq!(
        back.digest("multi"),
        index,
        "index digest after the round trip"
    );
    assert_eq!(back.blob(&index), src.blob(&index));
    for (child, _) in &children {
        assert_same_image_blobs(&src, &back, child);
    }
}

#[test]
fn multi_arch_docker_manifest_list() {
    let berth = Berth::start();
    let work = tempdir();
    let (src, _, children) = two_arch_layout(work.path().join("src"));

    skopeo_copy(
        &["--all", "--format", "v2s2"],
        &src.oci("multi"),
        &berth.docker("e2e/list:v1"),
    );

    let resp = berth.manifest("e2e/list", "v1", ACCEPT_ALL);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some(DOCKER_LIST), "{resp:?}");
    let digest = sha256_digest(&resp.body);
    assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
    let list = resp.json();
    assert_eq!(list["mediaType"], DOCKER_LIST);
    let entries = list["manifests"].as_array().expect("list entries");
    assert_eq!(entries.len(), 2, "{list:#}");
    for (entry, (child, arch)) in entries.iter().zip(&children) {
        assert_eq!(entry["platform"]["architecture"], *arch, "{list:#}");
        assert_eq!(entry["mediaType"], DOCKER_MANIFEST, "{list:#}");
        let d = entry["digest"].as_str().expect("entry digest");
        let m = berth.manifest("e2e/list", d, DOCKER_MANIFEST);
        assert_eq!(m.status, 200, "{arch} entry {d}: {m:?}");
        assert_eq!(m.header("content-type"), Some(DOCKER_MANIFEST));
        assert_eq!(sha256_digest(&m.body), d);
        // The docker manifest references exactly the blobs of the OCI original.
        let docker = parse_json(&m.body, "docker manifest");
        assert_eq!(
            crate::harness::image_blobs(&docker),
            src.image_blobs(child),
            "{arch} blobs"
        );
    }
}
