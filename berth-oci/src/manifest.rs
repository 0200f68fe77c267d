//! Lenient manifest parsing: enough structure to validate a manifest and to find what it
//! references, while the registry keeps and serves the exact bytes it received.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::media;

/// The manifest formats Berth stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

impl ManifestKind {
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::OciManifest => media::OCI_MANIFEST,
            ManifestKind::OciIndex => media::OCI_INDEX,
            ManifestKind::DockerManifest => media::DOCKER_MANIFEST,
            ManifestKind::DockerManifestList => media::DOCKER_MANIFEST_LIST,
        }
    }

    pub fn from_media_type(mt: &str) -> Option<ManifestKind> {
        match mt {
            media::OCI_MANIFEST => Some(ManifestKind::OciManifest),
            media::OCI_INDEX => Some(ManifestKind::OciIndex),
            media::DOCKER_MANIFEST => Some(ManifestKind::DockerManifest),
            media::DOCKER_MANIFEST_LIST => Some(ManifestKind::DockerManifestList),
            _ => None,
        }
    }

    /// Whether this is a list of other manifests rather than an image.
    pub fn is_index(self) -> bool {
        matches!(
            self,
            ManifestKind::OciIndex | ManifestKind::DockerManifestList
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest media type {0:?} is not supported")]
    UnsupportedMediaType(String),
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch { body: String, header: String },
    #[error("manifest is invalid: {0}")]
    Invalid(&'static str),
}

/// A content descriptor inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// Well formed; its algorithm may be one Berth cannot verify.
    pub digest: String,
    pub size: u64,
    /// Non-distributable content lives at these URLs and need not be in the registry.
    pub has_urls: bool,
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// The digest if its algorithm is one Berth stores.
    pub fn known_digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
    }
}

/// What a registry needs to know about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub kind: ManifestKind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// For the referrers API: `artifactType`, else (image manifests) the config media type.
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    urls: Option<Vec<String>>,
    artifact_type: Option<String>,
}

impl RawDescriptor {
    fn validate(self) -> Result<Descriptor, ManifestError> {
        if !Digest::is_well_formed(&self.digest) {
            return Err(ManifestError::Invalid("descriptor digest is malformed"));
        }
        // A known algorithm must also have the right encoding; unknown ones are tolerated.
        if let Err(crate::DigestError::BadEncoding) = self.digest.parse::<Digest>() {
            return Err(ManifestError::Invalid("descriptor digest is malformed"));
        }
        let size = u64::try_from(self.size)
            .map_err(|_| ManifestError::Invalid("descriptor size is negative"))?;
        let media_type = self
            .media_type
            .ok_or(ManifestError::Invalid("descriptor has no mediaType"))?;
        Ok(Descriptor {
            media_type,
            digest: self.digest,
            size,
            has_urls: self.urls.is_some_and(|u| !u.is_empty()),
            artifact_type: self.artifact_type,
        })
    }
}

/// Drops media type parameters (`; charset=utf-8`) and surrounding blanks.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Content types that say nothing about the manifest format.
fn is_generic(content_type: &str) -> bool {
    matches!(
        content_type,
        "" | "application/json" | "application/octet-stream" | "text/plain"
    )
}

/// Parses and validates a manifest or index. `content_type` is the request's `Content-Type`;
/// it supplies the media type when the body has none (umoci writes such manifests).
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ParsedManifest, ManifestError> {
    // JSON text is UTF-8 (RFC 8259 section 8.1). serde_json checks that only in the strings
    // it keeps, so without this a body with invalid bytes inside an ignored field (found by
    // fuzzing) would be stored and served though strict parsers refuse it.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ManifestError::Json(format!("manifest is not UTF-8: {e}")))?;
    // serde_json bounds nesting depth (128), so deep input fails instead of overflowing.
    let raw: RawManifest =
        serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type.map(essence).unwrap_or("");

    let media_type = match (&raw.media_type, is_generic(header)) {
        // A body that says what it is, sent without a Content-Type: the body decides.
        (Some(body), _) if header.is_empty() => body.clone(),
        (Some(body), _) if body.eq_ignore_ascii_case(header) => body.clone(),
        // Any other Content-Type, generic ones included, contradicts the body: a client
        // that labels an image index `text/plain` may mean something else by it, and the
        // registry would serve it under a type the uploader never declared.
        (Some(body), _) => {
            return Err(ManifestError::MediaTypeMismatch {
                body: body.clone(),
                header: header.to_owned(),
            });
        }
        (None, false) => header.to_owned(),
        // No declared type at all: infer it from the shape, as the image spec's own types.
        (None, true) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
        (None, true) if raw.config.is_some() => media::OCI_MANIFEST.to_owned(),
        (None, true) => return Err(ManifestError::Invalid("manifest has no mediaType")),
    };
    let kind = ManifestKind::from_media_type(&media_type)
        .ok_or(ManifestError::UnsupportedMediaType(media_type))?;
    if raw.schema_version != Some(2) {
        return Err(ManifestError::Invalid("schemaVersion must be 2"));
    }

    let subject = raw.subject.map(RawDescriptor::validate).transpose()?;
    let annotations = raw.annotations.unwrap_or_default();

    if kind.is_index() {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Invalid("an index has no config or layers"));
        }
        let manifests = raw
            .manifests
            .ok_or(ManifestError::Invalid("index has no manifests"))?
            .into_iter()
            .map(RawDescriptor::validate)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ParsedManifest {
            kind,
            config: None,
            layers: Vec::new(),
            manifests,
            subject,
            artifact_type: raw.artifact_type,
            annotations,
        })
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::Invalid(
                "an image manifest has no manifests list",
            ));
        }
        let config = raw
            .config
            .ok_or(ManifestError::Invalid("manifest has no config"))?
            .validate()?;
        let layers = raw
            .layers
            .ok_or(ManifestError::Invalid("manifest has no layers"))?
            .into_iter()
            .map(RawDescriptor::validate)
            .collect::<Result<Vec<_>, _>>()?;
        let artifact_type = raw
            .artifact_type
            .or_else(|| Some(config.media_type.clone()));
        Ok(ParsedManifest {
            kind,
            config: Some(config),
            layers,
            manifests: Vec::new(),
            subject,
            artifact_type,
            annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CFG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const L1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,{extra}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CFG}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{L1}","size":0}}]}}"#
        )
    }

    #[test]
    fn image_manifest_with_media_type() {
        let m = parse_manifest(
            image(r#""mediaType":"application/vnd.oci.image.manifest.v1+json","#).as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .expect("valid");
        assert_eq!(m.kind, ManifestKind::OciManifest);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn media_type_from_content_type_when_body_has_none() {
        let m = parse_manifest(
            image("").as_bytes(),
            Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
        )
        .expect("valid");
        assert_eq!(m.kind, ManifestKind::DockerManifest);
        let m = parse_manifest(image("").as_bytes(), None).expect("inferred");
        assert_eq!(m.kind, ManifestKind::OciManifest);
    }

    #[test]
    fn mismatched_media_type_is_refused() {
        let err = parse_manifest(
            image(r#""mediaType":"application/vnd.oci.image.manifest.v1+json","#).as_bytes(),
            Some(media::DOCKER_MANIFEST),
        );
        assert!(matches!(err, Err(ManifestError::MediaTypeMismatch { .. })));
    }

    #[test]
    fn a_content_type_contradicting_the_body_is_refused_even_a_generic_one() {
        let body = image(r#""mediaType":"application/vnd.oci.image.manifest.v1+json","#);
        for ct in [
            "text/plain",
            "application/octet-stream",
            "application/json",
            "application/vnd.oci.image.index.v1+json",
        ] {
            match parse_manifest(body.as_bytes(), Some(ct)) {
                Err(e @ ManifestError::MediaTypeMismatch { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(media::OCI_MANIFEST) && msg.contains(ct),
                        "names both: {msg}"
                    );
                }
                other => panic!("{ct}: {other:?}"),
            }
        }
        // Parameters are not part of the type; case does not matter; no header at all
        // leaves the body to decide.
        for ct in [
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            Some("Application/VND.oci.image.manifest.v1+json"),
            None,
        ] {
            assert_eq!(
                parse_manifest(body.as_bytes(), ct).expect("agrees").kind,
                ManifestKind::OciManifest,
                "{ct:?}"
            );
        }
        // Without a mediaType in the body, the header still supplies it.
        let bare = image("");
        assert_eq!(
            parse_manifest(bare.as_bytes(), Some(media::DOCKER_MANIFEST))
                .expect("from the header")
                .kind,
            ManifestKind::DockerManifest
        );
        assert_eq!(
            parse_manifest(bare.as_bytes(), Some("text/plain"))
                .expect("inferred")
                .kind,
            ManifestKind::OciManifest
        );
    }

    #[test]
    fn index_with_subject_and_artifact_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"application/x-test","manifests":[{{"mediaType":"{}","digest":"{CFG}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}}],"subject":{{"mediaType":"{}","digest":"{L1}","size":3}},"annotations":{{"k":"v"}}}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            media::OCI_MANIFEST
        );
        let m = parse_manifest(body.as_bytes(), Some(media::OCI_INDEX)).expect("valid");
        assert!(m.kind.is_index());
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.subject.map(|s| s.digest), Some(L1.to_owned()));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-test"));
        assert_eq!(m.annotations.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn invalid_manifests() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("{".into(), None),
            ("[]".into(), None),
            ("{}".into(), None),
            (r#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#.into(), None),
            (image("").replace("\"size\":0", "\"size\":-1"), None),
            (image("").replace(L1, "sha256:1234"), None),
            (image("").replace(r#""schemaVersion":2"#, r#""schemaVersion":1"#), None),
            // duplicate keys are ambiguous: which digest would a client see?
            (image(r#""layers":[],"#), None),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#
                    .into(),
                None,
            ),
            ("[".repeat(100_000), None),
        ];
        for (body, ct) in cases {
            assert!(
                parse_manifest(body.as_bytes(), ct).is_err(),
                "{body:.80} accepted"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused_even_in_ignored_fields() {
        let valid = image("\"x-ignored\":\"caf\u{e9}\",");
        assert!(parse_manifest(valid.as_bytes(), None).is_ok());
        // The same manifest with the field's last character replaced by a byte that is not
        // UTF-8: serde_json alone accepts it, since it never decodes the ignored string.
        let mut bytes = valid.into_bytes();
        let at = bytes
            .windows(2)
            .position(|w| w == "\u{e9}".as_bytes())
            .expect("the accented character");
        bytes.splice(at..at + 2, [0xff]);
        assert!(matches!(
            parse_manifest(&bytes, None),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn urls_and_unknown_algorithms() {
        let body = image("").replace(
            r#""size":0}"#,
            r#""size":0,"urls":["https://example.invalid/l"]}"#,
        );
        let m = parse_manifest(body.as_bytes(), None).expect("valid");
        assert!(m.layers[0].has_urls);
        let body = image("").replace(L1, "sha384:abcdef");
        let m = parse_manifest(body.as_bytes(), None).expect("tolerated");
        assert_eq!(m.layers[0].known_digest(), None);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), ct in proptest::option::of(".{0,40}")) {
            let _ = parse_manifest(&bytes, ct.as_deref());
        }
    }
}
