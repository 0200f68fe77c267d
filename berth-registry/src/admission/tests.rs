use super::*;
use serde_json::json;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn rule(name: &str, kind: RuleKind, mode: Mode) -> AdmissionRuleSpec {
    AdmissionRuleSpec {
        name: name.into(),
        namespaces: vec!["team-*".into()],
        kind,
        mode,
        registries: if kind == RuleKind::AllowedRegistries {
            vec!["registry.example.com".into()]
        } else {
            vec![]
        },
        templates: false,
        pull_policy: (kind == RuleKind::PullPolicy).then(|| "IfNotPresent".into()),
        secret: (kind == RuleKind::PullSecret).then(|| "team-a-pull".into()),
    }
}

fn settings() -> AdmissionSettings {
    AdmissionSettings {
        registry: Some("registry.example.com".into()),
        ..AdmissionSettings::default()
    }
}

fn review(kind: (&str, &str), op: &str, object: Value, old: Option<Value>) -> Review {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
            "namespace": "team-a", "operation": op, "object": object, "oldObject": old}
    });
    parse_review(&serde_json::to_vec(&body).expect("test value")).expect("test value")
}

fn pod(images: &[&str]) -> Value {
    let cs: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": cs}})
}

fn held(repo: &str, digest: Option<&str>) -> ImageFacts {
    ImageFacts {
        location: Some(ImageLocation {
            repo: repo.parse().expect("test value"),
            at_berth: repo.starts_with("team-"),
        }),
        digest: digest.map(|d| d.parse().expect("test value")),
        ..ImageFacts::default()
    }
}

fn run(specs: Vec<AdmissionRuleSpec>, r: &Review, webhook: Webhook, facts: &Facts) -> Decision {
    let rules = AdmissionRules::new(specs).expect("test value");
    let acting = rules.acting_for(r, webhook);
    evaluate(r, webhook, &acting, facts, &settings())
}

#[test]
fn refuse_latest_in_each_mode() {
    let r = review(("", "Pod"), "CREATE", pod(&["nginx", "nginx:1.27"]), None);
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(!d.allowed);
    let m = d.message.expect("test value");
    assert!(
        m.contains("\"c0\"") && m.contains("\"nginx\"") && m.contains("\"nl\""),
        "{m}"
    );
    assert!(!m.contains("c1"), "{m}");
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Audit)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(d.allowed && d.warnings.len() == 1 && d.warnings[0].contains("would refuse"));
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::DryRun)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(d.allowed && d.warnings.is_empty());
    assert_eq!(
        d.counts,
        vec![(RuleKind::RefuseLatest, Mode::DryRun, "would_deny")]
    );
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Off)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(d.allowed && d.counts.is_empty());
}

#[test]
fn other_namespaces_and_kinds_are_left_alone() {
    let mut r = review(("", "Pod"), "CREATE", pod(&["nginx"]), None);
    r.namespace = "kube-system".into();
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(d.allowed);
    let r = review(("", "ConfigMap"), "CREATE", json!({"data": {}}), None);
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(d.allowed);
}

#[test]
fn mirror_and_pin_patch_the_image() {
    let r = review(("", "Pod"), "CREATE", pod(&["nginx:1.27"]), None);
    let mut facts = Facts::new();
    facts.insert(
        "nginx:1.27".into(),
        held("docker.io/library/nginx", Some(D1)),
    );
    let d = run(
        vec![
            rule("m", RuleKind::Mirror, Mode::Enforce),
            rule("p", RuleKind::Pin, Mode::Enforce),
        ],
        &r,
        Webhook::Mutate,
        &facts,
    );
    assert_eq!(
        d.patch,
        vec![json!({"op": "replace", "path": "/spec/containers/0/image",
            "value": format!("registry.example.com/docker.io/library/nginx:1.27@{D1}")})]
    );
    // Audit: no patch, a warning per change.
    let d = run(
        vec![
            rule("m", RuleKind::Mirror, Mode::Audit),
            rule("p", RuleKind::Pin, Mode::Enforce),
        ],
        &r,
        Webhook::Mutate,
        &facts,
    );
    assert_eq!(
        d.patch[0]["value"],
        json!(format!("docker.io/library/nginx:1.27@{D1}"))
    );
    assert!(d.warnings.iter().any(|w| w.contains("mirror")));
}

#[test]
fn templates_pin_only_when_asked_and_keep_the_old_digest_on_update() {
    let dep = |image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
    };
    let mut facts = Facts::new();
    facts.insert("team-a/app:1".into(), held("team-a/app", Some(D2)));
    let mut pin = rule("p", RuleKind::Pin, Mode::Enforce);
    let r = review(("apps", "Deployment"), "CREATE", dep("team-a/app:1"), None);
    assert!(
        run(vec![pin.clone()], &r, Webhook::Mutate, &facts)
            .patch
            .is_empty()
    );
    pin.templates = true;
    let d = run(vec![pin.clone()], &r, Webhook::Mutate, &facts);
    assert_eq!(
        d.patch[0]["path"],
        json!("/spec/template/spec/containers/0/image")
    );
    assert_eq!(
        d.patch[0]["value"],
        json!(format!("docker.io/team-a/app:1@{D2}"))
    );
    // UPDATE with the same tag: the old digest stays although the tag moved to D2.
    let old = dep(&format!("docker.io/team-a/app:1@{D1}"));
    let r = review(
        ("apps", "Deployment"),
        "UPDATE",
        dep("team-a/app:1"),
        Some(old),
    );
    let d = run(vec![pin.clone()], &r, Webhook::Mutate, &facts);
    assert_eq!(
        d.patch[0]["value"],
        json!(format!("docker.io/team-a/app:1@{D1}"))
    );
    // A new tag is pinned afresh.
    facts.insert("team-a/app:2".into(), held("team-a/app", Some(D2)));
    let old = dep(&format!("docker.io/team-a/app:1@{D1}"));
    let r = review(
        ("apps", "Deployment"),
        "UPDATE",
        dep("team-a/app:2"),
        Some(old),
    );
    let d = run(vec![pin], &r, Webhook::Mutate, &facts);
    assert_eq!(
        d.patch[0]["value"],
        json!(format!("docker.io/team-a/app:2@{D2}"))
    );
}

#[test]
fn pull_policy_and_secret() {
    let r = review(("", "Pod"), "CREATE", pod(&["a:1", "b:1"]), None);
    let d = run(
        vec![
            rule("pp", RuleKind::PullPolicy, Mode::Enforce),
            rule("ps", RuleKind::PullSecret, Mode::Enforce),
        ],
        &r,
        Webhook::Mutate,
        &Facts::new(),
    );
    assert_eq!(d.patch.len(), 3);
    assert_eq!(
        d.patch[2],
        json!({"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "team-a-pull"}]})
    );
    // A Pod UPDATE never touches immutable fields.
    let r = review(("", "Pod"), "UPDATE", pod(&["a:1"]), Some(pod(&["a:1"])));
    let d = run(
        vec![
            rule("pp", RuleKind::PullPolicy, Mode::Enforce),
            rule("ps", RuleKind::PullSecret, Mode::Enforce),
        ],
        &r,
        Webhook::Mutate,
        &Facts::new(),
    );
    assert!(d.patch.is_empty(), "{:?}", d.patch);
}

#[test]
fn unchanged_images_on_update_are_not_judged() {
    let r = review(
        ("", "Pod"),
        "UPDATE",
        pod(&["nginx"]),
        Some(pod(&["nginx"])),
    );
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(d.allowed);
}

#[test]
fn signature_rule_reads_the_verdict() {
    let r = review(("", "Pod"), "CREATE", pod(&["team-a/app:1"]), None);
    let mut f = held("team-a/app", Some(D1));
    f.signature = Some((Outcome::Unsigned, "no signature".into()));
    let facts: Facts = [("team-a/app:1".to_string(), f.clone())].into();
    let d = run(
        vec![rule("s", RuleKind::Signature, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &facts,
    );
    assert!(
        !d.allowed
            && d.message
                .expect("test value")
                .contains("not signed: no signature")
    );
    f.signature = Some((Outcome::Signed, "ci/release".into()));
    let facts: Facts = [("team-a/app:1".to_string(), f)].into();
    assert!(
        run(
            vec![rule("s", RuleKind::Signature, Mode::Enforce)],
            &r,
            Webhook::Validate,
            &facts
        )
        .allowed
    );
}

#[test]
fn bad_input() {
    for body in [&b"{"[..], b"[]", b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{}}", b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"x\"}}"] {
        assert!(parse_review(body).is_err());
    }
    let many: Vec<String> = (0..MAX_CONTAINERS + 1)
        .map(|i| format!("img{i}:1"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = review(("", "Pod"), "CREATE", pod(&refs), None);
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(!d.allowed && d.message.expect("test value").contains("containers"));
    let r = review(("", "Pod"), "CREATE", pod(&["Not A Ref"]), None);
    let d = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
    assert!(!d.allowed && d.message.expect("test value").contains("does not parse"));
    // A spec whose containers are not objects, or images not strings: no panic.
    let r = review(
        ("", "Pod"),
        "CREATE",
        json!({"spec": {"containers": [1, {"image": 3}]}}),
        None,
    );
    let _ = run(
        vec![rule("nl", RuleKind::RefuseLatest, Mode::Enforce)],
        &r,
        Webhook::Validate,
        &Facts::new(),
    );
}

#[test]
fn rule_specs_are_checked() {
    let mut r = rule("pp", RuleKind::PullPolicy, Mode::Enforce);
    r.pull_policy = Some("Sometimes".into());
    assert!(AdmissionRules::new(vec![r]).is_err());
    let mut r = rule("ps", RuleKind::PullSecret, Mode::Enforce);
    r.secret = Some("Bad_Name".into());
    assert!(AdmissionRules::new(vec![r]).is_err());
    let mut r = rule("ar", RuleKind::AllowedRegistries, Mode::Enforce);
    r.registries.clear();
    assert!(AdmissionRules::new(vec![r]).is_err());
    let a = rule("x", RuleKind::Pin, Mode::Enforce);
    assert!(AdmissionRules::new(vec![a.clone(), a]).is_err());
}

#[test]
fn a_pin_that_cannot_resolve_warns_only_where_the_rule_speaks() {
    let r = review(("", "Pod"), "CREATE", pod(&["ghcr.io/x/y:1"]), None);
    let facts: Facts = [(
        "ghcr.io/x/y:1".to_string(),
        ImageFacts {
            unresolved: Some("ghcr.io is neither Berth nor a configured upstream".into()),
            ..ImageFacts::default()
        },
    )]
    .into();
    for (mode, warned) in [
        (Mode::Enforce, true),
        (Mode::Audit, true),
        (Mode::DryRun, false),
    ] {
        let d = run(
            vec![rule("p", RuleKind::Pin, mode)],
            &r,
            Webhook::Mutate,
            &facts,
        );
        assert!(d.patch.is_empty(), "{mode:?}");
        assert_eq!(!d.warnings.is_empty(), warned, "{mode:?}: {:?}", d.warnings);
    }
}
