//! The admission webhooks over real HTTPS (the CA and certificate `berth k8s
//! webhook-cert` makes, trusted alone by a client that names the webhook Service),
//! answered from a real Berth holding the images: `AdmissionReview` payloads of
//! every pod-bearing kind shaped as the API server sends them (CREATE, UPDATE with
//! `oldObject`, `dryRun`, the ephemeral containers subresource); every returned JSONPatch
//! is applied by PyPI's `jsonpatch` (an independent RFC 6902 implementation), compared
//! with the expected object and validated by `kubernetes-validate` (strict); each rule in
//! each mode; bad input is a 400 or a well-formed answer, never a 500; two replicas over
//! PostgreSQL answer alike.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use berth_registry::access::AccessConfig;
use berth_registry::admission::{AdmissionRuleSpec, AdmissionSettings, RuleKind};
use berth_registry::policy::{CosignKeySpec, Mode, Policy, PolicySpec, TrustSpec};
use berth_registry::{UpstreamConfig, UpstreamSettings};
use berth_server::{ChallengeKind, TlsSettings};
use common::{
    Cred, Key, OCI_MANIFEST, SIMPLE_SIGNING, Setup, TestServer as Server, key, sha256, sign,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const NS: &str = "team-a";
const HOST: &str = "registry.example.com";

/// The webhook listener of a server: its base URL and a client trusting only the CA.
struct Hook {
    base: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// The name the API server calls the webhooks by (`berth-webhook.berth.svc`).
const SVC: &str = "berth-webhook.berth.svc";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The CA, certificate and key `berth k8s webhook-cert` makes for the install `berth` in
/// namespace `berth`, written to `dir`.
fn webhook_pki(dir: &std::path::Path, days: u32) -> (PathBuf, PathBuf, PathBuf) {
    let rng = ring::rand::SystemRandom::new();
    let pki = berth_k8s::cert::webhook_pki("berth", "berth", days, unix_now(), &rng).expect("pki");
    let paths = (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&paths.0, &pki.ca_pem).expect("ca");
    std::fs::write(&paths.1, &pki.cert_pem).expect("cert");
    std::fs::write(&paths.2, &pki.key_pem).expect("key");
    paths
}

/// A client trusting only `ca`, reaching `addr` by the name `host`.
fn client_for(ca: &std::path::Path, host: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("CA");
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA")])
        .resolve(host, addr)
        .build()
        .expect("client")
}

async fn hook(s: &Server) -> Hook {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = webhook_pki(dir.path(), 30);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_server::run_admission(
        listener,
        s.state.clone(),
        Some(TlsSettings {
            cert,
            key,
            reload_interval: Duration::from_secs(10),
        }),
        async move {
            let _ = stopped.await;
        },
    ));
    let http = client_for(&ca, SVC, addr);
    Hook {
        base: format!("https://{SVC}:{}", addr.port()),
        http,
        _stop: stop,
        _dir: dir,
    }
}

impl Hook {
    async fn post(&self, webhook: &str, body: Vec<u8>) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}/{webhook}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status();
        (status, r.text().await.expect("body"))
    }

    /// One review; the response object (status 200 asserted).
    async fn review(&self, webhook: &str, review: &Value) -> Value {
        let (status, text) = self
            .post(webhook, serde_json::to_vec(review).expect("json"))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let v: Value = serde_json::from_str(&text).expect("response JSON");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], review["request"]["uid"]);
        v["response"].clone()
    }
}

/// The JSONPatch of a response, decoded from base64.
fn patch_of(response: &Value) -> Option<Value> {
    let p = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(p)
        .expect("base64");
    Some(serde_json::from_slice(&bytes).expect("patch JSON"))
}

fn venv_python() -> PathBuf {
    let prefix =
        std::env::var_os("BERTH_TOOLS_PREFIX").unwrap_or_else(|| "/opt/berth-tools".into());
    PathBuf::from(prefix).join("kubernetes-validate-venv/bin/python")
}

/// Applies each (object, patch) with PyPI jsonpatch and validates the result with
/// kubernetes-validate; the patched objects, or a failure.
fn apply_and_validate(cases: &[(Value, Option<Value>)]) -> Vec<Value> {
    let input: Vec<Value> = cases
        .iter()
        .map(|(o, p)| json!({"object": o, "patch": p}))
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/admission_patch.py");
    let mut child = Command::new(venv_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python of the kubernetes-validate venv (scripts/install-test-tools.sh)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&serde_json::to_vec(&input).expect("json"))
            .expect("write");
    }
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("results");
    results
        .into_iter()
        .zip(cases)
        .map(|(r, (o, _))| {
            assert!(
                r.get("error").is_none(),
                "{}\nobject: {o}",
                r["error"].as_str().unwrap_or_default()
            );
            r["result"].clone()
        })
        .collect()
}

fn request(kind: (&str, &str, &str), op: &str, object: &Value, old: Option<&Value>) -> Value {
    let (group, version, k) = kind;
    let resource = match k {
        "Pod" => "pods",
        "PodTemplate" => "podtemplates",
        "ReplicationController" => "replicationcontrollers",
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        "DaemonSet" => "daemonsets",
        "Job" => "jobs",
        "CronJob" => "cronjobs",
        _ => "things",
    };
    let mut req = json!({
        "uid": format!("uid-{k}-{op}"),
        "kind": {"group": group, "version": version, "kind": k},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": k},
        "requestResource": {"group": group, "version": version, "resource": resource},
        "name": object["metadata"]["name"],
        "namespace": NS,
        "operation": op,
        "userInfo": {"username": "system:serviceaccount:kube-system:deployment-controller", "uid": "u", "groups": ["system:serviceaccounts"]},
        "object": object,
        "oldObject": old,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": if op == "CREATE" { "CreateOptions" } else { "UpdateOptions" }},
    });
    if old.is_none() {
        req["oldObject"] = Value::Null;
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

fn pod_spec(images: &[(&str, &str, &str)]) -> Value {
    let mut spec = json!({"containers": [], "initContainers": []});
    for (list, name, image) in images {
        spec[*list]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": name, "image": image}));
    }
    if spec["initContainers"].as_array().is_some_and(Vec::is_empty) {
        spec.as_object_mut().expect("spec").remove("initContainers");
    }
    spec
}

fn template(spec: &Value) -> Value {
    json!({"metadata": {"labels": {"app": "web"}}, "spec": spec})
}

/// A valid object of `kind` around `spec`, and where its pod spec lives.
fn object(
    kind: &str,
    spec: &Value,
) -> (
    Value,
    (&'static str, &'static str, &'static str),
    &'static str,
) {
    let meta = json!({"name": "web", "namespace": NS});
    let sel = json!({"matchLabels": {"app": "web"}});
    let mut job_spec = spec.clone();
    job_spec["restartPolicy"] = json!("Never");
    match kind {
        "Pod" => (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}),
            ("", "v1", "Pod"),
            "/spec",
        ),
        "PodTemplate" => (
            json!({"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta, "template": template(spec)}),
            ("", "v1", "PodTemplate"),
            "/template/spec",
        ),
        "ReplicationController" => (
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": meta, "spec": {"selector": {"app": "web"}, "template": template(spec)}}),
            ("", "v1", "ReplicationController"),
            "/spec/template/spec",
        ),
        "Deployment" => (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"selector": sel, "template": template(spec)}}),
            ("apps", "v1", "Deployment"),
            "/spec/template/spec",
        ),
        "ReplicaSet" => (
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta, "spec": {"selector": sel, "template": template(spec)}}),
            ("apps", "v1", "ReplicaSet"),
            "/spec/template/spec",
        ),
        "StatefulSet" => (
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": {"selector": sel, "serviceName": "web", "template": template(spec)}}),
            ("apps", "v1", "StatefulSet"),
            "/spec/template/spec",
        ),
        "DaemonSet" => (
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": {"selector": sel, "template": template(spec)}}),
            ("apps", "v1", "DaemonSet"),
            "/spec/template/spec",
        ),
        "Job" => (
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"template": template(&job_spec)}}),
            ("batch", "v1", "Job"),
            "/spec/template/spec",
        ),
        "CronJob" => (
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta, "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template(&job_spec)}}}}),
            ("batch", "v1", "CronJob"),
            "/spec/jobTemplate/spec/template/spec",
        ),
        _ => unreachable!(),
    }
}

const KINDS: [&str; 9] = [
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];

fn rule(name: &str, kind: RuleKind, mode: Mode) -> AdmissionRuleSpec {
    AdmissionRuleSpec {
        name: name.into(),
        namespaces: vec!["team-*".into()],
        kind,
        mode,
        registries: if kind == RuleKind::AllowedRegistries {
            vec![HOST.into(), "docker.io".into()]
        } else {
            vec![]
        },
        templates: true,
        pull_policy: (kind == RuleKind::PullPolicy).then(|| "IfNotPresent".into()),
        secret: (kind == RuleKind::PullSecret).then(|| "team-a-pull".into()),
    }
}

fn all_rules(mode: Mode) -> Vec<AdmissionRuleSpec> {
    vec![
        rule("no-latest", RuleKind::RefuseLatest, mode),
        rule("registries", RuleKind::AllowedRegistries, mode),
        rule("signed", RuleKind::Signature, mode),
        rule("mirror", RuleKind::Mirror, mode),
        rule("pin", RuleKind::Pin, mode),
        rule("pull-policy", RuleKind::PullPolicy, mode),
        rule("pull-secret", RuleKind::PullSecret, mode),
    ]
}

fn settings() -> AdmissionSettings {
    AdmissionSettings {
        registry: Some(HOST.into()),
        aliases: vec![],
        upstream_timeout: Duration::from_secs(2),
    }
}

/// Trust `k` for `team-a/*`.
fn trust(k: &Key) -> Policy {
    Policy::new(PolicySpec {
        trust: vec![TrustSpec {
            name: "ci".into(),
            repositories: vec!["team-a/*".into()],
            cosign: vec![CosignKeySpec {
                name: "release".into(),
                pem: k.pem.clone(),
                algorithm: Some("ed25519".into()),
            }],
            notary: vec![],
            certificates: vec![],
        }],
        rules: vec![],
    })
    .expect("policy")
}

/// A cosign `.sig` of `subject` in `repo`, signed by `k`.
async fn sign_image(s: &Server, k: &Key, repo: &str, subject: &str) {
    let cred = Cred::Anonymous;
    let payload = common::payload(subject);
    let cfg = br#"{"architecture":"","os":""}"#;
    let c = s.push_blob_as(&cred, repo, cfg).await;
    let p = s.push_blob_as(&cred, repo, &payload).await;
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": cfg.len()},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": p, "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": sign(k, &payload)}}],
    });
    let tag = format!("sha256-{}.sig", &subject[7..]);
    let r = s
        .put_manifest_as(
            &cred,
            repo,
            &tag,
            OCI_MANIFEST,
            &serde_json::to_vec(&m).expect("json"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// A registry holding `library/nginx:1.27` (and `:1.28`), as docker.io for the cache.
struct World {
    up: Server,
    s: Server,
    hook: Hook,
    /// Digests of team-a/app:1.0, team-a/side:2.0, team-a/init:3.0, nginx:1.27.
    app: String,
    side: String,
    init: String,
    nginx: String,
    key: Key,
}

async fn world(setup: Setup, rules: Vec<AdmissionRuleSpec>) -> World {
    let up = common::start(Setup::default()).await;
    let (_, nginx, _) = up
        .push_image_as(&Cred::Anonymous, "library/nginx", &["1.27"], b"nginx 1.27")
        .await;
    up.push_image_as(&Cred::Anonymous, "library/nginx", &["1.28"], b"nginx 1.28")
        .await;
    let s = common::start(Setup {
        upstreams: vec![UpstreamSettings {
            client: UpstreamConfig {
                timeout: Duration::from_secs(2),
                ..UpstreamConfig::new("docker.io", &up.base)
            },
            tag_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            repositories: vec![],
            cache: true,
        }],
        ..setup
    })
    .await;
    let k = key();
    s.registry.set_policy(trust(&k));
    let push = |repo: &'static str, tag: &'static str, layer: &'static [u8]| {
        let s = &s;
        async move {
            s.push_image_as(&Cred::Anonymous, repo, &[tag], layer)
                .await
                .1
        }
    };
    let app = push("team-a/app", "1.0", b"app 1.0").await;
    let side = push("team-a/side", "2.0", b"side 2.0").await;
    let init = push("team-a/init", "3.0", b"init 3.0").await;
    for d in [&app, &side, &init] {
        let repo = if d == &app {
            "team-a/app"
        } else if d == &side {
            "team-a/side"
        } else {
            "team-a/init"
        };
        sign_image(&s, &k, repo, d).await;
    }
    s.registry.set_admission(rules, settings()).expect("rules");
    let hook = hook(&s).await;
    World {
        up,
        s,
        hook,
        app,
        side,
        init,
        nginx,
        key: k,
    }
}

fn three() -> Value {
    pod_spec(&[
        (
            "initContainers",
            "init",
            "registry.example.com/team-a/init:3.0",
        ),
        ("containers", "app", "registry.example.com/team-a/app:1.0"),
        ("containers", "proxy", "nginx:1.27"),
    ])
}

/// Every pod-bearing kind, CREATE, every mutating rule enforcing: the patch applied by
/// jsonpatch gives exactly the expected object, which Kubernetes' schema accepts.
#[tokio::test]
async fn every_kind_is_mutated_as_expected_and_stays_valid() {
    let w = world(Setup::default(), all_rules(Mode::Enforce)).await;
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for kind in KINDS {
        let (obj, gvk, at) = object(kind, &three());
        let resp = w
            .hook
            .review("mutate", &request(gvk, "CREATE", &obj, None))
            .await;
        assert_eq!(resp["allowed"], true, "{kind}: {resp}");
        let patch = patch_of(&resp).unwrap_or_else(|| panic!("{kind}: no patch in {resp}"));
        let mut want = obj.clone();
        let spec = want.pointer_mut(at).expect("spec");
        spec["initContainers"][0]["image"] = json!(format!("{HOST}/team-a/init:3.0@{}", w.init));
        spec["containers"][0]["image"] = json!(format!("{HOST}/team-a/app:1.0@{}", w.app));
        spec["containers"][1]["image"] =
            json!(format!("{HOST}/docker.io/library/nginx:1.27@{}", w.nginx));
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().expect("list") {
                c["imagePullPolicy"] = json!("IfNotPresent");
            }
        }
        spec["imagePullSecrets"] = json!([{"name": "team-a-pull"}]);
        cases.push((obj, Some(patch)));
        expected.push((kind, want));
    }
    let results = apply_and_validate(&cases);
    for ((kind, want), got) in expected.iter().zip(&results) {
        assert_eq!(got, want, "{kind}");
    }
    // Reinvoked (reinvocationPolicy IfNeeded) on its own output, the mutating webhook
    // changes nothing more: mirrored, pinned and completed specs are left as they are.
    for ((kind, _), got) in expected.iter().zip(&results) {
        let gvk = object(kind, &three()).1;
        let resp = w
            .hook
            .review("mutate", &request(gvk, "CREATE", got, None))
            .await;
        assert!(
            resp["allowed"] == true && resp.get("patch").is_none(),
            "{kind}: {resp}"
        );
    }
    // The validating webhook judges what the mutating one made: Berth's own images are
    // signed, pinned and allowed; docker.io's nginx has no trust, so only it is refused.
    for ((kind, _), got) in expected.iter().zip(&results) {
        let gvk = object(kind, &three()).1;
        let resp = w
            .hook
            .review("validate", &request(gvk, "CREATE", got, None))
            .await;
        assert_eq!(resp["allowed"], false, "{kind}: {resp}");
        let msg = resp["status"]["message"].as_str().expect("message");
        assert!(
            msg.contains("\"proxy\"") && msg.contains("\"signed\""),
            "{msg}"
        );
        assert!(
            !msg.contains("\"app\"") && !msg.contains("\"init\""),
            "{msg}"
        );
        assert!(resp.get("patch").is_none());
    }
    // nginx:1.27 was pinned through the configured upstream and is now in the cache.
    let cached =
        w.s.registry
            .resolve(
                &"docker.io/library/nginx".parse().expect("repo"),
                &"1.27".parse().expect("tag"),
            )
            .await
            .expect("cached");
    assert_eq!(cached.as_str(), w.nginx);
    let metrics = w.s.metrics().await;
    assert!(
        metrics.contains(r#"berth_admission_reviews_total{webhook="mutate",result="patched"} 9"#),
        "{metrics}"
    );
    let _ = (&w.up, &w.side, &w.key);
}

/// UPDATE of a workload keeps oldObject's digest while the tag is unchanged (an apply
/// must not roll out whatever the tag names now), pins a changed tag afresh, and judges
/// only changed containers.
#[tokio::test]
async fn update_keeps_the_old_digest_while_the_tag_is_unchanged() {
    let w = world(Setup::default(), all_rules(Mode::Enforce)).await;
    let (old, gvk, at) = object(
        "Deployment",
        &pod_spec(&[(
            "containers",
            "app",
            &format!("{HOST}/team-a/app:1.0@{}", w.app),
        )]),
    );
    // The tag moves in Berth.
    let (_, moved, _) =
        w.s.push_image_as(&Cred::Anonymous, "team-a/app", &["1.0"], b"app 1.0 rebuilt")
            .await;
    assert_ne!(moved, w.app);
    let (new, _, _) = object(
        "Deployment",
        &pod_spec(&[("containers", "app", "registry.example.com/team-a/app:1.0")]),
    );
    let resp = w
        .hook
        .review("mutate", &request(gvk, "UPDATE", &new, Some(&old)))
        .await;
    let patched = apply_and_validate(&[(new.clone(), patch_of(&resp))]);
    assert_eq!(
        patched[0]
            .pointer(&format!("{at}/containers/0/image"))
            .expect("image"),
        &json!(format!("{HOST}/team-a/app:1.0@{}", w.app))
    );
    // A Pod created now gets the digest the tag names now.
    let (pod, pgvk, _) = object(
        "Pod",
        &pod_spec(&[("containers", "app", "registry.example.com/team-a/app:1.0")]),
    );
    let resp = w
        .hook
        .review("mutate", &request(pgvk, "CREATE", &pod, None))
        .await;
    let patched = apply_and_validate(&[(pod, patch_of(&resp))]);
    assert_eq!(
        patched[0]["spec"]["containers"][0]["image"],
        json!(format!("{HOST}/team-a/app:1.0@{moved}"))
    );
    // Unsigned (the rebuilt image has no signature): a new Pod is refused...
    let (pod, pgvk, _) = object(
        "Pod",
        &pod_spec(&[(
            "containers",
            "app",
            &format!("{HOST}/team-a/app:1.0@{moved}"),
        )]),
    );
    let resp = w
        .hook
        .review("validate", &request(pgvk, "CREATE", &pod, None))
        .await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains("\"app\"") && msg.contains(&moved) && msg.contains("\"signed\""),
        "{msg}"
    );
    assert_eq!(resp["status"]["code"], 403);
    // ...but an UPDATE that leaves that container's image alone is not judged on it.
    let mut relabelled = pod.clone();
    relabelled["metadata"]["labels"] = json!({"x": "y"});
    let resp = w
        .hook
        .review(
            "validate",
            &request(pgvk, "UPDATE", &relabelled, Some(&pod)),
        )
        .await;
    assert_eq!(resp["allowed"], true, "{resp}");
}

/// `dryRun` changes nothing: no upstream is asked (nothing lands in the cache), the
/// answer comes from what Berth holds.
#[tokio::test]
async fn dry_run_asks_no_upstream() {
    let w = world(Setup::default(), all_rules(Mode::Enforce)).await;
    let (pod, gvk, _) = object("Pod", &pod_spec(&[("containers", "web", "nginx:1.28")]));
    let mut req = request(gvk, "CREATE", &pod, None);
    req["request"]["dryRun"] = json!(true);
    let resp = w.hook.review("mutate", &req).await;
    let patched = apply_and_validate(&[(pod.clone(), patch_of(&resp))]);
    // Mirrored (a pure rewrite), not pinned: the tag is not in Berth and no upstream was asked.
    assert_eq!(
        patched[0]["spec"]["containers"][0]["image"],
        json!(format!("{HOST}/docker.io/library/nginx:1.28"))
    );
    assert!(
        resp["warnings"].to_string().contains("not in Berth"),
        "{resp}"
    );
    let r =
        w.s.registry
            .resolve(
                &"docker.io/library/nginx".parse().expect("repo"),
                &"1.28".parse().expect("tag"),
            )
            .await;
    assert!(r.is_err(), "a dry run filled the cache");
    // The same request for real pins through the upstream.
    let resp = w
        .hook
        .review("mutate", &request(gvk, "CREATE", &pod, None))
        .await;
    let patched = apply_and_validate(&[(pod, patch_of(&resp))]);
    assert!(
        patched[0]["spec"]["containers"][0]["image"]
            .as_str()
            .expect("image")
            .contains("@sha256:")
    );
}

/// A host that is neither Berth nor a configured upstream is never asked.
#[tokio::test]
async fn arbitrary_hosts_are_never_asked() {
    let w = world(Setup::default(), all_rules(Mode::Enforce)).await;
    // The upstream's own address, named directly in a pod spec: not a configured upstream name.
    let host = w.up.base.trim_start_matches("http://").to_owned();
    let image = format!("{host}/library/nginx:1.27");
    let before = w.up.metrics().await;
    let (pod, gvk, _) = object("Pod", &pod_spec(&[("containers", "web", &image)]));
    let resp = w
        .hook
        .review("mutate", &request(gvk, "CREATE", &pod, None))
        .await;
    let patched = apply_and_validate(&[(pod, patch_of(&resp))]);
    assert_eq!(patched[0]["spec"]["containers"][0]["image"], json!(image));
    assert!(
        resp["warnings"]
            .to_string()
            .contains("neither Berth nor a configured upstream"),
        "{resp}"
    );
    let manifests = |m: &str| {
        common::metric::<u64>(
            m,
            r#"berth_http_requests_total{route="manifest",method="GET",status="200"}"#,
        )
    };
    assert_eq!(manifests(&before), manifests(&w.up.metrics().await));
    // And the validating webhook refuses its registry.
    let resp = w
        .hook
        .review("validate", &request(gvk, "CREATE", &patched[0], None))
        .await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .expect("msg")
            .contains("is not allowed")
    );
}

/// `kubectl debug`: the `pods/ephemeralcontainers` subresource. Only the new ephemeral
/// container is touched; a running Pod's pull secrets and other containers stay.
#[tokio::test]
async fn ephemeral_containers() {
    let w = world(Setup::default(), all_rules(Mode::Enforce)).await;
    let (old, gvk, _) = object(
        "Pod",
        &pod_spec(&[(
            "containers",
            "app",
            &format!("{HOST}/team-a/app:1.0@{}", w.app),
        )]),
    );
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "registry.example.com/team-a/side:2.0", "targetContainerName": "app"}]);
    let mut req = request(gvk, "UPDATE", &new, Some(&old));
    req["request"]["subResource"] = json!("ephemeralcontainers");
    req["request"]["resource"]["resource"] = json!("pods");
    let resp = w.hook.review("mutate", &req).await;
    let patch = patch_of(&resp).expect("patch");
    let patched = apply_and_validate(&[(new.clone(), Some(patch.clone()))]);
    let mut want = new.clone();
    want["spec"]["ephemeralContainers"][0]["image"] =
        json!(format!("{HOST}/team-a/side:2.0@{}", w.side));
    want["spec"]["ephemeralContainers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    assert_eq!(patched[0], want, "patch {patch}");
    // The validating webhook judges the ephemeral container: an unpinned :latest is refused.
    new["spec"]["ephemeralContainers"][0]["image"] = json!("busybox");
    let mut req = request(gvk, "UPDATE", &new, Some(&old));
    req["request"]["subResource"] = json!("ephemeralcontainers");
    let resp = w.hook.review("validate", &req).await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().expect("msg");
    assert!(
        msg.contains("\"debugger\"") && msg.contains("\"busybox\"") && msg.contains("no-latest"),
        "{msg}"
    );
}

/// Each rule in each mode: enforce acts (patch or denial), audit only warns, dry-run and
/// off leave the answer alone (dry-run is counted).
#[tokio::test]
async fn each_rule_in_each_mode() {
    let w = world(Setup::default(), vec![]).await;
    let spec = pod_spec(&[
        ("containers", "a", "nginx:1.27"),
        ("containers", "b", "evil.example.net/x:latest"),
        ("containers", "c", &format!("{HOST}/team-a/app:1.0")),
    ]);
    let (pod, gvk, _) = object("Pod", &spec);
    for kind in [
        RuleKind::RefuseLatest,
        RuleKind::AllowedRegistries,
        RuleKind::Signature,
        RuleKind::Mirror,
        RuleKind::Pin,
        RuleKind::PullPolicy,
        RuleKind::PullSecret,
    ] {
        let validating = matches!(
            kind,
            RuleKind::RefuseLatest | RuleKind::AllowedRegistries | RuleKind::Signature
        );
        let webhook = if validating { "validate" } else { "mutate" };
        for mode in [Mode::Off, Mode::DryRun, Mode::Audit, Mode::Enforce] {
            w.s.registry
                .set_admission(vec![rule("r", kind, mode)], settings())
                .expect("rules");
            let resp = w
                .hook
                .review(webhook, &request(gvk, "CREATE", &pod, None))
                .await;
            let what = format!("{kind:?} {mode:?}: {resp}");
            let warned = resp.get("warnings").is_some();
            let patched = resp.get("patch").is_some();
            let denied = resp["allowed"] == false;
            match mode {
                Mode::Off | Mode::DryRun => assert!(!warned && !patched && !denied, "{what}"),
                Mode::Audit => assert!(warned && !patched && !denied, "{what}"),
                Mode::Enforce if validating => assert!(denied && !patched, "{what}"),
                Mode::Enforce => {
                    assert!(patched && !denied, "{what}");
                    apply_and_validate(&[(pod.clone(), patch_of(&resp))]);
                }
            }
        }
        let metrics = w.s.metrics().await;
        let line = format!(
            r#"berth_admission_rule_hits_total{{kind="{}",mode="dry-run","#,
            kind.as_str()
        );
        assert!(
            metrics.contains(&line),
            "{kind:?}: no dry-run count in\n{metrics}"
        );
    }
}

/// Bad input: a 400 or a well-formed answer, never a 500 or a hang.
#[tokio::test]
async fn bad_input() {
    let w = world(Setup::default(), all_rules(Mode::Enforce)).await;
    let (pod, gvk, _) = object("Pod", &three());
    let good = request(gvk, "CREATE", &pod, None);
    let mut no_uid = good.clone();
    no_uid["request"]
        .as_object_mut()
        .expect("req")
        .remove("uid");
    let mut old_version = good.clone();
    old_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    for (what, body) in [
        ("not JSON", b"{\"apiVersion\":".to_vec()),
        ("empty", Vec::new()),
        ("no uid", serde_json::to_vec(&no_uid).expect("json")),
        ("v1beta1", serde_json::to_vec(&old_version).expect("json")),
        ("oversize", vec![b' '; 8 << 20]),
    ] {
        for webhook in ["validate", "mutate"] {
            let (status, text) = w.hook.post(webhook, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what} {webhook}: {text}");
        }
    }
    // An unknown kind is allowed untouched.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"image": "nginx"}});
    let resp = w
        .hook
        .review(
            "mutate",
            &request(("", "v1", "ConfigMap"), "CREATE", &cm, None),
        )
        .await;
    assert!(resp["allowed"] == true && resp.get("patch").is_none());
    // Thousands of containers: refused with a reason.
    let many: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("c{i}"), format!("img{i}:1")))
        .collect();
    let refs: Vec<(&str, &str, &str)> = many
        .iter()
        .map(|(n, i)| ("containers", n.as_str(), i.as_str()))
        .collect();
    let (big, gvk, _) = object("Pod", &pod_spec(&refs));
    for webhook in ["validate", "mutate"] {
        let resp = w
            .hook
            .review(webhook, &request(gvk, "CREATE", &big, None))
            .await;
        assert_eq!(resp["allowed"], false, "{webhook}");
    }
    // A reference that does not parse: refused naming it; the mutating webhook leaves it.
    let (bad, gvk, _) = object("Pod", &pod_spec(&[("containers", "x", "UPPER/Case:??")]));
    let resp = w
        .hook
        .review("validate", &request(gvk, "CREATE", &bad, None))
        .await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .expect("msg")
            .contains("does not parse")
    );
    let resp = w
        .hook
        .review("mutate", &request(gvk, "CREATE", &bad, None))
        .await;
    assert_eq!(resp["allowed"], true);
    // Garbage where containers should be.
    let junk = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j"}, "spec": {"containers": "no", "initContainers": [null, 3, {"image": 7}]}});
    for webhook in ["validate", "mutate"] {
        let _ = w
            .hook
            .review(webhook, &request(("", "v1", "Pod"), "CREATE", &junk, None))
            .await;
    }
    let metrics = w.s.metrics().await;
    assert!(
        metrics.contains(r#"berth_admission_reviews_total{webhook="validate",result="invalid"} 5"#),
        "{metrics}"
    );
}

/// Two replicas over PostgreSQL: rules set through one's API reach the other, and both
/// answer the same review alike.
#[tokio::test]
async fn two_replicas_agree() {
    let w = world(
        Setup {
            postgres: true,
            ..Setup::default()
        },
        vec![],
    )
    .await;
    let other = common::start(Setup {
        stores: Some(w.s.stores()),
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        upstreams: vec![UpstreamSettings {
            client: UpstreamConfig {
                timeout: Duration::from_secs(2),
                ..UpstreamConfig::new("docker.io", &w.up.base)
            },
            tag_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            repositories: vec![],
            cache: true,
        }],
        ..Setup::default()
    })
    .await;
    other.registry.set_policy(trust(&w.key));
    other
        .registry
        .set_admission(vec![], settings())
        .expect("settings");
    let hook2 = hook(&other).await;
    // Rules through the second replica's API, as an administrator; the first re-reads
    // them as `berth serve` does every 10 s.
    common::add_users(other.access(), &[("admin", true)]).await;
    let admin = Cred::user("admin");
    let r = other
        .request_as(reqwest::Method::PUT, "/api/v1/admission", &admin)
        .json(&json!({"rules": all_rules(Mode::Enforce)}))
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap_or_default()
    );
    w.s.registry.reload_admission().await.expect("reload");
    for kind in KINDS {
        let (obj, gvk, _) = object(kind, &three());
        let req = request(gvk, "CREATE", &obj, None);
        for webhook in ["mutate", "validate"] {
            let a = w.hook.review(webhook, &req).await;
            let b = hook2.review(webhook, &req).await;
            assert_eq!(a, b, "{kind} {webhook}");
        }
    }
    let got: Value = other
        .request_as(reqwest::Method::GET, "/api/v1/admission", &admin)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["managed"]["rules"].as_array().map(Vec::len), Some(7));
    // A bad rule changes nothing; anonymous callers change nothing.
    let bad = json!({"rules": [{"name": "x", "namespaces": ["*"], "kind": "pull-policy", "pull_policy": "Sometimes"}]});
    let r = other
        .request_as(reqwest::Method::PUT, "/api/v1/admission", &admin)
        .json(&bad)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = other
        .request_as(reqwest::Method::PUT, "/api/v1/admission", &Cred::Anonymous)
        .json(&json!({"rules": []}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.registry.managed_admission().rules.len(), 7);
    let _ = sha256(b"");
}

/// The `vulnerability` rule judges a pod's images by the findings and thresholds of the
/// vulnerability rules in force on pulls of their repositories: a Debian image with a
/// high finding (the tracker's CVE-2023-4911 in glibc) is refused where the pod is
/// created, naming container, image, rule and finding, while the pull rule only audits
/// (nodes keep pulling); an image without findings is admitted; in audit the refusal is
/// a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vulnerable_images_are_refused_where_pods_are_created() {
    use berth_catalog::fuzzing::{Item, tar};
    use berth_registry::catalog::CatalogSettings;
    use berth_registry::policy::{Pending, RuleSpec, UnknownSeverity, VulnRuleSpec};

    let s = common::start(Setup {
        catalog: Some(CatalogSettings {
            referrers: false,
            ..CatalogSettings::default()
        }),
        ..Setup::default()
    })
    .await;
    let os = b"ID=debian\nVERSION_ID=\"12\"\n";
    let vulnerable = tar(&[
        Item::File("etc/os-release", os),
        Item::File(
            "var/lib/dpkg/status",
            b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u1)\nVersion: 2.36-9+deb12u1\n",
        ),
    ]);
    let clean = tar(&[Item::File("etc/os-release", os)]);
    let (_, bad, _) = s
        .push_image_as(&Cred::Anonymous, "team-a/app", &["1.0"], &vulnerable)
        .await;
    let (_, good, _) = s
        .push_image_as(&Cred::Anonymous, "team-a/clean", &["1.0"], &clean)
        .await;
    for (repo, d) in [("team-a/app", &bad), ("team-a/clean", &good)] {
        let repo: berth_oci::RepoName = repo.parse().expect("repo");
        let d: berth_oci::Digest = d.parse().expect("digest");
        let start = std::time::Instant::now();
        while s
            .registry
            .catalog_of(&repo, &berth_oci::Reference::Digest(d.clone()), None)
            .await
            .expect("catalog")
            .is_none()
        {
            assert!(start.elapsed() < Duration::from_secs(20), "not cataloged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let fixture = |name: &str| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../berth-vuln/tests/fixtures")
            .join(name);
        berth_vuln::parse(name, &std::fs::read(&p).expect("fixture"))
    };
    s.registry
        .import_advisories(vec![fixture("debian.json")])
        .await
        .expect("import");
    s.registry.set_policy(
        Policy::new(PolicySpec {
            trust: Vec::new(),
            rules: vec![RuleSpec {
                name: "no-high".into(),
                repositories: vec!["team-a/*".into()],
                kind: "vulnerability".into(),
                mode: Mode::Audit,
                pending: Pending::Refuse,
                push_bypass: false,
                vulnerability: Some(VulnRuleSpec {
                    severity: berth_vuln::Severity::High,
                    fixed_only: false,
                    unknown: UnknownSeverity::Ignore,
                    allow: Vec::new(),
                }),
            }],
        })
        .expect("policy"),
    );
    let hook = hook(&s).await;
    let pod = |image: &str| {
        let spec = pod_spec(&[("containers", "web", image)]);
        let (pod, gvk, _) = object("Pod", &spec);
        request(gvk, "CREATE", &pod, None)
    };
    s.registry
        .set_admission(
            vec![rule("vulns", RuleKind::Vulnerability, Mode::Enforce)],
            settings(),
        )
        .expect("rules");
    let resp = hook
        .review("validate", &pod(&format!("{HOST}/team-a/app:1.0")))
        .await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().expect("message");
    for part in [
        "\"web\"",
        "team-a/app:1.0",
        "\"vulns\"",
        "no-high",
        "CVE-2023-4911",
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    let resp = hook
        .review("validate", &pod(&format!("{HOST}/team-a/clean:1.0")))
        .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    // The pull rule only audits: the node can still pull the image the pod was refused.
    let r = s
        .request_as(
            reqwest::Method::GET,
            "/v2/team-a/app/manifests/1.0",
            &Cred::Anonymous,
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);

    s.registry
        .set_admission(
            vec![rule("vulns", RuleKind::Vulnerability, Mode::Audit)],
            settings(),
        )
        .expect("rules");
    let resp = hook
        .review("validate", &pod(&format!("{HOST}/team-a/app:1.0")))
        .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let warnings = resp["warnings"].to_string();
    assert!(warnings.contains("CVE-2023-4911"), "{warnings}");
}

/// The admission audit rows of one server, read through `GET /api/v1/audit` as an admin
/// of a second replica over the same stores.
async fn admission_rows(reader: &Server, admin: &Cred) -> Vec<Value> {
    let r = reader
        .request_as(
            reqwest::Method::GET,
            "/api/v1/audit?action=admission&limit=1000",
            admin,
        )
        .send()
        .await
        .expect("audit");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// Refusals, changes and audit-mode warnings are in the audit log with namespace,
/// kind/name, container, image, rule, mode and decision; allowed-and-unchanged reviews
/// and repeats within a minute write nothing more.
#[tokio::test]
async fn decisions_are_in_the_audit_log() {
    let w = world(
        Setup {
            postgres: true,
            ..Setup::default()
        },
        vec![
            rule("no-latest", RuleKind::RefuseLatest, Mode::Enforce),
            rule("registries", RuleKind::AllowedRegistries, Mode::Audit),
            rule("pin", RuleKind::Pin, Mode::Enforce),
            rule("pull-policy", RuleKind::PullPolicy, Mode::Audit),
            rule("dry", RuleKind::PullSecret, Mode::DryRun),
        ],
    )
    .await;
    let reader = common::start(Setup {
        stores: Some(w.s.stores()),
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        ..Setup::default()
    })
    .await;
    common::add_users(reader.access(), &[("admin", true)]).await;
    let admin = Cred::user("admin");
    let spec = pod_spec(&[
        ("containers", "a", "nginx:1.27"),
        ("containers", "b", "evil.example.net/x:latest"),
        ("containers", "c", &format!("{HOST}/team-a/app:1.0")),
    ]);
    let (pod, gvk, _) = object("Pod", &spec);
    let create = request(gvk, "CREATE", &pod, None);
    let m = w.hook.review("mutate", &create).await;
    assert!(m.get("patch").is_some(), "{m}");
    let v = w.hook.review("validate", &create).await;
    assert_eq!(v["allowed"], false, "{v}");
    // Allowed and unchanged: a pinned image of Berth's own, no rule has anything to say.
    let quiet_spec = pod_spec(&[(
        "containers",
        "q",
        &format!("{HOST}/team-a/app:1.0@{}", w.app),
    )]);
    let (mut quiet, _, _) = object("Pod", &quiet_spec);
    quiet["metadata"]["name"] = json!("quiet");
    quiet["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    let mut quiet_req = request(gvk, "CREATE", &quiet, None);
    quiet_req["request"]["uid"] = json!("uid-quiet");
    for webhook in ["mutate", "validate"] {
        let r = w.hook.review(webhook, &quiet_req).await;
        assert!(
            r["allowed"] == true && r.get("patch").is_none() && r.get("warnings").is_none(),
            "{r}"
        );
    }
    // Expected: pin of a and c; pull-policy warnings for a, b, c; the refusal of b and
    // the registries warning for b. The dry-run rule writes nothing.
    let expected = 7;
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = admission_rows(&reader, &admin).await;
        if rows.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same reviews again (a controller retrying): counted, not written.
    w.hook.review("mutate", &create).await;
    w.hook.review("validate", &create).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = admission_rows(&reader, &admin).await;
    assert_eq!(rows.len(), expected, "{rows:#?}");
    assert_eq!(again.len(), expected, "repeats were written: {again:#?}");
    let metrics = w.s.metrics().await;
    assert!(
        metrics.contains("berth_admission_audit_repeats_total 7"),
        "{metrics}"
    );
    let detail = |r: &Value| -> Value {
        serde_json::from_str(r["detail"].as_str().expect("detail")).expect("detail JSON")
    };
    let find = |action: &str, container: &str, rule: &str| -> (Value, Value) {
        let r = rows
            .iter()
            .find(|r| {
                let d = detail(r);
                r["action"] == action && d["container"] == container && d["rule"] == rule
            })
            .unwrap_or_else(|| panic!("no {action} {container} {rule} in {rows:#?}"));
        (r.clone(), detail(r))
    };
    for r in &rows {
        assert_eq!(
            r["actor"],
            "k8s:system:serviceaccount:kube-system:deployment-controller"
        );
        assert_eq!(r["target"], "team-a/Pod/web", "nothing of the quiet pod");
        assert_ne!(detail(r)["rule"], "dry");
    }
    let (deny, d) = find("admission.deny", "b", "no-latest");
    assert_eq!(deny["outcome"], "denied");
    assert_eq!(d["namespace"], "team-a");
    assert_eq!(d["kind"], "Pod");
    assert_eq!(d["name"], "web");
    assert_eq!(d["image"], "evil.example.net/x:latest");
    assert_eq!(d["rule_kind"], "refuse-latest");
    assert_eq!(d["mode"], "enforce");
    assert_eq!(d["decision"], "denied");
    assert_eq!(d["webhook"], "validate");
    let (warn, d) = find("admission.warn", "b", "registries");
    assert_eq!(warn["outcome"], "ok");
    assert_eq!(d["mode"], "audit");
    assert_eq!(d["decision"], "warned");
    let (pin, d) = find("admission.mutate", "c", "pin");
    assert_eq!(pin["repository"], "team-a/app");
    assert_eq!(pin["tenant"], "team-a");
    assert_eq!(d["what"], format!("pin to {}", w.app));
    assert_eq!(d["mode"], "enforce");
    assert_eq!(d["decision"], "patched");
    let (_, d) = find("admission.mutate", "a", "pin");
    assert_eq!(d["image"], "nginx:1.27");
    for c in ["a", "b", "c"] {
        let (_, d) = find("admission.warn", c, "pull-policy");
        assert_eq!(d["what"], "imagePullPolicy IfNotPresent");
    }
}

/// The certificate `berth k8s webhook-cert` makes: its SANs are the webhook Service's
/// names, it is valid from about now for the days asked, and a client trusting only the
/// made CA accepts it under those names and refuses it under any other (and a client
/// trusting another CA refuses it).
#[tokio::test]
async fn the_made_webhook_certificate_is_accepted_by_its_ca_only() {
    let s = common::start(Setup::default()).await;
    s.registry
        .set_admission(vec![], settings())
        .expect("settings");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = webhook_pki(dir.path(), 90);
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    for san in [
        "DNS:berth-webhook.berth.svc",
        "DNS:berth-webhook.berth.svc.cluster.local",
        "DNS:berth-webhook.berth",
        "DNS:berth-webhook",
    ] {
        assert!(text.contains(san), "{san} missing:\n{text}");
    }
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    // Valid now, and not after 90 days (a day's margin either way for the clock).
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-checkend", "0", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "expired already");
    for (secs, valid) in [(89 * 86_400, true), (91 * 86_400, false)] {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
            .arg(&cert)
            .output()
            .expect("openssl");
        assert_eq!(out.status.success(), valid, "checkend {secs}");
    }
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_server::run_admission(
        listener,
        s.state.clone(),
        Some(TlsSettings {
            cert,
            key,
            reload_interval: Duration::from_secs(10),
        }),
        async move {
            let _ = stopped.await;
        },
    ));
    for host in [SVC, "berth-webhook.berth.svc.cluster.local"] {
        let r = client_for(&ca, host, addr)
            .get(format!("https://{host}:{}/healthz", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(r.status(), StatusCode::OK, "{host}");
    }
    let wrong = "other-webhook.berth.svc";
    let r = client_for(&ca, wrong, addr)
        .get(format!("https://{wrong}:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(r.is_err(), "a name not in the certificate was accepted");
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = webhook_pki(other.path(), 90);
    let r = client_for(&other_ca, SVC, addr)
        .get(format!("https://{SVC}:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(r.is_err(), "a client trusting another CA accepted it");
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Pins answer from memory: reviews naming the same tag for several cache TTLs never ask
/// the metadata store on their own path (the tag is read again in the background before
/// it expires), where expiry used to send a review to the store every TTL.
#[tokio::test]
async fn pinning_a_hot_tag_never_waits_for_the_metadata_store() {
    let w = world(
        Setup {
            registry: berth_registry::RegistryConfig {
                cache_ttl: Duration::from_secs(1),
                ..Default::default()
            },
            ..Setup::default()
        },
        vec![rule("pin", RuleKind::Pin, Mode::Enforce)],
    )
    .await;
    let spec = pod_spec(&[("containers", "app", &format!("{HOST}/team-a/app:1.0"))]);
    let (pod, gvk, _) = object("Pod", &spec);
    let review = request(gvk, "CREATE", &pod, None);
    // Once, so the tag is cached whatever the setup left.
    w.hook.review("mutate", &review).await;
    let before = w.s.metrics().await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let r = w.hook.review("mutate", &review).await;
        let patch = patch_of(&r).expect("a patch");
        assert_eq!(
            patch[0]["value"],
            format!("{HOST}/team-a/app:1.0@{}", w.app),
            "{r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = w.s.metrics().await;
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    let misses = delta("berth_tag_cache_misses_total");
    let refreshes = delta("berth_tag_cache_refreshes_total");
    // Four TTLs of reviews: without the refresh, about four misses; with it, none (one
    // if a refresh took longer than half the TTL on a loaded machine).
    assert!(misses <= 1, "{misses} misses, {refreshes} refreshes");
    assert!(refreshes >= 3, "{misses} misses, {refreshes} refreshes");
}
