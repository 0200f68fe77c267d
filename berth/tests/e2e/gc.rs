//! `berth gc` against a serving registry, and the collection scheduled inside `berth serve`:
//! images pushed with skopeo, the unreachable one swept from disk, everything else pulled
//! back with identical digests.

use std::time::Duration;

use crate::harness::{
    Berth, Layout, assert_same_image_blobs, run_stdout, skopeo_copy, tempdir, unique, wait_until,
};
use crate::multiarch::two_arch_layout;

fn blob_file(b: &Berth, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    b.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex)
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn gc_sweeps_what_a_moved_tag_left_and_keeps_the_rest() {
    let b = Berth::start();
    let work = tempdir();
    let (src, index, children) = two_arch_layout(work.path().join("src"));
    skopeo_copy(&["--all"], &src.oci("multi"), &b.docker("team/app:multi"));
    let old = src.build("old", "amd64", &[("f", unique("old image"))]);
    let new = src.build("new", "amd64", &[("f", unique("new image"))]);
    skopeo_copy(&[], &src.oci("old"), &b.docker("team/app:stable"));
    skopeo_copy(&[], &src.oci("new"), &b.docker("team/app:stable"));
    // The old image's own layer (its config differs too; the base is shared by none).
    let old_blobs = src.image_blobs(&old);
    for d in &old_blobs {
        assert!(blob_file(&b, d).exists(), "{d} stored");
    }

    // Inside the rollback window the tag's old target is a root: nothing goes.
    let kept = run_stdout(b.cli().args(["gc", "--grace-secs", "0"]));
    assert!(kept.starts_with("deleted 0 manifests"), "{kept}");
    let out = run_stdout(b.cli().args(["tag", "rollback", "team/app:stable"]));
    assert!(out.contains(&old), "{out}");
    skopeo_copy(&[], &src.oci("new"), &b.docker("team/app:stable"));

    // Without a window: the dry run names exactly the old image and its blobs...
    let args = ["--grace-secs", "0", "--rollback-window-secs", "0"];
    let dry = run_stdout(b.cli().args(["gc", "--dry-run", "-v"]).args(args));
    let mut listed: Vec<&str> = dry.lines().filter(|l| !l.starts_with("would")).collect();
    listed.sort();
    let mut expected: Vec<String> = old_blobs
        .iter()
        .map(|d| format!("blob\t{d}\t{}", src.blob(d).len()))
        .chain([format!("manifest\tteam/app@{old}")])
        .collect();
    expected.sort();
    assert_eq!(listed, expected, "{dry}");
    for d in &old_blobs {
        assert!(blob_file(&b, d).exists(), "a dry run deletes nothing");
    }

    // ...and the collection deletes them, while the server keeps serving the rest.
    let done = run_stdout(b.cli().args(["gc"]).args(args));
    assert!(
        done.starts_with(&format!(
            "deleted 1 manifests, {} blob links, {} blobs",
            old_blobs.len(),
            old_blobs.len()
        )),
        "{done}"
    );
    for d in &old_blobs {
        assert!(!blob_file(&b, d).exists(), "{d} swept");
    }
    assert_eq!(b.manifest("team/app", &old, ACCEPT).status, 404);
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &b.docker("team/app:stable"), &back.oci("stable"));
    assert_same_image_blobs(&src, &back, &new);
    skopeo_copy(
        &["--all"],
        &b.docker(&format!("team/app@{index}")),
        &back.oci("multi"),
    );
    for (child, _) in &children {
        assert_same_image_blobs(&src, &back, child);
    }
    let again = run_stdout(b.cli().args(["gc"]).args(args));
    assert!(
        again.starts_with("deleted 0 manifests, 0 blob links, 0 blobs"),
        "{again}"
    );
}

#[test]
fn serve_collects_on_its_schedule() {
    // A grace period of 0 would let a round collect the blobs of a push still in flight
    // (pushed, their manifest not yet): 2 s covers a push here.
    let b = Berth::start_with(
        "[gc]\ninterval_secs = 1\ngrace_secs = 2\nrollback_window_secs = 0\n",
        &[],
    );
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let old = src.build("old", "amd64", &[("f", unique("scheduled old"))]);
    let new = src.build("new", "amd64", &[("f", unique("scheduled new"))]);
    skopeo_copy(&[], &src.oci("old"), &b.docker("team/app:stable"));
    skopeo_copy(&[], &src.oci("new"), &b.docker("team/app:stable"));
    // Blobs go in a later phase of the same run than manifests: wait for both.
    let old_blobs = src.image_blobs(&old);
    wait_until(Duration::from_secs(20), "the scheduled collection", || {
        b.manifest("team/app", &old, ACCEPT).status == 404
            && old_blobs.iter().all(|d| !blob_file(&b, d).exists())
    });
    // The round logs when it ends, a moment after its last deletion.
    wait_until(Duration::from_secs(10), "the collection's log line", || {
        b.log().contains("garbage collection finished")
    });
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &b.docker("team/app:stable"), &back.oci("stable"));
    assert_same_image_blobs(&src, &back, &new);
}

#[test]
fn retention_cli_removes_what_the_policy_does_not_keep() {
    let b = Berth::start_with(
        "[[retention]]\nrepositories = \"team/*\"\nkeep_last_semver = 1\nkeep_tags = [\"stable\"]\ninclude_immutable = true\n",
        &[],
    );
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    for tag in ["1.0.0", "1.1.0", "stable", "nightly"] {
        src.build(tag, "amd64", &[("f", unique(tag))]);
        skopeo_copy(&[], &src.oci(tag), &b.docker(&format!("team/app:{tag}")));
    }
    let dry = run_stdout(b.cli().args(["retention", "--dry-run", "-v"]));
    let mut listed: Vec<&str> = dry
        .lines()
        .filter_map(|l| l.strip_prefix("tag\t"))
        .filter_map(|l| l.split('\t').next())
        .collect();
    listed.sort();
    assert_eq!(listed, ["team/app:1.0.0", "team/app:nightly"], "{dry}");
    assert_eq!(b.tags("team/app").len(), 4, "a dry run removes nothing");
    let done = run_stdout(b.cli().args(["retention"]));
    assert!(done.starts_with("removed 2 tags"), "{done}");
    let mut left = b.tags("team/app");
    left.sort();
    assert_eq!(left, ["1.1.0", "stable"]);
}

#[test]
fn migrate_brings_the_schema_up_to_date_and_says_so() {
    let b = Berth::start();
    let out = run_stdout(b.cli().arg("migrate"));
    let (at, of) = out
        .trim()
        .strip_prefix("metadata schema at version ")
        .and_then(|r| r.split_once(" of "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(at, of.split(' ').next().unwrap_or_default(), "{out}");
}
