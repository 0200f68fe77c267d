//! `[encryption]`: the keyring of key-encryption keys that seal blobs at rest.
//!
//! ```toml
//! [encryption]
//! active = "2026-01"
//! [[encryption.key]]
//! id = "2026-01"
//! file = "/var/run/secrets/berth-kek/2026-01"   # a Kubernetes Secret mount
//! [[encryption.key]]
//! id = "2025-07"
//! env = "BERTH_KEK_2025_07"
//! ```
//!
//! A key is 32 bytes, written as 64 hex digits or in base64 (surrounding whitespace is
//! ignored; raw 32-byte files are taken as they are).

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use berth_storage::seal::{KEY_LEN, Keyring, valid_key_id};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// The id of the key new data keys are wrapped with. Unset with one key: that key.
    pub active: Option<String>,
    /// `[[encryption.key]]`; none: encryption is off.
    #[serde(rename = "key")]
    pub keys: Vec<KeyEntry>,
}

/// One key-encryption key and where its bytes come from (exactly one of `file`, `env`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl KeyEntry {
    /// The setting a message about this key names.
    pub fn setting(&self) -> String {
        match (&self.file, &self.env) {
            (Some(f), _) => format!(
                "[[encryption.key]] id = {:?}, file = {}",
                self.id,
                f.display()
            ),
            (None, Some(e)) => format!("[[encryption.key]] id = {:?}, env = {e}", self.id),
            (None, None) => format!("[[encryption.key]] id = {:?}", self.id),
        }
    }

    fn read(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<[u8; KEY_LEN]> {
        let raw: Vec<u8> = match (&self.file, &self.env) {
            (Some(_), Some(_)) | (None, None) => anyhow::bail!(
                "key {}: give exactly one of file and env ({})",
                self.id,
                self.setting()
            ),
            (Some(f), None) => std::fs::read(f).map_err(|e| {
                anyhow::anyhow!(
                    "key {}: cannot read {}: {e} ({})",
                    self.id,
                    f.display(),
                    self.setting()
                )
            })?,
            (None, Some(var)) => env(var)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "key {}: environment variable {var} is not set ({})",
                        self.id,
                        self.setting()
                    )
                })?
                .into_bytes(),
        };
        parse_key(&raw)
            .map_err(|why| anyhow::anyhow!("key {}: {why} ({})", self.id, self.setting()))
    }
}

/// 32 raw bytes, 64 hex digits, or base64 of 32 bytes.
fn parse_key(raw: &[u8]) -> Result<[u8; KEY_LEN], String> {
    if let Ok(k) = <[u8; KEY_LEN]>::try_from(raw)
        && std::str::from_utf8(raw).map_or(true, |s| s.trim().len() != KEY_LEN)
    {
        return Ok(k);
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| {
            format!(
                "must be 32 bytes (64 hex digits or base64), found {} bytes",
                raw.len()
            )
        })?
        .trim();
    let decoded = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "must be 32 bytes as 64 hex digits or base64; it is neither".to_owned())?
    };
    <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| {
        format!(
            "must be 32 bytes (256 bits), decodes to {} bytes",
            decoded.len()
        )
    })
}

impl EncryptionConfig {
    /// The keyring, read from the files and variables named; `None` when encryption is
    /// off. Every message names the key id and the setting at fault.
    pub fn keyring(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Arc<Keyring>>> {
        if self.keys.is_empty() {
            if let Some(a) = &self.active {
                anyhow::bail!(
                    "[encryption] active = {a:?}, but no [[encryption.key]] is configured"
                );
            }
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            if !valid_key_id(&k.id) {
                anyhow::bail!(
                    "[encryption] key id {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                    k.id
                );
            }
            keys.push((k.id.clone(), k.read(env)?));
        }
        let active = match (&self.active, self.keys.as_slice()) {
            (Some(a), _) => a.clone(),
            (None, [only]) => only.id.clone(),
            (None, _) => anyhow::bail!(
                "[encryption] active is unset: with several keys, name the one new data keys are wrapped with"
            ),
        };
        let ring = Keyring::new(keys, &active).map_err(|e| anyhow::anyhow!("[encryption] {e}"))?;
        Ok(Some(Arc::new(ring)))
    }

    /// The setting a message about key `id` names.
    pub fn setting_of(&self, id: &str) -> String {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .map(KeyEntry::setting)
            .unwrap_or_else(|| format!("[[encryption.key]] (no key with id {id:?} is configured)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, env: &str) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            file: None,
            env: Some(env.into()),
        }
    }

    #[test]
    fn keys_come_from_files_and_variables_and_errors_name_them() {
        let hexkey = "ab".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("k3");
        std::fs::write(&f, format!("{b64}\n")).expect("write");
        let config = EncryptionConfig {
            active: Some("k3".into()),
            keys: vec![
                entry("k1", "KEK1"),
                KeyEntry {
                    id: "k3".into(),
                    file: Some(f.clone()),
                    env: None,
                },
            ],
        };
        let env = |k: &str| (k == "KEK1").then(|| hexkey.clone());
        let ring = config.keyring(&env).expect("keyring").expect("on");
        assert_eq!(ring.active_id(), "k3");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k1", "k3"]);

        let unset = |_: &str| None;
        let e = config.keyring(&unset).expect_err("refused").to_string();
        assert!(e.contains("key k1") && e.contains("env = KEK1"), "{e}");

        std::fs::write(&f, "too short").expect("write");
        let e = config.keyring(&env).expect_err("refused").to_string();
        assert!(
            e.contains("key k3") && e.contains(&f.display().to_string()),
            "{e}"
        );

        std::fs::remove_file(&f).expect("rm");
        let e = config.keyring(&env).expect_err("refused").to_string();
        assert!(e.contains("key k3") && e.contains("cannot read"), "{e}");

        let short = |_: &str| Some("abcd".to_owned());
        let one = EncryptionConfig {
            active: None,
            keys: vec![entry("k1", "KEK1")],
        };
        let e = one.keyring(&short).expect_err("refused").to_string();
        assert!(e.contains("key k1") && e.contains("KEK1"), "{e}");
        assert_eq!(
            one.keyring(&env).expect("ok").expect("on").active_id(),
            "k1"
        );
        let missing_active = EncryptionConfig {
            active: Some("k9".into()),
            keys: vec![entry("k1", "KEK1")],
        };
        let e = missing_active
            .keyring(&env)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("k9"), "{e}");
        assert!(
            EncryptionConfig::default()
                .keyring(&env)
                .expect("off")
                .is_none()
        );
    }

    #[test]
    fn raw_hex_and_base64_keys_parse() {
        assert_eq!(parse_key(&[9u8; 32]), Ok([9u8; 32]));
        assert_eq!(parse_key("0a".repeat(32).as_bytes()), Ok([10u8; 32]));
        assert!(parse_key(b"0a0a").is_err());
        assert!(parse_key(&[1u8; 31]).is_err());
    }
}
