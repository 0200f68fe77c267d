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
