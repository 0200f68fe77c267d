//! Who may do what: password hashes, Docker token scopes, the role policy and signed
//! access tokens.
//!
//! Everything here is deterministic apart from the random salts and secrets it makes:
//! no I/O, no async, no HTTP. `berth-registry` loads identities from the metadata store and
//! asks this crate what they may do; `berth-server` turns the answers into 401/403.

pub mod net;
pub mod password;
pub mod policy;
pub mod scope;
pub mod ticket;
pub mod token;

pub use policy::{Actions, Grants, RobotScope, Role, tenant_of};
pub use scope::{MANAGEMENT_SCOPE, Scope, ScopeError, ScopeKind};
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

/// Names Berth itself uses for callers and actors in tokens and the audit log: the caller
/// without credentials, Berth's own background work (`system`, and `system:gc` and the like,
/// which no valid name can spell) and the offline CLI. A user of one of these names would be
/// indistinguishable from them (before this list, an unauthenticated token resolved to a
/// user called `anonymous`), so they are refused wherever a user name is chosen: creation,
/// htpasswd import, and (`berth-meta` migration 0007) existing users were renamed.
/// Anything new the code calls an actor belongs here, with a migration for existing rows.
pub const RESERVED_NAMES: &[&str] = &["anonymous", "system", "cli"];

/// Is `name` one that Berth uses for itself (see [`RESERVED_NAMES`])?
pub fn reserved_name(name: &str) -> bool {
    RESERVED_NAMES.contains(&name)
}

/// The key per-client limits count under: an IPv4 address (or an IPv4-mapped IPv6 one) as
/// it is, an IPv6 address by its /64, since one subscriber usually holds a whole /64 and
/// could otherwise take a new address for every attempt.
pub fn address_group(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        v4 => v4,
    }
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
        for r in RESERVED_NAMES {
            assert!(valid_name(r) && reserved_name(r), "{r}");
        }
        assert!(!reserved_name("anonymous2") && !reserved_name("admin"));
    }

    #[test]
    fn address_groups() {
        let g = |s: &str| address_group(s.parse().expect("address")).to_string();
        assert_eq!(g("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(g("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(g("192.0.2.1"), "192.0.2.1");
    }
}
