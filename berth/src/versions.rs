//! `berth tag`: tag history, rollback, semver listing and resolution, offline against the
//! data directory or database like `berth user`. It acts as the admin `cli` (whoever can
//! open the store is an admin already), through the same use cases as `/api/v1`, so the
//! tag rules from the configuration apply as they do in `serve`.

use anyhow::Context;
use berth_meta::{Actor, MetaStore};
use berth_oci::{Digest, RepoName, Tag};
use berth_registry::{Registry, RegistryConfig, Rollback};
use clap::Subcommand;

use crate::admin::StoreArgs;

#[derive(Subcommand)]
pub enum TagCommand {
    /// Every creation, move, deletion and rollback of REPO:TAG, newest first.
    History {
        /// `repository:tag`, e.g. `team-a/app:1.4`.
        reference: String,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// Move REPO:TAG back to a digest from its history (default: the previous one).
    Rollback {
        reference: String,
        /// A digest the tag has pointed at.
        #[arg(long, conflicts_with = "steps")]
        to: Option<String>,
        /// How many distinct digests to go back.
        #[arg(long)]
        steps: Option<u32>,
    },
    /// List a repository's version tags in semver order (other tags are left out).
    List {
        repository: String,
        /// Semver order (the only order this command has; `/v2/.../tags/list` has the other).
        #[arg(long)]
        semver: bool,
        #[arg(long)]
        json: bool,
    },
    /// The newest tag matching a version prefix: `1.4` finds the highest `1.4.x`.
    Resolve {
        repository: String,
        version: String,
        /// Consider pre-releases (`1.4.3-rc.1`) too.
        #[arg(long)]
        prerelease: bool,
    },
    /// Delete a tag, immutable ones included (recorded in the history as the `cli`).
    Delete { reference: String },
}

fn split_reference(r: &str) -> anyhow::Result<(RepoName, Tag)> {
    let (repo, tag) = r
        .rsplit_once(':')
        .with_context(|| format!("{r:?} is not repository:tag"))?;
    Ok((
        repo.parse()
            .map_err(|e| anyhow::anyhow!("repository {repo:?}: {e}"))?,
        tag.parse()
            .map_err(|e| anyhow::anyhow!("tag {tag:?}: {e}"))?,
    ))
}

fn repository(r: &str) -> anyhow::Result<RepoName> {
    r.parse()
        .map_err(|e| anyhow::anyhow!("repository {r:?}: {e}"))
}

async fn open(store: &StoreArgs) -> anyhow::Result<Registry> {
    let config = store.load()?;
    let blobs = crate::storage::open_blobs(&config).await?;
    let meta = MetaStore::connect(&config.metadata_url())
        .await
        .context("opening the metadata store")?;
    let registry = Registry::new(
        blobs,
        meta,
        RegistryConfig {
            allow_sparse_index: config.allow_sparse_index,
            tag_rules: config.tag_rules()?,
            ..RegistryConfig::default()
        },
    );
    registry
        .reload_tag_rules()
        .await
        .context("reading the tag rules managed through the API")?;
    // Rollbacks and deletes here are events and replication copies like any other.
    crate::events::configure(registry, &config).await
}

pub async fn tag(store: &StoreArgs, cmd: TagCommand) -> anyhow::Result<()> {
    let registry = open(store).await?;
    let actor = Actor::named("cli");
    let result = run(&registry, &actor, cmd).await;
    registry.meta().close().await;
    result
}

async fn run(registry: &Registry, actor: &Actor, cmd: TagCommand) -> anyhow::Result<()> {
    match cmd {
        TagCommand::History {
            reference,
            limit,
            json,
        } => {
            let (repo, tag) = split_reference(&reference)?;
            for e in registry.tag_history(&repo, &tag, limit).await? {
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        e.at,
                        e.kind,
                        e.old_digest.as_deref().unwrap_or("-"),
                        e.new_digest.as_deref().unwrap_or("-"),
                        e.actor,
                        e.source.as_deref().unwrap_or("-"),
                    );
                }
            }
        }
        TagCommand::Rollback {
            reference,
            to,
            steps,
        } => {
            let (repo, tag) = split_reference(&reference)?;
            let how = match to {
                Some(d) => Rollback::To(
                    d.parse::<Digest>()
                        .map_err(|e| anyhow::anyhow!("--to {d:?}: {e}"))?,
                ),
                None => Rollback::Steps(steps.unwrap_or(1)),
            };
            let digest = registry
                .rollback_tag(&repo, &tag, &how, actor, true)
                .await?;
            println!("{repo}:{tag} -> {digest}");
        }
        TagCommand::List {
            repository: r,
            semver: _,
            json,
        } => {
            let repo = repository(&r)?;
            for t in registry.semver_tags(&repo).await? {
                if json {
                    println!("{}", serde_json::to_string(&t)?);
                } else {
                    println!("{}\t{}", t.tag, t.digest);
                }
            }
        }
        TagCommand::Resolve {
            repository: r,
            version,
            prerelease,
        } => {
            let repo = repository(&r)?;
            let t = registry
                .resolve_version(&repo, &version, prerelease)
                .await?;
            println!("{}\t{}", t.tag, t.digest);
        }
        TagCommand::Delete { reference } => {
            let (repo, tag) = split_reference(&reference)?;
            registry
                .delete_manifest(&repo, &berth_oci::Reference::Tag(tag.clone()), actor, true)
                .await?;
            println!("deleted {repo}:{tag}");
        }
    }
    Ok(())
}
