//! Package catalogs and SBOMs with real components: an image built by umoci from this
//! host's own Debian package database (`/var/lib/dpkg/status`, `/usr/lib/os-release`)
//! plus Python, npm and Cargo lock files and a Go binary (oras), pushed with skopeo; the
//! SBOMs are found with `oras discover` and read with `berth sbom`, and the inventory is
//! compared with syft's of the same layout.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Berth, Layout, cmd, parse_json, run, run_stdout, skopeo_copy, tempdir};

const CONFIG: &str = "[catalog]\nenabled = true\n\n[jobs]\npoll_ms = 100\n";

/// `name version` of each installed package of a dpkg status file.
fn installed(status: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for para in status.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if field("Status:").is_some_and(|s| s.ends_with(" installed"))
            && let (Some(n), Some(v)) = (field("Package:"), field("Version:"))
        {
            out.push((n, v));
        }
    }
    out.sort();
    out
}

#[test]
fn a_debian_image_pushed_with_skopeo_gets_sboms_oras_discovers() {
    let status = std::fs::read_to_string("/var/lib/dpkg/status")
        .expect("this test needs a Debian host: /var/lib/dpkg/status");
    let os_release = std::fs::read_to_string("/usr/lib/os-release").expect("/usr/lib/os-release");
    let expected = installed(&status);
    assert!(expected.len() > 10, "a real package database");

    // A real Go binary (Debian's oras), for its embedded build info.
    let oras = std::fs::read("/usr/local/bin/oras").expect("oras (install-test-tools.sh)");
    let berth = Berth::start_with(CONFIG, &[]);
    let work = tempdir();
    let layout = Layout::init(work.path().join("layout"));
    layout.build(
        "v1",
        "amd64",
        &[
            ("etc/os-release", os_release.as_bytes()),
            ("var/lib/dpkg/status", status.as_bytes()),
            (
                "usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA",
                b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\n".as_slice(),
            ),
            (
                "srv/app/package-lock.json",
                br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/express":{"version":"4.19.2"}}}"#.as_slice(),
            ),
            ("usr/local/bin/oras", oras.as_slice()),
            (
                "srv/tool/Cargo.lock",
                b"version = 3\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.203\"\n".as_slice(),
            ),
        ],
    );
    skopeo_copy(&[], &layout.oci("v1"), &berth.docker("e2e/debian:v1"));
    let subject = berth.image("e2e/debian:v1");

    // The catalog job runs in the background: oras discover finds both SBOMs.
    let start = Instant::now();
    let found = loop {
        let out = run_stdout(cmd("oras").args([
            "discover",
            "--format",
            "json",
            "--plain-http",
            &subject,
        ]));
        let v = parse_json(out.as_bytes(), "oras discover output");
        let mut types: Vec<String> = v["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["artifactType"].as_str().map(str::to_owned))
            .collect();
        types.sort();
        if types.len() == 2 {
            break types;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no SBOM referrers within 60 s: {v:#}\n{}",
            berth.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        found,
        ["application/spdx+json", "application/vnd.cyclonedx+json"]
    );

    // berth sbom: every installed package of the host's database, with its purl, and the
    // language packages.
    let out = run_stdout(
        berth
            .cli()
            .args(["sbom", "e2e/debian:v1", "--format", "cyclonedx"]),
    );
    let doc: Value = parse_json(out.as_bytes(), "berth sbom output");
    assert_eq!(doc["specVersion"], "1.6");
    // umoci writes layers without the closing blocks: read whole all the same.
    assert_eq!(
        doc["metadata"]["properties"][0],
        serde_json::json!({"name": "berth:catalog-status", "value": "complete"})
    );
    let components = doc["components"].as_array().expect("components");
    let mut debs: Vec<(String, String)> = components
        .iter()
        .filter(|c| {
            c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:deb/debian/"))
        })
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    debs.sort();
    // Multi-arch packages of one name and version (libc6:amd64 and libc6:i386) are two
    // purls: compare names and versions as sets.
    debs.dedup();
    let mut want = expected.clone();
    want.dedup();
    assert_eq!(debs, want);
    let purls: Vec<&str> = components
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    for p in [
        "pkg:pypi/requests@2.31.0",
        "pkg:npm/express@4.19.2",
        "pkg:cargo/serde@1.0.203",
    ] {
        assert!(purls.contains(&p), "{p} missing from {purls:?}");
    }
    assert!(
        components
            .iter()
            .any(|c| c["type"] == "operating-system" && c["name"] == "debian")
    );

    let spdx_out = run_stdout(
        berth
            .cli()
            .args(["sbom", "e2e/debian:v1", "--format", "spdx"]),
    );
    let spdx: Value = parse_json(spdx_out.as_bytes(), "berth sbom output");
    assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
    // The image, the OS, and one package per component but the OS.
    assert_eq!(
        spdx["packages"].as_array().expect("packages").len(),
        components.len() + 1
    );

    // Both documents validate with the reference libraries (CycloneDX 1.6 schema, strict;
    // spdx-tools' full SPDX 2.3 validation).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/validate-sbom.py");
    for (format, text) in [("cyclonedx", &out), ("spdx", &spdx_out)] {
        let file = work.path().join(format!("sbom.{format}.json"));
        std::fs::write(&file, text).expect("writing the SBOM");
        run(cmd("berth-sbom-python").arg(script).arg(format).arg(&file));
    }

    // Parity with syft on the same layout, offline: every package syft finds in an
    // ecosystem Berth covers, Berth finds with the same name and version.
    let out = run_stdout(
        cmd("syft")
            .env("SYFT_CHECK_FOR_APP_UPDATE", "false")
            .args(["scan", "-q", "-o", "syft-json"])
            .arg(format!("oci-dir:{}", layout.dir.display())),
    );
    let syft = parse_json(out.as_bytes(), "syft output");
    let key = |purl: &str, name: &str, version: &str| {
        let kind = purl
            .strip_prefix("pkg:")
            .and_then(|p| p.split('/').next())
            .unwrap_or_default()
            .to_owned();
        (kind, name.to_owned(), version.to_owned())
    };
    let ours: std::collections::BTreeSet<_> = components
        .iter()
        .filter_map(|c| {
            Some(key(
                c["purl"].as_str()?,
                c["name"].as_str()?,
                c["version"].as_str()?,
            ))
        })
        .collect();
    let covered = [
        "deb", "apk", "rpm", "pypi", "npm", "cargo", "golang", "maven",
    ];
    let theirs: Vec<_> = syft["artifacts"]
        .as_array()
        .expect("syft artifacts")
        .iter()
        .filter_map(|a| {
            Some(key(
                a["purl"].as_str()?,
                a["name"].as_str()?,
                a["version"].as_str()?,
            ))
        })
        .filter(|k| covered.contains(&k.0.as_str()))
        // A Go binary's own main module, built outside a module release, is `(devel)`:
        // not a version anything can match, so Berth leaves it out.
        .filter(|k| k.2 != "(devel)")
        .collect();
    assert!(
        theirs.iter().any(|k| k.0 == "golang"),
        "syft read oras's build info: {theirs:?}"
    );
    assert!(
        theirs.len() > expected.len() / 2,
        "syft found {} packages",
        theirs.len()
    );
    let missing: Vec<_> = theirs.iter().filter(|k| !ours.contains(*k)).collect();
    assert!(missing.is_empty(), "syft found, Berth did not: {missing:?}");
}
