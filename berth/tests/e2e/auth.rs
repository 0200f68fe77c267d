//! Access control with real clients: skopeo logging in through the token flow and with
//! Basic challenges, pull secrets used as authfiles, containerd pulling with robot
//! credentials, secrets kept out of the log, protected mode with authentication, and the
//! bootstrap admin password.

use base64::Engine as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::containerd::Containerd;
use crate::harness::{
    Berth, HttpResponse, Launch, Layout, assert_same_image_blobs, cmd, exec, free_port, parse_json,
    require_root, run, run_fails, run_stdout, skopeo_copy, tempdir, unique, wait_until,
};

const BEARER: &str = "[auth]\nenabled = true\nchallenge = \"bearer\"\n";
const BASIC: &str = "[auth]\nenabled = true\nchallenge = \"basic\"\n";

/// A password no other test run uses (hex, so it survives any quoting).
fn secret(label: &str) -> String {
    hex::encode(Sha256::digest(unique(label).as_bytes()))[..32].to_owned()
}

fn b64encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[track_caller]
fn b64decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text:?}"))
}

/// The `Authorization` value for Basic credentials.
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        b64encode(format!("{user}:{password}").as_bytes())
    )
}

/// Runs `cmd` with `input` on its standard input; it must succeed.
#[track_caller]
fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing standard input");
    let out = child.wait_with_output().expect("waiting for the command");
    assert!(
        out.status.success(),
        "command failed: {cmd:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `berth <args>` against the server's config and data; must succeed.
#[track_caller]
fn cli(berth: &Berth, args: &[&str]) -> String {
    run_stdout(berth.cli().args(args))
}

/// Tenants `team-a` and `team-b`, and user `dev` (developer of team-a only) with a fresh
/// password, which is returned.
#[track_caller]
fn tenants_and_developer(berth: &Berth) -> String {
    cli(berth, &["tenant", "add", "team-a"]);
    cli(berth, &["tenant", "add", "team-b"]);
    let password = secret("dev password");
    run_with_stdin(
        berth.cli().args(["user", "add", "dev", "--password-stdin"]),
        &format!("{password}\n"),
    );
    cli(berth, &["tenant", "member", "team-a", "dev", "developer"]);
    password
}

/// The text after `label` on the line holding it, as the CLI prints secrets.
#[track_caller]
fn after(output: &str, label: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split_once(label).map(|(_, rest)| rest.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{output}"))
}

/// `GET /token` for `scope`, with Basic credentials when given.
#[track_caller]
fn token(berth: &Berth, creds: Option<(&str, &str)>, scope: &str) -> HttpResponse {
    let auth = creds.map(|(u, p)| basic(u, p));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    berth.request(
        "GET",
        &format!("/token?service=berth&scope={scope}"),
        &headers,
    )
}

/// The value of `key="..."` in a challenge.
#[track_caller]
fn param<'a>(challenge: &'a str, key: &str) -> &'a str {
    let start = format!("{key}=\"");
    let rest = challenge
        .split_once(&start)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no {key} in challenge {challenge:?}"));
    rest.split_once('"')
        .map(|(v, _)| v)
        .unwrap_or_else(|| panic!("unterminated {key} in {challenge:?}"))
}

/// An image with content of its own in a new layout under `work/<name>`; returns the
/// layout and the manifest digest.
#[track_caller]
fn build_image(work: &Path, name: &str) -> (Layout, String) {
    let src = Layout::init(work.join(name));
    let digest = src.build(
        "v1",
        "amd64",
        &[(format!("{name}.txt").as_str(), unique(name))],
    );
    (src, digest)
}

/// `skopeo inspect` of `image` with credentials from `authfile`: the digest, or the error.
fn inspect_with_authfile(authfile: &Path, image: &str) -> Result<String, String> {
    let out = exec(
        cmd("skopeo")
            .args(["inspect", "--tls-verify=false", "--authfile"])
            .arg(authfile)
            .arg(image),
    );
    if out.status.success() {
        let v = parse_json(&out.stdout, "skopeo inspect output");
        Ok(v["Digest"].as_str().unwrap_or_default().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn skopeo_login_push_pull_with_tokens() {
    let admin = secret("admin");
    let berth = Berth::start_with(BEARER, &[("BERTH_ADMIN_PASSWORD", &admin)]);
    let password = tenants_and_developer(&berth);
    let work = tempdir();
    let authfile = work.path().join("auth.json");

    run_with_stdin(
        cmd("skopeo")
            .args(["login", "--tls-verify=false", "--authfile"])
            .arg(&authfile)
            .args(["-u", "dev", "--password-stdin", berth.addr()]),
        &password,
    );
    let saved = parse_json(
        &std::fs::read(&authfile).expect("reading the authfile"),
        "authfile",
    );
    assert!(
        saved["auths"][berth.addr()]["auth"].is_string(),
        "skopeo login saved no credentials for {}: {saved}",
        berth.addr()
    );

    let (src, digest) = build_image(work.path(), "login");
    let with_authfile = ["--authfile", authfile.to_str().expect("UTF-8 path")];
    skopeo_copy(
        &with_authfile,
        &src.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &with_authfile,
        &berth.docker("team-a/app:v1"),
        &back.oci("v1"),
    );
    assert_eq!(back.digest("v1"), digest, "digest after the round trip");
    assert_same_image_blobs(&src, &back, &digest);

    // dev is a developer of team-a only: team-b exists but is not theirs.
    run_fails(
        cmd("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(with_authfile)
            .args([&src.oci("v1"), &berth.docker("team-b/app:v1")]),
    );
    run_fails(
        cmd("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-no-creds",
            ])
            .args([&src.oci("v1"), &berth.docker("team-a/app:anonymous")]),
    );
    let admin_token = token(
        &berth,
        Some(("admin", &admin)),
        "repository:team-b/app:pull",
    );
    assert_eq!(admin_token.status, 200, "{admin_token:?}");
    let bearer = format!(
        "Bearer {}",
        admin_token.json()["token"].as_str().expect("a token")
    );
    let resp = berth.request(
        "GET",
        "/v2/team-b/app/tags/list",
        &[("Authorization", &bearer)],
    );
    assert_eq!(resp.status, 404, "team-b/app must not exist: {resp:?}");

    // What the clients were told: where to get a token, and for which scope.
    let resp = berth.request("POST", "/v2/team-a/app/blobs/uploads/", &[]);
    assert_eq!(resp.status, 401, "{resp:?}");
    let challenge = resp.header("www-authenticate").expect("a challenge");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert_eq!(
        param(challenge, "realm"),
        format!("http://{}/token", berth.addr())
    );
    assert_eq!(param(challenge, "service"), "berth", "{challenge}");
    assert_eq!(
        param(challenge, "scope"),
        "repository:team-a/app:pull,push",
        "{challenge}"
    );
    let resp = berth.get("/v2/");
    assert_eq!(resp.status, 401, "{resp:?}");
}

#[test]
fn skopeo_with_basic_challenge() {
    let admin = secret("admin");
    let berth = Berth::start_with(BASIC, &[("BERTH_ADMIN_PASSWORD", &admin)]);
    let password = tenants_and_developer(&berth);
    let work = tempdir();
    let creds = format!("dev:{password}");

    let (src, digest) = build_image(work.path(), "basic");
    skopeo_copy(
        &["--dest-creds", &creds],
        &src.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--src-creds", &creds],
        &berth.docker("team-a/app:v1"),
        &back.oci("v1"),
    );
    assert_eq!(back.digest("v1"), digest, "digest after the round trip");
    assert_same_image_blobs(&src, &back, &digest);

    run_fails(
        cmd("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(["--dest-creds", &creds])
            .args([&src.oci("v1"), &berth.docker("team-b/app:v1")]),
    );
    run_fails(
        cmd("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(["--dest-creds", &format!("dev:{password}x")])
            .args([&src.oci("v1"), &berth.docker("team-a/app:v2")]),
    );
    run_fails(
        cmd("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-no-creds",
            ])
            .args([&src.oci("v1"), &berth.docker("team-a/app:v3")]),
    );

    let resp = berth.request(
        "GET",
        "/v2/team-a/app/tags/list",
        &[("Authorization", &basic("dev", &password))],
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.json()["tags"],
        serde_json::json!(["v1"]),
        "a refused push left a tag"
    );

    for path in ["/v2/", "/v2/team-a/app/manifests/v1"] {
        let resp = berth.get(path);
        assert_eq!(resp.status, 401, "{path}: {resp:?}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Basic realm=\"berth\", charset=\"UTF-8\""),
            "{path}: {resp:?}"
        );
    }
    let resp = berth.request(
        "GET",
        "/v2/team-a/app/manifests/v1",
        &[
            ("Authorization", &basic("dev", &password)),
            ("Accept", crate::harness::ACCEPT_ALL),
        ],
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
}

#[test]
fn pull_secret_works_as_authfile_and_only_for_its_tenant() {
    let admin = secret("admin");
    // Logins are not remembered, so a rotated secret is refused at once.
    let config = format!("{BEARER}login_cache_secs = 0\n");
    let berth = Berth::start_with(&config, &[("BERTH_ADMIN_PASSWORD", &admin)]);
    cli(&berth, &["tenant", "add", "team-a"]);
    cli(&berth, &["tenant", "add", "team-b"]);
    let work = tempdir();
    let admin_creds = format!("admin:{admin}");
    let (a, a_digest) = build_image(work.path(), "tenant-a");
    let (b, b_digest) = build_image(work.path(), "tenant-b");
    skopeo_copy(
        &["--dest-creds", &admin_creds],
        &a.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    skopeo_copy(
        &["--dest-creds", &admin_creds],
        &b.oci("v1"),
        &berth.docker("team-b/app:v1"),
    );

    let config_json = cli(
        &berth,
        &[
            "secret",
            "team-a",
            "--robot",
            "puller",
            "--format",
            "config-json",
            "--server",
            berth.addr(),
        ],
    );
    let first = parse_json(config_json.as_bytes(), "berth secret --format config-json");
    let entry = &first["auths"][berth.addr()];
    assert_eq!(entry["username"], "team-a+puller", "{first:#}");
    let first_file = work.path().join("first.json");
    std::fs::write(&first_file, &config_json).expect("writing the first authfile");

    assert_eq!(
        inspect_with_authfile(&first_file, &berth.docker("team-a/app:v1")),
        Ok(a_digest.clone())
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--authfile", first_file.to_str().expect("UTF-8 path")],
        &berth.docker("team-a/app:v1"),
        &back.oci("v1"),
    );
    assert_same_image_blobs(&a, &back, &a_digest);
    let refused = inspect_with_authfile(&first_file, &berth.docker("team-b/app:v1"));
    assert!(refused.is_err(), "team-b pulled with team-a's secret");
    // The robot pulls only: pushing with it is refused even within its tenant.
    run_fails(
        cmd("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--authfile"])
            .arg(&first_file)
            .args([&a.oci("v1"), &berth.docker("team-a/app:pushed")]),
    );

    let yaml = cli(
        &berth,
        &[
            "secret",
            "team-a",
            "--robot",
            "puller",
            "--namespace",
            "apps",
            "--server",
            berth.addr(),
        ],
    );
    for line in [
        "kind: Secret",
        "  name: team-a-puller-pull",
        "  namespace: apps",
        "type: kubernetes.io/dockerconfigjson",
    ] {
        assert!(yaml.lines().any(|l| l == line), "{line:?} missing:\n{yaml}");
    }
    let encoded = after(&yaml, ".dockerconfigjson:");
    let second_bytes = b64decode(&encoded);
    let second = parse_json(&second_bytes, ".dockerconfigjson");
    let entry = &second["auths"][berth.addr()];
    assert_eq!(entry["username"], "team-a+puller", "{second:#}");
    let password = entry["password"].as_str().expect("a password");
    assert_eq!(
        b64decode(entry["auth"].as_str().expect("an auth field")),
        format!("team-a+puller:{password}").into_bytes(),
        "auth is base64(username:password): {second:#}"
    );
    assert_ne!(second, first, "the secret was not rotated");
    let second_file = work.path().join("second.json");
    std::fs::write(&second_file, &second_bytes).expect("writing the second authfile");

    assert_eq!(
        inspect_with_authfile(&second_file, &berth.docker("team-a/app:v1")),
        Ok(a_digest.clone())
    );
    assert!(inspect_with_authfile(&second_file, &berth.docker("team-b/app:v1")).is_err());
    let stale = inspect_with_authfile(&first_file, &berth.docker("team-a/app:v1"));
    assert!(
        stale.is_err(),
        "the first secret still works after rotation: {stale:?}"
    );
    assert_ne!(a_digest, b_digest);
}

/// The digest `ctr image ls` shows for `reference`, if listed.
fn ctr_listed(daemon: &Containerd, namespace: &str, reference: &str) -> Option<String> {
    let ls = run_stdout(daemon.ctr(namespace).args(["image", "ls"]));
    ls.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&reference))
        .and_then(|cols| cols.get(2).map(|d| (*d).to_owned()))
}

#[test]
fn containerd_pulls_with_robot_credentials() {
    require_root("containerd needs root");
    let admin = secret("admin");
    let berth = Berth::start_with(BEARER, &[("BERTH_ADMIN_PASSWORD", &admin)]);
    cli(&berth, &["tenant", "add", "team-a"]);
    cli(&berth, &["tenant", "add", "team-b"]);
    let work = tempdir();
    let admin_creds = format!("admin:{admin}");
    let (a, a_digest) = build_image(work.path(), "ctr-a");
    let (b, _) = build_image(work.path(), "ctr-b");
    skopeo_copy(
        &["--dest-creds", &admin_creds],
        &a.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    skopeo_copy(
        &["--dest-creds", &admin_creds],
        &b.oci("v1"),
        &berth.docker("team-b/app:v1"),
    );
    let out = cli(
        &berth,
        &["robot", "add", "team-a", "puller", "--actions", "pull"],
    );
    let robot = format!("team-a+puller:{}", after(&out, "secret (shown once):"));

    let daemon = Containerd::start();
    let reference = berth.image("team-a/app:v1");
    let anonymous = exec(
        daemon
            .ctr("anon")
            .args(["image", "pull", "--plain-http", &reference]),
    );
    assert!(
        !anonymous.status.success(),
        "containerd pulled a private image anonymously"
    );

    run(daemon.ctr("robot").args([
        "image",
        "pull",
        "--plain-http",
        "--user",
        &robot,
        &reference,
    ]));
    assert_eq!(
        ctr_listed(&daemon, "robot", &reference).as_deref(),
        Some(a_digest.as_str())
    );
    let content = run(daemon.ctr("robot").args(["content", "get", &a_digest])).stdout;
    assert_eq!(content, a.blob(&a_digest), "manifest bytes in containerd");

    let other = berth.image("team-b/app:v1");
    let refused =
        exec(
            daemon
                .ctr("robot")
                .args(["image", "pull", "--plain-http", "--user", &robot, &other]),
        );
    assert!(
        !refused.status.success(),
        "team-a's robot pulled team-b/app:\n{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert_eq!(ctr_listed(&daemon, "robot", &other), None);
}

/// Every maximal run of base64 characters at least `min` long following `prefix`.
fn runs_after<'a>(text: &'a str, prefix: &str, min: usize) -> Vec<&'a str> {
    let lower = text.to_ascii_lowercase();
    let prefix = prefix.to_ascii_lowercase();
    lower
        .match_indices(&prefix)
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=-_.".contains(c)))
                .unwrap_or(rest.len());
            (end >= min).then_some(&rest[..end])
        })
        .collect()
}

#[test]
fn secrets_never_reach_the_log() {
    let admin = secret("admin");
    // Debug level: whatever a curious operator turns on must not leak either.
    let berth = Berth::start_with(
        BEARER,
        &[("BERTH_ADMIN_PASSWORD", &admin), ("RUST_LOG", "debug")],
    );
    let password = tenants_and_developer(&berth);
    let out = cli(
        &berth,
        &["robot", "add", "team-a", "ci", "--actions", "pull,push"],
    );
    let robot_secret = after(&out, "secret (shown once):");
    let scope = "repository:team-a/app:pull,push";

    let wrong = token(&berth, Some(("dev", "not-the-password")), scope);
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let wrong = token(&berth, Some(("team-a+ci", "not-the-secret")), scope);
    assert_eq!(wrong.status, 401, "{wrong:?}");

    let mut tokens = Vec::new();
    let resp = token(&berth, Some(("dev", &password)), scope);
    assert_eq!(resp.status, 200, "{resp:?}");
    let dev_token = resp.json()["token"].as_str().expect("a token").to_owned();
    tokens.push(dev_token.clone());
    let resp = token(&berth, Some(("team-a+ci", &robot_secret)), scope);
    assert_eq!(resp.status, 200, "{resp:?}");
    tokens.push(resp.json()["token"].as_str().expect("a token").to_owned());
    let resp = token(&berth, None, "repository:team-a/app:pull");
    assert_eq!(resp.status, 200, "anonymous token: {resp:?}");

    // The OAuth2 form, with a refresh token redeemed for another access token.
    let post = |form: &[(&str, &str)]| {
        let mut c = cmd("curl");
        c.args(["--silent", "--show-error", "--fail"]);
        for (k, v) in form {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = run_stdout(c.arg(format!("http://{}/token", berth.addr())));
        parse_json(out.as_bytes(), "POST /token")
    };
    let oauth = post(&[
        ("grant_type", "password"),
        ("service", "berth"),
        ("access_type", "offline"),
        ("username", "dev"),
        ("password", &password),
        ("scope", scope),
    ]);
    let refresh = oauth["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    tokens.push(oauth["access_token"].as_str().expect("a token").to_owned());
    tokens.push(refresh.clone());
    let refreshed = post(&[
        ("grant_type", "refresh_token"),
        ("service", "berth"),
        ("refresh_token", &refresh),
        ("scope", scope),
    ]);
    tokens.push(
        refreshed["access_token"]
            .as_str()
            .expect("a token")
            .to_owned(),
    );

    let work = tempdir();
    let (src, digest) = build_image(work.path(), "secrets");
    skopeo_copy(
        &["--dest-creds", &format!("dev:{password}")],
        &src.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--src-creds", &format!("team-a+ci:{robot_secret}")],
        &berth.docker("team-a/app:v1"),
        &back.oci("v1"),
    );
    assert_eq!(back.digest("v1"), digest);
    let resp = berth.request(
        "GET",
        "/v2/team-a/app/manifests/v1",
        &[
            ("Authorization", &format!("Bearer {dev_token}")),
            ("Accept", crate::harness::ACCEPT_ALL),
        ],
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let tampered = format!("Bearer {dev_token}x");
    let resp = berth.request(
        "GET",
        "/v2/team-a/app/tags/list",
        &[("Authorization", &tampered)],
    );
    assert_eq!(resp.status, 401, "{resp:?}");
    let resp = berth.request(
        "GET",
        "/v2/",
        &[("Authorization", &basic("dev", &password))],
    );
    assert_eq!(resp.status, 200, "Basic on /v2/: {resp:?}");
    let resp = berth.request(
        "GET",
        "/v2/",
        &[("Authorization", &basic("dev", "also-wrong"))],
    );
    assert_eq!(resp.status, 401, "{resp:?}");

    // The audit writer batches; wait until the last pull is in before reading the log.
    let audit = || cli(&berth, &["audit", "--json", "--limit", "1000"]);
    let rows = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| parse_json(l.as_bytes(), "an audit row"))
            .collect()
    };
    let has = |rows: &[Value], action: &str, actor: &str, outcome: &str| {
        rows.iter()
            .any(|r| r["action"] == action && r["actor"] == actor && r["outcome"] == outcome)
    };
    wait_until(Duration::from_secs(10), "pulls in the audit log", || {
        let r = rows(&audit());
        has(&r, "manifest.pull", "dev", "ok") && has(&r, "manifest.pull", "team-a+ci", "ok")
    });
    let text = audit();
    let r = rows(&text);
    assert!(has(&r, "login", "dev", "bad-credentials"), "{text}");
    assert!(has(&r, "login", "team-a+ci", "bad-credentials"), "{text}");
    let pull = r
        .iter()
        .find(|r| r["action"] == "manifest.pull" && r["actor"] == "dev")
        .expect("dev's pull");
    assert_eq!(pull["repository"], "team-a/app", "{pull}");
    assert_eq!(pull["tenant"], "team-a", "{pull}");
    assert_eq!(pull["detail"], digest.as_str(), "{pull}");

    let log = berth.log();
    assert!(
        log.contains("authentication required"),
        "not the log of an authenticating server:\n{log}"
    );
    let mut secrets = vec![
        ("the developer's password", password.clone()),
        ("the robot's secret", robot_secret.clone()),
        ("BERTH_ADMIN_PASSWORD", admin.clone()),
        (
            "dev's Basic credentials",
            b64encode(format!("dev:{password}").as_bytes()),
        ),
        (
            "the robot's Basic credentials",
            b64encode(format!("team-a+ci:{robot_secret}").as_bytes()),
        ),
        ("a wrong password", "not-the-password".to_owned()),
    ];
    for t in &tokens {
        secrets.push(("a token", t.clone()));
        // A token's signature alone is as good as a leak of the token.
        for part in t.split('.').filter(|p| p.len() >= 16) {
            secrets.push(("part of a token", part.to_owned()));
        }
    }
    for (what, s) in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "{what} ({s}) is in the log:\n{log}"
        );
        assert!(
            !text.contains(s.as_str()),
            "{what} ({s}) is in the audit log:\n{text}"
        );
    }
    for prefix in ["Basic ", "Bearer "] {
        let found = runs_after(&log, prefix, 12);
        assert!(
            found.is_empty(),
            "credentials after {prefix:?} in the log: {found:?}"
        );
    }
    let lower = log.to_ascii_lowercase();
    assert!(
        !lower.contains("authorization:")
            && !lower.contains("authorization=")
            && !lower.contains("\"authorization\""),
        "an Authorization header is in the log:\n{log}"
    );
}

/// A self-signed certificate for 127.0.0.1 (cert, key), trusted by passing the cert as CA.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    run(cmd("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=berth auth e2e"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

#[test]
fn protected_mode_with_auth() {
    let work = tempdir();
    let config = work.path().join("refused.toml");
    std::fs::write(&config, BEARER).expect("writing the config");
    let addr = format!("0.0.0.0:{}", free_port());
    let err = run_fails(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(work.path().join("data"))
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1"),
    );
    assert!(err.contains("allow_insecure_http"), "{err}");
    assert!(
        !work.path().join("data/admin-password").exists(),
        "a refused server bootstrapped an admin"
    );

    let admin = secret("admin");
    let network = Launch {
        listen_ip: Some("0.0.0.0".to_owned()),
        ..Launch::default()
    };
    let berth = Berth::start_launched(
        &format!("{BEARER}[security]\nallow_insecure_http = true\n"),
        &[("BERTH_ADMIN_PASSWORD", &admin)],
        network.clone(),
    );
    let resp = berth.get("/v2/");
    assert_eq!(resp.status, 401, "{resp:?}");
    let resp = berth.request("GET", "/v2/", &[("Authorization", &basic("admin", &admin))]);
    assert_eq!(resp.status, 200, "{resp:?}");
    drop(berth);

    let (cert, key) = self_signed(work.path());
    let config = format!(
        "{BEARER}[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let berth = Berth::start_launched(
        &config,
        &[("BERTH_ADMIN_PASSWORD", &admin)],
        Launch {
            tls_ca: Some(cert.clone()),
            ..network
        },
    );
    // curl negotiates HTTP/2 here, where the host comes in `:authority`, not `Host`: the
    // realm must name it all the same.
    let curl = |user: Option<&str>| {
        let mut c = cmd("curl");
        c.args(["--silent", "--show-error", "--http2", "--max-time", "10"])
            .args(["--output", "/dev/null", "--dump-header", "-"])
            .args(["--write-out", "status=%{http_code}"])
            .arg("--cacert")
            .arg(&cert);
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        run_stdout(c.arg(format!("https://{}/v2/", berth.addr())))
    };
    let anonymous = curl(None);
    assert!(anonymous.ends_with("status=401"), "{anonymous}");
    assert!(
        anonymous.contains(&format!("realm=\"https://{}/token\"", berth.addr())),
        "the realm of a TLS server is https: {anonymous}"
    );
    let admin_user = format!("admin:{admin}");
    let logged_in = curl(Some(&admin_user));
    assert!(logged_in.ends_with("status=200"), "{logged_in}");

    // A real client follows that realm to the token endpoint over TLS, verification on.
    let certs = work.path().join("certs.d");
    std::fs::create_dir_all(&certs).expect("creating the cert dir");
    std::fs::copy(&cert, certs.join("ca.crt")).expect("copying the certificate");
    let authfile = work.path().join("auth.json");
    run_with_stdin(
        cmd("skopeo")
            .args(["login", "--cert-dir"])
            .arg(&certs)
            .arg("--authfile")
            .arg(&authfile)
            .args(["-u", "admin", "--password-stdin", berth.addr()]),
        &admin,
    );
    let wrong = exec(
        cmd("skopeo")
            .args(["login", "--cert-dir"])
            .arg(&certs)
            .arg("--authfile")
            .arg(work.path().join("wrong.json"))
            .args(["-u", "admin", "-p", "not-the-password", berth.addr()]),
    );
    assert!(
        !wrong.status.success(),
        "skopeo logged in with a wrong password"
    );
}

#[test]
fn bootstrap_admin_password_file() {
    let mut berth = Berth::start_with(BEARER, &[]);
    let file = berth.data_dir().join("admin-password");
    let meta = std::fs::metadata(&file).expect("the admin-password file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode of {}",
        file.display()
    );
    let content = std::fs::read_to_string(&file).expect("reading admin-password");
    let password = content.trim().to_owned();
    assert!(
        password.len() >= 16,
        "a weak generated password: {password:?}"
    );

    let logs_in = |berth: &Berth| {
        let resp = token(
            berth,
            Some(("admin", &password)),
            "repository:team-a/app:pull",
        );
        assert_eq!(resp.status, 200, "admin with the file's password: {resp:?}");
        assert!(resp.json()["token"].is_string(), "{resp:?}");
    };
    logs_in(&berth);
    let resp = token(&berth, Some(("admin", &format!("{password}x"))), "");
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(
        berth.log().matches(password.as_str()).count(),
        1,
        "the generated password is logged exactly once:\n{}",
        berth.log()
    );

    berth.restart();
    assert_eq!(
        std::fs::read_to_string(&file).expect("reading admin-password after the restart"),
        content,
        "a restart generated another password"
    );
    logs_in(&berth);
    let log = berth.log();
    assert_eq!(
        log.matches(password.as_str()).count(),
        1,
        "the password was logged again on restart:\n{log}"
    );
    assert_eq!(
        log.matches("generated password").count(),
        1,
        "a second password was generated on restart:\n{log}"
    );
}

#[test]
fn reserved_names_and_public_tenants_on_the_command_line() {
    let admin = secret("admin");
    let berth = Berth::start_with(BEARER, &[("BERTH_ADMIN_PASSWORD", &admin)]);
    // Names Berth uses for itself are nobody's account: not created...
    for name in ["anonymous", "system", "cli"] {
        let err = run_fails(berth.cli().args(["user", "add", name]));
        assert!(err.contains("reserved"), "user add {name}: {err}");
    }
    // ...nor imported from an htpasswd file, which is refused whole, naming the line.
    let work = tempdir();
    let file = work.path().join("htpasswd");
    let hash = "$2y$05$abcdefghijklmnopqrstuuKz2C2uWvVdqjZ7n8bD3fCm0ZzYc1Y0W";
    std::fs::write(&file, format!("carol:{hash}\nanonymous:{hash}\n")).expect("htpasswd");
    let err = run_fails(berth.cli().arg("user").arg("import-htpasswd").arg(&file));
    assert!(err.contains("line 2") && err.contains("reserved"), "{err}");
    let users = cli(&berth, &["user", "list"]);
    assert!(
        !users.contains("carol") && !users.contains("anonymous"),
        "{users}"
    );
    // An anonymous token is marked as such.
    let resp = token(&berth, None, "repository:library/x:pull");
    assert_eq!(resp.status, 200, "{resp:?}");
    let t = resp.json()["token"].as_str().expect("token").to_owned();
    let claims = parse_json(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).expect("claims"))
            .expect("base64url"),
        "claims",
    );
    assert_eq!(claims["anon"], true, "{claims}");

    // `tenant public NAME true|false` takes its value.
    cli(&berth, &["tenant", "add", "team-a"]);
    cli(&berth, &["tenant", "public", "team-a", "true"]);
    // A table for people (a header, RFC 3339 times), JSON Lines for scripts.
    let table = cli(&berth, &["tenant", "list"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "VISIBILITY", "CREATED"], "{table}");
    let row = lines
        .iter()
        .find(|l| l[0] == "team-a")
        .unwrap_or_else(|| panic!("no team-a row: {table}"));
    assert_eq!(row[1], "public", "{table}");
    assert!(
        row[2].len() == 20 && row[2].ends_with('Z') && row[2].as_bytes()[10] == b'T',
        "not an RFC 3339 time: {table}"
    );
    cli(&berth, &["tenant", "public", "team-a", "false"]);
    let json = cli(&berth, &["tenant", "list", "--json"]);
    let team: Value = json
        .lines()
        .map(|l| parse_json(l.as_bytes(), "a tenant"))
        .find(|t| t["name"] == "team-a")
        .unwrap_or_else(|| panic!("no team-a: {json}"));
    assert_eq!(team["public"], false, "team-a is private again");
    assert!(team["created_at"].as_i64().is_some(), "{team}");
    assert!(
        team["created"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{team}"
    );
}

/// `berth_received_bytes_total` of a server: blob bytes it took in.
fn received_bytes(berth: &Berth) -> u64 {
    let resp = berth.get("/metrics");
    assert_eq!(resp.status, 200, "{resp:?}");
    String::from_utf8_lossy(&resp.body)
        .lines()
        .find_map(|l| l.strip_prefix("berth_received_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// skopeo copying between two repositories through the token flow asks for the source's
/// scope itself and mounts every layer: no layer byte is uploaded again (skopeo uploads
/// the small config blob rather than try to mount it).
#[test]
fn skopeo_copies_between_repositories_without_uploading_layers() {
    let berth = Berth::start_with(BEARER, &[("BERTH_ADMIN_PASSWORD", "an admin password")]);
    let password = tenants_and_developer(&berth);
    let creds = format!("dev:{password}");
    let work = tempdir();
    let (src, digest) = build_image(work.path(), "mounted");
    skopeo_copy(
        &["--dest-creds", &creds],
        &src.oci("v1"),
        &berth.docker("team-a/base:v1"),
    );
    let before = received_bytes(&berth);
    assert!(before > 0, "the first push uploaded the image");
    crate::harness::run(cmd("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &creds,
        "--dest-creds",
        &creds,
        &berth.docker("team-a/base:v1"),
        &berth.docker("team-a/app:v1"),
    ]));
    let config = &src.image_blobs(&digest)[0];
    assert_eq!(
        received_bytes(&berth) - before,
        src.blob(config).len() as u64,
        "layer bytes were uploaded for a copy the registry could mount"
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(
        &["--src-creds", &creds],
        &berth.docker("team-a/app:v1"),
        &back.oci("v1"),
    );
    assert_eq!(back.digest("v1"), digest);
}
