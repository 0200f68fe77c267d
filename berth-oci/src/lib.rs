//! The OCI data model, with no I/O: bytes and strings in, validated values out.
//!
//! * [`digest`]: `algorithm:encoded` content digests.
//! * [`dockerref`]: image references as pod specs write them, with Docker's normalisation.
//! * [`name`]: repository names, tags and references, validated by the distribution spec's grammar.
//! * [`manifest`]: lenient manifest and index parsing that yields what a registry must check.
//! * [`range`]: `Content-Range` (uploads) and `Range` (downloads) header parsing.
//! * [`error`]: the fourteen error codes of the distribution spec.
//! * [`time`]: RFC 3339 timestamps.
//!
//! Everything here is deterministic and panic-free on any input, so it can be fuzzed: the
//! property checks the fuzz targets (`fuzz/`) and the corpus replay test run are in the hidden
//! `fuzzing` module, whose functions panic when a property fails.

pub mod digest;
pub mod dockerref;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod manifest;
pub mod media;
pub mod name;
pub mod range;
pub mod semver;
pub mod time;

pub use digest::{Algorithm, Digest, DigestError};
pub use dockerref::{DockerRef, DockerRefError};
pub use error::ErrorCode;
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest};
pub use name::{ImageRef, ImageRefError, NameError, Reference, RepoName, Tag, tag_sort_key};
