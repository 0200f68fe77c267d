//! podman (vfs storage in a temporary directory) pulling from and pushing to Berth.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::harness::{
    ACCEPT_ALL, Berth, DOCKER_MANIFEST, OCI_MANIFEST, cmd, push_new_image, require_root, run,
    run_stdout, sha256_digest, tempdir, unique,
};

/// podman with private storage: nothing touches the machine's images.
struct Podman {
    dir: TempDir,
}

impl Podman {
    fn new() -> Podman {
        require_root("podman with vfs storage runs as root here");
        let dir = tempdir();
        for sub in ["root", "runroot", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("creating podman directories");
        }
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let p = self.dir.path();
        let mut c = cmd("podman");
        c.arg("--root")
            .arg(p.join("root"))
            .arg("--runroot")
            .arg(p.join("runroot"))
            .arg("--tmpdir")
            .arg(p.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    /// The manifest digest podman recorded for `image`.
    fn digest(&self, image: &str) -> String {
        run_stdout(
            self.cmd()
                .args(["image", "inspect", "--format", "{{.Digest}}", image]),
        )
        .trim()
        .to_owned()
    }

    /// `podman push` with `--format`, returning the digest podman wrote to `--digestfile`.
    fn push(&self, image: &str, destination: &str, format: &str, digest_file: &Path) -> String {
        run(self
            .cmd()
            .args([
                "push",
                "--tls-verify=false",
                "--format",
                format,
                "--digestfile",
            ])
            .arg(digest_file)
            .args([image, destination]));
        std::fs::read_to_string(digest_file)
            .expect("podman wrote its digest file")
            .trim()
            .to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Best effort: release anything podman holds in its storage before it is deleted.
        let _ = crate::harness::exec(self.cmd().args(["rmi", "-a", "-f"]));
    }
}

/// The `rootfs.diff_ids` of an image's config: the uncompressed layers, which survive
/// any recompression on the way.
fn diff_ids(config: &serde_json::Value) -> serde_json::Value {
    config["rootfs"]["diff_ids"].clone()
}

#[test]
fn podman_pulls_retags_and_pushes_in_both_formats() {
    let berth = Berth::start();
    let work = tempdir();
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[("pod.txt", &unique("podman")), ("man.txt", &unique("m"))],
        "e2e/podman-src:v1",
    );
    let src_config = src.json_blob(&src.image_blobs(&digest)[0]);

    let podman = Podman::new();
    let pulled = berth.image("e2e/podman-src:v1");
    run(podman.cmd().args(["pull", "--tls-verify=false", &pulled]));
    assert_eq!(podman.digest(&pulled), digest, "digest podman pulled");

    let retagged = berth.image("e2e/podman-dst:v1");
    run(podman.cmd().args(["tag", &pulled, &retagged]));
    let v2s2 = podman.push(
        &retagged,
        &retagged,
        "v2s2",
        &work.path().join("v2s2.digest"),
    );
    let oci = podman.push(
        &pulled,
        &berth.image("e2e/podman-dst:oci"),
        "oci",
        &work.path().join("oci.digest"),
    );

    assert_eq!(berth.tags("e2e/podman-dst"), ["oci", "v1"]);
    for (tag, pushed, media_type) in [("v1", &v2s2, DOCKER_MANIFEST), ("oci", &oci, OCI_MANIFEST)] {
        let resp = berth.manifest("e2e/podman-dst", tag, ACCEPT_ALL);
        assert_eq!(resp.status, 200, "{tag}: {resp:?}");
        assert_eq!(resp.header("content-type"), Some(media_type), "{tag}");
        assert_eq!(resp.header("docker-content-digest"), Some(pushed.as_str()));
        assert_eq!(&sha256_digest(&resp.body), pushed, "{tag} body digest");
        let manifest = resp.json();
        // Docker requires the field; OCI makes it optional (podman leaves it out).
        assert!(
            manifest["mediaType"] == media_type
                || (media_type == OCI_MANIFEST && manifest["mediaType"].is_null()),
            "{tag}: {manifest:#}"
        );
        let config_digest = manifest["config"]["digest"].as_str().expect("config");
        let config = berth.get(&format!("/v2/e2e/podman-dst/blobs/{config_digest}"));
        assert_eq!(config.status, 200, "{tag} config: {config:?}");
        assert_eq!(
            diff_ids(&config.json()),
            diff_ids(&src_config),
            "{tag}: pushed layers differ from the source"
        );
        for layer in manifest["layers"].as_array().expect("layers") {
            let d = layer["digest"].as_str().expect("layer digest");
            let blob = berth.get(&format!("/v2/e2e/podman-dst/blobs/{d}"));
            assert_eq!(blob.status, 200, "{tag} layer {d}");
            assert_eq!(&sha256_digest(&blob.body), d, "{tag} layer {d}");
        }
    }

    // A fresh pull of what podman pushed.
    run(podman.cmd().args(["rmi", "-a", "-f"]));
    let pushed_oci = berth.image("e2e/podman-dst:oci");
    run(podman
        .cmd()
        .args(["pull", "--tls-verify=false", &pushed_oci]));
    assert_eq!(podman.digest(&pushed_oci), oci);
}
