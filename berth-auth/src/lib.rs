//! Who may do what: password hashes, Docker token scopes, the role policy and signed
//! access tokens.
//!
//! Everything here is deterministic apart from the random salts and secrets it makes:
//! no I/O, no async, no HTTP. `berth-registry` loads identities from the metadata store and
//! asks this crate what they may do; `berth-server` turns the answers into 401/403.

pub mod password;
pub mod policy;
pub mod scope;
pub mod token;

pub use policy::{Actions, Grants, RobotScope, Role, tenant_of};
pub use scope::{Scope, ScopeKind};
pub use token::{AccessEntry, Claims, Keyring, SigningKey, TokenError};

/// The tenant that owns single-segment repository names (`alpine`).
pub const LIBRARY: &str = "library";

/// Robots log in as `<tenant>+<name>`: `+` is in no user or tenant name, so the two
/// namespaces never collide.
pub const ROBOT_SEPARATOR: char = '+';

/// Checks a user, robot or tenant name: lowercase letters, digits and `.`, `_`, `-`
/// between them, at most 64 bytes. Tenants are the first path segment of repository
/// names, so they must also be valid there; users share the rule to stay printable and
/// unambiguous in logs and Secrets.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 64 {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut prev_sep = false;
    for &c in b {
        let sep = matches!(c, b'.' | b'_' | b'-');
        if !(alnum(c) || sep) || (sep && prev_sep) {
            return false;
        }
        prev_sep = sep;
    }
    true
}

/// Splits a robot login `<tenant>+<name>`.
pub fn split_robot(login: &str) -> Option<(&str, &str)> {
    let (t, n) = login.split_once(ROBOT_SEPARATOR)?;
    (valid_name(t) && valid_name(n)).then_some((t, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "team-a", "ci.bot", "x_1", "0"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a--b",
            "a/b",
            "a+b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(split_robot("team-a+ci"), Some(("team-a", "ci")));
        assert_eq!(split_robot("team-a"), None);
        assert_eq!(split_robot("team-a+"), None);
    }
}
