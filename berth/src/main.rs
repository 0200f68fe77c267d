//! `berth`: the command line. Reads the configuration, sets up logging, and hands the
//! work to the library crates.

mod admin;
mod config;
mod events;
mod fsck;
mod gc;
mod k8s;
mod keys;
mod layout;
mod listing;
mod logging;
mod migrate;
mod mirror;
mod open;
mod output;
mod p2p;
mod policy;
mod progress;
mod sbom;
mod versions;
mod vulns;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_meta::MetaStore;
use berth_registry::access::Access;
use berth_registry::{Registry, UpstreamConfig};
use berth_server::{AppState, AuthSettings, ChallengeKind, ServerConfig};
use clap::{Parser, Subcommand};

use crate::config::{Challenge, Config};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A container image registry for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(ServeArgs),
    /// Check stored blobs and manifests against the metadata (read-only; safe while
    /// `serve` runs). Exit code 0: clean, 1: something is missing or corrupt, 2: the check
    /// itself failed.
    Fsck(fsck::FsckArgs),
    /// Manage users (offline, against the data directory or database).
    User {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: admin::UserCommand,
    },
    /// Manage tenants and their members.
    Tenant {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: admin::TenantCommand,
    },
    /// Manage robot accounts.
    Robot {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: admin::RobotCommand,
    },
    /// Print a Kubernetes imagePullSecret (or .docker/config.json) for a tenant's robot.
    Secret {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: admin::SecretArgs,
    },
    /// Read the audit log.
    Audit {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: admin::AuditArgs,
    },
    /// Write images (all tags of a repository, a tag, or a digest) to an OCI image layout,
    /// verifying every blob's digest.
    Export {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: layout::ExportArgs,
    },
    /// Push the images of an OCI image layout (as written by `export`, skopeo or umoci)
    /// into the registry, verifying every blob's digest.
    Import {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: layout::ImportArgs,
    },
    /// Copy every blob from the current blob store to the one another configuration
    /// names (`[storage]`), verifying digests; resumable. Exit code 0: all copied, 1: some
    /// failed, 2: the run could not start.
    MigrateStorage(migrate::MigrateArgs),
    /// Fetch images from configured upstreams ahead of time: into the pull-through cache,
    /// or with --into into an ordinary repository. Resumable; prints a summary.
    Mirror {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: mirror::MirrorArgs,
    },
    /// Encryption at rest: key status, rotation, re-wrapping and retirement.
    Keys {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: keys::KeysCommand,
    },
    /// Seal every blob still stored as plaintext (after turning `[encryption]` on), beside
    /// serving replicas; resumable. Exit code 0: all sealed, 1: some could not be, 2: the
    /// run could not start.
    Encrypt {
        #[command(flatten)]
        store: open::StoreArgs,
    },
    /// Rotate the token signing key.
    RotateKey {
        #[command(flatten)]
        store: open::StoreArgs,
    },
    /// Collect garbage: delete unreachable manifests and blobs (online: serving replicas
    /// keep going). `--dry-run` prints what would go.
    Gc {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: gc::GcArgs,
    },
    /// Apply the `[[retention]]` policies and the upstreams' cache eviction limits (tags and
    /// cached manifests go; their bytes with the next `gc`). `--dry-run` prints what would go
    Retention {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: gc::RetentionArgs,
    },
    /// Apply the metadata schema migrations and exit (`serve` applies them at start too;
    /// run this first when rolling out a new version to many replicas).
    Migrate {
        #[command(flatten)]
        store: open::StoreArgs,
    },
    /// Which signatures REPO@DIGEST or REPO:TAG has, who signed, which rule they satisfy
    /// or exactly why not. Exit code 0: signed (or a signature itself), 1: not, 2: the
    /// check failed.
    Verify {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: policy::VerifyArgs,
    },
    /// An image's SBOM (CycloneDX or SPDX JSON) from its stored package catalog; exit 1
    /// when it is not cataloged (yet).
    Sbom {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: sbom::SbomArgs,
    },
    /// An image's known vulnerabilities, from its stored package catalog and the imported
    /// advisories (table or `--json`); exit 1 when it is not cataloged (yet).
    Scan {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(flatten)]
        args: vulns::ScanArgs,
    },
    /// Offline vulnerability advisories: `import` OSV, Debian tracker and Alpine secdb
    /// dumps, `status` of what was imported.
    Advisories {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: vulns::AdvisoriesCommand,
    },
    /// Policy rules: `check` judges every stored image as enforcing would, records the dry
    /// run, and changes nothing else.
    Policy {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: policy::PolicyCommand,
    },
    /// Tag history, rollback, semver listing and resolution (offline, as the admin `cli`).
    Tag {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: versions::TagCommand,
    },
    /// Webhook deliveries and replication copies: list queued and dead jobs, send them
    /// again (offline, as the admin `cli`).
    Events {
        #[command(flatten)]
        store: open::StoreArgs,
        #[command(subcommand)]
        cmd: events::EventsCommand,
    },
    /// The node agent of node-local sharing (one per node, a DaemonSet): a blob mirror for
    /// containerd on loopback, sharing layers with the other nodes' agents.
    Node(p2p::NodeArgs),
    /// Node-local sharing: the tracker's `status`, `generate-key` for `[p2p] key_file`.
    P2p {
        #[command(subcommand)]
        cmd: p2p::P2pCommand,
    },
    /// Berth on Kubernetes: the install manifests, pull Secrets per namespace.
    K8s {
        #[command(subcommand)]
        cmd: k8s::K8sCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, every default applies.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `listen` in the config.
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory; overrides `data_dir` in the config.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Metadata database URL; overrides `[metadata] url`.
    #[arg(long, env = "BERTH_METADATA_URL", hide_env_values = true)]
    metadata_url: Option<String>,
    /// PEM certificate chain to serve HTTPS with; overrides `[tls] cert_file`.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`; overrides `[tls] key_file`.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The `[[replicate]]` rules. Every command that pushes queues their copies; `serve` runs
/// them.
fn replication_rules(
    config: &Config,
) -> anyhow::Result<Vec<berth_registry::replicate::ReplicaRule>> {
    let mut rules = Vec::new();
    for r in &config.replicas {
        let host = r
            .url
            .split_once("://")
            .map_or(r.url.as_str(), |(_, h)| h)
            .trim_end_matches('/')
            .to_owned();
        let target = berth_upstream::Upstream::new(UpstreamConfig {
            username: r.username.clone(),
            password: r.password.clone(),
            ca_file: r.ca_file.clone(),
            ..UpstreamConfig::new(host, r.url.clone())
        })
        .with_context(|| format!("[[replicate]] to {}", r.url))?;
        rules.push(berth_registry::replicate::ReplicaRule {
            repositories: r.repositories.clone(),
            target: std::sync::Arc::new(target),
            prefix: r.prefix.clone(),
        });
    }
    Ok(rules)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(u) = args.metadata_url {
        config.metadata.url = Some(u);
    }
    if let Some(c) = args.tls_cert {
        config.tls.cert_file = Some(c);
    }
    if let Some(k) = args.tls_key {
        config.tls.key_file = Some(k);
    }
    logging::init(&config);
    let tls = config.tls_settings()?;
    let admission_tls = config.admission_tls()?;
    let auth_enabled = config.auth.enabled;
    config.check_protected_mode(auth_enabled)?;
    config.check_upstreams()?;
    config.retention()?;
    if let Some(settings) = &tls {
        // Fail before opening any store, naming the file at fault.
        berth_server::tls::check(settings).context("TLS certificate or key")?;
    }
    if let Some(settings) = &admission_tls {
        berth_server::tls::check(settings).context("[admission] webhook certificate or key")?;
    }
    let armed = berth_storage::failpoint::init()?;
    if !armed.is_empty() {
        tracing::warn!(failpoints = ?armed, "failpoints are armed: this server will fail on purpose");
    }

    let registry = open::open_registry(&config).await?;
    let p2p = match config.p2p.settings()? {
        Some(s) => Some(std::sync::Arc::new(
            berth_registry::p2p::P2p::open(
                s,
                registry.meta(),
                registry.encryption().map(|k| k.as_ref()),
            )
            .await
            .context("[p2p]")?,
        )),
        None => None,
    };
    let registry = registry.with_p2p(p2p);
    let meta = registry.meta().clone();
    let jobs = registry.start_jobs();
    registry
        .check_enforce_ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    registry
        .follow_other_replicas()
        .await
        .context("listening for other replicas' changes")?;
    {
        // Rules changed through another replica's API take effect here within seconds.
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                if let Err(e) = registry.reload_tag_rules().await {
                    tracing::warn!(error = %e, "reloading managed tag rules failed");
                }
                if let Err(e) = registry.reload_admission().await {
                    tracing::warn!(error = %e, "reloading managed admission rules failed");
                }
                if let Err(e) = registry.load_active_key().await {
                    tracing::warn!(error = %e, "reading the active encryption key failed");
                }
            }
        });
    }
    let auth = if config.auth.enabled {
        let key = open::read_key_file(&config)?;
        let access_config = berth_registry::access::AccessConfig {
            encryption: registry.encryption().cloned(),
            ..config.access_config()
        };
        let access = Access::new(meta.clone(), access_config, key)
            .await
            .context("setting up authentication")?;
        bootstrap_admin(&access, &config).await?;
        // Pick up key rotations made by other replicas or the CLI.
        let reload = access.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if let Err(e) = reload.reload_keys().await {
                    tracing::warn!(error = %e, "reloading token signing keys failed");
                }
            }
        });
        Some(AuthSettings {
            access,
            challenge: match config.auth.challenge {
                Challenge::Bearer => ChallengeKind::Bearer,
                Challenge::Basic => ChallengeKind::Basic,
            },
        })
    } else {
        None
    };
    let auth_on = auth.is_some();
    let state = AppState::with_auth(
        registry.clone(),
        ServerConfig {
            public_url: config.public_url.clone(),
            header_read_timeout: Duration::from_secs(config.limits.header_read_timeout_secs.max(1)),
            max_connections: config.limits.max_connections.max(1),
            max_connections_per_client: config.limits.max_connections_per_client,
            idle_timeout: Duration::from_secs(config.limits.idle_timeout_secs.max(1)),
            stall_timeout: Duration::from_secs(config.limits.stall_timeout_secs.max(1)),
            tls: tls.clone(),
            trusted_proxies: config.trusted_proxies()?,
            audit_window: Duration::from_secs(config.audit.refusal_window_secs.max(1)),
            ui: berth_server::ui::UiConfig {
                hosts: config.ui.hosts.clone(),
                session_ttl: Duration::from_secs(config.ui.session_ttl_secs.max(60)),
            },
            ..ServerConfig::default()
        },
        auth,
    );
    if let Some(a) = state.auth() {
        // Expired web sessions are refused when read; this only keeps the table small.
        let access = a.access.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                if let Err(e) = access.prune_sessions().await {
                    tracing::warn!(error = %e, "pruning expired web sessions failed");
                }
            }
        });
    }

    let purge_every = Duration::from_secs(config.uploads.purge_interval_secs.max(1));
    let registry_for_purge = registry.clone();
    tokio::spawn(async move {
        let registry = registry_for_purge;
        let mut tick = tokio::time::interval(purge_every);
        loop {
            tick.tick().await;
            match registry.purge_stale_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed stale uploads"),
                Err(e) => tracing::warn!(error = %e, "stale upload sweep failed"),
            }
        }
    });

    if config.gc.interval_secs > 0 {
        spawn_gc(&registry, &config)?;
    }
    if let Some(keep) = config.audit.keep() {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                match registry.prune_audit(keep).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned old audit rows"),
                    Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
                }
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        metadata = ?meta.backend(),
        tls = tls.is_some(),
        "{}",
        if auth_on {
            "berth is serving (authentication required)"
        } else {
            "berth is serving (anonymous push and pull: no authentication configured)"
        }
    );
    tracing::info!("{}", config.exposure(auth_enabled).describe(tls.is_some()));
    let webhooks = match config.admission.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding [admission] listen {addr}"))?;
            tracing::info!(listen = %l.local_addr()?, tls = admission_tls.is_some(), "admission webhooks are serving");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(berth_server::run_admission(
                l,
                state.clone(),
                admission_tls.clone(),
                async move {
                    let _ = stopped.await;
                },
            ));
            Some((stop, task))
        }
        None => None,
    };
    berth_server::run(listener, state.clone(), shutdown_signal()).await?;
    if let Some((stop, task)) = webhooks {
        let _ = stop.send(());
        let _ = task.await;
    }
    jobs.shutdown().await;
    state.flush_audit().await;
    meta.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(store: &open::StoreArgs) -> anyhow::Result<()> {
    let config = store.load()?;
    if config.metadata.url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }
    let meta = MetaStore::connect_with(&config.metadata_url(), &config.metadata.pool_settings())
        .await
        .context("opening (and migrating) the metadata store")?;
    let (version, known) = meta.schema_version().await?;
    meta.close().await;
    println!(
        "metadata schema at version {version} of {known} ({:?})",
        meta.backend()
    );
    Ok(())
}

/// Every `[gc] interval_secs`, one replica at a time (a lease in the metadata store):
/// applies the retention policies and cache eviction, then collects garbage.
fn spawn_gc(registry: &Registry, config: &Config) -> anyhow::Result<()> {
    let registry = registry.clone();
    let housekeeping = config.housekeeping()?;
    let options = config.gc.options(false);
    let every = Duration::from_secs(config.gc.interval_secs);
    let holder = format!("serve:{}:{}", hostname(), std::process::id());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // The first tick is immediate: wait one interval before the first collection.
        tick.tick().await;
        loop {
            tick.tick().await;
            let round = match registry
                .scheduled_round(&holder, &housekeeping, &options)
                .await
            {
                Ok(Some(round)) => round,
                Ok(None) => {
                    tracing::debug!("another replica is collecting garbage");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "taking the collection lease failed");
                    continue;
                }
            };
            match round.housekeeping {
                Ok(r) if r.expired.is_empty() && r.evicted.is_empty() => {}
                Ok(r) => tracing::info!(
                    tags = r.expired.len(),
                    cached = r.evicted.len(),
                    skipped = r.skipped.len(),
                    "retention and eviction removed tags and cached manifests"
                ),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
            match round.collection {
                Ok(r) => tracing::info!(
                    manifests = r.manifests_deleted.len(),
                    links = r.links_removed,
                    blobs = r.blobs_deleted.len(),
                    bytes = r.bytes_freed,
                    seconds = r.elapsed.as_secs_f64(),
                    "garbage collection finished"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// With authentication on and no user yet, creates `admin` with the password from
/// `BERTH_ADMIN_PASSWORD`, or a random one written once to the log and to a 0600 file.
async fn bootstrap_admin(access: &Access, config: &Config) -> anyhow::Result<()> {
    let given = std::env::var("BERTH_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let Some(generated) = access.bootstrap_admin(given.as_deref()).await? else {
        if given.is_some() {
            tracing::info!("created user admin with the password from BERTH_ADMIN_PASSWORD");
        }
        return Ok(());
    };
    let path = config.data_dir.join("admin-password");
    write_private(&path, &generated).with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        password = %generated,
        file = %path.display(),
        "created user admin with a generated password (shown once; also in the file, mode 0600)"
    );
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    writeln!(f, "{text}")?;
    f.sync_all()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is short (file opens, positioned reads); uploads have their own
        // writer threads. A bounded pool keeps thread stacks and memory flat under load.
        .max_blocking_threads(8)
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::User { store, cmd } => runtime.block_on(admin::user(&store, cmd)),
        Command::Tenant { store, cmd } => runtime.block_on(admin::tenant(&store, cmd)),
        Command::Robot { store, cmd } => runtime.block_on(admin::robot(&store, cmd)),
        Command::Secret { store, args } => runtime.block_on(admin::secret(&store, args)),
        Command::Audit { store, args } => runtime.block_on(admin::audit(&store, args)),
        Command::Export { store, args } => runtime.block_on(layout::export(&store, args)),
        Command::Import { store, args } => runtime.block_on(layout::import(&store, args)),
        Command::Mirror { store, args } => runtime.block_on(mirror::run(&store, args)),
        Command::Keys { store, cmd } => runtime.block_on(keys::run(&store, cmd)),
        Command::Encrypt { store } => match runtime.block_on(keys::encrypt(&store)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("berth encrypt: {e:#}");
                std::process::exit(2)
            }
        },
        Command::RotateKey { store } => runtime.block_on(admin::rotate_key(&store)),
        Command::Tag { store, cmd } => runtime.block_on(versions::tag(&store, cmd)),
        Command::Events { store, cmd } => runtime.block_on(events::run(&store, cmd)),
        Command::K8s { cmd } => runtime.block_on(k8s::run(cmd)),
        Command::Node(args) => runtime.block_on(p2p::node(args)),
        Command::P2p { cmd } => runtime.block_on(p2p::run(cmd)),
        Command::Gc { store, args } => runtime.block_on(gc::run(&store, args)),
        Command::Migrate { store } => runtime.block_on(migrate(&store)),
        Command::Retention { store, args } => runtime.block_on(gc::retention(&store, args)),
        Command::MigrateStorage(args) => match runtime.block_on(migrate::run(args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("berth migrate-storage: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Policy { store, cmd } => runtime.block_on(policy::command(&store, cmd)),
        Command::Verify { store, args } => match runtime.block_on(policy::verify(&store, args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("berth verify: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Sbom { store, args } => match runtime.block_on(sbom::run(&store, args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("berth sbom: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Scan { store, args } => match runtime.block_on(vulns::scan(&store, args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("berth scan: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Advisories { store, cmd } => runtime.block_on(vulns::advisories(&store, cmd)),
        Command::Fsck(args) => match runtime.block_on(fsck::run(args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("berth fsck: {e:#}");
                std::process::exit(2)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn tenant_public_takes_true_or_false() {
        for (word, expected) in [("true", true), ("false", false)] {
            let cli = Cli::try_parse_from(["berth", "tenant", "public", "team-a", word])
                .unwrap_or_else(|e| panic!("{word}: {e}"));
            match cli.command {
                Command::Tenant {
                    cmd: admin::TenantCommand::Public { name, public },
                    ..
                } => assert_eq!((name.as_str(), public), ("team-a", expected)),
                _ => panic!("parsed as another command"),
            }
        }
        assert!(Cli::try_parse_from(["berth", "tenant", "public", "team-a", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["berth", "tenant", "public", "team-a"]).is_err());
    }
}
