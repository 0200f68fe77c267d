//! Vulnerabilities through the use cases: images cataloged by the real catalog job,
//! advisories imported from fixtures in the real formats, findings read from the stored
//! catalogs (no layer read again), and vulnerability rules of the shared policy layer
//! deciding pulls and dry runs. On SQLite and PostgreSQL.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_catalog::fuzzing::{Item, tar};
use berth_oci::{Digest, Reference};
use berth_registry::catalog::CatalogSettings;
use berth_registry::policy::{
    Admission, AllowEntry, Caller, Mode, Pending, Policy, PolicySpec, PullRequest, RuleSpec,
    UnknownSeverity, VulnRuleSpec,
};
use berth_registry::{Registry, RegistryError};
use berth_vuln::Severity;

const STATUS: &[u8] = b"Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: 3.0.11-1~deb12u1\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u1)\nVersion: 2.36-9+deb12u1\n\n\
Package: libcurl4\nStatus: install ok installed\nArchitecture: amd64\nSource: curl\nVersion: 7.88.1-10+deb12u5\n\n\
Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n";
const OS: &[u8] = b"ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n";

fn fixture(name: &str) -> berth_vuln::Feed {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../berth-vuln/tests/fixtures")
        .join(name);
    let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    berth_vuln::parse(name, &data)
}

async fn wait_cataloged(r: &Registry, d: &Digest) {
    let start = Instant::now();
    while r
        .meta()
        .image_catalog(d.as_str())
        .await
        .expect("read")
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not cataloged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rule(name: &str, pending: Pending, v: VulnRuleSpec) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        repositories: vec!["prod/*".into()],
        kind: "vulnerability".into(),
        mode: Mode::Enforce,
        pending,
        push_bypass: true,
        vulnerability: Some(v),
    }
}

fn vuln(severity: Severity) -> VulnRuleSpec {
    VulnRuleSpec {
        severity,
        fixed_only: false,
        unknown: UnknownSeverity::Ignore,
        allow: Vec::new(),
    }
}

async fn pull(
    r: &Registry,
    repo: &berth_oci::RepoName,
    d: &Digest,
) -> Result<Admission, RegistryError> {
    let m = r
        .get_manifest(repo, &Reference::Digest(d.clone()))
        .await
        .expect("manifest");
    r.admit(
        repo,
        &m,
        Caller::Puller,
        &PullRequest {
            tag: None,
            method: "GET",
            actor: "anonymous",
            source: None,
        },
    )
    .await
}

fn install(r: &Registry, rules: Vec<RuleSpec>) {
    r.set_policy(
        Policy::new(PolicySpec {
            trust: Vec::new(),
            rules,
        })
        .expect("policy"),
    );
}

fn denied(res: Result<Admission, RegistryError>) -> String {
    match res {
        Err(RegistryError::Denied(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// (id, package, fixed, status, severity, layer).
type Row<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Severity,
    &'a str,
);

async fn findings_rules_and_dry_runs(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = common::registry(dir.path(), postgres)
        .await
        .with_catalog(CatalogSettings {
            referrers: false,
            ..CatalogSettings::default()
        });
    let _jobs = r.start_jobs();
    let repo = common::repo("prod/app");
    let base = tar(&[
        Item::File("etc/os-release", OS),
        Item::File("var/lib/dpkg/status", STATUS),
    ]);
    let app = tar(&[Item::File(
        "srv/node_modules/lodash/package.json",
        br#"{"name":"lodash","version":"4.17.20"}"#,
    )]);
    let m = common::push_image(&r, &repo, Some("v1"), b"{\"c\":1}", &[&base, &app], None)
        .await
        .expect("push");
    let d = common::sha(&m);
    wait_cataloged(&r, &d).await;

    // Nothing imported: no findings.
    let before = r
        .scan(&repo, &Reference::Digest(d.clone()), None)
        .await
        .expect("scan")
        .expect("cataloged");
    assert!(before.findings.is_empty());

    let report = r
        .import_advisories(vec![fixture("debian.json"), fixture("osv/list.json")])
        .await
        .expect("import");
    let rematch = report.rematch.expect("re-matched");
    assert_eq!(rematch.packages, 5);
    let names: Vec<(&str, u64, u64)> = report
        .feeds
        .iter()
        .map(|f| (f.name.as_str(), f.records, f.skipped))
        .collect();
    assert_eq!(names, vec![("debian-tracker", 11, 2), ("osv", 1, 4)]);

    let scan = r
        .scan(&repo, &Reference::Tag("v1".parse().expect("tag")), None)
        .await
        .expect("scan")
        .expect("cataloged");
    let base_d = common::sha(&base).to_string();
    let app_d = common::sha(&app).to_string();
    let got: Vec<Row> = scan
        .findings
        .iter()
        .map(|f| {
            (
                f.id.as_str(),
                f.package.as_str(),
                f.fixed.as_deref(),
                f.status.as_str(),
                f.severity,
                f.layer.as_str(),
            )
        })
        .collect();
    use Severity::*;
    assert_eq!(
        got,
        vec![
            (
                "CVE-2023-4911",
                "libc6",
                Some("2.36-9+deb12u3"),
                "fix-available",
                High,
                base_d.as_str()
            ),
            (
                "GHSA-35jh-r3h4-6jhm",
                "lodash",
                Some("4.17.21"),
                "fix-available",
                High,
                app_d.as_str()
            ),
            (
                "CVE-2024-2379",
                "libcurl4",
                None,
                "no-dsa",
                Low,
                base_d.as_str()
            ),
            (
                "CVE-2024-33600",
                "libc6",
                None,
                "postponed",
                Low,
                base_d.as_str()
            ),
            (
                "CVE-2024-9681",
                "libcurl4",
                None,
                "ignored",
                Low,
                base_d.as_str()
            ),
            (
                "CVE-2010-0928",
                "libssl3",
                None,
                "open",
                Negligible,
                base_d.as_str()
            ),
            (
                "CVE-2019-1010022",
                "libc6",
                None,
                "open",
                Negligible,
                base_d.as_str()
            ),
            (
                "CVE-2023-5363",
                "libssl3",
                Some("3.0.11-1~deb12u2"),
                "fix-available",
                Unknown,
                base_d.as_str()
            ),
            (
                "CVE-2024-2511",
                "libssl3",
                Some("3.0.13-1~deb12u1"),
                "fix-available",
                Unknown,
                base_d.as_str()
            ),
        ]
    );
    assert_eq!(scan.findings[0].source.as_deref(), Some("glibc"));

    // Importing the same dumps again changes nothing (idempotent).
    let again = r
        .import_advisories(vec![fixture("debian.json"), fixture("osv/list.json")])
        .await
        .expect("import again");
    assert_eq!(again.generation, report.generation + 1);
    let scan2 = r
        .scan(&repo, &Reference::Digest(d.clone()), None)
        .await
        .expect("scan")
        .expect("cataloged");
    assert_eq!(scan2.findings, scan.findings);
    let status = r.advisory_status().await.expect("status");
    assert_eq!(
        status
            .feeds
            .iter()
            .map(|f| (f.name.as_str(), f.records))
            .collect::<Vec<_>>(),
        vec![("debian-tracker", 11), ("osv", 1)]
    );

    // Enforcing at high: the worst finding is named, with the rule.
    install(&r, vec![rule("no-high", Pending::Refuse, vuln(High))]);
    let msg = denied(pull(&r, &repo, &d).await);
    assert!(msg.contains("\"no-high\""), "{msg}");
    assert!(
        msg.contains("worst CVE-2023-4911 (high) in libc6 2.36-9+deb12u1, fixed in 2.36-9+deb12u3"),
        "{msg}"
    );
    // Allowlisted until a day far ahead: the next worst.
    let mut v = vuln(High);
    v.allow.push(AllowEntry {
        id: "CVE-2023-4911".into(),
        until: "2999-12-31".into(),
        reason: "not reachable".into(),
    });
    install(&r, vec![rule("no-high", Pending::Refuse, v.clone())]);
    let msg = denied(pull(&r, &repo, &d).await);
    assert!(
        msg.contains("worst GHSA-35jh-r3h4-6jhm (high) in lodash"),
        "{msg}"
    );
    // An entry that expired counts no more; an alias counts like the id.
    v.allow = vec![
        AllowEntry {
            id: "CVE-2023-4911".into(),
            until: "2020-01-01".into(),
            reason: String::new(),
        },
        AllowEntry {
            id: "CVE-2021-23337".into(),
            until: "2999-12-31".into(),
            reason: String::new(),
        },
    ];
    install(&r, vec![rule("no-high", Pending::Refuse, v)]);
    let msg = denied(pull(&r, &repo, &d).await);
    assert!(
        msg.contains("1 finding(s)") && msg.contains("CVE-2023-4911"),
        "{msg}"
    );
    // Critical only: served.
    install(
        &r,
        vec![rule("no-critical", Pending::Refuse, vuln(Critical))],
    );
    assert_eq!(pull(&r, &repo, &d).await.expect("served"), Admission::Serve);
    // Unknown severities refused by choice: the fixed openssl finding of unknown severity.
    let mut v = vuln(Critical);
    v.unknown = UnknownSeverity::Refuse;
    v.fixed_only = true;
    install(&r, vec![rule("unknown-too", Pending::Refuse, v)]);
    let msg = denied(pull(&r, &repo, &d).await);
    assert!(msg.contains("CVE-2023-5363 (unknown) in libssl3"), "{msg}");
    // Low with fixed only: the low findings have no fix, the high ones do.
    let mut v = vuln(Low);
    v.fixed_only = true;
    install(&r, vec![rule("fixed", Pending::Refuse, v)]);
    let msg = denied(pull(&r, &repo, &d).await);
    assert!(
        msg.contains("2 finding(s) at or above low with a fix"),
        "{msg}"
    );
    // Other repositories are not covered.
    let other = common::repo("dev/app");
    common::push_image(&r, &other, Some("v1"), b"{\"c\":1}", &[&base, &app], None)
        .await
        .expect("push");
    assert_eq!(
        pull(&r, &other, &d).await.expect("served"),
        Admission::Serve
    );

    // The dry run lists what the rule would refuse; a new advisory shows there first.
    install(
        &r,
        vec![RuleSpec {
            mode: Mode::DryRun,
            ..rule("no-critical", Pending::Refuse, vuln(Critical))
        }],
    );
    let runs = r.policy_check(Some("no-critical")).await.expect("check");
    assert_eq!((runs[0].checked, runs[0].refused), (1, 0));
    r.import_advisories(vec![fixture("osv/GHSA-jfh8-c2jp-5v3q.json")])
        .await
        .expect("import");
    let runs = r.policy_check(Some("no-critical")).await.expect("check");
    assert_eq!(
        (runs[0].checked, runs[0].refused),
        (1, 0),
        "log4j is not in the image"
    );
    let crit = tar(&[Item::File(
        "app/lib/log4j-core.jar",
        &berth_vuln::fuzzing::stored_zip(
            &[(
                "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
                b"groupId=org.apache.logging.log4j\nartifactId=log4j-core\nversion=2.14.1\n",
            )],
            false,
        ),
    )]);
    let m2 = common::push_image(&r, &repo, Some("v2"), b"{\"c\":2}", &[&base, &crit], None)
        .await
        .expect("push");
    let d2 = common::sha(&m2);
    wait_cataloged(&r, &d2).await;
    let runs = r.policy_check(Some("no-critical")).await.expect("check");
    assert_eq!((runs[0].checked, runs[0].refused), (2, 1));
    assert!(
        runs[0].examples[0]
            .2
            .contains("GHSA-jfh8-c2jp-5v3q (critical)"),
        "{:?}",
        runs[0].examples
    );
}

/// Images not cataloged yet follow the rule's `pending`.
async fn pending_follows_the_rule(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = common::registry(dir.path(), postgres).await;
    let repo = common::repo("prod/app");
    let m = common::push_image(&r, &repo, Some("v1"), b"{\"c\":1}", &[b"layer"], None)
        .await
        .expect("push");
    let d = common::sha(&m);
    install(
        &r,
        vec![rule("no-high", Pending::Refuse, vuln(Severity::High))],
    );
    let msg = denied(pull(&r, &repo, &d).await);
    assert!(msg.contains("pending (not cataloged yet)"), "{msg}");
    install(
        &r,
        vec![rule("no-high", Pending::Allow, vuln(Severity::High))],
    );
    assert_eq!(pull(&r, &repo, &d).await.expect("served"), Admission::Serve);
}

/// An `rpmdb.sqlite` made by the real tools (`rpmbuild`, `rpm --dbpath --justdb`; see
/// `scripts/install-test-tools.sh`): `openssl` 1:3.0.7-24.el9 with its `openssl-libs`
/// subpackage (source rpm `openssl`), and `openssl-fips-provider`, which the errata do not
/// list.
fn rpmdb() -> Vec<u8> {
    use std::process::Command;
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/install-test-tools.sh)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path().join("top");
    let specs = [
        (
            "openssl",
            "Version: 3.0.7\nRelease: 24.el9\nEpoch: 1\n",
            "%package libs\nSummary: libs\n%description libs\nlibs\n%files libs\n",
        ),
        (
            "openssl-fips-provider",
            "Version: 3.0.7\nRelease: 24.el9\nEpoch: 1\n",
            "",
        ),
    ];
    for (name, head, extra) in specs {
        let spec = dir.path().join(format!("{name}.spec"));
        std::fs::write(
            &spec,
            format!(
                "Name: {name}\n{head}Summary: test\nLicense: MIT\nBuildArch: noarch\n\
                 %description\ntest\n%files\n{extra}"
            ),
        )
        .expect("spec");
        run(Command::new("rpmbuild")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .args(["--quiet", "-bb"])
            .arg(&spec));
    }
    let rpms: Vec<_> = std::fs::read_dir(top.join("RPMS/noarch"))
        .expect("rpms")
        .map(|e| e.expect("rpm").path())
        .collect();
    assert_eq!(rpms.len(), 3);
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).expect("db");
    run(Command::new("rpm")
        .arg("--dbpath")
        .arg(&db)
        .args(["-i", "--justdb", "--nodeps", "--noverify", "--nosignature"])
        .args(&rpms));
    std::fs::read(db.join("rpmdb.sqlite")).expect("rpmdb.sqlite")
}

/// rpm images end to end: cataloged by the job from a real rpm database, the AlmaLinux,
/// Rocky Linux and Red Hat OSV records imported, each image's binary packages matched
/// against its own distribution's major release only.
async fn rpm_images(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = common::registry(dir.path(), postgres)
        .await
        .with_catalog(CatalogSettings {
            referrers: false,
            ..CatalogSettings::default()
        });
    let _jobs = r.start_jobs();
    let db = rpmdb();
    let mut digests = Vec::new();
    for (tag, os) in [
        (
            "alma",
            &b"NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"9.3\"\n"[..],
        ),
        (
            "rocky",
            b"NAME=\"Rocky Linux\"\nID=\"rocky\"\nVERSION_ID=\"9.3\"\n",
        ),
        (
            "ubi",
            b"NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nVERSION_ID=\"9.3\"\n",
        ),
        ("alma8", b"ID=\"almalinux\"\nVERSION_ID=\"8.9\"\n"),
    ] {
        let layer = tar(&[
            Item::File("etc/os-release", os),
            Item::File("var/lib/rpm/rpmdb.sqlite", &db),
        ]);
        let m = common::push_image(
            &r,
            &common::repo("prod/rpm"),
            Some(tag),
            tag.as_bytes(),
            &[&layer],
            None,
        )
        .await
        .expect("push");
        let d = common::sha(&m);
        wait_cataloged(&r, &d).await;
        digests.push((tag, d));
    }
    let report = r
        .import_advisories(vec![
            fixture("osv/rpm/ALSA-2024-2447.json"),
            fixture("osv/rpm/RLSA-2024-2447.json"),
            fixture("osv/rpm/RHSA-2024-2447.json"),
        ])
        .await
        .expect("import");
    assert!(report.rematch.is_some());
    for (tag, d) in &digests {
        let scan = r
            .scan(
                &common::repo("prod/rpm"),
                &Reference::Digest(d.clone()),
                None,
            )
            .await
            .expect("scan")
            .expect("cataloged");
        let got: Vec<(&str, &str, &str, Option<&str>)> = scan
            .findings
            .iter()
            .map(|f| {
                (
                    f.id.as_str(),
                    f.package.as_str(),
                    f.version.as_str(),
                    f.fixed.as_deref(),
                )
            })
            .collect();
        // The advisory named the binary rpm, not its source rpm.
        assert!(scan.findings.iter().all(|f| f.source.is_none()), "{tag}");
        let id = match *tag {
            "alma" => "ALSA-2024:2447",
            "rocky" => "RLSA-2024:2447",
            "ubi" => "RHSA-2024:2447",
            _ => {
                assert_eq!(got, vec![], "{tag}");
                continue;
            }
        };
        let fix = Some("1:3.0.7-27.el9");
        let mut want = vec![(id, "openssl-libs", "1:3.0.7-24.el9", fix)];
        // Red Hat's record lists openssl-libs and openssl-devel only.
        if *tag != "ubi" {
            want.insert(0, (id, "openssl", "1:3.0.7-24.el9", fix));
        }
        assert_eq!(got, want, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_images_sqlite() {
    rpm_images(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_images_postgres() {
    rpm_images(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_rules_and_dry_runs_sqlite() {
    findings_rules_and_dry_runs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_rules_and_dry_runs_postgres() {
    findings_rules_and_dry_runs(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_follows_the_rule_sqlite() {
    pending_follows_the_rule(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_follows_the_rule_postgres() {
    pending_follows_the_rule(true).await;
}
