//! What the in-process server tests share: stores in a temporary directory, a server on
//! 127.0.0.1:0, and a client for it.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_meta::MetaStore;
use berth_server::AppState;
use berth_storage::{BlobStore, FsStore};

/// Blob and metadata stores (SQLite) in a directory of their own.
pub struct Stores {
    pub dir: tempfile::TempDir,
    pub blobs: BlobStore,
    pub meta: MetaStore,
}

pub async fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::Fs(FsStore::new(dir.path()).await.expect("fs store"));
    let meta = MetaStore::connect(&format!("sqlite:{}", dir.path().join("meta.db").display()))
        .await
        .expect("sqlite");
    Stores { dir, blobs, meta }
}

/// A running server: its base URL, a client, and the sender whose drop stops it.
pub struct Running {
    pub base: String,
    pub http: reqwest::Client,
    pub stop: tokio::sync::oneshot::Sender<()>,
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
    tokio::spawn(berth_server::run(listener, state, async move {
        let _ = stopped.await;
    }));
    Running {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        stop,
    }
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
    let dir = tempfile::tempdir().expect("tempdir");
    let unique = format!(
        "t{}x{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    );
    let url = if postgres {
        let base = std::env::var("BERTH_TEST_POSTGRES_URL")
            .expect("BERTH_TEST_POSTGRES_URL must point at a PostgreSQL database");
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
            .await
            .expect("postgres reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {unique}")))
            .execute(&mut conn)
            .await
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-csearch_path%3D{unique}")
    } else {
        format!("sqlite:{}", dir.path().join("meta.db").display())
    };
    let blobs = if s3 {
        let endpoint = std::env::var("BERTH_TEST_S3_URL")
            .expect("BERTH_TEST_S3_URL must point at an S3 server (scripts/start-s3.sh)");
        let config = berth_storage::S3Config {
            endpoint,
            bucket: std::env::var("BERTH_TEST_S3_BUCKET").unwrap_or_else(|_| "berth-test".into()),
            region: "us-east-1".into(),
            prefix: format!("{unique}/"),
            credentials: berth_storage::S3Credentials {
                access_key_id: "berth-test".into(),
                secret_access_key: "berth-test-secret".into(),
                session_token: None,
            },
            path_style: true,
            redirect_expiry: None,
        };
        BlobStore::S3(berth_storage::S3Store::new(config).await.expect("S3 store"))
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
