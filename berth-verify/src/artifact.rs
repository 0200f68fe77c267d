//! What a manifest is, decided by its content: the media types of its layers and its
//! artifact type. Never by a tag name (`sha256-<hex>.sig` is only a convention anyone can
//! push an image under) nor by a `subject` alone (any manifest may name one). Only a
//! manifest all of whose layers are signature, attestation or SBOM documents is one; a
//! manifest with a single filesystem layer is an image, whatever its tag.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const COSIGN_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const NOTARY_SIGNATURE: &str = "application/vnd.cncf.notary.signature";
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SBOM_TYPES: &[&str] = &[
    "application/spdx+json",
    "text/spdx",
    "text/spdx+json",
    "text/spdx+xml",
    "application/vnd.cyclonedx",
    "application/vnd.cyclonedx+json",
    "application/vnd.cyclonedx+xml",
    "application/vnd.syft+json",
];

/// The kinds of manifest the policy layer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Anything runnable or unknown: judged by the rules.
    Image,
    /// An index or manifest list: judged, and its signature covers its children.
    Index,
    CosignSignature,
    Attestation,
    NotarySignature,
    Sbom,
    /// An index listing only signatures, attestations and SBOMs (referrers tag schema).
    ReferrersIndex,
}

impl Kind {
    /// Signatures, attestations and SBOMs: always served, or clients could not verify.
    pub fn is_supply_chain(self) -> bool {
        !matches!(self, Kind::Image | Kind::Index)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Index => "index",
            Kind::CosignSignature => "cosign_signature",
            Kind::Attestation => "attestation",
            Kind::NotarySignature => "notary_signature",
            Kind::Sbom => "sbom",
            Kind::ReferrersIndex => "referrers_index",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    manifests: Option<Vec<RawChild>>,
    subject: Option<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawChild {
    artifact_type: Option<String>,
}

/// Artifact types of referrers that are signatures, attestations or SBOMs.
fn is_supply_chain_artifact(t: &str) -> bool {
    t == NOTARY_SIGNATURE
        || t.starts_with("application/vnd.dev.cosign.")
        || t == DSSE_ENVELOPE
        || crate::bundle::is_bundle_type(t)
        || t.starts_with("application/vnd.in-toto")
        || SBOM_TYPES.contains(&t)
}

/// A layer that carries a signature document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// Cosign's base64 signature annotation, for simple-signing layers.
    pub signature: Option<String>,
    /// Cosign's signing certificate and chain (PEM), Rekor bundle and RFC 3161
    /// timestamp annotations, for signatures made with a certificate.
    pub certificate: Option<String>,
    pub chain: Option<String>,
    pub bundle: Option<String>,
    pub rfc3161: Option<String>,
}

/// A manifest as the policy layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub kind: Kind,
    /// The signature layers, for the signature kinds.
    pub layers: Vec<SignatureLayer>,
    /// The `subject` digest, if any.
    pub subject: Option<String>,
}

/// Classifies manifest bytes. Anything that does not parse is an image: judged, never
/// waved through.
pub fn classify(manifest: &[u8]) -> Classified {
    let image = Classified {
        kind: Kind::Image,
        layers: Vec::new(),
        subject: None,
    };
    let Ok(raw) = serde_json::from_slice::<Raw>(manifest) else {
        return image;
    };
    let subject = raw.subject.as_ref().map(|s| s.digest.clone());
    let is_index = raw.manifests.is_some()
        || matches!(
            raw.media_type.as_deref(),
            Some(
                "application/vnd.oci.image.index.v1+json"
                    | "application/vnd.docker.distribution.manifest.list.v2+json"
            )
        );
    if is_index {
        // The referrers tag schema's index (`sha256-<hex>`, written by clients that fall
        // back from the referrers API): it lists signatures and SBOMs, nothing runnable.
        let children = raw.manifests.as_deref().unwrap_or_default();
        if !children.is_empty()
            && children.iter().all(|c| {
                c.artifact_type
                    .as_deref()
                    .is_some_and(is_supply_chain_artifact)
            })
        {
            return Classified {
                kind: Kind::ReferrersIndex,
                layers: Vec::new(),
                subject,
            };
        }
        return Classified {
            kind: Kind::Index,
            layers: Vec::new(),
            subject,
        };
    }
    if raw.layers.is_empty() {
        return Classified { subject, ..image };
    }
    let all = |f: &dyn Fn(&str) -> bool| raw.layers.iter().all(|l| f(&l.media_type));
    let notary_type = raw.artifact_type.as_deref() == Some(NOTARY_SIGNATURE)
        || raw.config.as_ref().map(|c| c.media_type.as_str()) == Some(NOTARY_SIGNATURE);
    let kind = if all(&|m| m == COSIGN_SIMPLE_SIGNING) {
        Kind::CosignSignature
    } else if all(&|m| m == DSSE_ENVELOPE || crate::bundle::is_bundle_type(m)) {
        Kind::Attestation
    } else if notary_type
        && all(&|m| m == crate::notary::JWS_MEDIA_TYPE || m == crate::notary::COSE_MEDIA_TYPE)
    {
        Kind::NotarySignature
    } else if all(&|m| SBOM_TYPES.contains(&m)) {
        Kind::Sbom
    } else {
        Kind::Image
    };
    let layers = if matches!(
        kind,
        Kind::CosignSignature | Kind::Attestation | Kind::NotarySignature
    ) {
        raw.layers
            .into_iter()
            .map(|mut l| SignatureLayer {
                signature: l.annotations.remove(COSIGN_SIGNATURE_ANNOTATION),
                certificate: l.annotations.remove(crate::keyless::CERTIFICATE_ANNOTATION),
                chain: l.annotations.remove(crate::keyless::CHAIN_ANNOTATION),
                bundle: l.annotations.remove(crate::keyless::BUNDLE_ANNOTATION),
                rfc3161: l.annotations.remove(crate::keyless::RFC3161_ANNOTATION),
                media_type: l.media_type,
                digest: l.digest,
                size: l.size,
            })
            .collect()
    } else {
        Vec::new()
    };
    Classified {
        kind,
        layers,
        subject,
    }
}

/// The signature layers of a manifest, if it is a signature or attestation.
pub fn signature_layers(manifest: &[u8]) -> Vec<SignatureLayer> {
    classify(manifest).layers
}
