//! The three advisory formats, read from fixtures written in their real schemas (real
//! advisory ids and ranges), matched against packages of known versions: the exact set
//! of findings, and the exact reasons records were skipped.

use std::collections::BTreeSet;
use std::path::Path;

use berth_vuln::{Feed, Index, Package, Severity, parse};

fn fixture(name: &str) -> Feed {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    parse(name, &data)
}

fn all_feeds() -> Vec<Feed> {
    let mut feeds = vec![fixture("debian.json"), fixture("alpine-v3.19-main.json")];
    for f in [
        "GHSA-h5c8-rqwp-cp95.json",
        "GHSA-jfh8-c2jp-5v3q.json",
        "GO-2023-2102.json",
        "RUSTSEC-2022-0013.json",
        "list.json",
        "truncated.json",
    ] {
        feeds.push(fixture(&format!("osv/{f}")));
    }
    feeds
}

fn index() -> Index {
    Index::new(all_feeds().into_iter().flat_map(|f| f.records))
}

/// (label, purl, ecosystem, name, version, source name, source version).
struct P(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

/// (purl, package name, id, status, fixed, severity) of every finding.
fn findings(
    index: &Index,
    pkgs: &[P],
) -> BTreeSet<(String, String, String, Option<String>, Severity)> {
    let mut out = BTreeSet::new();
    for p in pkgs {
        for f in index.matches(&Package {
            purl: p.1,
            ecosystem: p.2,
            name: p.3,
            version: p.4,
            source_name: p.5,
            source_version: p.6,
        }) {
            out.insert((p.0.to_owned(), f.id, f.status, f.fixed, f.severity));
        }
    }
    out
}

fn set(
    items: &[(&str, &str, &str, Option<&str>, Severity)],
) -> BTreeSet<(String, String, String, Option<String>, Severity)> {
    items
        .iter()
        .map(|(p, id, s, f, sev)| {
            (
                p.to_string(),
                id.to_string(),
                s.to_string(),
                f.map(str::to_owned),
                *sev,
            )
        })
        .collect()
}

#[test]
fn debian_bookworm_by_source_package_with_tracker_statuses() {
    let idx = index();
    let got = findings(
        &idx,
        &[
            P(
                "libssl3",
                "pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64&distro=debian-12&upstream=openssl",
                "deb",
                "libssl3",
                "3.0.11-1~deb12u1",
                Some("openssl"),
                Some("3.0.11-1~deb12u1"),
            ),
            P(
                "libc6",
                "pkg:deb/debian/libc6@2.36-9+deb12u1?arch=amd64&distro=debian-12&upstream=glibc",
                "deb",
                "libc6",
                "2.36-9+deb12u1",
                Some("glibc"),
                Some("2.36-9+deb12u1"),
            ),
            P(
                "libcurl4",
                "pkg:deb/debian/libcurl4@7.88.1-10+deb12u5?arch=amd64&distro=debian-12&upstream=curl",
                "deb",
                "libcurl4",
                "7.88.1-10+deb12u5",
                Some("curl"),
                Some("7.88.1-10+deb12u5"),
            ),
            P(
                "zlib1g",
                "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib",
                "deb",
                "zlib1g",
                "1:1.2.13.dfsg-1",
                Some("zlib"),
                Some("1:1.2.13.dfsg-1"),
            ),
            // bullseye: CVE-2023-5363 is resolved with version 0 there (not affected).
            P(
                "libssl1.1",
                "pkg:deb/debian/libssl1.1@1.1.1n-0+deb11u4?arch=amd64&distro=debian-11&upstream=openssl",
                "deb",
                "libssl1.1",
                "1.1.1n-0+deb11u4",
                Some("openssl"),
                Some("1.1.1n-0+deb11u4"),
            ),
        ],
    );
    use Severity::*;
    assert_eq!(
        got,
        set(&[
            (
                "libssl3",
                "CVE-2023-5363",
                "fix-available",
                Some("3.0.11-1~deb12u2"),
                Unknown
            ),
            (
                "libssl3",
                "CVE-2024-2511",
                "fix-available",
                Some("3.0.13-1~deb12u1"),
                Unknown
            ),
            ("libssl3", "CVE-2010-0928", "open", None, Negligible),
            (
                "libc6",
                "CVE-2023-4911",
                "fix-available",
                Some("2.36-9+deb12u3"),
                High
            ),
            ("libc6", "CVE-2024-33600", "postponed", None, Low),
            ("libc6", "CVE-2019-1010022", "open", None, Negligible),
            ("libcurl4", "CVE-2024-2379", "no-dsa", None, Low),
            ("libcurl4", "CVE-2024-9681", "ignored", None, Low),
            ("zlib1g", "CVE-2023-45853", "end-of-life", None, Unknown),
            ("zlib1g", "CVE-2099-0001", "undetermined", None, Unknown),
        ])
    );
}

#[test]
fn alpine_by_origin_in_its_branch() {
    let idx = index();
    let got = findings(
        &idx,
        &[
            P(
                "libcrypto3",
                "pkg:apk/alpine/libcrypto3@3.1.4-r2?arch=x86_64&distro=alpine-3.19.0&upstream=openssl",
                "apk",
                "libcrypto3",
                "3.1.4-r2",
                Some("openssl"),
                None,
            ),
            P(
                "busybox",
                "pkg:apk/alpine/busybox@1.36.1-r15?arch=x86_64&distro=alpine-3.19.0",
                "apk",
                "busybox",
                "1.36.1-r15",
                Some("busybox"),
                None,
            ),
            P(
                "musl",
                "pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64&distro=alpine-3.19.0",
                "apk",
                "musl",
                "1.2.4_git20230717-r4",
                Some("musl"),
                None,
            ),
            // Another branch: the v3.19 secdb says nothing about it.
            P(
                "busybox-other",
                "pkg:apk/alpine/busybox@1.36.1-r15?arch=x86_64&distro=alpine-3.20.1",
                "apk",
                "busybox",
                "1.36.1-r15",
                Some("busybox"),
                None,
            ),
        ],
    );
    use Severity::*;
    assert_eq!(
        got,
        set(&[
            (
                "libcrypto3",
                "CVE-2023-6129",
                "fix-available",
                Some("3.1.4-r3"),
                Unknown
            ),
            (
                "libcrypto3",
                "CVE-2024-0727",
                "fix-available",
                Some("3.1.4-r5"),
                Unknown
            ),
            (
                "busybox",
                "CVE-2023-42366",
                "fix-available",
                Some("1.36.1-r17"),
                Unknown
            ),
            (
                "musl",
                "CVE-2025-26519",
                "fix-available",
                Some("1.2.4_git20230717-r5"),
                Unknown
            ),
        ])
    );
}

#[test]
fn language_ecosystems_in_their_own_orders() {
    let idx = index();
    let got = findings(
        &idx,
        &[
            P(
                "Jinja2",
                "pkg:pypi/jinja2@3.1.2",
                "pypi",
                "Jinja2",
                "3.1.2",
                None,
                None,
            ),
            P(
                "jinja2",
                "pkg:pypi/jinja2@3.1.3",
                "pypi",
                "jinja2",
                "3.1.3",
                None,
                None,
            ),
            P(
                "jinja2-rc",
                "pkg:pypi/jinja2@3.1.3rc1",
                "pypi",
                "jinja2",
                "3.1.3rc1",
                None,
                None,
            ),
            P(
                "lodash",
                "pkg:npm/lodash@4.17.20",
                "npm",
                "lodash",
                "4.17.20",
                None,
                None,
            ),
            P(
                "lodash-ok",
                "pkg:npm/lodash@4.17.21",
                "npm",
                "lodash",
                "4.17.21",
                None,
                None,
            ),
            P(
                "regex",
                "pkg:cargo/regex@1.5.4",
                "cargo",
                "regex",
                "1.5.4",
                None,
                None,
            ),
            P(
                "regex-ok",
                "pkg:cargo/regex@1.5.5",
                "cargo",
                "regex",
                "1.5.5",
                None,
                None,
            ),
            P(
                "golang.org/x/net",
                "pkg:golang/golang.org/x/net@v0.0.0-20220722155237-a158d28d115b",
                "golang",
                "golang.org/x/net",
                "v0.0.0-20220722155237-a158d28d115b",
                None,
                None,
            ),
            P(
                "x-net-ok",
                "pkg:golang/golang.org/x/net@v0.17.0",
                "golang",
                "golang.org/x/net",
                "v0.17.0",
                None,
                None,
            ),
            P(
                "stdlib",
                "pkg:golang/stdlib@go1.21.1",
                "golang",
                "stdlib",
                "go1.21.1",
                None,
                None,
            ),
            P(
                "stdlib-ok",
                "pkg:golang/stdlib@go1.20.10",
                "golang",
                "stdlib",
                "go1.20.10",
                None,
                None,
            ),
            P(
                "org.apache.logging.log4j:log4j-core",
                "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1",
                "maven",
                "org.apache.logging.log4j:log4j-core",
                "2.14.1",
                None,
                None,
            ),
            P(
                "log4j-2.3",
                "pkg:maven/org.apache.logging.log4j/log4j-core@2.3",
                "maven",
                "org.apache.logging.log4j:log4j-core",
                "2.3",
                None,
                None,
            ),
            P(
                "log4j-ok",
                "pkg:maven/org.apache.logging.log4j/log4j-core@2.12.2",
                "maven",
                "org.apache.logging.log4j:log4j-core",
                "2.12.2",
                None,
                None,
            ),
        ],
    );
    use Severity::*;
    let expected = set(&[
        (
            "Jinja2",
            "GHSA-h5c8-rqwp-cp95",
            "fix-available",
            Some("3.1.3"),
            Medium,
        ),
        (
            "lodash",
            "GHSA-35jh-r3h4-6jhm",
            "fix-available",
            Some("4.17.21"),
            High,
        ),
        (
            "regex",
            "RUSTSEC-2022-0013",
            "fix-available",
            Some("1.5.5"),
            High,
        ),
        (
            "golang.org/x/net",
            "GO-2023-2102",
            "fix-available",
            Some("0.17.0"),
            Unknown,
        ),
        (
            "stdlib",
            "GO-2023-2102",
            "fix-available",
            Some("1.21.3"),
            Unknown,
        ),
        (
            "jinja2-rc",
            "GHSA-h5c8-rqwp-cp95",
            "fix-available",
            Some("3.1.3"),
            Medium,
        ),
        (
            "log4j-2.3",
            "GHSA-jfh8-c2jp-5v3q",
            "fix-available",
            Some("2.3.1"),
            Critical,
        ),
        (
            "org.apache.logging.log4j:log4j-core",
            "GHSA-jfh8-c2jp-5v3q",
            "fix-available",
            Some("2.15.0"),
            Critical,
        ),
    ]);
    assert_eq!(got, expected);
}

#[test]
fn bad_records_are_skipped_with_reasons_and_withdrawn_ids_listed() {
    let list = fixture("osv/list.json");
    assert_eq!(list.name, "osv");
    assert!(!list.complete);
    assert_eq!(list.withdrawn, vec!["GHSA-withdrawn-test".to_string()]);
    assert_eq!(
        list.records
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["GHSA-35jh-r3h4-6jhm"]
    );
    let reasons: Vec<(String, String)> = list
        .skipped
        .iter()
        .map(|s| {
            (
                s.what.clone(),
                s.reason.split(':').next().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "BAD-RANGE-TYPE (npm lodash)".to_string(),
                "unknown range type \"WEIRD\"".to_string()
            ),
            (
                "BAD-VERSION (pypi jinja2)".to_string(),
                "version \"three point one\" does not parse in pypi".to_string()
            ),
            (
                "UNSUPPORTED-ECOSYSTEM (Hackage)".to_string(),
                "unsupported ecosystem Hackage".to_string()
            ),
            (
                "osv/list.json[5]".to_string(),
                "not an OSV record".to_string()
            ),
        ]
    );
    let t = fixture("osv/truncated.json");
    assert!(t.records.is_empty());
    assert_eq!(t.skipped.len(), 1);
    assert!(
        t.skipped[0].reason.starts_with("bad JSON"),
        "{:?}",
        t.skipped
    );

    let deb = fixture("debian.json");
    assert_eq!((deb.name.as_str(), deb.complete), ("debian-tracker", true));
    let mut why: Vec<String> = deb.skipped.iter().map(|s| s.what.clone()).collect();
    why.sort();
    assert_eq!(
        why,
        vec!["CVE-2099-0002 (dpkg bookworm)", "debian.json: brokenpkg"]
    );
    // Every release entry but the not-affected one (bullseye, fixed in 0) is a record.
    assert_eq!(deb.records.len(), 11);

    let alpine = fixture("alpine-v3.19-main.json");
    assert_eq!(
        (alpine.name.as_str(), alpine.complete),
        ("alpine:v3.19/main", true)
    );
    assert_eq!(alpine.records.len(), 6);
    assert_eq!(alpine.skipped.len(), 1);
}

#[test]
fn severity_from_cvss_vectors_and_database_words() {
    let f = fixture("osv/GHSA-h5c8-rqwp-cp95.json");
    assert_eq!(f.records[0].score, Some(5.4));
    assert_eq!(f.records[0].severity, Severity::Medium);
    let r = fixture("osv/RUSTSEC-2022-0013.json");
    assert_eq!(r.records[0].score, Some(7.5));
    // Both a v3.1 (7.5, high) and a v4.0 vector (9.3, critical): the v4.0 one is scored
    // and rates it; a malformed v4.0 vector falls back to the v3.1 one.
    let both = fixture("osv/GHSA-cvss4-both.json");
    assert_eq!(both.records[0].score, Some(9.3));
    assert_eq!(both.records[0].severity, Severity::Critical);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv/GHSA-cvss4-both.json"),
    )
    .expect("fixture");
    let broken = parse("b.json", text.replace("/SA:N\"", "/SA:Q\"").as_bytes());
    assert_eq!(broken.records[0].score, Some(7.5));
    assert_eq!(broken.records[0].severity, Severity::High);
    // Only a malformed v4.0 vector: the database's word.
    let only4 = text
        .replace("/SA:N\"", "/SA:Q\"")
        .replace("\"CVSS_V3\"", "\"OTHER\"");
    let w = parse("w.json", only4.as_bytes());
    assert_eq!(w.records[0].score, None);
    assert_eq!(w.records[0].severity, Severity::Medium);
    // No vector, no database severity: unknown.
    let g = fixture("osv/GO-2023-2102.json");
    assert!(
        g.records
            .iter()
            .all(|r| r.severity == Severity::Unknown && r.score.is_none())
    );
}

#[test]
fn an_osv_zip_is_one_complete_feed_named_by_its_ecosystem() {
    // A stored zip of two members, written by hand: local headers, central directory,
    // end record.
    let members = [
        (
            "GHSA-h5c8-rqwp-cp95.json",
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/osv/GHSA-h5c8-rqwp-cp95.json"),
            )
            .expect("fixture"),
        ),
        ("bad.json", b"{not json".to_vec()),
    ];
    let zip = berth_vuln::fuzzing::stored_zip(
        &members
            .iter()
            .map(|(n, d)| (*n, d.as_slice()))
            .collect::<Vec<_>>(),
        false,
    );
    let feed = parse("PyPI.zip", &zip);
    assert_eq!(feed.name, "osv:pypi");
    assert!(feed.complete);
    assert_eq!(feed.records.len(), 1);
    assert_eq!(feed.skipped.len(), 1);
    assert_eq!(feed.skipped[0].what, "PyPI.zip:bad.json");
}

#[test]
fn a_zip64_count_is_read() {
    let data = b"{\"id\": \"GHSA-35jh-r3h4-6jhm\", \"affected\": [{\"package\": {\"ecosystem\": \"npm\", \"name\": \"lodash\"}, \"ranges\": [{\"type\": \"SEMVER\", \"events\": [{\"introduced\": \"0\"}, {\"fixed\": \"4.17.21\"}]}]}]}";
    let zip = berth_vuln::fuzzing::stored_zip(&[("a.json", data), ("b.json", data)], true);
    let feed = parse("npm.zip", &zip);
    assert_eq!(feed.name, "osv:npm");
    assert_eq!(feed.records.len(), 2, "{:?}", feed.skipped);
}

/// An rpm as the catalog stores it: binary name and `[epoch:]version-release`, the
/// source rpm's name, the distribution in the purl.
fn rpm(
    distro: &str,
    name: &str,
    version: &str,
    source: &str,
) -> (String, String, String, String, String) {
    let (os, _) = distro.split_once('-').expect("distro");
    (
        format!("pkg:rpm/{os}/{name}@{version}?arch=x86_64&distro={distro}&upstream={source}"),
        name.to_owned(),
        version.to_owned(),
        source.to_owned(),
        version.to_owned(),
    )
}

fn rpm_ids(
    idx: &Index,
    p: &(String, String, String, String, String),
) -> Vec<(String, Option<String>)> {
    idx.matches(&Package {
        purl: &p.0,
        ecosystem: "rpm",
        name: &p.1,
        version: &p.2,
        source_name: Some(&p.3),
        source_version: Some(&p.4),
    })
    .into_iter()
    .map(|f| (f.id, f.fixed))
    .collect()
}

#[test]
fn rpm_distributions_by_binary_package_in_their_major_release() {
    let alma = fixture("osv/rpm/ALSA-2024-2447.json");
    let alma8 = fixture("osv/rpm/ALSA-2023-7877.json");
    let rocky = fixture("osv/rpm/RLSA-2024-2447.json");
    let rhel = fixture("osv/rpm/RHSA-2024-2447.json");
    assert_eq!(alma.records.len(), 4, "{:?}", alma.skipped);
    assert!(
        alma.records
            .iter()
            .all(|r| r.ecosystem == "rpm" && r.release.as_deref() == Some("almalinux:9"))
    );
    assert_eq!(alma8.records[0].release.as_deref(), Some("almalinux:8"));
    assert_eq!(rocky.records.len(), 3);
    assert_eq!(rocky.records[0].release.as_deref(), Some("rocky:9"));
    // Red Hat: baseos and appstream are one release, the package's two entries one
    // record; the EUS stream is not matched (skipped, with its reason).
    assert_eq!(rhel.records.len(), 2, "{:?}", rhel.records);
    assert!(
        rhel.records
            .iter()
            .all(|r| r.release.as_deref() == Some("rhel:9"))
    );
    let libs = rhel
        .records
        .iter()
        .find(|r| r.package == "openssl-libs")
        .expect("openssl-libs");
    assert_eq!(libs.ranges.len(), 2);
    assert_eq!(rhel.skipped.len(), 1);
    assert!(
        rhel.skipped[0]
            .reason
            .contains("Red Hat:rhel_eus:9.2::baseos")
    );
    assert_eq!(rhel.records[0].score, Some(7.5));
    // The CVEs an erratum fixes are its aliases (`related` for AlmaLinux and Red Hat,
    // `upstream` for Rocky), so an allowlist naming the CVE covers it.
    let cves = [
        "CVE-2023-3446",
        "CVE-2023-3817",
        "CVE-2023-5678",
        "CVE-2024-0727",
    ];
    for feed in [&alma, &rocky, &rhel] {
        for r in &feed.records {
            assert!(
                cves.iter().all(|c| r.aliases.iter().any(|a| a == c)),
                "{} {:?}",
                r.id,
                r.aliases
            );
        }
    }
    assert_eq!(alma8.records[0].aliases, vec!["CVE-2023-5981".to_owned()]);

    let idx = Index::new(
        [alma, alma8, rocky, rhel]
            .into_iter()
            .flat_map(|f| f.records),
    );
    let hit = |id: &str| vec![(id.to_owned(), Some("1:3.0.7-27.el9".to_owned()))];
    // AlmaLinux 9.3's openssl-libs (source rpm openssl): its own ALSA, by its binary name.
    let libs_alma = rpm("almalinux-9.3", "openssl-libs", "1:3.0.7-24.el9", "openssl");
    assert_eq!(rpm_ids(&idx, &libs_alma), hit("ALSA-2024:2447"));
    // Fixed, and later: nothing.
    for v in ["1:3.0.7-27.el9", "1:3.0.7-28.el9_4"] {
        let p = rpm("almalinux-9.4", "openssl-libs", v, "openssl");
        assert_eq!(rpm_ids(&idx, &p), vec![], "{v}");
    }
    // The epoch decides: 3.0.9 without the epoch is older than 1:3.0.7.
    let no_epoch = rpm("almalinux-9.3", "openssl-libs", "3.0.9-1.el9", "openssl");
    assert_eq!(rpm_ids(&idx, &no_epoch), hit("ALSA-2024:2447"));
    // A binary the erratum does not list is not matched through its source rpm.
    let fips = rpm(
        "almalinux-9.3",
        "openssl-fips-provider",
        "1:3.0.7-24.el9",
        "openssl",
    );
    assert_eq!(rpm_ids(&idx, &fips), vec![]);
    // Rocky Linux and RHEL (UBI: ID=rhel) each by their own feed only.
    let libs_rocky = rpm("rocky-9.3", "openssl-libs", "1:3.0.7-24.el9", "openssl");
    assert_eq!(rpm_ids(&idx, &libs_rocky), hit("RLSA-2024:2447"));
    let libs_rhel = rpm("rhel-9.3", "openssl-libs", "1:3.0.7-24.el9", "openssl");
    assert_eq!(rpm_ids(&idx, &libs_rhel), hit("RHSA-2024:2447"));
    // Rocky writes epoch 0 out; the catalog does not.
    let bash = rpm("rocky-9.3", "bash", "5.1.8-6.el9_1", "bash");
    assert_eq!(
        rpm_ids(&idx, &bash),
        vec![(
            "RLSA-2024:2447".to_owned(),
            Some("0:5.1.8-9.el9".to_owned())
        )]
    );
    let bash_fixed = rpm("rocky-9.4", "bash", "5.1.8-9.el9", "bash");
    assert_eq!(rpm_ids(&idx, &bash_fixed), vec![]);
    // Another major release, another distribution, no distribution: nothing.
    for p in [
        rpm("almalinux-8.9", "openssl-libs", "1:3.0.7-24.el9", "openssl"),
        rpm("centos-9", "openssl-libs", "1:3.0.7-24.el9", "openssl"),
        rpm("fedora-39", "openssl-libs", "1:3.0.7-24.el9", "openssl"),
    ] {
        assert_eq!(rpm_ids(&idx, &p), vec![], "{}", p.0);
    }
    let gnutls = rpm("almalinux-8.9", "gnutls", "3.6.16-7.el8", "gnutls");
    assert_eq!(
        rpm_ids(&idx, &gnutls),
        vec![(
            "ALSA-2023:7877".to_owned(),
            Some("3.6.16-8.el8_9".to_owned())
        )]
    );
    // Lookups go by the binary name.
    assert_eq!(
        berth_vuln::matching::advisory_key("rpm", "openssl-libs", Some("openssl")),
        ("rpm".to_owned(), "openssl-libs".to_owned())
    );
}

#[test]
fn each_rpm_distributions_dump_is_its_own_feed() {
    let read = |f: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/osv/rpm")
                .join(f),
        )
        .expect("fixture")
    };
    let (a9, a8, r9) = (
        read("ALSA-2024-2447.json"),
        read("ALSA-2023-7877.json"),
        read("RLSA-2024-2447.json"),
    );
    let alma = berth_vuln::fuzzing::stored_zip(
        &[("ALSA-2024:2447.json", &a9), ("ALSA-2023:7877.json", &a8)],
        false,
    );
    let rocky = berth_vuln::fuzzing::stored_zip(&[("RLSA-2024:2447.json", &r9)], false);
    assert_eq!(parse("all.zip", &alma).name, "osv:rpm:almalinux");
    assert_eq!(parse("all.zip", &rocky).name, "osv:rpm:rocky:9");
}
