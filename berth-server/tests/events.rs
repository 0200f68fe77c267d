//! Events and webhooks over real HTTP: a Berth server on 127.0.0.1:0 and, as the
//! receiver, a small HTTP server of the test's own on 127.0.0.1:0 that records what it
//! gets and answers as the test says (2xx, 500s, slowly, or not at all).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::{JobQuery, JobState, MetaStore};
use berth_registry::access::{Access, AccessConfig, cli_identity};
use berth_registry::events::{EventKind, EventSettings, Format, WebhookSpec};
use berth_registry::jobs::JobSettings;
use berth_registry::{Registry, RegistryConfig};
use berth_server::{AppState, AuthSettings, ChallengeKind, ServerConfig};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const PASSWORD: &str = "correct horse battery";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

// ---- the receiver ----

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The events of a Distribution envelope, a CloudEvent, or a CloudEvents batch.
    fn events(&self) -> Vec<Value> {
        match self.json() {
            Value::Array(list) => list,
            v if v.get("events").is_some() => v["events"].as_array().cloned().unwrap_or_default(),
            v => vec![v],
        }
    }
}

#[derive(Default)]
struct Behaviour {
    got: Mutex<Vec<Received>>,
    /// Answer this status (0: 200).
    status: AtomicU16,
    /// Answer 500 to this many requests first.
    fail_first: AtomicU32,
    /// Take this long to answer.
    delay_ms: AtomicU64,
}

/// A receiver on a fixed loopback port; stopping it closes every connection too, so Berth
/// finds nobody listening.
struct Receiver {
    addr: SocketAddr,
    b: Arc<Behaviour>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let b = Arc::new(Behaviour::default());
        let task = Some(tokio::spawn(serve(listener, Arc::clone(&b))));
        Receiver { addr, b, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn resume(&mut self) {
        self.stop();
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.task = Some(tokio::spawn(serve(listener, Arc::clone(&self.b))));
    }

    fn got(&self) -> Vec<Received> {
        self.b.got.lock().expect("lock").clone()
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.got()
            .into_iter()
            .filter(|r| r.header("x-test-path") == path)
            .collect()
    }

    /// Waits until `ready` holds for what arrived (at most 30 s).
    async fn wait(&self, what: &str, ready: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got();
            if ready(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: tokio::net::TcpListener, b: Arc<Behaviour>) {
    // Connections live in this set: aborting the accept task drops them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let b = Arc::clone(&b);
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let b = Arc::clone(&b);
            async move {
                use http_body_util::BodyExt as _;
                let (mut parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let delay = b.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                parts.headers.insert(
                    "x-test-path",
                    parts.uri.path().parse().expect("path as a header value"),
                );
                b.got.lock().expect("lock").push(Received {
                    headers: parts.headers,
                    body,
                    at: Instant::now(),
                });
                let failing = b
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let status = match b.status.load(Ordering::SeqCst) {
                    _ if failing => 500,
                    0 => 200,
                    s => s,
                };
                let resp = http::Response::builder()
                    .status(status)
                    .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                    .expect("response");
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        conns.spawn(async move {
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

// ---- Berth ----

fn fast_jobs() -> JobSettings {
    JobSettings {
        max_attempts: 10,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        ..JobSettings::default()
    }
}

fn hook(name: &str, url: String, format: Format, events: &[EventKind]) -> WebhookSpec {
    WebhookSpec {
        name: name.into(),
        url,
        events: events.to_vec(),
        repositories: Vec::new(),
        secret: None,
        format,
        timeout_secs: 10,
    }
}

struct Berth {
    base: String,
    http: reqwest::Client,
    registry: Registry,
    access: Option<Access>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _jobs: berth_registry::jobs::JobsHandle,
}

struct Setup {
    webhooks: Vec<WebhookSpec>,
    allow_networks: Vec<&'static str>,
    jobs: JobSettings,
    auth: bool,
    public_url: Option<String>,
    encryption: Option<std::sync::Arc<berth_storage::seal::Keyring>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            webhooks: Vec::new(),
            allow_networks: Vec::new(),
            jobs: fast_jobs(),
            auth: false,
            public_url: None,
            encryption: None,
        }
    }
}

async fn berth(meta: MetaStore, blobs: berth_storage::BlobStore, s: Setup) -> Berth {
    let registry = Registry::new(blobs, meta.clone(), RegistryConfig::default())
        .with_events(EventSettings {
            webhooks: s.webhooks,
            allow_networks: s
                .allow_networks
                .iter()
                .map(|n| n.parse().expect("net"))
                .collect(),
            public_url: s.public_url,
            source_addr: "berth.test:5000".into(),
            ..EventSettings::default()
        })
        .expect("events")
        .with_jobs(s.jobs)
        .with_encryption(s.encryption);
    registry.reload_webhooks().await.expect("webhooks");
    let access = if s.auth {
        Some(
            Access::new(meta, AccessConfig::default(), None)
                .await
                .expect("access"),
        )
    } else {
        None
    };
    let state = AppState::with_auth(
        registry.clone(),
        ServerConfig::default(),
        access.clone().map(|access| AuthSettings {
            access,
            challenge: ChallengeKind::Basic,
        }),
    );
    let run = common::serve(state).await;
    let jobs = registry.start_jobs();
    Berth {
        base: run.base,
        http: run.http,
        registry,
        access,
        _stop: run.stop,
        _jobs: jobs,
    }
}

impl Berth {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        if self.access.is_some() {
            r.basic_auth("admin", Some(PASSWORD))
        } else {
            r
        }
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "blob push");
        d
    }

    /// Pushes an image whose layer is `layer` as `repo:tag`; returns its digest and size.
    async fn push(&self, repo: &str, tag: &str, layer: &[u8]) -> (String, usize) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let c = self.push_blob(repo, config).await;
        let l = self.push_blob(repo, layer).await;
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": layer.len()}],
        }))
        .expect("json");
        let r = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::CREATED, "manifest push");
        (sha256(&m), m.len())
    }

    async fn metric(&self, name: &str, queue: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let prefix = format!("{name}{{queue=\"{queue}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.parse().expect("number"))
    }
}

async fn sqlite_berth(s: Setup) -> (Berth, std::sync::Arc<tempfile::TempDir>) {
    let st = common::stores_on(false, false).await;
    (berth(st.meta, st.blobs, s).await, st.dir)
}

fn verify(secret: &str, r: &Received) {
    let ts = r.header("x-berth-timestamp");
    assert!(!ts.is_empty(), "a timestamp header");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ts_n: i64 = ts.parse().expect("seconds");
    assert!((now - ts_n).abs() < 300, "a current timestamp");
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        r.header("x-berth-signature"),
        expected,
        "the signature verifies"
    );
}

const ALL: &[EventKind] = &[
    EventKind::Push,
    EventKind::TagMove,
    EventKind::Rollback,
    EventKind::Delete,
];

/// Both formats, every kind of change, signatures: one receiver, two endpoints.
#[tokio::test]
async fn payloads_in_both_formats_are_signed_and_share_event_ids() {
    let rx = Receiver::start().await;
    let mut dist = hook("dist", rx.url("/dist"), Format::Distribution, ALL);
    dist.secret = Some("dist-secret".into());
    let mut ce = hook("ce", rx.url("/ce"), Format::Cloudevents, ALL);
    ce.secret = Some("ce-secret".into());
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![dist, ce],
        public_url: Some("https://registry.example".into()),
        ..Setup::default()
    })
    .await;

    let (first, first_size) = b.push("team-a/app", "v1", b"layer one").await;
    let (second, second_size) = b.push("team-a/app", "v1", b"layer two").await;
    let repo: berth_oci::RepoName = "team-a/app".parse().expect("repo");
    let tag: berth_oci::Tag = "v1".parse().expect("tag");
    b.registry
        .rollback_tag(
            &repo,
            &tag,
            &berth_registry::Rollback::Steps(1),
            &berth_meta::Actor::named("carol"),
            false,
        )
        .await
        .expect("rollback");
    let r = b
        .req(Method::DELETE, "/v2/team-a/app/manifests/v1")
        .send()
        .await
        .expect("delete tag");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = b
        .req(
            Method::DELETE,
            &format!("/v2/team-a/app/manifests/{second}"),
        )
        .send()
        .await
        .expect("delete manifest");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    rx.wait("five events at each endpoint", |got| {
        got.iter()
            .filter(|r| r.header("x-test-path") == "/dist")
            .count()
            == 5
            && got
                .iter()
                .filter(|r| r.header("x-test-path") == "/ce")
                .count()
                == 5
    })
    .await;
    let d = rx.on("/dist");
    let c = rx.on("/ce");
    for r in &d {
        verify("dist-secret", r);
        assert_eq!(
            r.header("content-type"),
            "application/vnd.docker.distribution.events.v2+json"
        );
    }
    for r in &c {
        verify("ce-secret", r);
        assert!(
            r.header("content-type")
                .starts_with("application/cloudevents+json")
        );
    }
    let d: Vec<Value> = d.iter().flat_map(Received::events).collect();
    let c: Vec<Value> = c.iter().flat_map(Received::events).collect();
    assert_eq!((d.len(), c.len()), (5, 5));
    // One event, one id, at every endpoint; all ids distinct.
    let ids: Vec<&str> = d.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(
        ids,
        c.iter()
            .map(|e| e["id"].as_str().expect("id"))
            .collect::<Vec<_>>()
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);

    // Distribution: push, push (moved), push (rollback), delete (tag), delete (manifest).
    let url = |d: &str| format!("https://registry.example/v2/team-a/app/manifests/{d}");
    let expect_push = |e: &Value, digest: &str, size: usize| {
        assert_eq!(e["action"], "push", "{e}");
        let t = &e["target"];
        assert_eq!(t["repository"], "team-a/app");
        assert_eq!(t["digest"], digest);
        assert_eq!(t["tag"], "v1");
        assert_eq!(t["mediaType"], OCI_MANIFEST);
        assert_eq!(t["size"], size);
        assert_eq!(t["length"], size);
        assert_eq!(t["url"], url(digest));
        assert_eq!(e["source"]["addr"], "berth.test:5000");
        assert!(e["source"]["instanceID"].is_string());
        assert!(e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    };
    expect_push(&d[0], &first, first_size);
    assert_eq!(d[0]["actor"]["name"], "anonymous");
    assert_eq!(d[0]["request"]["method"], "PUT");
    assert_eq!(d[0]["request"]["addr"], "127.0.0.1");
    expect_push(&d[1], &second, second_size);
    expect_push(&d[2], &first, first_size);
    assert_eq!(d[2]["actor"]["name"], "carol");
    assert_eq!(d[3]["action"], "delete");
    assert_eq!(d[3]["target"]["tag"], "v1");
    assert_eq!(d[3]["target"]["digest"], first.as_str());
    assert_eq!(d[4]["action"], "delete");
    assert_eq!(
        d[4]["target"],
        json!({"digest": second, "repository": "team-a/app"}),
        "a manifest deletion names the digest and the repository only"
    );

    // CloudEvents: the same story in Berth's own types.
    let types: Vec<&str> = c
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "io.berth.manifest.pushed",
            "io.berth.manifest.pushed",
            "io.berth.tag.rolledback",
            "io.berth.tag.deleted",
            "io.berth.manifest.deleted",
        ]
    );
    for e in &c {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "https://registry.example");
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(e["subject"], "team-a/app");
        assert!(e["time"].is_string());
    }
    assert_eq!(c[0]["data"]["tag"], "v1");
    assert_eq!(c[0]["data"]["digest"], first.as_str());
    assert_eq!(c[0]["data"]["size"], first_size);
    assert!(c[0]["data"].get("previousDigest").is_none());
    assert_eq!(c[1]["data"]["previousDigest"], first.as_str(), "a tag move");
    assert_eq!(c[2]["data"]["previousDigest"], second.as_str());
    assert_eq!(c[2]["data"]["digest"], first.as_str());
    assert_eq!(c[3]["data"]["tag"], "v1");
    assert_eq!(c[4]["data"]["digest"], second.as_str());
    assert_eq!(b.metric("berth_jobs_done_total", "webhook:dist").await, 5.0);
}

/// An endpoint that only wants tag moves gets the push that moved a tag and the
/// rollback, not the first push; repository globs and tenants narrow further.
#[tokio::test]
async fn subscriptions_and_repository_globs_select_events() {
    let rx = Receiver::start().await;
    let mut moves = hook(
        "moves",
        rx.url("/moves"),
        Format::Cloudevents,
        &[EventKind::TagMove],
    );
    moves.repositories = vec!["team-a/*".into()];
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![moves],
        ..Setup::default()
    })
    .await;
    b.push("team-a/app", "v1", b"one").await;
    b.push("team-b/app", "v1", b"one").await;
    b.push("team-b/app", "v1", b"two").await;
    let (second, _) = b.push("team-a/app", "v1", b"two").await;
    let got = rx.wait("one tag move", |g| !g.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if got.len() == rx.got().len() {
        got
    } else {
        rx.got()
    };
    assert_eq!(got.len(), 1, "only team-a's move");
    let e = &got[0].events()[0];
    assert_eq!(e["data"]["digest"], second.as_str());
    assert_eq!(e["data"]["repository"], "team-a/app");
}

/// Events of one repository arrive in the order of the changes, though deliveries to
/// several repositories run at once and the receiver answers at uneven speeds.
#[tokio::test]
async fn order_per_repository_is_kept() {
    let rx = Receiver::start().await;
    rx.b.fail_first.store(3, Ordering::SeqCst);
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![hook("o", rx.url("/o"), Format::Cloudevents, ALL)],
        ..Setup::default()
    })
    .await;
    let mut pushed: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..12 {
        for repo in ["team-a/one", "team-a/two", "team-a/three"] {
            let (d, _) = b
                .push(repo, "latest", format!("{repo} {i}").as_bytes())
                .await;
            pushed.entry(repo).or_default().push(d);
        }
        // Uneven answers: some slow, some failing.
        rx.b.delay_ms.store((i % 3) * 15, Ordering::SeqCst);
        if i == 6 {
            rx.b.fail_first.store(2, Ordering::SeqCst);
        }
    }
    let got = rx
        .wait("36 events", |g| {
            let ok: HashSet<String> = g
                .iter()
                .filter(|r| r.header("x-test-path") == "/o")
                .flat_map(Received::events)
                .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            ok.len() == 36
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = got;
    // What the receiver accepted (a 500 is not a delivery): requests in arrival order,
    // less those answered 500, are found by taking each event's last arrival.
    let mut last: HashMap<String, (usize, Value)> = HashMap::new();
    for (i, r) in rx.got().iter().enumerate() {
        for e in r.events() {
            last.insert(e["id"].as_str().expect("id").to_owned(), (i, e));
        }
    }
    let mut seen: Vec<(usize, Value)> = last.into_values().collect();
    seen.sort_by_key(|(i, _)| *i);
    for (repo, digests) in &pushed {
        let order: Vec<String> = seen
            .iter()
            .filter(|(_, e)| e["data"]["repository"] == *repo)
            .map(|(_, e)| e["data"]["digest"].as_str().expect("digest").to_owned())
            .collect();
        assert_eq!(&order, digests, "{repo}: events in push order");
    }
}

/// 500s, then the receiver gone for a while: every event arrives once it is back, with
/// the id it had; the failed attempts are counted.
#[tokio::test]
async fn retries_after_500s_and_while_the_receiver_is_down() {
    let mut rx = Receiver::start().await;
    rx.b.fail_first.store(3, Ordering::SeqCst);
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![hook("r", rx.url("/r"), Format::Distribution, ALL)],
        ..Setup::default()
    })
    .await;
    let (first, _) = b.push("team-a/app", "v1", b"first").await;
    let got = rx
        .wait("a delivery after three 500s", |g| g.len() >= 4)
        .await;
    let ids: HashSet<String> = got
        .iter()
        .flat_map(Received::events)
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same event");
    assert_eq!(got[3].events()[0]["target"]["digest"], first.as_str());
    assert!(b.metric("berth_jobs_failed_total", "webhook:r").await >= 3.0);

    // Down: nothing listens on its port.
    rx.stop();
    let before = rx.got().len();
    let mut pushed = Vec::new();
    for i in 0..3 {
        pushed.push(
            b.push(
                "team-a/app",
                &format!("t{i}"),
                format!("down {i}").as_bytes(),
            )
            .await
            .0,
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = b
        .registry
        .meta()
        .jobs(&JobQuery {
            state: Some(JobState::Pending),
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .expect("jobs");
    assert_eq!(waiting.len(), 3, "all three wait in the queue");
    assert!(waiting.iter().any(|j| j.attempts > 0), "and were tried");
    rx.resume().await;
    let got = rx
        .wait("the three events after the receiver came back", |g| {
            g[before..]
                .iter()
                .flat_map(Received::events)
                .map(|e| {
                    e["target"]["digest"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect::<HashSet<_>>()
                .len()
                == 3
        })
        .await;
    let digests: Vec<String> = got[before..]
        .iter()
        .flat_map(Received::events)
        .map(|e| e["target"]["digest"].as_str().expect("digest").to_owned())
        .collect();
    assert_eq!(digests, pushed, "in push order (one repository)");
}

/// A receiver that takes seconds per answer does not slow pushes: they are done long
/// before the first delivery is.
#[tokio::test]
async fn a_slow_receiver_does_not_slow_pushes() {
    let rx = Receiver::start().await;
    rx.b.delay_ms.store(3000, Ordering::SeqCst);
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![hook("slow", rx.url("/slow"), Format::Distribution, ALL)],
        ..Setup::default()
    })
    .await;
    let start = Instant::now();
    for i in 0..10 {
        b.push(
            "team-a/app",
            &format!("v{i}"),
            format!("slow {i}").as_bytes(),
        )
        .await;
    }
    let pushes = start.elapsed();
    // Ten deliveries to one repository take 30 s one after another; pushes waiting for
    // them would take as long.
    assert!(pushes < Duration::from_secs(10), "pushes took {pushes:?}");
    let got = rx.wait("the first delivery", |g| !g.is_empty()).await;
    assert!(got[0].at.duration_since(start) >= Duration::from_secs(3));
}

/// Pulls are events only for endpoints that want them, and come in batches: many pulls,
/// few requests.
#[tokio::test]
async fn pull_events_are_batched() {
    let rx = Receiver::start().await;
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![
            hook(
                "pulls",
                rx.url("/pulls"),
                Format::Distribution,
                &[EventKind::Pull],
            ),
            hook(
                "ce-pulls",
                rx.url("/ce-pulls"),
                Format::Cloudevents,
                &[EventKind::Pull],
            ),
        ],
        ..Setup::default()
    })
    .await;
    let (digest, _) = b.push("team-a/app", "v1", b"pulled").await;
    let pulls = 300;
    let mut gets = Vec::new();
    for i in 0..pulls {
        let reference = if i % 2 == 0 {
            "v1".to_owned()
        } else {
            digest.clone()
        };
        gets.push(
            b.req(
                Method::GET,
                &format!("/v2/team-a/app/manifests/{reference}"),
            )
            .header("accept", OCI_MANIFEST)
            .send(),
        );
    }
    for r in futures_util::future::join_all(gets).await {
        assert_eq!(r.expect("get").status(), StatusCode::OK);
    }
    let count = |g: &[Received], path: &str| {
        g.iter()
            .filter(|r| r.header("x-test-path") == path)
            .map(|r| r.events().len())
            .sum::<usize>()
    };
    let got = rx
        .wait("every pull at both endpoints", |g| {
            count(g, "/pulls") == pulls && count(g, "/ce-pulls") == pulls
        })
        .await;
    let requests = got
        .iter()
        .filter(|r| r.header("x-test-path") == "/pulls")
        .count();
    assert!(requests <= 30, "{pulls} pulls came in {requests} requests");
    let events: Vec<Value> = got
        .iter()
        .filter(|r| r.header("x-test-path") == "/pulls")
        .flat_map(Received::events)
        .collect();
    assert!(events.iter().all(|e| e["action"] == "pull"
        && e["target"]["digest"] == digest.as_str()
        && e["target"]["repository"] == "team-a/app"));
    assert_eq!(
        events.iter().filter(|e| e["target"]["tag"] == "v1").count(),
        pulls / 2
    );
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), pulls, "every pull its own event");
    assert!(events.iter().all(|e| e["actor"]["name"] == "anonymous"
        && e["request"]["addr"] == "127.0.0.1"
        && e["request"]["method"] == "GET"
        && e["target"]["mediaType"] == OCI_MANIFEST));
    let batch = got
        .iter()
        .find(|r| r.header("x-test-path") == "/ce-pulls" && r.events().len() > 1)
        .expect("a CloudEvents batch");
    assert!(
        batch
            .header("content-type")
            .starts_with("application/cloudevents-batch+json")
    );
    assert!(
        batch
            .events()
            .iter()
            .all(|e| e["type"] == "io.berth.manifest.pulled")
    );
}

/// Without a pull subscription a pull writes nothing.
#[tokio::test]
async fn pulls_cost_nothing_without_a_subscriber() {
    let rx = Receiver::start().await;
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![hook(
            "pushes",
            rx.url("/p"),
            Format::Distribution,
            &[EventKind::Push],
        )],
        ..Setup::default()
    })
    .await;
    b.push("team-a/app", "v1", b"x").await;
    rx.wait("the push", |g| g.len() == 1).await;
    assert!(!b.registry.wants_pull_events());
    for _ in 0..20 {
        let r = b
            .req(Method::GET, "/v2/team-a/app/manifests/v1")
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let all = b
        .registry
        .meta()
        .jobs(&JobQuery {
            limit: 100,
            ..JobQuery::default()
        })
        .await
        .expect("jobs");
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(rx.got().len(), 1);
}

async fn owner_setup(b: &Berth) {
    let access = b.access.as_ref().expect("auth");
    let me = cli_identity();
    access
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    access
        .create_user(&me, None, "olivia", PASSWORD, false)
        .await
        .expect("owner");
    for t in ["team-a", "team-b"] {
        access
            .create_tenant(&me, None, t, false)
            .await
            .expect("tenant");
    }
    access
        .set_member(&me, None, "team-a", "olivia", Some("owner"))
        .await
        .expect("owner");
}

fn as_owner(b: &Berth, method: Method, path: &str) -> reqwest::RequestBuilder {
    b.http
        .request(method, format!("{}{path}", b.base))
        .basic_auth("olivia", Some(PASSWORD))
}

/// A tenant owner cannot point a webhook at internal addresses: literal ones are refused
/// when the webhook is saved, names that resolve to them when Berth would connect.
#[tokio::test]
async fn the_allowlist_refuses_internal_addresses() {
    let rx = Receiver::start().await;
    let (b, _dir) = sqlite_berth(Setup {
        auth: true,
        ..Setup::default()
    })
    .await;
    owner_setup(&b).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        rx.url("/hook"),
        format!("http://[::ffff:127.0.0.1]:{}/", rx.addr.port()),
        "http://10.0.0.1/".to_owned(),
    ] {
        let r = as_owner(&b, Method::PUT, "/api/v1/tenants/team-a/webhooks/ci")
            .json(&json!({"url": url}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{url}");
        let body: Value = r.json().await.expect("json");
        assert!(
            body.to_string().contains("allow_networks"),
            "the refusal says how to allow it: {body}"
        );
    }
    // Another tenant's webhooks are not the owner's to set.
    let r = as_owner(&b, Method::PUT, "/api/v1/webhooks/global")
        .json(&json!({"url": "https://hooks.example/"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A name is accepted, and judged by what it resolves to when called: localhost is
    // loopback, so the delivery is refused and the job is dead at once.
    let r = as_owner(&b, Method::PUT, "/api/v1/tenants/team-a/webhooks/ci")
        .json(&json!({"url": format!("http://localhost:{}/hook", rx.addr.port())}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    b.push("team-a/app", "v1", b"to localhost").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let r = as_owner(&b, Method::GET, "/api/v1/tenants/team-a/events?state=dead")
            .send()
            .await
            .expect("list");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        if v["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no dead job: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = dead["jobs"][0]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(rx.got().is_empty(), "nothing reached the receiver");
    let metrics = b
        .http
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("berth_webhook_address_refused_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_webhooks_refused_total 4"),
        "{metrics}"
    );
}

/// With loopback allowed by the admin, an owner's webhook works end to end through the
/// API: set, listed without its secret, delivered, dead after its attempts, listed as
/// dead, redelivered, deleted.
#[tokio::test]
async fn owners_manage_their_webhooks_and_redeliver_dead_events() {
    let rx = Receiver::start().await;
    rx.b.status.store(503, Ordering::SeqCst);
    let (b, _dir) = sqlite_berth(Setup {
        auth: true,
        allow_networks: vec!["127.0.0.0/8"],
        jobs: JobSettings {
            max_attempts: 2,
            ..fast_jobs()
        },
        ..Setup::default()
    })
    .await;
    owner_setup(&b).await;
    let r = as_owner(&b, Method::PUT, "/api/v1/tenants/team-a/webhooks/ci")
        .json(&json!({
            "url": rx.url("/ci"),
            "events": ["push", "delete"],
            "secret": "s3cret",
            "format": "cloudevents",
            "repositories": ["*"],
        }))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let list: Value = as_owner(&b, Method::GET, "/api/v1/tenants/team-a/webhooks")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let w = &list["webhooks"][0];
    assert_eq!(w["name"], "ci");
    assert_eq!(w["signed"], true);
    assert!(
        !list.to_string().contains("s3cret"),
        "never the secret: {list}"
    );
    assert_eq!(w["queue"], "webhook:team-a/ci");

    // Another tenant's push never reaches a tenant's webhook, whatever its globs say.
    b.push("team-b/app", "v1", b"not theirs").await;
    let (digest, _) = b.push("team-a/app", "v1", b"dead then alive").await;
    rx.wait("two attempts", |g| g.len() >= 2).await;
    let dead = loop {
        let v: Value = as_owner(&b, Method::GET, "/api/v1/tenants/team-a/events?state=dead")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if v["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let job = &dead["jobs"][0];
    assert_eq!(job["state"], "dead");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["lane"], "team-a/app");
    assert!(
        job["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("503")
    );
    let id = job["id"].as_i64().expect("id");
    assert_eq!(
        b.metric("berth_jobs_dead_total", "webhook:team-a/ci").await,
        1.0
    );

    // Others' jobs: an owner sees none of the global list, and no one else's job.
    let r = as_owner(&b, Method::GET, "/api/v1/events")
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    rx.b.status.store(0, Ordering::SeqCst);
    let r = as_owner(
        &b,
        Method::POST,
        &format!("/api/v1/tenants/team-a/events/{id}/redeliver"),
    )
    .send()
    .await
    .expect("redeliver");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let got = rx.wait("the redelivered event", |g| g.len() >= 3).await;
    assert!(
        got.iter()
            .flat_map(Received::events)
            .all(|e| e["data"]["repository"] == "team-a/app"),
        "only the tenant's own repositories"
    );
    let last = got.last().expect("a request");
    verify("s3cret", last);
    assert_eq!(last.events()[0]["data"]["digest"], digest.as_str());
    assert_eq!(
        last.events()[0]["id"],
        got[0].events()[0]["id"],
        "the same event, as consumers deduplicate by id"
    );
    let r = b
        .req(Method::GET, "/api/v1/events?state=dead")
        .send()
        .await
        .expect("list");
    let v: Value = r.json().await.expect("json");
    assert!(v["jobs"].as_array().is_some_and(Vec::is_empty), "{v}");

    let r = as_owner(&b, Method::DELETE, "/api/v1/tenants/team-a/webhooks/ci")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    b.push("team-a/app", "v2", b"after the webhook went").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got().len(), 3);
}

/// Two replicas over one PostgreSQL database, each with the same webhook: every event
/// is delivered once, whichever replica took the push.
#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    let rx = Receiver::start().await;
    let st = common::stores_on(true, false).await;
    let hooks = vec![
        hook("a", rx.url("/a"), Format::Distribution, ALL),
        hook("b", rx.url("/b"), Format::Cloudevents, ALL),
    ];
    let one = berth(
        st.meta.clone(),
        st.blobs.clone(),
        Setup {
            webhooks: hooks.clone(),
            ..Setup::default()
        },
    )
    .await;
    let two = berth(
        st.meta.clone(),
        st.blobs.clone(),
        Setup {
            webhooks: hooks,
            ..Setup::default()
        },
    )
    .await;
    let n = 20;
    for i in 0..n {
        let b = if i % 2 == 0 { &one } else { &two };
        b.push(
            &format!("team-a/r{}", i % 4),
            "v1",
            format!("replicas {i}").as_bytes(),
        )
        .await;
    }
    let count = |g: &[Received], path: &str| -> usize {
        g.iter().filter(|r| r.header("x-test-path") == path).count()
    };
    rx.wait("every event at both endpoints", |g| {
        count(g, "/a") >= n && count(g, "/b") >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = rx.got();
    for path in ["/a", "/b"] {
        let ids: Vec<String> = got
            .iter()
            .filter(|r| r.header("x-test-path") == path)
            .flat_map(Received::events)
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(ids.len(), n, "{path}: {n} deliveries, none twice");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n);
    }
    let total = one.metric("berth_jobs_done_total", "webhook:a").await
        + two.metric("berth_jobs_done_total", "webhook:a").await;
    assert_eq!(total, n as f64);
}

/// A replica that died holding an endpoint's queue passes it on when its lease runs out:
/// until then nobody else calls the endpoint, then this replica does.
#[tokio::test]
async fn a_dead_replicas_queue_passes_on_when_its_lease_expires() {
    let rx = Receiver::start().await;
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![hook("l", rx.url("/l"), Format::Distribution, ALL)],
        ..Setup::default()
    })
    .await;
    let until = berth_meta::now_micros() + 3_000_000;
    assert!(
        b.registry
            .meta()
            .take_queue("webhook:l", "a-replica-that-died", until)
            .await
            .expect("lease")
    );
    let start = Instant::now();
    b.push("team-a/app", "v1", b"leased elsewhere").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rx.got().is_empty(),
        "the queue is another replica's for now"
    );
    let got = rx
        .wait("the event after the lease ran out", |g| !g.is_empty())
        .await;
    assert!(got[0].at.duration_since(start) >= Duration::from_secs(2));
}

/// One endpoint down does not hold up another: the healthy one gets every event while
/// the other's queue rests.
#[tokio::test]
async fn a_failing_endpoint_delays_only_itself() {
    let rx = Receiver::start().await;
    let down = format!("http://127.0.0.1:{}/down", common_free_port());
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![
            hook("down", down, Format::Distribution, ALL),
            hook("up", rx.url("/up"), Format::Distribution, ALL),
        ],
        ..Setup::default()
    })
    .await;
    for i in 0..5 {
        b.push(&format!("team-a/r{i}"), "v1", format!("x{i}").as_bytes())
            .await;
    }
    rx.wait("five events at the healthy endpoint", |g| g.len() == 5)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.metric("berth_jobs_failed_total", "webhook:down").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the down endpoint was never tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.metric("berth_jobs_done_total", "webhook:down").await, 0.0);
}

/// A loopback port nobody listens on.
fn common_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Admins set global webhooks through the API; the configuration's stay the
/// configuration's.
#[tokio::test]
async fn admins_set_global_webhooks() {
    let rx = Receiver::start().await;
    let (b, _dir) = sqlite_berth(Setup {
        auth: true,
        allow_networks: vec!["127.0.0.1/32"],
        webhooks: vec![hook(
            "from-config",
            rx.url("/config"),
            Format::Distribution,
            ALL,
        )],
        ..Setup::default()
    })
    .await;
    owner_setup(&b).await;
    let r = b
        .req(Method::PUT, "/api/v1/webhooks/from-config")
        .json(&json!({"url": rx.url("/other")}))
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "set in the configuration file"
    );
    let r = b
        .req(Method::PUT, "/api/v1/webhooks/audit")
        .json(&json!({"url": rx.url("/audit"), "events": ["delete"], "timeout_secs": 0}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a zero timeout");
    let r = b
        .req(Method::PUT, "/api/v1/webhooks/audit")
        .json(&json!({"url": rx.url("/audit"), "events": ["delete"]}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let list: Value = b
        .req(Method::GET, "/api/v1/webhooks")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let names: Vec<(&str, bool)> = list["webhooks"]
        .as_array()
        .expect("list")
        .iter()
        .map(|w| (w["name"].as_str().expect("name"), w["from_config"] == true))
        .collect();
    assert_eq!(names, [("from-config", true), ("audit", false)]);
    let (digest, _) = b.push("team-a/app", "v1", b"deleted soon").await;
    let r = b
        .req(
            Method::DELETE,
            &format!("/v2/team-a/app/manifests/{digest}"),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = rx
        .wait("the deletion at /audit", |g| {
            g.iter().any(|r| r.header("x-test-path") == "/audit")
        })
        .await;
    let at_audit: Vec<Value> = got
        .iter()
        .filter(|r| r.header("x-test-path") == "/audit")
        .flat_map(Received::events)
        .collect();
    assert_eq!(at_audit.len(), 1, "deletions only");
    assert_eq!(at_audit[0]["action"], "delete");
    let r = b
        .req(Method::DELETE, "/api/v1/webhooks/audit")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = b
        .req(Method::DELETE, "/api/v1/webhooks/audit")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Pushes `body` (an OCI manifest) as `repo:reference`, with extra `?tag=`s; its digest.
async fn put_manifest(
    b: &Berth,
    repo: &str,
    reference: &str,
    extra: &[&str],
    body: &Value,
) -> String {
    let bytes = serde_json::to_vec(body).expect("json");
    let query: String = extra.iter().map(|t| format!("&tag={t}")).collect();
    let query = query.replacen('&', "?", 1);
    let r = b
        .req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}{query}"),
        )
        .header("content-type", OCI_MANIFEST)
        .body(bytes.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    sha256(&bytes)
}

/// A manifest over an empty config and one layer of `layer_type` (pushed), with a subject.
async fn artifact(
    b: &Berth,
    repo: &str,
    layer_type: &str,
    seed: &str,
    subject: Option<&str>,
) -> Value {
    let config = b"{}";
    let c = b.push_blob(repo, config).await;
    let layer = format!("{{\"seed\":\"{seed}\"}}");
    let l = b.push_blob(repo, layer.as_bytes()).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": l, "size": layer.len(),
            "annotations": {"dev.cosignproject.cosign/signature": "c2lnbmF0dXJl"}}],
    });
    if let Some(s) = subject {
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": s, "size": 1});
    }
    m
}

/// The two event kinds of the signature layer, against a real receiver in both formats: a
/// signature or attestation pushed for an image is told once per push with the image's
/// digest (cosign's `.sig` tag or an OCI 1.1 `subject`), never for an image under a
/// signature tag nor for a referrer that is not a signature; a pull an enforcing rule
/// refuses is told at once, then withheld for that (repository, digest, rule) on this
/// replica (counted), while another manifest's refusal is told. Neither is in the default
/// subscription.
#[tokio::test]
async fn signatures_added_and_policy_refusals_are_told() {
    const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
    let rx = Receiver::start().await;
    let kinds = &[EventKind::Signature, EventKind::PolicyRefusal];
    let (b, _dir) = sqlite_berth(Setup {
        webhooks: vec![
            hook("dist", rx.url("/dist"), Format::Distribution, kinds),
            hook("ce", rx.url("/ce"), Format::Cloudevents, kinds),
            hook("plain", rx.url("/plain"), Format::Distribution, ALL),
        ],
        public_url: Some("https://registry.example".into()),
        ..Setup::default()
    })
    .await;
    let k = common::key();
    b.registry.set_policy(common::signature_policy(
        &[&k],
        berth_registry::policy::Mode::Enforce,
    ));

    let (img, _) = b.push("prod/app", "v1", b"the image").await;
    let sig_tag = format!("sha256-{}.sig", &img[7..]);
    // Not signatures: a runnable image under the signature tag of another image, and an
    // image naming `img` as its subject.
    let (other, _) = b.push("prod/app", "v2", b"another image").await;
    let fake = format!("sha256-{}.sig", &other[7..]);
    b.push("prod/app", &fake, b"runnable, whatever its tag")
        .await;
    let referrer = artifact(
        &b,
        "prod/app",
        "application/vnd.oci.image.layer.v1.tar",
        "r",
        Some(&img),
    )
    .await;
    put_manifest(&b, "prod/app", "referrer", &[], &referrer).await;
    // A cosign signature under its tag and one more (`?tag=`): one event.
    let sig = artifact(&b, "prod/app", common::SIMPLE_SIGNING, "s", None).await;
    let sig = put_manifest(&b, "prod/app", &sig_tag, &["sig-copy"], &sig).await;
    // An attestation by digest with a subject (OCI 1.1 referrers).
    let att = artifact(&b, "prod/app", DSSE, "a", Some(&img)).await;
    let att_digest = sha256(&serde_json::to_vec(&att).expect("json"));
    let att = put_manifest(&b, "prod/app", &att_digest, &[], &att).await;

    // Refused pulls: the signature is not a valid one, so `img` is unsigned.
    for method in [Method::GET, Method::GET, Method::HEAD, Method::GET] {
        let r = b
            .req(method, "/v2/prod/app/manifests/v1")
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let r = b
        .req(Method::GET, &format!("/v2/prod/app/manifests/{other}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let events =
        |path: &str| -> Vec<Value> { rx.on(path).iter().flat_map(Received::events).collect() };
    rx.wait("two signatures and two refusals at both endpoints", |_| {
        events("/dist").len() >= 4 && events("/ce").len() >= 4
    })
    .await;
    // Whatever else was to come has come: pushes are told in their transaction, refusals
    // at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = events("/dist");
    let c = events("/ce");
    assert_eq!((d.len(), c.len()), (4, 4), "{d:?}");

    // Distribution: a push whose target is the image, typed as the signature, the
    // signature manifest in `references`.
    let url = format!("https://registry.example/v2/prod/app/manifests/{img}");
    for (e, media_type, signature) in [(&d[0], common::SIMPLE_SIGNING, &sig), (&d[1], DSSE, &att)] {
        assert_eq!(e["action"], "push", "{e}");
        assert_eq!(e["request"]["method"], "PUT");
        let t = &e["target"];
        assert_eq!(t["digest"], img.as_str(), "{e}");
        assert_eq!(t["repository"], "prod/app");
        assert_eq!(t["mediaType"], media_type);
        assert_eq!(t["url"], url.as_str());
        assert_eq!(t["references"][0]["digest"], signature.as_str(), "{e}");
        assert_eq!(t["references"][0]["mediaType"], OCI_MANIFEST);
        assert!(t["references"][0]["size"].as_u64().is_some_and(|n| n > 0));
        assert!(t.get("tag").is_none(), "{e}");
    }
    // Refusals: a Berth action, one per (repository, digest, rule) here, first at once.
    let refusal = |e: &Value, digest: &str, tag: Option<&str>| {
        assert_eq!(e["action"], "berth.policy.refused", "{e}");
        assert_eq!(e["request"]["method"], "GET");
        assert_eq!(e["request"]["addr"], "127.0.0.1");
        assert_eq!(e["target"]["digest"], digest);
        assert_eq!(e["target"]["mediaType"], OCI_MANIFEST);
        assert_eq!(e["target"]["tag"].as_str(), tag);
        assert_eq!(e["policy"]["rule"], "signed-prod");
        assert_eq!(e["policy"]["count"], 1);
        assert!(
            e["policy"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    };
    // The two refusals are queued off their requests: either may come first.
    let (first, second) = if d[2]["target"]["digest"] == img.as_str() {
        (&d[2], &d[3])
    } else {
        (&d[3], &d[2])
    };
    refusal(first, &img, Some("v1"));
    refusal(second, &other, None);

    // CloudEvents: their own types, the same ids.
    let types: Vec<&str> = c
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "io.berth.signature.added",
            "io.berth.signature.added",
            "io.berth.policy.refused",
            "io.berth.policy.refused"
        ]
    );
    for (x, y) in d.iter().zip(&c) {
        assert_eq!(x["id"], y["id"]);
    }
    assert_eq!(c[0]["data"]["digest"], img.as_str());
    assert_eq!(c[0]["data"]["signature"]["digest"], sig.as_str());
    assert_eq!(c[0]["data"]["signature"]["kind"], "cosign_signature");
    assert_eq!(c[1]["data"]["signature"]["kind"], "attestation");
    assert_eq!(c[1]["data"]["mediaType"], DSSE);
    let refused_v1 = c
        .iter()
        .find(|e| e["data"]["tag"] == "v1")
        .expect("the refusal of v1");
    assert_eq!(refused_v1["data"]["policy"]["rule"], "signed-prod");
    assert_eq!(refused_v1["data"]["digest"], img.as_str());

    // The default subscription sees the pushes only (6 manifests, the ?tag= one twice).
    let plain = events("/plain");
    assert!(plain.iter().all(|e| e["action"] == "push"), "{plain:?}");
    assert!(
        plain
            .iter()
            .all(|e| e["target"].get("references").is_none()),
        "{plain:?}"
    );
    assert_eq!(plain.len(), 7, "{plain:?}");
    let withheld: u64 = common::metric(
        &common::metrics_at(&b.http, &b.base).await,
        "berth_policy_refusal_events_withheld_total",
    );
    assert_eq!(withheld, 3);
}

/// Every file under a data directory (the SQLite database, its WAL, blobs).
fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
    out
}

/// With encryption on, a webhook secret set through the API is stored sealed: no file under
/// the data directory (the database and its WAL) holds it, the webhook still signs with it,
/// `berth keys rewrap` moves it to a rotated key, and a keyring without the key cannot use
/// it. Without encryption the same secret is found in the files (what the test looks for
/// is there to find).
#[tokio::test]
async fn webhook_secrets_are_sealed_with_encryption_on() {
    for encrypted in [false, true] {
        let ring = std::sync::Arc::new(
            berth_storage::seal::Keyring::new(
                vec![("k1".into(), [0x61; 32]), ("k2".into(), [0x62; 32])],
                "k1",
            )
            .expect("keyring"),
        );
        let mut rx = Receiver::start().await;
        let (b, dir) = sqlite_berth(Setup {
            auth: true,
            allow_networks: vec!["127.0.0.1/32"],
            encryption: encrypted.then(|| std::sync::Arc::clone(&ring)),
            ..Setup::default()
        })
        .await;
        owner_setup(&b).await;
        let secret = format!("WEBHOOK-SECRET-MARKER-{}", berth_testkit::unique());
        let r = b
            .req(Method::PUT, "/api/v1/webhooks/sealed")
            .json(&json!({"url": rx.url("/sealed"), "events": ["push"], "secret": secret}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = b
            .req(Method::PUT, "/api/v1/webhooks/sneaky")
            .json(&json!({"url": rx.url("/x"), "events": ["push"], "secret": "sealed:v1:k1:AAAA"}))
            .send()
            .await
            .expect("put");
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "the sealed form is reserved"
        );
        b.push("team-a/app", "v1", b"signed delivery").await;
        let got = rx
            .wait("a signed push", |g| {
                g.iter().any(|r| r.header("x-test-path") == "/sealed")
            })
            .await;
        let delivery = got
            .iter()
            .find(|r| r.header("x-test-path") == "/sealed")
            .expect("delivery");
        verify(&secret, delivery);
        // Everything written is on disk (the WAL included).
        let leaked: Vec<String> = files_under(dir.path())
            .into_iter()
            .filter(|(_, bytes)| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
            .map(|(p, _)| p)
            .collect();
        if !encrypted {
            assert!(
                !leaked.is_empty(),
                "without encryption the secret is stored as it is"
            );
            rx.stop();
            continue;
        }
        assert!(leaked.is_empty(), "the webhook secret is in {leaked:?}");
        let uses = b.registry.key_uses().await.expect("uses");
        assert!(
            uses.iter().any(|u| u.key_id == "k1" && u.secrets == 1),
            "{uses:?}"
        );
        // Rotation: rewrap moves the secret to k2, after which k1 can go.
        ring.set_active("k2").expect("k2");
        b.registry
            .rewrap_keys(&mut |_, _| {})
            .await
            .expect("rewrap");
        let uses = b.registry.key_uses().await.expect("uses");
        assert!(
            uses.iter().any(|u| u.key_id == "k2" && u.secrets == 1),
            "{uses:?}"
        );
        assert!(
            !uses.iter().any(|u| u.key_id == "k1" && u.secrets > 0),
            "{uses:?}"
        );
        b.registry.reload_webhooks().await.expect("reload");
        let only_k1 = std::sync::Arc::new(
            berth_storage::seal::Keyring::new(vec![("k1".into(), [0x61; 32])], "k1")
                .expect("keyring"),
        );
        let without = b.registry.clone().with_encryption(Some(only_k1));
        let problems = without
            .check_keyring(without.encryption().map(|k| &**k))
            .await
            .expect("check");
        assert!(
            problems.iter().any(|p| p.to_string().contains("k2")),
            "a keyring without k2 is refused: {problems:?}"
        );
        rx.stop();
    }
}
