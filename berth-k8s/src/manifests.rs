//! The resources of a Berth install, from options.
//!
//! Two shapes. One replica keeps blobs and the embedded SQLite database on a
//! PersistentVolumeClaim (`Storage::Volume`; the Deployment recreates its pod, since a
//! ReadWriteOnce volume and SQLite's one writer allow no second pod). Any number of
//! replicas share PostgreSQL and an S3 bucket (`Storage::External`); `berth migrate` runs
//! as an init container, the pods spread over zones and nodes, and a disruption budget
//! keeps all but one of them up through drains.
//!
//! Every pod runs as the image's non-root user on a read-only root filesystem, without
//! privilege escalation or capabilities, under the runtime's default seccomp profile,
//! so the namespace can enforce the `restricted` Pod Security Standard. Berth writes only
//! to its data directory (the volume, or an emptyDir: the generated admin password file
//! lands there) and `/tmp` (SQLite's temporary files), both mounted.
//!
//! Secrets are never rendered: the options name Kubernetes Secrets, and the pods take
//! the database URL, the S3 keys and the admin password from them as environment
//! variables and the TLS pair as files. [`Install::secrets`] lists what to create.

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::{DATA_DIR, K8sError, PORT, RUN_AS_UID};

/// Where the ConfigMap holding `berth.toml` is mounted.
const CONFIG_DIR: &str = "/etc/berth/config";
/// Where the TLS Secret is mounted.
const TLS_DIR: &str = "/etc/berth/tls";
/// Where the webhook certificate's Secret is mounted.
const WEBHOOK_TLS_DIR: &str = "/etc/berth/webhook-tls";
/// The admission webhooks' port in the pod, and its name.
const WEBHOOK_PORT: u16 = 8443;
const WEBHOOK_PORT_NAME: &str = "webhook";
/// The name of the container port (probes, the Service and the policy refer to it).
const PORT_NAME: &str = "registry";
/// Longest `--name`: the resources append suffixes (`-database`) to it, and Kubernetes
/// label values end at 63 characters.
const MAX_NAME: usize = 40;

/// What to render.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of every resource name (`berth`).
    pub name: String,
    pub namespace: String,
    /// Render the Namespace too, labelled to enforce the `restricted` Pod Security
    /// Standard. Off when installing into a namespace that exists already.
    pub create_namespace: bool,
    /// Berth's image as the nodes pull it (`registry.example.com/berth:0.1.0`).
    pub image: String,
    /// Secrets the nodes need to pull `image`.
    pub image_pull_secrets: Vec<String>,
    /// Berth's version, for the `app.kubernetes.io/version` label.
    pub version: String,
    pub replicas: u32,
    pub storage: Storage,
    /// The URL clients use (`https://registry.example.com`).
    pub public_url: Option<String>,
    /// A `kubernetes.io/tls` Secret: Berth serves HTTPS itself. Unset: plain HTTP behind
    /// something that terminates TLS (an ingress).
    pub tls_secret: Option<String>,
    /// The Secret with the first admin's `password`. Unset: `<name>-admin`. Optional in
    /// the pod: without it Berth generates a password and logs it once.
    pub admin_secret: Option<String>,
    /// `[gc] interval_secs`: retention, cache eviction and garbage collection on a
    /// schedule (one replica at a time); 0: off.
    pub gc_interval_secs: u64,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: Option<String>,
    /// CIDRs allowed to reach the registry port. Empty: every source (kubelets pull from
    /// the nodes' own addresses, which no pod or namespace selector names).
    pub allow_from: Vec<String>,
    /// `[security] trusted_proxies`: the ingress's addresses, whose `X-Forwarded-For`
    /// names the client. Without them every client behind the ingress counts as the
    /// ingress for the per-client limits.
    pub trusted_proxies: Vec<String>,
    /// The admission webhooks: their Service, certificate Secret and webhook
    /// configurations. Unset: no webhooks.
    pub admission: Option<Admission>,
    /// Node-local sharing: `[p2p]` on the registry and the node agents' DaemonSet.
    /// Unset: no sharing.
    pub node_agent: Option<NodeAgent>,
}

/// The node agents (`--node-agent`): a DaemonSet in a namespace of its own,
/// `<namespace>-node`, because what an agent needs (the node's network for a loopback
/// listener containerd reaches, containerd's `certs.d` to write `hosts.toml`, a spool on
/// the node) is exactly what the registry's `restricted` namespace forbids.
#[derive(Debug, Clone)]
pub struct NodeAgent {
    /// The registry host in image names (`registry.example.com`), whose `hosts.toml` the
    /// agents write.
    pub registry_host: String,
    /// Where agents reach the registry (its public URL, so that they and the kubelets
    /// arrive by the same path and are seen with the same node address). Default: the
    /// registry's `public_url`.
    pub central_url: Option<String>,
    /// Megabits per second each agent serves to peers.
    pub serve_mbit: u64,
}

/// The agents' port for peers (on the node's network).
pub const NODE_PEER_PORT: u16 = 5051;
/// The agents' port for containerd (the node's loopback).
pub const NODE_MIRROR_PORT: u16 = 5050;
const P2P_DIR: &str = "/etc/berth/p2p";

/// The node agents' namespace.
pub fn node_namespace(o: &Options) -> String {
    format!("{}-node", o.namespace)
}

/// The Secret with the bootstrap token and the ticket signing key (registry side), and
/// the one with the bootstrap token only (agents' side).
fn p2p_secret(o: &Options) -> String {
    format!("{}-p2p", o.name)
}

fn node_secret(o: &Options) -> String {
    format!("{}-node", o.name)
}

/// The admission webhooks (`--admission`).
#[derive(Debug, Clone)]
pub struct Admission {
    /// The PEM CA certificate that signed the webhook certificate: the API server's
    /// `caBundle` (public; the certificate and key stay in the Secret).
    pub ca_pem: String,
    /// The `kubernetes.io/tls` Secret with the webhook certificate for
    /// `<name>-webhook.<namespace>.svc`, shared by every replica. Unset:
    /// `<name>-webhook-tls`.
    pub secret: Option<String>,
    /// `Fail` (default: nothing is admitted unjudged while Berth is down) or `Ignore`.
    pub failure_policy: String,
    /// How long the API server waits for an answer, 1 to 30 seconds.
    pub timeout_seconds: u32,
    /// The webhook certificate and key (PEM), when Berth made them (`cert`): the Secret
    /// is then one of the resources rather than one the operator creates.
    pub tls: Option<WebhookTls>,
}

/// A serving certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct WebhookTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Admission {
    pub fn new(ca_pem: impl Into<String>) -> Admission {
        Admission {
            ca_pem: ca_pem.into(),
            secret: None,
            failure_policy: "Fail".to_owned(),
            timeout_seconds: 5,
            tls: None,
        }
    }
}

/// Where blobs and metadata live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// One replica: blobs and SQLite on a PersistentVolumeClaim.
    Volume { size: String, class: Option<String> },
    /// Any number of replicas: PostgreSQL (URL in a Secret) and an S3 bucket.
    External {
        /// The Secret with the PostgreSQL `url`. Unset: `<name>-database`.
        database_secret: Option<String>,
        s3: S3,
    },
}

#[derive(Debug, Clone)]
pub struct S3 {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: String,
    pub path_style: bool,
    /// The Secret with `access-key-id` and `secret-access-key`. Unset: `<name>-s3`.
    pub secret: Option<String>,
}

impl Options {
    /// Defaults for everything but the image: one replica on a 10 GiB volume.
    pub fn new(image: impl Into<String>, version: impl Into<String>) -> Options {
        Options {
            name: "berth".to_owned(),
            namespace: "berth".to_owned(),
            create_namespace: true,
            image: image.into(),
            image_pull_secrets: Vec::new(),
            version: version.into(),
            replicas: 1,
            storage: Storage::Volume {
                size: "10Gi".to_owned(),
                class: None,
            },
            public_url: None,
            tls_secret: None,
            admin_secret: None,
            gc_interval_secs: 86_400,
            cpu_request: "250m".to_owned(),
            memory_request: "256Mi".to_owned(),
            memory_limit: None,
            allow_from: Vec::new(),
            trusted_proxies: Vec::new(),
            admission: None,
            node_agent: None,
        }
    }
}

/// One Kubernetes object.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: &'static str,
    pub name: String,
    pub value: Value,
}

/// A Secret the resources refer to, which the operator creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    /// Its namespace, when not the registry's.
    pub namespace: Option<String>,
    /// The keys read from it.
    pub keys: Vec<&'static str>,
    /// `kubernetes.io/tls` rather than generic.
    pub tls: bool,
    /// The pods start without it.
    pub optional: bool,
    pub purpose: &'static str,
}

/// A rendered install.
#[derive(Debug, Clone)]
pub struct Install {
    /// In the order they are applied.
    pub resources: Vec<Resource>,
    pub secrets: Vec<SecretRef>,
    /// The `berth.toml` the ConfigMap holds.
    pub config: String,
}

impl Install {
    /// Every resource, as one YAML stream.
    pub fn to_yaml(&self) -> String {
        crate::yaml::to_yaml_stream(self.resources.iter().map(|r| &r.value))
    }

    /// The same resources as a kustomize base: one file per resource (named after its
    /// kind) and a `kustomization.yaml` listing them in order, as (file name, text).
    pub fn kustomize_base(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut list = Vec::new();
        for r in &self.resources {
            // Two of a kind (the registry's and the webhooks' Services) are told apart
            // by name.
            let twins = self.resources.iter().filter(|o| o.kind == r.kind).count() > 1;
            let file = if twins {
                format!("{}-{}.yaml", r.kind.to_ascii_lowercase(), r.name)
            } else {
                format!("{}.yaml", r.kind.to_ascii_lowercase())
            };
            list.push(Value::from(file.clone()));
            files.push((file, crate::yaml::to_yaml(&r.value)));
        }
        let kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": list,
        });
        files.push((
            "kustomization.yaml".to_owned(),
            crate::yaml::to_yaml(&kustomization),
        ));
        files
    }
}

/// Renders the install `o` describes, or says which option is wrong.
pub fn render(o: &Options) -> Result<Install, K8sError> {
    check(o)?;
    let secrets = secrets(o);
    let config = berth_toml(o);
    let mut resources = Vec::new();
    let mut add = |kind: &'static str, name: String, value: Value| {
        resources.push(Resource { kind, name, value });
    };
    if o.create_namespace {
        add("Namespace", o.namespace.clone(), namespace(o));
    }
    add("ServiceAccount", o.name.clone(), service_account(o));
    add("ConfigMap", config_map_name(o), config_map(o, &config));
    if let Storage::Volume { size, class } = &o.storage {
        add(
            "PersistentVolumeClaim",
            data_claim_name(o),
            claim(o, size, class.as_deref()),
        );
    }
    add("Service", o.name.clone(), service(o));
    if let Some(a) = &o.admission {
        add("Service", webhook_service_name(o), webhook_service(o));
        if let Some(tls) = &a.tls {
            let mut l = labels(o);
            l["app.kubernetes.io/component"] = Value::from("admission");
            add(
                "Secret",
                webhook_secret(o, a),
                tls_secret(&webhook_secret(o, a), &o.namespace, l, tls),
            );
        }
    }
    add("Deployment", o.name.clone(), deployment(o, &config));
    if o.replicas > 1 {
        add("PodDisruptionBudget", o.name.clone(), disruption_budget(o));
    }
    add("NetworkPolicy", o.name.clone(), network_policy(o));
    if let Some(n) = &o.node_agent {
        add("Namespace", node_namespace(o), node_namespace_object(o));
        add(
            "DaemonSet",
            format!("{}-node", o.name),
            node_daemon_set(o, n),
        );
    }
    if let Some(a) = &o.admission {
        // Last: the API server calls the webhooks as soon as these exist.
        add(
            "ValidatingWebhookConfiguration",
            webhook_configuration_name(o),
            webhook_configuration(o, a, false),
        );
        add(
            "MutatingWebhookConfiguration",
            webhook_configuration_name(o),
            webhook_configuration(o, a, true),
        );
    }
    Ok(Install {
        resources,
        secrets,
        config,
    })
}

// ---- checks ----

fn invalid(msg: String) -> K8sError {
    K8sError::Invalid(msg)
}

/// A DNS-1123 label: lowercase letters, digits and `-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain (the names of Secrets): labels joined by dots.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_dns_label(l, 63))
}

/// A Kubernetes quantity as people write them (`250m`, `1.5`, `128Mi`, `10Gi`).
fn is_quantity(s: &str) -> bool {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let mut parts = number.split('.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next();
    !whole.is_empty()
        && parts.next().is_none()
        && frac.is_none_or(|f| !f.is_empty())
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && s.chars().all(|c| c.is_ascii_graphic())
    })
}

fn check_secret_name(what: &str, name: Option<&str>) -> Result<(), K8sError> {
    match name {
        Some(n) if !is_dns_subdomain(n) => Err(invalid(format!(
            "{what} {n:?} is not a Kubernetes Secret name (lowercase letters, digits, '-' and '.')"
        ))),
        _ => Ok(()),
    }
}

fn check(o: &Options) -> Result<(), K8sError> {
    if let Some(n) = &o.node_agent {
        if n.central_url.is_none() && o.public_url.is_none() {
            return Err(invalid(
                "--node-agent needs --public-url or --node-central-url: where the agents reach the registry".into(),
            ));
        }
        if !is_dns_subdomain(n.registry_host.split(':').next().unwrap_or_default()) {
            return Err(invalid(format!(
                "--node-agent {:?}: not a registry host name",
                n.registry_host
            )));
        }
    }
    if let Some(a) = &o.admission {
        if !a.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid(
                "webhook CA: not a PEM certificate (--webhook-ca names the CA that signed the webhook certificate)".into(),
            ));
        }
        if !matches!(a.failure_policy.as_str(), "Fail" | "Ignore") {
            return Err(invalid(format!(
                "webhook failure policy {:?} is not Fail or Ignore",
                a.failure_policy
            )));
        }
        if !(1..=30).contains(&a.timeout_seconds) {
            return Err(invalid(format!(
                "webhook timeout {} s: Kubernetes allows 1 to 30",
                a.timeout_seconds
            )));
        }
        check_secret_name("webhook secret", a.secret.as_deref())?;
    }
    if !is_dns_label(&o.name, MAX_NAME) {
        return Err(invalid(format!(
            "name {:?}: at most {MAX_NAME} lowercase letters, digits and '-', \
             starting and ending with a letter or digit",
            o.name
        )));
    }
    if !is_dns_label(&o.namespace, 63) {
        return Err(invalid(format!(
            "namespace {:?} is not a Kubernetes namespace name",
            o.namespace
        )));
    }
    if o.image.is_empty() || !o.image.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "image {:?} is not an image reference",
            o.image
        )));
    }
    if o.version.is_empty()
        || o.version.len() > 63
        || !o
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(invalid(format!(
            "version {:?} is not a label value",
            o.version
        )));
    }
    if o.replicas == 0 {
        return Err(invalid("replicas: at least 1".to_owned()));
    }
    match &o.storage {
        Storage::Volume { size, class } => {
            if o.replicas > 1 {
                return Err(invalid(format!(
                    "{} replicas need PostgreSQL and an S3 bucket (--s3-bucket and the \
                     database Secret): the volume and SQLite serve one replica",
                    o.replicas
                )));
            }
            if !is_quantity(size) {
                return Err(invalid(format!(
                    "storage size {size:?} is not a quantity (10Gi)"
                )));
            }
            if let Some(c) = class
                && !is_dns_subdomain(c)
            {
                return Err(invalid(format!("storage class {c:?} is not a class name")));
            }
        }
        Storage::External {
            database_secret,
            s3,
        } => {
            check_secret_name("database secret", database_secret.as_deref())?;
            check_secret_name("S3 secret", s3.secret.as_deref())?;
            if s3.bucket.is_empty()
                || !s3
                    .bucket
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            {
                return Err(invalid(format!(
                    "S3 bucket {:?} is not a bucket name",
                    s3.bucket
                )));
            }
            if let Some(e) = &s3.endpoint
                && !is_http_url(e)
            {
                return Err(invalid(format!("S3 endpoint {e:?} is not an http(s) URL")));
            }
            if let Some(r) = &s3.region
                && (r.is_empty()
                    || !r
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'))
            {
                return Err(invalid(format!("S3 region {r:?} is not a region name")));
            }
            if !s3.prefix.chars().all(|c| c.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "S3 prefix {:?}: printable ASCII only",
                    s3.prefix
                )));
            }
        }
    }
    if let Some(u) = &o.public_url
        && !is_http_url(u)
    {
        return Err(invalid(format!("public URL {u:?} is not an http(s) URL")));
    }
    check_secret_name("TLS secret", o.tls_secret.as_deref())?;
    check_secret_name("admin secret", o.admin_secret.as_deref())?;
    for s in &o.image_pull_secrets {
        check_secret_name("image pull secret", Some(s))?;
    }
    for (what, q) in [
        ("CPU request", &o.cpu_request),
        ("memory request", &o.memory_request),
    ]
    .into_iter()
    .chain(o.memory_limit.iter().map(|l| ("memory limit", l)))
    {
        if !is_quantity(q) {
            return Err(invalid(format!("{what} {q:?} is not a quantity")));
        }
    }
    if let Some(bad) = o
        .allow_from
        .iter()
        .chain(&o.trusted_proxies)
        .find(|c| !is_cidr(c))
    {
        return Err(invalid(format!("{bad:?} is not a CIDR (10.0.0.0/8)")));
    }
    Ok(())
}

// ---- names ----

fn config_map_name(o: &Options) -> String {
    format!("{}-config", o.name)
}

fn data_claim_name(o: &Options) -> String {
    format!("{}-data", o.name)
}

fn admin_secret(o: &Options) -> String {
    o.admin_secret
        .clone()
        .unwrap_or_else(|| format!("{}-admin", o.name))
}

fn database_secret(o: &Options, given: Option<&String>) -> String {
    given
        .cloned()
        .unwrap_or_else(|| format!("{}-database", o.name))
}

fn s3_secret(o: &Options, s3: &S3) -> String {
    s3.secret
        .clone()
        .unwrap_or_else(|| format!("{}-s3", o.name))
}

fn secrets(o: &Options) -> Vec<SecretRef> {
    let mut out = Vec::new();
    if let Storage::External {
        database_secret: db,
        s3,
    } = &o.storage
    {
        out.push(SecretRef {
            namespace: None,
            name: database_secret(o, db.as_ref()),
            keys: vec!["url"],
            tls: false,
            optional: false,
            purpose: "the PostgreSQL URL (postgres://user:password@host:5432/db)",
        });
        out.push(SecretRef {
            namespace: None,
            name: s3_secret(o, s3),
            keys: vec!["access-key-id", "secret-access-key"],
            tls: false,
            optional: false,
            purpose: "the S3 credentials",
        });
    }
    out.push(SecretRef {
        namespace: None,
        name: admin_secret(o),
        keys: vec!["password"],
        tls: false,
        optional: true,
        purpose: "the first admin's password (without it one is generated and logged once)",
    });
    if let Some(t) = &o.tls_secret {
        out.push(SecretRef {
            namespace: None,
            name: t.clone(),
            keys: vec!["tls.crt", "tls.key"],
            tls: true,
            optional: false,
            purpose: "the certificate chain and key Berth serves HTTPS with",
        });
    }
    if let Some(a) = &o.admission
        && a.tls.is_none()
    {
        out.push(SecretRef {
            namespace: None,
            name: webhook_secret(o, a),
            keys: vec!["tls.crt", "tls.key"],
            tls: true,
            optional: false,
            purpose: "the webhook certificate (for <name>-webhook.<namespace>.svc, signed by the --webhook-ca CA)",
        });
    }
    if o.node_agent.is_some() {
        out.push(SecretRef {
            namespace: None,
            name: p2p_secret(o),
            keys: vec!["bootstrap-token", "ticket.key", "ca.key"],
            tls: false,
            optional: false,
            purpose: "node-local sharing: the agents' bootstrap token (at least 16 characters) the ticket signing key (`berth p2p generate-key ticket.key`) and the CA key of agent-to-agent TLS (`berth p2p generate-key --ca ca.key`); use --from-file for the keys",
        });
        out.push(SecretRef {
            namespace: Some(node_namespace(o)),
            name: node_secret(o),
            keys: vec!["bootstrap-token"],
            tls: false,
            optional: false,
            purpose: "the same bootstrap token, for the node agents",
        });
    }
    out
}

/// A `kubernetes.io/tls` Secret holding `tls`.
pub fn tls_secret(name: &str, namespace: &str, labels: Value, tls: &WebhookTls) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {
            "tls.crt": base64(tls.cert_pem.as_bytes()),
            "tls.key": base64(tls.key_pem.as_bytes()),
        },
    })
}

fn webhook_secret(o: &Options, a: &Admission) -> String {
    a.secret
        .clone()
        .unwrap_or_else(|| format!("{}-webhook-tls", o.name))
}

fn webhook_service_name(o: &Options) -> String {
    format!("{}-webhook", o.name)
}

/// Webhook configurations are cluster-scoped: the namespace keeps two installs apart.
fn webhook_configuration_name(o: &Options) -> String {
    format!("{}-{}-admission", o.namespace, o.name)
}

// ---- berth.toml ----

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn berth_toml(o: &Options) -> String {
    let mut t = String::new();
    let mut line = |s: &str| {
        t.push_str(s);
        t.push('\n');
    };
    line(&format!(
        "# Rendered by `berth k8s manifests` (berth {}). Secrets are not in this file: the",
        o.version
    ));
    line("# pods take them from Kubernetes Secrets (environment variables, TLS files).");
    line(&format!(
        "listen = {}",
        toml_str(&format!("0.0.0.0:{PORT}"))
    ));
    line(&format!("data_dir = {}", toml_str(DATA_DIR)));
    if let Some(u) = &o.public_url {
        line(&format!("public_url = {}", toml_str(u)));
    }
    line("");
    line("[auth]");
    line("enabled = true");
    if o.tls_secret.is_some() {
        line("");
        line("[tls]");
        line(&format!(
            "cert_file = {}",
            toml_str(&format!("{TLS_DIR}/tls.crt"))
        ));
        line(&format!(
            "key_file = {}",
            toml_str(&format!("{TLS_DIR}/tls.key"))
        ));
    }
    if o.tls_secret.is_none() || !o.trusted_proxies.is_empty() {
        line("");
        line("[security]");
        if o.tls_secret.is_none() {
            line("# TLS ends in front of Berth (an ingress); authentication stays on.");
            line("allow_insecure_http = true");
        }
        if !o.trusted_proxies.is_empty() {
            line("# The ingress: its X-Forwarded-For names the client.");
            let list: Vec<String> = o.trusted_proxies.iter().map(|c| toml_str(c)).collect();
            line(&format!("trusted_proxies = [{}]", list.join(", ")));
        }
    }
    line("");
    line("[storage]");
    match &o.storage {
        Storage::Volume { .. } => {
            line("# Blobs and the SQLite database: data_dir, on the PersistentVolumeClaim.");
            line("kind = \"fs\"");
        }
        Storage::External { s3, .. } => {
            line("# Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret.");
            line("kind = \"s3\"");
            line(&format!("bucket = {}", toml_str(&s3.bucket)));
            if let Some(e) = &s3.endpoint {
                line(&format!("endpoint = {}", toml_str(e)));
            }
            if let Some(r) = &s3.region {
                line(&format!("region = {}", toml_str(r)));
            }
            if !s3.prefix.is_empty() {
                line(&format!("prefix = {}", toml_str(&s3.prefix)));
            }
            if s3.path_style {
                line("path_style = true");
            }
        }
    }
    if o.admission.is_some() {
        line("");
        line("# The admission webhooks, for the API server only. Rules: [[admission.rule]]");
        line("# tables here, or PUT /api/v1/admission (in force on every replica).");
        line("[admission]");
        line(&format!(
            "listen = {}",
            toml_str(&format!("0.0.0.0:{WEBHOOK_PORT}"))
        ));
        line(&format!(
            "cert_file = {}",
            toml_str(&format!("{WEBHOOK_TLS_DIR}/tls.crt"))
        ));
        line(&format!(
            "key_file = {}",
            toml_str(&format!("{WEBHOOK_TLS_DIR}/tls.key"))
        ));
    }
    if o.node_agent.is_some() {
        line("");
        line("# Node-local sharing: the agents' bootstrap token in BERTH_P2P_BOOTSTRAP_TOKEN");
        line("# and the ticket and CA keys, all from a Secret (every replica signs with the");
        line("# same keys). `off` lists tenants or repositories whose pulls are never shared.");
        line("[p2p]");
        line("enabled = true");
        line(&format!(
            "key_file = {}",
            toml_str(&format!("{P2P_DIR}/ticket.key"))
        ));
        line(&format!(
            "ca_key_file = {}",
            toml_str(&format!("{P2P_DIR}/ca.key"))
        ));
        line("off = []");
    }
    if o.gc_interval_secs > 0 {
        line("");
        line("[gc]");
        line(&format!("interval_secs = {}", o.gc_interval_secs));
    }
    line("");
    line("[log]");
    line("format = \"json\"");
    t
}

// ---- resources ----

fn selector_labels(o: &Options) -> Value {
    json!({
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": o.name,
    })
}

fn labels(o: &Options) -> Value {
    let mut l = selector_labels(o);
    l["app.kubernetes.io/version"] = Value::from(o.version.clone());
    l["app.kubernetes.io/component"] = Value::from("registry");
    l
}

fn metadata(o: &Options, name: &str) -> Value {
    json!({"name": name, "namespace": o.namespace, "labels": labels(o)})
}

fn namespace(o: &Options) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": o.namespace,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    })
}

fn service_account(o: &Options) -> Value {
    // Berth never calls the Kubernetes API: no token in its pods.
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(o, &o.name),
        "automountServiceAccountToken": false,
    })
}

fn config_map(o: &Options, config: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(o, &config_map_name(o)),
        "data": {"berth.toml": config},
    })
}

fn claim(o: &Options, size: &str, class: Option<&str>) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(c) = class {
        spec["storageClassName"] = Value::from(c);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(o, &data_claim_name(o)),
        "spec": spec,
    })
}

fn service(o: &Options) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(o, &o.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(o),
            "ports": [{
                "name": PORT_NAME,
                "port": PORT,
                "targetPort": PORT_NAME,
                "protocol": "TCP",
            }],
        },
    })
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> Value {
    let mut r = json!({"name": secret, "key": key});
    if optional {
        r["optional"] = Value::Bool(true);
    }
    json!({"name": name, "valueFrom": {"secretKeyRef": r}})
}

fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn resources(o: &Options) -> Value {
    let mut r = json!({
        "requests": {"cpu": o.cpu_request, "memory": o.memory_request},
    });
    if let Some(l) = &o.memory_limit {
        r["limits"] = json!({"memory": l});
    }
    r
}

fn probe(o: &Options, path: &str, period: u32, failures: u32) -> Value {
    let scheme = if o.tls_secret.is_some() {
        "HTTPS"
    } else {
        "HTTP"
    };
    json!({
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": scheme},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    })
}

fn mounts(o: &Options) -> Vec<Value> {
    let mut m = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "data", "mountPath": DATA_DIR}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    if o.tls_secret.is_some() {
        m.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
    }
    if o.admission.is_some() {
        m.push(json!({"name": "webhook-tls", "mountPath": WEBHOOK_TLS_DIR, "readOnly": true}));
    }
    if o.node_agent.is_some() {
        m.push(json!({"name": "p2p", "mountPath": P2P_DIR, "readOnly": true}));
    }
    m
}

fn config_arg() -> String {
    format!("{CONFIG_DIR}/berth.toml")
}

fn deployment(o: &Options, config: &str) -> Value {
    let mut env = Vec::new();
    let mut init_env = Vec::new();
    if let Storage::External {
        database_secret: db,
        s3,
    } = &o.storage
    {
        let db = database_secret(o, db.as_ref());
        let url = secret_env("BERTH_METADATA_URL", &db, "url", false);
        init_env.push(url.clone());
        env.push(url);
        let s3s = s3_secret(o, s3);
        env.push(secret_env(
            "AWS_ACCESS_KEY_ID",
            &s3s,
            "access-key-id",
            false,
        ));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &s3s,
            "secret-access-key",
            false,
        ));
    }
    env.push(secret_env(
        "BERTH_ADMIN_PASSWORD",
        &admin_secret(o),
        "password",
        true,
    ));
    if o.node_agent.is_some() {
        env.push(secret_env(
            "BERTH_P2P_BOOTSTRAP_TOKEN",
            &p2p_secret(o),
            "bootstrap-token",
            false,
        ));
    }

    let mut ports = vec![json!({"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"})];
    if o.admission.is_some() {
        ports.push(
            json!({"name": WEBHOOK_PORT_NAME, "containerPort": WEBHOOK_PORT, "protocol": "TCP"}),
        );
    }
    let container = json!({
        "name": "berth",
        "image": o.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve", "--config", config_arg()],
        "env": env,
        "ports": ports,
        // Schema migrations run before the port opens: give a first start two minutes.
        "startupProbe": probe(o, "/healthz", 2, 60),
        // Liveness asks only whether the process answers: a database outage must make
        // pods unready, not restart them all.
        "livenessProbe": probe(o, "/healthz", 10, 3),
        "readinessProbe": probe(o, "/readyz", 5, 2),
        "resources": resources(o),
        "securityContext": container_security(),
        "volumeMounts": mounts(o),
    });

    let data = match &o.storage {
        Storage::Volume { .. } => {
            json!({"name": "data", "persistentVolumeClaim": {"claimName": data_claim_name(o)}})
        }
        // Nothing a replica keeps outlives it: the generated admin password (if any) and
        // an empty directory `serve` insists on.
        Storage::External { .. } => json!({"name": "data", "emptyDir": {}}),
    };
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": config_map_name(o)}}),
        data,
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    if let Some(t) = &o.tls_secret {
        volumes.push(json!({"name": "tls", "secret": {"secretName": t}}));
    }
    if let Some(a) = &o.admission {
        volumes
            .push(json!({"name": "webhook-tls", "secret": {"secretName": webhook_secret(o, a)}}));
    }
    if o.node_agent.is_some() {
        volumes.push(json!({"name": "p2p", "secret": {
            "secretName": p2p_secret(o),
            "items": [
                {"key": "ticket.key", "path": "ticket.key"},
                {"key": "ca.key", "path": "ca.key"},
            ],
        }}));
    }

    let mut pod = Map::new();
    pod.insert("serviceAccountName".into(), Value::from(o.name.clone()));
    pod.insert("automountServiceAccountToken".into(), Value::Bool(false));
    // Service links would put `<SERVICE>_PORT`-style variables of every Service in the
    // namespace into Berth's environment, where BERTH_* names are configuration.
    pod.insert("enableServiceLinks".into(), Value::Bool(false));
    pod.insert(
        "securityContext".into(),
        json!({
            "runAsNonRoot": true,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
    );
    // In-flight uploads get time to finish after SIGTERM.
    pod.insert("terminationGracePeriodSeconds".into(), Value::from(60));
    if !o.image_pull_secrets.is_empty() {
        pod.insert(
            "imagePullSecrets".into(),
            o.image_pull_secrets
                .iter()
                .map(|s| json!({"name": s}))
                .collect(),
        );
    }
    if let Storage::External { .. } = &o.storage {
        pod.insert(
            "initContainers".into(),
            json!([{
                "name": "migrate",
                "image": o.image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["migrate", "--config", config_arg()],
                "env": init_env,
                "resources": resources(o),
                "securityContext": container_security(),
                "volumeMounts": mounts(o),
            }]),
        );
    }
    pod.insert("containers".into(), json!([container]));
    pod.insert("volumes".into(), Value::Array(volumes));
    if o.replicas > 1 {
        // Zones first, then nodes; ScheduleAnyway, so a small cluster still runs every
        // replica. Only the current ReplicaSet's pods count (pod-template-hash), so a
        // rollout does not skew the spread.
        let spread = |key: &str| {
            json!({
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(o)},
                "matchLabelKeys": ["pod-template-hash"],
            })
        };
        pod.insert(
            "topologySpreadConstraints".into(),
            json!([
                spread("topology.kubernetes.io/zone"),
                spread("kubernetes.io/hostname")
            ]),
        );
    }

    let strategy = match &o.storage {
        // One volume, one SQLite writer: the old pod goes before the new one starts.
        Storage::Volume { .. } => json!({"type": "Recreate"}),
        Storage::External { .. } => json!({
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }),
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(o, &o.name),
        "spec": {
            "replicas": o.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(o)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": labels(o),
                    // A changed berth.toml rolls the pods (a mounted ConfigMap changes in
                    // place, but Berth reads its configuration once, at start).
                    "annotations": {"checksum/config": hex::encode(Sha256::digest(config))},
                },
                "spec": pod,
            },
        },
    })
}

fn node_namespace_object(o: &Options) -> Value {
    let mut l = labels(o);
    l["app.kubernetes.io/component"] = Value::from("node-agent");
    // The explicit exception to the restricted defaults: host network (a listener on the
    // node's loopback for containerd, and the node's address towards the registry and
    // peers), two host paths (containerd's certs.d, the spool) and containerd's socket
    // (the content service, read only by the agent, but the socket grants containerd's
    // whole API: root on the node).
    l["pod-security.kubernetes.io/enforce"] = Value::from("privileged");
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": node_namespace(o), "labels": l},
    })
}

fn node_daemon_set(o: &Options, n: &NodeAgent) -> Value {
    let mut l = labels(o);
    l["app.kubernetes.io/component"] = Value::from("node-agent");
    let mut sel = selector_labels(o);
    sel["app.kubernetes.io/component"] = Value::from("node-agent");
    let central = n
        .central_url
        .clone()
        .or_else(|| o.public_url.clone())
        .unwrap_or_default();
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let container = json!({
        "name": "agent",
        "image": o.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "node",
            "--central", central,
            "--registry-host", n.registry_host,
            "--listen", format!("127.0.0.1:{NODE_MIRROR_PORT}"),
            "--peer-listen", format!("0.0.0.0:{NODE_PEER_PORT}"),
            "--spool", "/var/lib/berth-node",
            "--serve-mbit", n.serve_mbit.to_string(),
            "--containerd-socket", "/run/containerd/containerd.sock",
            "--containerd-namespace", "k8s.io",
        ],
        "env": [
            field("NODE_NAME", "spec.nodeName"),
            field("NODE_IP", "status.hostIP"),
            secret_env("BERTH_P2P_BOOTSTRAP_TOKEN", &node_secret(o), "bootstrap-token", false),
        ],
        "ports": [{"name": "peers", "containerPort": NODE_PEER_PORT, "hostPort": NODE_PEER_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        // Root only to write into containerd's root-owned certs.d and the spool and to
        // connect to containerd's root-owned socket (as its owner, so no capability is
        // needed); every capability dropped, no escalation, a read-only root filesystem.
        "securityContext": {
            "runAsNonRoot": false,
            "runAsUser": 0,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "certs-d", "mountPath": "/etc/containerd/certs.d"},
            {"name": "spool", "mountPath": "/var/lib/berth-node"},
            {"name": "containerd-sock", "mountPath": "/run/containerd/containerd.sock"},
        ],
    });
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": format!("{}-node", o.name), "namespace": node_namespace(o), "labels": l},
        "spec": {
            "selector": {"matchLabels": sel},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": l},
                "spec": {
                    "hostNetwork": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "containers": [container],
                    "volumes": [
                        {"name": "certs-d", "hostPath": {"path": "/etc/containerd/certs.d", "type": "DirectoryOrCreate"}},
                        {"name": "spool", "hostPath": {"path": "/var/lib/berth-node", "type": "DirectoryOrCreate"}},
                        {"name": "containerd-sock", "hostPath": {"path": "/run/containerd/containerd.sock", "type": "Socket"}},
                    ],
                },
            },
        },
    })
}

fn disruption_budget(o: &Options) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(o, &o.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(o)},
        },
    })
}

fn network_policy(o: &Options) -> Value {
    let mut rule = json!({"ports": [{"port": PORT_NAME, "protocol": "TCP"}]});
    if !o.allow_from.is_empty() {
        rule["from"] = o
            .allow_from
            .iter()
            .map(|c| json!({"ipBlock": {"cidr": c}}))
            .collect();
    }
    let mut rules = vec![rule];
    if o.admission.is_some() {
        // The API server's address is the cluster's business (a control plane outside
        // the pod network, often): the webhook port is open to every source; only the
        // API server holds the CA bundle it trusts.
        rules.push(json!({"ports": [{"port": WEBHOOK_PORT_NAME, "protocol": "TCP"}]}));
    }
    // Ingress only: Berth calls out to PostgreSQL, S3, upstream registries and webhook
    // receivers, whose addresses only the operator knows.
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(o, &o.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(o)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    })
}

fn webhook_service(o: &Options) -> Value {
    let mut meta = metadata(o, &webhook_service_name(o));
    meta["labels"]["app.kubernetes.io/component"] = Value::from("admission");
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(o),
            "ports": [{
                "name": "https",
                "port": 443,
                "targetPort": WEBHOOK_PORT_NAME,
                "protocol": "TCP",
            }],
        },
    })
}

/// Every kind that carries a pod spec, and the subresource `kubectl debug` uses.
fn webhook_rules() -> Value {
    let ops = json!(["CREATE", "UPDATE"]);
    json!([
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ops,
         "resources": ["pods", "pods/ephemeralcontainers", "podtemplates", "replicationcontrollers"],
         "scope": "Namespaced"},
        {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ops,
         "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
         "scope": "Namespaced"},
        {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ops,
         "resources": ["jobs", "cronjobs"],
         "scope": "Namespaced"},
    ])
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn webhook_configuration(o: &Options, a: &Admission, mutating: bool) -> Value {
    let (kind, what, path) = if mutating {
        ("MutatingWebhookConfiguration", "mutate", "/mutate")
    } else {
        ("ValidatingWebhookConfiguration", "validate", "/validate")
    };
    let mut hook = json!({
        "name": format!("{what}.{}.{}.svc", o.name, o.namespace),
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": a.failure_policy,
        "timeoutSeconds": a.timeout_seconds,
        "matchPolicy": "Equivalent",
        "clientConfig": {
            "service": {
                "name": webhook_service_name(o),
                "namespace": o.namespace,
                "path": path,
                "port": 443,
            },
            "caBundle": base64(a.ca_pem.as_bytes()),
        },
        "rules": webhook_rules(),
        // Berth's own pods must start when Berth is down, and so must the control plane.
        "namespaceSelector": {
            "matchExpressions": [{
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", o.namespace],
            }],
        },
    });
    if mutating {
        // Sidecars a later webhook adds are mutated too.
        hook["reinvocationPolicy"] = Value::from("IfNeeded");
    }
    let mut meta = json!({"name": webhook_configuration_name(o), "labels": labels(o)});
    meta["labels"]["app.kubernetes.io/component"] = Value::from("admission");
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "webhooks": [hook],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_agents_are_a_daemon_set_in_a_namespace_of_their_own() {
        let o = Options {
            public_url: Some("https://registry.example.com".into()),
            node_agent: Some(NodeAgent {
                registry_host: "registry.example.com".into(),
                central_url: None,
                serve_mbit: 200,
            }),
            ..Options::new("registry.example.com/berth:0.1.0", "0.1.0")
        };
        let install = render(&o).expect("renders");
        let find = |kind: &str, name: &str| {
            install
                .resources
                .iter()
                .find(|r| r.kind == kind && r.name == name)
                .unwrap_or_else(|| panic!("{kind} {name}"))
                .value
                .clone()
        };
        let ns = find("Namespace", "berth-node");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "privileged"
        );
        // The registry's own namespace stays restricted.
        let reg = find("Namespace", "berth");
        assert_eq!(
            reg["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        let ds = find("DaemonSet", "berth-node");
        assert_eq!(ds["metadata"]["namespace"], "berth-node");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).expect(flag) + 1];
        assert_eq!(after("--listen"), "127.0.0.1:5050");
        assert_eq!(after("--central"), "https://registry.example.com");
        assert_eq!(after("--registry-host"), "registry.example.com");
        assert_eq!(after("--serve-mbit"), "200");
        let sc = &pod["containers"][0]["securityContext"];
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert!(install.config.contains("[p2p]\nenabled = true\n"));
        let dep = find("Deployment", "berth");
        let env = dep["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(env.contains("BERTH_P2P_BOOTSTRAP_TOKEN"));
        let names: Vec<(&str, Option<&str>)> = install
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.namespace.as_deref()))
            .collect();
        assert!(names.contains(&("berth-p2p", None)));
        assert!(names.contains(&("berth-node", Some("berth-node"))));
        // Without it: none of this.
        let plain =
            render(&Options::new("registry.example.com/berth:0.1.0", "0.1.0")).expect("renders");
        assert!(!plain.resources.iter().any(|r| r.kind == "DaemonSet"));
        assert!(!plain.config.contains("[p2p]"));
    }

    #[test]
    fn a_made_webhook_certificate_is_a_resource_and_its_ca_the_bundle() {
        let rng = ring::rand::SystemRandom::new();
        let pki = crate::cert::webhook_pki("berth", "berth", 30, 1_800_000_000, &rng).expect("pki");
        let o = Options {
            admission: Some(Admission {
                tls: Some(WebhookTls {
                    cert_pem: pki.cert_pem.clone(),
                    key_pem: pki.key_pem.clone(),
                }),
                ..Admission::new(pki.ca_pem.clone())
            }),
            ..Options::new("registry.example.com/berth:0.1.0", "0.1.0")
        };
        let install = render(&o).expect("renders");
        let secret = install
            .resources
            .iter()
            .find(|r| r.kind == "Secret")
            .expect("the Secret is rendered");
        assert_eq!(secret.name, "berth-webhook-tls");
        assert_eq!(secret.value["type"], "kubernetes.io/tls");
        assert_eq!(
            secret.value["data"]["tls.crt"],
            base64(pki.cert_pem.as_bytes())
        );
        assert_eq!(
            secret.value["data"]["tls.key"],
            base64(pki.key_pem.as_bytes())
        );
        // Before the Deployment that mounts it.
        let at = |k: &str| install.resources.iter().position(|r| r.kind == k);
        assert!(at("Secret") < at("Deployment"));
        assert!(
            install
                .secrets
                .iter()
                .all(|s| s.name != "berth-webhook-tls"),
            "not one to create by hand"
        );
        for r in install
            .resources
            .iter()
            .filter(|r| r.kind.ends_with("WebhookConfiguration"))
        {
            assert_eq!(
                r.value["webhooks"][0]["clientConfig"]["caBundle"],
                base64(pki.ca_pem.as_bytes())
            );
        }
    }

    #[test]
    fn base64_is_standard() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    fn external() -> Options {
        Options {
            replicas: 3,
            storage: Storage::External {
                database_secret: None,
                s3: S3 {
                    bucket: "registry".into(),
                    endpoint: None,
                    region: None,
                    prefix: String::new(),
                    path_style: false,
                    secret: None,
                },
            },
            ..Options::new("registry.example.com/berth:0.1.0", "0.1.0")
        }
    }

    #[test]
    fn several_replicas_need_postgres_and_s3() {
        let o = Options {
            replicas: 2,
            ..Options::new("i", "0.1.0")
        };
        let e = render(&o).expect_err("two replicas on one volume");
        assert!(e.to_string().contains("PostgreSQL"), "{e}");
        assert!(render(&external()).is_ok());
    }

    #[test]
    fn bad_options_are_refused_naming_the_option() {
        let cases: Vec<(Options, &str)> = vec![
            (
                Options {
                    name: "Berth".into(),
                    ..external()
                },
                "name",
            ),
            (
                Options {
                    name: "a".repeat(41),
                    ..external()
                },
                "name",
            ),
            (
                Options {
                    namespace: "-x".into(),
                    ..external()
                },
                "namespace",
            ),
            (
                Options {
                    image: "a b".into(),
                    ..external()
                },
                "image",
            ),
            (
                Options {
                    replicas: 0,
                    ..external()
                },
                "replicas",
            ),
            (
                Options {
                    public_url: Some("registry.example.com".into()),
                    ..external()
                },
                "public URL",
            ),
            (
                Options {
                    tls_secret: Some("Tls".into()),
                    ..external()
                },
                "TLS secret",
            ),
            (
                Options {
                    cpu_request: "lots".into(),
                    ..external()
                },
                "CPU request",
            ),
            (
                Options {
                    memory_limit: Some("1.Gi".into()),
                    ..external()
                },
                "memory limit",
            ),
            (
                Options {
                    trusted_proxies: vec!["ingress".into()],
                    ..external()
                },
                "CIDR",
            ),
            (
                Options {
                    allow_from: vec!["10.0.0.0/33".into()],
                    ..external()
                },
                "CIDR",
            ),
            (
                Options {
                    storage: Storage::Volume {
                        size: "10 Gi".into(),
                        class: None,
                    },
                    replicas: 1,
                    ..external()
                },
                "storage size",
            ),
        ];
        for (o, what) in cases {
            let e = render(&o).expect_err(what).to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn quantities_and_cidrs() {
        for q in ["250m", "1", "1.5", "128Mi", "10Gi", "2G"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "m", "1.", ".5", "1.2.3", "10 Gi", "10gi", "-1"] {
            assert!(!is_quantity(q), "{q}");
        }
        assert!(is_cidr("10.0.0.0/8") && is_cidr("fd00::/8") && is_cidr("1.2.3.4/32"));
        assert!(!is_cidr("10.0.0.0") && !is_cidr("10.0.0.0/33") && !is_cidr("x/8"));
    }

    #[test]
    fn no_secret_value_is_ever_rendered() {
        // The options carry only Secret names; every variable that holds a credential
        // comes from a secretKeyRef.
        let install = render(&external()).expect("renders");
        assert!(install.resources.iter().all(|r| r.kind != "Secret"));
        let deployment = &install
            .resources
            .iter()
            .find(|r| r.kind == "Deployment")
            .expect("a Deployment")
            .value;
        let spec = &deployment["spec"]["template"]["spec"];
        let envs = spec["containers"][0]["env"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"][0]["env"].as_array())
            .flatten();
        let mut names = Vec::new();
        for e in envs {
            assert!(e.get("value").is_none(), "inlined: {e}");
            assert!(e["valueFrom"]["secretKeyRef"].is_object(), "{e}");
            names.push(e["name"].as_str().unwrap_or_default().to_owned());
        }
        for n in [
            "BERTH_METADATA_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "BERTH_ADMIN_PASSWORD",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing: {names:?}");
        }
        let secrets: Vec<&str> = install.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(secrets, ["berth-database", "berth-s3", "berth-admin"]);
    }

    #[test]
    fn toml_strings_escape_quotes_and_controls() {
        assert_eq!(toml_str("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }
}
