//! Package catalogs and SBOMs over real HTTP: an image pushed through the registry API is
//! cataloged by the job workers; `/api/v1/catalog` and `/api/v1/sbom` answer whoever may
//! pull the repository; the CycloneDX and SPDX documents are referrers of the image
//! (`/v2/<name>/referrers/<digest>`), the same bytes as `/api/v1/sbom` renders; the
//! catalog counters are on `/metrics`.

mod common;

use std::time::{Duration, Instant};

use berth_catalog::fuzzing::{Item, tar};
use berth_registry::access::AccessConfig;
use berth_registry::catalog::CatalogSettings;
use berth_server::ChallengeKind;
use common::{Cred, OCI_MANIFEST, Setup, sha256};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

const STATUS: &[u8] = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u4)\nVersion: 2.36-9+deb12u4\n\nPackage: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n";

async fn sbom_over_http(postgres: bool) {
    let s = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        catalog: Some(CatalogSettings::default()),
        postgres,
        ..Setup::default()
    })
    .await;
    common::add_users(
        s.access(),
        &[("ci", false), ("node", false), ("stranger", false)],
    )
    .await;
    common::add_tenant(
        s.access(),
        "prod",
        false,
        &[("ci", "maintainer"), ("node", "reader")],
    )
    .await;
    let ci = Cred::user("ci");
    let node = Cred::user("node");
    let layer = tar(&[
        Item::File("etc/os-release", b"ID=debian\nVERSION_ID=\"12\"\n"),
        Item::File("var/lib/dpkg/status", STATUS),
    ]);
    let (_, digest, _) = s.push_image_as(&ci, "prod/app", &["v1"], &layer).await;

    let q = "repository=prod/app&reference=v1";
    let start = Instant::now();
    let catalog: Value = loop {
        let r = s
            .request_as(Method::GET, &format!("/api/v1/catalog?{q}"), &node)
            .send()
            .await
            .expect("send");
        if r.status() == StatusCode::OK {
            break r.json().await.expect("json");
        }
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "before the job ran");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not cataloged within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(catalog["digest"], digest.as_str());
    assert_eq!(catalog["status"], "complete");
    let purls: Vec<&str> = catalog["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| p["purl"].as_str().expect("purl"))
        .collect();
    assert_eq!(
        purls,
        [
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc",
            "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib",
        ]
    );
    assert_eq!(catalog["packages"][0]["source_name"], "glibc");
    assert_eq!(catalog["packages"][0]["layer"], sha256(&layer).as_str());

    // Both formats, as rendered on request.
    let mut rendered = Vec::new();
    for (format, media_type) in [
        ("cyclonedx", "application/vnd.cyclonedx+json"),
        ("spdx", "application/spdx+json"),
    ] {
        let r = s
            .request_as(
                Method::GET,
                &format!("/api/v1/sbom?{q}&format={format}"),
                &node,
            )
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], media_type);
        let body = r.bytes().await.expect("body").to_vec();
        let doc: Value = serde_json::from_slice(&body).expect("json");
        match format {
            "cyclonedx" => {
                assert_eq!(doc["specVersion"], "1.6");
                assert_eq!(doc["components"][1]["purl"], purls[0]);
            }
            _ => {
                assert_eq!(doc["spdxVersion"], "SPDX-2.3");
                assert_eq!(
                    doc["packages"][2]["externalRefs"][0]["referenceLocator"],
                    purls[0]
                );
            }
        }
        rendered.push((media_type, body));
    }

    // The referrers API lists both documents; each is the rendered one.
    let start = Instant::now();
    let index: Value = loop {
        let r = s
            .request_as(
                Method::GET,
                &format!("/v2/prod/app/referrers/{digest}"),
                &node,
            )
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        if v["manifests"].as_array().is_some_and(|m| m.len() == 2) {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "SBOM referrers not pushed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (media_type, body) in &rendered {
        let entry = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["artifactType"] == *media_type)
            .unwrap_or_else(|| panic!("no {media_type} referrer in {index}"));
        let m: Value = s
            .request_as(
                Method::GET,
                &format!(
                    "/v2/prod/app/manifests/{}",
                    entry["digest"].as_str().expect("digest")
                ),
                &node,
            )
            .header(header::ACCEPT, OCI_MANIFEST)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("manifest");
        assert_eq!(m["subject"]["digest"], digest.as_str());
        let blob = s
            .request_as(
                Method::GET,
                &format!(
                    "/v2/prod/app/blobs/{}",
                    m["layers"][0]["digest"].as_str().expect("layer")
                ),
                &node,
            )
            .send()
            .await
            .expect("send")
            .bytes()
            .await
            .expect("blob");
        assert_eq!(
            &blob[..],
            &body[..],
            "{media_type}: the referrer is the rendered document"
        );
    }

    // Who may not pull may not read the catalog; an unknown format is a 400.
    let r = s
        .request_as(
            Method::GET,
            &format!("/api/v1/sbom?{q}"),
            &Cred::user("stranger"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .request_as(Method::GET, &format!("/api/v1/sbom?{q}"), &Cred::Anonymous)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .request_as(Method::GET, &format!("/api/v1/sbom?{q}&format=xml"), &node)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The SBOM documents are derived data: pushing them queued no jobs (no catalog job
    // for them, no events), so the image's is the only catalog job run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = s.metrics().await;
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_jobs_done_total{queue=\"catalog\"}"),
        1
    );
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_catalog_images_total"),
        1
    );
    deleted_with_the_image(&s, &ci, &digest, &layer).await;
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_catalog_layers_read_total"),
        1
    );
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_catalog_sboms_total"),
        2
    );
    assert_eq!(
        common::metric::<u64>(&metrics, "berth_catalog_layer_bytes_total"),
        layer.len() as u64
    );
}

/// The client deletes everything it pushed, as the conformance suite's teardown does: its
/// own artifact (configured with the same empty `{}` blob as Berth's SBOMs), the image,
/// then the blobs. The generated SBOMs go with the image, so the empty blob is free to
/// delete; a collection then drops the catalogs of content no longer stored.
async fn deleted_with_the_image(s: &common::TestServer, ci: &Cred, digest: &str, layer: &[u8]) {
    let empty = s.push_blob_as(ci, "prod/app", b"{}").await;
    let doc = s.push_blob_as(ci, "prod/app", b"client notes").await;
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.notes",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": doc, "size": 12}],
    });
    let body = serde_json::to_vec(&artifact).expect("json");
    let r = s
        .put_manifest_as(ci, "prod/app", "notes", OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    for m in [sha256(&body), digest.to_owned()] {
        let r = s
            .request_as(Method::DELETE, &format!("/v2/prod/app/manifests/{m}"), ci)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "delete {m}");
    }
    let r = s
        .request_as(Method::GET, &format!("/v2/prod/app/referrers/{digest}"), ci)
        .send()
        .await
        .expect("send");
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["manifests"],
        serde_json::json!([]),
        "SBOMs left behind: {v}"
    );
    let r = s
        .request_as(Method::DELETE, &format!("/v2/prod/app/blobs/{empty}"), ci)
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "the empty config is no longer in use"
    );

    assert!(s.meta.image_catalog(digest).await.expect("read").is_some());
    let report = s
        .registry
        .collect_garbage(
            &berth_registry::gc::GcOptions {
                dry_run: false,
                grace: Duration::ZERO,
                rollback_window: Duration::ZERO,
            },
            &|_| {},
        )
        .await
        .expect("gc");
    assert_eq!(report.catalogs_pruned, (1, 1));
    assert!(s.meta.image_catalog(digest).await.expect("read").is_none());
    assert!(
        s.meta
            .layer_catalog(&sha256(layer))
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sbom_over_http_sqlite() {
    sbom_over_http(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sbom_over_http_postgres() {
    sbom_over_http(true).await;
}
