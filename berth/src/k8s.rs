//! `berth k8s`: the Kubernetes install (`manifests`, rendered by `berth-k8s`) and one pull
//! Secret per namespace (`pull-secrets`, robots from `berth_registry::access`).

use std::path::PathBuf;

use anyhow::Context;
use berth_k8s::{Options, S3, Storage};
use berth_registry::access::{self, PullRobot, cli_identity};
use clap::{Args, Subcommand};

use crate::open::StoreArgs;

#[derive(Subcommand)]
pub enum K8sCommand {
    /// Print the Kubernetes manifests of a Berth install (`| kubectl apply -f -`), or
    /// write them as a kustomize base. One replica keeps its data on a volume; with
    /// --s3-bucket, any number of replicas share PostgreSQL and S3. Secrets are only
    /// referred to: the names to create are listed on standard error.
    Manifests(Box<ManifestArgs>),
    /// Print one `kubernetes.io/dockerconfigjson` Secret per namespace, each with its own
    /// pull-only robot of the tenant (`k8s-<namespace>`). Robots that exist already are
    /// left alone (their namespaces keep the Secret they have) unless --rotate.
    PullSecrets {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        args: PullSecretArgs,
    },
    /// Make the admission webhooks' certificates, no openssl needed: a CA (ca.crt, for
    /// `manifests --admission --webhook-ca`), a serving certificate for
    /// `<name>-webhook.<namespace>.svc` (and `.svc.cluster.local`) with its key
    /// (tls.crt, tls.key), and secret.yaml, the `kubernetes.io/tls` Secret every replica
    /// mounts. The CA's key is not kept: run again to renew both.
    WebhookCert(WebhookCertArgs),
}

#[derive(Args)]
pub struct WebhookCertArgs {
    /// Prefix of every resource name, as given to `manifests --name`.
    #[arg(long, default_value = "berth")]
    name: String,
    #[arg(long, default_value = "berth")]
    namespace: String,
    /// The Secret's name (default: <name>-webhook-tls).
    #[arg(long)]
    secret: Option<String>,
    /// Days both certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Directory to write ca.crt, tls.crt, tls.key and secret.yaml into.
    #[arg(long)]
    out: PathBuf,
}

/// A CA and serving certificate for the webhooks of `name` in `namespace`.
fn make_pki(name: &str, namespace: &str, days: u32) -> anyhow::Result<berth_k8s::cert::WebhookPki> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let rng = ring::rand::SystemRandom::new();
    Ok(berth_k8s::cert::webhook_pki(
        name, namespace, days, now, &rng,
    )?)
}

#[derive(Args)]
pub struct ManifestArgs {
    /// Berth's image as the nodes pull it (`registry.example.com/berth:0.1.0`; see
    /// scripts/build-image.sh).
    #[arg(long)]
    image: String,
    /// Secrets the nodes need to pull --image (repeatable).
    #[arg(long = "image-pull-secret")]
    image_pull_secrets: Vec<String>,
    /// Prefix of every resource name.
    #[arg(long, default_value = "berth")]
    name: String,
    #[arg(long, default_value = "berth")]
    namespace: String,
    /// Leave the Namespace out (installing into one that exists; the manifests are
    /// written to pass its `restricted` Pod Security Standard all the same).
    #[arg(long)]
    no_namespace: bool,
    /// Replicas; more than one needs --s3-bucket (and PostgreSQL).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Node-local sharing: `[p2p]` on, and a DaemonSet of node agents (in
    /// <namespace>-node) writing containerd's hosts.toml for this registry host
    /// (`registry.example.com`).
    #[arg(long, value_name = "REGISTRY_HOST")]
    node_agent: Option<String>,
    /// Where the agents reach the registry (default: --public-url).
    #[arg(long, requires = "node_agent")]
    node_central_url: Option<String>,
    /// Megabits per second each agent serves to peers.
    #[arg(long, requires = "node_agent", default_value_t = 400)]
    node_serve_mbit: u64,
    /// One replica: the size of its PersistentVolumeClaim.
    #[arg(long, default_value = "10Gi")]
    storage_size: String,
    /// One replica: the StorageClass of the claim (default: the cluster's).
    #[arg(long)]
    storage_class: Option<String>,
    /// Blobs in this S3 bucket and metadata in PostgreSQL (the URL from the database
    /// Secret): any number of replicas, `berth migrate` as an init container.
    #[arg(long)]
    s3_bucket: Option<String>,
    /// S3 endpoint URL (default: AWS's for the region).
    #[arg(long, requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    #[arg(long, requires = "s3_bucket")]
    s3_region: Option<String>,
    /// Key prefix in the bucket (`berth/`).
    #[arg(long, requires = "s3_bucket", default_value = "")]
    s3_prefix: String,
    /// Bucket in the path, not the host name (MinIO, Ceph).
    #[arg(long, requires = "s3_bucket")]
    s3_path_style: bool,
    /// The Secret with `access-key-id` and `secret-access-key` (default: <name>-s3).
    #[arg(long, requires = "s3_bucket")]
    s3_secret: Option<String>,
    /// The Secret with the PostgreSQL `url` (default: <name>-database).
    #[arg(long, requires = "s3_bucket")]
    database_secret: Option<String>,
    /// The URL clients use (`https://registry.example.com`).
    #[arg(long)]
    public_url: Option<String>,
    /// A `kubernetes.io/tls` Secret: Berth serves HTTPS itself. Without it, TLS is
    /// expected to end in front of Berth (an ingress).
    #[arg(long)]
    tls_secret: Option<String>,
    /// The Secret with the first admin's `password` (default: <name>-admin; optional:
    /// without it a password is generated and logged once).
    #[arg(long)]
    admin_secret: Option<String>,
    /// Retention, eviction and garbage collection every this many seconds; 0: off.
    #[arg(long, default_value_t = 86_400)]
    gc_interval_secs: u64,
    #[arg(long, default_value = "250m")]
    cpu_request: String,
    #[arg(long, default_value = "256Mi")]
    memory_request: String,
    #[arg(long)]
    memory_limit: Option<String>,
    /// A CIDR allowed to reach the registry port (repeatable; default: every source, as
    /// kubelets pull from the nodes' addresses).
    #[arg(long)]
    allow_from: Vec<String>,
    /// An ingress's CIDR whose `X-Forwarded-For` names the client (repeatable;
    /// `[security] trusted_proxies`): without it, per-client limits see every client
    /// behind the ingress as one.
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// Write a kustomize base (one file per resource and kustomization.yaml) into this
    /// directory instead of printing.
    #[arg(long)]
    kustomize: Option<PathBuf>,
    /// Add the admission webhooks: their Service, the certificate Secret mounted in every
    /// replica, and the Validating and Mutating WebhookConfigurations. Without
    /// --webhook-ca, a CA and the webhook certificate are made here and the Secret is
    /// one of the resources (the output then holds its private key).
    #[arg(long)]
    admission: bool,
    /// PEM file of the CA that signed the webhook certificate (for
    /// `<name>-webhook.<namespace>.svc`; `berth k8s webhook-cert` makes one): the webhook
    /// configurations' caBundle. The Secret is then the operator's to create.
    #[arg(long, requires = "admission")]
    webhook_ca: Option<PathBuf>,
    /// Without --webhook-ca: days the made certificates are valid.
    #[arg(long, requires = "admission", default_value_t = 365)]
    webhook_cert_days: u32,
    /// The `kubernetes.io/tls` Secret with the webhook certificate (default:
    /// <name>-webhook-tls).
    #[arg(long, requires = "admission")]
    webhook_secret: Option<String>,
    /// What the API server does when Berth does not answer: Fail (nothing is admitted
    /// unjudged) or Ignore.
    #[arg(long, requires = "admission", default_value = "Fail")]
    webhook_failure_policy: String,
    /// Seconds the API server waits for an answer (1 to 30).
    #[arg(long, requires = "admission", default_value_t = 5)]
    webhook_timeout: u32,
}

impl ManifestArgs {
    fn options(self) -> anyhow::Result<Options> {
        let admission = match (&self.admission, &self.webhook_ca) {
            (true, Some(ca)) => Some(berth_k8s::manifests::Admission {
                ca_pem: std::fs::read_to_string(ca)
                    .with_context(|| format!("reading --webhook-ca {}", ca.display()))?,
                secret: self.webhook_secret.clone(),
                failure_policy: self.webhook_failure_policy.clone(),
                timeout_seconds: self.webhook_timeout,
                tls: None,
            }),
            (true, None) => {
                let pki = make_pki(&self.name, &self.namespace, self.webhook_cert_days)?;
                eprintln!(
                    "made a webhook CA and certificate for {} ({} days); the output holds the \
                     certificate's private key in a Secret: keep it as you keep Secrets",
                    pki.dns_names.join(", "),
                    self.webhook_cert_days
                );
                Some(berth_k8s::manifests::Admission {
                    ca_pem: pki.ca_pem,
                    secret: self.webhook_secret.clone(),
                    failure_policy: self.webhook_failure_policy.clone(),
                    timeout_seconds: self.webhook_timeout,
                    tls: Some(berth_k8s::manifests::WebhookTls {
                        cert_pem: pki.cert_pem,
                        key_pem: pki.key_pem,
                    }),
                })
            }
            _ => None,
        };
        let storage = match self.s3_bucket {
            Some(bucket) => Storage::External {
                database_secret: self.database_secret,
                s3: S3 {
                    bucket,
                    endpoint: self.s3_endpoint,
                    region: self.s3_region,
                    prefix: self.s3_prefix,
                    path_style: self.s3_path_style,
                    secret: self.s3_secret,
                },
            },
            None => Storage::Volume {
                size: self.storage_size,
                class: self.storage_class,
            },
        };
        Ok(Options {
            name: self.name,
            namespace: self.namespace,
            create_namespace: !self.no_namespace,
            image: self.image,
            image_pull_secrets: self.image_pull_secrets,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            replicas: self.replicas,
            storage,
            public_url: self.public_url,
            tls_secret: self.tls_secret,
            admin_secret: self.admin_secret,
            gc_interval_secs: self.gc_interval_secs,
            cpu_request: self.cpu_request,
            memory_request: self.memory_request,
            memory_limit: self.memory_limit,
            allow_from: self.allow_from,
            trusted_proxies: self.trusted_proxies,
            admission,
            node_agent: self
                .node_agent
                .map(|registry_host| berth_k8s::manifests::NodeAgent {
                    registry_host,
                    central_url: self.node_central_url,
                    serve_mbit: self.node_serve_mbit,
                }),
        })
    }
}

#[derive(Args)]
pub struct PullSecretArgs {
    /// The tenant whose images the Secrets pull.
    #[arg(long)]
    tenant: String,
    /// Namespaces to give a Secret (repeatable, or several after one flag).
    #[arg(long = "namespace", required = true, num_args = 1..)]
    namespaces: Vec<String>,
    /// Give the robots that exist already a new secret (and print their Secrets); each
    /// namespace's robot is its own, so no other namespace is affected.
    #[arg(long)]
    rotate: bool,
    /// Registry host as pods name it; default: from `public_url`, else the listen address.
    #[arg(long)]
    server: Option<String>,
    /// The Secrets' name (default: <tenant>-pull).
    #[arg(long)]
    secret_name: Option<String>,
}

pub async fn run(cmd: K8sCommand) -> anyhow::Result<()> {
    match cmd {
        K8sCommand::Manifests(args) => manifests(*args),
        K8sCommand::PullSecrets { store, args } => pull_secrets(&store, args).await,
        K8sCommand::WebhookCert(args) => webhook_cert(args),
    }
}

fn webhook_cert(args: WebhookCertArgs) -> anyhow::Result<()> {
    let secret = args
        .secret
        .clone()
        .unwrap_or_else(|| format!("{}-webhook-tls", args.name));
    if !berth_k8s::manifests::is_dns_subdomain(&secret) {
        anyhow::bail!("--secret {secret:?} is not a Kubernetes Secret name");
    }
    let pki = make_pki(&args.name, &args.namespace, args.days)?;
    let labels = serde_json::json!({
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": args.name,
        "app.kubernetes.io/component": "admission",
    });
    let tls = berth_k8s::manifests::WebhookTls {
        cert_pem: pki.cert_pem.clone(),
        key_pem: pki.key_pem.clone(),
    };
    let yaml = berth_k8s::yaml::to_yaml_stream(std::iter::once(&berth_k8s::manifests::tls_secret(
        &secret,
        &args.namespace,
        labels,
        &tls,
    )));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let write = |file: &str, text: &str, private: bool| -> anyhow::Result<()> {
        let path = args.out.join(file);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        let _ = private;
        let mut f = o
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    };
    write("ca.crt", &pki.ca_pem, false)?;
    write("tls.crt", &pki.cert_pem, false)?;
    write("tls.key", &pki.key_pem, true)?;
    write("secret.yaml", &yaml, true)?;
    eprintln!(
        "wrote ca.crt, tls.crt, tls.key and secret.yaml (Secret {secret}) to {}\n\
         certificate for {}, valid {} days\n\
         then: kubectl apply -f {}/secret.yaml and\n      \
         berth k8s manifests --admission --webhook-ca {}/ca.crt ...",
        args.out.display(),
        pki.dns_names.join(", "),
        args.days,
        args.out.display(),
        args.out.display(),
    );
    Ok(())
}

fn manifests(args: ManifestArgs) -> anyhow::Result<()> {
    let kustomize = args.kustomize.clone();
    let options = args.options()?;
    let install = berth_k8s::manifests::render(&options)?;
    match kustomize {
        None => print!("{}", install.to_yaml()),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, text) in install.kustomize_base() {
                let path = dir.join(&file);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("wrote a kustomize base to {}", dir.display());
        }
    }
    eprintln!(
        "\nThe manifests refer to these Secrets in namespace {}; create them first:",
        options.namespace
    );
    for s in &install.secrets {
        let ns = s.namespace.as_deref().unwrap_or(&options.namespace);
        let optional = if s.optional { " (optional)" } else { "" };
        eprintln!("  {}: {}{optional}", s.name, s.purpose);
        let how = if s.tls {
            format!(
                "kubectl -n {ns} create secret tls {} --cert=tls.crt --key=tls.key",
                s.name
            )
        } else {
            let keys: Vec<String> = s
                .keys
                .iter()
                .map(|k| format!("--from-literal={k}=..."))
                .collect();
            format!(
                "kubectl -n {ns} create secret generic {} {}",
                s.name,
                keys.join(" ")
            )
        };
        eprintln!("    {how}");
    }
    Ok(())
}

async fn pull_secrets(store: &StoreArgs, args: PullSecretArgs) -> anyhow::Result<()> {
    let secret_name = match args.secret_name {
        Some(n) => {
            if !berth_k8s::manifests::is_dns_subdomain(&n) {
                anyhow::bail!("--secret-name {n:?} is not a Kubernetes Secret name");
            }
            n
        }
        None => access::pull_secret_name(&args.tenant).with_context(|| {
            format!(
                "{}-pull is not a Kubernetes Secret name: give --secret-name",
                args.tenant
            )
        })?,
    };
    let (config, access) = store.access().await?;
    let server = crate::admin::server_name(&config, args.server);
    let robots = access
        .namespace_pull_robots(
            &cli_identity(),
            None,
            &args.tenant,
            &args.namespaces,
            args.rotate,
        )
        .await?;
    let mut secrets = Vec::new();
    for r in &robots {
        match &r.outcome {
            PullRobot::Created(c) | PullRobot::Rotated(c) => {
                let what = if matches!(r.outcome, PullRobot::Created(_)) {
                    "created"
                } else {
                    "rotated"
                };
                eprintln!("namespace {}: robot {} {what}", r.namespace, c.robot.login);
                secrets.push(access::pull_secret(
                    &secret_name,
                    Some(&r.namespace),
                    &server,
                    &c.robot.login,
                    &c.secret,
                ));
            }
            PullRobot::Kept(info) => {
                let disabled = if info.disabled { " (disabled!)" } else { "" };
                eprintln!(
                    "namespace {}: robot {}{disabled} exists; its Secret stays as it is \
                     (--rotate gives it a new one)",
                    r.namespace, info.login
                );
            }
        }
    }
    print!("{}", berth_k8s::yaml::to_yaml_stream(&secrets));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: K8sCommand,
    }

    fn rendered(args: &[&str]) -> berth_k8s::Install {
        let cli = Cli::try_parse_from(
            ["k8s", "manifests", "--image", "r.example/berth:1"]
                .iter()
                .chain(args),
        )
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let K8sCommand::Manifests(m) = cli.cmd else {
            panic!("not manifests")
        };
        let options = (*m).options().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        berth_k8s::manifests::render(&options).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn admission_manifests_configure_the_webhooks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let ca = ca.to_str().expect("utf-8").to_owned();
        let install = rendered(&[
            "--public-url",
            "https://r.example",
            "--admission",
            "--webhook-ca",
            &ca,
            "--webhook-failure-policy",
            "Ignore",
        ]);
        let kinds: Vec<&str> = install.resources.iter().map(|r| r.kind).collect();
        assert!(kinds.ends_with(&[
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration"
        ]));
        assert!(
            install
                .secrets
                .iter()
                .any(|s| s.name == "berth-webhook-tls" && s.tls)
        );
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, &install.config).expect("write");
        let config = Config::load(Some(&path)).expect("loads");
        assert_eq!(config.admission.listen.map(|l| l.port()), Some(8443));
        let tls = config
            .admission_tls()
            .expect("tls")
            .expect("the webhook certificate");
        assert_eq!(tls.cert, PathBuf::from("/etc/berth/webhook-tls/tls.crt"));
        assert_eq!(
            config.admission_settings().registry.as_deref(),
            Some("r.example")
        );
        // Without a CA, Berth makes one and the webhook certificate: the Secret holding it
        // is then a rendered resource, applied before the webhooks that trust its CA.
        let made = rendered(&["--admission"]);
        let kinds: Vec<&str> = made.resources.iter().map(|r| r.kind).collect();
        assert!(kinds.contains(&"Secret"), "{kinds:?}");
        assert!(kinds.ends_with(&[
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration"
        ]));
        // A bad failure policy is refused naming it.
        let cli = Cli::try_parse_from([
            "k8s",
            "manifests",
            "--image",
            "i",
            "--admission",
            "--webhook-ca",
            &ca,
            "--webhook-failure-policy",
            "Sometimes",
        ])
        .expect("parses");
        let K8sCommand::Manifests(m) = cli.cmd else {
            panic!("not manifests")
        };
        let Err(e) = berth_k8s::manifests::render(&(*m).options().expect("options")) else {
            panic!("a failure policy of Sometimes was rendered")
        };
        assert!(e.to_string().contains("failure policy"), "{e}");
    }

    /// The berth.toml each install puts in its ConfigMap is one this berth accepts, and
    /// starts with on the pod's network address: authentication on, and TLS or the
    /// explicit statement that it ends in front of Berth.
    #[test]
    fn rendered_configs_load_and_pass_protected_mode() {
        let cases: [(&[&str], &str); 5] = [
            (&[], "fs"),
            (
                &[
                    "--public-url",
                    "https://r.example",
                    "--node-agent",
                    "r.example",
                ],
                "fs",
            ),
            (
                &["--tls-secret", "t", "--public-url", "https://r.example"],
                "fs",
            ),
            (
                &[
                    "--replicas",
                    "3",
                    "--s3-bucket",
                    "b",
                    "--s3-region",
                    "eu-west-1",
                    "--trusted-proxy",
                    "10.42.0.0/16",
                    "--trusted-proxy",
                    "fd00::/8",
                ],
                "s3",
            ),
            (
                &[
                    "--replicas",
                    "2",
                    "--s3-bucket",
                    "b",
                    "--s3-endpoint",
                    "http://minio:9000",
                    "--s3-path-style",
                    "--s3-prefix",
                    "berth/",
                    "--tls-secret",
                    "t",
                    "--gc-interval-secs",
                    "0",
                ],
                "s3",
            ),
        ];
        for (args, kind) in cases {
            let install = rendered(args);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("berth.toml");
            std::fs::write(&path, &install.config).expect("write");
            let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(config.auth.enabled, "{args:?}");
            assert!(!config.listen.ip().is_loopback(), "{args:?}");
            assert_eq!(config.listen.port(), berth_k8s::PORT);
            assert_eq!(config.data_dir, PathBuf::from(berth_k8s::DATA_DIR));
            config
                .check_protected_mode(true)
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let tls = config.tls_settings().expect("tls settings").is_some();
            assert_eq!(tls, args.contains(&"--tls-secret"), "{args:?}");
            let storage = format!("{:?}", config.storage.kind).to_lowercase();
            assert_eq!(storage, kind, "{args:?}");
            if kind == "s3" {
                // The keys come from the Secret through the environment.
                let env = |k: &str| {
                    matches!(k, "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY")
                        .then(|| "from-the-secret".to_owned())
                };
                config.storage.s3_config(env).expect("S3 settings");
            }
            let proxies: Vec<&str> = args
                .windows(2)
                .filter(|w| w[0] == "--trusted-proxy")
                .map(|w| w[1])
                .collect();
            assert_eq!(config.security.trusted_proxies, proxies, "{args:?}");
            config.trusted_proxies().expect("trusted proxies parse");
            let gc = if args.contains(&"--gc-interval-secs") {
                0
            } else {
                86_400
            };
            assert_eq!(config.gc.interval_secs, gc, "{args:?}");
            assert_eq!(
                config.p2p.enabled,
                args.contains(&"--node-agent"),
                "{args:?}"
            );
        }
    }

    #[test]
    fn s3_options_need_the_bucket() {
        let e = Cli::try_parse_from([
            "k8s",
            "manifests",
            "--image",
            "i",
            "--s3-endpoint",
            "http://x",
        ])
        .err()
        .expect("refused");
        assert!(e.to_string().contains("--s3-bucket"), "{e}");
    }

    #[test]
    fn pull_secrets_take_several_namespaces() {
        let cli = Cli::try_parse_from([
            "k8s",
            "pull-secrets",
            "--tenant",
            "team-a",
            "--namespace",
            "a",
            "b",
            "--namespace",
            "c",
        ])
        .expect("parses");
        let K8sCommand::PullSecrets { args, .. } = cli.cmd else {
            panic!("not pull-secrets")
        };
        assert_eq!(args.namespaces, ["a", "b", "c"]);
        assert!(!args.rotate);
    }
}
