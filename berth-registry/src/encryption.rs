//! Encryption at rest as the registry applies it: which data key seals a blob (one per
//! digest, kept wrapped in the metadata store), the keyring's check at startup, and the
//! upload path through the sealed formats of `berth_storage::seal`.

use std::sync::Arc;

use berth_meta::WrappedKey;
use berth_oci::{Algorithm, Digest};
use berth_storage::seal::{DataKey, Keyring, SealError, sealed_len};
use berth_storage::{HashState, StorageError};
use bytes::Bytes;
use futures_util::Stream;

use crate::{Registry, RegistryError, Result};

/// What a key-encryption key's check value seals: the bytes prove the key under that id is
/// the one that was used before.
const CHECK_CONTEXT: &[u8] = b"berth-kek-check";
const CHECK_VALUE: &[u8] = b"berth encryption at rest";

/// What one key-encryption key seals.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyUse {
    pub key_id: String,
    /// Blobs whose data key it wraps.
    pub blobs: u64,
    /// Stored secrets (token signing keys) it seals.
    pub secrets: u64,
}

impl KeyUse {
    fn new(id: &str) -> KeyUse {
        KeyUse {
            key_id: id.to_owned(),
            blobs: 0,
            secrets: 0,
        }
    }
}

/// A keyring that does not fit the registry's stored data, found at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// The key under this id is not the one that sealed this registry's data.
    Wrong { key_id: String },
    /// Blobs (or stored secrets) are sealed under a key id the keyring does not have.
    Missing {
        key_id: String,
        blobs: u64,
        secrets: u64,
    },
    /// The registry holds sealed blobs and no keyring is configured.
    NoKeyring { blobs: u64 },
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyProblem::Wrong { key_id } => write!(
                f,
                "key {key_id} is not the key that was used under this id before (wrong key material)"
            ),
            KeyProblem::Missing {
                key_id,
                blobs,
                secrets,
            } => write!(
                f,
                "{blobs} blobs and {secrets} stored secrets are sealed under key {key_id}, which is not in the keyring"
            ),
            KeyProblem::NoKeyring { blobs } => write!(
                f,
                "{blobs} blobs are stored encrypted and encryption is not configured"
            ),
        }
    }
}

impl Registry {
    /// Turns encryption at rest on (`Some`) for blobs written from now on. Check the
    /// keyring against the stored data first with [`Registry::check_keyring`].
    pub fn with_encryption(mut self, keyring: Option<Arc<Keyring>>) -> Registry {
        self.encryption = keyring;
        self
    }

    pub fn encryption(&self) -> Option<&Arc<Keyring>> {
        self.encryption.as_ref()
    }

    /// Whether `keyring` can open what this registry stores: each key id used before must
    /// hold the same key (checked against the value sealed under it at first use, which is
    /// written now for keys used for the first time), and every key id that wraps a blob's
    /// data key must be in the keyring. With no keyring, no blob may be sealed.
    pub async fn check_keyring(&self, keyring: Option<&Keyring>) -> Result<Vec<KeyProblem>> {
        let uses = self.key_uses().await?;
        let Some(keyring) = keyring else {
            let blobs: u64 = uses.iter().map(|u| u.blobs + u.secrets).sum();
            return Ok(if blobs > 0 {
                vec![KeyProblem::NoKeyring { blobs }]
            } else {
                vec![]
            });
        };
        let mut problems = Vec::new();
        for id in keyring.ids() {
            match self.meta.kek_check(id).await? {
                Some(sealed) => {
                    if keyring.unwrap(id, CHECK_CONTEXT, &sealed).as_deref() != Ok(CHECK_VALUE) {
                        problems.push(KeyProblem::Wrong {
                            key_id: id.to_owned(),
                        });
                    }
                }
                None => {
                    let sealed = keyring.wrap_under(id, CHECK_CONTEXT, CHECK_VALUE)?;
                    self.meta.insert_kek_check(id, &sealed).await?;
                    // A concurrent first use may have written its value first.
                    if let Some(stored) = self.meta.kek_check(id).await?
                        && keyring.unwrap(id, CHECK_CONTEXT, &stored).as_deref() != Ok(CHECK_VALUE)
                    {
                        problems.push(KeyProblem::Wrong {
                            key_id: id.to_owned(),
                        });
                    }
                }
            }
        }
        for u in uses {
            if !keyring.ids().any(|id| id == u.key_id) {
                problems.push(KeyProblem::Missing {
                    key_id: u.key_id,
                    blobs: u.blobs,
                    secrets: u.secrets,
                });
            }
        }
        Ok(problems)
    }

    /// [`Registry::check_keyring`] without writing anything: whether `keyring` opens what
    /// this registry stores, by the check values already stored and the key ids in use.
    /// `migrate-storage` asks this of the current store for the target's keyring before it
    /// copies anything.
    pub async fn keyring_fits(&self, keyring: &Keyring) -> Result<Vec<KeyProblem>> {
        let mut problems = Vec::new();
        for id in keyring.ids() {
            if let Some(sealed) = self.meta.kek_check(id).await?
                && keyring.unwrap(id, CHECK_CONTEXT, &sealed).as_deref() != Ok(CHECK_VALUE)
            {
                problems.push(KeyProblem::Wrong {
                    key_id: id.to_owned(),
                });
            }
        }
        for u in self.key_uses().await? {
            if !keyring.has(&u.key_id) {
                problems.push(KeyProblem::Missing {
                    key_id: u.key_id,
                    blobs: u.blobs,
                    secrets: u.secrets,
                });
            }
        }
        Ok(problems)
    }

    /// What each key-encryption key seals: blobs' data keys and stored secrets (token
    /// signing keys, webhook secrets, node-local sharing's keys), by key id.
    pub async fn key_uses(&self) -> Result<Vec<KeyUse>> {
        let mut out: std::collections::BTreeMap<String, KeyUse> = Default::default();
        for u in self.meta.key_uses().await? {
            out.entry(u.key_id.clone())
                .or_insert_with(|| KeyUse::new(&u.key_id))
                .blobs += u.blobs;
        }
        for (id, n) in self.meta.signing_key_uses().await? {
            out.entry(id.clone())
                .or_insert_with(|| KeyUse::new(&id))
                .secrets += n;
        }
        for (_, _, sealed_by) in self.meta.p2p_keys().await? {
            if let Some(id) = sealed_by {
                out.entry(id.clone())
                    .or_insert_with(|| KeyUse::new(&id))
                    .secrets += 1;
            }
        }
        for (_, _, spec) in self.meta.webhooks().await? {
            if let Some(id) = sealed_webhook_key(&spec) {
                out.entry(id.clone())
                    .or_insert_with(|| KeyUse::new(&id))
                    .secrets += 1;
            }
        }
        Ok(out.into_values().collect())
    }

    /// The data key a sealed blob is read with, and whether its conversion from plaintext
    /// is under way; `None`: stored as plaintext.
    pub(crate) async fn read_key(&self, digest: &Digest) -> Result<Option<(DataKey, bool)>> {
        let Some(keyring) = &self.encryption else {
            return Ok(None);
        };
        let Some((w, state)) = self.meta.blob_key_state(digest.as_str()).await? else {
            return Ok(None);
        };
        keyring
            .open_data_key(&w.key_id, digest.as_str().as_bytes(), &w.wrapped)
            .map(|k| Some((key_in_format(k, digest.as_str(), state), state.converting)))
            .map_err(sealed)
    }

    /// A blob's plaintext size and data key if the metadata store has a key for it (it is
    /// sealed, or being converted): for copying its stored form elsewhere
    /// (`migrate-storage`).
    pub async fn sealed_blob(&self, digest: &Digest) -> Result<Option<(u64, DataKey)>> {
        let Some((key, _)) = self.read_key(digest).await? else {
            return Ok(None);
        };
        let Some(size) = self.meta.blob(digest.as_str()).await? else {
            return Ok(None);
        };
        Ok(Some((size, key)))
    }

    /// Opens a blob in the form the metadata store says it is stored in. While `berth
    /// encrypt` converts it, the object is either the plaintext or the sealed form, and its
    /// size (the plaintext's, or longer by a tag per segment) says which: the size is read
    /// from the very object opened, before any byte is passed on.
    pub(crate) async fn open_blob(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
        size: u64,
    ) -> Result<Option<berth_storage::BlobReader>> {
        let failures = || Some(Arc::clone(&self.stats.sealed_failures));
        match self.read_key(digest).await? {
            None => Ok(self.blobs.open(digest, range).await?),
            Some((key, false)) => Ok(self
                .blobs
                .open_sealed(digest, range, size, &key, failures())
                .await?),
            Some((key, true)) => match self.blobs.open(digest, range).await? {
                Some(plain) if plain.total == size => Ok(Some(plain)),
                _ => Ok(self
                    .blobs
                    .open_sealed(digest, range, size, &key, failures())
                    .await?),
            },
        }
    }

    /// Appends to an upload's data, sealed when encryption is on.
    pub(crate) async fn append_upload<S, E>(
        &self,
        id: &str,
        offset: u64,
        state: &mut HashState,
        body: S,
        limit: u64,
    ) -> std::result::Result<u64, StorageError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        match &self.encryption {
            // An upload begun sealed (encryption since turned off) cannot go on as
            // plaintext: its stored bytes are sealed segments.
            None if state.stored().is_some() => Err(StorageError::UploadUnknown(id.to_owned())),
            None => {
                self.blobs
                    .append_upload(id, offset, state, body, limit)
                    .await
            }
            Some(k) => {
                self.blobs
                    .append_upload_sealed(k, id, offset, state, body, limit)
                    .await
            }
        }
    }

    /// Makes a verified upload `digest`'s bytes, sealed under the digest's data key when
    /// encryption is on.
    pub(crate) async fn finish_upload(
        &self,
        id: &str,
        size: u64,
        state: &HashState,
        digest: &Digest,
    ) -> Result<()> {
        let Some(keyring) = &self.encryption else {
            if state.stored().is_some() {
                return Err(RegistryError::UploadUnknown);
            }
            return self
                .blobs
                .finish_upload(id, size, state, digest)
                .await
                .map_err(RegistryError::from);
        };
        if self.meta.blob_key(digest.as_str()).await?.is_none()
            && digest.algorithm() == Algorithm::Sha256
            && self.meta.blob(digest.as_str()).await?.is_some()
            && self.blobs.stat(digest).await?.is_some()
        {
            // The blob is stored as plaintext from before encryption was turned on, and
            // readers rely on that: overwriting it with sealed bytes before its state
            // changed would hand them ciphertext. The same bytes are already there; `berth
            // encrypt` seals them with an atomic switch.
            let actual = state.digest();
            if &actual != digest {
                return Err(RegistryError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            self.blobs.delete_upload(id).await?;
            return Ok(());
        }
        // Sealed as it arrived under the upload's own key; that key becomes the blob's
        // data key if it is the first recorded for the digest.
        let done = self
            .blobs
            .complete_sealed_upload(keyring, id, size, state, digest)
            .await?;
        let mine = WrappedKey {
            key_id: done.key_id,
            wrapped: done.wrapped,
        };
        let stored = self.meta.insert_blob_key(digest.as_str(), &mine).await?;
        if stored == mine {
            return Ok(self.blobs.place_sealed(id, size, digest).await?);
        }
        // Another upload (or `berth encrypt`) recorded its key first. Its bytes in place
        // are as good as ours; if they are not there yet, ours are sealed again under the
        // recorded key (fresh nonces, so the two sealings never share a (key, nonce)).
        let state = self
            .meta
            .blob_key_state(digest.as_str())
            .await?
            .map(|(_, s)| s);
        let format1 = state.is_some_and(|s| s.format1);
        let in_place = if format1 {
            berth_storage::seal::legacy::sealed_len(size)
        } else {
            sealed_len(size)
        };
        if self.blobs.stat(digest).await? == Some(in_place) {
            self.blobs.delete_upload(id).await?;
            return Ok(());
        }
        // A format-1 blob whose bytes are gone: ours go back in format 2, so the row says
        // format 2 first (a reader meanwhile finds no object either way).
        if format1 && let Some(s) = state {
            self.meta
                .move_blob_key_to_format2(digest.as_str(), s.converting)
                .await?;
        }
        let key = keyring
            .open_data_key(&stored.key_id, digest.as_str().as_bytes(), &stored.wrapped)
            .map_err(sealed)?;
        self.blobs
            .reseal_upload(id, size, &done.key, digest, &key)
            .await
            .map_err(RegistryError::from)
    }
}

/// The setting (JSON string) naming the active key-encryption key, written by `berth keys
/// rotate` and followed by every replica that has that key.
const ACTIVE_SETTING: &str = "encryption.active_key";

/// Data keys re-wrapped per transaction.
const REWRAP_BATCH: u32 = 1000;

/// What `berth keys rewrap` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewrapSummary {
    /// The key everything is wrapped with now.
    pub active: String,
    /// Data keys re-wrapped.
    pub rewrapped: u64,
    /// Data keys that could not be opened (digest, why): they stay as they were, and
    /// `fsck` reports their blobs.
    pub failed: Vec<(String, String)>,
}

/// What `berth encrypt` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EncryptSummary {
    /// Blobs sealed in this run.
    pub sealed: u64,
    /// Blobs whose bytes are missing from storage (left as they are; `fsck` reports them).
    pub missing: Vec<String>,
    /// Blobs that could not be sealed (digest, why); a later run tries again.
    pub failed: Vec<(String, String)>,
}

/// Blobs listed per page while converting.
const ENCRYPT_PAGE: u32 = 100;

impl Registry {
    /// `berth encrypt`: seals every blob still stored as plaintext, beside serving
    /// replicas. Per blob: its data key is recorded with the state `converting`, the
    /// plaintext is read, verified against the digest and sealed over it (an atomic
    /// replace on either backend), and only then does the state become `sealed`. Readers
    /// get the same bytes throughout (see [`Registry::open_blob`]); a crash leaves
    /// `converting` rows that the next run finishes. `progress(done, total)`.
    pub async fn encrypt_blobs(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<EncryptSummary> {
        let ring = self.keyring()?.clone();
        let total = self.meta.count_blobs_to_seal().await?;
        let mut summary = EncryptSummary::default();
        let mut after = String::new();
        let mut done = 0u64;
        progress(0, total);
        loop {
            let page = self.meta.blobs_to_seal(&after, ENCRYPT_PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (digest, size) in page {
                done += 1;
                match self.seal_stored_blob(&ring, &digest, size).await {
                    Ok(true) => summary.sealed += 1,
                    Ok(false) => summary.missing.push(digest),
                    Err(e) => summary.failed.push((digest, e.to_string())),
                }
                progress(done, total.max(done));
            }
        }
        Ok(summary)
    }

    /// Seals one plaintext blob in place; `false` if its bytes are missing.
    async fn seal_stored_blob(&self, ring: &Arc<Keyring>, digest: &str, size: u64) -> Result<bool> {
        let d: Digest = digest
            .parse()
            .map_err(|e| RegistryError::Internal(format!("blob digest {digest:?}: {e}")))?;
        let context = digest.as_bytes();
        let (fresh, key_id, wrapped) = ring.new_data_key(context);
        let mine = WrappedKey { key_id, wrapped };
        let stored = self.meta.start_blob_conversion(digest, &mine).await?;
        let key = if stored == mine {
            fresh
        } else {
            ring.open_data_key(&stored.key_id, context, &stored.wrapped)
                .map_err(sealed)?
        };
        let state = self.meta.blob_key_state(digest).await?.map(|(_, s)| s);
        let stat = self.blobs.stat(&d).await?;
        // A conversion the previous release began: if its object is still the plaintext,
        // this run seals it in format 2, so the row says so first; if it was sealed in
        // format 1 already, it is checked in that format and stays in it.
        let key = match state {
            Some(s) if s.format1 && stat == Some(size) => {
                self.meta.move_blob_key_to_format2(digest, true).await?;
                key
            }
            Some(s) => key_in_format(key, digest, s),
            None => key,
        };
        match stat {
            None => return Ok(false),
            // Sealed already (a run that crashed before its switch, or a push meanwhile):
            // check it whole before the state says so.
            Some(n) if n != size => {
                match self
                    .blobs
                    .verify_sealed(&d, size, &key, &mut |_| {})
                    .await?
                {
                    berth_storage::BlobCheck::Present { size: got, actual }
                        if got == size && actual == d => {}
                    _ => {
                        return Err(RegistryError::Internal(format!(
                            "{digest}: stored object is neither its plaintext nor its sealed form"
                        )));
                    }
                }
            }
            Some(_) => {
                let Some(plain) = self.blobs.open(&d, None).await? else {
                    return Ok(false);
                };
                // Verified against the digest before it is placed.
                self.blobs.seal_blob(&d, size, &key, plain.body).await?;
            }
        }
        berth_storage::failpoint::hit(berth_storage::failpoint::BEFORE_SEAL_SWITCH)
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.meta.finish_blob_conversion(digest).await?;
        Ok(true)
    }

    /// `berth migrate-storage` into an encrypted target, one blob. `self` is the target: its
    /// blob store, the metadata store it will serve with, its keyring. `source` is the
    /// current registry when it has a keyring (its metadata says which blobs it stores
    /// sealed). A sealed blob is copied in its stored form (checked by opening it on the
    /// way; its key row is the source's, shared or copied with the metadata). A plaintext
    /// blob is sealed on the way, as `berth encrypt` seals in place: its data key is
    /// recorded first (`converting2`), the sealed form is written through the target's
    /// upload path and placed only once it verified against the digest, then the state
    /// becomes `sealed2`. A re-run after a crash finds the row and reuses its key; an
    /// object already placed is checked whole, not sealed again. Plaintext never reaches
    /// the target.
    pub async fn migrate_blob_sealed(
        &self,
        from: &berth_storage::BlobStore,
        source: Option<&Registry>,
        digest: &Digest,
    ) -> Result<berth_storage::Copied> {
        use berth_storage::Copied;
        let ring = self.keyring()?;
        let Some(stored) = from.stat(digest).await? else {
            return Ok(Copied::SourceMissing);
        };
        if let Some(source) = source
            && let Some((key, converting)) = source.read_key(digest).await?
        {
            let Some(size) = source.meta.blob(digest.as_str()).await? else {
                return Err(RegistryError::Invalid(format!(
                    "{digest} is stored encrypted but the current metadata store does not list it (an orphan, which `berth fsck` reports): not copied"
                )));
            };
            if stored == key.sealed_len(size) {
                return Ok(berth_storage::copy_blob_with(
                    from,
                    &self.blobs,
                    digest,
                    Some((size, key)),
                )
                .await?);
            }
            if converting {
                // The object is still the plaintext, under a row that says `converting`
                // (and that the metadata copy would carry over as such).
                return Err(RegistryError::InUse(format!(
                    "{digest} is being converted by `berth encrypt` in the current store: run `berth encrypt` to the end first"
                )));
            }
            return Err(RegistryError::Invalid(format!(
                "{digest}: the current store's object is not the size of its sealed form (`berth fsck` reports it): not copied"
            )));
        }
        let size = stored;
        let context = digest.as_str().as_bytes();
        let (key, converting) = match self.meta.blob_key_state(digest.as_str()).await? {
            Some((_, s)) if s.format1 => {
                return Err(RegistryError::Invalid(format!(
                    "{digest} has a format-1 data key in the target's metadata store but is stored as plaintext: run `berth encrypt` first"
                )));
            }
            Some((w, s)) => (
                ring.open_data_key(&w.key_id, context, &w.wrapped)
                    .map_err(sealed)?,
                s.converting,
            ),
            None => {
                let (fresh, key_id, wrapped) = ring.new_data_key(context);
                let mine = WrappedKey { key_id, wrapped };
                let stored = self
                    .meta
                    .start_blob_conversion(digest.as_str(), &mine)
                    .await?;
                let key = if stored == mine {
                    fresh
                } else {
                    ring.open_data_key(&stored.key_id, context, &stored.wrapped)
                        .map_err(sealed)?
                };
                (key, true)
            }
        };
        let sealed_size = key.sealed_len(size);
        let there = self.blobs.stat(digest).await?;
        let copied = if there == Some(sealed_size) {
            if !converting {
                return Ok(Copied::AlreadyThere);
            }
            // Placed by a run that stopped before its switch: checked whole, not sealed
            // again (a second sealing would differ, and readers may hold the first).
            match self
                .blobs
                .verify_sealed(digest, size, &key, &mut |_| {})
                .await?
            {
                berth_storage::BlobCheck::Present { size: got, actual }
                    if got == size && &actual == digest => {}
                _ => {
                    return Err(RegistryError::Internal(format!(
                        "{digest}: the target's object is not the sealed form of the blob"
                    )));
                }
            }
            Copied::AlreadyThere
        } else {
            let Some(plain) = from.open(digest, None).await? else {
                return Ok(Copied::SourceMissing);
            };
            // Sealed as it streams, verified against the digest, then placed whole (an
            // atomic rename, or one object on S3): a missing or wrong object is replaced.
            self.blobs.seal_blob(digest, size, &key, plain.body).await?;
            Copied::Bytes(sealed_size)
        };
        berth_storage::failpoint::hit(berth_storage::failpoint::MIGRATE_SEAL_SWITCH)
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        if converting {
            self.meta.finish_blob_conversion(digest.as_str()).await?;
        }
        Ok(copied)
    }

    /// Follows `berth keys rotate`: makes the key the metadata store names active here, if
    /// this replica's keyring has it (until it does, its own active key goes on wrapping,
    /// which every replica can still open).
    pub async fn load_active_key(&self) -> Result<()> {
        let Some(ring) = &self.encryption else {
            return Ok(());
        };
        let Some(value) = self.meta.setting(ACTIVE_SETTING).await? else {
            return Ok(());
        };
        let id: String = serde_json::from_str(&value).unwrap_or(value);
        if ring.has(&id) {
            if ring.active_id() != id {
                tracing::info!(key = %id, "encryption key rotated: new data keys are wrapped with it");
            }
            ring.set_active(&id)?;
        } else {
            tracing::warn!(key = %id, "the active encryption key named in the metadata store is not in this replica's keyring; add it to [[encryption.key]]");
        }
        Ok(())
    }

    /// `berth keys rotate`: makes `id` (already in the keyring, and checked at startup) the
    /// key new data keys and secrets are wrapped with, on every replica within seconds.
    pub async fn activate_key(&self, id: &str, actor: &berth_meta::Actor) -> Result<()> {
        let ring = self.keyring()?;
        if !ring.has(id) {
            return Err(RegistryError::Invalid(format!(
                "key {id} is not in the keyring: add it to [[encryption.key]] on every replica first"
            )));
        }
        let value =
            serde_json::to_string(id).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.meta
            .set_setting(ACTIVE_SETTING, &value, actor, "encryption.rotate")
            .await?;
        ring.set_active(id)?;
        Ok(())
    }

    fn keyring(&self) -> Result<&Arc<Keyring>> {
        self.encryption.as_ref().ok_or_else(|| {
            RegistryError::Invalid("encryption is not configured ([encryption])".into())
        })
    }

    /// `berth keys rewrap`: re-wraps every blob data key not wrapped by the active key,
    /// a batch per transaction (each change only if the row is still as read), so it runs
    /// beside serving replicas and resumes where a crash stopped it. No blob byte is
    /// rewritten: the data keys themselves do not change. `progress(done, total)`.
    pub async fn rewrap_keys(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RewrapSummary> {
        let ring = self.keyring()?;
        let active = ring.active_id().to_owned();
        let total = self.meta.count_blob_keys_not_under(&active).await?;
        let mut summary = RewrapSummary {
            active: active.clone(),
            ..RewrapSummary::default()
        };
        let mut after = String::new();
        let mut seen = 0u64;
        progress(0, total);
        loop {
            let page = self
                .meta
                .blob_keys_not_under(&active, &after, REWRAP_BATCH)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let mut changes = Vec::with_capacity(page.len());
            for (digest, old) in page {
                seen += 1;
                match ring.rewrap(&old.key_id, digest.as_bytes(), &old.wrapped) {
                    Ok((key_id, wrapped)) => {
                        changes.push((digest, old, WrappedKey { key_id, wrapped }))
                    }
                    Err(e) => summary.failed.push((digest, e.to_string())),
                }
            }
            berth_storage::failpoint::hit(berth_storage::failpoint::REWRAP_BATCH)
                .map_err(|e| RegistryError::Internal(e.to_string()))?;
            summary.rewrapped += self.meta.rewrap_blob_keys(&changes).await?;
            progress(seen, total.max(seen));
        }
        self.rewrap_webhook_secrets(ring, &mut summary).await?;
        self.rewrap_p2p_keys(ring, &mut summary).await?;
        Ok(summary)
    }

    /// Re-wraps node-local sharing's stored keys (ticket and CA keys) with the active key,
    /// so retiring the old key cannot strand them.
    async fn rewrap_p2p_keys(&self, ring: &Keyring, summary: &mut RewrapSummary) -> Result<()> {
        let active = ring.active_id().to_owned();
        for (name, secret, sealed_by) in self.meta.p2p_keys().await? {
            // Stored in the clear (encryption was off when the first replica made it):
            // left as it is; the keys are sealed when made under a keyring.
            let Some(by) = sealed_by else { continue };
            if by == active {
                continue;
            }
            match ring.rewrap(&by, &crate::p2p::key_context(&name), &secret) {
                Ok((id, wrapped)) => {
                    if self
                        .meta
                        .reseal_p2p_key(&name, &secret, &by, &wrapped, &id)
                        .await?
                    {
                        summary.rewrapped += 1;
                    }
                }
                Err(e) => summary
                    .failed
                    .push((format!("p2p {name} key"), e.to_string())),
            }
        }
        Ok(())
    }

    /// Re-wraps the sealed secrets of webhooks set through the API with the active key, and
    /// seals those stored before encryption was turned on.
    async fn rewrap_webhook_secrets(
        &self,
        ring: &Keyring,
        summary: &mut RewrapSummary,
    ) -> Result<()> {
        use crate::events::{format_sealed_secret, parse_sealed_secret, webhook_secret_context};
        let active = ring.active_id().to_owned();
        for (tenant, name, spec) in self.meta.webhooks().await? {
            let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&spec) else {
                continue;
            };
            let Some(secret) = value.get("secret").and_then(|v| v.as_str()) else {
                continue;
            };
            let context = webhook_secret_context(tenant.as_deref(), &name);
            let rewrapped = match parse_sealed_secret(secret) {
                Some((id, _)) if id == active => continue,
                Some((id, wrapped)) => ring.rewrap(id, &context, &wrapped),
                // Stored before encryption was turned on: sealed now.
                None => Ok(ring.wrap(&context, secret.as_bytes())),
            };
            match rewrapped {
                Ok((id, wrapped)) => {
                    value["secret"] =
                        serde_json::Value::String(format_sealed_secret(&id, &wrapped));
                    let actor = berth_meta::Actor::named("berth keys rewrap");
                    self.meta
                        .put_webhook(tenant.as_deref(), &name, &value.to_string(), &actor)
                        .await?;
                    summary.rewrapped += 1;
                }
                Err(e) => summary
                    .failed
                    .push((format!("webhook {name}"), e.to_string())),
            }
        }
        Ok(())
    }

    /// `berth keys retire`: forgets key `id` once nothing uses it. Refused, saying what
    /// still does, while it is active or wraps any data key or secret.
    pub async fn retire_key(&self, id: &str) -> Result<()> {
        let ring = self.keyring()?;
        if ring.active_id() == id {
            return Err(RegistryError::InUse(format!(
                "key {id} is the active key: `berth keys rotate --to` another key first"
            )));
        }
        if let Some(value) = self.meta.setting(ACTIVE_SETTING).await?
            && serde_json::from_str::<String>(&value).unwrap_or(value) == id
        {
            return Err(RegistryError::InUse(format!(
                "key {id} is the active key in the metadata store: `berth keys rotate --to` another key first"
            )));
        }
        if let Some(u) = self.key_uses().await?.into_iter().find(|u| u.key_id == id)
            && (u.blobs > 0 || u.secrets > 0)
        {
            return Err(RegistryError::InUse(format!(
                "key {id} still wraps the data keys of {} blobs and seals {} stored secrets: run `berth keys rewrap` first",
                u.blobs, u.secrets
            )));
        }
        self.meta.delete_kek_check(id).await?;
        Ok(())
    }
}

/// The key id a stored webhook spec's secret is sealed under, if it is sealed.
fn sealed_webhook_key(spec: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(spec).ok()?;
    let secret = value.get("secret")?.as_str()?;
    crate::events::parse_sealed_secret(secret).map(|(id, _)| id.to_owned())
}

/// The key opening a blob in the format the metadata store records for it.
pub(crate) fn key_in_format(key: DataKey, digest: &str, state: berth_meta::KeyState) -> DataKey {
    if state.format1 {
        key.format1(digest)
    } else {
        key
    }
}

fn sealed(e: SealError) -> RegistryError {
    RegistryError::Storage(StorageError::Sealed(e))
}

impl From<SealError> for RegistryError {
    fn from(e: SealError) -> Self {
        sealed(e)
    }
}
