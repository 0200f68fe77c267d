//! Signatures stay with their images, decided by content: tag rules (`refuse_mutable`,
//! immutable patterns) never block a signature or attestation push under the referrers tag
//! convention, yet still judge a runnable image pushed under such a tag; retention keeps
//! the `.sig`/`.att` tags of the images it keeps and removes them with the images it
//! removes. On SQLite and PostgreSQL.

mod common;

use std::collections::BTreeSet;

use berth_oci::RepoName;
use berth_registry::retention::{RetentionPolicies, RetentionSpec};
use berth_registry::{Registry, RegistryConfig, RegistryError, TagRuleSpec, TagRules};
use common::IMAGE;
use serde_json::{Value, json};

/// A registry with these tag rules over the filesystem in `dir` and SQLite there, or a
/// fresh PostgreSQL schema.
async fn registry(dir: &std::path::Path, postgres: bool, rules: Vec<TagRuleSpec>) -> Registry {
    let meta = berth_meta::MetaStore::connect(&common::meta_url(dir, postgres).await)
        .await
        .expect("metadata store");
    Registry::new(
        common::blob_store(false, dir).await,
        meta,
        RegistryConfig {
            tag_rules: TagRules::new(rules).expect("rules"),
            ..RegistryConfig::default()
        },
    )
}

async fn blob(r: &Registry, repo: &RepoName, data: &[u8]) -> Value {
    let d = common::blob(r, repo, data).await.expect("blob");
    json!({"digest": d.to_string(), "size": data.len()})
}

/// A manifest with one config and layers of `layer_type` (their contents), as bytes.
async fn manifest(r: &Registry, repo: &RepoName, seed: &str, layer_type: &str) -> Vec<u8> {
    let mut config = blob(r, repo, format!("{{\"seed\":\"{seed}\"}}").as_bytes()).await;
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut layer = blob(r, repo, format!("layer {seed}").as_bytes()).await;
    layer["mediaType"] = layer_type.into();
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": IMAGE, "config": config, "layers": [layer],
    }))
    .expect("json")
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const SIG: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";

async fn tag_rules_never_block_signatures(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Only semver tags, immutable; everything else refused; and `sha256-*` immutable too.
    let r = registry(
        dir.path(),
        postgres,
        vec![TagRuleSpec {
            repositories: "prod/*".into(),
            immutable: vec!["semver".into(), "sha256-*".into()],
            refuse: vec![],
            refuse_mutable: true,
        }],
    )
    .await;
    let repo: RepoName = "prod/app".parse().expect("name");
    let img = common::put(
        &r,
        &repo,
        Some("1.0.0"),
        &manifest(&r, &repo, "a", TAR).await,
    )
    .await
    .expect("a release");
    let sig_tag = format!("sha256-{}.sig", img.hex());
    // A cosign signature, then a second signer's (cosign appends: the tag moves).
    common::put(
        &r,
        &repo,
        Some(&sig_tag),
        &manifest(&r, &repo, "sig one", SIG).await,
    )
    .await
    .expect("first signature");
    common::put(
        &r,
        &repo,
        Some(&sig_tag),
        &manifest(&r, &repo, "sig two", SIG).await,
    )
    .await
    .expect("second signer");
    let att_tag = format!("sha256-{}.att", img.hex());
    common::put(
        &r,
        &repo,
        Some(&att_tag),
        &manifest(&r, &repo, "att", DSSE).await,
    )
    .await
    .expect("attestation");
    // A runnable image under a signature tag is an image: the tag is immutable for it.
    let err = common::put(
        &r,
        &repo,
        Some(&sig_tag),
        &manifest(&r, &repo, "fake", TAR).await,
    )
    .await
    .expect_err("an image moving an immutable tag");
    assert!(matches!(err, RegistryError::Denied(_)), "{err}");
    // And a signature under an ordinary tag is judged by the rules (refuse_mutable).
    let err = common::put(
        &r,
        &repo,
        Some("latest"),
        &manifest(&r, &repo, "sig three", SIG).await,
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("refuse_mutable"), "{err}");
}

#[tokio::test]
async fn tag_rules_never_block_signatures_sqlite() {
    tag_rules_never_block_signatures(false).await;
}

#[tokio::test]
async fn tag_rules_never_block_signatures_postgres() {
    tag_rules_never_block_signatures(true).await;
}

async fn retention_keeps_signatures_with_their_images(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), postgres, Vec::new()).await;
    let repo: RepoName = "team/app".parse().expect("name");
    let mut digests = Vec::new();
    for (i, v) in ["1.0.0", "1.1.0", "1.2.0"].into_iter().enumerate() {
        let d = common::put(
            &r,
            &repo,
            Some(v),
            &manifest(&r, &repo, &format!("v{i}"), TAR).await,
        )
        .await
        .expect("image");
        for (suffix, ty) in [("sig", SIG), ("att", DSSE)] {
            common::put(
                &r,
                &repo,
                Some(&format!("sha256-{}.{suffix}", d.hex())),
                &manifest(&r, &repo, &format!("{suffix} {i}"), ty).await,
            )
            .await
            .expect("signature");
        }
        digests.push(d);
    }
    // A runnable image tagged like the signature of an image that is not tagged at all.
    let fake = format!("sha256-{}.sig", "ab".repeat(32));
    common::put(
        &r,
        &repo,
        Some(&fake),
        &manifest(&r, &repo, "fake", TAR).await,
    )
    .await
    .expect("fake");

    let policies = RetentionPolicies::new(vec![RetentionSpec {
        repositories: "team/*".into(),
        keep_last_semver: Some(1),
        keep_days: None,
        keep_tags: vec![],
        include_immutable: true,
    }])
    .expect("policy");
    let report = r.apply_retention(&policies, false).await.expect("apply");
    let gone: BTreeSet<String> = report.expired.iter().map(|e| e.tag.clone()).collect();
    let mut want = BTreeSet::new();
    for (v, d) in [("1.0.0", &digests[0]), ("1.1.0", &digests[1])] {
        want.insert(v.to_owned());
        want.insert(format!("sha256-{}.sig", d.hex()));
        want.insert(format!("sha256-{}.att", d.hex()));
    }
    // The fake is an image like any other: not a semver tag, not kept.
    want.insert(fake.clone());
    assert_eq!(gone, want);
    let left: BTreeSet<String> = r
        .list_tags(&repo, None, None)
        .await
        .expect("tags")
        .0
        .into_iter()
        .collect();
    let kept: BTreeSet<String> = [
        "1.2.0".to_owned(),
        format!("sha256-{}.sig", digests[2].hex()),
        format!("sha256-{}.att", digests[2].hex()),
    ]
    .into_iter()
    .collect();
    assert_eq!(left, kept);
}

#[tokio::test]
async fn retention_keeps_signatures_with_their_images_sqlite() {
    retention_keeps_signatures_with_their_images(false).await;
}

#[tokio::test]
async fn retention_keeps_signatures_with_their_images_postgres() {
    retention_keeps_signatures_with_their_images(true).await;
}
