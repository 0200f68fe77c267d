//! `berth k8s pull-secrets` against a running Berth with authentication: one Secret per
//! namespace, each with its own pull-only robot, valid for the Kubernetes schemas; the
//! credentials pull the tenant's images and nothing else; a rerun changes nothing;
//! rotating one namespace's robot leaves the other namespaces' Secrets working.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

use crate::harness::{
    Berth, Layout, cmd, exec, parse_json, run, run_stdout, skopeo_copy, tempdir, unique,
};

const CONFIG: &str = "[auth]\nenabled = true\n# A rotated secret is refused at once, not 30 s later.\nlogin_cache_secs = 0\n";

/// (namespace, Secret name, login, password) of every Secret in `yaml`.
fn secrets(yaml: &str) -> Vec<(String, String, String, String)> {
    yaml.split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|doc| {
            assert!(doc.contains("\nkind: Secret\n"), "{doc}");
            assert!(
                doc.contains("\ntype: kubernetes.io/dockerconfigjson\n"),
                "{doc}"
            );
            let field = |prefix: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .unwrap_or_else(|| panic!("no {prefix:?} in:\n{doc}"))
                    .trim_matches('"')
                    .to_owned()
            };
            let config = base64::engine::general_purpose::STANDARD
                .decode(field("  \".dockerconfigjson\": "))
                .expect("base64");
            let config = parse_json(&config, ".dockerconfigjson");
            let auths = config["auths"].as_object().expect("auths");
            assert_eq!(auths.len(), 1, "{config}");
            let (_, auth) = auths.iter().next().expect("one registry");
            let (login, password) = (
                auth["username"].as_str().expect("username").to_owned(),
                auth["password"].as_str().expect("password").to_owned(),
            );
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
            assert_eq!(auth["auth"], Value::from(basic));
            (field("  namespace: "), field("  name: "), login, password)
        })
        .collect()
}

/// Whether `login:password` may read `image` (`team-a/app:v1`).
fn pulls(berth: &Berth, login: &str, password: &str, image: &str) -> bool {
    exec(
        cmd("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
            .arg(format!("{login}:{password}"))
            .arg(berth.docker(image)),
    )
    .status
    .success()
}

fn kubernetes_validate() -> PathBuf {
    let prefix =
        std::env::var_os("BERTH_TOOLS_PREFIX").unwrap_or_else(|| "/opt/berth-tools".into());
    let p = PathBuf::from(prefix).join("kubernetes-validate-venv/bin/kubernetes-validate");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/install-test-tools.sh",
        p.display()
    );
    p
}

#[test]
fn pull_secrets_give_each_namespace_its_own_pull_only_robot() {
    let admin = "admin-password-for-e2e";
    let berth = Berth::start_with(CONFIG, &[("BERTH_ADMIN_PASSWORD", admin)]);
    for tenant in ["team-a", "team-b"] {
        run(berth.cli().args(["tenant", "add", tenant]));
    }
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    src.build("v1", "amd64", &[("f.txt", unique("pull secrets"))]);
    for image in ["team-a/app:v1", "team-b/app:v1"] {
        skopeo_copy(
            &["--dest-creds", &format!("admin:{admin}")],
            &src.oci("v1"),
            &berth.docker(image),
        );
    }

    let pull_secrets = |extra: &[&str]| {
        let out = run(berth
            .cli()
            .args(["k8s", "pull-secrets", "--tenant", "team-a", "--server"])
            .arg(berth.addr())
            .args(extra));
        (
            String::from_utf8(out.stdout).expect("UTF-8"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (yaml, _) = pull_secrets(&["--namespace", "prod", "staging"]);
    let first = secrets(&yaml);
    assert_eq!(first.len(), 2, "{yaml}");
    assert_eq!(
        (first[0].0.as_str(), first[1].0.as_str()),
        ("prod", "staging")
    );
    assert!(first.iter().all(|s| s.1 == "team-a-pull"));
    assert_eq!(first[0].2, "team-a+k8s-prod");
    assert_eq!(first[1].2, "team-a+k8s-staging");

    let file = work.path().join("secrets.yaml");
    std::fs::write(&file, &yaml).expect("writing");
    let checked = run_stdout(
        cmd("sh")
            .arg("-c")
            .arg("\"$0\" --strict -k 1.37.0 \"$1\" 2>&1")
            .arg(kubernetes_validate())
            .arg(&file),
    );
    assert_eq!(
        checked
            .matches("passed for resource secret/team-a-pull")
            .count(),
        2,
        "{checked}"
    );

    let (prod_login, prod_secret) = (&first[0].2, &first[0].3);
    let (staging_login, staging_secret) = (&first[1].2, &first[1].3);
    assert!(pulls(&berth, prod_login, prod_secret, "team-a/app:v1"));
    assert!(
        !pulls(&berth, prod_login, prod_secret, "team-b/app:v1"),
        "another tenant"
    );
    let pushed = exec(
        cmd("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("{prod_login}:{prod_secret}"))
            .arg(src.oci("v1"))
            .arg(berth.docker("team-a/app:v2")),
    );
    assert!(!pushed.status.success(), "a pull robot pushed");

    // Again: nothing printed, nothing changed.
    let (yaml, stderr) = pull_secrets(&["--namespace", "prod", "--namespace", "staging"]);
    assert_eq!(yaml, "", "a rerun printed Secrets");
    assert!(stderr.contains("its Secret stays as it is"), "{stderr}");
    assert!(pulls(&berth, prod_login, prod_secret, "team-a/app:v1"));

    // Rotating prod breaks prod's old Secret only.
    let (yaml, _) = pull_secrets(&["--namespace", "prod", "--rotate"]);
    let rotated = secrets(&yaml);
    assert_eq!(rotated.len(), 1, "{yaml}");
    assert_eq!(
        (rotated[0].0.as_str(), rotated[0].2.as_str()),
        ("prod", "team-a+k8s-prod")
    );
    assert_ne!(&rotated[0].3, prod_secret);
    assert!(
        !pulls(&berth, prod_login, prod_secret, "team-a/app:v1"),
        "old prod secret"
    );
    assert!(pulls(&berth, prod_login, &rotated[0].3, "team-a/app:v1"));
    assert!(
        pulls(&berth, staging_login, staging_secret, "team-a/app:v1"),
        "staging broke"
    );
}
