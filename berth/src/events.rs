//! Events, webhooks and the job queue: the `[events]`, `[jobs]` and `[[webhook]]`
//! configuration, and `berth events`, which lists queued and dead jobs (webhook
//! deliveries, replication copies) and sends them again, offline against the data
//! directory or database like `berth user`, as the admin `cli`.

use std::time::Duration;

use anyhow::Context;
use berth_meta::JobState;
use berth_registry::Registry;
use berth_registry::access::cli_identity;
use berth_registry::events::{EventSettings, JobView};
use berth_registry::jobs::JobSettings;
use clap::Subcommand;
use serde::Deserialize;

use crate::config::Config;
use crate::listing;
use crate::open::StoreArgs;

/// `[events]`: who webhooks set through the API may call, and the pull event queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Host names (`hooks.internal`, `*.svc.cluster.local`) such webhooks may call whatever
    /// they resolve to.
    pub allow_hosts: Vec<String>,
    /// Networks (`10.20.0.0/16`, `127.0.0.1`) such webhooks may call although they are
    /// internal. By default no loopback, link-local, private, shared, multicast or
    /// unspecified address is called.
    pub allow_networks: Vec<String>,
    /// Pull events waiting to be written (when a webhook subscribes to pulls); more are
    /// dropped and counted.
    pub pull_queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            allow_hosts: Vec::new(),
            allow_networks: Vec::new(),
            pull_queue: 8192,
        }
    }
}

/// `[jobs]`: retries and leases of the job queue (webhook deliveries, replication).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Attempts before a job is dead (`berth events dead` lists it).
    pub max_attempts: u32,
    /// The first retry waits about this long (ms); each further one twice as long, with
    /// jitter.
    pub retry_base_ms: u64,
    /// No retry waits longer (seconds).
    pub retry_max_secs: u64,
    /// Seconds a replica holds a queue without renewing it; a replica that dies passes its
    /// queues on after this.
    pub lease_secs: u64,
    /// Repositories of one queue delivered at once.
    pub concurrency: usize,
    /// How often each replica looks for queued work from other replicas (ms).
    pub poll_ms: u64,
    /// Dead jobs are deleted this many days after they died.
    pub keep_dead_days: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        let d = JobSettings::default();
        JobsConfig {
            max_attempts: d.max_attempts,
            retry_base_ms: u64::try_from(d.retry_base.as_millis()).unwrap_or(u64::MAX),
            retry_max_secs: d.retry_max.as_secs(),
            lease_secs: d.lease.as_secs(),
            concurrency: d.concurrency,
            poll_ms: u64::try_from(d.poll.as_millis()).unwrap_or(u64::MAX),
            keep_dead_days: d.keep_dead.as_secs() / 86_400,
        }
    }
}

impl JobsConfig {
    pub fn settings(&self) -> JobSettings {
        JobSettings {
            max_attempts: self.max_attempts.max(1),
            retry_base: Duration::from_millis(self.retry_base_ms.max(1)),
            retry_max: Duration::from_secs(self.retry_max_secs.max(1)),
            lease: Duration::from_secs(self.lease_secs.max(3)),
            concurrency: self.concurrency.max(1),
            poll: Duration::from_millis(self.poll_ms.max(10)),
            keep_dead: Duration::from_secs(self.keep_dead_days.max(1).saturating_mul(86_400)),
        }
    }
}

/// The registry's event settings from the configuration.
pub fn event_settings(config: &Config) -> anyhow::Result<EventSettings> {
    let allow_networks = config
        .events
        .allow_networks
        .iter()
        .map(|n| n.parse())
        .collect::<Result<Vec<_>, _>>()
        .context("[events] allow_networks")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    Ok(EventSettings {
        webhooks: config.webhooks.clone(),
        allow_hosts: config.events.allow_hosts.clone(),
        allow_networks,
        public_url: config.public_url.clone(),
        source_addr: format!("{host}:{}", config.listen.port()),
        pull_queue: config.events.pull_queue.max(1),
    })
}

/// `registry` with the configuration's webhooks, job settings, replication targets and
/// housekeeping settings (for dry runs), and the webhooks set through the API: every command that changes content queues its
/// events and copies (a serving replica delivers them).
pub async fn configure(registry: Registry, config: &Config) -> anyhow::Result<Registry> {
    let registry = registry
        .with_events(event_settings(config)?)
        .context("[[webhook]]")?
        .with_jobs(config.jobs.settings())
        .with_replication(crate::replication_rules(config)?)
        // What the operations page's GC and retention dry runs use.
        .with_maintenance(berth_registry::maintenance::MaintenanceSettings {
            gc: config.gc.options(true),
            housekeeping: config.housekeeping()?,
        });
    let registry = match config.catalog.settings() {
        Some(s) => registry.with_catalog(s),
        None => registry,
    };
    registry
        .reload_webhooks()
        .await
        .context("reading the webhooks set through the API")?;
    Ok(registry)
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Queued and dead jobs (webhook deliveries, replication copies), newest first.
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// Dead jobs: out of attempts, kept until redelivered or pruned.
    Dead {
        #[command(flatten)]
        filter: Filter,
    },
    /// Send a job again (a dead one with its attempts reset; a waiting one at once).
    Redeliver {
        /// Job ids, as `list` and `dead` print them.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// The webhooks in force: the configuration's and those set through the API.
    Webhooks {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct Filter {
    /// Only a tenant's webhooks.
    #[arg(long)]
    tenant: Option<String>,
    /// Only ids below this (the next page).
    #[arg(long)]
    before: Option<i64>,
    #[arg(long, default_value_t = 100)]
    limit: u64,
    #[arg(long)]
    json: bool,
}

pub async fn run(store: &StoreArgs, cmd: EventsCommand) -> anyhow::Result<()> {
    let (_, registry) = store.registry().await?;
    let result = command(&registry, cmd).await;
    registry.meta().close().await;
    result
}

async fn command(registry: &Registry, cmd: EventsCommand) -> anyhow::Result<()> {
    let me = cli_identity();
    match cmd {
        EventsCommand::List { filter } => list(registry, None, filter).await,
        EventsCommand::Dead { filter } => list(registry, Some(JobState::Dead), filter).await,
        EventsCommand::Redeliver { ids } => {
            for id in ids {
                registry.redeliver(&me, None, None, id).await?;
                println!("job {id} queued again");
            }
            Ok(())
        }
        EventsCommand::Webhooks { json } => {
            listing::print(&registry.all_webhooks(&me)?, json);
            Ok(())
        }
    }
}

async fn list(registry: &Registry, state: Option<JobState>, f: Filter) -> anyhow::Result<()> {
    let me = cli_identity();
    let jobs: Vec<JobView> = registry
        .jobs(&me, f.tenant.as_deref(), state, f.before, f.limit)
        .await?;
    listing::print(&jobs, f.json);
    Ok(())
}
