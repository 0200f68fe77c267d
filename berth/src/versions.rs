//! `berth tag`: tag history, rollback, semver listing and resolution, offline against the
//! data directory or database like `berth user`. It acts as the admin `cli` (whoever can
//! open the store is an admin already), through the same use cases as `/api/v1`, so the
//! tag rules from the configuration apply as they do in `serve`.

use anyhow::Context;
use berth_meta::Actor;
use berth_oci::{Digest, RepoName, Tag};
use berth_registry::{Registry, Rollback};
use clap::Subcommand;

use crate::listing;
use crate::open::StoreArgs;

#[derive(Subcommand)]
pub enum TagCommand {
    /// Every creation, move, deletion and rollback of REPO:TAG, newest first.
    History {
        /// `repository:tag`, e.g. `team-a/app:1.4`.
        reference: String,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// One JSON object per line (JSON Lines) instead of a table.
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
        /// One JSON object per line (JSON Lines) instead of a table.
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
        /// One JSON object (a line) instead of a table.
        #[arg(long)]
        json: bool,
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

pub async fn tag(store: &StoreArgs, cmd: TagCommand) -> anyhow::Result<()> {
    let (_, registry) = store.registry().await?;
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
            listing::print(&registry.tag_history(&repo, &tag, limit).await?, json);
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
            listing::print(&registry.semver_tags(&repo).await?, json);
        }
        TagCommand::Resolve {
            repository: r,
            version,
            prerelease,
            json,
        } => {
            let repo = repository(&r)?;
            let t = registry
                .resolve_version(&repo, &version, prerelease)
                .await?;
            listing::print(&[t], json);
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
