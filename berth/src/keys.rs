//! `berth keys`: the encryption keyring at run time. `status` (what each key seals),
//! `rotate --to` (the active key, for every replica through the metadata store), `rewrap`
//! (data keys and stored secrets under the active key; no blob byte rewritten), `retire`
//! (only once nothing uses a key) and `generate` (a new random key).

use base64::Engine as _;
use clap::Subcommand;
use ring::rand::SecureRandom as _;

use crate::open::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The keyring: which key is active, and how many blob data keys and stored secrets
    /// each key wraps.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make a key of the keyring (in `[[encryption.key]]` on every replica) the one new
    /// data keys and secrets are wrapped with; serving replicas follow within 10 s.
    Rotate {
        /// The key id to make active.
        #[arg(long)]
        to: String,
    },
    /// Re-wrap every data key and stored secret not wrapped by the active key (blob bytes
    /// are not rewritten). Safe beside serving replicas; resumable.
    Rewrap,
    /// Forget a key nothing uses any more (refused, saying what still uses it, otherwise);
    /// then remove it from the configuration.
    Retire {
        /// The key id.
        id: String,
    },
    /// Print a new random 256-bit key in base64, for a file or Kubernetes Secret.
    Generate,
}

pub async fn run(store: &StoreArgs, cmd: KeysCommand) -> anyhow::Result<()> {
    if let KeysCommand::Generate = cmd {
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
        return Ok(());
    }
    let (config, registry) = store.registry().await?;
    let result = async {
        let Some(ring) = registry.encryption().cloned() else {
            anyhow::bail!("encryption is not configured: add [encryption] and [[encryption.key]]");
        };
        match cmd {
            KeysCommand::Generate => Ok(()),
            KeysCommand::Status { json } => {
                let uses = registry.key_uses().await?;
                let mut ids: Vec<String> = ring.ids().map(str::to_owned).collect();
                for u in &uses {
                    if !ids.contains(&u.key_id) {
                        ids.push(u.key_id.clone());
                    }
                }
                for id in ids {
                    let u = uses.iter().find(|u| u.key_id == id);
                    let (blobs, secrets) = u.map_or((0, 0), |u| (u.blobs, u.secrets));
                    let active = ring.active_id() == id;
                    let configured = ring.has(&id);
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "key_id": id, "active": active, "configured": configured,
                                "blobs": blobs, "secrets": secrets,
                            })
                        );
                    } else {
                        println!(
                            "{id}{}{}: {blobs} blob data keys, {secrets} secrets",
                            if active { " (active)" } else { "" },
                            if configured { "" } else { " (NOT IN THE KEYRING)" },
                        );
                    }
                }
                Ok(())
            }
            KeysCommand::Rotate { to } => {
                registry
                    .activate_key(&to, &berth_meta::Actor::named("cli"))
                    .await?;
                println!(
                    "key {to} is active: new data keys and secrets are wrapped with it (serving replicas follow within 10 s); run `berth keys rewrap` to re-wrap the existing ones"
                );
                Ok(())
            }
            KeysCommand::Rewrap => {
                let bar = crate::progress::CountBar::new("data keys");
                let summary = registry
                    .rewrap_keys(&mut |done, total| bar.set(done, total))
                    .await;
                bar.finish();
                let summary = summary?;
                // The registry's keyring, so the secrets go under the same active key.
                let access = berth_registry::access::Access::new(
                    registry.meta().clone(),
                    berth_registry::access::AccessConfig {
                        encryption: Some(ring.clone()),
                        ..config.access_config()
                    },
                    crate::open::read_key_file(&config)?,
                )
                .await?;
                let secrets = access.rewrap_signing_keys().await?;
                println!(
                    "re-wrapped {} data keys and {secrets} secrets under key {}",
                    summary.rewrapped, summary.active
                );
                for (digest, why) in &summary.failed {
                    eprintln!("could not re-wrap the data key of {digest}: {why}");
                }
                if !summary.failed.is_empty() {
                    anyhow::bail!("{} data keys could not be re-wrapped", summary.failed.len());
                }
                Ok(())
            }
            KeysCommand::Retire { id } => {
                registry.retire_key(&id).await?;
                println!(
                    "key {id} is retired: nothing uses it; remove it from the configuration ({})",
                    config.encryption.setting_of(&id)
                );
                Ok(())
            }
        }
    }
    .await;
    registry.meta().close().await;
    result
}

/// `berth encrypt`: seals every blob still stored as plaintext, beside serving replicas;
/// resumable. `Ok(true)` when every blob is sealed.
pub async fn encrypt(store: &StoreArgs) -> anyhow::Result<bool> {
    let (_, registry) = store.registry().await?;
    let result = async {
        if registry.encryption().is_none() {
            anyhow::bail!("encryption is not configured: add [encryption] and [[encryption.key]]");
        }
        let bar = crate::progress::CountBar::new("blobs");
        let summary = registry
            .encrypt_blobs(&mut |done, total| bar.set(done, total))
            .await;
        bar.finish();
        let summary = summary?;
        println!("sealed {} blobs", summary.sealed);
        for d in &summary.missing {
            eprintln!("{d}: bytes missing from storage (see `berth fsck`)");
        }
        for (d, why) in &summary.failed {
            eprintln!("{d}: could not be sealed: {why}");
        }
        Ok(summary.missing.is_empty() && summary.failed.is_empty())
    }
    .await;
    registry.meta().close().await;
    result
}
