//! Vulnerabilities with real components: a Debian image built by umoci, pushed with
//! skopeo, cataloged by the server, pulled by skopeo and containerd; `berth advisories import` reads the fixture dumps
//! (OSV files, the Debian tracker, Alpine secdb) into the server's data directory while
//! it serves, and the enforcing `[[vulnerability_policy]]` starts refusing skopeo's pull
//! of the image within the poll interval, naming the rule and the worst finding.
//! `berth advisories import --dry-run` lists what the import would refuse first;
//! `berth scan` and `berth policy check` read the same findings.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::containerd::Containerd;
use crate::harness::{
    Berth, Layout, cmd, exec, parse_json, run, run_fails, run_stdout, skopeo_copy, tempdir,
};

const CONFIG: &str = r#"[catalog]
enabled = true
referrers = false

[jobs]
poll_ms = 100

[[vulnerability_policy]]
name = "no-high"
repositories = ["e2e/*"]
mode = "enforce"
severity = "high"
"#;

const STATUS: &str = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u1)\nVersion: 2.36-9+deb12u1\n\nPackage: libcurl4\nStatus: install ok installed\nArchitecture: amd64\nSource: curl\nVersion: 7.88.1-10+deb12u5\n";

fn fixtures() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../berth-vuln/tests/fixtures")
        .display()
        .to_string()
}

#[test]
fn skopeo_and_containerd_pulls_are_refused_once_an_import_finds_a_high_vulnerability() {
    let berth = Berth::start_with(CONFIG, &[]);
    let work = tempdir();
    let layout = Layout::init(work.path().join("layout"));
    layout.build(
        "v1",
        "amd64",
        &[
            (
                "etc/os-release",
                "ID=debian\nVERSION_ID=\"12\"\n".as_bytes(),
            ),
            ("var/lib/dpkg/status", STATUS.as_bytes()),
        ],
    );
    skopeo_copy(&[], &layout.oci("v1"), &berth.docker("e2e/app:v1"));
    let back = work.path().join("back");
    let pull = || {
        exec(cmd("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &berth.docker("e2e/app:v1"),
            &format!("oci:{}:v1", back.display()),
        ]))
    };

    // Served once cataloged (pending refuses before), with no advisories imported.
    let start = Instant::now();
    loop {
        let out = pull();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("pending"), "refused for another reason: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not cataloged within 60 s\n{}",
            berth.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let daemon = Containerd::start();
    let reference = berth.image("e2e/app:v1");
    run(daemon
        .ctr("before")
        .args(["image", "pull", "--plain-http", &reference]));

    // Dry run first: what the import would start refusing, and nothing imported.
    let out = run_stdout(
        berth
            .cli()
            .args(["advisories", "import", "--dry-run", &fixtures()]),
    );
    assert!(
        out.contains("no-high") && out.contains("e2e/app@sha256:") && out.contains("CVE-2023-4911"),
        "{out}"
    );
    assert!(
        out.contains("1 would be refused newly (nothing imported)"),
        "{out}"
    );
    assert!(pull().status.success(), "a dry run changed what is served");

    let out = run_stdout(berth.cli().args(["advisories", "import", &fixtures()]));
    assert!(out.contains("debian-tracker"), "{out}");
    assert!(out.contains("re-matched"), "{out}");

    // The server notices the import within its poll interval.
    let start = Instant::now();
    let err = loop {
        let out = pull();
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still served 10 s after the import"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(err.contains("no-high"), "{err}");
    assert!(err.contains("CVE-2023-4911"), "{err}");
    // containerd, in a namespace that does not hold the image yet.
    let err = run_fails(
        daemon
            .ctr("after")
            .args(["image", "pull", "--plain-http", &reference]),
    );
    assert!(err.contains("403 Forbidden"), "{err}");

    let out = run_stdout(berth.cli().args(["scan", "e2e/app:v1", "--json"]));
    let report = parse_json(out.as_bytes(), "berth scan --json");
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "CVE-2023-4911",
            "CVE-2024-2379",
            "CVE-2024-33600",
            "CVE-2024-9681",
            "CVE-2019-1010022"
        ]
    );
    let table = run_stdout(berth.cli().args(["scan", "e2e/app:v1"]));
    assert!(
        table.contains("libc6 (glibc)") && table.contains("2.36-9+deb12u3"),
        "{table}"
    );

    let check = run_stdout(
        berth
            .cli()
            .args(["policy", "check", "--rule", "no-high", "--json"]),
    );
    let run = parse_json(
        check.lines().next().unwrap_or_default().as_bytes(),
        "policy check",
    );
    assert_eq!(
        (run["checked"].as_u64(), run["refused"].as_u64()),
        (Some(1), Some(1)),
        "{check}"
    );

    let status = run_stdout(berth.cli().args(["advisories", "status"]));
    for feed in ["debian-tracker", "alpine:v3.19/main", "osv"] {
        assert!(status.contains(feed), "{status}");
    }
}
