//! Use cases of the web interface that the API has no counterpart for: sessions (opened
//! after the same login as the API's Basic credentials, kept in the metadata store so every
//! replica honours them and a logout anywhere ends them) and a page of a repository's tags
//! with the facts its table shows.

use std::time::Duration;

use base64::Engine as _;
use berth_meta::{TagRow, UiSession};
use berth_oci::RepoName;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::access::{Access, Identity, IdentityKind};
use crate::{Registry, RegistryError, Result};

/// A session in use: the identity with its current grants, and the token every form of
/// the session must carry back.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    pub csrf: String,
}

/// 32 random bytes, URL-safe base64: session cookies and anti-forgery tokens.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The key a session is stored under: the cookie's value never reaches the database, so
/// reading the table (a backup, a replica's log) opens no session.
fn session_key(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

impl Access {
    /// Opens a session for a user who has just logged in; the cookie value and the session.
    /// Robots and the anonymous caller get no session: the interface is for people.
    pub async fn open_session(&self, who: &Identity, ttl: Duration) -> Result<(String, Session)> {
        if who.kind != IdentityKind::User {
            return Err(RegistryError::Denied(
                "only users log in to the web interface".into(),
            ));
        }
        let cookie = random_token();
        let csrf = random_token();
        let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        self.meta()
            .create_ui_session(
                &session_key(&cookie),
                &UiSession {
                    subject: who.name.clone(),
                    cred: who.cred.clone(),
                    csrf: csrf.clone(),
                    expires_at: berth_meta::now_micros().saturating_add(ttl),
                },
            )
            .await?;
        Ok((
            cookie,
            Session {
                identity: who.clone(),
                csrf,
            },
        ))
    }

    /// The session a cookie names, with the user's current grants; `None` if it expired,
    /// was ended, or its user was disabled, deleted or changed password since.
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>> {
        if cookie.is_empty() || cookie.len() > 128 {
            return Ok(None);
        }
        let Some(s) = self.meta().ui_session(&session_key(cookie)).await? else {
            return Ok(None);
        };
        let Some(identity) = self.identity(&s.subject).await? else {
            return Ok(None);
        };
        if identity.cred != s.cred || identity.kind != IdentityKind::User {
            return Ok(None);
        }
        Ok(Some(Session {
            identity,
            csrf: s.csrf,
        }))
    }

    /// Deletes expired sessions (they are refused anyway); how many.
    pub async fn prune_sessions(&self) -> Result<u64> {
        Ok(self.meta().prune_ui_sessions().await?)
    }

    /// Ends the session a cookie names, on every replica at once (they all read the one
    /// table); true if there was one.
    pub async fn close_session(&self, cookie: &str) -> Result<bool> {
        if cookie.is_empty() || cookie.len() > 128 {
            return Ok(false);
        }
        Ok(self.meta().delete_ui_session(&session_key(cookie)).await?)
    }
}

impl Registry {
    /// Up to `n` tags of `repo` after `last` in the listing order, with digest, media type,
    /// manifest size and times; the second value says whether more follow.
    pub async fn tag_page(
        &self,
        repo: &RepoName,
        n: u64,
        last: Option<&str>,
    ) -> Result<(Vec<TagRow>, bool)> {
        let limit = n.clamp(1, self.config.max_page);
        let mut rows = self
            .meta
            .tag_page(repo.as_str(), last, limit + 1)
            .await?
            .ok_or(RegistryError::NameUnknown)?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }
}

impl Registry {
    /// A small blob of `repo` read whole (an image's config), refused past `max` bytes.
    pub async fn read_config_blob(
        &self,
        repo: &RepoName,
        digest: &berth_oci::Digest,
        max: u64,
    ) -> Result<Vec<u8>> {
        use futures_util::StreamExt as _;
        let size = self.stat_blob(repo, digest).await?;
        if size > max {
            return Err(RegistryError::Invalid(format!(
                "blob {digest} is {size} bytes, more than the {max} shown"
            )));
        }
        let Some(mut reader) = self.read_blob(repo, digest, None, true).await?.reader else {
            return Err(RegistryError::BlobUnknown);
        };
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = reader.body.next().await {
            let chunk =
                chunk.map_err(|e| RegistryError::Internal(format!("reading {digest}: {e}")))?;
            if (out.len() + chunk.len()) as u64 > max {
                return Err(RegistryError::Invalid(format!(
                    "blob {digest} is too large"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl Registry {
    /// Up to `n` version tags of `repo`, newest version first, after `last` in that order
    /// (an index range, not a sort); the second value says whether more follow.
    pub async fn version_page(
        &self,
        repo: &RepoName,
        n: u64,
        last: Option<&str>,
    ) -> Result<(Vec<TagRow>, bool)> {
        let limit = n.clamp(1, self.config.max_page);
        let mut rows = self
            .meta
            .version_page(repo.as_str(), last, limit + 1)
            .await?
            .ok_or(RegistryError::NameUnknown)?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }
}
