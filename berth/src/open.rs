//! Opening what the commands work on: the configuration with its command-line overrides,
//! the blob store `[storage]` names, the metadata store, and the registry and access
//! control built over them, the same way for `serve` and every offline command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_meta::MetaStore;
use berth_registry::access::Access;
use berth_registry::{Registry, RegistryConfig, UpstreamConfig, UpstreamSettings};
use berth_storage::{BlobStore, FsStore, S3Store};
use clap::Args;

use crate::config::Config;
use crate::config::storage::StorageKind;

/// Where the configuration and the metadata store are.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "BERTH_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory; overrides `data_dir` in the config.
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Metadata database URL; overrides `[metadata] url`.
    #[arg(
        long,
        env = "BERTH_METADATA_URL",
        hide_env_values = true,
        global = true
    )]
    pub metadata_url: Option<String>,
}

impl StoreArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(u) = &self.metadata_url {
            config.metadata.url = Some(u.clone());
        }
        Ok(config)
    }

    /// Access control over the metadata store, for the management commands.
    pub async fn access(&self) -> anyhow::Result<(Config, Access)> {
        let config = self.load()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let meta =
            MetaStore::connect_with(&config.metadata_url(), &config.metadata.pool_settings())
                .await
                .context("opening the metadata store")?;
        let key = read_key_file(&config)?;
        let access_config = berth_registry::access::AccessConfig {
            encryption: config.keyring()?,
            ..config.access_config()
        };
        let access = Access::new(meta, access_config, key).await?;
        Ok((config, access))
    }

    /// The registry as `serve` builds it (see [`open_registry`]).
    pub async fn registry(&self) -> anyhow::Result<(Config, Registry)> {
        let config = self.load()?;
        let registry = open_registry(&config).await?;
        Ok((config, registry))
    }
}

/// `[auth] signing_key_file`, read.
pub fn read_key_file(config: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    config
        .auth
        .signing_key_file
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading signing key {}", p.display())))
        .transpose()
}

/// The blob store `config` names, opened (and, for S3, checked to answer). `existing`: a
/// filesystem store must be there already (for the checkers, which must not create one
/// where they were pointed by mistake).
pub async fn open_blobs(config: &Config, existing: bool) -> anyhow::Result<BlobStore> {
    match config.storage.kind {
        StorageKind::Fs if existing => Ok(BlobStore::Fs(
            FsStore::open_existing(config.data_dir.clone()).await?,
        )),
        StorageKind::Fs => Ok(BlobStore::Fs(FsStore::new(config.data_dir.clone()).await?)),
        StorageKind::S3 => {
            let s3 = config.storage.s3_config(|k| std::env::var(k).ok())?;
            let what = format!("S3 bucket {} at {}", s3.bucket, s3.endpoint);
            let mut store = S3Store::new_tuned(s3, config.storage.s3_tuning())
                .await
                .with_context(|| format!("opening {what}"))?;
            if let Some(sse) = &config.storage.server_side_encryption {
                store = store
                    .with_server_side_encryption(sse, config.storage.sse_kms_key_id.as_deref())
                    .context("[storage] server_side_encryption")?;
            }
            tracing::info!("blobs in {what}");
            Ok(BlobStore::S3(store))
        }
    }
}

/// Turns `[encryption]` on for `registry` once the keyring is known to open what the
/// registry stores: a wrong key under a known id, a key sealed blobs need that is missing,
/// or sealed blobs without any keyring stop here, naming the key and its setting.
pub async fn check_keyring(
    registry: Registry,
    config: &Config,
    keyring: Option<std::sync::Arc<berth_storage::seal::Keyring>>,
) -> anyhow::Result<Registry> {
    let problems = registry
        .check_keyring(keyring.as_deref())
        .await
        .context("checking the encryption keys against the metadata store")?;
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| match p {
                berth_registry::KeyProblem::Wrong { key_id }
                | berth_registry::KeyProblem::Missing { key_id, .. } => {
                    format!("{p} ({})", config.encryption.setting_of(key_id))
                }
                berth_registry::KeyProblem::NoKeyring { .. } => {
                    format!("{p}: configure [encryption] with the keys that sealed them")
                }
            })
            .collect();
        anyhow::bail!("[encryption]: {}", lines.join("; "));
    }
    if let Some(k) = &keyring {
        tracing::info!(
            active = k.active_id(),
            keys = k.ids().count(),
            "blobs are encrypted at rest"
        );
    }
    let registry = registry.with_encryption(keyring);
    registry
        .load_active_key()
        .await
        .context("reading the active encryption key")?;
    Ok(registry)
}

/// The registry as `serve` runs it: storage, metadata and upstreams from `config`. The
/// offline commands open it the same way, so the configured rules apply to them too.
/// Its metadata store is `registry.meta()`; close it when done.
pub async fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let blobs = open_blobs(config, false).await?;
    let meta = MetaStore::connect_with(&config.metadata_url(), &config.metadata.pool_settings())
        .await
        .context("opening the metadata store")?;
    let keyring = config.keyring()?;
    let registry = Registry::new(
        blobs,
        meta,
        RegistryConfig {
            max_manifest_bytes: config.limits.max_manifest_bytes,
            max_blob_bytes: match config.limits.max_blob_bytes {
                0 => u64::MAX,
                n => n,
            },
            allow_sparse_index: config.allow_sparse_index,
            max_page: config.limits.max_page.max(1),
            upload_ttl: Duration::from_secs(config.uploads.ttl_secs),
            cache_ttl: Duration::from_millis(config.cache.ttl_ms),
            cache_entries: config.cache.entries.max(1),
            stale_on_error: Duration::from_secs(config.cache.stale_on_error_secs),
            tag_rules: config.tag_rules()?,
        },
    )
    .with_upstreams(
        config
            .upstreams
            .iter()
            .map(|u| UpstreamSettings {
                client: UpstreamConfig {
                    username: u.username.clone(),
                    password: u.password.clone(),
                    ca_file: u.ca_file.clone(),
                    timeout: Duration::from_secs(u.timeout_secs.max(1)),
                    ..UpstreamConfig::new(u.name.clone(), u.url())
                },
                tag_ttl: Duration::from_secs(u.tag_ttl_secs),
                negative_ttl: Duration::from_secs(u.negative_ttl_secs),
                repositories: u.repositories.clone(),
                cache: u.cache,
            })
            .collect(),
    )?;
    let registry = check_keyring(registry, config, keyring).await?;
    registry.set_policy(crate::policy::compile(config)?);
    registry
        .set_admission(config.admission.rules.clone(), config.admission_settings())
        .map_err(|e| anyhow::anyhow!("[admission]: {e}"))?;
    registry
        .reload_admission()
        .await
        .map_err(|e| anyhow::anyhow!("reading the admission rules managed through the API: {e}"))?;
    registry
        .reload_policy()
        .await
        .map_err(|e| anyhow::anyhow!("reading the policy managed through the API: {e}"))?;
    // The rules managed through the API apply to the offline commands too.
    registry
        .reload_tag_rules()
        .await
        .context("reading the tag rules managed through the API")?;
    // Webhooks, job settings and replication targets: every command that changes content
    // queues its events and copies like `serve` does.
    crate::events::configure(registry, config).await
}
