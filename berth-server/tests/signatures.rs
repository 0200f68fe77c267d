//! The signature policy over real HTTP: an enforcing rule refuses manifests without a valid
//! signature under the repository's trust (403 DENIED naming the rule and the digest) and
//! serves signed ones; signatures themselves stay pullable; forged, misdirected, tampered
//! and oversized signatures are refused, never a 500; a signed index covers its children
//! only; an image tagged like a signature is judged; deleting the signature or removing
//! the key flips the verdict, on another replica within 2 s. Signatures are made here with
//! ring keys in cosign's exact format (the e2e suite does the same with the real cosign and
//! notation binaries).

mod common;

use std::time::{Duration, Instant};

use berth_meta::AuditQuery;
use berth_registry::access::AccessConfig;
use berth_registry::policy::{Mode, Policy};
use berth_server::ChallengeKind;
use common::{
    Key, OCI_INDEX, OCI_MANIFEST, SIMPLE_SIGNING, Setup, Stores, TestServer as Server, key,
    payload, sha256, sign, signature_policy as policy,
};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

/// A server under `policy`, following the other replicas' changes as `berth serve` does;
/// over `stores` when given (another replica), else fresh ones (PostgreSQL or SQLite).
async fn start(setup: Setup, policy: Policy) -> Server {
    let s = common::start(setup).await;
    s.registry.set_policy(policy);
    s.registry.follow_other_replicas().await.expect("listen");
    s
}

async fn serve_on(postgres: bool, policy: Policy) -> Server {
    start(
        Setup {
            postgres,
            ..Setup::default()
        },
        policy,
    )
    .await
}

/// Another replica over `stores`.
async fn replica(stores: Stores, policy: Policy) -> Server {
    start(
        Setup {
            stores: Some(stores),
            ..Setup::default()
        },
        policy,
    )
    .await
}

/// A server with authentication (Basic) and no rule yet; users admin (an administrator),
/// ci (developer of prod) and node (reader of prod), over `stores` when given.
async fn start_with_users(postgres: bool, stores: Option<Stores>, policy: Policy) -> Server {
    let first = stores.is_none();
    let s = start(
        Setup {
            auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
            postgres,
            stores,
            ..Setup::default()
        },
        policy,
    )
    .await;
    if first {
        common::add_users(
            s.access(),
            &[("admin", true), ("ci", false), ("node", false)],
        )
        .await;
        common::add_tenant(
            s.access(),
            "prod",
            false,
            &[("ci", "developer"), ("node", "reader")],
        )
        .await;
    }
    s
}

impl Server {
    async fn blob(&self, repo: &str, data: &[u8]) -> (String, usize) {
        let d = sha256(data);
        let r = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", self.base))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("push blob");
        assert_eq!(r.status(), StatusCode::CREATED);
        (d, data.len())
    }

    async fn put(&self, repo: &str, reference: &str, media_type: &str, body: &Value) -> String {
        let bytes = serde_json::to_vec(body).expect("json");
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes.clone())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        sha256(&bytes)
    }

    /// A small runnable image (one tar+gzip layer); `seed` makes it unique.
    async fn image(&self, repo: &str, tag: &str, seed: &str) -> String {
        let (cfg, cfg_len) = self
            .blob(
                repo,
                format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).as_bytes(),
            )
            .await;
        let (layer, layer_len) = self.blob(repo, format!("layer {seed}").as_bytes()).await;
        self.put(
            repo,
            tag,
            OCI_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_len},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_len}],
            }),
        )
        .await
    }

    /// A cosign `.sig` manifest: one simple-signing layer per (payload, signature).
    async fn sig_manifest(
        &self,
        repo: &str,
        subject: &str,
        layers: &[(Vec<u8>, String)],
    ) -> String {
        let (cfg, cfg_len) = self
            .blob(repo, b"{\"architecture\":\"\",\"os\":\"\"}")
            .await;
        let mut descs = Vec::new();
        for (payload, sig) in layers {
            let (d, n) = self.blob(repo, payload).await;
            descs.push(json!({
                "mediaType": SIMPLE_SIGNING, "digest": d, "size": n,
                "annotations": {"dev.cosignproject.cosign/signature": sig},
            }));
        }
        let tag = format!("sha256-{}.sig", &subject[7..]);
        self.put(
            repo,
            &tag,
            OCI_MANIFEST,
            &json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_len},
                "layers": descs,
            }),
        )
        .await
    }

    /// [`Server::sig_manifest`] with Basic credentials.
    async fn sig_manifest_as(
        &self,
        user: &str,
        pw: &str,
        repo: &str,
        subject: &str,
        layers: &[(Vec<u8>, String)],
    ) -> String {
        let push = |body: Vec<u8>, path: String, ct: &'static str, method: Method| {
            self.http
                .request(method, format!("{}{path}", self.base))
                .basic_auth(user, Some(pw))
                .header(header::CONTENT_TYPE, ct)
                .body(body)
        };
        let mut blobs = vec![b"{\"architecture\":\"\",\"os\":\"\"}".to_vec()];
        blobs.extend(layers.iter().map(|(p, _)| p.clone()));
        for b in &blobs {
            let path = format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(b));
            let r = push(b.clone(), path, "application/octet-stream", Method::POST)
                .send()
                .await
                .expect("blob");
            assert_eq!(r.status(), StatusCode::CREATED);
        }
        let descs: Vec<Value> = layers
            .iter()
            .map(|(p, sig)| {
                json!({"mediaType": SIMPLE_SIGNING, "digest": sha256(p), "size": p.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": sig}})
            })
            .collect();
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&blobs[0]), "size": blobs[0].len()},
            "layers": descs,
        }))
        .expect("json");
        let path = format!("/v2/{repo}/manifests/sha256-{}.sig", &subject[7..]);
        let r = push(body.clone(), path, OCI_MANIFEST, Method::PUT)
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::CREATED);
        sha256(&body)
    }

    async fn get(&self, repo: &str, reference: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header(header::ACCEPT, format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .expect("get");
        (r.status(), r.text().await.unwrap_or_default())
    }

    async fn head(&self, repo: &str, reference: &str) -> StatusCode {
        self.http
            .request(
                Method::HEAD,
                format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header(header::ACCEPT, OCI_MANIFEST)
            .send()
            .await
            .expect("head")
            .status()
    }

    async fn metric(&self, sample: &str) -> u64 {
        common::metric(&self.metrics().await, sample)
    }
}

async fn enforce_refuses_unsigned_and_serves_signed(postgres: bool) {
    let k = key();
    let s = serve_on(postgres, policy(&[&k], Mode::Enforce)).await;
    let img = s.image("prod/app", "v1", "a").await;

    for reference in ["v1", img.as_str()] {
        let (status, body) = s.get("prod/app", reference).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body.contains("DENIED") && body.contains("signed-prod") && body.contains(&img),
            "{body}"
        );
        assert_eq!(s.head("prod/app", reference).await, StatusCode::FORBIDDEN);
    }
    // Outside the rule's repositories nothing changes.
    let other = s.image("dev/app", "v1", "a").await;
    assert_eq!(s.get("dev/app", &other).await.0, StatusCode::OK);

    // Two signers on one .sig manifest (cosign appends): a stranger's and the trusted one.
    let p = payload(&img);
    let stranger = key();
    let sig_digest = s
        .sig_manifest(
            "prod/app",
            &img,
            &[(p.clone(), sign(&stranger, &p)), (p.clone(), sign(&k, &p))],
        )
        .await;
    for reference in ["v1", img.as_str()] {
        assert_eq!(s.get("prod/app", reference).await.0, StatusCode::OK);
        assert_eq!(s.head("prod/app", reference).await, StatusCode::OK);
    }
    // The signature itself is served (clients fetch it to verify), though nobody signed it.
    assert_eq!(s.get("prod/app", &sig_digest).await.0, StatusCode::OK);
    assert_eq!(
        s.get("prod/app", &format!("sha256-{}.sig", &img[7..]))
            .await
            .0,
        StatusCode::OK
    );
    assert!(
        s.metric("berth_policy_pulls_total{result=\"refused\"}")
            .await
            >= 4
    );

    let report = s
        .registry
        .verify_report(
            &"prod/app".parse().expect("name"),
            &img.parse().expect("digest"),
        )
        .await
        .expect("report");
    assert_eq!(report.signatures.len(), 2);
    assert_eq!(report.signatures.iter().filter(|s| s.valid).count(), 1);
    assert!(report.detail.contains("ci/k0"), "{}", report.detail);

    // The refusals were audited.
    s.state.flush_audit().await;
    let rows = s
        .meta
        .audit_query(&AuditQuery {
            action: Some("policy.pull".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert!(rows.iter().any(|(_, r)| r.outcome == "denied"), "{rows:?}");
}

#[tokio::test]
async fn enforce_refuses_unsigned_and_serves_signed_sqlite() {
    enforce_refuses_unsigned_and_serves_signed(false).await;
}

#[tokio::test]
async fn enforce_refuses_unsigned_and_serves_signed_postgres() {
    enforce_refuses_unsigned_and_serves_signed(true).await;
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let k = key();
    let s = serve_on(false, policy(&[&k], Mode::Enforce)).await;

    // Untrusted key.
    let a = s.image("prod/a", "v1", "a").await;
    let p = payload(&a);
    s.sig_manifest("prod/a", &a, &[(p.clone(), sign(&key(), &p))])
        .await;
    // A trusted signature over a payload naming another digest.
    let b = s.image("prod/b", "v1", "b").await;
    let elsewhere = s.image("prod/b", "v2", "c").await;
    let p = payload(&elsewhere);
    s.sig_manifest("prod/b", &b, &[(p.clone(), sign(&k, &p))])
        .await;
    // The payload changed after signing (the signature covers other bytes).
    let c = s.image("prod/c", "v1", "d").await;
    let p = payload(&c);
    let mut changed = p.clone();
    changed.extend_from_slice(b" ");
    s.sig_manifest("prod/c", &c, &[(changed, sign(&k, &p))])
        .await;
    // A huge payload, validly signed: invalid, not a 500.
    let d = s.image("prod/d", "v1", "e").await;
    let mut huge = payload(&d);
    huge.extend(std::iter::repeat_n(b' ', 2 << 20));
    s.sig_manifest("prod/d", &d, &[(huge.clone(), sign(&k, &huge))])
        .await;
    // A deeply nested payload.
    let e = s.image("prod/e", "v1", "f").await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    s.sig_manifest("prod/e", &e, &[(deep.clone(), sign(&k, &deep))])
        .await;

    for (repo, digest, code) in [
        ("prod/a", &a, "wrong_key"),
        ("prod/b", &b, "other_digest"),
        ("prod/c", &c, "wrong_key"),
        ("prod/d", &d, "invalid"),
        ("prod/e", &e, "invalid"),
    ] {
        let (status, body) = s.get(repo, digest).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{repo}: {body}");
        let report = s
            .registry
            .verify_report(
                &repo.parse().expect("name"),
                &digest.parse().expect("digest"),
            )
            .await
            .expect("report");
        let f = report.signatures[0].failure.as_ref().expect("a failure");
        assert_eq!(f.code(), code, "{repo}: {f}");
    }
    // The image that was named by b's payload is not signed by it either.
    assert_eq!(s.get("prod/b", &elsewhere).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_signed_index_covers_its_children_only() {
    let k = key();
    let s = serve_on(false, policy(&[&k], Mode::Enforce)).await;
    let child = s.image("prod/multi", "amd64", "x").await;
    let unrelated = s.image("prod/multi", "other", "y").await;
    let index = s
        .put(
            "prod/multi",
            "v1",
            OCI_INDEX,
            &json!({
                "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1,
                    "platform": {"architecture": "amd64", "os": "linux"}}],
            }),
        )
        .await;
    assert_eq!(s.get("prod/multi", "v1").await.0, StatusCode::FORBIDDEN);
    let p = payload(&index);
    s.sig_manifest("prod/multi", &index, &[(p.clone(), sign(&k, &p))])
        .await;
    assert_eq!(s.get("prod/multi", "v1").await.0, StatusCode::OK);
    // containerd: the index by tag, then the platform manifest by digest.
    assert_eq!(s.get("prod/multi", &child).await.0, StatusCode::OK);
    assert_eq!(
        s.get("prod/multi", &unrelated).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn an_image_tagged_like_a_signature_is_judged() {
    let k = key();
    let s = serve_on(false, policy(&[&k], Mode::Enforce)).await;
    let img = s.image("prod/app", "v1", "a").await;
    // A runnable image pushed under the signature tag of `img`.
    let tag = format!("sha256-{}.sig", &img[7..]);
    let fake = s.image("prod/app", &tag, "fake").await;
    assert_eq!(s.get("prod/app", &tag).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get("prod/app", &fake).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get("prod/app", &img).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn losing_the_signature_or_the_key_refuses_again() {
    let k = key();
    let s = serve_on(false, policy(&[&k], Mode::Enforce)).await;
    let img = s.image("prod/app", "v1", "a").await;
    let p = payload(&img);
    let sig = s
        .sig_manifest("prod/app", &img, &[(p.clone(), sign(&k, &p))])
        .await;
    assert_eq!(s.get("prod/app", "v1").await.0, StatusCode::OK);
    let r = s
        .http
        .delete(format!("{}/v2/prod/app/manifests/{sig}", s.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s.get("prod/app", "v1").await.0, StatusCode::FORBIDDEN);
    s.sig_manifest("prod/app", &img, &[(p.clone(), sign(&k, &p))])
        .await;
    assert_eq!(s.get("prod/app", "v1").await.0, StatusCode::OK);
    // The key removed from the trust (another key stays): refused.
    let other = key();
    s.registry.set_policy(policy(&[&other], Mode::Enforce));
    assert_eq!(s.get("prod/app", "v1").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn audit_mode_serves_and_counts() {
    let k = key();
    let s = serve_on(false, policy(&[&k], Mode::Audit)).await;
    s.image("prod/app", "v1", "a").await;
    assert_eq!(s.get("prod/app", "v1").await.0, StatusCode::OK);
    assert_eq!(
        s.metric("berth_policy_pulls_total{result=\"audited\"}")
            .await,
        1
    );
    s.state.flush_audit().await;
    let rows = s
        .meta
        .audit_query(&AuditQuery {
            action: Some("policy.pull".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.outcome, "audited");
    // Dry-run mode changes nothing at all.
    s.registry.set_policy(policy(&[&k], Mode::DryRun));
    assert_eq!(s.get("prod/app", "v1").await.0, StatusCode::OK);
    assert_eq!(
        s.metric("berth_policy_pulls_total{result=\"audited\"}")
            .await,
        1
    );
    let runs = s
        .registry
        .policy_check(Some("signed-prod"))
        .await
        .expect("check");
    assert_eq!((runs[0].checked, runs[0].refused), (1, 1));
}

#[tokio::test]
async fn enforce_needs_a_dry_run_of_the_rule_first() {
    let k = key();
    let s = serve_on(false, policy(&[&k], Mode::Audit)).await;
    s.image("prod/app", "v1", "a").await;
    // Enforce on a repository holding images, never dry-run: refused.
    s.registry.set_policy(policy(&[&k], Mode::Enforce));
    let e = s.registry.check_enforce_ready().await.expect_err("refused");
    assert!(e.to_string().contains("berth policy check"), "{e}");
    // After a dry run of that exact rule it may enforce.
    s.registry
        .policy_check(Some("signed-prod"))
        .await
        .expect("check");
    s.registry.check_enforce_ready().await.expect("ready");
    // Another key is another definition.
    s.registry.set_policy(policy(&[&key()], Mode::Enforce));
    assert!(s.registry.check_enforce_ready().await.is_err());
}

/// Two replicas over one PostgreSQL: a signature deleted through one is refused by the
/// other within 2 s, and a new one is served by it.
#[tokio::test]
async fn two_replicas_agree_within_two_seconds() {
    let k = key();
    let a = serve_on(true, policy(&[&k], Mode::Enforce)).await;
    let b = replica(a.stores(), policy(&[&k], Mode::Enforce)).await;
    let img = a.image("prod/app", "v1", "a").await;
    assert_eq!(b.get("prod/app", "v1").await.0, StatusCode::FORBIDDEN);
    let p = payload(&img);
    let sig = a
        .sig_manifest("prod/app", &img, &[(p.clone(), sign(&k, &p))])
        .await;
    let within = |srv: &Server, want: StatusCode| {
        let (base, http) = (srv.base.clone(), srv.http.clone());
        async move {
            let start = Instant::now();
            loop {
                let st = http
                    .get(format!("{base}/v2/prod/app/manifests/v1"))
                    .header(header::ACCEPT, OCI_MANIFEST)
                    .send()
                    .await
                    .expect("get")
                    .status();
                if st == want {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "still {st} after 2 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    within(&b, StatusCode::OK).await;
    let r = a
        .http
        .delete(format!("{}/v2/prod/app/manifests/{sig}", a.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    within(&b, StatusCode::FORBIDDEN).await;
}

/// Signers read the manifest they sign: an authenticated caller with push permission is
/// served what an enforcing rule refuses (audited as `bypassed`), a pull-only caller (or a
/// pusher's token scoped to pull) is refused, and `push_bypass = false` refuses everyone.
#[tokio::test]
async fn pushers_bypass_pullers_are_refused() {
    let k = key();
    let s = start_with_users(false, None, policy(&[&k], Mode::Enforce)).await;
    let pw = common::PASSWORD;
    // Push as ci.
    let (cfg, layer) = (b"{\"os\":\"linux\"}".to_vec(), b"layer".to_vec());
    for b in [&cfg, &layer] {
        let r = s
            .http
            .post(format!(
                "{}/v2/prod/app/blobs/uploads/?digest={}",
                s.base,
                sha256(b)
            ))
            .basic_auth("ci", Some(pw))
            .body(b.clone())
            .send()
            .await
            .expect("blob");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&cfg), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("json");
    let r = s
        .http
        .put(format!("{}/v2/prod/app/manifests/v1", s.base))
        .basic_auth("ci", Some(pw))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);

    let get = |user: &'static str| {
        let (base, http) = (s.base.clone(), s.http.clone());
        async move {
            http.get(format!("{base}/v2/prod/app/manifests/v1"))
                .basic_auth(user, Some(pw))
                .header(header::ACCEPT, OCI_MANIFEST)
                .send()
                .await
                .expect("get")
                .status()
        }
    };
    assert_eq!(get("node").await, StatusCode::FORBIDDEN);
    assert_eq!(get("ci").await, StatusCode::OK);
    assert_eq!(
        s.metric("berth_policy_pulls_total{result=\"bypassed\"}")
            .await,
        1
    );
    s.state.flush_audit().await;
    let rows = s
        .meta
        .audit_query(&AuditQuery {
            action: Some("policy.pull".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert!(
        rows.iter()
            .any(|(_, r)| r.outcome == "bypassed" && r.actor == "ci"),
        "{rows:?}"
    );
    // Without the bypass, the pusher is refused too.
    let mut spec = s.registry.policy().spec().clone();
    spec.rules[0].push_bypass = false;
    s.registry.set_policy(Policy::new(spec).expect("policy"));
    assert_eq!(get("ci").await, StatusCode::FORBIDDEN);
}

/// Trust and rules managed through `/api/v1/policy` on two replicas over PostgreSQL: a
/// rule set on one acts on the other within 2 s; enforce is refused until a dry run of the
/// rule (`/api/v1/policy/check`); `/api/v1/verify` says who signed; removing the key
/// through the API refuses the image on the other replica within 2 s.
#[tokio::test]
async fn managed_policy_reaches_every_replica() {
    let pw = common::PASSWORD;
    let a = start_with_users(true, None, Policy::default()).await;
    let b = start_with_users(true, Some(a.stores()), Policy::default()).await;
    let (a, b) = (&a, &b);
    let api = |s: &Server, method: Method, path: &str| {
        s.http
            .request(method, format!("{}/api/v1{path}", s.base))
            .basic_auth("admin", Some(pw))
    };
    let pull_as_node = |s: &Server| {
        let (base, http) = (s.base.clone(), s.http.clone());
        async move {
            http.get(format!("{base}/v2/prod/app/manifests/v1"))
                .basic_auth("node", Some(pw))
                .header(header::ACCEPT, OCI_MANIFEST)
                .send()
                .await
                .expect("get")
                .status()
        }
    };
    let within_2s = |s: &Server, want: StatusCode| {
        let (s_base, http) = (s.base.clone(), s.http.clone());
        async move {
            let start = Instant::now();
            loop {
                let st = http
                    .get(format!("{s_base}/v2/prod/app/manifests/v1"))
                    .basic_auth("node", Some(pw))
                    .header(header::ACCEPT, OCI_MANIFEST)
                    .send()
                    .await
                    .expect("get")
                    .status();
                if st == want {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "still {st} after 2 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // An image (pushed as admin, Basic).
    let (cfg, layer) = (b"{\"os\":\"linux\"}".to_vec(), b"layer x".to_vec());
    for blob in [&cfg, &layer] {
        let r = a
            .http
            .post(format!(
                "{}/v2/prod/app/blobs/uploads/?digest={}",
                a.base,
                sha256(blob)
            ))
            .basic_auth("admin", Some(pw))
            .body(blob.clone())
            .send()
            .await
            .expect("blob");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&cfg), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("json");
    let img = sha256(&manifest);
    let r = a
        .http
        .put(format!("{}/v2/prod/app/manifests/v1", a.base))
        .basic_auth("admin", Some(pw))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(pull_as_node(b).await, StatusCode::OK);

    let k = key();
    let spec = |keys: &[&Key], mode: &str| {
        json!({
            "trust": [{"name": "ci", "repositories": ["prod/*"], "cosign": keys.iter().enumerate()
                .map(|(i, k)| json!({"name": format!("k{i}"), "pem": k.pem, "algorithm": "ed25519"}))
                .collect::<Vec<_>>()}],
            "rules": [{"name": "signed-prod", "repositories": ["prod/*"], "mode": mode}],
        })
    };
    // Enforce straight away: refused, the repository holds an image never dry-run.
    let r = api(a, Method::PUT, "/policy")
        .json(&spec(&[&k], "enforce"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap_or_default().contains("dry run"));
    let r = api(a, Method::PUT, "/policy")
        .json(&spec(&[&k], "dry-run"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = api(a, Method::POST, "/policy/check?rule=signed-prod")
        .send()
        .await
        .expect("check");
    assert_eq!(r.status(), StatusCode::OK);
    let runs: Value = r.json().await.expect("json");
    assert_eq!(runs["runs"][0]["refused"], 1, "{runs}");
    let r = api(a, Method::PUT, "/policy")
        .json(&spec(&[&k], "enforce"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    within_2s(b, StatusCode::FORBIDDEN).await;

    // Signed through replica a: served by b within 2 s; /verify names the key.
    let p = payload(&img);
    a.sig_manifest_as("admin", pw, "prod/app", &img, &[(p.clone(), sign(&k, &p))])
        .await;
    within_2s(b, StatusCode::OK).await;
    let report: Value = b
        .http
        .get(format!(
            "{}/api/v1/verify?repository=prod/app&reference=v1",
            b.base
        ))
        .basic_auth("node", Some(pw))
        .send()
        .await
        .expect("verify")
        .json()
        .await
        .expect("json");
    assert_eq!(report["outcome"], "signed", "{report}");
    assert_eq!(report["signatures"][0]["signed_by"], "ci/k0", "{report}");

    // The key replaced through replica a: b refuses within 2 s.
    let other = key();
    let r = api(a, Method::PUT, "/policy")
        .json(&spec(&[&other], "enforce"))
        .send()
        .await
        .expect("put");
    // A new trust is a new definition: it needs its own dry run first.
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = api(a, Method::PUT, "/policy")
        .json(&spec(&[&other], "audit"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    api(a, Method::POST, "/policy/check")
        .send()
        .await
        .expect("check");
    let r = api(a, Method::PUT, "/policy")
        .json(&spec(&[&other], "enforce"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    within_2s(b, StatusCode::FORBIDDEN).await;
}
