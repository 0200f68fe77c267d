//! Node-local sharing: `[p2p]` for `serve`, the `berth node` agent, and `berth p2p`
//! (`status` of the tracker, `generate-key` for the ticket signing key).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// `[p2p]`: the central side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Node agents may enroll, get tickets and share layers.
    pub enabled: bool,
    /// The environment variable holding the bootstrap token agents enroll with.
    pub bootstrap_token_env: String,
    /// The Ed25519 ticket signing key (PKCS#8 DER, `berth p2p generate-key`). Unset: a
    /// key made by the first replica to start and kept in the metadata store (sealed when
    /// `[encryption]` is on), shared by every replica and kept across restarts.
    pub key_file: Option<PathBuf>,
    /// The ECDSA P-256 key of the CA certifying agents for agent-to-agent TLS (PKCS#8
    /// DER, `berth p2p generate-key --ca`). Unset: kept in the metadata store, as for
    /// `key_file`.
    pub ca_key_file: Option<PathBuf>,
    pub ticket_ttl_secs: u64,
    /// How long after an authorized manifest pull a node's agent may fetch its blobs.
    pub pull_ttl_secs: u64,
    pub announce_ttl_secs: u64,
    /// Tenants (`team-a`) or repositories (`team-a/app`) whose pulls are never shared.
    pub off: Vec<String>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            enabled: false,
            bootstrap_token_env: "BERTH_P2P_BOOTSTRAP_TOKEN".into(),
            key_file: None,
            ca_key_file: None,
            ticket_ttl_secs: 600,
            pull_ttl_secs: 3600,
            announce_ttl_secs: 3600,
            off: Vec::new(),
        }
    }
}

impl P2pConfig {
    /// The registry's settings, when sharing is on.
    pub fn settings(&self) -> anyhow::Result<Option<berth_registry::p2p::P2pSettings>> {
        if !self.enabled {
            return Ok(None);
        }
        let token = std::env::var(&self.bootstrap_token_env).with_context(|| {
            format!(
                "[p2p] enabled: the bootstrap token must be in ${}",
                self.bootstrap_token_env
            )
        })?;
        let key = match &self.key_file {
            Some(f) => {
                Some(std::fs::read(f).with_context(|| format!("[p2p] key_file {}", f.display()))?)
            }
            None => {
                tracing::info!(
                    "[p2p] key_file unset: tickets are signed with the key kept in the metadata store"
                );
                None
            }
        };
        let ca_key = match &self.ca_key_file {
            Some(f) => Some(
                std::fs::read(f).with_context(|| format!("[p2p] ca_key_file {}", f.display()))?,
            ),
            None => {
                tracing::info!(
                    "[p2p] ca_key_file unset: agents' TLS certificates are signed by the CA key kept in the metadata store"
                );
                None
            }
        };
        Ok(Some(berth_registry::p2p::P2pSettings {
            bootstrap_token: token,
            key_pkcs8: key,
            ca_key_pkcs8: ca_key,
            ticket_ttl: Duration::from_secs(self.ticket_ttl_secs.max(1)),
            pull_ttl: Duration::from_secs(self.pull_ttl_secs.max(1)),
            announce_ttl: Duration::from_secs(self.announce_ttl_secs.max(1)),
            off: self.off.clone(),
            ..berth_registry::p2p::P2pSettings::default()
        }))
    }
}

/// `berth node`: the agent of one node.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// This node's name (Kubernetes: spec.nodeName through the downward API).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The central Berth, e.g. https://berth.berth.svc:5000.
    #[arg(long, env = "BERTH_CENTRAL_URL")]
    central: String,
    /// The bootstrap token (the Secret the manifests refer to).
    #[arg(long, env = "BERTH_P2P_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: String,
    /// Where containerd reaches the agent: the node's loopback only.
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Where peers reach the agent.
    #[arg(long, default_value = "0.0.0.0:5051")]
    peer_listen: SocketAddr,
    /// Blobs being fetched and fetched blobs.
    #[arg(long, default_value = "/var/lib/berth-node")]
    spool: PathBuf,
    /// Gibibytes of fetched blobs the spool keeps; the oldest go first. 0: no limit.
    #[arg(long, default_value_t = 20)]
    spool_max_gib: u64,
    /// Megabits per second served to peers, all together; 0: no cap.
    #[arg(long, default_value_t = 400)]
    serve_mbit: u64,
    /// A source sending nothing for this long is abandoned.
    #[arg(long, default_value_t = 10)]
    stall_timeout_secs: u64,
    /// The node's address, which outgoing connections leave from.
    #[arg(long, env = "NODE_IP")]
    local_address: Option<IpAddr>,
    /// PEM CAs for the central Berth's certificate.
    #[arg(long)]
    central_ca: Option<PathBuf>,
    /// Write containerd's hosts.toml for this registry host (e.g. registry.example.com)
    /// into --containerd-certs-d before serving.
    #[arg(long)]
    registry_host: Option<String>,
    /// containerd's `config_path`.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    containerd_certs_d: PathBuf,
    /// containerd's gRPC socket: blobs containerd holds are served to peers through its
    /// content service (read only). Unset: peers are served from the spool only.
    #[arg(long, env = "BERTH_NODE_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// containerd's namespace of kubelet's images.
    #[arg(long, default_value = "k8s.io")]
    containerd_namespace: String,
    /// Seconds between listings of containerd's content (announcing what it holds and
    /// withdrawing what it deleted).
    #[arg(long, default_value_t = 30)]
    containerd_scan_secs: u64,
}

/// containerd's `hosts.toml` for `registry_host`: manifests (resolve) at the registry with
/// the pod's credentials, blobs through the agent first.
pub fn hosts_toml(registry: &str, central: &str, agent: SocketAddr) -> String {
    format!(
        "# Written by berth node: blobs through the node agent, which only serves blobs the\n\
         # registry lets this node pull; manifests and everything else at the registry.\n\
         server = \"{central}\"\n\n\
         [host.\"http://{agent}\"]\n  capabilities = [\"pull\"]\n\n\
         [host.\"{central}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
         # registry: {registry}\n"
    )
}

fn write_hosts_toml(
    dir: &Path,
    registry: &str,
    central: &str,
    agent: SocketAddr,
) -> anyhow::Result<()> {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let tmp = d.join("hosts.toml.partial");
    std::fs::write(&tmp, hosts_toml(registry, central, agent))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, d.join("hosts.toml"))?;
    Ok(())
}

pub async fn node(args: NodeArgs) -> anyhow::Result<()> {
    // The agent logs as `serve` does by default (info, text); RUST_LOG overrides.
    crate::logging::init(&crate::config::Config::default());
    let failpoints: Vec<String> = std::env::var("BERTH_NODE_FAILPOINTS")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if !failpoints.is_empty() {
        tracing::warn!(
            ?failpoints,
            "failpoints are armed: this agent misbehaves on purpose"
        );
    }
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: containerd's face must be on loopback",
            args.listen
        );
    }
    let containerd = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let peers = tokio::net::TcpListener::bind(args.peer_listen)
        .await
        .with_context(|| format!("listening on {}", args.peer_listen))?;
    let agent = berth_server::node::Agent::new(berth_server::node::AgentConfig {
        node: args.node,
        central: args.central.clone(),
        bootstrap_token: args.bootstrap_token,
        peer_port: peers.local_addr()?.port(),
        spool: args.spool,
        spool_max_bytes: args.spool_max_gib.saturating_mul(1 << 30),
        serve_rate: args.serve_mbit.saturating_mul(1_000_000 / 8),
        stall_timeout: Duration::from_secs(args.stall_timeout_secs.max(1)),
        local_address: args.local_address,
        central_ca: args.central_ca,
        failpoints,
        containerd: args
            .containerd_socket
            .map(|socket| berth_server::node::ContainerdSettings {
                socket,
                namespace: args.containerd_namespace,
                scan_interval: Duration::from_secs(args.containerd_scan_secs.max(1)),
            }),
    })?;
    if let Some(host) = &args.registry_host {
        write_hosts_toml(
            &args.containerd_certs_d,
            host,
            args.central.trim_end_matches('/'),
            containerd.local_addr()?,
        )?;
        tracing::info!(host, dir = %args.containerd_certs_d.display(), "wrote containerd's hosts.toml");
    }
    tracing::info!(containerd = %containerd.local_addr()?, peers = %peers.local_addr()?, "node agent serving");
    berth_server::node::run_agent(agent, containerd, peers, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum P2pCommand {
    /// The tracker's view: enrolled nodes and who holds which blob (asks a running
    /// server; an administrator's credentials from BERTH_USER / BERTH_PASSWORD).
    Status {
        /// The server, e.g. https://registry.example.com.
        #[arg(long, env = "BERTH_URL")]
        url: String,
        #[arg(long, env = "BERTH_USER")]
        user: String,
        #[arg(long, env = "BERTH_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        json: bool,
    },
    /// A new Ed25519 ticket signing key (PKCS#8 DER, mode 0600) for `[p2p] key_file`;
    /// with `--ca`, a new ECDSA P-256 CA key for `[p2p] ca_key_file`.
    GenerateKey {
        out: PathBuf,
        #[arg(long)]
        ca: bool,
    },
}

pub async fn run(cmd: P2pCommand) -> anyhow::Result<()> {
    match cmd {
        P2pCommand::GenerateKey { out, ca: true } => {
            let rng = ring::rand::SystemRandom::new();
            let k = berth_k8s::cert::new_p256_key(&rng).map_err(|e| anyhow::anyhow!("{e}"))?;
            write_private(&out, &k)?;
            println!("wrote {} (p2p CA key, ECDSA P-256)", out.display());
            Ok(())
        }
        P2pCommand::GenerateKey { out, ca: false } => {
            let k =
                berth_auth::ticket::TicketKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
            write_private(&out, k.pkcs8())?;
            println!(
                "wrote {} (public key {})",
                out.display(),
                hex::encode(k.public_key())
            );
            Ok(())
        }
        P2pCommand::Status {
            url,
            user,
            password,
            json,
        } => {
            let v = berth_server::node::tracker_status(&url, &user, &password)
                .await
                .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            if json {
                println!("{v}");
                return Ok(());
            }
            let s = |v: &serde_json::Value| {
                crate::output::clean(v.as_str().unwrap_or_default()).into_owned()
            };
            println!("nodes ({}):", v["nodes"].as_array().map_or(0, Vec::len));
            for n in v["nodes"].as_array().into_iter().flatten() {
                println!("  {}\t{}", s(&n["node"]), s(&n["addr"]));
            }
            println!("authorized pulls: {}", v["authorized_pulls"]);
            println!("blobs held:");
            for b in v["blobs"].as_array().into_iter().flatten() {
                let holders: Vec<String> = b["holders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| s(&h["node"]))
                    .collect();
                println!("  {}\t{}", s(&b["digest"]), holders.join(", "));
            }
            Ok(())
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_sends_blobs_to_the_agent_and_resolves_at_the_registry() {
        let t = hosts_toml(
            "registry.example.com",
            "https://registry.example.com",
            "127.0.0.1:5050".parse().expect("addr"),
        );
        let v: toml::Value = toml::from_str(&t).expect("valid TOML");
        assert_eq!(v["server"].as_str(), Some("https://registry.example.com"));
        let agent = &v["host"]["http://127.0.0.1:5050"];
        assert_eq!(agent["capabilities"].as_array().map(Vec::len), Some(1));
        assert_eq!(agent["capabilities"][0].as_str(), Some("pull"));
    }
}
