//! `berth node`: the node agent of node-local sharing.
//!
//! Two faces. For containerd, on the node's loopback, a registry mirror that answers only
//! `GET`/`HEAD /v2/<name>/blobs/<digest>` (containerd resolves manifests at the central
//! Berth with the pod's credentials, and uses this mirror with `capabilities = ["pull"]`).
//! For peers, `GET /p2p/v1/blobs/<digest>` with a ticket, served from the spool (or,
//! when configured, from containerd's content store through its content service) over
//! TLS only, both ends with a certificate of the central Berth's p2p CA (the agent makes
//! its key at start and gets the certificate, for its node's address, at enrollment).
//!
//! For each blob containerd asks for, the agent gets a ticket from the central Berth,
//! which signs one only if a manifest naming the blob was pulled from this node with
//! the puller's own credentials; without one it answers an error (containerd then asks
//! the central Berth itself) and fetches nothing. With a ticket it asks the tracker for
//! peers, fetches the blob piece by piece (each piece checked against the hashes the
//! central Berth published; a peer that sends a bad piece, stalls or fails is dropped and
//! the piece is fetched from the next source, the central Berth last), and holds back
//! the last piece until the whole digest is checked. A failure before the first byte is
//! a 5xx; after it, the body ends with an error: containerd never waits on silence.
//!
//! The agent also long-polls its node's grants: as soon as a manifest pull of the node is
//! recorded (by any replica), it gets tickets, pieces and the holders known then for every
//! blob of that manifest, and keeps them until they expire. A blob containerd asks for
//! with such a ticket needs no central round trip, and its transfer can finish from peers
//! when the central Berth has gone away after the manifest was resolved.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::p2p::TICKET_HEADER;

/// What `berth node` runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (Kubernetes: `spec.nodeName`).
    pub node: String,
    /// The central Berth, e.g. `https://berth.berth.svc:5000`.
    pub central: String,
    pub bootstrap_token: String,
    /// The port peers reach this agent on (told to the tracker).
    pub peer_port: u16,
    /// Where blobs being fetched and fetched blobs are kept.
    pub spool: PathBuf,
    /// Bytes of fetched blobs kept at most; past it the oldest go first. 0: no limit.
    pub spool_max_bytes: u64,
    /// Bytes per second served to peers, all connections together; 0: no cap.
    pub serve_rate: u64,
    /// A source that sends nothing for this long is abandoned.
    pub stall_timeout: Duration,
    /// The address outgoing connections leave from (the node's address, which the
    /// central Berth and peers know it by); unset: the system's choice.
    pub local_address: Option<IpAddr>,
    /// PEM CAs to trust for the central Berth, besides the system's.
    pub central_ca: Option<PathBuf>,
    /// Failpoints for the tests (`BERTH_NODE_FAILPOINTS`): `serve-corrupt` flips a byte
    /// of every chunk served to peers, `serve-stall` sends peers headers and then nothing.
    pub failpoints: Vec<String>,
    /// containerd's content store, read to serve peers the blobs containerd holds (once
    /// the spool dropped them, or when containerd pulled them from the central Berth
    /// itself). Unset: peers are served from the spool only.
    pub containerd: Option<ContainerdSettings>,
}

/// Where containerd's content service is, and how often the agent looks at it.
#[derive(Debug, Clone)]
pub struct ContainerdSettings {
    /// containerd's gRPC socket, e.g. `/run/containerd/containerd.sock`.
    pub socket: PathBuf,
    /// kubelet's images are in `k8s.io`.
    pub namespace: String,
    /// How often the content store is listed to announce (and withdraw) blobs.
    pub scan_interval: Duration,
}

/// A blob containerd holds that was announced, and when (announcements expire at the
/// central Berth, so they are renewed, with a new ticket, after this).
const REANNOUNCE_AFTER: Duration = Duration::from_secs(20 * 60);
/// A blob containerd holds that the central Berth gave no ticket for (a manifest, a blob
/// of an image this node pulled long ago or not at all) is asked for again after this.
const NO_TICKET_RETRY: Duration = Duration::from_secs(10 * 60);

struct FromContainerd {
    issued: Issued,
    announced: Instant,
}

/// The agent's counters, served on the containerd listener's `/metrics`.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub bytes_from_peers: AtomicU64,
    pub bytes_from_central: AtomicU64,
    pub bytes_to_peers: AtomicU64,
    pub blobs_served: AtomicU64,
    pub blobs_refused: AtomicU64,
    pub blobs_failed: AtomicU64,
    pub peers_dropped_corrupt: AtomicU64,
    pub peers_dropped_stalled: AtomicU64,
    pub peers_dropped_failed: AtomicU64,
    pub peer_requests_refused: AtomicU64,
    /// Connections to the peer port that did not complete a TLS handshake with a
    /// certificate of the p2p CA (plain HTTP, an unknown certificate, none, a stall).
    pub peer_handshakes_refused: AtomicU64,
    pub blobs_evicted: AtomicU64,
    /// Blobs learned through grants (tickets held before containerd asked).
    pub grants_received: AtomicU64,
    /// containerd's blob requests served with a ticket from a grant, without asking the
    /// central Berth for one.
    pub tickets_from_grants: AtomicU64,
    /// Of `bytes_to_peers`, those read from containerd's content store.
    pub bytes_to_peers_from_containerd: AtomicU64,
    /// Blobs of containerd's content store announced to the tracker (renewals included).
    pub containerd_announced: AtomicU64,
    /// Announcements withdrawn because containerd no longer holds the blob (or a read of
    /// it failed or did not match its piece hashes).
    pub containerd_withdrawn: AtomicU64,
    /// Calls to containerd's content service that failed (socket, gRPC status, timeout).
    pub containerd_errors: AtomicU64,
    /// containerd's requests that carried an `Authorization` header. The agent never asks
    /// for one (it answers with tickets, never a challenge) and ignores any it gets: a
    /// pod's credential is meant for the registry host alone.
    pub containerd_authorization: AtomicU64,
}

#[derive(Clone)]
struct Enrolled {
    credential: String,
    /// When the credential and the TLS certificate were issued and expire (unix seconds).
    issued_at: u64,
    expires_at: u64,
}

/// Agent-to-agent TLS: the agent's own key (made at start, never sent), and what the last
/// enrollment made of it: the server side for peers and the client peers are fetched with.
/// Both trust the p2p CA the central Berth named and nothing else; both present the
/// agent's certificate, so a peer connection is authenticated at each end.
struct PeerTls {
    key_pkcs8: Vec<u8>,
    public_point: Vec<u8>,
    server: Mutex<Option<Arc<rustls::ServerConfig>>>,
    client: Mutex<Option<reqwest::Client>>,
}

fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    fn new() -> Result<PeerTls, AgentError> {
        let rng = ring::rand::SystemRandom::new();
        let key_pkcs8 = berth_k8s::cert::new_p256_key(&rng)
            .map_err(|e| AgentError::Tls(format!("key: {e}")))?;
        let public_point = berth_k8s::cert::p256_public(&key_pkcs8, &rng)
            .map_err(|e| AgentError::Tls(format!("key: {e}")))?;
        Ok(PeerTls {
            key_pkcs8,
            public_point,
            server: Mutex::new(None),
            client: Mutex::new(None),
        })
    }

    /// Takes the certificate and CA of an enrollment into use, for new connections.
    fn install(
        &self,
        cert_der: Vec<u8>,
        ca_der: Vec<u8>,
        local_address: Option<IpAddr>,
    ) -> Result<(), AgentError> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let e = |what: &str, x: &dyn std::fmt::Display| AgentError::Tls(format!("{what}: {x}"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der))
            .map_err(|x| e("p2p CA", &x))?;
        let roots = Arc::new(roots);
        let chain = vec![CertificateDer::from(cert_der)];
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()));
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&roots),
            tls_provider(),
        )
        .build()
        .map_err(|x| e("peer verifier", &x))?;
        let server = rustls::ServerConfig::builder_with_provider(tls_provider())
            .with_safe_default_protocol_versions()
            .map_err(|x| e("server", &x))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key())
            .map_err(|x| e("server certificate", &x))?;
        let client = rustls::ClientConfig::builder_with_provider(tls_provider())
            .with_safe_default_protocol_versions()
            .map_err(|x| e("client", &x))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key())
            .map_err(|x| e("client certificate", &x))?;
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(true)
            .use_preconfigured_tls(client);
        if let Some(a) = local_address {
            b = b.local_address(a);
        }
        let client = b.build().map_err(|x| e("peer client", &x))?;
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(server));
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        Ok(())
    }
}

pub struct Agent {
    config: AgentConfig,
    http: reqwest::Client,
    tls: PeerTls,
    enrolled: tokio::sync::Mutex<Option<Enrolled>>,
    /// The public key peers' tickets are checked with, once enrolled.
    public_key: Mutex<Option<Vec<u8>>>,
    /// Blobs complete and verified in the spool, by digest.
    held: Mutex<HashMap<String, u64>>,
    /// Blobs being fetched, with the bytes verified so far (served to peers already).
    progress: Mutex<HashMap<String, tokio::sync::watch::Receiver<u64>>>,
    /// Tickets learned through grants, by digest, kept until they expire.
    granted: Mutex<HashMap<String, Issued>>,
    pacer: Pacer,
    /// containerd's content store, when configured.
    content: Option<crate::containerd::ContentStore>,
    /// Blobs of containerd's content store this agent announced, by digest.
    from_containerd: Mutex<HashMap<String, FromContainerd>>,
    /// Blobs of containerd's content store without a ticket, until when not to ask again.
    no_ticket: Mutex<HashMap<String, Instant>>,
    pub stats: AgentStats,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("central Berth: {0}")]
    Central(String),
    #[error("no ticket: {0}")]
    NoTicket(String),
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error("every source failed for piece {piece}: {why}")]
    Exhausted { piece: usize, why: String },
    #[error("the blob's bytes do not hash to its digest")]
    DigestMismatch,
    #[error("agent-to-agent TLS: {0}")]
    Tls(String),
}

#[derive(Deserialize, Debug, Clone)]
struct Issued {
    ticket: String,
    size: u64,
    piece_size: u64,
    hashes: Vec<String>,
    /// Unix seconds; 0 when unknown.
    #[serde(default)]
    expires_at: u64,
    /// Holders the central Berth named with a grant: the sources left if it is gone.
    #[serde(default)]
    peers: Vec<PeerEntry>,
}

/// A grant's ticket is used only while it has this long left: a peer checks it on its
/// own clock, and a fetch takes a while.
const GRANT_MARGIN: u64 = 15;

#[derive(Deserialize, Debug, Clone)]
pub struct PeerEntry {
    pub node: String,
    pub addr: SocketAddr,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Spaces out the bytes served to peers so that together they stay under a rate.
struct Pacer {
    rate: u64,
    next: Mutex<Instant>,
}

impl Pacer {
    async fn take(&self, n: usize) {
        if self.rate == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        // reqwest is built with rustls and no provider; ring is the workspace's.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(a) = config.local_address {
            b = b.local_address(a);
        }
        if let Some(ca) = &config.central_ca {
            let pem = std::fs::read(ca)?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AgentError::Central(format!("{}: {e}", ca.display())))?
            {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| AgentError::Central(e.to_string()))?;
        std::fs::create_dir_all(&config.spool)?;
        let held = scan_spool(&config.spool);
        let content = config.containerd.as_ref().map(|c| {
            crate::containerd::ContentStore::new(
                c.socket.clone(),
                c.namespace.clone(),
                config.stall_timeout,
            )
        });
        Ok(Arc::new(Agent {
            content,
            from_containerd: Mutex::default(),
            no_ticket: Mutex::default(),
            pacer: Pacer {
                rate: config.serve_rate,
                next: Mutex::new(Instant::now()),
            },
            config,
            http,
            tls: PeerTls::new()?,
            enrolled: tokio::sync::Mutex::new(None),
            public_key: Mutex::new(None),
            held: Mutex::new(held),
            progress: Mutex::default(),
            granted: Mutex::default(),
            stats: AgentStats::default(),
        }))
    }

    fn failpoint(&self, name: &str) -> bool {
        self.config.failpoints.iter().any(|f| f == name)
    }

    fn central(&self, path: &str) -> String {
        format!("{}{path}", self.config.central.trim_end_matches('/'))
    }

    /// Enrolls with the bootstrap token (again, when `renew`).
    async fn enrollment(&self, renew: bool) -> Result<Enrolled, AgentError> {
        let mut e = self.enrolled.lock().await;
        if let Some(x) = e.as_ref()
            && !renew
        {
            return Ok(x.clone());
        }
        let r = self
            .http
            .post(self.central("/p2p/v1/enroll"))
            .bearer_auth(&self.config.bootstrap_token)
            .json(&serde_json::json!({
                "node": self.config.node,
                "port": self.config.peer_port,
                "tls_public_key": hex::encode(&self.tls.public_point),
            }))
            .timeout(self.config.stall_timeout)
            .send()
            .await
            .map_err(|e| AgentError::Central(e.to_string()))?;
        if !r.status().is_success() {
            return Err(AgentError::Central(format!("enrollment: {}", r.status())));
        }
        #[derive(Deserialize)]
        struct Answer {
            credential: String,
            public_key: String,
            expires_at: u64,
            certificate: String,
            ca: String,
        }
        let a: Answer = r
            .json()
            .await
            .map_err(|e| AgentError::Central(e.to_string()))?;
        let unhex = |s: &str| hex::decode(s).map_err(|e| AgentError::Central(e.to_string()));
        let public_key = unhex(&a.public_key)?;
        self.tls.install(
            unhex(&a.certificate)?,
            unhex(&a.ca)?,
            self.config.local_address,
        )?;
        *self.public_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(public_key);
        let x = Enrolled {
            credential: a.credential,
            issued_at: unix_now(),
            expires_at: a.expires_at,
        };
        *e = Some(x.clone());
        tracing::info!(node = %self.config.node, "enrolled with the central Berth");
        Ok(x)
    }

    /// Enrolls now, so peers can be served before containerd asks for anything.
    pub async fn enroll(&self) -> Result<(), AgentError> {
        self.enrollment(true).await.map(|_| ())
    }

    /// The client this agent fetches from peers with: TLS only, trusting the p2p CA only,
    /// presenting this agent's certificate. `None` before the first enrollment.
    pub fn peer_client(&self) -> Option<reqwest::Client> {
        self.tls
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long until the certificate and credential should be renewed: when two thirds
    /// of their lifetime has passed (a minute from now when not enrolled).
    async fn renew_in(&self) -> Duration {
        match self.enrolled.lock().await.as_ref() {
            Some(e) => {
                let at = e.issued_at + e.expires_at.saturating_sub(e.issued_at) * 2 / 3;
                Duration::from_secs(at.saturating_sub(unix_now()).max(1))
            }
            None => Duration::from_secs(60),
        }
    }

    /// A GET to the central Berth with the node credential, enrolling again once if it
    /// was refused (expired, or the central Berth restarted and forgot this node).
    async fn central_get(&self, path: &str) -> Result<reqwest::Response, AgentError> {
        self.central_get_within(path, self.config.stall_timeout.max(Duration::from_secs(30)))
            .await
    }

    async fn central_get_within(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, AgentError> {
        for renew in [false, true] {
            let e = self.enrollment(renew).await?;
            let r = self
                .http
                .get(self.central(path))
                .bearer_auth(&e.credential)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| AgentError::Central(e.to_string()))?;
            if r.status() == StatusCode::UNAUTHORIZED && !renew {
                continue;
            }
            return Ok(r);
        }
        Err(AgentError::Central("unreachable".into()))
    }

    async fn ticket(&self, digest: &str) -> Result<Issued, AgentError> {
        let r = self
            .central_get(&format!("/p2p/v1/tickets/{digest}"))
            .await?;
        match r.status() {
            s if s.is_success() => r
                .json()
                .await
                .map_err(|e| AgentError::Central(e.to_string())),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED => {
                Err(AgentError::NoTicket(format!("{}", r.status())))
            }
            s => Err(AgentError::Central(format!("ticket: {s}"))),
        }
    }

    /// The ticket for `digest`: one learned through a grant while it is fresh enough
    /// (no central round trip, and it works with the central Berth gone), else one asked
    /// for now.
    async fn ticket_for(&self, digest: &str) -> Result<Issued, AgentError> {
        let cached = {
            let mut g = self.granted.lock().unwrap_or_else(|p| p.into_inner());
            let now = unix_now();
            g.retain(|_, i| i.expires_at > now + GRANT_MARGIN);
            g.get(digest).cloned()
        };
        if let Some(i) = cached {
            self.stats
                .tickets_from_grants
                .fetch_add(1, Ordering::Relaxed);
            return Ok(i);
        }
        self.ticket(digest).await
    }

    /// One long poll of the node's grants after `after`: the next cursor.
    async fn poll_grants(&self, after: i64, wait: Duration) -> Result<i64, AgentError> {
        #[derive(Deserialize)]
        struct Blob {
            digest: String,
            #[serde(flatten)]
            issued: Issued,
        }
        #[derive(Deserialize)]
        struct Grant {
            blobs: Vec<Blob>,
        }
        #[derive(Deserialize)]
        struct Answer {
            cursor: i64,
            grants: Vec<Grant>,
        }
        let r = self
            .central_get_within(
                &format!("/p2p/v1/grants?after={after}&wait={}", wait.as_secs()),
                wait + self.config.stall_timeout,
            )
            .await?;
        if !r.status().is_success() {
            return Err(AgentError::Central(format!("grants: {}", r.status())));
        }
        let a: Answer = r
            .json()
            .await
            .map_err(|e| AgentError::Central(e.to_string()))?;
        let mut g = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by what was granted within a ticket's life.
        let now = unix_now();
        g.retain(|_, i| i.expires_at > now + GRANT_MARGIN);
        for b in a.grants.into_iter().flat_map(|g| g.blobs) {
            self.stats.grants_received.fetch_add(1, Ordering::Relaxed);
            g.insert(b.digest, b.issued);
        }
        Ok(a.cursor)
    }

    /// Follows the node's grants until `stopped`: each answer as soon as a manifest pull
    /// of this node is recorded; failures retried after a pause growing to 30 s.
    async fn follow_grants(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut cursor = 0;
        let mut pause = Duration::from_secs(1);
        loop {
            let asked = Instant::now();
            let r = tokio::select! {
                r = self.poll_grants(cursor, Duration::from_secs(20)) => r,
                _ = stopped.changed() => return,
            };
            match r {
                // A replica shutting down answers at once with nothing: ask again after
                // a pause rather than at once.
                Ok(c) if c == cursor && asked.elapsed() < Duration::from_secs(1) => {}
                Ok(c) => {
                    cursor = c;
                    pause = Duration::from_secs(1);
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "grants: retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    /// Announces that this node holds or is fetching a blob; the answer names a few of
    /// the nodes that announced it earlier.
    async fn announce(&self, ticket: &str) -> Vec<PeerEntry> {
        self.try_announce(ticket).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "announcement failed");
            Vec::new()
        })
    }

    async fn try_announce(&self, ticket: &str) -> Result<Vec<PeerEntry>, AgentError> {
        #[derive(Deserialize)]
        struct Answer {
            peers: Vec<PeerEntry>,
        }
        let e = self.enrollment(false).await?;
        let r = self
            .http
            .post(self.central("/p2p/v1/announce"))
            .bearer_auth(&e.credential)
            .json(&serde_json::json!({ "ticket": ticket }))
            .timeout(self.config.stall_timeout)
            .send()
            .await
            .map_err(|e| AgentError::Central(e.to_string()))?;
        if !r.status().is_success() {
            return Err(AgentError::Central(format!(
                "announcement refused: {}",
                r.status()
            )));
        }
        r.json::<Answer>()
            .await
            .map(|a| a.peers)
            .map_err(|e| AgentError::Central(e.to_string()))
    }

    /// Tells the tracker this node no longer holds `digest`, so askers stop being sent
    /// here before the announcement would expire.
    async fn withdraw(&self, digest: &str) -> Result<(), AgentError> {
        let e = self.enrollment(false).await?;
        let r = self
            .http
            .post(self.central("/p2p/v1/withdraw"))
            .bearer_auth(&e.credential)
            .json(&serde_json::json!({ "digest": digest }))
            .timeout(self.config.stall_timeout)
            .send()
            .await
            .map_err(|e| AgentError::Central(e.to_string()))?;
        if !r.status().is_success() {
            return Err(AgentError::Central(format!("withdrawal: {}", r.status())));
        }
        Ok(())
    }

    /// The blob of containerd's content store this agent announced: its pieces.
    fn shared_from_containerd(&self, digest: &str) -> Option<Issued> {
        self.from_containerd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .map(|s| s.issued.clone())
    }

    /// containerd no longer serves `digest` (deleted, or a read failed): no longer
    /// announced, and withdrawn at the tracker.
    async fn drop_from_containerd(&self, digest: &str, why: &str) {
        let was = self
            .from_containerd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest)
            .is_some();
        if !was {
            return;
        }
        self.stats
            .containerd_withdrawn
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(%digest, why, "blob of containerd withdrawn from the tracker");
        if let Err(e) = self.withdraw(digest).await {
            // The announcement then expires at the tracker; askers meanwhile get a 404
            // here and take the next source.
            tracing::warn!(%digest, error = %e, "withdrawal failed");
        }
    }

    /// Lists containerd's content store: blobs this node may share (the central Berth
    /// gives a ticket for them) are announced, after an `Info` right before (containerd
    /// may have deleted them since the listing); blobs gone from it are withdrawn.
    async fn scan_containerd(&self) {
        let Some(store) = &self.content else {
            return;
        };
        let listed = match store.list().await {
            Ok(l) => l,
            Err(e) => {
                self.stats.containerd_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "listing containerd's content failed");
                return;
            }
        };
        let present: HashMap<String, u64> = listed
            .into_iter()
            .filter(|i| valid_digest(&i.digest))
            .map(|i| (i.digest, i.size))
            .collect();
        let gone: Vec<String> = self
            .from_containerd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|d| !present.contains_key(*d))
            .cloned()
            .collect();
        for d in gone {
            self.drop_from_containerd(&d, "no longer in containerd's content store")
                .await;
        }
        let now = Instant::now();
        self.no_ticket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
        for (digest, size) in present {
            let in_spool = self.held_size(&digest).is_some()
                || self
                    .progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&digest);
            let fresh = self
                .from_containerd
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&digest)
                .is_some_and(|s| s.announced.elapsed() < REANNOUNCE_AFTER);
            let refused = self
                .no_ticket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&digest);
            if in_spool || fresh || refused {
                continue;
            }
            let issued = match self.ticket(&digest).await {
                Ok(i) => i,
                Err(AgentError::NoTicket(_)) => {
                    self.no_ticket
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(digest, now + NO_TICKET_RETRY);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no tickets for containerd's blobs this time");
                    return;
                }
            };
            if issued.size != size || issued.hashes.is_empty() {
                continue;
            }
            match store.info(&digest).await {
                Ok(Some(i)) if i.size == issued.size => {}
                Ok(_) => continue,
                Err(e) => {
                    self.stats.containerd_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%digest, error = %e, "containerd Info failed");
                    continue;
                }
            }
            if let Err(e) = self.try_announce(&issued.ticket).await {
                tracing::warn!(%digest, error = %e, "announcing a blob of containerd failed");
                continue;
            }
            self.stats
                .containerd_announced
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%digest, "blob of containerd announced");
            self.from_containerd
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    digest,
                    FromContainerd {
                        issued,
                        announced: Instant::now(),
                    },
                );
        }
    }

    /// Piece `i` of a blob containerd holds, read through its content service and
    /// checked against the piece's hash.
    async fn containerd_piece(
        &self,
        digest: &str,
        issued: &Issued,
        i: u64,
    ) -> Result<Bytes, String> {
        let Some(store) = &self.content else {
            return Err("containerd is not configured".into());
        };
        let first = i * issued.piece_size;
        let end = (first + issued.piece_size).min(issued.size);
        let want = usize::try_from(i)
            .ok()
            .and_then(|i| issued.hashes.get(i))
            .ok_or_else(|| format!("no hash for piece {i}"))?;
        let b = store
            .read(digest, first, end.saturating_sub(first))
            .await
            .map_err(|e| {
                self.stats.containerd_errors.fetch_add(1, Ordering::Relaxed);
                e.to_string()
            })?;
        if hex::encode(Sha256::digest(&b)) != *want {
            return Err(format!(
                "piece {i} read from containerd does not match its hash"
            ));
        }
        Ok(Bytes::from(b))
    }

    fn spool_path(&self, digest: &str) -> PathBuf {
        self.config.spool.join(digest.replace(':', "-"))
    }

    fn held_size(&self, digest: &str) -> Option<u64> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .copied()
    }

    /// Fetches one piece from one source: the URL and ticket, the byte range, the hash it
    /// must have. Every wait on the source is bounded by the stall timeout.
    async fn fetch_piece(
        &self,
        client: &reqwest::Client,
        url: &str,
        ticket: &str,
        first: u64,
        last: u64,
        want: &str,
    ) -> Result<Vec<u8>, PieceError> {
        let stall = self.config.stall_timeout;
        let send = client
            .get(url)
            .header(TICKET_HEADER, ticket)
            .header(header::RANGE, format!("bytes={first}-{last}"))
            .send();
        let mut r = match tokio::time::timeout(stall, send).await {
            Err(_) => return Err(PieceError::Stalled),
            Ok(Err(e)) => return Err(PieceError::Failed(e.to_string())),
            Ok(Ok(r)) => r,
        };
        if r.status() != StatusCode::PARTIAL_CONTENT {
            return Err(PieceError::Failed(format!("answered {}", r.status())));
        }
        let len = (last - first + 1) as usize;
        let mut buf = Vec::with_capacity(len);
        loop {
            match tokio::time::timeout(stall, r.chunk()).await {
                Err(_) => return Err(PieceError::Stalled),
                Ok(Err(e)) => return Err(PieceError::Failed(e.to_string())),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => {
                    if buf.len() + c.len() > len {
                        return Err(PieceError::Corrupt);
                    }
                    buf.extend_from_slice(&c);
                }
            }
        }
        if buf.len() != len || hex::encode(Sha256::digest(&buf)) != want {
            return Err(PieceError::Corrupt);
        }
        Ok(buf)
    }

    /// Marks `digest` as being fetched by this node, unless it is already: the check and
    /// the mark under one lock, so two requests never fetch into the same spool file.
    fn claim_fetch(&self, digest: &str) -> Option<tokio::sync::watch::Sender<u64>> {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if progress.contains_key(digest) {
            return None;
        }
        let (done, watching) = tokio::sync::watch::channel(0u64);
        progress.insert(digest.to_owned(), watching);
        Some(done)
    }

    /// Fetches the blob into the spool, sending each verified piece to `out` as it lands;
    /// the last one only after the whole digest checked. Peers may fetch the verified
    /// pieces meanwhile; a failed transfer leaves nothing.
    /// `done` is the sender of the receiver `claim_fetch` put in `progress`.
    async fn fetch_blob(
        self: Arc<Self>,
        digest: String,
        issued: Issued,
        out: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        done: tokio::sync::watch::Sender<u64>,
    ) -> Result<(), AgentError> {
        let r = Arc::clone(&self)
            .fetch_pieces(&digest, &issued, &out, &done)
            .await;
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest);
        if r.is_err() {
            let _ =
                tokio::fs::remove_file(self.spool_path(&digest).with_extension("partial")).await;
        }
        r
    }

    async fn fetch_pieces(
        self: Arc<Self>,
        digest: &str,
        issued: &Issued,
        out: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        done: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), AgentError> {
        let digest = digest.to_owned();
        let partial = self.spool_path(&digest).with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await?;
        // Announced (and the earlier holders learned) only once the spool file exists,
        // so a peer that comes at once finds what to wait on.
        let mut peers = self.announce(&issued.ticket).await;
        // Holders named with the grant come after the tracker's answer: the sources left
        // when the central Berth is gone.
        for p in &issued.peers {
            if p.node != self.config.node && !peers.iter().any(|q| q.node == p.node) {
                peers.push(p.clone());
            }
        }
        let central_url = self.central(&format!("/p2p/v1/blobs/{digest}"));
        let mut whole = Sha256::new();
        let n = issued.hashes.len();
        let mut held_back: Option<Bytes> = None;
        for (i, want) in issued.hashes.iter().enumerate() {
            let first = i as u64 * issued.piece_size;
            let last = (first + issued.piece_size)
                .min(issued.size)
                .saturating_sub(1);
            let mut why = String::new();
            let mut got = None;
            // Peers in the tracker's order, dropped for good once they misbehave.
            while let Some(p) = peers.first().cloned() {
                // The peer's certificate must name the address the tracker gave.
                let url = format!("https://{}/p2p/v1/blobs/{digest}", p.addr);
                let Some(client) = self.peer_client() else {
                    peers.clear();
                    break;
                };
                match self
                    .fetch_piece(&client, &url, &issued.ticket, first, last, want)
                    .await
                {
                    Ok(b) => {
                        self.stats
                            .bytes_from_peers
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        got = Some(b);
                        break;
                    }
                    Err(e) => {
                        let c = match e {
                            PieceError::Corrupt => &self.stats.peers_dropped_corrupt,
                            PieceError::Stalled => &self.stats.peers_dropped_stalled,
                            PieceError::Failed(_) => &self.stats.peers_dropped_failed,
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %p.node, addr = %p.addr, %digest, piece = i, problem = %e, "peer dropped");
                        why = format!("peer {}: {e}", p.node);
                        peers.remove(0);
                    }
                }
            }
            if got.is_none() {
                match self
                    .fetch_piece(&self.http, &central_url, &issued.ticket, first, last, want)
                    .await
                {
                    Ok(b) => {
                        self.stats
                            .bytes_from_central
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        got = Some(b);
                    }
                    Err(e) => why = format!("{why}; central Berth: {e}"),
                }
            }
            let Some(piece) = got else {
                return Err(AgentError::Exhausted { piece: i, why });
            };
            whole.update(&piece);
            file.write_all(&piece).await?;
            // In the file (not tokio's buffer) before peers are told they may read it.
            file.flush().await?;
            done.send_replace(last + 1);
            let piece = Bytes::from(piece);
            if i + 1 < n {
                if let Some(prev) = held_back.replace(piece) {
                    // containerd going away ends the transfer; the spool keeps nothing.
                    if out.send(Ok(prev)).await.is_err() {
                        return Ok(());
                    }
                }
            } else {
                let prev = held_back.take();
                let actual = format!(
                    "sha256:{}",
                    hex::encode(std::mem::take(&mut whole).finalize())
                );
                if actual != digest {
                    return Err(AgentError::DigestMismatch);
                }
                file.sync_all().await?;
                drop(file);
                if self.failpoint("rename-race") {
                    // Waiters are awake and the file has its partial name a while longer.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                tokio::fs::rename(&partial, self.spool_path(&digest)).await?;
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(digest.clone(), issued.size);
                self.evict(&digest);
                for b in prev.into_iter().chain([piece]) {
                    if out.send(Ok(b)).await.is_err() {
                        break;
                    }
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Keeps the spool under its cap: the blobs fetched longest ago go first, never the
    /// one just fetched. A peer reading one keeps its open file; later askers get a 404
    /// and take the next source.
    fn evict(&self, keep: &str) {
        let max = self.config.spool_max_bytes;
        if max == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: u64 = held.values().sum();
        if total <= max {
            return;
        }
        let mut by_age: Vec<(std::time::SystemTime, String)> = held
            .keys()
            .filter(|d| *d != keep)
            .map(|d| {
                let t = std::fs::metadata(self.spool_path(d))
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH);
                (t, d.clone())
            })
            .collect();
        by_age.sort();
        for (_, d) in by_age {
            if total <= max {
                break;
            }
            if let Some(n) = held.remove(&d) {
                total -= n;
                let _ = std::fs::remove_file(self.spool_path(&d));
                self.stats.blobs_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn metrics_text(&self) -> String {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut t = String::new();
        for (name, help, label, v) in [
            (
                "berth_node_bytes_from_peers",
                "Blob bytes fetched from peers and verified",
                "",
                g(&s.bytes_from_peers),
            ),
            (
                "berth_node_bytes_from_central",
                "Blob bytes fetched from the central Berth and verified",
                "",
                g(&s.bytes_from_central),
            ),
            (
                "berth_node_bytes_to_peers",
                "Blob bytes served to peers",
                "",
                g(&s.bytes_to_peers),
            ),
            (
                "berth_node_blobs_served",
                "Blobs served to containerd",
                "",
                g(&s.blobs_served),
            ),
            (
                "berth_node_blobs_refused",
                "Blob requests of containerd answered with an error because the central Berth gave no ticket",
                "",
                g(&s.blobs_refused),
            ),
            (
                "berth_node_blobs_failed",
                "Blob requests of containerd that failed (every source failed, or the digest did not match)",
                "",
                g(&s.blobs_failed),
            ),
            (
                "berth_node_peers_dropped",
                "Peers dropped during a transfer, by reason",
                "{reason=\"corrupt\"}",
                g(&s.peers_dropped_corrupt),
            ),
            (
                "berth_node_peers_dropped",
                "",
                "{reason=\"stalled\"}",
                g(&s.peers_dropped_stalled),
            ),
            (
                "berth_node_peers_dropped",
                "",
                "{reason=\"failed\"}",
                g(&s.peers_dropped_failed),
            ),
            (
                "berth_node_spool_evicted",
                "Blobs removed from the spool to keep it under its cap",
                "",
                g(&s.blobs_evicted),
            ),
            (
                "berth_node_grants_received",
                "Blob tickets learned through grants, when the node's manifest pull was recorded",
                "",
                g(&s.grants_received),
            ),
            (
                "berth_node_tickets_from_grants",
                "Blob requests of containerd served with a ticket learned through a grant",
                "",
                g(&s.tickets_from_grants),
            ),
            (
                "berth_node_peer_requests_refused",
                "Peer requests refused with 403 and no bytes (no ticket, a ticket for another blob or node, expired, bad signature)",
                "",
                g(&s.peer_requests_refused),
            ),
            (
                "berth_node_bytes_to_peers_from_containerd",
                "Of the blob bytes served to peers, those read from containerd's content store (each piece checked against its hash first)",
                "",
                g(&s.bytes_to_peers_from_containerd),
            ),
            (
                "berth_node_containerd_announced",
                "Blobs of containerd's content store announced to the tracker (renewals included), each after an Info showed it present at its size",
                "",
                g(&s.containerd_announced),
            ),
            (
                "berth_node_containerd_withdrawn",
                "Announcements of containerd's blobs withdrawn: deleted from containerd, or a read failed or did not match its piece hash",
                "",
                g(&s.containerd_withdrawn),
            ),
            (
                "berth_node_containerd_errors",
                "Calls to containerd's content service that failed (socket, gRPC status, timeout, malformed answer)",
                "",
                g(&s.containerd_errors),
            ),
            (
                "berth_node_containerd_requests_with_authorization",
                "containerd's requests to the agent that carried an Authorization header (the agent never challenges; a pod's credential is for the registry host alone)",
                "",
                g(&s.containerd_authorization),
            ),
            (
                "berth_node_peer_handshakes_refused",
                "Connections to the peer port closed before a TLS handshake with a certificate of the p2p CA (plain HTTP, another certificate or none, a stall)",
                "",
                g(&s.peer_handshakes_refused),
            ),
        ] {
            if !help.is_empty() {
                t.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} counter\n"));
            }
            t.push_str(&format!("{name}_total{label} {v}\n"));
        }
        t.push_str("# EOF\n");
        t
    }
}

#[derive(Debug, thiserror::Error)]
enum PieceError {
    #[error("sent bytes that do not match the piece's hash")]
    Corrupt,
    #[error("stalled")]
    Stalled,
    #[error("{0}")]
    Failed(String),
}

/// Blobs a previous run left complete in the spool (their names say their digest; they
/// were renamed into place only after their digest was checked).
fn scan_spool(dir: &std::path::Path) -> HashMap<String, u64> {
    let mut held = HashMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_prefix("sha256-")
                && hex.len() == 64
                && hex.bytes().all(|c| c.is_ascii_hexdigit())
                && let Ok(m) = e.metadata()
            {
                held.insert(format!("sha256:{hex}"), m.len());
            } else if name.ends_with(".partial") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    held
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `/v2/<name>/blobs/<digest>` → the digest.
fn blob_digest(path: &str) -> Option<String> {
    let (_, d) = path.rsplit_once("/blobs/")?;
    (path.starts_with("/v2/") && valid_digest(d)).then(|| d.to_owned())
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// The face for containerd.
pub fn containerd_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .fallback(for_containerd)
        .with_state(agent)
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    let mut r = agent.metrics_text().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn for_containerd(State(agent): State<Arc<Agent>>, req: Request) -> Response {
    if req.headers().contains_key(header::AUTHORIZATION) {
        agent
            .stats
            .containerd_authorization
            .fetch_add(1, Ordering::Relaxed);
    }
    let m = req.method().clone();
    if m != Method::GET && m != Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror only serves blobs",
        );
    }
    let path = req.uri().path();
    if path == "/v2/" || path == "/v2" {
        return (StatusCode::OK, "{}").into_response();
    }
    let Some(digest) = blob_digest(path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "this mirror only serves blobs",
        );
    };
    let with_body = m == Method::GET;
    // Held already: still only for a node that may have it now.
    let issued = match agent.ticket_for(&digest).await {
        Ok(t) => t,
        Err(AgentError::NoTicket(why)) => {
            agent.stats.blobs_refused.fetch_add(1, Ordering::Relaxed);
            return error_response(
                StatusCode::FORBIDDEN,
                "DENIED",
                &format!("no ticket for {digest} ({why}): pull it from the registry itself"),
            );
        }
        Err(e) => {
            agent.stats.blobs_failed.fetch_add(1, Ordering::Relaxed);
            return error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string());
        }
    };
    let headers = |resp: &mut Response, len: u64| {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(&digest) {
            h.insert("docker-content-digest", v);
        }
    };
    if !with_body {
        let mut r = Response::new(Body::empty());
        headers(&mut r, issued.size);
        return r;
    }
    if agent.held_size(&digest) == Some(issued.size) {
        match tokio::fs::File::open(agent.spool_path(&digest)).await {
            Ok(f) => {
                agent.stats.blobs_served.fetch_add(1, Ordering::Relaxed);
                let mut r = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(f)));
                headers(&mut r, issued.size);
                return r;
            }
            Err(e) => {
                tracing::warn!(error = %e, %digest, "spooled blob unreadable; fetching again")
            }
        }
    }
    let size = issued.size;
    if issued.size == 0 {
        let mut r = Response::new(Body::empty());
        headers(&mut r, 0);
        return r;
    }
    let Some(done) = agent.claim_fetch(&digest) else {
        // Another request of this node is fetching it: containerd takes it from the
        // registry this once rather than wait on a second copy.
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "this blob is being fetched already",
        );
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    {
        let agent = Arc::clone(&agent);
        let digest = digest.clone();
        tokio::spawn(async move {
            let failed = tx.clone();
            match Arc::clone(&agent)
                .fetch_blob(digest.clone(), issued, tx, done)
                .await
            {
                Ok(()) => {
                    agent.stats.blobs_served.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    agent.stats.blobs_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%digest, error = %e, "blob transfer failed");
                    let _ = failed.send(Err(std::io::Error::other(e.to_string()))).await;
                }
            }
        });
    }
    // Headers only once the first piece is verified (or the transfer failed): a failure
    // before any byte is a 5xx, which containerd falls back on.
    let first = match rx.recv().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            return error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string());
        }
        None => {
            return error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", "transfer ended");
        }
    };
    let rest =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let body = futures_util::stream::StreamExt::chain(
        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(first))),
        rest,
    );
    let mut r = Response::new(Body::from_stream(body));
    headers(&mut r, size);
    r
}

/// The face for peers: a blob from the spool for a ticket of the asking node, checked
/// offline; anything else is a 403 with no bytes.
pub fn peer_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/p2p/v1/blobs/{digest}", axum::routing::get(for_peer))
        .with_state(agent)
}

async fn for_peer(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(digest): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let refuse = |why: &str| {
        agent
            .stats
            .peer_requests_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, %digest, why, "peer request refused");
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        r
    };
    let Some(public_key) = agent
        .public_key
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    else {
        return refuse("not enrolled yet");
    };
    let Some(ticket) = req
        .headers()
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return refuse("no ticket");
    };
    if let Err(e) =
        berth_auth::ticket::verify_ticket(&public_key, ticket, &digest, peer.ip(), unix_now())
    {
        return refuse(e.reason());
    }
    let not_found = || {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    // Held, or being fetched: then the size is the ticket's (the asker's ticket names the
    // same blob) and the bytes are served once verified here.
    let fetching = agent
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&digest)
        .cloned();
    let size = match (agent.held_size(&digest), &fetching) {
        (Some(size), _) => size,
        (None, Some(_)) => match req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(_, last)| last.parse::<u64>().ok())
        {
            // Only ranged requests of a blob in progress: its size is not known here.
            Some(last) => last + 1,
            None => return not_found(),
        },
        (None, None) => {
            return match agent.shared_from_containerd(&digest) {
                Some(issued) => {
                    let range = req
                        .headers()
                        .get(header::RANGE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    serve_from_containerd(agent, digest, issued, range).await
                }
                None => not_found(),
            };
        }
    };
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| berth_oci::range::resolve_range(r, size).ok().flatten());
    let (first, last) = range.unwrap_or((0, size.saturating_sub(1)));
    if let Some(mut w) = fetching {
        // Wait, bounded, until the piece is verified here; the asker's own stall timeout
        // is the other bound.
        let ready = tokio::time::timeout(agent.config.stall_timeout, w.wait_for(|d| *d > last));
        if !matches!(ready.await, Ok(Ok(_))) && agent.held_size(&digest).is_none() {
            return not_found();
        }
    }
    let partial = agent.spool_path(&digest).with_extension("partial");
    // A fetch renames its partial file into place right after the last piece is
    // verified, which wakes the waiters: a waiter may miss the final name and then the
    // partial one. The rename is atomic, so the final name after a missed partial one
    // finds the file unless the fetch failed.
    let mut f = None;
    for (i, path) in [
        &agent.spool_path(&digest),
        &partial,
        &agent.spool_path(&digest),
    ]
    .into_iter()
    .enumerate()
    {
        if let Ok(opened) = tokio::fs::File::open(path).await {
            f = Some(opened);
            break;
        }
        if i == 0 && agent.failpoint("rename-race") {
            // The rename lands between this miss and the next open.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let Some(mut f) = f else {
        return not_found();
    };
    if f.seek(std::io::SeekFrom::Start(first)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let len = last + 1 - first;
    let corrupt = agent.failpoint("serve-corrupt");
    let stall = agent.failpoint("serve-stall");
    let a = Arc::clone(&agent);
    let body = futures_util::stream::unfold((f, len), move |(mut f, left)| {
        let a = Arc::clone(&a);
        async move {
            if left == 0 {
                return None;
            }
            if stall {
                // Headers sent, then silence: what a frozen peer looks like.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let mut buf = vec![0u8; left.min(256 * 1024) as usize];
            match f.read_exact(&mut buf).await {
                Ok(_) => {}
                Err(e) => return Some((Err(e), (f, 0))),
            }
            a.pacer.take(buf.len()).await;
            if corrupt {
                buf[0] ^= 0xff;
            }
            a.stats
                .bytes_to_peers
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            let n = buf.len() as u64;
            Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (f, left - n)))
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// Serves a peer a range of a blob containerd holds, piece by piece through the content
/// service, each piece checked against its hash before a byte of it is sent. The first
/// piece is read before the headers: a blob containerd deleted is a 404, which the asker
/// takes as a failed source. A read failing later ends the body with an error (never
/// silence). Either way the announcement is withdrawn.
async fn serve_from_containerd(
    agent: Arc<Agent>,
    digest: String,
    issued: Issued,
    range: Option<String>,
) -> Response {
    let size = issued.size;
    let ps = issued.piece_size;
    if size == 0 || ps == 0 {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let range = range.and_then(|r| berth_oci::range::resolve_range(&r, size).ok().flatten());
    let (first, last) = range.unwrap_or((0, size - 1));
    let head = match agent.containerd_piece(&digest, &issued, first / ps).await {
        Ok(b) => b,
        Err(why) => {
            tracing::warn!(%digest, why, "serving a peer from containerd failed");
            agent.drop_from_containerd(&digest, &why).await;
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let a = Arc::clone(&agent);
    // `None` once a read failed: the stream ends after the error.
    let pieces = Some((first / ps)..=(last / ps));
    let body = futures_util::stream::unfold((pieces, Some(head)), move |(pieces, mut head)| {
        let a = Arc::clone(&a);
        let digest = digest.clone();
        let issued = issued.clone();
        async move {
            let mut pieces = pieces?;
            let i = pieces.next()?;
            let piece = match head.take() {
                Some(b) => b,
                None => match a.containerd_piece(&digest, &issued, i).await {
                    Ok(b) => b,
                    Err(why) => {
                        tracing::warn!(%digest, why, "serving a peer from containerd failed");
                        a.drop_from_containerd(&digest, &why).await;
                        // Empty the range so the stream ends after the error.
                        return Some((Err(std::io::Error::other(why)), (None, None)));
                    }
                },
            };
            let start = i * ps;
            let from = first.max(start) - start;
            let to = (last + 1).min(start + piece.len() as u64) - start;
            let part = piece.slice(from as usize..to as usize);
            a.pacer.take(part.len()).await;
            let n = part.len() as u64;
            a.stats.bytes_to_peers.fetch_add(n, Ordering::Relaxed);
            a.stats
                .bytes_to_peers_from_containerd
                .fetch_add(n, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(part), (Some(pieces), None)))
        }
    });
    let len = last + 1 - first;
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// Runs the agent: enrolls, then serves containerd on `containerd` (bind it to the
/// node's loopback) and peers on `peers` until `shutdown` resolves.
pub async fn run_agent(
    agent: Arc<Agent>,
    containerd: tokio::net::TcpListener,
    peers: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Err(e) = agent.enroll().await {
        // Not fatal: every request enrolls again first, and containerd falls back meanwhile.
        tracing::warn!(error = %e, "enrollment failed; retrying on the next request");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let c =
        axum::serve(containerd, containerd_router(Arc::clone(&agent))).with_graceful_shutdown({
            let mut s = stopped.clone();
            async move {
                let _ = s.changed().await;
            }
        });
    let renewing = {
        let agent = Arc::clone(&agent);
        let mut s = stopped.clone();
        async move {
            loop {
                let wait = agent.renew_in().await;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = s.changed() => return,
                }
                match agent.enroll().await {
                    Ok(()) => tracing::info!("TLS certificate and node credential renewed"),
                    Err(e) => {
                        tracing::warn!(error = %e, "renewal failed; retrying in a minute");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(60)) => {}
                            _ = s.changed() => return,
                        }
                    }
                }
            }
        }
    };
    tokio::spawn(renewing);
    tokio::spawn(Arc::clone(&agent).follow_grants(stopped.clone()));
    if let Some(c) = &agent.config.containerd {
        let agent = Arc::clone(&agent);
        let every = c.scan_interval.max(Duration::from_secs(1));
        let mut s = stopped.clone();
        tokio::spawn(async move {
            loop {
                agent.scan_containerd().await;
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = s.changed() => return,
                }
            }
        });
    }
    let p = serve_peers(agent, peers, stopped);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let (a, ()) = tokio::join!(c.into_future(), p);
    a
}

/// The peer port: TLS only, with the certificate of the last enrollment, and only for
/// clients presenting a certificate of the same CA. Nothing is served before the first
/// enrollment; a handshake that fails or takes longer than the stall timeout closes the
/// connection before any HTTP is read.
async fn serve_peers(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    use tower::ServiceExt as _;
    let router = peer_router(Arc::clone(&agent));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "peer port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let config = agent
            .tls
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let refused = {
            let agent = Arc::clone(&agent);
            move |why: &str| {
                agent
                    .stats
                    .peer_handshakes_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, why, "peer connection refused");
            }
        };
        let Some(config) = config else {
            refused("not enrolled yet");
            continue;
        };
        let router = router.clone();
        let handshake_timeout = agent.config.stall_timeout;
        tokio::spawn(async move {
            let accepting = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
            let tls = match tokio::time::timeout(handshake_timeout, accepting).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return refused(&e.to_string()),
                Err(_) => return refused("handshake stalled"),
            };
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(req.map(Body::new))
                });
            let conn =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = conn
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "peer connection ended");
            }
        });
    }
}

/// The tracker's view from a running central Berth (`berth p2p status`), as an
/// administrator.
pub async fn tracker_status(
    url: &str,
    user: &str,
    password: &str,
) -> Result<serde_json::Value, AgentError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let r = reqwest::Client::new()
        .get(format!("{}/p2p/v1/status", url.trim_end_matches('/')))
        .basic_auth(user, Some(password))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| AgentError::Central(e.to_string()))?;
    if !r.status().is_success() {
        return Err(AgentError::Central(format!("status: {}", r.status())));
    }
    r.json()
        .await
        .map_err(|e| AgentError::Central(e.to_string()))
}
