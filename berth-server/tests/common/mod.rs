//! What the in-process server tests share: stores on the backends a test names, a server
//! on 127.0.0.1:0 over them, clients for it, and the small things every test file needs
//! (digests, OCI error bodies, metrics samples, users and tenants).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_meta::MetaStore;
use berth_registry::access::{Access, AccessConfig, cli_identity};
use berth_registry::policy::{
    CosignKeySpec, Mode, Pending, Policy, PolicySpec, RuleSpec, TrustSpec,
};
use berth_registry::replicate::ReplicaRule;
use berth_registry::{Registry, RegistryConfig, UpstreamSettings};
use berth_server::{AppState, AuthSettings, ChallengeKind, ServerConfig};
use berth_storage::{BlobStore, FsStore};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Every test user's password.
pub const PASSWORD: &str = "correct horse battery";

pub use berth_testkit::sha256;

/// An image manifest over a config and one layer, given by digest and size.
pub fn image_manifest(config: (&str, usize), layer: (&str, usize)) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    })
}

/// The status of an OCI error response and its first error's code and message.
pub async fn error_of(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let field = |f: &str| v["errors"][0][f].as_str().unwrap_or_default().to_owned();
    (status, field("code"), field("message"))
}

/// The status of an OCI error response and its first error's code.
pub async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let (status, code, _) = error_of(r).await;
    (status, code)
}

/// The value of one sample (`name{labels}`) in a metrics exposition, as a count or a
/// float; 0 when absent.
pub fn metric<T: std::str::FromStr + Default>(text: &str, sample: &str) -> T {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_default()
}

/// The metrics exposition of the server at `base`.
pub async fn metrics_at(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// A client whose connections come from `ip` (every 127.0.0.0/8 address is this host's),
/// so the server sees it as a client of its own.
pub fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// How a test caller authenticates.
#[derive(Clone, Debug)]
pub enum Cred {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl Cred {
    /// A test user, with the test password.
    pub fn user(name: &str) -> Cred {
        Cred::Basic(name.into(), PASSWORD.into())
    }

    pub fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Cred::Anonymous => r,
            Cred::Basic(u, p) => r.basic_auth(u, Some(p)),
            Cred::Bearer(t) => r.bearer_auth(t),
        }
    }
}

/// Creates users (with the test password; `true`: an administrator), as the CLI would.
pub async fn add_users(access: &Access, users: &[(&str, bool)]) {
    for (name, admin) in users {
        access
            .create_user(&cli_identity(), None, name, PASSWORD, *admin)
            .await
            .unwrap_or_else(|e| panic!("user {name}: {e}"));
    }
}

/// Creates a tenant and gives it members (user, role), as the CLI would.
pub async fn add_tenant(access: &Access, tenant: &str, public: bool, members: &[(&str, &str)]) {
    let me = cli_identity();
    access
        .create_tenant(&me, None, tenant, public)
        .await
        .unwrap_or_else(|e| panic!("tenant {tenant}: {e}"));
    for (user, role) in members {
        access
            .set_member(&me, None, tenant, user, Some(role))
            .await
            .unwrap_or_else(|e| panic!("member {user} of {tenant}: {e}"));
    }
}

/// Blob and metadata stores in a directory of their own.
#[derive(Clone)]
pub struct Stores {
    pub dir: Arc<tempfile::TempDir>,
    pub blobs: BlobStore,
    pub meta: MetaStore,
}

/// A running server: its base URL, a client, and the sender whose drop stops it.
pub struct Running {
    pub base: String,
    pub http: reqwest::Client,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `state` on a free loopback port until the returned `stop` is dropped.
pub async fn serve(state: AppState) -> Running {
    // reqwest is built with rustls and no provider (the workspace uses ring): any client,
    // even a plain-HTTP one, needs it installed first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(berth_server::run(listener, state, async move {
        let _ = stopped.await;
    }));
    Running {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        stop,
        task,
    }
}

/// What a test server is made of; `Setup::default()` is an open registry with the default
/// rules on the filesystem and SQLite.
#[derive(Default)]
pub struct Setup {
    pub registry: RegistryConfig,
    pub server: ServerConfig,
    /// Authentication on, with these settings and this kind of challenge.
    pub auth: Option<(AccessConfig, ChallengeKind)>,
    pub upstreams: Vec<UpstreamSettings>,
    pub replicas: Vec<ReplicaRule>,
    /// PostgreSQL (`BERTH_TEST_POSTGRES_URL`) instead of SQLite.
    pub postgres: bool,
    /// S3 (`BERTH_TEST_S3_URL`) instead of the filesystem.
    pub s3: bool,
    /// Start on a stopped server's directory (the filesystem and SQLite) again.
    pub dir: Option<Arc<tempfile::TempDir>>,
    /// Start another replica over a running server's stores ([`TestServer::stores`]).
    pub stores: Option<Stores>,
    /// The CA the test client trusts: the server speaks TLS (`server.tls`).
    pub client_ca: Option<PathBuf>,
    /// Catalog every image (the `catalog` job kind).
    pub catalog: Option<berth_registry::catalog::CatalogSettings>,
    /// Encryption at rest with this keyring.
    pub encryption: Option<Arc<berth_storage::seal::Keyring>>,
    /// Node-local sharing with these settings.
    pub p2p: Option<berth_registry::p2p::P2pSettings>,
    /// What the operations page's dry runs use (defaults otherwise).
    pub maintenance: Option<berth_registry::maintenance::MaintenanceSettings>,
}

/// A server started for a test, and what the test reaches behind it. Dropping it stops
/// the server.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub registry: Registry,
    pub meta: MetaStore,
    pub blobs: BlobStore,
    pub access: Option<Access>,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub async fn start(setup: Setup) -> TestServer {
    let st = match (setup.stores, setup.dir) {
        (Some(st), _) => st,
        (None, Some(dir)) => stores_in(dir, false, false).await,
        (None, None) => stores_on(setup.postgres, setup.s3).await,
    };
    let registry = Registry::new(st.blobs.clone(), st.meta.clone(), setup.registry)
        .with_upstreams(setup.upstreams)
        .expect("upstreams")
        .with_replication(setup.replicas)
        .with_encryption(setup.encryption.clone());
    let sharing = setup.p2p.is_some();
    // As `berth serve` does: keys the settings leave unset are shared through the store.
    let p2p = match setup.p2p {
        Some(s) => Some(Arc::new(
            berth_registry::p2p::P2p::open(s, &st.meta, setup.encryption.as_deref())
                .await
                .expect("p2p settings"),
        )),
        None => None,
    };
    let registry = registry.with_p2p(p2p);
    if sharing {
        // As under `berth serve`: agents' grants requests hear of pulls other replicas
        // record.
        registry.follow_other_replicas().await.expect("listen");
    }
    let registry = match setup.catalog {
        Some(c) => registry.with_catalog(c),
        None => registry,
    };
    let registry = match setup.maintenance {
        Some(m) => registry.with_maintenance(m),
        None => registry,
    };
    // Replication runs on the job queue's workers, as under `berth serve`.
    let _workers = registry.start_jobs();
    let (access, challenge) = match setup.auth {
        Some((config, challenge)) => (
            Some(
                Access::new(st.meta.clone(), config, None)
                    .await
                    .expect("access"),
            ),
            challenge,
        ),
        None => (None, ChallengeKind::Bearer),
    };
    let state = AppState::with_auth(
        registry.clone(),
        setup.server,
        access
            .clone()
            .map(|access| AuthSettings { access, challenge }),
    );
    let run = serve(state.clone()).await;
    let (base, http) = match &setup.client_ca {
        None => (run.base, run.http),
        Some(ca) => {
            let pem = std::fs::read(ca).expect("CA file");
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA")])
                .build()
                .expect("client");
            (run.base.replacen("http://", "https://", 1), http)
        }
    };
    TestServer {
        base,
        http,
        state,
        registry,
        meta: st.meta,
        blobs: st.blobs,
        access,
        dir: st.dir,
        stop: Some(run.stop),
        task: Some(run.task),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's access control (a test that started it with `auth`).
    pub fn access(&self) -> &Access {
        self.access.as_ref().expect("authentication is on")
    }

    /// A request as `cred`.
    pub fn request_as(&self, method: Method, path: &str, cred: &Cred) -> reqwest::RequestBuilder {
        cred.apply(self.http.request(method, self.url(path)))
    }

    /// A monolithic blob push (`POST ?digest=`) as `cred`, which must succeed; the digest.
    pub async fn push_blob_as(&self, cred: &Cred, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .request_as(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                cred,
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "blob push to {repo}");
        d
    }

    /// A manifest `PUT` as `cred`.
    pub async fn put_manifest_as(
        &self,
        cred: &Cred,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.request_as(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            cred,
        )
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("send")
    }

    /// Pushes a config and `layer` to `repo` as `cred`; the bytes of an image manifest
    /// naming them (spaced oddly on purpose: a registry must keep the exact bytes), not
    /// pushed, and the layer's digest.
    pub async fn image_as(&self, cred: &Cred, repo: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let c = self.push_blob_as(cred, repo, config).await;
        let l = self.push_blob_as(cred, repo, layer).await;
        let m = image_manifest((&c, config.len()), (&l, layer.len()));
        let bytes = format!("{}\n\n", serde_json::to_string_pretty(&m).expect("json")).into_bytes();
        (bytes, l)
    }

    /// [`TestServer::image_as`], with the manifest put under each of `tags`; its bytes and
    /// digest, and the layer's digest.
    pub async fn push_image_as(
        &self,
        cred: &Cred,
        repo: &str,
        tags: &[&str],
        layer: &[u8],
    ) -> (Vec<u8>, String, String) {
        let (bytes, l) = self.image_as(cred, repo, layer).await;
        for t in tags {
            let r = self
                .put_manifest_as(cred, repo, t, OCI_MANIFEST, &bytes)
                .await;
            assert_eq!(
                r.status(),
                StatusCode::CREATED,
                "manifest push to {repo}:{t}"
            );
        }
        let d = sha256(&bytes);
        (bytes, d, l)
    }

    /// Its stores, for another replica over them (`Setup::stores`).
    pub fn stores(&self) -> Stores {
        Stores {
            dir: self.dir.clone(),
            blobs: self.blobs.clone(),
            meta: self.meta.clone(),
        }
    }

    /// The metrics exposition.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.http, &self.base).await
    }

    /// The sender whose drop (or send) stops the server, for a test that stops it while
    /// requests are in flight.
    pub fn take_stop(&mut self) -> tokio::sync::oneshot::Sender<()> {
        self.stop.take().expect("not stopped yet")
    }

    /// Stops the server and waits until its port refuses connections.
    pub async fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

// ---- signatures in cosign's format, made with ring ----

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// An Ed25519 key pair and its public key as cosign's PEM.
pub struct Key {
    pair: ring::signature::Ed25519KeyPair,
    pub pem: String,
}

pub fn key() -> Key {
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let pk8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("generate");
    let pair = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).expect("load");
    // SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING key }
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    Key { pair, pem }
}

/// Trust `ci` (these keys) for `prod/*`, and the rule `signed-prod` over it in `mode`.
pub fn signature_policy(keys: &[&Key], mode: Mode) -> Policy {
    Policy::new(PolicySpec {
        trust: vec![TrustSpec {
            name: "ci".into(),
            repositories: vec!["prod/*".into()],
            cosign: keys
                .iter()
                .enumerate()
                .map(|(i, k)| CosignKeySpec {
                    name: format!("k{i}"),
                    pem: k.pem.clone(),
                    algorithm: Some("ed25519".into()),
                })
                .collect(),
            notary: Vec::new(),
            certificates: Vec::new(),
        }],
        rules: vec![RuleSpec {
            name: "signed-prod".into(),
            repositories: vec!["prod/*".into()],
            kind: "signature".into(),
            mode,
            pending: Pending::Refuse,
            push_bypass: true,
            vulnerability: None,
        }],
    })
    .expect("policy")
}

/// A cosign simple-signing payload naming `digest`.
pub fn payload(digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"elsewhere.example/mirror"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// `payload` signed by `k`, base64 as cosign annotates it.
pub fn sign(k: &Key, payload: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k.pair.sign(payload).as_ref())
}

/// A CA and a server certificate for 127.0.0.1 made with the `openssl` CLI.
pub fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Berth proxy test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-out",
        "server.key",
    ]);
    run(&[
        "req",
        "-new",
        "-subj",
        "/CN=127.0.0.1",
        "-key",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("extensions");
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// Blob and metadata stores on the backends a test names: SQLite or PostgreSQL
/// (`BERTH_TEST_POSTGRES_URL`, a fresh schema), the filesystem or S3 (`BERTH_TEST_S3_URL`,
/// a fresh prefix in `BERTH_TEST_S3_BUCKET`).
pub async fn stores_on(postgres: bool, s3: bool) -> Stores {
    stores_in(
        Arc::new(tempfile::tempdir().expect("tempdir")),
        postgres,
        s3,
    )
    .await
}

/// The stores of [`stores_on`], with the filesystem's and SQLite's files in `dir`.
async fn stores_in(dir: Arc<tempfile::TempDir>, postgres: bool, s3: bool) -> Stores {
    let url = if postgres {
        berth_testkit::postgres_url().await
    } else {
        format!("sqlite:{}", dir.path().join("meta.db").display())
    };
    let blobs = if s3 {
        berth_testkit::s3_store().await
    } else {
        BlobStore::Fs(FsStore::new(dir.path()).await.expect("fs store"))
    };
    let meta = MetaStore::connect(&url).await.expect("metadata store");
    Stores { dir, blobs, meta }
}

/// Every digest stored under `blobs/`, from the store's own listing.
pub async fn stored_blobs(blobs: &BlobStore) -> Vec<String> {
    let mut scan = blobs.scan_blobs();
    let mut out = Vec::new();
    while let Some(batch) = scan.next_batch().await.expect("list blobs") {
        for e in batch {
            match e {
                berth_storage::ScanEntry::Blob { digest, .. } => out.push(digest.to_string()),
                berth_storage::ScanEntry::Stray { path } => out.push(format!("stray:{path}")),
            }
        }
    }
    out.sort();
    out
}

/// What is left of uploads: files under `uploads/`, or objects and unfinished multipart
/// uploads under the prefix's `uploads/`.
pub async fn upload_leftovers(blobs: &BlobStore) -> usize {
    match blobs {
        BlobStore::Fs(s) => std::fs::read_dir(s.root().join("uploads"))
            .expect("uploads dir")
            .count(),
        BlobStore::S3(s) => {
            s.list_raw("uploads/").await.expect("list").len()
                + s.pending_multipart_uploads().await.expect("multipart")
        }
    }
}
