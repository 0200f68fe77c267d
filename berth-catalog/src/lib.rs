//! What is inside an image. A layer is read once, as a stream (`catalog_layer`), into a
//! `LayerCatalog` kept per layer digest; an image's catalog is its layers' catalogs merged
//! in order (`merge`), whiteouts and opaque directories applied, so a base layer shared by
//! many images is read once. No HTTP, no SQL, no storage paths: readers in, data out.
//!
//! Bounds (`Limits`): entries per layer, bytes of any single file read, packages per
//! layer, a deadline. A layer over one is kept as far as it was read, marked partial with
//! the reason. Memory per scan is at most the zstd window (64 MiB), one file read
//! (64 MiB), a nested jar or an rpm header copied out of its database (16 MiB) and the
//! results: under 160 MiB.

mod bdb;
pub mod decompress;
mod elf;
#[doc(hidden)]
pub mod fuzzing;
mod layer;
mod merge;
pub mod parsers;
pub mod purl;
pub mod rpm;
pub mod sbom;
mod sqlite;
pub mod tar;
pub mod zip;

pub use decompress::Compression;
pub use layer::catalog_layer;
pub use merge::{ImageCatalog, ImagePackage, LayerRef, merge};

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Version of what `catalog_layer` finds: stored per-layer results of an older version are
/// read again when a newer cataloger would find more.
pub const CATALOGER_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    Deb,
    Apk,
    Rpm,
    Pypi,
    Npm,
    Cargo,
    Golang,
    Maven,
}

impl Ecosystem {
    /// The purl type, which is also the name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Apk => "apk",
            Ecosystem::Rpm => "rpm",
            Ecosystem::Pypi => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::Cargo => "cargo",
            Ecosystem::Golang => "golang",
            Ecosystem::Maven => "maven",
        }
    }

    pub fn parse(s: &str) -> Option<Ecosystem> {
        Some(match s {
            "deb" => Ecosystem::Deb,
            "apk" => Ecosystem::Apk,
            "rpm" => Ecosystem::Rpm,
            "pypi" => Ecosystem::Pypi,
            "npm" => Ecosystem::Npm,
            "cargo" => Ecosystem::Cargo,
            "golang" => Ecosystem::Golang,
            "maven" => Ecosystem::Maven,
            _ => return None,
        })
    }
}

/// A package as one layer shows it. The purl is made when the image is merged, since a
/// distribution package's purl names the distribution, which another layer may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub ecosystem: Ecosystem,
    /// Maven: `group:artifact`; npm: `@scope/name` as written.
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// dpkg `Source:` / apk origin / rpm `SOURCERPM`: the source package advisories are
    /// keyed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// The file it was found in, inside the image.
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    pub id: String,
    #[serde(default)]
    pub version_id: String,
    #[serde(default)]
    pub version_codename: String,
    #[serde(default)]
    pub pretty_name: String,
    #[serde(default)]
    pub id_like: String,
}

/// A file that matters but could not be read: too large, malformed, unsupported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIssue {
    pub path: String,
    pub reason: String,
}

/// What one layer holds, as far as the catalogers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCatalog {
    pub cataloger_version: u32,
    pub compression: Option<Compression>,
    pub packages: Vec<Package>,
    /// `(path, release)` for `etc/os-release` and `usr/lib/os-release`.
    pub os_release: Vec<(String, OsRelease)>,
    /// Every path a cataloger looked at (whatever it found there), so a later layer that
    /// replaces the file hides what an earlier one found in it.
    pub seen: Vec<String>,
    /// `etc/os-release` is often a symlink; the merge follows it one step.
    pub symlinks: Vec<(String, String)>,
    /// Paths a `.wh.` entry deletes (with everything below them).
    pub whiteouts: Vec<String>,
    /// Directories whose lower-layer contents a `.wh..wh..opq` entry hides.
    pub opaque: Vec<String>,
    pub issues: Vec<FileIssue>,
    /// Set when the layer was not read to its end, with the reason.
    pub partial: Option<String>,
    pub entries: u64,
    /// Uncompressed bytes read.
    pub tar_bytes: u64,
}

/// Caps on one layer's scan. The defaults are the stated bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_entries: u64,
    /// Largest single file read into memory (package databases, jars, binaries).
    pub max_file_bytes: u64,
    /// Largest jar nested in a jar that is opened.
    pub max_nested_bytes: u64,
    pub max_packages: usize,
    /// Uncompressed bytes of the tar stream; beyond it the layer is a bomb.
    pub max_tar_bytes: u64,
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_file_bytes: 64 << 20,
            max_nested_bytes: 16 << 20,
            max_packages: 100_000,
            max_tar_bytes: 64 << 30,
            deadline: None,
        }
    }
}
