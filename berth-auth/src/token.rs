//! Access and refresh tokens: JWTs signed with HMAC-SHA256 (`HS256`).
//!
//! Clients treat registry tokens as opaque, so a symmetric signature is enough, and its key
//! lives in the metadata store where every replica finds it. Keys carry an id (`kid`) so
//! a rotation can add a new signing key while tokens signed by the old one stay valid until
//! they expire.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::Actions;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Longest token accepted; a real one is well under 4 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock difference tolerated between replicas, in seconds.
const LEEWAY_SECS: i64 = 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token was signed by an unknown key")]
    UnknownKey,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another service")]
    WrongAudience,
    #[error("no signing key")]
    NoKey,
}

/// One signing key.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    // The secret must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random 256-bit key.
    pub fn generate() -> SigningKey {
        let mut secret = vec![0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let mut id = [0u8; 8];
        rand::rng().fill_bytes(&mut id);
        SigningKey {
            kid: URL_SAFE_NO_PAD.encode(id),
            secret,
        }
    }
}

/// The keys a server verifies with; the first one signs.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    pub keys: Vec<SigningKey>,
}

/// One `access` claim entry, as in the Docker token spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// `refresh` marks a refresh token, which opens no repository by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A fingerprint of the credential the token came from: a refresh token dies when the
    /// password or robot secret changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred: Option<String>,
    /// Set on tokens issued without credentials. `sub` then only labels the caller for
    /// logs (`anonymous`); it is never looked up as a user, whatever users exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anon: bool,
}

impl Claims {
    /// What the token grants on `repo`.
    pub fn actions_on(&self, repo: &str) -> Actions {
        self.access
            .iter()
            .filter(|e| e.kind == "repository" && e.name == repo)
            .fold(Actions::NONE, |acc, e| {
                acc.union(Actions::from_names(e.actions.iter().map(String::as_str)))
            })
    }

    pub fn is_refresh(&self) -> bool {
        self.kind.as_deref() == Some("refresh")
    }

    /// Does the token carry the management scope ([`crate::MANAGEMENT_SCOPE`])? Never for
    /// an anonymous token, whatever its claims say.
    pub fn grants_management(&self) -> bool {
        !self.anon
            && self.access.iter().any(|e| {
                e.kind == crate::ScopeKind::Management.as_str()
                    && e.name == "api"
                    && e.actions.iter().any(|a| a == "*")
            })
    }
}

/// A random token id.
pub fn new_jti() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

fn mac(secret: &[u8], signing_input: &[u8]) -> Result<HmacSha256, TokenError> {
    let mut m = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::NoKey)?;
    m.update(signing_input);
    Ok(m)
}

impl Keyring {
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let key = self.keys.first().ok_or(TokenError::NoKey)?;
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
            kid: Some(key.kid.clone()),
        };
        let header = serde_json::to_vec(&header).map_err(|_| TokenError::Malformed)?;
        let body = serde_json::to_vec(claims).map_err(|_| TokenError::Malformed)?;
        let mut out = URL_SAFE_NO_PAD.encode(header);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(body));
        let sig = mac(&key.secret, out.as_bytes())?.finalize().into_bytes();
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(out)
    }

    /// Checks signature, audience and lifetime (`now` in seconds since the epoch).
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        // Only our own algorithm: never `none`, never an asymmetric one keyed with our
        // secret.
        if header.alg != "HS256" {
            return Err(TokenError::BadSignature);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        mac(&key.secret, signing_input.as_bytes())?
            .verify_slice(&decode(s)?)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
        if claims.aud != audience {
            return Err(TokenError::WrongAudience);
        }
        if now >= claims.exp + LEEWAY_SECS {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY_SECS < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "berth".into(),
            sub: "alice".into(),
            aud: "berth".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: new_jti(),
            access: vec![AccessEntry {
                kind: "repository".into(),
                name: "team-a/app".into(),
                actions: vec!["pull".into(), "push".into()],
            }],
            kind: None,
            cred: None,
            anon: false,
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let old = Keyring {
            keys: vec![SigningKey::generate()],
        };
        let t = old.sign(&claims(1000)).expect("sign");
        let back = old.verify(&t, "berth", 1001).expect("verify");
        assert_eq!(
            back.actions_on("team-a/app"),
            Actions::PULL.union(Actions::PUSH)
        );
        assert_eq!(back.actions_on("team-b/app"), Actions::NONE);
        // After a rotation the new key signs and the old one still verifies.
        let rotated = Keyring {
            keys: vec![SigningKey::generate(), old.keys[0].clone()],
        };
        assert!(rotated.verify(&t, "berth", 1001).is_ok());
        let t2 = rotated.sign(&claims(1000)).expect("sign");
        assert_eq!(old.verify(&t2, "berth", 1001), Err(TokenError::UnknownKey));
    }

    #[test]
    fn refuses_what_it_must() {
        let k = Keyring {
            keys: vec![SigningKey::generate()],
        };
        let t = k.sign(&claims(1000)).expect("sign");
        assert_eq!(k.verify(&t, "berth", 1400), Err(TokenError::Expired));
        assert_eq!(k.verify(&t, "other", 1001), Err(TokenError::WrongAudience));
        assert_eq!(k.verify(&t, "berth", 900), Err(TokenError::NotYetValid));
        // Tampered claims: widen the access list without re-signing.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c = claims(1000);
        c.access[0].name = "team-b/app".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).expect("json"));
        assert_eq!(
            k.verify(&parts.join("."), "berth", 1001),
            Err(TokenError::BadSignature)
        );
        // alg=none.
        parts[0] = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#);
        assert_eq!(
            k.verify(&parts.join("."), "berth", 1001),
            Err(TokenError::BadSignature)
        );
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.###.$$$",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                k.verify(junk, "berth", 1001),
                Err(TokenError::Malformed),
                "{junk:.20}"
            );
        }
    }
}
