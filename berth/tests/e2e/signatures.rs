//! Signed images only, with the real signers: cosign 2.5 (key-based, `.sig` tags and the
//! OCI 1.1 referrers mode, `cosign attest`) and notation 1.3 (JWS and COSE, an X.509 chain
//! from a CA made here with openssl), pulled with skopeo against an enforcing rule. The
//! images are signed while the rule audits (the signers read the manifest they sign), then
//! `berth policy check` records the dry run and the server restarts enforcing.
//! Refused: unsigned, signed by an untrusted key, signed by a leaf without the
//! code-signing EKU. `berth verify` says why, with exit codes 0/1/2; `cosign verify`,
//! `cosign tree`, `notation ls` and `notation verify` work against Berth.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{
    Berth, Layout, OCI_MANIFEST, cmd, exec, run, run_fails, run_stdout, skopeo_copy, tempdir,
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

fn cosign_sign(home: &Path, key: &str, image: &str, extra: &[&str]) {
    let mut c = cosign(
        home,
        &[
            "sign",
            "--key",
            key,
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--allow-http-registry",
            "-y",
        ],
    );
    c.args(extra).arg(image);
    run(&mut c);
}

fn notation(config: &Path, args: &[&str]) -> Command {
    let mut c = cmd("notation");
    c.env("XDG_CONFIG_HOME", config)
        .env("HOME", config)
        .args(args);
    c
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA, a leaf with the code-signing EKU and one without, as notation signing keys.
fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
            "-days",
            "30",
            "-subj",
            "/C=US/ST=WA/O=Berth E2E/CN=Berth E2E Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "[eku]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=codeSigning\n[noeku]\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n",
    )
    .expect("ext.cnf");
    for leaf in ["eku", "noeku"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
                "-subj",
                &format!("/C=US/ST=WA/O=Berth E2E/CN={leaf}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-out",
                &format!("{leaf}.crt"),
                "-extfile",
                "ext.cnf",
                "-extensions",
                leaf,
            ],
        );
        let chain = [
            std::fs::read(dir.join(format!("{leaf}.crt"))).expect("leaf"),
            std::fs::read(dir.join("root.crt")).expect("root"),
        ]
        .concat();
        std::fs::write(dir.join(format!("{leaf}-chain.crt")), chain).expect("chain");
    }
    // A CA that signed nothing here.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "30",
            "-subj",
            "/C=US/O=Elsewhere/CN=Other Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

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

fn berth_verify(berth: &Berth, reference: &str) -> (i32, String) {
    let out = exec(berth.cli().args(["verify", reference]));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn real_signers_gate_pulls_under_an_enforcing_rule() {
    let work = tempdir();
    let w = work.path();
    run(&mut cosign(w, &["generate-key-pair"]));
    std::fs::create_dir(w.join("other")).expect("dir");
    run(&mut cosign(&w.join("other"), &["generate-key-pair"]));
    make_ca(w);
    let ncfg = w.join("ncfg");
    std::fs::create_dir_all(ncfg.join("notation")).expect("notation dir");
    let keys = serde_json::json!({"default": "eku", "keys": [
        {"name": "eku", "keyPath": w.join("eku.key"), "certPath": w.join("eku-chain.crt")},
        {"name": "noeku", "keyPath": w.join("noeku.key"), "certPath": w.join("noeku-chain.crt")},
    ]});
    std::fs::write(ncfg.join("notation/signingkeys.json"), keys.to_string()).expect("keys");

    let config = format!(
        r#"
[[trust]]
name = "ci"
repositories = ["prod/*"]
[[trust.cosign]]
name = "release"
key_file = "{key}"
algorithm = "ecdsa-p256"
[[trust.notary]]
name = "corp"
trust_store_file = "{root}"
level = "strict"
trusted_identities = ["x509.subject: C=US, ST=WA, O=Berth E2E"]

[[policy]]
name = "signed-prod"
repositories = ["prod/*"]
mode = "audit"
"#,
        key = w.join("cosign.pub").display(),
        root = w.join("root.crt").display(),
    );
    let mut berth = Berth::start_with(&config, &[]);

    let layout = Layout::init(w.join("layout"));
    let names = [
        "unsigned",
        "cosign",
        "oci11",
        "wrongkey",
        "notary",
        "cose",
        "noeku",
        "scoped",
        "misdirected",
        "tampered",
    ];
    let mut digests = std::collections::HashMap::new();
    for n in names {
        let d = layout.build(n, "amd64", &[("hello", format!("image {n}"))]);
        skopeo_copy(&[], &layout.oci(n), &berth.docker(&format!("prod/{n}:v1")));
        digests.insert(n, d);
    }
    let addr = berth.addr().to_owned();
    let at = |n: &str| format!("{addr}/prod/{n}@{}", digests[n]);
    let out = w.join("pulled");
    std::fs::create_dir_all(&out).expect("pull directory");

    // Audit mode: everything is served (cosign and notation read the manifest they sign).
    for n in names {
        assert!(
            pull(&berth, &format!("prod/{n}:v1"), &out),
            "{n} refused under audit"
        );
    }
    let key = w.join("cosign.key").display().to_string();
    cosign_sign(w, &key, &at("cosign"), &[]);
    run(&mut cosign(
        w,
        &[
            "attest",
            "--key",
            &key,
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--allow-http-registry",
            "-y",
            "--type",
            "custom",
            "--predicate",
            "cosign.pub",
            &at("cosign"),
        ],
    ));
    let mut c = cosign(w, &[]);
    c.env("COSIGN_EXPERIMENTAL", "1");
    c.args([
        "sign",
        "--key",
        &key,
        "--tlog-upload=false",
        "--allow-insecure-registry",
        "--allow-http-registry",
        "-y",
        "--registry-referrers-mode=oci-1-1",
        &at("oci11"),
    ]);
    run(&mut c);
    let other = w.join("other/cosign.key").display().to_string();
    cosign_sign(&w.join("other"), &other, &at("wrongkey"), &[]);
    // cosign's own signature of prod/cosign, copied (oras cp) to prod/misdirected's
    // signature tag: valid, but for another digest.
    let sig_tag = |n: &str| format!("sha256-{}.sig", &digests[n][7..]);
    run(cmd("oras").args([
        "cp",
        "--from-plain-http",
        "--to-plain-http",
        &format!("{addr}/prod/cosign:{}", sig_tag("cosign")),
        &format!("{addr}/prod/misdirected:{}", sig_tag("misdirected")),
    ]));
    // prod/tampered signed by cosign, then its signature annotation changed by one bit.
    cosign_sign(w, &key, &at("tampered"), &[]);
    let sig = berth.manifest("prod/tampered", &sig_tag("tampered"), OCI_MANIFEST);
    let mut m = sig.json();
    let ann = &mut m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let mut raw = STANDARD
        .decode(ann.as_str().expect("annotation"))
        .expect("base64");
    let last = raw.len() - 1;
    raw[last] ^= 1;
    *ann = STANDARD.encode(&raw).into();
    std::fs::write(
        w.join("tampered.json"),
        serde_json::to_vec(&m).expect("json"),
    )
    .expect("write");
    run(cmd("curl").args([
        "--silent",
        "--fail",
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {OCI_MANIFEST}"),
        "--data-binary",
        &format!("@{}", w.join("tampered.json").display()),
        &format!(
            "http://{addr}/v2/prod/tampered/manifests/{}",
            sig_tag("tampered")
        ),
    ]));
    run(&mut notation(
        &ncfg,
        &["sign", "--insecure-registry", &at("notary")],
    ));
    run(&mut notation(
        &ncfg,
        &[
            "sign",
            "--insecure-registry",
            "--signature-format",
            "cose",
            &at("cose"),
        ],
    ));
    run(&mut notation(
        &ncfg,
        &[
            "sign",
            "--insecure-registry",
            "--key",
            "noeku",
            &at("noeku"),
        ],
    ));
    run(&mut notation(
        &ncfg,
        &["sign", "--insecure-registry", &at("scoped")],
    ));

    // Enforcing, with the Notary trust imported from a notation trustpolicy.json: its
    // exact scope for prod/scoped (a CA that signed nothing) wins over its `*` policy.
    let trust_policy = serde_json::json!({"version": "1.0", "trustPolicies": [
        {"name": "scoped", "registryScopes": [format!("{addr}/prod/scoped")],
         "signatureVerification": {"level": "strict"}, "trustStores": ["ca:other"],
         "trustedIdentities": ["*"]},
        {"name": "corp", "registryScopes": ["*"], "signatureVerification": {"level": "strict"},
         "trustStores": ["ca:corp"], "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Berth E2E"]},
    ]});
    std::fs::write(w.join("trustpolicy.json"), trust_policy.to_string()).expect("policy");
    let notary_table = config[config.find("[[trust.notary]]").expect("notary table")
        ..config.find("[[policy]]").expect("policy table")]
        .to_owned();
    let enforcing = config
        .replace(
            &notary_table,
            &format!(
                "[trust.notation]\ntrust_policy_file = \"{}\"\nregistry = \"{addr}\"\n\
                 trust_stores = {{ \"ca:corp\" = \"{}\", \"ca:other\" = \"{}\" }}\n\n",
                w.join("trustpolicy.json").display(),
                w.join("root.crt").display(),
                w.join("other.crt").display()
            ),
        )
        .replace(r#"mode = "audit""#, r#"mode = "enforce""#);
    let toml = berth.data_dir().with_file_name("berth.toml");
    std::fs::write(&toml, &enforcing).expect("config");
    // The dry run that switching to enforce needs; it reports what would be refused, as
    // a table for people and as JSON Lines for scripts.
    let check = run_stdout(
        berth
            .cli()
            .args(["policy", "check", "--rule", "signed-prod"]),
    );
    let header = check.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("RULE") && header.contains("WOULD REFUSE"),
        "{check}"
    );
    assert!(check.contains("prod/unsigned@"), "{check}");
    let check =
        run_stdout(
            berth
                .cli()
                .args(["policy", "check", "--rule", "signed-prod", "--json"]),
        );
    let runs: Vec<serde_json::Value> = check
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(runs.len(), 1, "{check}");
    assert_eq!(
        (runs[0]["checked"].as_u64(), runs[0]["refused"].as_u64()),
        (Some(10), Some(6)),
        "{check}"
    );
    assert_eq!(
        runs[0]["examples"].as_array().map(Vec::len),
        Some(6),
        "{check}"
    );
    berth.restart();

    for (n, served) in [
        ("unsigned", false),
        ("cosign", true),
        ("oci11", true),
        ("wrongkey", false),
        ("notary", true),
        ("cose", true),
        ("noeku", false),
        ("scoped", false),
        ("misdirected", false),
        ("tampered", false),
    ] {
        assert_eq!(
            pull(&berth, &format!("prod/{n}:v1"), &out),
            served,
            "{n} by tag"
        );
        let by_digest = format!("prod/{n}@{}", digests[n]);
        assert_eq!(pull(&berth, &by_digest, &out), served, "{n} by digest");
    }

    // The clients' own verification works against Berth.
    run(&mut cosign(
        w,
        &[
            "verify",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            "--allow-http-registry",
            &at("cosign"),
        ],
    ));
    let tree = run(&mut cosign(
        w,
        &[
            "tree",
            "--allow-insecure-registry",
            "--allow-http-registry",
            &at("cosign"),
        ],
    ));
    let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
    assert!(
        tree.contains("Signatures") && tree.contains("Attestations"),
        "{tree}"
    );
    run(&mut notation(
        &ncfg,
        &[
            "cert",
            "add",
            "--type",
            "ca",
            "--store",
            "corp",
            &w.join("root.crt").display().to_string(),
        ],
    ));
    let policy = serde_json::json!({"version": "1.0", "trustPolicies": [{
        "name": "e2e", "registryScopes": ["*"], "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:corp"], "trustedIdentities": ["*"]}]});
    std::fs::write(ncfg.join("notation/trustpolicy.json"), policy.to_string()).expect("policy");
    run(&mut notation(
        &ncfg,
        &["verify", "--insecure-registry", &at("notary")],
    ));
    let ls = run(&mut notation(
        &ncfg,
        &["ls", "--insecure-registry", &at("notary")],
    ));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("application/vnd.cncf.notary.signature"));
    run_fails(&mut notation(
        &ncfg,
        &["verify", "--insecure-registry", &at("noeku")],
    ));

    // berth verify: who signed, or exactly why not; 0 / 1 / 2.
    let (code, text) = berth_verify(&berth, "prod/cosign:v1");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ci/release") && text.contains("attestation"),
        "{text}"
    );
    let (code, text) = berth_verify(&berth, &format!("prod/notary@{}", digests["notary"]));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("CN=eku"), "{text}");
    let (code, text) = berth_verify(&berth, "prod/wrongkey:v1");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("wrong key"), "{text}");
    let (code, text) = berth_verify(&berth, "prod/noeku:v1");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("code-signing"), "{text}");
    let (code, text) = berth_verify(&berth, "prod/scoped:v1");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("untrusted chain"), "{text}");
    let (code, text) = berth_verify(&berth, "prod/misdirected:v1");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("signed for {}", digests["cosign"])),
        "{text}"
    );
    let (code, text) = berth_verify(&berth, "prod/tampered:v1");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("wrong key"), "{text}");
    let (code, text) = berth_verify(&berth, "prod/unsigned:v1");
    assert_eq!((code, text.contains("no signature")), (1, true), "{text}");
    let (code, text) = berth_verify(&berth, "prod/nothing:v1");
    assert_eq!(code, 2, "{text}");
}

/// `cmd` with `input` on its standard input; must succeed.
fn run_with_input(cmd: &mut Command, input: &str) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls a skopeo pull from `berth` as `creds` until it has the wanted outcome; fails after
/// 2 s.
fn pull_within_2s(berth: &Berth, image: &str, creds: &str, out: &Path, want: bool) {
    let start = std::time::Instant::now();
    loop {
        let dest = format!(
            "dir:{}",
            out.join(format!("p{}", start.elapsed().as_nanos()))
                .display()
        );
        let ok = exec(cmd("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            &berth.docker(image),
            &dest,
        ]))
        .status
        .success();
        if ok == want {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{image} on {}: still {} after 2 s",
            berth.addr(),
            if ok { "served" } else { "refused" }
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Two replicas over PostgreSQL with authentication, enforcing from the start: CI (a user
/// who may push) signs with cosign through one replica although the image is not signed
/// yet (push_bypass); a node (pull only) is refused on the other replica until then, served
/// within 2 s of the signature, and refused again within 2 s of its deletion.
#[test]
fn replicas_enforce_for_nodes_while_ci_signs() {
    let url = crate::replicas::schema_url();
    let shared = tempdir();
    let work = tempdir();
    let w = work.path();
    run(&mut cosign(w, &["generate-key-pair"]));
    let config = format!(
        r#"[metadata]
url = "{url}"
[cache]
ttl_ms = 60000
[auth]
enabled = true
challenge = "bearer"

[[trust]]
name = "ci"
repositories = ["prod/*"]
[[trust.cosign]]
name = "release"
key_file = "{key}"

[[policy]]
name = "signed-prod"
repositories = ["prod/*"]
mode = "enforce"
"#,
        key = w.join("cosign.pub").display()
    );
    let admin = "e2e-admin-password-0123456789";
    let env = [("BERTH_ADMIN_PASSWORD", admin)];
    let launch = || crate::harness::Launch {
        data_dir: Some(shared.path().to_owned()),
        ..crate::harness::Launch::default()
    };
    let a = Berth::start_launched(&config, &env, launch());
    let b = Berth::start_launched(&config, &env, launch());
    run(a.cli().args(["tenant", "add", "prod"]));
    let node_pw = "e2e-node-password-0123456789";
    run_with_input(
        a.cli().args(["user", "add", "node", "--password-stdin"]),
        &format!("{node_pw}\n"),
    );
    run(a.cli().args(["tenant", "member", "prod", "node", "reader"]));
    let admin_creds = format!("admin:{admin}");
    let node_creds = format!("node:{node_pw}");

    let layout = Layout::init(w.join("layout"));
    let digest = layout.build("app", "amd64", &[("hello", "signed by CI")]);
    skopeo_copy(
        &["--dest-creds", &admin_creds],
        &layout.oci("app"),
        &a.docker("prod/app:v1"),
    );
    let out = w.join("pulled");
    std::fs::create_dir_all(&out).expect("dir");
    pull_within_2s(&b, "prod/app:v1", &node_creds, &out, false);

    // CI signs through a: cosign reads the unsigned manifest (bypass) and pushes .sig.
    let image = format!("{}/prod/app@{digest}", a.addr());
    cosign_sign(
        w,
        &w.join("cosign.key").display().to_string(),
        &image,
        &["--registry-username", "admin", "--registry-password", admin],
    );
    pull_within_2s(&b, "prod/app:v1", &node_creds, &out, true);
    pull_within_2s(&b, &format!("prod/app@{digest}"), &node_creds, &out, true);

    // The signature deleted through a: b refuses the node again.
    let sig = a.manifest(
        "prod/app",
        &format!("sha256-{}.sig", &digest[7..]),
        OCI_MANIFEST,
    );
    assert_eq!(sig.status, 401, "anonymous reads need a token here");
    let basic = format!("Basic {}", STANDARD.encode(&admin_creds));
    let sig = a.request(
        "GET",
        &format!("/v2/prod/app/manifests/sha256-{}.sig", &digest[7..]),
        &[("Authorization", &basic), ("Accept", OCI_MANIFEST)],
    );
    assert_eq!(sig.status, 200, "{sig:?}");
    let sig_digest = sig.header("docker-content-digest").expect("digest header");
    let gone = a.request(
        "DELETE",
        &format!("/v2/prod/app/manifests/{sig_digest}"),
        &[("Authorization", &basic)],
    );
    assert_eq!(gone.status, 202, "{gone:?}");
    pull_within_2s(&b, "prod/app:v1", &node_creds, &out, false);
}
