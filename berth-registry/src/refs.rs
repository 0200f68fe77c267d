//! Which references a manifest has and which of them it needs. Storing a manifest and
//! `fsck` checking a stored one both ask here, so they cannot judge differently.

use berth_meta::{ManifestRef, RefKind};
use berth_oci::manifest::ParsedManifest;

use crate::{RegistryError, Result};

/// The references to record for `parsed`: config and layers (required unless they have
/// `urls`), and index children (required unless sparse indexes are allowed). Never the
/// subject, which may legitimately arrive later.
pub(crate) fn manifest_refs(
    parsed: &ParsedManifest,
    allow_sparse_index: bool,
) -> Result<Vec<ManifestRef>> {
    let mut refs = Vec::with_capacity(parsed.layers.len() + parsed.manifests.len() + 1);
    for d in parsed.config.iter().chain(&parsed.layers) {
        let required = !d.has_urls;
        match d.known_digest() {
            Some(known) => refs.push(ManifestRef {
                digest: known.to_string(),
                kind: RefKind::Blob,
                required,
            }),
            // Berth cannot hold a blob of an algorithm it cannot verify.
            None if required => {
                return Err(RegistryError::ManifestBlobUnknown(d.digest.clone()));
            }
            None => {}
        }
    }
    for d in &parsed.manifests {
        match d.known_digest() {
            Some(known) => refs.push(ManifestRef {
                digest: known.to_string(),
                kind: RefKind::Manifest,
                required: !allow_sparse_index,
            }),
            None if !allow_sparse_index => {
                return Err(RegistryError::ManifestBlobUnknown(d.digest.clone()));
            }
            None => {}
        }
    }
    Ok(refs)
}
