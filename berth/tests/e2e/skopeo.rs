//! skopeo against Berth: push from an OCI layout, inspect, pull back, tags, delete, and
//! copies between repositories.

use crate::harness::{
    Berth, Layout, OCI_MANIFEST, assert_same_image_blobs, cmd, parse_json, push_new_image, run,
    run_fails, run_stdout, sha256_digest, skopeo_copy, skopeo_inspect, skopeo_raw, strings,
    tempdir, unique,
};

#[test]
fn skopeo_push_inspect_and_pull_back_are_byte_identical() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build(
        "v1",
        "amd64",
        &[
            ("hello.txt", &unique("hello from skopeo")),
            ("motd", &unique("second layer")),
        ],
    );

    skopeo_copy(&[], &src.oci("v1"), &berth.docker("e2e/skopeo:v1"));

    let info = skopeo_inspect(&berth.docker("e2e/skopeo:v1"));
    assert_eq!(info["Digest"], digest.as_str(), "skopeo inspect: {info:#}");
    assert_eq!(info["Architecture"], "amd64", "skopeo inspect: {info:#}");
    assert_eq!(info["RepoTags"], serde_json::json!(["v1"]), "{info:#}");
    let blobs = src.image_blobs(&digest);
    assert_eq!(
        strings(&info["Layers"], "Layers"),
        blobs[1..].to_vec(),
        "skopeo inspect layers"
    );

    let raw = skopeo_raw(&berth.docker("e2e/skopeo:v1"));
    assert_eq!(
        raw,
        src.blob(&digest),
        "inspect --raw differs from the pushed manifest"
    );

    // What skopeo saw is what the API serves, by tag and by digest.
    for reference in ["v1", digest.as_str()] {
        let resp = berth.manifest("e2e/skopeo", reference, OCI_MANIFEST);
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(resp.body, raw);
    }
    for blob in &blobs {
        let resp = berth.get(&format!("/v2/e2e/skopeo/blobs/{blob}"));
        assert_eq!(resp.status, 200, "blob {blob}: {resp:?}");
        assert_eq!(&sha256_digest(&resp.body), blob);
    }

    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &berth.docker("e2e/skopeo:v1"), &back.oci("v1"));
    assert_eq!(back.digest("v1"), digest, "digest after the round trip");
    assert_same_image_blobs(&src, &back, &digest);
}

#[test]
fn skopeo_list_tags_is_sorted_and_delete_removes_the_manifest() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("a.txt", &unique("tags"))]);
    let other = src.build("other", "amd64", &[("b.txt", &unique("to delete"))]);
    assert_ne!(digest, other);

    // Pushed in an order unlike the listing order (case-insensitive, then bytewise).
    for tag in ["v1", "latest", "V2", "alpha", "Beta", "b10", "b9"] {
        skopeo_copy(
            &[],
            &src.oci("v1"),
            &berth.docker(&format!("e2e/tags:{tag}")),
        );
    }
    skopeo_copy(&[], &src.oci("other"), &berth.docker("e2e/tags:other"));

    let expected = ["alpha", "b10", "b9", "Beta", "latest", "other", "v1", "V2"];
    let listed = run_stdout(cmd("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &berth.docker("e2e/tags"),
    ]));
    let listed = parse_json(listed.as_bytes(), "skopeo list-tags output");
    assert_eq!(strings(&listed["Tags"], "Tags"), expected, "{listed:#}");
    assert_eq!(berth.tags("e2e/tags"), expected);
    for tag in ["V2", "b9", "alpha"] {
        let info = skopeo_inspect(&berth.docker(&format!("e2e/tags:{tag}")));
        assert_eq!(info["Digest"], digest.as_str(), "tag {tag}");
    }

    // A paged listing gives the same order.
    let page = berth.get("/v2/e2e/tags/tags/list?n=3");
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(strings(&page.json()["tags"], "tags"), expected[..3]);
    let link = page.header("link").unwrap_or_default();
    assert!(
        link.contains("last=b9") && link.contains("rel=\"next\""),
        "Link header of the first page: {link:?}"
    );

    run(cmd("skopeo").args([
        "delete",
        "--tls-verify=false",
        &berth.docker("e2e/tags:other"),
    ]));
    let err = run_fails(cmd("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &berth.docker("e2e/tags:other"),
    ]));
    assert!(
        err.to_ascii_lowercase().contains("manifest unknown"),
        "inspect after delete should fail with manifest unknown: {err}"
    );
    let gone = berth.manifest("e2e/tags", &other, OCI_MANIFEST);
    assert_eq!(gone.status, 404, "deleted manifest by digest: {gone:?}");
    let remaining: Vec<&str> = expected.iter().copied().filter(|t| *t != "other").collect();
    assert_eq!(berth.tags("e2e/tags"), remaining);

    // The other manifest and its tags are untouched.
    let info = skopeo_inspect(&berth.docker("e2e/tags:latest"));
    assert_eq!(info["Digest"], digest.as_str());
}

#[test]
fn skopeo_copies_between_repositories() {
    let berth = Berth::start();
    let work = tempdir();
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[("x.txt", &unique("cross repo")), ("y.txt", &unique("2"))],
        "e2e/cross-a:v1",
    );

    skopeo_copy(
        &[],
        &berth.docker("e2e/cross-a:v1"),
        &berth.docker("e2e/cross-b:copied"),
    );

    let info = skopeo_inspect(&berth.docker("e2e/cross-b:copied"));
    assert_eq!(info["Digest"], digest.as_str(), "{info:#}");
    assert_eq!(berth.tags("e2e/cross-b"), ["copied"]);
    assert_eq!(berth.tags("e2e/cross-a"), ["v1"]);
    let resp = berth.manifest("e2e/cross-b", "copied", OCI_MANIFEST);
    assert_eq!(resp.body, src.blob(&digest));
    for blob in src.image_blobs(&digest) {
        let resp = berth.get(&format!("/v2/e2e/cross-b/blobs/{blob}"));
        assert_eq!(resp.status, 200, "blob {blob} in the target repository");
        assert_eq!(resp.body, src.blob(&blob), "blob {blob}");
    }

    let catalog = berth.get("/v2/_catalog");
    assert_eq!(
        strings(&catalog.json()["repositories"], "repositories"),
        ["e2e/cross-a", "e2e/cross-b"]
    );

    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &berth.docker("e2e/cross-b:copied"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
}

#[test]
fn skopeo_parallel_pushes_of_one_image() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let big = crate::harness::noise(2 << 20);
    let digest = src.build(
        "v1",
        "amd64",
        &[
            ("big.bin", big.as_slice()),
            ("a.txt", unique("parallel a").as_bytes()),
            ("b.txt", unique("parallel b").as_bytes()),
        ],
    );

    // Eight clients push the same blobs at once, into three repositories.
    std::thread::scope(|s| {
        for i in 0..8 {
            let (src, berth) = (&src, &berth);
            s.spawn(move || {
                let dest = berth.docker(&format!("e2e/par-{}:t{i}", i % 3));
                skopeo_copy(&[], &src.oci("v1"), &dest);
            });
        }
    });

    let expected = [
        vec!["t0", "t3", "t6"],
        vec!["t1", "t4", "t7"],
        vec!["t2", "t5"],
    ];
    for (r, tags) in expected.iter().enumerate() {
        let name = format!("e2e/par-{r}");
        assert_eq!(&berth.tags(&name), tags, "{name}");
        for tag in tags {
            let resp = berth.manifest(&name, tag, OCI_MANIFEST);
            assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
        }
        for blob in src.image_blobs(&digest) {
            let resp = berth.get(&format!("/v2/{name}/blobs/{blob}"));
            assert_eq!(resp.status, 200, "{name} blob {blob}");
            assert_eq!(sha256_digest(&resp.body), blob, "{name} blob {blob}");
        }
    }
}

#[test]
fn skopeo_repository_names_that_look_like_api_paths() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("n.txt", &unique("names"))]);
    let names = [
        "e2e/blobs/uploads",
        "e2e/manifests/latest",
        "e2e/referrers/x",
        "e2e/tags/list",
        "e2e/v2/a.b_c__d-e",
    ];
    for name in names {
        skopeo_copy(&[], &src.oci("v1"), &berth.docker(&format!("{name}:v1")));
    }
    for name in names {
        let info = skopeo_inspect(&berth.docker(&format!("{name}:v1")));
        assert_eq!(info["Digest"], digest.as_str(), "{name}: {info:#}");
        assert_eq!(berth.tags(name), ["v1"], "{name}");
        let back = Layout::at(work.path().join(name.replace('/', "_")));
        skopeo_copy(&[], &berth.docker(&format!("{name}:v1")), &back.oci("v1"));
        assert_same_image_blobs(&src, &back, &digest);
    }
    let catalog = berth.get("/v2/_catalog");
    assert_eq!(
        strings(&catalog.json()["repositories"], "repositories"),
        names
    );
}

#[test]
fn skopeo_shows_a_refusal_once() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    src.build("a", "amd64", &[("a.txt", &unique("first"))]);
    src.build("b", "amd64", &[("b.txt", &unique("second"))]);
    skopeo_copy(&[], &src.oci("a"), &berth.docker("e2e/refusal:1.0.0"));
    // Semver tags are immutable by default: another image under 1.0.0 is refused.
    let err = run_fails(cmd("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &src.oci("b"),
        &berth.docker("e2e/refusal:1.0.0"),
    ]));
    assert!(err.contains("denied: tag 1.0.0 is immutable"), "{err}");
    assert!(!err.contains("denied: denied"), "{err}");
}

/// A tenant's quota against a real client's push (skopeo uploads each blob with a
/// streamed PATCH of unannounced length, then a PUT): the layer that does not fit is
/// refused with the quota's message, no byte of it reaches `blobs/`, no upload is left
/// behind, and once the quota is lifted the same push goes through.
#[test]
fn skopeo_push_past_a_tenant_quota_is_denied_and_stores_nothing() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    // Noise does not compress: the layer stays about 300 kB.
    let digest = src.build(
        "v1",
        "amd64",
        &[("big.bin", &crate::harness::noise(300_000))],
    );
    let blobs = src.image_blobs(&digest);
    run(berth.cli().args(["tenant", "add", "team"]));
    run(berth.cli().args(["tenant", "quota", "team", "100000"]));

    let stderr = run_fails(cmd("skopeo").args([
        "copy",
        "--quiet",
        "--retry-times=0",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &src.oci("v1"),
        &berth.docker("team/app:v1"),
    ]));
    assert!(
        stderr.contains("storage quota of tenant team exceeded"),
        "skopeo's error: {stderr}"
    );
    let layer = blobs.last().expect("a layer");
    let hex = layer.strip_prefix("sha256:").expect("sha256");
    let placed = berth
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    assert!(!placed.exists(), "the refused layer is in blobs/");
    let uploads = std::fs::read_dir(berth.data_dir().join("uploads")).expect("uploads/");
    assert_eq!(uploads.count(), 0, "an upload was left behind");
    let usage = run_stdout(berth.cli().args(["tenant", "quota", "team", "--json"]));
    let usage = crate::harness::parse_json(usage.as_bytes(), "quota");
    assert_eq!(
        (usage["bytes"].as_u64(), usage["uploads"].as_u64()),
        (Some(100_000), Some(0)),
        "{usage}"
    );

    run(berth.cli().args(["tenant", "quota", "team", "none"]));
    skopeo_copy(&[], &src.oci("v1"), &berth.docker("team/app:v1"));
    assert!(placed.exists(), "the layer after the quota was lifted");
}
