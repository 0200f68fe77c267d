//! containerd (ctr) pulling from and pushing to Berth: `--plain-http` and `--hosts-dir`.

use crate::containerd::Containerd;
use crate::harness::{
    Berth, Layout, OCI_MANIFEST, free_port, push_new_image, run, run_stdout, skopeo_copy, tempdir,
    unique,
};

/// The digest `ctr image ls` shows for `reference`.
#[track_caller]
fn listed_digest(daemon: &Containerd, namespace: &str, reference: &str) -> String {
    let ls = run_stdout(daemon.ctr(namespace).args(["image", "ls"]));
    ls.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&reference))
        .and_then(|cols| cols.get(2).map(|d| (*d).to_owned()))
        .unwrap_or_else(|| panic!("{reference} missing from `ctr image ls`:\n{ls}"))
}

/// Asserts containerd's content store holds the image's manifest and blobs, byte for byte.
#[track_caller]
fn assert_content_matches(daemon: &Containerd, namespace: &str, src: &Layout, digest: &str) {
    let ls = run_stdout(daemon.ctr(namespace).args(["content", "ls", "-q"]));
    let mut wanted = vec![digest.to_owned()];
    wanted.extend(src.image_blobs(digest));
    for blob in &wanted {
        assert!(
            ls.lines().any(|l| l.trim() == blob),
            "{blob} missing from `ctr content ls`:\n{ls}"
        );
        let bytes = run(daemon.ctr(namespace).args(["content", "get", blob])).stdout;
        assert_eq!(
            bytes,
            src.blob(blob),
            "content {blob} differs from the source"
        );
    }
}

#[test]
fn containerd_pulls_with_plain_http_and_hosts_dir() {
    let berth = Berth::start();
    let work = tempdir();
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[("c.txt", &unique("containerd")), ("d.txt", &unique("d"))],
        "e2e/ctr:v1",
    );

    let daemon = Containerd::start();
    let reference = berth.image("e2e/ctr:v1");

    run(daemon
        .ctr("plain")
        .args(["image", "pull", "--plain-http", &reference]));
    assert_eq!(listed_digest(&daemon, "plain", &reference), digest);
    assert_content_matches(&daemon, "plain", &src, &digest);

    // hosts.toml for the registry's own address: plain HTTP without --plain-http.
    let hosts = daemon.write_hosts_toml(berth.addr(), berth.addr());
    run(daemon
        .ctr("hosts")
        .args(["image", "pull", "--hosts-dir"])
        .arg(&hosts)
        .arg(&reference));
    assert_eq!(listed_digest(&daemon, "hosts", &reference), digest);
    assert_content_matches(&daemon, "hosts", &src, &digest);

    // hosts.toml as a mirror: an image named after a dead address is fetched from Berth
    // (containerd adds `?ns=<that address>` to every request).
    let dead = format!("127.0.0.1:{}", free_port());
    let hosts = daemon.write_hosts_toml(&dead, berth.addr());
    let mirrored = format!("{dead}/e2e/ctr:v1");
    run(daemon
        .ctr("mirror")
        .args(["image", "pull", "--hosts-dir"])
        .arg(&hosts)
        .arg(&mirrored));
    assert_eq!(listed_digest(&daemon, "mirror", &mirrored), digest);
    assert_content_matches(&daemon, "mirror", &src, &digest);
}

#[test]
fn containerd_pushes_to_berth() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("p.txt", &unique("ctr push"))]);
    skopeo_copy(&[], &src.oci("v1"), &berth.docker("e2e/ctr-src:v1"));

    let daemon = Containerd::start();
    let source = berth.image("e2e/ctr-src:v1");
    run(daemon
        .ctr("push")
        .args(["image", "pull", "--plain-http", &source]));

    let plain = berth.image("e2e/ctr-pushed:plain");
    run(daemon.ctr("push").args(["image", "tag", &source, &plain]));
    run(daemon
        .ctr("push")
        .args(["image", "push", "--plain-http", &plain]));

    let hosts = daemon.write_hosts_toml(berth.addr(), berth.addr());
    let via_hosts = berth.image("e2e/ctr-pushed:hosts");
    run(daemon
        .ctr("push")
        .args(["image", "tag", &source, &via_hosts]));
    run(daemon
        .ctr("push")
        .args(["image", "push", "--hosts-dir"])
        .arg(&hosts)
        .arg(&via_hosts));

    assert_eq!(berth.tags("e2e/ctr-pushed"), ["hosts", "plain"]);
    for tag in ["plain", "hosts"] {
        let resp = berth.manifest("e2e/ctr-pushed", tag, OCI_MANIFEST);
        assert_eq!(resp.status, 200, "{tag}: {resp:?}");
        assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(resp.body, src.blob(&digest));
    }
    for blob in src.image_blobs(&digest) {
        let resp = berth.get(&format!("/v2/e2e/ctr-pushed/blobs/{blob}"));
        assert_eq!(resp.status, 200, "blob {blob}");
        assert_eq!(resp.body, src.blob(&blob), "blob {blob}");
    }
}

#[test]
fn containerd_pulls_a_multi_arch_index() {
    let berth = Berth::start();
    let work = tempdir();
    let (src, index, children) = crate::multiarch::two_arch_layout(work.path().join("src"));
    skopeo_copy(
        &["--all"],
        &src.oci("multi"),
        &berth.docker("e2e/ctr-multi:v1"),
    );

    let daemon = Containerd::start();
    let reference = berth.image("e2e/ctr-multi:v1");
    run(daemon.ctr("multi").args([
        "image",
        "pull",
        "--plain-http",
        "--all-platforms",
        &reference,
    ]));
    assert_eq!(listed_digest(&daemon, "multi", &reference), index);
    let ls = run_stdout(daemon.ctr("multi").args(["image", "ls"]));
    assert!(
        ls.contains("linux/amd64,linux/arm64"),
        "both platforms listed:\n{ls}"
    );
    let got = run(daemon.ctr("multi").args(["content", "get", &index])).stdout;
    assert_eq!(got, src.blob(&index), "index bytes");
    for (child, _) in &children {
        assert_content_matches(&daemon, "multi", &src, child);
    }

    // A single-platform pull fetches only that platform's image.
    run(daemon.ctr("arm").args([
        "image",
        "pull",
        "--plain-http",
        "--platform",
        "linux/arm64",
        &reference,
    ]));
    let (arm, _) = &children[1];
    let (amd, _) = &children[0];
    assert_content_matches(&daemon, "arm", &src, arm);
    let ls = run_stdout(daemon.ctr("arm").args(["content", "ls", "-q"]));
    let amd_layer = &src.image_blobs(amd)[1];
    assert!(
        !ls.lines().any(|l| l.trim() == amd_layer),
        "the amd64 layer should not have been fetched:\n{ls}"
    );
}
