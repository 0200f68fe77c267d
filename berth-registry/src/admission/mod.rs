//! Kubernetes admission: `AdmissionReview` v1 in, a decision and a JSONPatch out,
//! answered from what Berth already holds (tags, signature verdicts), never from an
//! arbitrary host a pod spec names.
//!
//! Two webhooks. The **mutating** one applies the rules that change a pod spec (`mirror`,
//! `pin`, `pull-policy`, `pull-secret`); the **validating** one, which the API server
//! calls after every mutation (other webhooks' sidecars included), applies the rules that
//! can refuse (`refuse-latest`, `allowed-registries`, `signature`). Each rule has the
//! policy layer's modes: `enforce` acts (patches or denies), `audit` answers with a
//! warning saying what enforcing would do, `dry-run` only counts, `off` does nothing.
//!
//! The work is split so the decision is a pure function: [`parse_review`] reads the
//! request (bounded, never panicking), [`Review::images`] lists the images the rules need
//! facts about, the registry looks those facts up (`lookup.rs`: tags, digests, verdicts),
//! and [`evaluate`] turns request, rules and facts into the response. A new kind of rule
//! that needs a new fact (a vulnerability verdict) adds a field to [`ImageFacts`], the
//! lookup that fills it (see [`Needs`]), a [`RuleKind`] and its arm in [`violation`].

mod lookup;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use berth_oci::{Digest, DockerRef};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::policy::{Mode, Outcome};
use crate::tag_rules::Glob;

pub use lookup::ImageLocation;

/// Most containers (of all lists) one pod spec may carry; more is refused as bad input.
pub const MAX_CONTAINERS: usize = 1000;
/// Most distinct images looked up for one review.
pub const MAX_IMAGES: usize = 256;
/// Most warnings in one response, and bytes of each (the API server shows them to users).
const MAX_WARNINGS: usize = 32;
const MAX_WARNING_BYTES: usize = 256;

/// The kinds of admission rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// Refuse `:latest` and references naming no tag (validating).
    RefuseLatest,
    /// Only images from the listed registries (validating).
    AllowedRegistries,
    /// A valid signature, from the stored verdicts (validating).
    Signature,
    /// No finding over the vulnerability rules (`[[vulnerability_policy]]`) in force on
    /// pulls of the image's repository (validating).
    Vulnerability,
    /// Rewrite to Berth's address: upstream images through their cache prefix (mutating).
    Mirror,
    /// Add the digest the tag names in Berth (mutating).
    Pin,
    /// Set `imagePullPolicy` (mutating).
    PullPolicy,
    /// Add the namespace's pull secret to `imagePullSecrets` (mutating).
    PullSecret,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::RefuseLatest => "refuse-latest",
            RuleKind::AllowedRegistries => "allowed-registries",
            RuleKind::Signature => "signature",
            RuleKind::Vulnerability => "vulnerability",
            RuleKind::Mirror => "mirror",
            RuleKind::Pin => "pin",
            RuleKind::PullPolicy => "pull-policy",
            RuleKind::PullSecret => "pull-secret",
        }
    }

    fn webhook(self) -> Webhook {
        match self {
            RuleKind::RefuseLatest
            | RuleKind::AllowedRegistries
            | RuleKind::Signature
            | RuleKind::Vulnerability => Webhook::Validate,
            RuleKind::Mirror | RuleKind::Pin | RuleKind::PullPolicy | RuleKind::PullSecret => {
                Webhook::Mutate
            }
        }
    }
}

/// One rule as configured (`[[admission.rule]]`) or set through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRuleSpec {
    pub name: String,
    /// Namespace globs (`*`, `?`, `[...]`).
    pub namespaces: Vec<String>,
    pub kind: RuleKind,
    #[serde(default)]
    pub mode: Mode,
    /// `allowed-registries`: registry hosts (globs), as Docker normalises them
    /// (`docker.io`, `ghcr.io`, `registry.example.com:5000`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// `pin`: also pin the pod templates of workloads (on CREATE; an UPDATE keeps the
    /// digest of `oldObject` while the tag is unchanged). Pods are always pinned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub templates: bool,
    /// `pull-policy`: `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    /// `pull-secret`: the Secret's name (`berth k8s pull-secrets` creates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The rules managed through the API, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSpec {
    #[serde(default)]
    pub rules: Vec<AdmissionRuleSpec>,
}

/// How nodes reach Berth, and how long a pin may wait for an upstream.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Berth's registry host as nodes name it (`registry.example.com`); references to it
    /// name Berth's own repositories, and `mirror` rewrites to it. Unset: no reference is
    /// Berth's and nothing is mirrored.
    pub registry: Option<String>,
    /// Other names of the same registry (a Service name, an IP with port).
    pub aliases: Vec<String>,
    /// A tag not in Berth's tag data is asked of its configured upstream for this long.
    pub upstream_timeout: Duration,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            registry: None,
            aliases: Vec::new(),
            upstream_timeout: Duration::from_millis(1500),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("admission rule {rule:?}: {why}")]
pub struct AdmissionRuleError {
    pub rule: String,
    pub why: String,
}

struct Rule {
    spec: AdmissionRuleSpec,
    namespaces: Vec<Glob>,
    registries: Vec<Glob>,
}

/// The compiled rules: the configuration's, then the API's.
#[derive(Default)]
pub struct AdmissionRules {
    rules: Vec<Rule>,
}

fn valid_secret_name(s: &str) -> bool {
    // A DNS-1123 subdomain, as Kubernetes requires of a Secret's name.
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl AdmissionRules {
    pub fn new(specs: Vec<AdmissionRuleSpec>) -> Result<AdmissionRules, AdmissionRuleError> {
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for spec in specs {
            let e = |why: String| AdmissionRuleError {
                rule: spec.name.clone(),
                why,
            };
            if spec.name.is_empty() {
                return Err(e("has no name".into()));
            }
            if !names.insert(spec.name.clone()) {
                return Err(e("is declared twice".into()));
            }
            if spec.namespaces.is_empty() {
                return Err(e("names no namespace glob".into()));
            }
            let namespaces = spec
                .namespaces
                .iter()
                .map(|g| Glob::new(g).map_err(|w| e(format!("namespace glob {g:?}: {w}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let registries = spec
                .registries
                .iter()
                .map(|g| Glob::new(g).map_err(|w| e(format!("registry glob {g:?}: {w}"))))
                .collect::<Result<Vec<_>, _>>()?;
            match spec.kind {
                RuleKind::AllowedRegistries if registries.is_empty() => {
                    return Err(e("allowed-registries needs `registries`".into()));
                }
                RuleKind::PullPolicy => match spec.pull_policy.as_deref() {
                    Some("Always" | "IfNotPresent" | "Never") => {}
                    other => {
                        return Err(e(format!(
                            "pull_policy {other:?} is not Always, IfNotPresent or Never"
                        )));
                    }
                },
                RuleKind::PullSecret => match spec.secret.as_deref() {
                    Some(s) if valid_secret_name(s) => {}
                    other => {
                        return Err(e(format!(
                            "secret {other:?} is not a valid Kubernetes Secret name"
                        )));
                    }
                },
                _ => {}
            }
            rules.push(Rule {
                spec,
                namespaces,
                registries,
            });
        }
        Ok(AdmissionRules { rules })
    }

    pub fn specs(&self) -> impl Iterator<Item = &AdmissionRuleSpec> {
        self.rules.iter().map(|r| &r.spec)
    }

    /// Per kind, the first rule (in order) that covers `namespace` and is not off.
    fn acting(&self, namespace: &str, webhook: Webhook) -> Vec<&Rule> {
        let mut seen = HashSet::new();
        self.rules
            .iter()
            .filter(|r| {
                r.spec.mode != Mode::Off
                    && r.spec.kind.webhook() == webhook
                    && r.namespaces.iter().any(|g| g.matches(namespace))
                    && seen.insert(r.spec.kind)
            })
            .collect()
    }
}

/// Which of the two webhooks asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    Validate,
    Mutate,
}

impl Webhook {
    pub fn as_str(self) -> &'static str {
        match self {
            Webhook::Validate => "validate",
            Webhook::Mutate => "mutate",
        }
    }
}

/// A request that cannot be answered with an `AdmissionReview` (the API server gets a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad AdmissionReview: {0}")]
pub struct BadReview(pub String);

#[derive(Debug, Deserialize)]
struct RawReview {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<RawRequest>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    uid: Option<String>,
    #[serde(default)]
    kind: Gvk,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<Value>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    user_info: Option<UserInfo>,
}

#[derive(Debug, Deserialize, Default)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
}

/// An `AdmissionReview` request, read.
#[derive(Debug)]
pub struct Review {
    pub uid: String,
    pub kind: String,
    pub namespace: String,
    pub operation: String,
    pub dry_run: bool,
    /// The object's name; for one named by `generateName`, that prefix and `*`.
    pub name: String,
    /// Who asks the API server (`userInfo.username`).
    pub user: String,
    /// JSON pointer of the pod spec inside `object`, for a pod-bearing kind.
    spec_pointer: Option<&'static str>,
    /// A workload's template rather than a Pod.
    template: bool,
    object: Value,
    old_object: Option<Value>,
    /// The `pods/ephemeralcontainers` subresource: only ephemeral containers may change.
    ephemeral: bool,
}

/// Where the pod spec of each pod-bearing kind lives.
fn spec_pointer(group: &str, kind: &str) -> Option<(&'static str, bool)> {
    Some(match (group, kind) {
        ("", "Pod") => ("/spec", false),
        ("", "PodTemplate") => ("/template/spec", true),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => ("/spec/template/spec", true),
        ("batch", "CronJob") => ("/spec/jobTemplate/spec/template/spec", true),
        _ => return None,
    })
}

/// Reads an `AdmissionReview` v1. Bad JSON, another API version or a request without a
/// `uid` cannot be answered in kind: a [`BadReview`].
pub fn parse_review(body: &[u8]) -> Result<Review, BadReview> {
    let raw: RawReview =
        serde_json::from_slice(body).map_err(|e| BadReview(format!("not JSON: {e}")))?;
    if raw.api_version.as_deref() != Some("admission.k8s.io/v1")
        || raw.kind.as_deref() != Some("AdmissionReview")
    {
        return Err(BadReview(
            "not an admission.k8s.io/v1 AdmissionReview".into(),
        ));
    }
    let req = raw.request.ok_or_else(|| BadReview("no request".into()))?;
    let uid = req
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| BadReview("the request has no uid".into()))?;
    let (pointer, template) = match spec_pointer(&req.kind.group, &req.kind.kind) {
        Some((p, t)) => (Some(p), t),
        None => (None, false),
    };
    let object = req.object.unwrap_or(Value::Null);
    let meta = |k: &str| {
        object
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    };
    let name = req
        .name
        .filter(|n| !n.is_empty())
        .or_else(|| meta("name"))
        .or_else(|| meta("generateName").map(|g| format!("{g}*")))
        .unwrap_or_default();
    Ok(Review {
        uid,
        name,
        user: req.user_info.and_then(|u| u.username).unwrap_or_default(),
        kind: req.kind.kind,
        namespace: req.namespace.unwrap_or_default(),
        operation: req.operation.unwrap_or_default(),
        dry_run: req.dry_run.unwrap_or(false),
        spec_pointer: pointer,
        template,
        object,
        old_object: req.old_object,
        ephemeral: req.sub_resource.as_deref() == Some("ephemeralcontainers"),
    })
}

const LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// One container of the pod spec.
#[derive(Debug, Clone)]
pub struct Container {
    list: &'static str,
    index: usize,
    pub name: String,
    pub image: String,
    pull_policy: Option<String>,
    /// The image of the container of that name in `oldObject` (UPDATE), if there was one.
    old_image: Option<String>,
    /// Present in `oldObject` (UPDATE).
    existed: bool,
}

impl Container {
    /// New, or its image changed: what an UPDATE is judged on, so that a label change
    /// on a running workload is never refused for an image admitted before a rule.
    fn changed(&self) -> bool {
        !self.existed || self.old_image.as_deref() != Some(self.image.as_str())
    }
}

fn containers_of(spec: &Value) -> Vec<(&'static str, usize, &serde_json::Map<String, Value>)> {
    let mut out = Vec::new();
    for list in LISTS {
        if let Some(items) = spec.get(list).and_then(Value::as_array) {
            for (i, c) in items.iter().enumerate() {
                if let Some(o) = c.as_object() {
                    out.push((list, i, o));
                }
            }
        }
    }
    out
}

impl Review {
    /// The pod spec of a pod-bearing kind.
    fn spec(&self) -> Option<&Value> {
        self.object.pointer(self.spec_pointer?)
    }

    /// Every container of the pod spec, with its counterpart in `oldObject`.
    pub fn containers(&self) -> Vec<Container> {
        let Some(spec) = self.spec() else {
            return Vec::new();
        };
        let old: HashMap<(&str, &str), Option<&str>> = self
            .old_object
            .as_ref()
            .and_then(|o| o.pointer(self.spec_pointer?))
            .map(|s| {
                containers_of(s)
                    .into_iter()
                    .filter_map(|(l, _, c)| {
                        Some((
                            (l, c.get("name")?.as_str()?),
                            c.get("image").and_then(Value::as_str),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        containers_of(spec)
            .into_iter()
            .map(|(list, index, c)| {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let o = old.get(&(list, name.as_str()));
                Container {
                    list,
                    index,
                    image: c
                        .get("image")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    pull_policy: c
                        .get("imagePullPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    old_image: o.and_then(|i| i.map(str::to_owned)),
                    existed: o.is_some(),
                    name,
                }
            })
            .collect()
    }

    pub fn pod_bearing(&self) -> bool {
        self.spec_pointer.is_some()
    }

    pub fn is_update(&self) -> bool {
        self.operation == "UPDATE"
    }
}

/// What the lookup must find out about the images of a review.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The digest a tag names (pin, signature).
    pub digest: bool,
    /// The stored signature verdict (signature).
    pub signature: bool,
    /// What the vulnerability rules say (vulnerability).
    pub vulnerability: bool,
    /// Ask a configured upstream for a tag Berth does not hold (pin, on a real request).
    pub upstream: bool,
}

/// What Berth knows of one image as a pod spec names it.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// Where Berth holds it (its own repository, or a cache prefix), if anywhere.
    pub location: Option<ImageLocation>,
    /// The digest it names: its own digest, or the one its tag names in Berth.
    pub digest: Option<Digest>,
    /// Why there is no digest, when one was looked for.
    pub unresolved: Option<String>,
    /// The signature verdict of `digest` in Berth's repository.
    pub signature: Option<(Outcome, String)>,
    /// What the vulnerability rules say of `digest`: `Some(None)` nothing refused,
    /// `Some(Some(why))` a rule would refuse it; `None` not looked up.
    pub vulnerability: Option<Option<String>>,
}

/// Facts per image string, as written in the pod spec.
pub type Facts = HashMap<String, ImageFacts>;

/// The outcome of one review.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Why not, naming container, image and rule.
    pub message: Option<String>,
    pub patch: Vec<Value>,
    pub warnings: Vec<String>,
    /// (rule kind, mode, what happened) for each rule that acted or would have: counted.
    pub counts: Vec<(RuleKind, Mode, &'static str)>,
    /// What each enforcing or auditing rule did to each container: the audit log's rows.
    pub events: Vec<AdmissionEvent>,
}

/// One refusal, change or warning of one rule, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdmissionEvent {
    pub rule: String,
    pub kind: RuleKind,
    /// `enforce` or `audit` (dry-run rules only count).
    pub mode: &'static str,
    /// `denied` or `patched` (enforce), `warned` (audit: what enforcing would do).
    pub decision: &'static str,
    /// The container, for rules about one (not `pull-secret`).
    pub container: Option<String>,
    pub image: Option<String>,
    /// What was refused or changed, and why.
    pub what: String,
}

/// The rules that act on a review: those of the namespace, for this webhook.
pub struct Acting<'r> {
    rules: Vec<&'r Rule>,
}

impl<'r> Acting<'r> {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn get(&self, kind: RuleKind) -> Option<&'r Rule> {
        self.rules.iter().copied().find(|r| r.spec.kind == kind)
    }

    /// Which facts the acting rules need for `review`.
    pub fn needs(&self, review: &Review) -> Needs {
        let pin = self
            .get(RuleKind::Pin)
            .is_some_and(|r| !review.template || r.spec.templates);
        let vulnerability = self.get(RuleKind::Vulnerability).is_some();
        Needs {
            digest: pin || self.get(RuleKind::Signature).is_some() || vulnerability,
            signature: self.get(RuleKind::Signature).is_some(),
            vulnerability,
            upstream: pin && !review.dry_run,
        }
    }
}

impl AdmissionRules {
    pub fn acting_for(&self, review: &Review, webhook: Webhook) -> Acting<'_> {
        if !review.pod_bearing() {
            return Acting { rules: Vec::new() };
        }
        Acting {
            rules: self.acting(&review.namespace, webhook),
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(1);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The canonical name of an image for comparing old and new: where Berth holds it, else
/// its normalised name.
fn canonical(r: &DockerRef, facts: Option<&ImageFacts>) -> String {
    match facts.and_then(|f| f.location.as_ref()) {
        Some(l) => format!("berth/{}", l.repo),
        None => r.name(),
    }
}

/// Why `rule` refuses `image`, if it does.
fn violation(rule: &Rule, image: &str, facts: Option<&ImageFacts>) -> Option<String> {
    let parsed = match DockerRef::parse(image) {
        Ok(p) => p,
        Err(e) => return Some(format!("the reference does not parse ({e})")),
    };
    match rule.spec.kind {
        RuleKind::RefuseLatest => {
            if parsed.untagged() {
                Some("names no tag (the runtime takes :latest)".into())
            } else if parsed.floating_latest() {
                Some("uses :latest".into())
            } else {
                None
            }
        }
        RuleKind::AllowedRegistries => {
            let ok = rule
                .registries
                .iter()
                .any(|g| g.matches(&parsed.domain.to_ascii_lowercase()));
            (!ok).then(|| format!("registry {} is not allowed", parsed.domain))
        }
        RuleKind::Signature => {
            let f = facts?;
            if f.location.is_none() {
                return Some("Berth does not hold it (no signature verdict)".into());
            }
            if f.digest.is_none() {
                return Some(format!(
                    "no digest known in Berth ({})",
                    f.unresolved.as_deref().unwrap_or("not found")
                ));
            }
            match &f.signature {
                Some((Outcome::Signed | Outcome::Exempt, _)) => None,
                Some((Outcome::Unsigned, why)) => Some(format!("not signed: {why}")),
                Some((Outcome::Pending, why)) => Some(format!("signature verdict pending: {why}")),
                None => Some("no signature verdict".into()),
            }
        }
        RuleKind::Vulnerability => {
            let f = facts?;
            if f.location.is_none() {
                return Some("Berth does not hold it (no vulnerability findings)".into());
            }
            if f.digest.is_none() {
                return Some(format!(
                    "no digest known in Berth ({})",
                    f.unresolved.as_deref().unwrap_or("not found")
                ));
            }
            match &f.vulnerability {
                Some(None) => None,
                Some(Some(why)) => Some(why.clone()),
                None => Some("no vulnerability findings".into()),
            }
        }
        RuleKind::Mirror | RuleKind::Pin | RuleKind::PullPolicy | RuleKind::PullSecret => None,
    }
}

/// The decision for `review`, from the acting rules and the facts looked up: pure.
pub fn evaluate(
    review: &Review,
    webhook: Webhook,
    acting: &Acting<'_>,
    facts: &Facts,
    settings: &AdmissionSettings,
) -> Decision {
    let mut d = Decision {
        allowed: true,
        ..Decision::default()
    };
    if acting.is_empty() {
        return d;
    }
    let containers = review.containers();
    if containers.len() > MAX_CONTAINERS {
        d.allowed = false;
        d.message = Some(format!(
            "berth: the pod spec has {} containers, more than the {MAX_CONTAINERS} Berth judges",
            containers.len()
        ));
        return d;
    }
    match webhook {
        Webhook::Validate => validate(review, acting, &containers, facts, &mut d),
        Webhook::Mutate => mutate(review, acting, &containers, facts, settings, &mut d),
    }
    d.warnings.truncate(MAX_WARNINGS);
    d
}

fn validate(
    review: &Review,
    acting: &Acting<'_>,
    containers: &[Container],
    facts: &Facts,
    d: &mut Decision,
) {
    let mut denials = Vec::new();
    for rule in &acting.rules {
        let mut hit = false;
        for c in containers
            .iter()
            .filter(|c| !review.is_update() || c.changed())
        {
            let Some(why) = violation(rule, &c.image, facts.get(&c.image)) else {
                continue;
            };
            hit = true;
            if let Some(decision) = match rule.spec.mode {
                Mode::Enforce => Some("denied"),
                Mode::Audit => Some("warned"),
                Mode::DryRun | Mode::Off => None,
            } {
                d.events.push(AdmissionEvent {
                    rule: rule.spec.name.clone(),
                    kind: rule.spec.kind,
                    mode: mode_str(rule.spec.mode),
                    decision,
                    container: Some(c.name.clone()),
                    image: Some(c.image.clone()),
                    what: why.clone(),
                });
            }
            let text = format!(
                "container {:?} image {:?}: rule {:?} ({}) {why}",
                c.name,
                c.image,
                rule.spec.name,
                rule.spec.kind.as_str()
            );
            match rule.spec.mode {
                Mode::Enforce => denials.push(text),
                Mode::Audit => d.warnings.push(truncate(
                    format!("berth would refuse: {text}"),
                    MAX_WARNING_BYTES,
                )),
                Mode::DryRun | Mode::Off => {}
            }
        }
        if hit {
            let what = match rule.spec.mode {
                Mode::Enforce => "denied",
                Mode::Audit => "warned",
                _ => "would_deny",
            };
            d.counts.push((rule.spec.kind, rule.spec.mode, what));
        }
    }
    if !denials.is_empty() {
        d.allowed = false;
        d.message = Some(truncate(
            format!("berth admission refuses: {}", denials.join("; ")),
            4096,
        ));
    }
}

/// A change one mutating rule makes or would make.
struct Change {
    rule: String,
    kind: RuleKind,
    mode: Mode,
    what: String,
    op: Value,
    /// (container, image) the change is about.
    container: Option<(String, String)>,
    /// The change alone, for the audit log.
    short: String,
}

fn mutate(
    review: &Review,
    acting: &Acting<'_>,
    containers: &[Container],
    facts: &Facts,
    settings: &AdmissionSettings,
    d: &mut Decision,
) {
    let Some(base) = review.spec_pointer else {
        return;
    };
    let pod_update = review.is_update() && !review.template;
    let mut changes: Vec<Change> = Vec::new();
    let mirror = acting.get(RuleKind::Mirror);
    let pin = acting
        .get(RuleKind::Pin)
        .filter(|r| !review.template || r.spec.templates);
    let policy = acting.get(RuleKind::PullPolicy);
    for c in containers {
        // A Pod's spec is immutable but for images; the ephemeral containers subresource
        // changes only those. Containers an UPDATE leaves alone are left alone.
        if review.ephemeral && c.list != "ephemeralContainers" {
            continue;
        }
        if review.is_update() && !c.changed() {
            continue;
        }
        let at = format!("{base}/{}/{}", c.list, c.index);
        let Ok(original) = DockerRef::parse(&c.image) else {
            continue;
        };
        let f = facts.get(&c.image);
        let mut image = original.clone();
        let mut reasons: Vec<(&Rule, String)> = Vec::new();
        if let (Some(rule), Some(host), Some(loc)) = (
            mirror,
            &settings.registry,
            f.and_then(|f| f.location.as_ref()),
        ) && !loc.at_berth
        {
            image.domain = host.clone();
            image.path = loc.repo.clone();
            reasons.push((rule, format!("mirror through Berth as {}", image.name())));
        }
        if let Some(rule) = pin
            && image.digest.is_none()
            && !original.floating_latest()
        {
            let kept = review
                .is_update()
                .then(|| keep_old_digest(c, &original, f, facts))
                .flatten();
            let digest = kept.or_else(|| f.and_then(|f| f.digest.clone()));
            match digest {
                Some(dg) => {
                    image.digest = Some(dg.clone());
                    reasons.push((rule, format!("pin to {dg}")));
                }
                None => {
                    // Said only where the rule speaks (enforce, audit); a dry run is silent.
                    if matches!(rule.spec.mode, Mode::Enforce | Mode::Audit)
                        && let Some(why) = f.and_then(|f| f.unresolved.as_deref())
                    {
                        d.warnings.push(truncate(
                            format!(
                                "berth could not pin container {:?} image {:?}: {why}",
                                c.name, c.image
                            ),
                            MAX_WARNING_BYTES,
                        ));
                    }
                }
            }
        }
        // Each rule's change is judged in its own mode: the image is rewritten only by
        // the rules that enforce, and the others say what they would have done.
        let mut enforced = original.clone();
        for (rule, what) in &reasons {
            if rule.spec.mode == Mode::Enforce {
                match rule.spec.kind {
                    RuleKind::Mirror => {
                        enforced.domain = image.domain.clone();
                        enforced.path = image.path.clone();
                    }
                    RuleKind::Pin => enforced.digest = image.digest.clone(),
                    _ => {}
                }
            }
            changes.push(Change {
                rule: rule.spec.name.clone(),
                kind: rule.spec.kind,
                mode: rule.spec.mode,
                what: format!("container {:?} image {:?}: {what}", c.name, c.image),
                op: Value::Null,
                container: Some((c.name.clone(), c.image.clone())),
                short: what.clone(),
            });
        }
        let new_image = enforced.to_string();
        if reasons.iter().any(|(r, _)| r.spec.mode == Mode::Enforce) && new_image != c.image {
            d.patch
                .push(json!({"op": "replace", "path": format!("{at}/image"), "value": new_image}));
        }
        // imagePullPolicy of an existing Pod's container is immutable.
        if let Some(rule) = policy
            && !(pod_update && c.existed)
            && let Some(want) = rule.spec.pull_policy.as_deref()
            && c.pull_policy.as_deref() != Some(want)
        {
            changes.push(Change {
                rule: rule.spec.name.clone(),
                kind: rule.spec.kind,
                mode: rule.spec.mode,
                what: format!("container {:?}: imagePullPolicy {want}", c.name),
                op: json!({"op": "add", "path": format!("{at}/imagePullPolicy"), "value": want}),
                container: Some((c.name.clone(), c.image.clone())),
                short: format!("imagePullPolicy {want}"),
            });
        }
    }
    // imagePullSecrets of an existing Pod is immutable.
    if let Some(rule) = acting.get(RuleKind::PullSecret)
        && !pod_update
        && let Some(secret) = rule.spec.secret.as_deref()
        && let Some(spec) = review.spec()
    {
        let list = spec.get("imagePullSecrets").and_then(Value::as_array);
        let present = list.is_some_and(|l| {
            l.iter()
                .any(|s| s.get("name").and_then(Value::as_str) == Some(secret))
        });
        if !present {
            let op = match list {
                Some(_) => {
                    json!({"op": "add", "path": format!("{base}/imagePullSecrets/-"), "value": {"name": secret}})
                }
                None => {
                    json!({"op": "add", "path": format!("{base}/imagePullSecrets"), "value": [{"name": secret}]})
                }
            };
            changes.push(Change {
                rule: rule.spec.name.clone(),
                kind: rule.spec.kind,
                mode: rule.spec.mode,
                what: format!("imagePullSecrets: add {secret}"),
                short: format!("imagePullSecrets: add {secret}"),
                op,
                container: None,
            });
        }
    }
    let mut counted = HashSet::new();
    for ch in changes {
        if let Some(decision) = match ch.mode {
            Mode::Enforce => Some("patched"),
            Mode::Audit => Some("warned"),
            Mode::DryRun | Mode::Off => None,
        } {
            let (container, image) = ch.container.clone().unzip();
            d.events.push(AdmissionEvent {
                rule: ch.rule.clone(),
                kind: ch.kind,
                mode: mode_str(ch.mode),
                decision,
                container,
                image,
                what: ch.short.clone(),
            });
        }
        match ch.mode {
            Mode::Enforce => {
                if !ch.op.is_null() {
                    d.patch.push(ch.op);
                }
            }
            Mode::Audit => d.warnings.push(truncate(
                format!("berth would change (rule {:?}): {}", ch.rule, ch.what),
                MAX_WARNING_BYTES,
            )),
            Mode::DryRun | Mode::Off => {}
        }
        if counted.insert(ch.kind) {
            let what = match ch.mode {
                Mode::Enforce => "patched",
                Mode::Audit => "warned",
                _ => "would_patch",
            };
            d.counts.push((ch.kind, ch.mode, what));
        }
    }
}

/// On UPDATE, the digest of `oldObject`'s container of the same name while it names the
/// same image and tag: applying an unchanged manifest must not roll out a new digest.
fn keep_old_digest(
    c: &Container,
    new: &DockerRef,
    f: Option<&ImageFacts>,
    facts: &Facts,
) -> Option<Digest> {
    let old = DockerRef::parse(c.old_image.as_deref()?).ok()?;
    let digest = old.digest.clone()?;
    if old.tag.as_ref()?.as_str() != new.tag.as_ref()?.as_str() {
        return None;
    }
    let old_facts = c.old_image.as_deref().and_then(|i| facts.get(i));
    let same = canonical(&old, old_facts) == canonical(new, f) || old.name() == new.name();
    same.then_some(digest)
}

/// The `AdmissionReview` response for `decision`.
pub fn response(uid: &str, d: &Decision) -> Value {
    let mut r = json!({"uid": uid, "allowed": d.allowed});
    if let Some(m) = &d.message {
        r["status"] = json!({"code": 403, "reason": "Forbidden", "message": m});
    }
    if d.allowed && !d.patch.is_empty() {
        let bytes = serde_json::to_vec(&d.patch).unwrap_or_default();
        r["patchType"] = json!("JSONPatch");
        r["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if !d.warnings.is_empty() {
        r["warnings"] = json!(d.warnings);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
}

/// The images (new and old) whose facts the acting rules need, as written, once each.
pub fn images_to_look_up(containers: &[Container]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in containers {
        for i in std::iter::once(&c.image).chain(c.old_image.as_ref()) {
            if !i.is_empty() && seen.insert(i.clone()) {
                out.push(i.clone());
            }
        }
    }
    out
}

/// Counters of the webhooks, per process.
#[derive(Default)]
pub struct AdmissionStats {
    /// (webhook, result) → reviews.
    pub reviews: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (rule kind, mode, result) → reviews in which the rule acted or would have.
    pub rules: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// Audit rows not written because the same row was written within
    /// [`AUDIT_REPEAT_WINDOW`].
    pub audit_repeats: std::sync::atomic::AtomicU64,
}

/// An admission audit row identical to one written less than this ago (same webhook,
/// requester, object, container, image, rule, mode, decision and change) is not written
/// again, only counted: a controller retrying a refused Pod, or every replica of a
/// rollout being pinned alike, is one row per minute, not one per request.
pub const AUDIT_REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct audit rows remembered for that; past it, expired ones are forgotten, and if
/// none are, all are (repeats are written again rather than memory growing).
const AUDIT_REPEAT_KEYS: usize = 16_384;

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Off => "off",
        Mode::DryRun => "dry-run",
        Mode::Audit => "audit",
        Mode::Enforce => "enforce",
    }
}

impl AdmissionStats {
    pub fn review(&self, webhook: Webhook, result: &'static str) {
        if let Ok(mut m) = self.reviews.lock() {
            *m.entry((webhook.as_str(), result)).or_default() += 1;
        }
    }

    fn rules(&self, counts: &[(RuleKind, Mode, &'static str)]) {
        if counts.is_empty() {
            return;
        }
        if let Ok(mut m) = self.rules.lock() {
            for (k, mode, what) in counts {
                *m.entry((k.as_str(), mode_str(*mode), *what)).or_default() += 1;
            }
        }
    }
}

/// The admission rules and settings in force, and the counters.
pub(crate) struct AdmissionState {
    pub(crate) rules: RwLock<Arc<AdmissionRules>>,
    pub(crate) config: RwLock<Vec<AdmissionRuleSpec>>,
    pub(crate) managed: RwLock<AdmissionSpec>,
    pub(crate) settings: RwLock<Arc<AdmissionSettings>>,
    pub(crate) stats: AdmissionStats,
    /// Hash of an audit row → when it was last written.
    pub(crate) audited: Mutex<HashMap<u64, std::time::Instant>>,
}

impl Default for AdmissionState {
    fn default() -> Self {
        AdmissionState {
            rules: RwLock::new(Arc::new(AdmissionRules::default())),
            config: RwLock::new(Vec::new()),
            managed: RwLock::new(AdmissionSpec::default()),
            settings: RwLock::new(Arc::new(AdmissionSettings::default())),
            stats: AdmissionStats::default(),
            audited: Mutex::new(HashMap::new()),
        }
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    match l.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write<T>(l: &RwLock<T>, v: T) {
    match l.write() {
        Ok(mut g) => *g = v,
        Err(p) => *p.into_inner() = v,
    }
}

#[cfg(test)]
mod tests;
