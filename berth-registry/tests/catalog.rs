//! The `catalog` job kind through the use cases: images pushed (and each platform of an
//! index) are cataloged by the job workers, layers shared between images are read once,
//! and the SBOMs land as referrers of each image. On SQLite and PostgreSQL.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_catalog::fuzzing::{Item, tar};
use berth_oci::{Digest, Reference};
use berth_registry::Registry;
use berth_registry::catalog::{CatalogSettings, CatalogView};

const STATUS: &[u8] = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u4)\nVersion: 2.36-9+deb12u4\n\nPackage: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n";
const OS: &[u8] = b"ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";

fn base_layer() -> Vec<u8> {
    tar(&[
        Item::File("etc/os-release", OS),
        Item::File("var/lib/dpkg/status", STATUS),
    ])
}

async fn wait_for(r: &Registry, repo: &berth_oci::RepoName, d: &Digest) -> CatalogView {
    let start = Instant::now();
    loop {
        if let Some(v) = r
            .catalog_of(repo, &Reference::Digest(d.clone()), None)
            .await
            .expect("read catalog")
        {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not cataloged within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn images_are_cataloged_and_get_sboms(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = common::registry(dir.path(), postgres)
        .await
        .with_catalog(CatalogSettings::default());
    let jobs = r.start_jobs();
    let repo = common::repo("team/app");
    let base = base_layer();
    let app = tar(&[Item::File(
        "srv/node_modules/left-pad/package.json",
        br#"{"name":"left-pad","version":"1.3.0"}"#,
    )]);
    let m1 = common::push_image(&r, &repo, Some("v1"), b"{\"c\":1}", &[&base, &app], None)
        .await
        .expect("push");
    let d1 = common::sha(&m1);
    let v = wait_for(&r, &repo, &d1).await;
    assert_eq!(v.status, "complete");
    let got: Vec<(&str, &str)> = v
        .packages
        .iter()
        .map(|p| (p.purl.as_str(), p.layer.as_str()))
        .collect();
    let base_d = common::sha(&base).to_string();
    let app_d = common::sha(&app).to_string();
    assert_eq!(
        got,
        vec![
            (
                "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12",
                base_d.as_str()
            ),
            (
                "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc",
                base_d.as_str()
            ),
            ("pkg:npm/left-pad@1.3.0", app_d.as_str()),
        ]
    );
    // The SBOMs are referrers of the image, one per format.
    let start = Instant::now();
    let types = loop {
        let refs = r
            .meta()
            .referrers(repo.as_str(), d1.as_str(), None)
            .await
            .expect("referrers");
        let mut types: Vec<String> = refs
            .iter()
            .filter_map(|x| x.artifact_type.clone())
            .collect();
        types.sort();
        if types.len() == 2 || start.elapsed() > Duration::from_secs(20) {
            break types;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        types,
        ["application/spdx+json", "application/vnd.cyclonedx+json"]
    );
    // The referrer's document is the one rendered on request.
    let refs = r
        .meta()
        .referrers(repo.as_str(), d1.as_str(), Some("application/spdx+json"))
        .await
        .expect("referrers");
    let sm = r
        .get_manifest(
            &repo,
            &Reference::Digest(refs[0].digest.parse().expect("digest")),
        )
        .await
        .expect("sbom manifest");
    let sm: serde_json::Value = serde_json::from_slice(&sm.content).expect("json");
    let layer: Digest = sm["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .parse()
        .expect("digest");
    let stored = common::read_all(&r, &repo, &layer)
        .await
        .expect("sbom blob");
    let (_, rendered) = r
        .sbom(
            &repo,
            &Reference::Digest(d1.clone()),
            None,
            berth_catalog::sbom::Format::Spdx,
        )
        .await
        .expect("render")
        .expect("cataloged");
    assert_eq!(stored, rendered);
    let doc: serde_json::Value = serde_json::from_slice(&stored).expect("spdx json");
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");

    // A second image on the same base: the base layer is not read again; an index of
    // both is cataloged per platform (both already are: nothing is read).
    let stats = r.catalog_stats().expect("stats");
    let read_before = stats.layers_read.load(Ordering::Relaxed);
    let other = tar(&[Item::File(
        "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
        b"Name: six\nVersion: 1.16.0\n",
    )]);
    let m2 = common::push_image(&r, &repo, Some("v2"), b"{\"c\":2}", &[&base, &other], None)
        .await
        .expect("push");
    let v2 = wait_for(&r, &repo, &common::sha(&m2)).await;
    assert!(v2.packages.iter().any(|p| p.purl == "pkg:pypi/six@1.16.0"));
    assert_eq!(
        stats.layers_read.load(Ordering::Relaxed),
        read_before + 1,
        "only the new layer is read"
    );
    assert!(stats.layers_reused.load(Ordering::Relaxed) >= 1);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_cataloged_and_get_sboms_on_sqlite() {
    images_are_cataloged_and_get_sboms(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_cataloged_and_get_sboms_on_postgres() {
    images_are_cataloged_and_get_sboms(true).await;
}

/// Each platform of an index is cataloged, including one pushed only as part of the
/// index (its own push queued a job too, but the index's job does not depend on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_platform_of_an_index_is_cataloged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = common::registry(dir.path(), false)
        .await
        .with_catalog(CatalogSettings::default());
    let repo = common::repo("multi");
    let amd = tar(&[Item::File(
        "lib/apk/db/installed",
        b"P:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\n",
    )]);
    let arm = tar(&[Item::File(
        "lib/apk/db/installed",
        b"P:musl\nV:1.2.4-r2\nA:aarch64\no:musl\n\n",
    )]);
    let ma = common::push_image(&r, &repo, None, b"{\"a\":1}", &[&amd], None)
        .await
        .expect("push");
    let mb = common::push_image(&r, &repo, None, b"{\"a\":2}", &[&arm], None)
        .await
        .expect("push");
    let idx = common::index(&[&ma, &mb]);
    common::put(&r, &repo, Some("latest"), &idx)
        .await
        .expect("index");
    // Workers start after the pushes: the jobs were queued with them and survive until then.
    let jobs = r.start_jobs();
    for m in [&ma, &mb] {
        let v = wait_for(&r, &repo, &common::sha(m)).await;
        assert_eq!(v.packages.len(), 1);
        assert!(
            v.packages[0]
                .purl
                .starts_with("pkg:apk/alpine/musl@1.2.4-r2?arch=")
        );
    }
    // By the index's tag, the first platform's catalog.
    let v = r
        .catalog_of(&repo, &Reference::Tag("latest".parse().expect("tag")), None)
        .await
        .expect("read")
        .expect("cataloged");
    assert_eq!(v.digest, common::sha(&ma).to_string());
    jobs.shutdown().await;
}

/// A layer that is not a tar archive at all (random bytes, as test suites push) makes the
/// image's catalog `failed`; neither it nor an image in which nothing is found gets an
/// SBOM of nothing among its referrers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_random_bytes_gets_no_sbom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = common::registry(dir.path(), false)
        .await
        .with_catalog(CatalogSettings::default());
    let jobs = r.start_jobs();
    let repo = common::repo("noise");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let m = common::push_image(&r, &repo, Some("v1"), b"{\"n\":1}", &[&noise], None)
        .await
        .expect("push");
    let d = common::sha(&m);
    let v = wait_for(&r, &repo, &d).await;
    assert_eq!(v.status, "failed");
    assert!(v.packages.is_empty());
    // A filesystem in which nothing is found (no OS, no package) is cataloged, complete,
    // but gets no SBOM of nothing among its referrers either.
    let bare = tar(&[Item::File("srv/data.txt", b"hello")]);
    let mb = common::push_image(&r, &repo, Some("bare"), b"{\"n\":3}", &[&bare], None)
        .await
        .expect("push");
    let bd = common::sha(&mb);
    let v = wait_for(&r, &repo, &bd).await;
    assert_eq!(v.status, "complete");
    assert!(v.packages.is_empty() && v.os.is_none());
    // A real image pushed after them gets its SBOMs: the queue ran past both.
    let good = common::push_image(&r, &repo, Some("v2"), b"{\"n\":2}", &[&base_layer()], None)
        .await
        .expect("push");
    let gd = common::sha(&good);
    let start = Instant::now();
    while r
        .meta()
        .referrers(repo.as_str(), gd.as_str(), None)
        .await
        .expect("referrers")
        .len()
        < 2
    {
        assert!(start.elapsed() < Duration::from_secs(20), "no SBOMs for v2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for subject in [&d, &bd] {
        assert!(
            r.meta()
                .referrers(repo.as_str(), subject.as_str(), None)
                .await
                .expect("referrers")
                .is_empty(),
            "an SBOM of nothing for {subject}"
        );
    }
    jobs.shutdown().await;
}
