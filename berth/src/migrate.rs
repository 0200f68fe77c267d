//! `berth migrate-storage --to TARGET.toml`: copies every blob from the blob store the
//! current configuration names to the one `TARGET.toml` names (filesystem to S3, or back,
//! or between buckets), verifying each digest as it lands. Blobs already in the target are
//! skipped, so an interrupted run is resumed by running it again. If `TARGET.toml` names
//! another metadata store (`[metadata] url`), every table is copied into it too, which must
//! be new; otherwise the metadata stays where it is, valid, since blobs keep their digests.
//!
//! Encryption: the metadata store the target serves with (the target's own, or the shared
//! one) holds the data keys. With `[encryption]` in `TARGET.toml`, plaintext blobs are
//! sealed on the way (`Registry::migrate_blob_sealed`) and sealed ones copied as stored;
//! the target's keyring must open every key the current store uses. Without it, a store
//! holding anything sealed is refused: the target could not read it, and decrypting on
//! the way is not offered.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use berth_storage::{BlobStore, Copied, CopyEvent, copy_all_blobs_by, copy_all_blobs_with};
use futures_util::future::BoxFuture;

use crate::config::Config;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Configuration file of the current store (TOML), the same one `serve` reads.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the current store; overrides `data_dir` in the config.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file whose `[storage]` (and `data_dir`) name the target store. With
    /// `[encryption]` there, plaintext blobs are sealed on the way; without it, a store
    /// holding encrypted blobs is refused (nothing is decrypted).
    #[arg(long)]
    to: PathBuf,
}

/// Runs the migration; `Ok(true)` when every blob is in the target.
pub async fn run(args: MigrateArgs) -> anyhow::Result<bool> {
    let mut source = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        source.data_dir = d;
    }
    crate::logging::init_quiet();
    let target = Config::load(Some(&args.to))
        .with_context(|| format!("reading the target configuration {}", args.to.display()))?;
    // The metadata store a server on the target will use: its own if it names another,
    // else the current one (which then stays where it is).
    let separate = target.metadata.url.is_some() && target.metadata_url() != source.metadata_url();
    let target_ring = target.keyring().with_context(|| {
        format!(
            "reading the target's [encryption] keys ({})",
            args.to.display()
        )
    })?;
    let from = crate::open::open_blobs(&source, false)
        .await
        .context("opening the current blob store")?;
    if target_ring.is_some() && same_store(&source, &target) {
        // Sealing over the very objects the current configuration reads: a server on it
        // without a keyring would serve ciphertext. That is `berth encrypt`'s job.
        anyhow::bail!(
            "{} names the current blob store itself: to encrypt a store in place, add \
             [encryption] to its configuration and run `berth encrypt`. Nothing was copied.",
            args.to.display()
        );
    }
    // Checked before the target is opened (or created): a refusal writes nothing.
    check_keys(
        &source,
        &target,
        &args.to,
        target_ring.as_deref(),
        &from,
        separate,
    )
    .await?;
    let to = crate::open::open_blobs(&target, false)
        .await
        .context("opening the target blob store")?;

    // With encryption on, sealed blobs are copied in their stored form (their data keys
    // live in the metadata store, which keeps them or is copied whole) and checked by
    // opening them on the way; a keyring is needed for that.
    let registry = match source.keyring()? {
        Some(_) => Some(
            crate::open::open_registry(&source)
                .await
                .context("opening the metadata store for the blobs' data keys")?,
        ),
        None => None,
    };
    let started = Instant::now();
    let mut on = |e: CopyEvent<'_>| match e {
        CopyEvent::Failed { digest, error } => {
            eprintln!("berth migrate-storage: {digest}: {error}");
        }
        CopyEvent::Stray { path } => tracing::warn!(path, "not a blob; not copied"),
        CopyEvent::Done(s) => {
            let done = s.copied + s.already + s.failed;
            if done % 100 == 0 {
                eprintln!(
                    "berth migrate-storage: {done} blobs, {} MiB copied",
                    s.copied_bytes >> 20
                );
            }
        }
    };
    // Sealed into the metadata store the current configuration serves with too.
    let shared_sealing = target_ring.is_some() && !separate && source.keyring()?.is_none();
    let summary = match target_ring {
        Some(ring) => {
            let url = if separate {
                target.metadata_url()
            } else {
                source.metadata_url()
            };
            let meta = berth_meta::MetaStore::connect_with(&url, &target.metadata.pool_settings())
                .await
                .context("opening the target's metadata store for the blobs' data keys")?;
            let sealing = berth_registry::Registry::new(
                to.clone(),
                meta,
                berth_registry::RegistryConfig::default(),
            )
            .with_encryption(Some(ring));
            if !separate {
                // The check values of the target's keys, so a server with another key under
                // one of these ids is refused. (A new metadata store gets them from the
                // target's first start: written now, they would collide with the copy.)
                let problems = sealing
                    .check_keyring(sealing.encryption().map(|k| &**k))
                    .await?;
                if let Some(p) = problems.first() {
                    anyhow::bail!("[encryption] of {}: {p}", args.to.display());
                }
            }
            let source_registry = registry.as_ref();
            let copy = |d: berth_oci::Digest| -> BoxFuture<'_, berth_storage::Result<Copied>> {
                let sealing = &sealing;
                let from = &from;
                Box::pin(async move {
                    sealing
                        .migrate_blob_sealed(from, source_registry, &d)
                        .await
                        .map_err(storage_error)
                })
            };
            let summary = copy_all_blobs_by(&from, &copy, &mut on)
                .await
                .context("listing the current store")?;
            sealing.meta().close().await;
            summary
        }
        None => {
            let lookup = registry.clone().map(|r| {
                move |d: berth_oci::Digest| -> BoxFuture<
                    'static,
                    berth_storage::Result<Option<(u64, berth_storage::seal::DataKey)>>,
                > {
                    let r = r.clone();
                    Box::pin(async move { r.sealed_blob(&d).await.map_err(storage_error) })
                }
            });
            let keys: Option<berth_storage::SealedKeys<'_>> = lookup.as_ref().map(|l| l as _);
            copy_all_blobs_with(&from, &to, keys, &mut on)
                .await
                .context("listing the current store")?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "copied {} blobs ({} bytes, {:.1} MiB/s), {} already in the target, {} failed, \
         {} vanished during the run, {} stray objects skipped; {secs:.1} s",
        summary.copied,
        summary.copied_bytes,
        summary.copied_bytes as f64 / (1 << 20) as f64 / secs.max(0.001),
        summary.already,
        summary.failed,
        summary.vanished,
        summary.strays,
    );
    if shared_sealing && summary.copied > 0 {
        // A server already running on the current configuration keeps serving its
        // plaintext copies (it ignores the key rows), but no longer starts with it.
        println!(
            "the shared metadata store now records encrypted blobs: start servers with the \
             target configuration (its [encryption] keys); the current one, without \
             [encryption], is refused at startup from now on"
        );
    }
    if separate {
        // Another metadata store too (SQLite to PostgreSQL, or back): copy every table.
        let from = berth_meta::MetaStore::connect(&source.metadata_url())
            .await
            .context("opening the current metadata store")?;
        let to = berth_meta::MetaStore::connect(&target.metadata_url())
            .await
            .context("opening the target metadata store")?;
        let started = Instant::now();
        let rows = from
            .copy_into(&to, &mut |table, n| {
                eprintln!("berth migrate-storage: {table}: {n} rows");
            })
            .await
            .context("copying the metadata")?;
        println!(
            "copied the metadata: {rows} rows in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "metadata was not copied: the target names the same metadata store (or none); \
             point the serving configuration's [storage] at the target"
        );
    }
    Ok(summary.failed == 0)
}

/// A registry error where the blob copy expects a storage one (it is only reported).
fn storage_error(e: berth_registry::RegistryError) -> berth_storage::StorageError {
    match e {
        berth_registry::RegistryError::Storage(e) => e,
        other => berth_storage::StorageError::Io {
            op: "migrating a blob",
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Refuses, before anything is written, a target that could not read what the current
/// store holds sealed: one without `[encryption]` (decrypting on the way is not offered:
/// it would also have to unseal the stored secrets, and with a shared metadata store
/// dropping the key rows would make a server still running on the current store serve
/// ciphertext), or one whose keyring lacks a key in use or holds another key under a
/// known id. Sealing plaintext blobs into a target that shares the metadata store with a
/// current store that has `[encryption]` is refused too: a server running on the current
/// store would then read its own plaintext copies as sealed.
async fn check_keys(
    source: &Config,
    target: &Config,
    to: &std::path::Path,
    ring: Option<&berth_storage::seal::Keyring>,
    from: &BlobStore,
    separate: bool,
) -> anyhow::Result<()> {
    let meta = berth_meta::MetaStore::connect_with(
        &source.metadata_url(),
        &source.metadata.pool_settings(),
    )
    .await
    .context("opening the current metadata store")?;
    let current = berth_registry::Registry::new(
        from.clone(),
        meta.clone(),
        berth_registry::RegistryConfig::default(),
    );
    let result = async {
        let Some(ring) = ring else {
            let uses = current.key_uses().await?;
            let blobs: u64 = uses.iter().map(|u| u.blobs).sum();
            let secrets: u64 = uses.iter().map(|u| u.secrets).sum();
            if blobs + secrets > 0 {
                let ids: Vec<&str> = uses.iter().map(|u| u.key_id.as_str()).collect();
                anyhow::bail!(
                    "the current store holds {blobs} encrypted blobs and {secrets} encrypted \
                     secrets (key {}) and {} has no [encryption]: a server on the target could \
                     not read them. Put the same [encryption] keys in the target \
                     configuration (sealed blobs are then copied as they are stored); \
                     migrate-storage does not decrypt. Nothing was copied.",
                    ids.join(", "),
                    to.display()
                );
            }
            return Ok(());
        };
        let problems = current.keyring_fits(ring).await?;
        if !problems.is_empty() {
            let lines: Vec<String> = problems
                .iter()
                .map(|p| format!("{p} ({})", target.encryption.setting_of(key_id(p))))
                .collect();
            anyhow::bail!(
                "[encryption] of {}: {}. The target must hold every key the current store \
                 uses (add it; `berth keys rotate` and `rewrap` move off it later). Nothing \
                 was copied.",
                to.display(),
                lines.join("; ")
            );
        }
        if !separate && source.keyring()?.is_some() {
            let plain = meta.count_blobs_to_seal().await?;
            if plain > 0 {
                anyhow::bail!(
                    "{plain} blobs of the current store are not encrypted yet, and the target \
                     shares its metadata store: sealing them into the target would make a \
                     server on the current store read its own plaintext copies as encrypted. \
                     Run `berth encrypt` first (migrate-storage then copies every blob as it \
                     is stored). Nothing was copied."
                );
            }
        }
        Ok(())
    }
    .await;
    meta.close().await;
    result
}

fn key_id(p: &berth_registry::KeyProblem) -> &str {
    match p {
        berth_registry::KeyProblem::Wrong { key_id }
        | berth_registry::KeyProblem::Missing { key_id, .. } => key_id,
        berth_registry::KeyProblem::NoKeyring { .. } => "",
    }
}

/// Whether two configurations name the same blob store (the same directory, or the same
/// bucket and prefix at the same endpoint).
fn same_store(a: &Config, b: &Config) -> bool {
    use crate::config::storage::StorageKind;
    match (&a.storage.kind, &b.storage.kind) {
        (StorageKind::Fs, StorageKind::Fs) => {
            let dir = |c: &Config| std::fs::canonicalize(&c.data_dir).unwrap_or(c.data_dir.clone());
            dir(a) == dir(b)
        }
        (StorageKind::S3, StorageKind::S3) => {
            let norm = |p: &str| p.trim_matches('/').to_owned();
            a.storage.endpoint == b.storage.endpoint
                && a.storage.bucket == b.storage.bucket
                && norm(&a.storage.prefix) == norm(&b.storage.prefix)
        }
        _ => false,
    }
}
