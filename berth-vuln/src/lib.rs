//! Vulnerability matching, pure: advisories and package catalogs in, findings out. No
//! I/O, no clock (the caller passes dates), no async.
//!
//! - `version`: each ecosystem's version order (dpkg, apk, rpm, PEP 440, semver for npm
//!   and Cargo, Go with pseudo-versions, Maven, RubyGems).

pub mod version;

pub use version::Scheme;
