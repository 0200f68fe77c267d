//! oras: artifacts with an artifact type, and referrers attached to an image.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{
    Berth, Layout, OCI_INDEX, OCI_MANIFEST, cmd, parse_json, run, run_stdout, sha256_digest,
    skopeo_copy, tempdir, unique,
};

const ARTIFACT: &str = "application/vnd.berth.e2e.artifact.v1";
const SIGNATURE: &str = "application/vnd.berth.e2e.sig.v1";
const SBOM: &str = "application/vnd.berth.e2e.sbom.v1";

/// `oras <args> --plain-http`, run in `dir` so file arguments are relative.
fn oras(dir: &Path, args: &[&str]) -> Command {
    let mut c = cmd("oras");
    c.current_dir(dir).args(args).arg("--plain-http");
    c
}

/// `oras attach` of `file` to `subject`; returns the referrer's descriptor.
fn attach(dir: &Path, subject: &str, artifact_type: &str, file: &str) -> Value {
    let out = run_stdout(&mut oras(
        dir,
        &[
            "attach",
            "--format",
            "json",
            "--artifact-type",
            artifact_type,
            subject,
            &format!("{file}:application/json"),
        ],
    ));
    parse_json(out.as_bytes(), "oras attach output")
}

#[test]
fn oras_pushes_and_pulls_an_artifact() {
    let berth = Berth::start();
    let work = tempdir();
    let payload = unique("artifact payload");
    std::fs::write(work.path().join("payload.txt"), &payload).expect("writing the payload");

    let reference = berth.image("e2e/artifact:v1");
    run(&mut oras(
        work.path(),
        &[
            "push",
            "--artifact-type",
            ARTIFACT,
            &reference,
            "payload.txt:text/plain",
        ],
    ));

    let resp = berth.manifest("e2e/artifact", "v1", OCI_MANIFEST);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST));
    let manifest = resp.json();
    assert_eq!(manifest["artifactType"], ARTIFACT, "{manifest:#}");
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "text/plain", "{manifest:#}");
    assert_eq!(layer["digest"], sha256_digest(payload.as_bytes()).as_str());
    assert_eq!(
        layer["annotations"]["org.opencontainers.image.title"],
        "payload.txt"
    );
    let fetched = run(&mut oras(work.path(), &["manifest", "fetch", &reference])).stdout;
    assert_eq!(fetched, resp.body, "oras manifest fetch");
    assert_eq!(berth.tags("e2e/artifact"), ["v1"]);

    let out = work.path().join("out");
    let output = format!("--output={}", out.display());
    run(&mut oras(work.path(), &["pull", &reference, &output]));
    let pulled = std::fs::read(out.join("payload.txt")).expect("oras pulled payload.txt");
    assert_eq!(pulled, payload.as_bytes(), "pulled artifact content");
}

#[test]
fn oras_attach_uses_the_referrers_api() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("img.txt", &unique("subject image"))]);
    skopeo_copy(&[], &src.oci("v1"), &berth.docker("e2e/signed:v1"));
    let subject = berth.image("e2e/signed:v1");

    let sig_body = unique("{\"signature\":\"fake\"}");
    std::fs::write(work.path().join("sig.json"), &sig_body).expect("writing sig.json");
    std::fs::write(work.path().join("sbom.json"), unique("{\"sbom\":1}")).expect("sbom.json");
    let sig = attach(work.path(), &subject, SIGNATURE, "sig.json");
    let sbom = attach(work.path(), &subject, SBOM, "sbom.json");
    let sig_digest = sig["digest"].as_str().expect("attach digest").to_owned();
    let sbom_digest = sbom["digest"].as_str().expect("attach digest").to_owned();

    // The referrer manifests point at the image.
    for (d, artifact_type) in [(&sig_digest, SIGNATURE), (&sbom_digest, SBOM)] {
        let resp = berth.manifest("e2e/signed", d, OCI_MANIFEST);
        assert_eq!(resp.status, 200, "referrer {d}: {resp:?}");
        let m = resp.json();
        assert_eq!(m["subject"]["digest"], digest.as_str(), "{m:#}");
        assert_eq!(m["artifactType"], artifact_type, "{m:#}");
    }

    let path = format!("/v2/e2e/signed/referrers/{digest}");
    let resp = berth.get(&path);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some(OCI_INDEX));
    assert_eq!(resp.header("oci-filters-applied"), None, "{resp:?}");
    let index = resp.json();
    assert_eq!(index["mediaType"], OCI_INDEX, "{index:#}");
    let mut listed: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("referrers manifests")
        .iter()
        .map(|d| {
            assert_eq!(d["mediaType"], OCI_MANIFEST, "{index:#}");
            (
                d["digest"].as_str().unwrap_or_default().to_owned(),
                d["artifactType"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![
        (sig_digest.clone(), SIGNATURE.to_owned()),
        (sbom_digest.clone(), SBOM.to_owned()),
    ];
    expected.sort();
    assert_eq!(listed, expected, "referrers of {digest}: {index:#}");
    let sig_entry = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["digest"] == sig_digest.as_str())
        .expect("signature listed");
    assert_eq!(sig_entry["size"], sig["size"], "{index:#}");

    let filtered = berth.get(&format!("{path}?artifactType={SIGNATURE}"));
    assert_eq!(filtered.status, 200, "{filtered:?}");
    assert_eq!(
        filtered.header("oci-filters-applied"),
        Some("artifactType"),
        "{filtered:?}"
    );
    let only = filtered.json();
    let entries = only["manifests"].as_array().expect("filtered manifests");
    assert_eq!(entries.len(), 1, "{only:#}");
    assert_eq!(entries[0]["digest"], sig_digest.as_str());
    assert_eq!(entries[0]["artifactType"], SIGNATURE);

    let none = berth.get(&format!("{path}?artifactType=application/x-none"));
    assert_eq!(none.status, 200, "{none:?}");
    assert_eq!(none.json()["manifests"], serde_json::json!([]));

    // No referrers: an empty index, not an error.
    let config = &src.image_blobs(&digest)[0];
    let empty = berth.get(&format!("/v2/e2e/signed/referrers/{config}"));
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(empty.json()["manifests"], serde_json::json!([]));

    // oras used the referrers API, not the `sha256-<hex>` tag fallback.
    assert_eq!(berth.tags("e2e/signed"), ["v1"]);

    let discovered = run_stdout(&mut oras(
        work.path(),
        &["discover", "--format", "json", &subject],
    ));
    let discovered = parse_json(discovered.as_bytes(), "oras discover output");
    let mut found: Vec<(String, String)> = discovered["manifests"]
        .as_array()
        .expect("discovered manifests")
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap_or_default().to_owned(),
                d["artifactType"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(found, expected, "oras discover: {discovered:#}");

    let filtered = run_stdout(&mut oras(
        work.path(),
        &[
            "discover",
            "--format",
            "json",
            "--artifact-type",
            SBOM,
            &subject,
        ],
    ));
    let filtered = parse_json(filtered.as_bytes(), "oras discover output");
    let entries = filtered["manifests"].as_array().expect("discovered");
    assert_eq!(entries.len(), 1, "{filtered:#}");
    assert_eq!(entries[0]["digest"], sbom_digest.as_str());

    let out = work.path().join("out");
    let output = format!("--output={}", out.display());
    let signature = format!("{}@{sig_digest}", berth.image("e2e/signed"));
    run(&mut oras(work.path(), &["pull", &signature, &output]));
    let pulled = std::fs::read(out.join("sig.json")).expect("oras pulled sig.json");
    assert_eq!(pulled, sig_body.as_bytes(), "pulled signature");

    // `oras cp -r` takes the referrers along to another repository.
    let copy = berth.image("e2e/signed-copy:v1");
    run(cmd("oras").args([
        "cp",
        "-r",
        "--from-plain-http",
        "--to-plain-http",
        &subject,
        &copy,
    ]));
    assert_eq!(berth.tags("e2e/signed-copy"), ["v1"]);
    assert_eq!(
        referrer_set(&berth, "e2e/signed-copy", &digest),
        expected,
        "referrers copied with oras cp -r"
    );

    // Deleting a referrer takes it out of the list.
    run(&mut oras(
        work.path(),
        &["manifest", "delete", "--force", &signature],
    ));
    let deleted = berth.manifest("e2e/signed", &sig_digest, OCI_MANIFEST);
    assert_eq!(deleted.status, 404, "{deleted:?}");
    assert_eq!(
        referrer_set(&berth, "e2e/signed", &digest),
        [(sbom_digest.clone(), SBOM.to_owned())]
    );
    let filtered = berth.get(&format!("{path}?artifactType={SIGNATURE}"));
    assert_eq!(filtered.json()["manifests"], serde_json::json!([]));
}

/// (digest, artifactType) of every referrer of `digest` in `name`, sorted.
#[track_caller]
fn referrer_set(berth: &Berth, name: &str, digest: &str) -> Vec<(String, String)> {
    let resp = berth.get(&format!("/v2/{name}/referrers/{digest}"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let index = resp.json();
    let mut out: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("referrers without manifests: {index}"))
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap_or_default().to_owned(),
                d["artifactType"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}
