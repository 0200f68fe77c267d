//! Signatures that travel with their images, with the real clients: an image signed by
//! cosign 2.5 (`.sig` tag) and given an OCI referrer by `oras attach` on one Berth (the
//! "upstream"); a second Berth caches it as `docker.io` under an enforcing signature
//! rule. The first skopeo pull through the cache is admitted (the signature came along
//! before the answer), an unsigned image refused, and with the upstream gone the
//! signature, the referrer and `cosign verify` still work. `berth mirror` brings them
//! too; export/import carries them; deleting an image takes its `.sig` with it at the
//! next collection.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{
    Berth, Layout, OCI_MANIFEST, cmd, exec, run, run_stdout, skopeo_copy, tempdir, wait_until,
};

const PASSWORD: &str = "e2e-cosign-password";

fn cosign(home: &Path, args: &[&str]) -> Command {
    let mut c = cmd("cosign");
    c.current_dir(home)
        .env("HOME", home)
        .env("COSIGN_PASSWORD", PASSWORD)
        .args(args);
    c
}

fn cosign_sign(home: &Path, image: &str) {
    run(&mut cosign(
        home,
        &[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--allow-http-registry",
            "-y",
            image,
        ],
    ));
}

fn cosign_verify(home: &Path, image: &str) -> bool {
    exec(&mut cosign(
        home,
        &[
            "verify",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            "--allow-http-registry",
            image,
        ],
    ))
    .status
    .success()
}

/// `oras attach`es a small artifact to `image` (an OCI referrer); its digest.
fn oras_attach(dir: &Path, image: &str) -> String {
    std::fs::write(dir.join("note.json"), br#"{"reviewed":true}"#).expect("note");
    let out = run_stdout(cmd("oras").current_dir(dir).args([
        "attach",
        "--plain-http",
        "--artifact-type",
        "application/vnd.example.review+json",
        "--format",
        "go-template={{.digest}}",
        image,
        "note.json:application/json",
    ]));
    out.trim().to_owned()
}

/// skopeo copies `name` from `berth` to a directory; whether it was served.
fn pull(berth: &Berth, name: &str, out: &Path) -> bool {
    let dest = format!(
        "dir:{}",
        out.join(name.replace(['/', ':', '@'], "_")).display()
    );
    let out = exec(cmd("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &berth.docker(name),
        &dest,
    ]));
    if !out.status.success() {
        eprintln!("pull {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// The digests `GET /v2/<name>/referrers/<digest>` lists.
fn referrers(berth: &Berth, name: &str, digest: &str) -> Vec<String> {
    let r = berth.get(&format!("/v2/{name}/referrers/{digest}"));
    assert_eq!(r.status, 200, "referrers of {name}@{digest}: {r:?}");
    r.json()["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `berth_upstream_signature_fetches_total{outcome=...}` of a Berth.
fn signature_fetches(berth: &Berth, outcome: &str) -> u64 {
    let r = berth.get("/metrics");
    let prefix = format!(r#"berth_upstream_signature_fetches_total{{outcome="{outcome}"}} "#);
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A cosign key pair in a new directory, an upstream Berth holding `library/signed:v1`
/// (signed by cosign, with an `oras attach`ed referrer) and `library/unsigned:v1`.
struct Upstream {
    work: tempfile::TempDir,
    berth: Berth,
    signed: String,
    unsigned: String,
    referrer: String,
}

fn upstream() -> Upstream {
    let work = tempdir();
    let w = work.path();
    run(&mut cosign(w, &["generate-key-pair"]));
    let berth = Berth::start();
    let layout = Layout::init(w.join("layout"));
    let signed = layout.build("signed", "amd64", &[("hello", "signed image")]);
    let unsigned = layout.build("unsigned", "amd64", &[("hello", "unsigned image")]);
    skopeo_copy(
        &[],
        &layout.oci("signed"),
        &berth.docker("library/signed:v1"),
    );
    skopeo_copy(
        &[],
        &layout.oci("unsigned"),
        &berth.docker("library/unsigned:v1"),
    );
    let at = format!("{}/library/signed@{signed}", berth.addr());
    cosign_sign(w, &at);
    let referrer = oras_attach(w, &at);
    assert!(
        referrer.starts_with("sha256:"),
        "oras attach said {referrer:?}"
    );
    Upstream {
        work,
        berth,
        signed,
        unsigned,
        referrer,
    }
}

fn sig_tag(digest: &str) -> String {
    format!("sha256-{}.sig", &digest[7..])
}

#[test]
fn signatures_come_through_the_cache_and_gate_the_first_pull() {
    let up = upstream();
    let w = up.work.path();
    let config = format!(
        r#"
[[upstream]]
name = "docker.io"
url = "http://{upstream}"
tag_ttl_secs = 300

[[trust]]
name = "hub"
repositories = ["docker.io/library/*"]
[[trust.cosign]]
name = "release"
key_file = "{key}"
algorithm = "ecdsa-p256"

[[policy]]
name = "signed-hub"
repositories = ["docker.io/library/*"]
mode = "enforce"
"#,
        upstream = up.berth.addr(),
        key = w.join("cosign.pub").display(),
    );
    let cache = Berth::start_with(&config, &[]);
    let out = w.join("pulled");
    std::fs::create_dir_all(&out).expect("pull directory");

    // The first pull of a signed image is admitted: its signature came before the answer.
    assert!(pull(&cache, "docker.io/library/signed:v1", &out));
    assert!(!pull(&cache, "docker.io/library/unsigned:v1", &out));
    assert!(
        signature_fetches(&cache, "fetched") >= 2,
        "the .sig tag and the referrers"
    );
    // Referrers are answered from what is stored, never filled from the upstream.
    let name = "docker.io/library/signed";
    assert_eq!(
        referrers(&cache, name, &up.signed),
        vec![up.referrer.clone()]
    );

    // The upstream goes away: the signature, its referrer and the image still serve, and
    // cosign verifies against the cache.
    let (signed, unsigned) = (up.signed.clone(), up.unsigned.clone());
    let upstream_addr = up.berth.addr().to_owned();
    drop(up.berth);
    assert!(
        std::net::TcpStream::connect(&upstream_addr).is_err(),
        "the upstream is down"
    );
    let sig = cache.manifest(name, &sig_tag(&signed), OCI_MANIFEST);
    assert_eq!(sig.status, 200, "{sig:?}");
    // The referrer is stored (an unsigned artifact of no supply-chain kind, so the rule
    // judges it like an image: listed, refused as a pull).
    assert_eq!(referrers(&cache, name, &signed), vec![up.referrer.clone()]);
    let r = cache.manifest(name, &up.referrer, OCI_MANIFEST);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(pull(&cache, &format!("{name}@{signed}"), &out));
    assert!(!pull(
        &cache,
        &format!("docker.io/library/unsigned@{unsigned}"),
        &out
    ));
    assert!(cosign_verify(
        w,
        &format!("{}/{name}@{signed}", cache.addr())
    ));
}

#[test]
fn berth_mirror_brings_signatures_and_export_import_carry_them() {
    let up = upstream();
    let w = up.work.path();
    let cache = Berth::start_with(
        &format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"http://{}\"\n",
            up.berth.addr()
        ),
        &[],
    );
    let out = run_stdout(cache.cli().args(["mirror", "docker.io/library/signed:v1"]));
    assert!(out.contains("1 images mirrored"), "{out}");
    let signed = up.signed.clone();
    drop(up.berth);
    let name = "docker.io/library/signed";
    assert_eq!(
        cache.manifest(name, &sig_tag(&signed), OCI_MANIFEST).status,
        200
    );
    assert_eq!(referrers(&cache, name, &signed), vec![up.referrer.clone()]);

    // Export of the image (by tag, not the whole repository) takes what is attached to
    // it; an import elsewhere has them, and cosign verifies there.
    let layout = w.join("export");
    let report = run_stdout(
        cache
            .cli()
            .args(["export", "docker.io/library/signed:v1", "--output"])
            .arg(&layout),
    );
    assert!(report.contains("exported"), "{report}");
    let other = Berth::start();
    let report = run_stdout(
        other
            .cli()
            .args(["import", "--repository", "prod/signed"])
            .arg(&layout),
    );
    assert!(report.contains("imported"), "{report}");
    assert_eq!(
        other
            .manifest("prod/signed", &sig_tag(&signed), OCI_MANIFEST)
            .status,
        200
    );
    assert_eq!(
        referrers(&other, "prod/signed", &signed),
        vec![up.referrer.clone()]
    );
    assert!(cosign_verify(
        w,
        &format!("{}/prod/signed@{signed}", other.addr())
    ));
}

#[test]
fn a_signature_survives_gc_with_its_image_and_goes_with_it() {
    let up = upstream();
    let b = &up.berth;
    let name = "library/signed";
    let sig = b.manifest(name, &sig_tag(&up.signed), OCI_MANIFEST);
    assert_eq!(sig.status, 200);
    let sig_digest = sig
        .header("docker-content-digest")
        .expect("digest")
        .to_owned();
    let args = ["gc", "--grace-secs", "0", "--rollback-window-secs", "0"];
    run_stdout(b.cli().args(args));
    assert_eq!(
        b.manifest(name, &sig_tag(&up.signed), OCI_MANIFEST).status,
        200,
        "kept while its image is"
    );
    assert_eq!(referrers(b, name, &up.signed), vec![up.referrer.clone()]);

    let r = b.request(
        "DELETE",
        &format!("/v2/{name}/manifests/{}", up.signed),
        &[],
    );
    assert_eq!(r.status, 202, "{r:?}");
    let done = run_stdout(b.cli().args(args));
    for gone in [&sig_digest, &up.referrer] {
        wait_until(
            Duration::from_secs(10),
            &format!("{gone} gone after the image was deleted ({done})"),
            || b.manifest(name, gone, OCI_MANIFEST).status == 404,
        );
    }
    assert_eq!(
        b.manifest(name, &sig_tag(&up.signed), OCI_MANIFEST).status,
        404
    );

    // An image swept because its tag moved away takes its signature with it too.
    let w = up.work.path();
    let other = "library/unsigned";
    cosign_sign(w, &format!("{}/{other}@{}", b.addr(), up.unsigned));
    let layout = Layout::at(w.join("layout"));
    layout.build("newer", "amd64", &[("hello", "a newer image")]);
    skopeo_copy(&[], &layout.oci("newer"), &b.docker(&format!("{other}:v1")));
    let sig = b.manifest(other, &sig_tag(&up.unsigned), OCI_MANIFEST);
    assert_eq!(sig.status, 200);
    let sig_digest = sig
        .header("docker-content-digest")
        .expect("digest")
        .to_owned();
    let done = run_stdout(b.cli().args(args));
    // The server's read cache may answer for up to its TTL (2 s) after another process
    // (this offline collection) deleted something.
    for gone in [&up.unsigned, &sig_digest] {
        wait_until(
            Duration::from_secs(10),
            &format!("{gone} gone after its image lost its tag ({done})"),
            || b.manifest(other, gone, OCI_MANIFEST).status == 404,
        );
    }
}
