//! The offline management commands: `user`, `tenant`, `robot`, `secret`, `audit`, `key`.
//! They open the metadata store directly (anyone who can read the data directory or the
//! database URL is an administrator already) and act as the admin `cli`, through the same
//! use cases as the management API, so both enforce the same rules.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_meta::AuditQuery;
use berth_registry::access::{self, NewRobot, RobotCredentials, cli_identity};
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::listing;
use crate::open::StoreArgs;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a random password is generated and printed once.
    Add {
        /// The login name: lowercase letters, digits and `.`, `_`, `-`.
        name: String,
        /// An administrator: may do everything, in every tenant.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input (default: generate one and print it).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every user: name, admin, disabled, created.
    List {
        /// One JSON object per line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password (from standard input, or a generated one).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Import users from an htpasswd file (bcrypt hashes only).
    ImportHtpasswd {
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (the first path segment of its repositories).
    Add {
        name: String,
        /// Anyone, even without credentials, may pull from it.
        #[arg(long)]
        public: bool,
    },
    /// Every tenant the caller sees: name, visibility, created.
    List {
        /// One JSON object per line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a tenant public (`true`) or private (`false`).
    Public {
        name: String,
        // A positional value: clap would otherwise read a `bool` as a flag taking no value.
        #[arg(action = clap::ArgAction::Set)]
        public: bool,
    },
    Delete {
        name: String,
    },
    /// Set a member's role (owner, maintainer, developer, reader), or `remove` it.
    Member {
        tenant: String,
        user: String,
        role: String,
    },
    /// A tenant's members and their roles.
    Members {
        tenant: String,
        /// One JSON object per line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a tenant's storage quota and usage; with BYTES (or `none`) set it first.
    /// Shared blobs count once per tenant; a push past the quota is refused.
    Quota {
        tenant: String,
        /// Bytes (plain number), or `none` to remove the quota.
        bytes: Option<String>,
        /// One JSON object per line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum RobotCommand {
    /// Create a robot account; its secret is printed once.
    Add {
        tenant: String,
        name: String,
        /// Comma-separated: pull, push, delete.
        #[arg(long, default_value = "pull")]
        actions: String,
        /// Repository patterns relative to the tenant (`app`, `tools/*`); default: all.
        #[arg(long, value_delimiter = ',')]
        repos: Vec<String>,
        #[arg(long)]
        expires_days: Option<u64>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Robot accounts of a tenant, or of every tenant.
    List {
        tenant: Option<String>,
        /// One JSON object per line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Give a robot a new secret (printed once). A running server that remembered the old
    /// one accepts it until `login_cache_secs` pass; through the API, it stops at once.
    Rotate {
        tenant: String,
        name: String,
    },
    Disable {
        tenant: String,
        name: String,
    },
    Enable {
        tenant: String,
        name: String,
    },
    Delete {
        tenant: String,
        name: String,
    },
}

#[derive(Args)]
pub struct SecretArgs {
    /// The tenant whose images the secret pulls.
    pub tenant: String,
    /// The robot account to use: created pull-only if missing, its secret rotated if not.
    #[arg(long)]
    pub robot: String,
    /// Kubernetes namespace for the Secret's metadata.
    #[arg(long)]
    pub namespace: Option<String>,
    /// `secret` (a Kubernetes Secret, YAML) or `config-json` (a .docker/config.json).
    #[arg(long, default_value = "secret")]
    pub format: String,
    /// Registry host as pods name it; default: from `public_url`, else the listen address.
    #[arg(long)]
    pub server: Option<String>,
    /// The Secret's name; default `<tenant>-<robot>-pull`, which must then be a Kubernetes
    /// name (tenant and robot names may hold `_`, Secret names may not).
    #[arg(long)]
    pub secret_name: Option<String>,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only entries at or after this time (seconds since the epoch).
    #[arg(long)]
    pub since: Option<i64>,
    /// Only entries before this time (seconds since the epoch).
    #[arg(long)]
    pub until: Option<i64>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only entries about this repository (`team-a/app`).
    #[arg(long)]
    pub repository: Option<String>,
    /// An action (`manifest.pull`) or a family (`user`, `robot`, `login`).
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// Page: the entries after this one (its id), newest first.
    #[arg(long)]
    pub before: Option<i64>,
    /// One JSON object per line (JSON Lines) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Delete rows older than `[audit] keep_days` now (`berth serve` does it hourly).
    #[arg(long)]
    pub prune: bool,
}

fn read_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((berth_auth::password::random_secret(), true));
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from standard input")?;
    Ok((s.trim_end_matches(['\r', '\n']).to_owned(), false))
}

pub async fn user(store: &StoreArgs, cmd: UserCommand) -> anyhow::Result<()> {
    let (_, access) = store.access().await?;
    let me = cli_identity();
    match cmd {
        UserCommand::Add {
            name,
            admin,
            password_stdin,
        } => {
            let (pw, generated) = read_password(password_stdin)?;
            access.create_user(&me, None, &name, &pw, admin).await?;
            if generated {
                println!("created user {name}; password (shown once): {pw}");
            } else {
                println!("created user {name}");
            }
        }
        UserCommand::List { json } => listing::print(&access.list_users(&me).await?, json),
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let (pw, generated) = read_password(password_stdin)?;
            let update = access::UserUpdate {
                password: Some(&pw),
                ..access::UserUpdate::default()
            };
            access.update_user(&me, None, &name, &update).await?;
            if generated {
                println!("new password for {name} (shown once): {pw}");
            }
        }
        UserCommand::Disable { name } => {
            let update = access::UserUpdate {
                disabled: Some(true),
                ..access::UserUpdate::default()
            };
            access.update_user(&me, None, &name, &update).await?;
        }
        UserCommand::Enable { name } => {
            let update = access::UserUpdate {
                disabled: Some(false),
                ..access::UserUpdate::default()
            };
            access.update_user(&me, None, &name, &update).await?;
        }
        UserCommand::Delete { name } => access.delete_user(&me, None, &name).await?,
        UserCommand::ImportHtpasswd { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let added = access.import_htpasswd(&me, &text).await?;
            println!("imported {added} new users");
        }
    }
    Ok(())
}

pub async fn tenant(store: &StoreArgs, cmd: TenantCommand) -> anyhow::Result<()> {
    let (_, access) = store.access().await?;
    let me = cli_identity();
    match cmd {
        TenantCommand::Add { name, public } => {
            access.create_tenant(&me, None, &name, public).await?
        }
        TenantCommand::List { json } => listing::print(&access.list_tenants(&me).await?, json),
        TenantCommand::Public { name, public } => {
            access.set_tenant_public(&me, None, &name, public).await?;
        }
        TenantCommand::Delete { name } => access.delete_tenant(&me, None, &name).await?,
        TenantCommand::Member { tenant, user, role } => {
            let role = (role != "remove").then_some(role.as_str());
            access.set_member(&me, None, &tenant, &user, role).await?;
        }
        TenantCommand::Quota {
            tenant,
            bytes,
            json,
        } => {
            if let Some(b) = bytes {
                let bytes = match b.as_str() {
                    "none" => None,
                    n => Some(n.parse::<u64>().map_err(|e| {
                        anyhow::anyhow!("quota {n:?}: a number of bytes or `none`: {e}")
                    })?),
                };
                access.set_tenant_quota(&me, None, &tenant, bytes).await?;
            }
            let (quota, used) = access.tenant_quota(&me, &tenant).await?;
            listing::print(
                &[listing::Quota {
                    tenant,
                    quota,
                    used,
                }],
                json,
            );
        }
        TenantCommand::Members { tenant, json } => {
            let members: Vec<listing::Member> = access
                .members(&me, &tenant)
                .await?
                .into_iter()
                .map(|(user, role)| listing::Member { user, role })
                .collect();
            listing::print(&members, json);
        }
    }
    Ok(())
}

fn print_credentials(c: &RobotCredentials) {
    println!("robot {} (login {})", c.robot.name, c.robot.login);
    println!("secret (shown once): {}", c.secret);
}

pub async fn robot(store: &StoreArgs, cmd: RobotCommand) -> anyhow::Result<()> {
    let (_, access) = store.access().await?;
    let me = cli_identity();
    match cmd {
        RobotCommand::Add {
            tenant,
            name,
            actions,
            repos,
            expires_days,
            description,
        } => {
            let names: Vec<&str> = actions.split(',').map(str::trim).collect();
            if let Some(bad) = names
                .iter()
                .find(|a| !matches!(**a, "pull" | "push" | "delete"))
            {
                anyhow::bail!("unknown action {bad:?}: pull, push, delete");
            }
            let spec = NewRobot {
                actions: berth_auth::Actions::from_names(names),
                repositories: repos,
                description,
                expires_in: expires_days.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
            };
            let c = access
                .create_robot(&me, None, &tenant, &name, &spec)
                .await?;
            print_credentials(&c);
        }
        RobotCommand::List { tenant, json } => {
            let tenants = match tenant {
                Some(t) => vec![t],
                None => access
                    .list_tenants(&me)
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect(),
            };
            let mut robots = Vec::new();
            for t in tenants {
                robots.extend(access.robots(&me, &t).await?);
            }
            listing::print(&robots, json);
        }
        RobotCommand::Rotate { tenant, name } => {
            print_credentials(&access.rotate_robot(&me, None, &tenant, &name).await?);
        }
        RobotCommand::Disable { tenant, name } => {
            access
                .set_robot_disabled(&me, None, &tenant, &name, true)
                .await?;
        }
        RobotCommand::Enable { tenant, name } => {
            access
                .set_robot_disabled(&me, None, &tenant, &name, false)
                .await?;
        }
        RobotCommand::Delete { tenant, name } => {
            access.delete_robot(&me, None, &tenant, &name).await?
        }
    }
    Ok(())
}

/// The registry host pods use in image references.
pub fn server_name(config: &Config, explicit: Option<String>) -> String {
    if let Some(s) = explicit {
        return s;
    }
    if let Some(u) = &config.public_url {
        let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
        return rest.trim_end_matches('/').to_owned();
    }
    config.listen.to_string()
}

/// The pull Secret's name: `--secret-name`, or `<tenant>-<robot>-pull`; either must be a
/// Kubernetes Secret name.
fn secret_name(args: &SecretArgs) -> anyhow::Result<String> {
    match &args.secret_name {
        Some(n) if access::is_secret_name(n) => Ok(n.clone()),
        Some(n) => anyhow::bail!("--secret-name {n:?} is not a Kubernetes Secret name"),
        None => {
            let n = format!("{}-{}-pull", args.tenant, args.robot);
            if access::is_secret_name(&n) {
                Ok(n)
            } else {
                anyhow::bail!(
                    "{n:?} is not a Kubernetes Secret name (lower-case letters, digits, `-` \
                     and `.`); give one with --secret-name"
                )
            }
        }
    }
}

pub async fn secret(store: &StoreArgs, args: SecretArgs) -> anyhow::Result<()> {
    if let Some(ns) = &args.namespace
        && !access::valid_namespace(ns)
    {
        anyhow::bail!("{ns:?} is not a Kubernetes namespace name");
    }
    if !matches!(args.format.as_str(), "secret" | "config-json") {
        anyhow::bail!("--format is secret or config-json");
    }
    // Checked before any robot is created or rotated.
    let secret_name = secret_name(&args)?;
    let (config, access) = store.access().await?;
    let server = server_name(&config, args.server);
    let c = access
        .pull_credentials(&cli_identity(), None, &args.tenant, &args.robot)
        .await?;
    if args.format == "config-json" {
        let v = access::docker_config(&server, &c.robot.login, &c.secret);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let v = access::pull_secret(
        &secret_name,
        args.namespace.as_deref(),
        &server,
        &c.robot.login,
        &c.secret,
    );
    // The Secret as YAML, which is what `kubectl apply -f` users keep in git. Every value
    // is a validated name or base64, so none needs quoting.
    let data = v["data"][".dockerconfigjson"].as_str().unwrap_or_default();
    println!("apiVersion: v1");
    println!("kind: Secret");
    println!("metadata:");
    println!("  name: {secret_name}");
    if let Some(ns) = &args.namespace {
        println!("  namespace: {ns}");
    }
    println!("type: kubernetes.io/dockerconfigjson");
    println!("data:");
    println!("  .dockerconfigjson: {data}");
    Ok(())
}

pub async fn audit(store: &StoreArgs, args: AuditArgs) -> anyhow::Result<()> {
    if args.prune {
        let (config, access) = store.access().await?;
        let Some(keep) = config.audit.keep() else {
            anyhow::bail!("[audit] keep_days is 0: the audit log is kept forever");
        };
        let n = berth_registry::audit::prune(access.meta(), keep).await?;
        println!(
            "deleted {n} audit rows older than {} days",
            config.audit.keep_days
        );
        return Ok(());
    }
    let (_, access) = store.access().await?;
    let q = AuditQuery {
        since: args.since.map(|s| s.saturating_mul(1_000_000)),
        until: args.until.map(|s| s.saturating_mul(1_000_000)),
        actor: args.user,
        tenant: args.tenant,
        repository: args.repository,
        action: args.action,
        before_id: args.before,
        limit: args.limit.clamp(1, 10_000),
    };
    let rows = access.audit(&cli_identity(), &q).await?;
    listing::print(&rows, args.json);
    Ok(())
}

pub async fn rotate_key(store: &StoreArgs) -> anyhow::Result<()> {
    let (_, access) = store.access().await?;
    let kid = access.rotate_key(&cli_identity(), None).await?;
    println!("new signing key {kid}; tokens signed by the old key stay valid until they expire");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tenant: &str, robot: &str, name: Option<&str>) -> SecretArgs {
        SecretArgs {
            tenant: tenant.into(),
            robot: robot.into(),
            namespace: None,
            format: "secret".into(),
            server: None,
            secret_name: name.map(str::to_owned),
        }
    }

    #[test]
    fn pull_secret_names_are_kubernetes_names() {
        assert_eq!(
            secret_name(&args("team-a", "ci", None)).expect("default"),
            "team-a-ci-pull"
        );
        // Tenant and robot names may hold `_`; a Secret name may not, so one must be given.
        let err = secret_name(&args("team_a", "ci", None)).expect_err("invalid default");
        assert!(err.to_string().contains("--secret-name"), "{err}");
        assert_eq!(
            secret_name(&args("team_a", "ci", Some("team-a-pull"))).expect("given"),
            "team-a-pull"
        );
        assert!(secret_name(&args("team-a", "ci", Some("Team_A"))).is_err());
    }
}
