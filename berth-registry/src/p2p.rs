//! Node-local sharing, the central side: which node may fetch which blob, tickets saying
//! so, the piece hashes of a blob, and the tracker of which nodes hold what.
//!
//! The rule that keeps access control intact: a node's agent gets a ticket for a blob only
//! if a manifest naming that blob was pulled, with the caller's own credentials and all
//! the usual checks, from that node's address within `pull_ttl`. The agent never pulls
//! with a credential of its own: without such a pull it gets nothing, from the central
//! Berth or from a peer (peers check tickets offline, `berth_auth::ticket`).
//!
//! Agents are certified at enrollment for agent-to-agent TLS by the p2p CA. The ticket and
//! CA keys are shared by every replica through the metadata store ([`P2p::open`]), and so
//! is the state (enrolled nodes, authorized pulls and the grants agents learn them from,
//! the tracker's holders), each row with its expiry: any replica answers any agent, and a
//! node's kubelet and agent may reach different ones. Only the piece hashes are this
//! replica's cache (they are recomputed from the blob when missing).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_auth::ticket::{self, NodeClaims, TicketClaims, TicketError, TicketKey};
use berth_oci::{Digest, RepoName};
use futures_util::StreamExt as _;
use rand::seq::SliceRandom as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{BlobRead, Registry, RegistryError, Result};

/// Every blob is hashed in pieces of this size (the last one shorter), so a peer that
/// sends bad bytes is caught at the piece, not at the end of a 2 GB layer.
pub const PIECE_SIZE: u64 = 4 << 20;
/// Authorized pulls remembered at most (rows of the shared table, counted by each replica
/// at its last purge plus what it added since); past it, expired ones are purged and a
/// pull that finds no room is not shared (its node pulls from the central Berth).
const MAX_PULLS: u64 = 1_000_000;
/// How often a replica purges expired sharing state and recounts the pulls.
const PURGE_EVERY: Duration = Duration::from_secs(30);
/// The longest an agent's grants request waits for a new grant.
pub const MAX_GRANTS_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting grants request reads the store without being woken: only a
/// backstop, since pulls recorded here or on another replica (PostgreSQL `NOTIFY`) wake
/// it, and a listener that lost its connection wakes every request once it is back.
const GRANTS_RECHECK: Duration = Duration::from_secs(10);
/// Grants answered at most at once (the agent asks again from the cursor).
const GRANTS_PER_ANSWER: usize = 16;
/// Blobs whose piece hashes are kept.
const MAX_PIECE_LISTS: usize = 4096;
/// Holders remembered per blob.
const MAX_HOLDERS: usize = 256;

/// What an operator sets (`[p2p]`).
#[derive(Debug, Clone)]
pub struct P2pSettings {
    /// What agents present to enroll (the Kubernetes Secret the manifests refer to).
    pub bootstrap_token: String,
    /// The Ed25519 signing key as PKCS#8; `None`: one generated at start (one replica
    /// only: peers verify with the key of the replica they enrolled at).
    pub key_pkcs8: Option<Vec<u8>>,
    /// The ECDSA P-256 key of the CA that certifies agents for agent-to-agent TLS, as
    /// PKCS#8; `None`: one generated at start (one replica only, as for `key_pkcs8`).
    pub ca_key_pkcs8: Option<Vec<u8>>,
    /// How long a ticket is valid.
    pub ticket_ttl: Duration,
    /// How long after an authorized manifest pull the node may fetch its blobs.
    pub pull_ttl: Duration,
    /// How long a node credential is valid (agents enroll again before).
    pub credential_ttl: Duration,
    /// How long an announcement counts.
    pub announce_ttl: Duration,
    /// Peers named in one answer to "who has this digest".
    pub peers_per_answer: usize,
    /// Tenants (`team-a`) or repositories (`team-a/app`) whose pulls are never shared.
    pub off: Vec<String>,
}

impl Default for P2pSettings {
    fn default() -> Self {
        P2pSettings {
            bootstrap_token: String::new(),
            key_pkcs8: None,
            ca_key_pkcs8: None,
            ticket_ttl: Duration::from_secs(600),
            pull_ttl: Duration::from_secs(3600),
            credential_ttl: Duration::from_secs(24 * 3600),
            announce_ttl: Duration::from_secs(3600),
            peers_per_answer: 3,
            off: Vec::new(),
        }
    }
}

/// This replica's own state: piece hashes only (recomputable; the rest is the metadata
/// store's, shared by every replica).
#[derive(Default)]
struct State {
    pieces: HashMap<String, Arc<Pieces>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct P2pStats {
    pub enrolled: AtomicU64,
    pub enroll_refused: AtomicU64,
    pub pulls_recorded: AtomicU64,
    pub pulls_dropped: AtomicU64,
    pub tickets_issued: AtomicU64,
    pub tickets_refused: AtomicU64,
    pub announces: AtomicU64,
    pub announces_refused: AtomicU64,
    pub credentials_refused: AtomicU64,
    pub bytes_to_agents: AtomicU64,
    pub grants_answered: AtomicU64,
    /// Reads of the grants table by waiting grants requests: one when a request comes,
    /// one per wake-up meant for its node, one per [`GRANTS_RECHECK`] otherwise.
    pub grants_reads: AtomicU64,
    pub state_errors: AtomicU64,
    /// Full reads of a blob to compute its piece hashes (once per blob, however many
    /// first tickets ask at the same time).
    pub piece_hash_reads: AtomicU64,
    pub withdrawals: AtomicU64,
}

pub struct P2p {
    settings: P2pSettings,
    key: TicketKey,
    /// The CA certifying agents (PKCS#8) and its certificate (DER).
    ca_key: Vec<u8>,
    ca_der: Vec<u8>,
    rng: ring::rand::SystemRandom,
    state: Mutex<State>,
    /// When this replica last purged expired state, and the pulls table's rows then plus
    /// those it recorded since (what [`MAX_PULLS`] bounds).
    purged: Mutex<Option<Instant>>,
    pull_rows: AtomicU64,
    /// The waiting grants requests by node address: a pull recorded for a node (here,
    /// or on another replica and heard through the store's notifications) wakes its
    /// node's requests only, so a burst of pulls across a cluster costs one read each.
    waiting: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Set when the server shuts down: waiting grants requests are answered at once.
    closing: std::sync::atomic::AtomicBool,
    /// Blobs whose piece hashes are being computed: one gate each, so concurrent first
    /// tickets for a blob wait for one read instead of each reading it whole.
    hashing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub stats: P2pStats,
}

/// A blob's piece hashes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pieces {
    pub size: u64,
    pub piece_size: u64,
    /// SHA-256 of each piece, hex.
    pub hashes: Vec<String>,
}

/// What an enrolled agent gets.
#[derive(Debug, Clone, Serialize)]
pub struct Enrollment {
    pub node: String,
    pub addr: IpAddr,
    pub credential: String,
    pub expires_at: u64,
    /// Hex; the key peers verify tickets with.
    pub public_key: String,
    /// Hex DER: the agent's certificate for agent-to-agent TLS, for its address, valid
    /// until `expires_at` (the agent enrolls again before).
    pub certificate: String,
    /// Hex DER: the CA that certifies every agent, which peers trust and nothing else.
    pub ca: String,
}

/// A ticket with what the agent needs to fetch and check the blob.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub ticket: String,
    pub expires_at: u64,
    #[serde(flatten)]
    pub pieces: Pieces,
}

/// One holder, as the tracker names it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub addr: SocketAddr,
}

/// A blob an agent may fetch, learned when its node's manifest pull was recorded: the
/// ticket, the pieces, and the holders known then (so the transfer can finish from peers
/// when the central Berth is gone).
#[derive(Debug, Clone, Serialize)]
pub struct GrantedBlob {
    pub digest: String,
    #[serde(flatten)]
    pub issued: Issued,
    pub peers: Vec<Peer>,
}

/// A manifest pull of the agent's node, with a ticket for each of its blobs.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub id: i64,
    pub manifest: String,
    pub blobs: Vec<GrantedBlob>,
}

/// The answer to an agent's grants request: resume from `cursor`.
#[derive(Debug, Clone, Serialize)]
pub struct Grants {
    pub cursor: i64,
    pub grants: Vec<Grant>,
}

/// The tracker's view, for `berth p2p status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub nodes: Vec<Peer>,
    pub blobs: Vec<BlobHolders>,
    pub authorized_pulls: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobHolders {
    pub digest: String,
    pub holders: Vec<Peer>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A Kubernetes node name: a DNS subdomain.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

/// Compares through hashes, so the time taken says nothing about how much of a guess
/// matched.
fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// What a stored p2p key's seal is bound to, so a sealed key cannot pass for another.
pub(crate) fn key_context(name: &str) -> Vec<u8> {
    let mut c = b"berth-p2p-key\0".to_vec();
    c.extend_from_slice(name.as_bytes());
    c
}

/// The stored key `name`, made by `make` and stored (sealed by `encryption` when on) if
/// no replica stored one yet.
async fn shared_key(
    meta: &berth_meta::MetaStore,
    encryption: Option<&berth_storage::seal::Keyring>,
    name: &str,
    make: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let fresh = make()?;
    let (stored, by) = match encryption {
        None => (fresh, None),
        Some(ring) => {
            let (by, sealed) = ring.wrap(&key_context(name), &fresh);
            (sealed, Some(by))
        }
    };
    let (secret, sealed_by) = meta.ensure_p2p_key(name, &stored, by.as_deref()).await?;
    match sealed_by {
        None => Ok(secret),
        Some(by) => {
            let ring = encryption.ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "[p2p] the stored {name} key is sealed by key {by}: configure [encryption]"
                ))
            })?;
            ring.unwrap(&by, &key_context(name), &secret)
                .map_err(|e| RegistryError::Invalid(format!("[p2p] the stored {name} key: {e}")))
        }
    }
}

impl P2p {
    /// [`P2p::new`] with the keys the settings leave unset shared through the metadata
    /// store (sealed when encryption is on), so every replica signs tickets and agents'
    /// certificates with the same keys without key files.
    pub async fn open(
        mut settings: P2pSettings,
        meta: &berth_meta::MetaStore,
        encryption: Option<&berth_storage::seal::Keyring>,
    ) -> Result<P2p> {
        if settings.key_pkcs8.is_none() {
            settings.key_pkcs8 = Some(
                shared_key(meta, encryption, "ticket", || {
                    TicketKey::generate()
                        .map(|k| k.pkcs8().to_vec())
                        .map_err(|e| RegistryError::Invalid(format!("[p2p] ticket key: {e}")))
                })
                .await?,
            );
        }
        if settings.ca_key_pkcs8.is_none() {
            settings.ca_key_pkcs8 = Some(
                shared_key(meta, encryption, "ca", || {
                    berth_k8s::cert::new_p256_key(&ring::rand::SystemRandom::new())
                        .map_err(|e| RegistryError::Invalid(format!("[p2p] CA key: {e}")))
                })
                .await?,
            );
        }
        P2p::new(settings)
    }

    /// Keys unset in `settings` are made here, for this process only (one replica).
    pub fn new(settings: P2pSettings) -> Result<P2p> {
        if settings.bootstrap_token.len() < 16 {
            return Err(RegistryError::Invalid(
                "[p2p] bootstrap token must be at least 16 characters".into(),
            ));
        }
        let key = match &settings.key_pkcs8 {
            Some(k) => TicketKey::from_pkcs8(k),
            None => TicketKey::generate(),
        }
        .map_err(|e| RegistryError::Invalid(format!("[p2p] ticket key: {e}")))?;
        let rng = ring::rand::SystemRandom::new();
        let ca_key = match &settings.ca_key_pkcs8 {
            Some(k) => k.clone(),
            None => berth_k8s::cert::new_p256_key(&rng)
                .map_err(|e| RegistryError::Invalid(format!("[p2p] CA key: {e}")))?,
        };
        let ca_der =
            berth_k8s::cert::p2p_ca_certificate(&ca_key, unix_now(), &rng).map_err(|e| {
                RegistryError::Invalid(format!("[p2p] CA key (ECDSA P-256 PKCS#8 expected): {e}"))
            })?;
        Ok(P2p {
            settings,
            key,
            ca_key,
            ca_der,
            rng,
            state: Mutex::default(),
            purged: Mutex::new(None),
            pull_rows: AtomicU64::new(0),
            waiting: Mutex::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            hashing: Mutex::default(),
            stats: P2pStats::default(),
        })
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    /// The CA certificate (DER) agents trust for agent-to-agent TLS.
    pub fn ca_certificate(&self) -> &[u8] {
        &self.ca_der
    }

    /// Wakes the grants requests waiting for `addr`'s node, or every waiting one.
    pub fn wake_grants(&self, addr: Option<&str>) {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match addr {
            Some(a) => {
                if let Some(n) = waiting.get(a) {
                    n.notify_waiters();
                }
            }
            None => waiting.values().for_each(|n| n.notify_waiters()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing sharing; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether pulls of `repo` may be shared.
    pub fn shared(&self, repo: &str) -> bool {
        let tenant = berth_auth::tenant_of(repo);
        !self.settings.off.iter().any(|o| o == repo || o == tenant)
    }

    /// A failure of the metadata store on the sharing path: counted, and the request
    /// refused as unavailable (containerd falls back on the registry).
    fn store_failed(&self, e: berth_meta::MetaError) -> RegistryError {
        bump(&self.stats.state_errors);
        tracing::warn!(error = %e, "node-local sharing: metadata store");
        RegistryError::from(e)
    }
}

/// A waiting grants request's registration in [`P2p::waiting`], removed with the last
/// request of its node (also when the request is dropped mid-wait).
struct GrantsWaiter<'a> {
    p: &'a P2p,
    addr: String,
    notify: Arc<tokio::sync::Notify>,
}

impl<'a> GrantsWaiter<'a> {
    fn new(p: &'a P2p, addr: &str) -> GrantsWaiter<'a> {
        let notify = Arc::clone(
            p.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(addr.to_owned())
                .or_default(),
        );
        GrantsWaiter {
            p,
            addr: addr.to_owned(),
            notify,
        }
    }
}

impl Drop for GrantsWaiter<'_> {
    fn drop(&mut self) {
        let mut waiting = self.p.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and this one's; no other request of the node waits.
        if waiting
            .get(&self.addr)
            .is_some_and(|n| Arc::strong_count(n) == 2)
        {
            waiting.remove(&self.addr);
        }
    }
}

fn addr_key(a: IpAddr) -> String {
    a.to_canonical().to_string()
}

fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl Registry {
    /// Turns node-local sharing on.
    pub fn with_p2p(mut self, p2p: Option<Arc<P2p>>) -> Registry {
        self.p2p = p2p;
        self
    }

    pub fn p2p(&self) -> Option<&Arc<P2p>> {
        self.p2p.as_ref()
    }

    /// The server is shutting down: grants requests stop waiting (answered empty), so
    /// they do not hold up the drain of in-flight requests.
    pub fn p2p_close(&self) {
        if let Some(p) = &self.p2p {
            p.closing.store(true, Ordering::Relaxed);
            p.wake_grants(None);
        }
    }

    fn p2p_on(&self) -> Result<&Arc<P2p>> {
        self.p2p
            .as_ref()
            .ok_or_else(|| RegistryError::NotFound("node-local sharing is off".into()))
    }

    /// The node an agent's credential names, checked against the address it comes from
    /// and against the enrollment every replica sees; with its peer port.
    async fn p2p_node_of(
        &self,
        p: &P2p,
        credential: &str,
        from: IpAddr,
    ) -> Result<(NodeClaims, u16)> {
        let c = ticket::verify_node(p.public_key(), credential, from, unix_now()).map_err(|e| {
            bump(&p.stats.credentials_refused);
            RegistryError::Unauthorized(format!("node credential refused: {e}"))
        })?;
        let enrolled = self
            .meta
            .p2p_node(&addr_key(from), secs(unix_now()))
            .await
            .map_err(|e| p.store_failed(e))?;
        match enrolled {
            Some((name, port)) if name == c.node => Ok((c, port)),
            _ => {
                bump(&p.stats.credentials_refused);
                Err(RegistryError::Unauthorized(
                    "node credential refused: not enrolled at this address (enroll again)".into(),
                ))
            }
        }
    }

    /// Purges expired sharing state and recounts the pulls, at most every
    /// [`PURGE_EVERY`] on this replica (every replica does, so one that stops leaves no
    /// growth behind); with `urgent` (the pulls look full) at most every second.
    async fn p2p_maintain(&self, p: &P2p, urgent: bool) {
        {
            let mut at = p.purged.lock().unwrap_or_else(|x| x.into_inner());
            let every = if urgent {
                Duration::from_secs(1)
            } else {
                PURGE_EVERY
            };
            if at.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *at = Some(Instant::now());
        }
        let now = secs(unix_now());
        match self.meta.p2p_purge(now).await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "p2p: expired state purged"),
            Ok(_) => {}
            Err(e) => {
                p.store_failed(e);
                return;
            }
        }
        match self.meta.p2p_pull_rows().await {
            Ok(n) => p.pull_rows.store(n, Ordering::Relaxed),
            Err(e) => {
                p.store_failed(e);
            }
        }
    }

    /// An agent enrolls with the bootstrap token: it is the node at the address it
    /// comes from (so it cannot claim another node's pulls), listening for peers on
    /// `port`, over TLS with a certificate for `tls_public_key` (an uncompressed P-256
    /// point whose private half never leaves the node) that names that address.
    pub async fn p2p_enroll(
        &self,
        token: &str,
        node: &str,
        from: IpAddr,
        port: u16,
        tls_public_key: &[u8],
    ) -> Result<Enrollment> {
        let p = self.p2p_on()?;
        if !same_secret(token, &p.settings.bootstrap_token) {
            bump(&p.stats.enroll_refused);
            return Err(RegistryError::Unauthorized(
                "bootstrap token refused".into(),
            ));
        }
        if !valid_node_name(node) || port == 0 {
            bump(&p.stats.enroll_refused);
            return Err(RegistryError::Invalid(
                "node name must be a DNS subdomain and the peer port non-zero".into(),
            ));
        }
        let addr = from.to_canonical();
        let expires_at = unix_now() + p.settings.credential_ttl.as_secs();
        let certificate = berth_k8s::cert::p2p_node_certificate(
            &p.ca_key,
            node,
            addr,
            tls_public_key,
            unix_now(),
            expires_at,
            &p.rng,
        )
        .map_err(|e| {
            bump(&p.stats.enroll_refused);
            RegistryError::Invalid(format!("TLS public key: {e}"))
        })?;
        let credential = p.key.sign_node(&NodeClaims {
            node: node.to_owned(),
            addr,
            exp: expires_at,
        });
        // Another name at this address: what it held was announced by another agent, and
        // the store forgets it.
        self.meta
            .p2p_enroll_node(&addr_key(addr), node, port, secs(expires_at))
            .await
            .map_err(|e| p.store_failed(e))?;
        self.p2p_maintain(p, false).await;
        bump(&p.stats.enrolled);
        tracing::info!(node, %addr, port, "p2p agent enrolled");
        Ok(Enrollment {
            node: node.to_owned(),
            addr,
            credential,
            expires_at,
            public_key: hex::encode(p.public_key()),
            certificate: hex::encode(certificate),
            ca: hex::encode(&p.ca_der),
        })
    }

    /// Called after a manifest was served, with every check passed, to `from`: if that
    /// is an enrolled node, its agent may fetch the manifest's blobs for `pull_ttl`, on
    /// any replica, and learns so through a grant. A store failure only loses the sharing
    /// (the node pulls centrally); the manifest is served all the same.
    pub async fn p2p_note_pull(
        &self,
        from: IpAddr,
        repo: &RepoName,
        manifest: &Digest,
        content: &[u8],
        media_type: &str,
    ) {
        let Some(p) = &self.p2p else { return };
        if !p.shared(repo.as_str()) {
            return;
        }
        let addr = addr_key(from);
        match self.meta.p2p_node(&addr, secs(unix_now())).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                p.store_failed(e);
                return;
            }
        }
        let Ok(m) = berth_oci::manifest::parse_manifest(content, Some(media_type)) else {
            return;
        };
        let digests: Vec<String> = m
            .config
            .iter()
            .chain(&m.layers)
            .chain(&m.manifests)
            .map(|d| d.digest.to_string())
            .collect();
        let n = digests.len() as u64;
        self.p2p_maintain(p, false).await;
        if p.pull_rows.load(Ordering::Relaxed) + n > MAX_PULLS {
            self.p2p_maintain(p, true).await;
            if p.pull_rows.load(Ordering::Relaxed) + n > MAX_PULLS {
                p.stats.pulls_dropped.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        let until = unix_now() + p.settings.pull_ttl.as_secs();
        match self
            .meta
            .p2p_record_pull(
                &addr,
                manifest.as_str(),
                repo.as_str(),
                &digests,
                secs(until),
            )
            .await
        {
            Ok(()) => {
                p.pull_rows.fetch_add(n, Ordering::Relaxed);
                p.stats.pulls_recorded.fetch_add(n, Ordering::Relaxed);
                p.wake_grants(Some(&addr));
            }
            Err(e) => {
                p.store_failed(e);
                p.stats.pulls_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The repository through which node `from` may fetch `digest`, if it may.
    async fn p2p_authorized(
        &self,
        p: &P2p,
        from: IpAddr,
        digest: &str,
    ) -> Result<Option<RepoName>> {
        let repo = self
            .meta
            .p2p_pull(&addr_key(from), digest, secs(unix_now()))
            .await
            .map_err(|e| p.store_failed(e))?;
        Ok(repo
            .and_then(|r| RepoName::from_str(&r).ok())
            .filter(|r| p.shared(r.as_str())))
    }

    /// A ticket for `digest` to the agent holding `credential`, with the blob's pieces:
    /// only for a blob of a manifest its node pulled with the puller's own credentials.
    pub async fn p2p_ticket(
        &self,
        credential: &str,
        from: IpAddr,
        digest: &Digest,
    ) -> Result<Issued> {
        let p = self.p2p_on()?;
        let (node, _) = self.p2p_node_of(p, credential, from).await?;
        let Some(repo) = self.p2p_authorized(p, from, digest.as_str()).await? else {
            bump(&p.stats.tickets_refused);
            return Err(RegistryError::Denied(format!(
                "node {} has no authorized pull of a manifest naming {digest}",
                node.node
            )));
        };
        self.p2p_issue(p, &node, &repo, digest).await
    }

    async fn p2p_issue(
        &self,
        p: &P2p,
        node: &NodeClaims,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Issued> {
        let pieces = self.p2p_pieces(p, repo, digest).await?;
        let expires_at = unix_now() + p.settings.ticket_ttl.as_secs();
        let ticket = p.key.sign_ticket(&TicketClaims {
            node: node.node.clone(),
            addr: node.addr,
            digest: digest.to_string(),
            exp: expires_at,
        });
        bump(&p.stats.tickets_issued);
        Ok(Issued {
            ticket,
            expires_at,
            pieces: (*pieces).clone(),
        })
    }

    /// The grants of the asking agent's node after `after`: each manifest pull recorded
    /// for its address (on any replica), with a ticket, the pieces and the holders known
    /// now for every blob it names, so the agent holds its tickets before containerd asks
    /// and the transfers can finish from peers if the central Berth goes away. Waits up
    /// to `wait` (at most [`MAX_GRANTS_WAIT`]) for one to come; none: an empty answer
    /// with the same cursor.
    pub async fn p2p_grants(
        &self,
        credential: &str,
        from: IpAddr,
        after: i64,
        wait: Duration,
    ) -> Result<Grants> {
        let p = self.p2p_on()?;
        let (node, _) = self.p2p_node_of(p, credential, from).await?;
        let addr = addr_key(from);
        let deadline = Instant::now() + wait.min(MAX_GRANTS_WAIT);
        let waiter = GrantsWaiter::new(p, &addr);
        let rows = loop {
            // Registered before the store is read, so a pull recorded in between wakes it.
            let granted = waiter.notify.notified();
            bump(&p.stats.grants_reads);
            let rows = self
                .meta
                .p2p_grants(&addr, after, secs(unix_now()))
                .await
                .map_err(|e| p.store_failed(e))?;
            if !rows.is_empty() {
                break rows;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || p.closing.load(Ordering::Relaxed) {
                return Ok(Grants {
                    cursor: after,
                    grants: Vec::new(),
                });
            }
            let _ = tokio::time::timeout(left.min(GRANTS_RECHECK), granted).await;
        };
        drop(waiter);
        let mut cursor = after;
        let mut grants = Vec::new();
        for g in rows.into_iter().take(GRANTS_PER_ANSWER) {
            cursor = cursor.max(g.id);
            let Ok(repo) = RepoName::from_str(&g.repo) else {
                continue;
            };
            if !p.shared(repo.as_str()) {
                continue;
            }
            let mut blobs = Vec::new();
            for d in &g.blobs {
                let Ok(digest) = Digest::from_str(d) else {
                    continue;
                };
                // An index's child manifests are named too; they are no blobs and get no
                // ticket (containerd resolves them at the registry).
                let issued = match self.p2p_issue(p, &node, &repo, &digest).await {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::debug!(%digest, error = %e, "p2p: no grant for this digest");
                        continue;
                    }
                };
                let mut peers = self.p2p_holders_of(p, &node.node, d).await?;
                peers.shuffle(&mut rand::rng());
                peers.truncate(p.settings.peers_per_answer);
                blobs.push(GrantedBlob {
                    digest: d.clone(),
                    issued,
                    peers,
                });
            }
            grants.push(Grant {
                id: g.id,
                manifest: g.manifest,
                blobs,
            });
        }
        bump(&p.stats.grants_answered);
        Ok(Grants { cursor, grants })
    }

    /// The holders of `digest` not expired, but `node`.
    async fn p2p_holders_of(&self, p: &P2p, node: &str, digest: &str) -> Result<Vec<Peer>> {
        Ok(self
            .meta
            .p2p_holders(Some(digest), secs(unix_now()))
            .await
            .map_err(|e| p.store_failed(e))?
            .into_iter()
            .filter(|h| h.node != node)
            .filter_map(|h| {
                Some(Peer {
                    addr: h.addr.parse().ok()?,
                    node: h.node,
                })
            })
            .collect())
    }

    async fn p2p_pieces(&self, p: &P2p, repo: &RepoName, digest: &Digest) -> Result<Arc<Pieces>> {
        if let Some(x) = p.state().pieces.get(digest.as_str()) {
            return Ok(Arc::clone(x));
        }
        let gate = Arc::clone(
            p.hashing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(digest.to_string())
                .or_default(),
        );
        let turn = gate.lock().await;
        // Whoever held the gate before may have computed them (or failed: then this one
        // reads the blob itself).
        let cached = p.state().pieces.get(digest.as_str()).cloned();
        let r = match cached {
            Some(x) => Ok(x),
            None => self.p2p_hash_pieces(p, repo, digest).await,
        };
        drop(turn);
        {
            let mut h = p.hashing.lock().unwrap_or_else(|e| e.into_inner());
            // Clones are taken under this lock: only the map's and ours left means
            // nobody waits on the gate.
            if Arc::strong_count(&gate) <= 2 {
                h.remove(digest.as_str());
            }
        }
        r
    }

    async fn p2p_hash_pieces(
        &self,
        p: &P2p,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Arc<Pieces>> {
        bump(&p.stats.piece_hash_reads);
        let read = self.read_blob(repo, digest, None, true).await?;
        let Some(reader) = read.reader else {
            return Err(RegistryError::Internal("blob read without a body".into()));
        };
        let mut body = reader.body;
        let mut hashes = Vec::new();
        let mut h = Sha256::new();
        let mut in_piece = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| RegistryError::Internal(format!("reading {digest}: {e}")))?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min((PIECE_SIZE - in_piece) as usize);
                h.update(&rest[..take]);
                in_piece += take as u64;
                rest = &rest[take..];
                if in_piece == PIECE_SIZE {
                    hashes.push(hex::encode(std::mem::take(&mut h).finalize()));
                    in_piece = 0;
                }
            }
        }
        if in_piece > 0 || hashes.is_empty() {
            hashes.push(hex::encode(h.finalize()));
        }
        let pieces = Arc::new(Pieces {
            size: read.size,
            piece_size: PIECE_SIZE,
            hashes,
        });
        let mut st = p.state();
        if st.pieces.len() >= MAX_PIECE_LISTS {
            st.pieces.clear();
        }
        st.pieces.insert(digest.to_string(), Arc::clone(&pieces));
        Ok(pieces)
    }

    /// An agent says it holds a blob, or is fetching it (it serves the pieces it has
    /// verified): accepted only with a valid ticket for that blob issued to that agent's
    /// node, so nobody can name itself the holder of something it was never allowed to
    /// fetch (and poison the tracker). The answer is a few of the holders that announced
    /// before it, in random order: asking and announcing in one step orders the nodes
    /// that start at once into a tree (each fetches from earlier ones), never a cycle.
    pub async fn p2p_announce(
        &self,
        credential: &str,
        from: IpAddr,
        ticket_str: &str,
    ) -> Result<Vec<Peer>> {
        let p = self.p2p_on()?;
        let (node, port) = self.p2p_node_of(p, credential, from).await?;
        let refuse = |e: TicketError| {
            bump(&p.stats.announces_refused);
            RegistryError::Denied(format!("announcement refused: {e}"))
        };
        // The digest comes from the ticket itself; its node must be the announcer.
        let claims: TicketClaims =
            peek_claims(ticket_str).ok_or_else(|| refuse(TicketError::Malformed))?;
        let c = ticket::verify_ticket(p.public_key(), ticket_str, &claims.digest, from, unix_now())
            .map_err(refuse)?;
        if c.node != node.node {
            return Err(refuse(TicketError::OtherNode));
        }
        let now = unix_now();
        let earlier = self
            .meta
            .p2p_announce(
                &c.digest,
                &node.node,
                &addr_key(node.addr),
                &SocketAddr::new(node.addr, port).to_string(),
                berth_meta::now_micros(),
                secs(now + p.settings.announce_ttl.as_secs()),
                secs(now),
                MAX_HOLDERS,
            )
            .await
            .map_err(|e| p.store_failed(e))?;
        let mut earlier: Vec<Peer> = earlier
            .into_iter()
            .filter_map(|h| {
                Some(Peer {
                    addr: h.addr.parse().ok()?,
                    node: h.node,
                })
            })
            .collect();
        bump(&p.stats.announces);
        earlier.shuffle(&mut rand::rng());
        earlier.truncate(p.settings.peers_per_answer);
        Ok(earlier)
    }

    /// Who holds `digest`: a few peers, in random order so load spreads, never the asker;
    /// asked only by a node that may fetch the blob itself.
    pub async fn p2p_peers(
        &self,
        credential: &str,
        from: IpAddr,
        digest: &Digest,
    ) -> Result<Vec<Peer>> {
        let p = self.p2p_on()?;
        let (node, _) = self.p2p_node_of(p, credential, from).await?;
        if self
            .p2p_authorized(p, from, digest.as_str())
            .await?
            .is_none()
        {
            bump(&p.stats.tickets_refused);
            return Err(RegistryError::Denied(format!(
                "node {} has no authorized pull of a manifest naming {digest}",
                node.node
            )));
        }
        let mut peers = self.p2p_holders_of(p, &node.node, digest.as_str()).await?;
        peers.shuffle(&mut rand::rng());
        peers.truncate(p.settings.peers_per_answer);
        Ok(peers)
    }

    /// The agent of the asking node no longer holds `digest` (containerd deleted it): it
    /// leaves the blob's holders now rather than when its announcement expires. A node
    /// can withdraw only itself.
    pub async fn p2p_withdraw(
        &self,
        credential: &str,
        from: IpAddr,
        digest: &Digest,
    ) -> Result<()> {
        let p = self.p2p_on()?;
        let (node, _) = self.p2p_node_of(p, credential, from).await?;
        self.meta
            .p2p_withdraw(digest.as_str(), &node.node)
            .await
            .map_err(|e| p.store_failed(e))?;
        bump(&p.stats.withdrawals);
        Ok(())
    }

    /// The central Berth as the source of last resort for an agent: the blob's bytes for a
    /// valid ticket of the asking node, never for its credential alone.
    pub async fn p2p_read_blob(
        &self,
        from: IpAddr,
        ticket_str: &str,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<BlobRead> {
        let p = self.p2p_on()?;
        let refuse = |e: TicketError| {
            bump(&p.stats.tickets_refused);
            RegistryError::Denied(format!("ticket refused: {e}"))
        };
        ticket::verify_ticket(
            p.public_key(),
            ticket_str,
            digest.as_str(),
            from,
            unix_now(),
        )
        .map_err(refuse)?;
        let Some(repo) = self.p2p_authorized(p, from, digest.as_str()).await? else {
            return Err(refuse(TicketError::OtherNode));
        };
        let read = self.read_blob(&repo, digest, range, true).await?;
        if let Some(r) = &read.reader {
            p.stats.bytes_to_agents.fetch_add(r.len, Ordering::Relaxed);
        }
        Ok(read)
    }

    /// The tracker's view (every replica's, from the store).
    pub async fn p2p_status(&self) -> Result<Status> {
        let p = self.p2p_on()?;
        let now = secs(unix_now());
        let fail = |e| p.store_failed(e);
        let nodes = self
            .meta
            .p2p_nodes(now)
            .await
            .map_err(fail)?
            .into_iter()
            .filter_map(|(a, name, port)| {
                Some(Peer {
                    node: name,
                    addr: SocketAddr::new(a.parse().ok()?, port),
                })
            })
            .collect();
        let mut blobs: Vec<BlobHolders> = Vec::new();
        for h in self.meta.p2p_holders(None, now).await.map_err(fail)? {
            let Ok(addr) = h.addr.parse() else { continue };
            let peer = Peer { node: h.node, addr };
            match blobs.last_mut() {
                Some(b) if b.digest == h.digest => b.holders.push(peer),
                _ => blobs.push(BlobHolders {
                    digest: h.digest,
                    holders: vec![peer],
                }),
            }
        }
        Ok(Status {
            nodes,
            blobs,
            authorized_pulls: self.meta.p2p_pull_count(now).await.map_err(fail)?,
        })
    }
}

/// A ticket's claims before verification, only to learn which digest to verify it for.
fn peek_claims(t: &str) -> Option<TicketClaims> {
    use base64::Engine as _;
    let (body, _) = t.split_once('.')?;
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    serde_json::from_slice(&body).ok()
}
