//! Version management over real HTTP: immutable and refused tags, tag history, rollback,
//! semver listing and resolution, and concurrent pushes to one immutable tag.

mod common;

use berth_registry::access::AccessConfig;
use berth_registry::{RegistryConfig, TagRuleSpec, TagRules};
use berth_server::ChallengeKind;
use common::{Cred, OCI_MANIFEST, PASSWORD, Setup, TestServer as Server, error_of, sha256};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const REPO: &str = "team-a/app";

/// A server with authentication and these rules for team-a: semver and `release-*` tags
/// immutable, `latest` refused. Users: admin, maint (maintainer), dev (developer), reader
/// (reader) of team-a, and outsider (no role).
async fn start() -> Server {
    let tag_rules = TagRules::new(vec![TagRuleSpec {
        repositories: "team-a/*".into(),
        immutable: vec!["semver".into(), "release-*".into()],
        refuse: vec!["latest".into()],
        refuse_mutable: false,
    }])
    .expect("rules");
    let s = common::start(Setup {
        registry: RegistryConfig {
            tag_rules,
            ..RegistryConfig::default()
        },
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        ..Setup::default()
    })
    .await;
    common::add_users(
        s.access(),
        &[
            ("admin", true),
            ("maint", false),
            ("dev", false),
            ("reader", false),
            ("outsider", false),
        ],
    )
    .await;
    common::add_tenant(
        s.access(),
        "team-a",
        false,
        &[
            ("maint", "maintainer"),
            ("dev", "developer"),
            ("reader", "reader"),
        ],
    )
    .await;
    s
}

impl Server {
    fn req(&self, method: Method, path: &str, user: &str) -> reqwest::RequestBuilder {
        self.request_as(method, path, &Cred::user(user))
    }

    async fn send(&self, method: Method, path: &str, user: &str) -> reqwest::Response {
        self.req(method, path, user).send().await.expect("send")
    }

    /// Pushes the config and layer every test manifest of `repo` uses.
    async fn blobs(&self, repo: &str) {
        for data in [&b"{}"[..], b"layer"] {
            let r = self
                .req(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
                    "admin",
                )
                .body(data.to_vec())
                .send()
                .await
                .expect("blob");
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    }

    /// PUTs manifest number `n` (each number has its own digest) under `reference`.
    async fn put(&self, repo: &str, reference: &str, n: u32, user: &str) -> reqwest::Response {
        self.req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            user,
        )
        .header("content-type", OCI_MANIFEST)
        .body(manifest(n))
        .send()
        .await
        .expect("put")
    }

    async fn digest_of_tag(&self, repo: &str, tag: &str) -> Option<String> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{tag}"),
                "admin",
            )
            .await;
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(r.status(), StatusCode::OK);
        r.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    async fn manifest_exists(&self, repo: &str, digest: &str) -> bool {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{digest}"),
                "admin",
            )
            .await;
        r.status() == StatusCode::OK
    }

    async fn api(&self, method: Method, path: &str, user: &str) -> (StatusCode, Value) {
        self.api_body(method, path, user, None).await
    }

    async fn api_body(
        &self,
        method: Method,
        path: &str,
        user: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, &format!("/api/v1{path}"), user);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("api");
        let status = r.status();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn history(&self, repo: &str, tag: &str) -> Vec<(String, Value, Value, String)> {
        let (status, v) = self
            .api(
                Method::GET,
                &format!("/tag-history?repository={repo}&tag={tag}"),
                "reader",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap_or_default().to_owned(),
                    e["old_digest"].clone(),
                    e["new_digest"].clone(),
                    e["actor"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn manifest(n: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"layer"), "size": 5}],
        "annotations": {"n": n.to_string()},
    }))
    .expect("json")
}

fn digest(n: u32) -> String {
    sha256(&manifest(n))
}

#[tokio::test]
async fn immutable_push_is_refused_and_stores_nothing() {
    let s = start().await;
    s.blobs(REPO).await;
    assert_eq!(
        s.put(REPO, "1.4.2", 1, "dev").await.status(),
        StatusCode::CREATED
    );
    let (status, code, message) = error_of(s.put(REPO, "1.4.2", 2, "dev").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(
        message.contains("tag 1.4.2 is immutable (rule: team-a/* semver)"),
        "{message}"
    );
    assert!(
        !s.manifest_exists(REPO, &digest(2)).await,
        "no manifest row"
    );
    assert_eq!(s.digest_of_tag(REPO, "1.4.2").await, Some(digest(1)));
    // Not even an admin's push moves it.
    let (status, code, _) = error_of(s.put(REPO, "1.4.2", 2, "admin").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    // The identical digest again is no error, and changes no history.
    assert_eq!(
        s.put(REPO, "1.4.2", 1, "dev").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(s.history(REPO, "1.4.2").await.len(), 1);
    // Glob patterns, and mutable tags beside them.
    assert_eq!(
        s.put(REPO, "release-7", 1, "dev").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        s.put(REPO, "release-7", 2, "dev").await.status(),
        StatusCode::FORBIDDEN
    );
    for n in [1, 2, 3] {
        assert_eq!(
            s.put(REPO, "main", n, "dev").await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(s.digest_of_tag(REPO, "main").await, Some(digest(3)));
    // Rules are per repository pattern: elsewhere semver tags move.
    s.blobs("other").await;
    for n in [1, 2] {
        assert_eq!(
            s.put("other", "1.4.2", n, "admin").await.status(),
            StatusCode::CREATED
        );
    }
}

#[tokio::test]
async fn refused_tags_are_not_pushed() {
    let s = start().await;
    s.blobs(REPO).await;
    let (status, code, message) = error_of(s.put(REPO, "latest", 1, "admin").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(
        message.contains("tag latest may not be pushed (rule: team-a/* refuse latest)"),
        "{message}"
    );
    assert!(!s.manifest_exists(REPO, &digest(1)).await);
    assert_eq!(s.digest_of_tag(REPO, "latest").await, None);
    s.blobs("other").await;
    assert_eq!(
        s.put("other", "latest", 1, "admin").await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn immutable_tags_are_deleted_only_by_an_admin() {
    let s = start().await;
    s.blobs(REPO).await;
    for (tag, n) in [("1.0.0", 1), ("dev", 1), ("main", 2)] {
        assert_eq!(
            s.put(REPO, tag, n, "dev").await.status(),
            StatusCode::CREATED
        );
    }
    let del = |path: String, user: &'static str| {
        let s = &s;
        async move {
            s.send(
                Method::DELETE,
                &format!("/v2/{REPO}/manifests/{path}"),
                user,
            )
            .await
        }
    };
    // A maintainer may delete, but not an immutable tag, nor the manifest it points at.
    let (status, code, message) = error_of(del("1.0.0".into(), "maint").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(
        message.contains("tag 1.0.0 is immutable (rule: team-a/* semver)"),
        "{message}"
    );
    let (status, code, message) = error_of(del(digest(1), "maint").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(message.contains("1.0.0"), "{message}");
    assert!(s.manifest_exists(REPO, &digest(1)).await);
    assert_eq!(s.digest_of_tag(REPO, "dev").await, Some(digest(1)), "kept");
    // Mutable tags go by tag (spec DELETE) ...
    assert_eq!(
        del("main".into(), "maint").await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(s.digest_of_tag(REPO, "main").await, None);
    // ... an admin deletes the immutable one, with a token as well as with Basic ...
    let token: Value = s
        .http
        .get(format!(
            "{}/token?service=berth&scope=repository:{REPO}:pull,delete",
            s.base
        ))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let r = s
        .http
        .delete(format!("{}/v2/{REPO}/manifests/1.0.0", s.base))
        .bearer_auth(token["token"].as_str().expect("token"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        s.history(REPO, "1.0.0").await,
        [
            (
                "delete".into(),
                json!(digest(1)),
                Value::Null,
                "admin".into()
            ),
            ("create".into(), Value::Null, json!(digest(1)), "dev".into()),
        ]
    );
    // ... and then the manifest may go, taking its mutable tags along, recorded.
    assert_eq!(del(digest(1), "maint").await.status(), StatusCode::ACCEPTED);
    assert_eq!(s.digest_of_tag(REPO, "dev").await, None);
    assert_eq!(
        s.history(REPO, "dev").await[0],
        (
            "delete".into(),
            json!(digest(1)),
            Value::Null,
            "maint".into()
        )
    );
}

#[tokio::test]
async fn history_and_rollback() {
    let s = start().await;
    s.blobs(REPO).await;
    for n in [1, 2, 3] {
        assert_eq!(
            s.put(REPO, "main", n, "dev").await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(
        s.history(REPO, "main").await,
        [
            (
                "move".into(),
                json!(digest(2)),
                json!(digest(3)),
                "dev".into()
            ),
            (
                "move".into(),
                json!(digest(1)),
                json!(digest(2)),
                "dev".into()
            ),
            ("create".into(), Value::Null, json!(digest(1)), "dev".into()),
        ]
    );
    let path = format!("/tag-history?repository={REPO}&tag=main");
    assert_eq!(
        s.api(Method::GET, &path, "outsider").await.0,
        StatusCode::FORBIDDEN
    );
    let (_, v) = s.api(Method::GET, &path, "reader").await;
    assert!(
        v["entries"][0]["source"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.")),
        "{v}"
    );

    let rollback = format!("/tag-rollback?repository={REPO}&tag=main");
    assert_eq!(
        s.api(Method::POST, &rollback, "reader").await.0,
        StatusCode::FORBIDDEN,
        "rolling back needs push"
    );
    let (status, v) = s.api(Method::POST, &rollback, "dev").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["digest"], json!(digest(2)));
    assert_eq!(s.digest_of_tag(REPO, "main").await, Some(digest(2)));
    assert_eq!(
        s.history(REPO, "main").await[0],
        (
            "rollback".into(),
            json!(digest(3)),
            json!(digest(2)),
            "dev".into()
        )
    );
    // Two steps back from 2 (distinct digests, newest first: 3, 1) is 1; --to names one.
    let (status, v) = s
        .api_body(Method::POST, &rollback, "dev", Some(json!({"steps": 2})))
        .await;
    assert_eq!((status, &v["digest"]), (StatusCode::OK, &json!(digest(1))));
    let (status, v) = s
        .api_body(
            Method::POST,
            &rollback,
            "dev",
            Some(json!({"to": digest(3)})),
        )
        .await;
    assert_eq!((status, &v["digest"]), (StatusCode::OK, &json!(digest(3))));
    let (status, v) = s
        .api_body(
            Method::POST,
            &rollback,
            "dev",
            Some(json!({"to": digest(9)})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // The target must still exist.
    assert_eq!(
        s.put(REPO, "exp", 4, "dev").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        s.put(REPO, "exp", 5, "dev").await.status(),
        StatusCode::CREATED
    );
    let r = s
        .send(
            Method::DELETE,
            &format!("/v2/{REPO}/manifests/{}", digest(4)),
            "maint",
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (status, v) = s
        .api(
            Method::POST,
            &format!("/tag-rollback?repository={REPO}&tag=exp"),
            "dev",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no longer in the repository")),
        "{v}"
    );

    // An immutable tag is rolled back by an admin only.
    assert_eq!(
        s.put(REPO, "2.0.0", 1, "dev").await.status(),
        StatusCode::CREATED
    );
    let r = s
        .send(
            Method::DELETE,
            &format!("/v2/{REPO}/manifests/2.0.0"),
            "admin",
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        s.put(REPO, "2.0.0", 2, "dev").await.status(),
        StatusCode::CREATED
    );
    let rollback = format!("/tag-rollback?repository={REPO}&tag=2.0.0");
    let (status, v) = s.api(Method::POST, &rollback, "dev").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["errors"][0]["code"], "DENIED");
    let (status, v) = s.api(Method::POST, &rollback, "admin").await;
    assert_eq!((status, &v["digest"]), (StatusCode::OK, &json!(digest(1))));
    assert_eq!(
        s.history(REPO, "2.0.0").await[0],
        (
            "rollback".into(),
            json!(digest(2)),
            json!(digest(1)),
            "admin".into()
        )
    );
}

#[tokio::test]
async fn concurrent_pushes_to_an_immutable_tag_one_wins() {
    let s = std::sync::Arc::new(start().await);
    s.blobs(REPO).await;
    let mut tasks = Vec::new();
    for n in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = s.put(REPO, "3.0.0", 100 + n, "dev").await;
            (n, error_of(r).await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (n, (status, code, _)) = t.await.expect("task");
        match status {
            StatusCode::CREATED => winners.push(n),
            StatusCode::FORBIDDEN => assert_eq!(code, "DENIED"),
            other => panic!("push {n}: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one push wins: {winners:?}");
    let winner = digest(100 + winners[0]);
    assert_eq!(s.digest_of_tag(REPO, "3.0.0").await, Some(winner.clone()));
    for n in 0..16 {
        if n != winners[0] {
            assert!(!s.manifest_exists(REPO, &digest(100 + n)).await);
        }
    }
    assert_eq!(s.history(REPO, "3.0.0").await.len(), 1);
}

#[tokio::test]
async fn semver_order_and_resolution() {
    let s = start().await;
    s.blobs(REPO).await;
    let tags = [
        "1.10.0",
        "main",
        "1.4.2",
        "v1.4.10",
        "1.4.3-rc.1",
        "0.9.0",
        "1.5.0",
        "1.4",
    ];
    for (n, t) in (1..).zip(tags) {
        assert_eq!(
            s.put(REPO, t, n, "dev").await.status(),
            StatusCode::CREATED,
            "{t}"
        );
    }
    let (status, v) = s
        .api(
            Method::GET,
            &format!("/tags?repository={REPO}&order=semver"),
            "reader",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let order: Vec<&str> = v["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["tag"].as_str())
        .collect();
    assert_eq!(
        order,
        ["0.9.0", "1.4.2", "1.4.3-rc.1", "v1.4.10", "1.5.0", "1.10.0"]
    );
    assert_eq!(v["tags"][1]["digest"], json!(digest(3)));
    let resolve = |version: &str, extra: &str| {
        let path = format!("/resolve?repository={REPO}&version={version}{extra}");
        let s = &s;
        async move { s.api(Method::GET, &path, "reader").await }
    };
    let (_, v) = resolve("1.4", "").await;
    assert_eq!(
        (&v["tag"], &v["digest"]),
        (&json!("v1.4.10"), &json!(digest(4)))
    );
    assert_eq!(resolve("v1", "").await.1["tag"], "1.10.0");
    assert_eq!(resolve("1.4.2", "").await.1["tag"], "1.4.2");
    assert_eq!(resolve("1.4.3", "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        resolve("1.4.3", "&prerelease=true").await.1["tag"],
        "1.4.3-rc.1"
    );
    assert_eq!(resolve("x", "").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.api(
            Method::GET,
            &format!("/resolve?repository={REPO}&version=1"),
            "outsider"
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.api(
            Method::GET,
            "/tags?repository=team-a/none&order=semver",
            "reader"
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}
