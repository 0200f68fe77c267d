//! Vulnerabilities over real HTTP: an image pushed through the registry API is cataloged
//! by the job workers, advisories are imported (fixtures in the real formats),
//! `/api/v1/vulnerabilities` answers whoever may pull with the exact findings,
//! `/api/v1/advisories` the feeds, and an enforcing vulnerability rule refuses manifest
//! GETs and HEADs with 403 DENIED naming the rule and the worst finding (a pusher is
//! served under `push_bypass`); the counters are on `/metrics`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_catalog::fuzzing::{Item, tar};
use berth_registry::access::AccessConfig;
use berth_registry::catalog::CatalogSettings;
use berth_registry::policy::{
    Mode, Pending, Policy, PolicySpec, RuleSpec, UnknownSeverity, VulnRuleSpec,
};
use berth_server::ChallengeKind;
use berth_vuln::Severity;
use common::{Cred, OCI_MANIFEST, Setup};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

const STATUS: &[u8] = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u1)\nVersion: 2.36-9+deb12u1\n\nPackage: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n";

fn fixture(name: &str) -> berth_vuln::Feed {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../berth-vuln/tests/fixtures")
        .join(name);
    berth_vuln::parse(name, &std::fs::read(&p).expect("fixture"))
}

fn no_high(mode: Mode) -> Policy {
    Policy::new(PolicySpec {
        trust: Vec::new(),
        rules: vec![RuleSpec {
            name: "no-high".into(),
            repositories: vec!["prod/*".into()],
            kind: "vulnerability".into(),
            mode,
            pending: Pending::Refuse,
            push_bypass: true,
            vulnerability: Some(VulnRuleSpec {
                severity: Severity::High,
                fixed_only: false,
                unknown: UnknownSeverity::Ignore,
                allow: Vec::new(),
            }),
        }],
    })
    .expect("policy")
}

async fn vulnerabilities_over_http(postgres: bool) {
    let s = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        catalog: Some(CatalogSettings {
            referrers: false,
            ..CatalogSettings::default()
        }),
        postgres,
        ..Setup::default()
    })
    .await;
    common::add_users(
        s.access(),
        &[("ci", false), ("node", false), ("stranger", false)],
    )
    .await;
    common::add_tenant(
        s.access(),
        "prod",
        false,
        &[("ci", "developer"), ("node", "reader")],
    )
    .await;
    let ci = Cred::user("ci");
    let node = Cred::user("node");
    let layer = tar(&[
        Item::File("etc/os-release", b"ID=debian\nVERSION_ID=\"12\"\n"),
        Item::File("var/lib/dpkg/status", STATUS),
        Item::File(
            "srv/node_modules/lodash/package.json",
            br#"{"name":"lodash","version":"4.17.20"}"#,
        ),
    ]);
    let (_, digest, _) = s.push_image_as(&ci, "prod/app", &["v1"], &layer).await;

    let q = "/api/v1/vulnerabilities?repository=prod/app&reference=v1";
    let get = |cred: &Cred| s.request_as(Method::GET, q, cred).send();
    let start = Instant::now();
    let before: Value = loop {
        let r = get(&node).await.expect("send");
        if r.status() == StatusCode::OK {
            break r.json().await.expect("json");
        }
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "before the job ran");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not cataloged within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(before["digest"], digest.as_str());
    assert_eq!(before["findings"], Value::Array(Vec::new()));
    // Whoever may not pull the repository is refused alike.
    let r = get(&Cred::user("stranger")).await.expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    s.registry
        .import_advisories(vec![fixture("debian.json"), fixture("osv/list.json")])
        .await
        .expect("import");
    let after: Value = get(&node).await.expect("send").json().await.expect("json");
    let ids: Vec<(&str, &str, &str)> = after["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["id"].as_str().expect("id"),
                f["package"].as_str().expect("package"),
                f["severity"].as_str().expect("severity"),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("CVE-2023-4911", "libc6", "high"),
            ("GHSA-35jh-r3h4-6jhm", "lodash", "high"),
            ("CVE-2024-33600", "libc6", "low"),
            ("CVE-2019-1010022", "libc6", "negligible"),
            ("CVE-2023-45853", "zlib1g", "unknown"),
            ("CVE-2099-0001", "zlib1g", "unknown"),
        ]
    );
    assert_eq!(after["findings"][0]["fixed"], "2.36-9+deb12u3");
    assert_eq!(after["findings"][4]["status"], "end-of-life");
    let feeds: Value = s
        .request_as(Method::GET, "/api/v1/advisories", &node)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(feeds["feeds"][0]["name"], "debian-tracker");
    assert_eq!(feeds["feeds"][0]["records"], 11);

    // Enforcing: the reader's pull is refused, naming the rule and the worst finding.
    s.registry.set_policy(no_high(Mode::Enforce));
    let pull = |cred: &Cred, method: Method| {
        s.request_as(method, "/v2/prod/app/manifests/v1", cred)
            .header(header::ACCEPT, OCI_MANIFEST)
            .send()
    };
    let (status, code, message) =
        common::error_of(pull(&node, Method::GET).await.expect("send")).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(message.contains("no-high"), "{message}");
    assert!(message.contains(&digest), "{message}");
    assert!(
        message.contains(
            "worst CVE-2023-4911 (high) in libc6 2.36-9+deb12u1, fixed in 2.36-9+deb12u3"
        ),
        "{message}"
    );
    let head = pull(&node, Method::HEAD).await.expect("send");
    assert_eq!(head.status(), StatusCode::FORBIDDEN);
    // The pusher is served (push_bypass), the blob GETs are not judged.
    let r = pull(&ci, Method::GET).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    // Audit mode serves and counts.
    s.registry.set_policy(no_high(Mode::Audit));
    assert_eq!(
        pull(&node, Method::GET).await.expect("send").status(),
        StatusCode::OK
    );

    let metrics = s.metrics().await;
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_vulnerability_pulls_refused_total"),
        2
    );
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_vulnerability_imports_total"),
        1
    );
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_vulnerability_records_skipped_total"),
        6
    );
    assert!(common::metric::<u64>(&metrics, "berth_vulnerability_rematches_total") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vulnerabilities_over_http_sqlite() {
    vulnerabilities_over_http(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vulnerabilities_over_http_postgres() {
    vulnerabilities_over_http(true).await;
}
