//! The distribution API over real HTTP: each test starts `berth_server::run` on
//! 127.0.0.1:0 with its own data directory and drives it with a plain HTTP client.

mod common;

use std::time::Duration;

use berth_registry::RegistryConfig;
use berth_server::ServerConfig;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::{Cred, OCI_INDEX, OCI_MANIFEST, Setup, TestServer as Server, error_code, sha256};

async fn start() -> Server {
    start_with(RegistryConfig::default()).await
}

async fn start_with(config: RegistryConfig) -> Server {
    start_server(config, ServerConfig::default()).await
}

async fn start_server(registry: RegistryConfig, server: ServerConfig) -> Server {
    common::start(Setup {
        registry,
        server,
        ..Setup::default()
    })
    .await
}

impl Server {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(method, path, &Cred::Anonymous)
    }

    /// A request without a body or headers.
    async fn call(&self, method: Method, path: &str) -> reqwest::Response {
        self.req(method, path).send().await.expect("send")
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.push_blob_as(&Cred::Anonymous, repo, data).await
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.put_manifest_as(&Cred::Anonymous, repo, reference, media_type, body)
            .await
    }

    /// Pushes a config and a layer and returns an image manifest naming them.
    async fn image(&self, repo: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let (bytes, _) = self.image_as(&Cred::Anonymous, repo, layer).await;
        let d = sha256(&bytes);
        (bytes, d)
    }
}

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let s = start().await;
    let r = s.call(Method::GET, "/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(
        s.call(Method::GET, "/healthz").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        s.call(Method::GET, "/readyz").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn blob_get_head_and_ranges() {
    let s = start().await;
    let data = b"0123456789abcdef";
    let d = s.push_blob("r", data).await;
    let r = s.call(Method::GET, &format!("/v2/r/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(r.bytes().await.expect("body").as_ref(), data);

    let r = s.call(Method::HEAD, &format!("/v2/r/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "16");

    let r = s
        .req(Method::GET, &format!("/v2/r/blobs/{d}"))
        .header("range", "bytes=4-7")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 4-7/16");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"4567");

    let r = s
        .req(Method::GET, &format!("/v2/r/blobs/{d}"))
        .header("range", "bytes=16-")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */16");

    // A range that ends before it starts is refused the same way, not ignored.
    let r = s
        .req(Method::GET, &format!("/v2/r/blobs/{d}"))
        .header("range", "bytes=8-2")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn blobs_are_served_only_from_repositories_they_are_linked_to() {
    let s = start().await;
    let d = s.push_blob("team-a/app", b"secret layer").await;
    let r = s
        .call(Method::GET, &format!("/v2/team-b/app/blobs/{d}"))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
    // mounting with `from` links it; without `from` it is an ordinary upload
    let r = s
        .req(
            Method::POST,
            &format!("/v2/team-b/app/blobs/uploads/?mount={d}"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .req(
            Method::POST,
            &format!("/v2/team-b/app/blobs/uploads/?mount={d}&from=team-a/app"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/team-b/app/blobs/{d}").as_str()
    );
    let r = s
        .call(Method::GET, &format!("/v2/team-b/app/blobs/{d}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // mounting from a repository that does not have it falls back to an upload
    let r = s
        .req(
            Method::POST,
            &format!("/v2/c/blobs/uploads/?mount={d}&from=nobody/here"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn chunked_upload_with_status_and_out_of_order_chunks() {
    let s = start().await;
    let r = s
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let data = b"first chunk|second chunk";
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "0-11")
        .header("content-type", "application/octet-stream")
        .body(data[..12].to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-11");
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();

    // a chunk that does not continue the upload: 416 with where it stands
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", "5-9")
        .body(data[5..10].to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["range"], "0-11");
    assert_eq!(error_code(r).await.1, "BLOB_UPLOAD_INVALID");

    let r = s.call(Method::GET, &loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-11");

    let d = sha256(data);
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .header("content-range", format!("12-{}", data.len() - 1))
        .body(data[12..].to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = s.call(Method::GET, &format!("/v2/r/blobs/{d}")).await;
    assert_eq!(got.bytes().await.expect("body").as_ref(), data);
    // the finished session is gone
    let r = s.call(Method::GET, &loc).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
    let r = s
        .req(Method::PATCH, &loc)
        .body("more")
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
}

#[tokio::test]
async fn streamed_upload_and_cancel() {
    let s = start().await;
    let r = s
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .expect("send");
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    for part in [&b"stream"[..], b"ed ", b"body"] {
        let r = s
            .req(Method::PATCH, &loc)
            .body(part.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let d = sha256(b"streamed body");
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = s
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .expect("send");
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(
        s.call(Method::DELETE, &loc).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = s.call(Method::GET, &loc).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_digest_is_refused_and_nothing_is_stored() {
    let s = start().await;
    let claimed = sha256(b"what the client claims");
    let r = s
        .req(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={claimed}"),
        )
        .body("different bytes")
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    let r = s
        .call(Method::HEAD, &format!("/v2/r/blobs/{claimed}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // the same through a session: the session is dropped too
    let r = s
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .expect("send");
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={claimed}"))
        .body("different bytes")
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    assert_eq!(
        s.call(Method::GET, &loc).await.status(),
        StatusCode::NOT_FOUND
    );
    // malformed or unsupported digests are 400, not 500
    for bad in [
        "sha256:xyz",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "nocolon",
    ] {
        let r = s
            .req(Method::POST, &format!("/v2/r/blobs/uploads/?digest={bad}"))
            .body("x")
            .send()
            .await
            .expect("send");
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into()),
            "{bad}"
        );
        let r = s.call(Method::GET, &format!("/v2/r/blobs/{bad}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn sha512_blobs_are_verified() {
    let s = start().await;
    use sha2::{Digest as _, Sha512};
    let data = b"sha512 content";
    let d = format!("sha512:{}", hex::encode(Sha512::digest(data)));
    let r = s
        .req(Method::POST, &format!("/v2/r/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.call(Method::GET, &format!("/v2/r/blobs/{d}")).await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), data);
    let wrong = format!("sha512:{}", hex::encode(Sha512::digest(b"other")));
    let r = s
        .req(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={wrong}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn manifests_round_trip_exact_bytes_with_negotiation() {
    let s = start().await;
    let (m, d) = s.image("app", b"layer").await;
    let r = s.put_manifest("app", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(
        r.headers()["location"],
        format!("/v2/app/manifests/{d}").as_str()
    );
    for reference in ["v1", d.as_str()] {
        let r = s
            .req(Method::GET, &format!("/v2/app/manifests/{reference}"))
            .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
        assert_eq!(r.bytes().await.expect("body").as_ref(), m.as_slice());
    }
    let r = s.call(Method::HEAD, "/v2/app/manifests/v1").await;
    assert_eq!(r.headers()["content-length"], m.len().to_string().as_str());
    // a client that accepts only other formats gets a miss
    let r = s
        .req(Method::GET, "/v2/app/manifests/v1")
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
}

#[tokio::test]
async fn manifest_without_media_type_takes_content_type() {
    let s = start().await;
    let (m, _) = s.image("umoci", b"layer").await;
    let mut v: Value = serde_json::from_slice(&m).expect("json");
    v.as_object_mut().expect("object").remove("mediaType");
    let body = serde_json::to_vec(&v).expect("json");
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let r = s.put_manifest("umoci", "latest", docker, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.call(Method::GET, "/v2/umoci/manifests/latest").await;
    assert_eq!(r.headers()["content-type"], docker);
}

#[tokio::test]
async fn manifest_put_errors() {
    let s = start_with(RegistryConfig {
        max_manifest_bytes: 64 * 1024,
        ..RegistryConfig::default()
    })
    .await;
    let (m, d) = s.image("r", b"layer").await;
    // references a blob the repository does not have
    let missing = String::from_utf8(m.clone())
        .expect("utf8")
        .replace(&sha256(b"layer"), &sha256(b"never pushed"));
    let r = s
        .put_manifest("r", "v1", OCI_MANIFEST, missing.as_bytes())
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    // same blobs, other repository: not linked there
    let r = s.put_manifest("other", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    for bad in [
        &b"not json"[..],
        b"{}",
        b"[]",
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
    ] {
        let r = s.put_manifest("r", "v1", OCI_MANIFEST, bad).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
        );
    }
    let deep = "[".repeat(60_000);
    let r = s
        .put_manifest("r", "v1", OCI_MANIFEST, deep.as_bytes())
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    // body type disagrees with Content-Type
    let r = s
        .put_manifest(
            "r",
            "v1",
            "application/vnd.docker.distribution.manifest.v2+json",
            &m,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    // pushed by digest, but the digest is of other bytes
    let r = s.put_manifest("r", &sha256(b"x"), OCI_MANIFEST, &m).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    // too large, with and without Content-Length
    let big = vec![b' '; 65 * 1024];
    let r = s.put_manifest("r", "v1", OCI_MANIFEST, &big).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID".into())
    );
    let stream =
        futures_util::stream::iter((0..70).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let r = s
        .req(Method::PUT, "/v2/r/manifests/v1")
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // invalid tag on write is a bad request; on read, a miss
    let r = s.put_manifest("r", "-bad", OCI_MANIFEST, &m).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    let r = s.call(Method::GET, "/v2/r/manifests/.bad").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // nothing above was stored
    let r = s.call(Method::GET, "/v2/r/tags/list").await;
    let tags: Value = r.json().await.expect("json");
    assert_eq!(tags["tags"], json!([]));
    assert_eq!(
        s.put_manifest("r", &d, OCI_MANIFEST, &m).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn index_children_must_exist_unless_sparse_is_allowed() {
    for sparse in [false, true] {
        let s = start_with(RegistryConfig {
            allow_sparse_index: sparse,
            ..RegistryConfig::default()
        })
        .await;
        let (m, d) = s.image("multi", b"amd64 layer").await;
        let absent = sha256(b"arm64 manifest never pushed");
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": m.len(), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": absent, "size": 10, "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }))
        .expect("json");
        assert_eq!(
            s.put_manifest("multi", &d, OCI_MANIFEST, &m).await.status(),
            StatusCode::CREATED
        );
        let r = s.put_manifest("multi", "v1", OCI_INDEX, &index).await;
        if sparse {
            assert_eq!(r.status(), StatusCode::CREATED);
        } else {
            assert_eq!(
                error_code(r).await,
                (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
            );
        }
    }
}

#[tokio::test]
async fn referrers_with_subject_pushed_first_and_filter() {
    let s = start().await;
    let empty = s.push_blob("r", b"{}").await;
    let subject = sha256(b"an image pushed later");
    let artifact = |kind: &str, n: u32| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 123},
            "annotations": {"n": n.to_string()},
        }))
        .expect("json")
    };
    let sig = artifact("application/vnd.example.signature", 1);
    let sbom = artifact("application/spdx+json", 2);
    for body in [&sig, &sbom] {
        let r = s.put_manifest("r", &sha256(body), OCI_MANIFEST, body).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "a missing subject is accepted"
        );
        assert_eq!(r.headers()["oci-subject"], subject.as_str());
    }
    let r = s
        .call(Method::GET, &format!("/v2/r/referrers/{subject}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let idx: Value = r.json().await.expect("json");
    assert_eq!(idx["manifests"].as_array().map(Vec::len), Some(2));
    let r = s
        .req(
            Method::GET,
            &format!("/v2/r/referrers/{subject}?artifactType=application/spdx%2Bjson"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let idx: Value = r.json().await.expect("json");
    let list = idx["manifests"].as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sha256(&sbom).as_str());
    assert_eq!(list[0]["size"], sbom.len());
    assert_eq!(list[0]["artifactType"], "application/spdx+json");
    assert_eq!(list[0]["annotations"]["n"], "2");
    // unknown subject: an empty index, not an error
    let r = s
        .req(
            Method::GET,
            &format!("/v2/nobody/referrers/{}", sha256(b"?")),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let idx: Value = r.json().await.expect("json");
    assert_eq!(idx["manifests"], json!([]));
}

#[tokio::test]
async fn deletes_answer_202_then_404_and_protect_what_is_used() {
    let s = start().await;
    let (m, d) = s.image("del", b"layer").await;
    s.put_manifest("del", "v1", OCI_MANIFEST, &m).await;
    s.put_manifest("del", "v2", OCI_MANIFEST, &m).await;
    let layer = sha256(b"layer");
    // a blob a manifest needs cannot go
    let r = s
        .call(Method::DELETE, &format!("/v2/del/blobs/{layer}"))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into())
    );
    // tag delete
    let r = s.call(Method::DELETE, "/v2/del/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s.call(Method::GET, "/v2/del/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.call(Method::GET, "/v2/del/manifests/v2").await.status(),
        StatusCode::OK
    );
    // digest delete removes the manifest and its remaining tags
    let r = s
        .call(Method::DELETE, &format!("/v2/del/manifests/{d}"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in ["v2", d.as_str()] {
        let r = s
            .call(Method::GET, &format!("/v2/del/manifests/{reference}"))
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
        );
    }
    let r = s
        .call(Method::DELETE, &format!("/v2/del/manifests/{d}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // now the blob can go
    let r = s
        .call(Method::DELETE, &format!("/v2/del/blobs/{layer}"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s.call(Method::GET, &format!("/v2/del/blobs/{layer}")).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
}

#[tokio::test]
async fn tags_list_order_and_pagination() {
    let s = start().await;
    let (m, _) = s.image("tags", b"layer").await;
    for tag in ["v10", "V2", "latest", "v1", "1.0", "_x", "Latest"] {
        assert_eq!(
            s.put_manifest("tags", tag, OCI_MANIFEST, &m).await.status(),
            StatusCode::CREATED
        );
    }
    let r = s.call(Method::GET, "/v2/tags/tags/list").await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["name"], "tags");
    assert_eq!(
        v["tags"],
        json!(["1.0", "_x", "Latest", "latest", "v1", "v10", "V2"])
    );

    let r = s.call(Method::GET, "/v2/tags/tags/list?n=3").await;
    assert_eq!(
        r.headers()["link"],
        "</v2/tags/tags/list?n=3&last=Latest>; rel=\"next\""
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tags"], json!(["1.0", "_x", "Latest"]));
    let r = s
        .call(Method::GET, "/v2/tags/tags/list?n=3&last=Latest")
        .await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tags"], json!(["latest", "v1", "v10"]));
    let r = s.call(Method::GET, "/v2/tags/tags/list?n=3&last=v10").await;
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tags"], json!(["V2"]));
    // absurd and junk page sizes
    let r = s
        .call(Method::GET, "/v2/tags/tags/list?n=99999999999999999999999")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.call(Method::GET, "/v2/tags/tags/list?n=0").await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tags"], json!([]));
    let r = s.call(Method::GET, "/v2/tags/tags/list?n=-1").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s.call(Method::GET, "/v2/unknown/tags/list").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into())
    );
}

#[tokio::test]
async fn catalog_pagination() {
    let s = start().await;
    for repo in ["b", "a/x", "c/d/e"] {
        let (m, _) = s.image(repo, b"l").await;
        s.put_manifest(repo, "v", OCI_MANIFEST, &m).await;
    }
    let r = s.call(Method::GET, "/v2/_catalog?n=2").await;
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=2&last=b>; rel=\"next\""
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["repositories"], json!(["a/x", "b"]));
    let r = s.call(Method::GET, "/v2/_catalog?n=2&last=b").await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["repositories"], json!(["c/d/e"]));
}

/// Sends a request exactly as written (clients normalise `..` and `%2e` away).
async fn raw(s: &Server, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn hostile_names_get_name_invalid_never_500() {
    let s = start().await;
    let long = "a".repeat(300);
    for path in [
        "/v2/../etc/passwd/manifests/latest".to_owned(),
        "/v2/%2e%2e/manifests/latest".to_owned(),
        "/v2/a/%2e%2e/b/manifests/latest".to_owned(),
        "/v2/a/./b/manifests/latest".to_owned(),
        "/v2/a//b/manifests/latest".to_owned(),
        "/v2/UPPER/manifests/latest".to_owned(),
        "/v2/a%00b/manifests/latest".to_owned(),
        format!("/v2/{long}/manifests/latest"),
        "/v2/a/../../blobs/uploads/".to_owned(),
    ] {
        let method = if path.ends_with("uploads/") {
            "POST"
        } else {
            "GET"
        };
        let out = raw(&s, method, &path).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
        assert!(out.contains("NAME_INVALID"), "{path}: {out}");
    }
    assert!(
        raw(&s, "POST", "/v2/a/b/blobs/uploads/")
            .await
            .starts_with("HTTP/1.1 202"),
        "control"
    );
    // upload ids are ours; anything else is unknown, including path tricks
    for id in ["..%2f..%2fetc", "not-an-upload", "%2e%2e", "a.b"] {
        let out = raw(&s, "GET", &format!("/v2/r/blobs/uploads/{id}")).await;
        assert!(out.starts_with("HTTP/1.1 404"), "{id}: {out}");
        assert!(out.contains("BLOB_UPLOAD_UNKNOWN"), "{id}: {out}");
    }
    let r = s
        .req(Method::GET, "/v2/")
        .header("x-big", "y".repeat(64 * 1024))
        .send()
        .await
        .expect("send");
    assert!(
        r.status().is_success() || r.status() == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{}",
        r.status()
    );
}

#[tokio::test]
async fn metrics_count_requests_and_bytes() {
    let s = start().await;
    s.push_blob("m", b"0123456789").await;
    let _ = s.call(Method::GET, "/v2/m/manifests/nope").await;
    let text = s
        .call(Method::GET, "/metrics")
        .await
        .text()
        .await
        .expect("text");
    assert!(text.contains("berth_received_bytes_total 10"), "{text}");
    assert!(
        text.contains(r#"berth_http_requests_total{route="manifest",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_http_requests_total{route="upload",method="POST",status="201"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn client_disconnect_mid_upload_leaves_session_consistent() {
    let s = start().await;
    let r = s
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .expect("send");
    let loc = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let r = s
        .req(Method::PATCH, &loc)
        .body("good")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // announce 1 MiB, send a little, hang up
    let addr = s.base.trim_start_matches("http://").to_owned();
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "PATCH {loc} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 1048576\r\n\r\npartial junk"
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.call(Method::GET, &loc).await;
    assert_eq!(r.headers()["range"], "0-3", "only acknowledged bytes count");
    let d = sha256(b"good end");
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .body(" end")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.call(Method::GET, &format!("/v2/r/blobs/{d}")).await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"good end");
}

#[tokio::test]
async fn slow_clients_do_not_starve_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start_server(
        RegistryConfig::default(),
        ServerConfig {
            header_read_timeout: Duration::from_secs(1),
            max_connections: 64,
            ..ServerConfig::default()
        },
    )
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // 40 slowloris connections: a request line, then a header byte now and then, never
    // an end to the headers.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .expect("write");
        slow.push(tcp);
    }
    // Normal clients are served promptly meanwhile.
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let r = s.call(Method::GET, "/v2/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    // Past the header timeout every slow connection has been closed by the server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for tcp in &mut slow {
        let _ = tcp.write_all(b"a").await;
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
            .await
            .expect("server closed the slow connection in time")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_uploads_finish() {
    let mut s = start().await;
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let d = sha256(&data);
    // A slow body: 64 pieces, 20 ms apart, so shutdown arrives mid-request.
    let pieces: Vec<Vec<u8>> = data.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let body = futures_util::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(p)
    });
    let upload = s
        .req(Method::POST, &format!("/v2/r/blobs/uploads/?digest={d}"))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let stop = s.take_stop();
    let shutdown = async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(());
    };
    let (r, ()) = tokio::join!(upload, shutdown);
    assert_eq!(
        r.expect("in-flight request completes").status(),
        StatusCode::CREATED
    );
    // The listener is gone: new connections are refused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.http.get(s.url("/v2/")).send().await.is_err());
    // and the blob was stored whole
    let digest = d.parse().expect("digest");
    assert_eq!(
        s.blobs.stat(&digest).await.expect("stat"),
        Some(data.len() as u64)
    );
}

#[tokio::test]
async fn a_content_type_contradicting_the_manifest_is_refused() {
    let s = start().await;
    let (bytes, digest) = s.image("ct/app", b"layer").await;
    for ct in [
        "text/plain",
        "application/octet-stream",
        "application/json",
        OCI_INDEX,
    ] {
        let r = s.put_manifest("ct/app", "v1", ct, &bytes).await;
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ct}: {v}");
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID", "{ct}: {v}");
        let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(OCI_MANIFEST) && msg.contains(ct), "{msg}");
        assert_eq!(
            s.call(Method::GET, &format!("/v2/ct/app/manifests/{digest}"))
                .await
                .status(),
            StatusCode::NOT_FOUND,
            "nothing stored after {ct}"
        );
    }
    let r = s
        .put_manifest(
            "ct/app",
            "v1",
            &format!("{OCI_MANIFEST}; charset=utf-8"),
            &bytes,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_push_by_digest_sets_every_tag_parameter_at_once() {
    let s = start_with(RegistryConfig {
        tag_rules: berth_registry::TagRules::new(vec![
            berth_registry::TagRuleSpec::semver_everywhere(),
        ])
        .expect("rules"),
        ..RegistryConfig::default()
    })
    .await;
    let (bytes, digest) = s.image("tp/app", b"layer one").await;
    let r = s
        .put_manifest(
            "tp/app",
            &format!("{digest}?tag=1.2.3&tag=1.2&tag=1&tag=latest"),
            OCI_MANIFEST,
            &bytes,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let named: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(str::trim)
        .collect();
    assert_eq!(named, ["1.2.3", "1.2", "1", "latest"]);
    for tag in ["1.2.3", "1.2", "1", "latest"] {
        let r = s
            .req(Method::GET, &format!("/v2/tp/app/manifests/{tag}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{tag}");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    }

    // Another image may not take an immutable tag, and then takes none of the others
    // either: nothing of the push is stored.
    let (other, other_digest) = s.image("tp/app", b"layer two").await;
    let r = s
        .put_manifest(
            "tp/app",
            &format!("{other_digest}?tag=fresh&tag=1.2.3"),
            OCI_MANIFEST,
            &other,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "DENIED".into())
    );
    for path in [
        "/v2/tp/app/manifests/fresh".to_owned(),
        format!("/v2/tp/app/manifests/{other_digest}"),
    ] {
        assert_eq!(
            s.call(Method::GET, &path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }

    // A malformed tag is TAG_INVALID, and too many are 414; neither stores anything.
    for bad in ["bad:tag", "-x", "", &"t".repeat(129)] {
        let r = s
            .put_manifest(
                "tp/app",
                &format!("{other_digest}?tag=ok&tag={bad}"),
                OCI_MANIFEST,
                &other,
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "TAG_INVALID".into()),
            "{bad:?}"
        );
    }
    let many: Vec<String> = (0..101).map(|i| format!("tag=t{i}")).collect();
    let r = s
        .put_manifest(
            "tp/app",
            &format!("{other_digest}?{}", many.join("&")),
            OCI_MANIFEST,
            &other,
        )
        .await;
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(
        s.call(Method::GET, "/v2/tp/app/manifests/ok")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // Ten at once is fine.
    let ten: Vec<String> = (0..10).map(|i| format!("tag=t{i}")).collect();
    let r = s
        .put_manifest(
            "tp/app",
            &format!("{other_digest}?{}", ten.join("&")),
            OCI_MANIFEST,
            &other,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get_all("oci-tag").iter().count(), 10);
}
