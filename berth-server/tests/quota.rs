//! Storage quotas over real HTTP, on every pair of backends (SQLite or PostgreSQL metadata,
//! filesystem or S3 blobs): a refused push leaves no bytes under `blobs/` and nothing of
//! its upload; a PATCH past the quota is refused before its bytes past the room are read;
//! manifests count; `library/...` names count in `library`; each refusal is counted on
//! `/metrics`.

mod common;

use std::time::Duration;

use berth_meta::{Actor, Usage};
use common::{Cred, OCI_MANIFEST, Setup, TestServer as Server, sha256};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

const MB: usize = 1_000_000;

/// Bytes that differ per `seed`, so every upload is a blob of its own.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A server on the named backends, with tenant `team` (quota `team_quota`) and `library`.
async fn start(postgres: bool, s3: bool, team_quota: Option<u64>) -> Server {
    let s = common::start(Setup {
        postgres,
        s3,
        ..Setup::default()
    })
    .await;
    let admin = Actor::named("admin");
    assert!(
        s.meta
            .create_tenant("team", false, &admin)
            .await
            .expect("tenant")
    );
    assert!(
        s.meta
            .set_tenant_quota("team", team_quota, &admin)
            .await
            .expect("quota")
    );
    s
}

impl Server {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(method, path, &Cred::Anonymous)
    }

    /// A monolithic push (`POST ?digest=`) with a Content-Length.
    async fn push(&self, repo: &str, data: &[u8]) -> reqwest::Response {
        self.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("send")
    }

    /// A monolithic push whose body streams without a Content-Length.
    async fn push_streamed(&self, repo: &str, data: &[u8]) -> reqwest::Response {
        let frames: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        self.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            frames,
        )))
        .send()
        .await
        .expect("send")
    }

    /// Starts an upload session; its path.
    async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        r.headers()[header::LOCATION]
            .to_str()
            .expect("location")
            .to_owned()
    }

    async fn usage(&self, tenant: &str) -> Usage {
        self.meta
            .tenant_quota(tenant)
            .await
            .expect("usage")
            .expect("tenant")
            .1
    }

    async fn refusals(&self, what: &str) -> u64 {
        let text = self.metrics().await;
        let line = format!("berth_quota_refusals_total{{what=\"{what}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in /metrics:\n{text}"))
    }

    /// Nothing of any upload is left, and `blobs/` holds exactly `expected`.
    async fn assert_stored(&self, expected: &[&[u8]]) {
        let mut want: Vec<String> = expected.iter().map(|d| sha256(d)).collect();
        want.sort();
        assert_eq!(common::stored_blobs(&self.blobs).await, want, "blobs/");
        assert_eq!(common::upload_leftovers(&self.blobs).await, 0, "uploads/");
    }
}

/// A refusal as the spec words it: 403 DENIED naming the tenant's quota.
async fn assert_denied(r: reqwest::Response, tenant: &str) {
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json body");
    assert_eq!(v["errors"][0]["code"], "DENIED", "{v}");
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("storage quota of tenant {tenant} exceeded")),
        "{msg}"
    );
}

/// The case: with a 1,000-byte quota, twenty refused 5 MB uploads used to leave
/// 100 MB under `blobs/`. Now neither a push with a Content-Length (refused before its body
/// is read) nor one streamed without (refused at the first frame past the room) places a
/// byte, and nothing of their uploads stays.
async fn refused_monolithic_uploads_place_nothing(postgres: bool, s3: bool) {
    let s = start(postgres, s3, Some(1000)).await;
    let small = data(600, 0);
    assert_eq!(
        s.push("team/app", &small).await.status(),
        StatusCode::CREATED
    );
    for i in 0..10u8 {
        assert_denied(s.push("team/app", &data(5 * MB, i + 1)).await, "team").await;
        assert_denied(
            s.push_streamed("team/app", &data(5 * MB, i + 100)).await,
            "team",
        )
        .await;
    }
    // The room left is still there for a blob that fits.
    let fits = data(400, 7);
    assert_eq!(
        s.push("team/app", &fits).await.status(),
        StatusCode::CREATED
    );
    s.assert_stored(&[&small, &fits]).await;
    assert_eq!(
        s.usage("team").await,
        Usage {
            blobs: 1000,
            manifests: 0,
            uploads: 0
        }
    );
    assert_eq!(s.refusals("blob").await, 20);
}

/// A chunked upload refused at its last chunk, or at completion because the quota was
/// lowered meanwhile, leaves no bytes under `blobs/`: the check runs before the upload
/// becomes a blob, and the session goes.
async fn refused_chunked_uploads_place_nothing(postgres: bool, s3: bool) {
    let s = start(postgres, s3, Some(1000)).await;
    let blob = data(1100, 3);
    // The last chunk does not fit.
    let at = s.start_upload("team/app").await;
    let r = s
        .req(Method::PATCH, &at)
        .header(header::CONTENT_RANGE, "0-599")
        .body(blob[..600].to_vec())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s.usage("team").await.uploads, 600, "an open session counts");
    let r = s
        .req(Method::PUT, &format!("{at}?digest={}", sha256(&blob)))
        .header(header::CONTENT_RANGE, "600-1099")
        .body(blob[600..].to_vec())
        .send()
        .await
        .expect("put");
    assert_denied(r, "team").await;
    let r = s.req(Method::GET, &at).send().await.expect("status");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the session was cancelled"
    );
    s.assert_stored(&[]).await;
    assert_eq!(s.usage("team").await, Usage::default());

    // Every chunk was admitted, but the quota went down before the upload completed.
    let blob = data(700, 4);
    let at = s.start_upload("team/app").await;
    let r = s
        .req(Method::PATCH, &at)
        .body(blob.clone())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(
        s.meta
            .set_tenant_quota("team", Some(500), &Actor::named("admin"))
            .await
            .expect("quota")
    );
    let r = s
        .req(Method::PUT, &format!("{at}?digest={}", sha256(&blob)))
        .send()
        .await
        .expect("put");
    assert_denied(r, "team").await;
    s.assert_stored(&[]).await;
    assert_eq!(s.usage("team").await, Usage::default());
    assert_eq!(s.refusals("blob").await, 2);
}

/// A 50 MB PATCH into a session of a tenant with 1,000 bytes of room is refused with 403
/// while the client still holds most of its body: with a Content-Length before a byte is
/// read, without one at the first frame past the room. The body below never ends, so a
/// server that read it to the end before deciding would never answer.
async fn patch_past_the_quota_is_refused_before_its_bytes_are_written(postgres: bool, s3: bool) {
    let s = start(postgres, s3, Some(1000)).await;
    // Frames of 64 KiB: the first `sent` bytes, then nothing, for ever.
    let endless = |sent: usize| {
        let first: Vec<Result<Vec<u8>, std::io::Error>> = data(sent, 9)
            .chunks(64 * 1024)
            .map(|c| Ok(c.to_vec()))
            .collect();
        futures_util::stream::iter(first).chain(futures_util::stream::pending())
    };
    let patch = |at: String, length: Option<usize>, sent: usize| {
        let mut r = s
            .req(Method::PATCH, &at)
            .body(reqwest::Body::wrap_stream(endless(sent)));
        if let Some(n) = length {
            r = r.header(header::CONTENT_LENGTH, n);
        }
        async move {
            tokio::time::timeout(Duration::from_secs(20), r.send())
                .await
                .expect("answered without the rest of the body")
                .expect("send")
        }
    };
    // Announced: refused up front.
    let at = s.start_upload("team/app").await;
    assert_denied(patch(at.clone(), Some(50 * MB), 64 * 1024).await, "team").await;
    let r = s.req(Method::GET, &at).send().await.expect("status");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the session was cancelled"
    );

    // Streamed: 600 bytes fit; the frame after them does not.
    let at = s.start_upload("team/app").await;
    let first = data(600, 9);
    let r = s
        .req(Method::PATCH, &at)
        .body(first.clone())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_denied(patch(at.clone(), None, 3 * 64 * 1024).await, "team").await;
    let r = s.req(Method::GET, &at).send().await.expect("status");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the session was cancelled"
    );

    s.assert_stored(&[]).await;
    assert_eq!(s.usage("team").await, Usage::default());
    assert_eq!(s.refusals("chunk").await, 2);
    // The room is whole again.
    let fits = data(1000, 5);
    assert_eq!(
        s.push("team/app", &fits).await.status(),
        StatusCode::CREATED
    );
}

/// Ten manifests of about 4 MB each (manifest bytes live in the metadata store) used to be
/// accepted while the usage stayed where it was. Now they count, each digest once, and
/// the ones past the quota are refused.
async fn manifests_count_towards_the_quota(postgres: bool, s3: bool) {
    let s = start(postgres, s3, Some(10 * MB as u64)).await;
    let config = b"{}".to_vec();
    assert_eq!(
        s.push("team/app", &config).await.status(),
        StatusCode::CREATED
    );
    let manifest = |i: usize| {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": 2},
            "layers": [],
            "annotations": {"n": i.to_string(), "pad": ""},
        });
        let len = serde_json::to_vec(&m).expect("json").len();
        m["annotations"]["pad"] = json!("x".repeat(4 * MB - len));
        serde_json::to_vec(&m).expect("json")
    };
    let mut stored = 0u64;
    let mut refused = 0;
    for i in 0..10 {
        let body = manifest(i);
        assert_eq!(body.len(), 4 * MB);
        let r = s
            .req(Method::PUT, &format!("/v2/team/app/manifests/v{i}"))
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(body)
            .send()
            .await
            .expect("put");
        if r.status() == StatusCode::CREATED {
            stored += 4 * MB as u64;
        } else {
            assert_denied(r, "team").await;
            refused += 1;
        }
    }
    assert_eq!((stored, refused), (8 * MB as u64, 8), "two fit in 10 MB");
    assert_eq!(
        s.usage("team").await,
        Usage {
            blobs: 2,
            manifests: stored,
            uploads: 0
        }
    );
    // A manifest already counted costs nothing more, under another tag or repository.
    for (repo, tag) in [("team/app", "again"), ("team/other", "v0")] {
        if repo == "team/other" {
            assert_eq!(s.push(repo, &config).await.status(), StatusCode::CREATED);
        }
        let r = s
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest(0))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::CREATED, "{repo}:{tag}");
    }
    assert_eq!(s.usage("team").await.manifests, stored);
    assert_eq!(s.refusals("manifest").await, 8);
}

/// `library/stash` is in the `library` tenant (as `tenant_of` says), so `library`'s quota
/// holds it, beside single-segment names and deeper ones.
async fn library_names_with_a_slash_count_in_library(postgres: bool, s3: bool) {
    let s = start(postgres, s3, None).await;
    assert!(
        s.meta
            .set_tenant_quota("library", Some(1000), &Actor::named("admin"))
            .await
            .expect("quota")
    );
    let first = data(600, 1);
    assert_eq!(
        s.push("library/stash", &first).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(s.usage("library").await.blobs, 600);
    for repo in ["library/stash", "stash", "library/a/b"] {
        assert_denied(s.push(repo, &data(600, 2)).await, "library").await;
    }
    // Another tenant whose name starts like it is not bound by it.
    assert!(
        s.meta
            .create_tenant("library-x", false, &Actor::named("admin"))
            .await
            .expect("tenant")
    );
    let other = data(600, 3);
    assert_eq!(
        s.push("library-x/app", &other).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(s.usage("library").await.blobs, 600);
    s.assert_stored(&[&first, &other]).await;
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite_fs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(false, false).await })*
        }
        mod sqlite_s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(false, true).await })*
        }
        mod postgres_fs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(true, false).await })*
        }
        mod postgres_s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(true, true).await })*
        }
    };
}

on_every_backend!(
    refused_monolithic_uploads_place_nothing,
    refused_chunked_uploads_place_nothing,
    patch_past_the_quota_is_refused_before_its_bytes_are_written,
    manifests_count_towards_the_quota,
    library_names_with_a_slash_count_in_library,
);
