//! Vulnerability matching, pure: advisories and package catalogs in, findings out. No
//! I/O, no clock (the caller passes dates), no async.
//!
//! - `version`: each ecosystem's version order (dpkg, apk, rpm, PEP 440, semver for npm
//!   and Cargo, Go with pseudo-versions, Maven, RubyGems).
//! - `advisory`: the one record model every format becomes.
//! - `formats`: OSV (files, lists, ecosystem zips), the Debian security tracker, Alpine
//!   secdb; bad records are skipped with a reason, never fatal.
//! - `cvss`: base scores from CVSS v3.x and v4.0 vectors.
//! - `matching`: the (ecosystem, name) index and the findings of a package.

pub mod advisory;
pub mod cvss;
pub mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod matching;
pub mod version;

pub use advisory::{Record, Severity, Status};
pub use formats::{Feed, Skip, parse};
pub use matching::{Finding, Index, Package};
pub use version::Scheme;
