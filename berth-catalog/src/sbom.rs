//! SBOM documents rendered from an image's catalog: CycloneDX 1.6 JSON and SPDX 2.3 JSON.
//! Deterministic: the same catalog, image and time give the same bytes, so a document
//! stored as a referrer and one rendered on request are the same blob.

use serde_json::{Value, json};

use crate::{Ecosystem, ImagePackage, OsRelease};

pub const CYCLONEDX_MEDIA_TYPE: &str = "application/vnd.cyclonedx+json";
pub const SPDX_MEDIA_TYPE: &str = "application/spdx+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    CycloneDx,
    Spdx,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "cyclonedx" | "cdx" => Some(Format::CycloneDx),
            "spdx" => Some(Format::Spdx),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::CycloneDx => "cyclonedx",
            Format::Spdx => "spdx",
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::CycloneDx => CYCLONEDX_MEDIA_TYPE,
            Format::Spdx => SPDX_MEDIA_TYPE,
        }
    }
}

/// What a document describes besides the packages.
pub struct Subject<'a> {
    /// `repository` as pushed (the document's name).
    pub repository: &'a str,
    pub digest: &'a str,
    /// When the catalog was made, microseconds since the epoch.
    pub created_micros: i64,
    /// A UUID unique to this image and format (the caller derives it from the digest, so
    /// it stays the same across renderings).
    pub uuid: &'a str,
    /// `berth-<version>`.
    pub tool: &'a str,
    pub tool_version: &'a str,
    /// The catalog's status: `complete`, or `partial` (a layer over a cap or unreadable).
    pub status: &'a str,
}

/// `YYYY-MM-DDTHH:MM:SSZ` from microseconds since the epoch.
pub fn rfc3339(micros: i64) -> String {
    berth_oci::time::rfc3339(micros.div_euclid(1_000_000))
}

fn properties(p: &ImagePackage) -> Vec<Value> {
    let mut props = vec![
        json!({"name": "berth:layer", "value": p.layer}),
        json!({"name": "berth:path", "value": p.package.path}),
    ];
    if let Some(s) = &p.package.source_name {
        props.push(json!({"name": "berth:source-name", "value": s}));
    }
    if let Some(v) = &p.package.source_version {
        props.push(json!({"name": "berth:source-version", "value": v}));
    }
    props
}

pub fn cyclonedx(s: &Subject<'_>, os: Option<&OsRelease>, packages: &[ImagePackage]) -> Vec<u8> {
    let mut components: Vec<Value> = Vec::new();
    if let Some(o) = os {
        components.push(json!({
            "type": "operating-system",
            "bom-ref": format!("os:{}@{}", o.id, o.version_id),
            "name": o.id,
            "version": o.version_id,
            "description": o.pretty_name,
        }));
    }
    for p in packages {
        let mut c = json!({
            "type": "library",
            "bom-ref": p.purl,
            "name": p.package.name,
            "version": p.package.version,
            "purl": p.purl,
            "properties": properties(p),
        });
        if p.package.ecosystem == Ecosystem::Maven
            && let Some((g, a)) = p.package.name.split_once(':')
        {
            c["group"] = json!(g);
            c["name"] = json!(a);
        }
        components.push(c);
    }
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", s.uuid),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(s.created_micros),
            "tools": {"components": [{"type": "application", "name": s.tool, "version": s.tool_version}]},
            "component": {
                "type": "container",
                "bom-ref": s.digest,
                "name": s.repository,
                "version": s.digest,
            },
            "properties": [{"name": "berth:catalog-status", "value": s.status}],
        },
        "components": components,
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

pub fn spdx(s: &Subject<'_>, os: Option<&OsRelease>, packages: &[ImagePackage]) -> Vec<u8> {
    let mut pkgs = vec![json!({
        "name": s.repository,
        "SPDXID": "SPDXRef-Image",
        "versionInfo": s.digest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
    })];
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    if let Some(o) = os {
        pkgs.push(json!({
            "name": o.id,
            "SPDXID": "SPDXRef-OperatingSystem",
            "versionInfo": o.version_id,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "description": o.pretty_name,
        }));
        rels.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": "SPDXRef-OperatingSystem",
        }));
    }
    for (i, p) in packages.iter().enumerate() {
        let id = format!("SPDXRef-Package-{}-{i}", p.package.ecosystem.as_str());
        let mut source = format!("found in layer {} at /{}", p.layer, p.package.path);
        if let Some(n) = &p.package.source_name {
            source.push_str(&format!("; source package {n}"));
            if let Some(v) = &p.package.source_version {
                source.push_str(&format!(" {v}"));
            }
        }
        pkgs.push(json!({
            "name": p.package.name,
            "SPDXID": id,
            "versionInfo": p.package.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "sourceInfo": source,
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": p.purl,
            }],
        }));
        rels.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", s.repository, s.digest),
        "documentNamespace": format!("urn:uuid:{}", s.uuid),
        "creationInfo": {
            "created": rfc3339(s.created_micros),
            "creators": [format!("Tool: {}-{}", s.tool, s.tool_version)],
        },
        "comment": format!("berth catalog status: {}", s.status),
        "documentDescribes": ["SPDXRef-Image"],
        "packages": pkgs,
        "relationships": rels,
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(1_796_558_400_000_000 + 3_723_000_000),
            "2026-12-06T13:02:03Z"
        );
    }
}
