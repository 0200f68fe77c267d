//! Password and secret hashing: argon2id for everything Berth creates, bcrypt only to
//! verify hashes imported from an htpasswd file.

use argon2::{Argon2, PasswordHasher, PasswordVerifier, password_hash::phc::PasswordHash};
use base64::Engine as _;
use rand::RngCore as _;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("htpasswd line {line}: {reason}")]
    Htpasswd { line: usize, reason: String },
}

/// Longest password or secret accepted; argon2 would take any length, but nobody types
/// more and a bound keeps a hostile request cheap.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with a fresh salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks `password` against a stored argon2 or bcrypt hash. A malformed hash matches
/// nothing.
pub fn verify(stored: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    if stored.starts_with("$argon2") {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        return Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
    }
    if is_bcrypt(stored) {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    false
}

/// Spends the time of one verification without a real hash, so that a login for a name
/// that does not exist takes as long as one with a wrong password.
pub fn verify_dummy(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("berth-dummy-password").unwrap_or_default());
    let _ = verify(stored, password);
}

fn is_bcrypt(stored: &str) -> bool {
    ["$2y$", "$2b$", "$2a$"]
        .iter()
        .any(|p| stored.starts_with(p))
}

/// A random secret for a robot account or a generated password: 32 bytes, base64url.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Parses an htpasswd file as CNCF Distribution reads it: `name:hash` lines, bcrypt only.
/// MD5 (`$apr1$`), SHA1 (`{SHA}`) and crypt hashes are refused, naming the line, rather
/// than imported: they are too weak to keep.
pub fn parse_htpasswd(text: &str) -> Result<Vec<(String, String)>, PasswordError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| PasswordError::Htpasswd {
            line: i + 1,
            reason: reason.to_owned(),
        };
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| err("no ':' separator"))?;
        if !crate::valid_name(name) {
            return Err(err(
                "user name is not a valid Berth name (lowercase, digits, . _ -)",
            ));
        }
        if crate::reserved_name(name) {
            return Err(err(&format!(
                "user name {name:?} is reserved: Berth uses it for itself"
            )));
        }
        if !is_bcrypt(hash) {
            return Err(err("only bcrypt hashes ($2y$, $2b$) can be imported"));
        }
        out.push((name.to_owned(), hash.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = hash("s3cret").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "s3cret "));
        assert_ne!(h, hash("s3cret").expect("hash"), "salts differ");
    }

    #[test]
    fn bcrypt_from_htpasswd() {
        let b = bcrypt::hash("hunter2", 4).expect("bcrypt");
        let b = b.replacen("$2b$", "$2y$", 1);
        let users = parse_htpasswd(&format!("# comment\nalice:{b}\n\n")).expect("parse");
        assert_eq!(users.len(), 1);
        assert!(verify(&users[0].1, "hunter2"));
        assert!(!verify(&users[0].1, "hunter3"));
    }

    #[test]
    fn weak_htpasswd_hashes_are_refused() {
        let e = parse_htpasswd("bob:$apr1$abc$def").expect_err("md5");
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(parse_htpasswd("bob:{SHA}abc").is_err());
        assert!(parse_htpasswd("no-colon").is_err());
        let b = bcrypt::hash("hunter2", 4).expect("bcrypt");
        let e = parse_htpasswd(&format!("alice:{b}\nanonymous:{b}")).expect_err("reserved");
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn garbage_hashes_match_nothing() {
        assert!(!verify("", ""));
        assert!(!verify("$argon2id$garbage", "x"));
        assert!(!verify("$2y$garbage", "x"));
        assert!(!verify("plaintext", "plaintext"));
    }
}
