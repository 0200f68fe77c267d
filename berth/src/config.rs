//! The configuration file (`berth.toml`). Every field has a default, so no file is needed.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub mod encryption;
pub mod storage;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Where blobs, uploads and the embedded database live.
    pub data_dir: PathBuf,
    /// External URL of the registry (behind an ingress), used in `Location` headers.
    /// Unset: relative locations, which every client resolves against its request URL.
    pub public_url: Option<String>,
    pub metadata: MetadataConfig,
    /// Where blob bytes live (`[storage]`): the data directory, or an S3 bucket.
    pub storage: storage::StorageConfig,
    pub limits: LimitsConfig,
    pub uploads: UploadsConfig,
    pub log: LogConfig,
    pub security: SecurityConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub gc: GcConfig,
    pub audit: AuditConfig,
    /// Accept an index whose child manifests are not in the repository.
    pub allow_sparse_index: bool,
    /// Pull-through upstreams (`[[upstream]]` tables).
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamEntry>,
    /// Push-mirror replication rules (`[[replicate]]` tables).
    #[serde(rename = "replicate")]
    pub replicas: Vec<ReplicaEntry>,
    /// `[[tag_rule]]` tables. Unset: semver tags are immutable everywhere; `tag_rule = []`
    /// turns every rule off.
    pub tag_rule: Option<Vec<berth_registry::TagRuleSpec>>,
    /// `[[retention]]` policies: which tags to keep where.
    pub retention: Vec<berth_registry::retention::RetentionSpec>,
    /// `[[trust]]`: signature trust material per repository glob.
    pub trust: Vec<crate::policy::TrustEntry>,
    /// `[[policy]]`: rules that can refuse a pull.
    pub policy: Vec<berth_registry::policy::RuleSpec>,
    /// `[[vulnerability_policy]]`: rules refusing images with known vulnerabilities.
    pub vulnerability_policy: Vec<crate::vulns::VulnPolicyEntry>,
    /// Webhooks (`[[webhook]]` tables): global, and trusted to call any address.
    #[serde(rename = "webhook")]
    pub webhooks: Vec<berth_registry::events::WebhookSpec>,
    /// Who webhooks set through the API may call, and the pull event queue.
    pub events: crate::events::EventsConfig,
    /// Retries and leases of the job queue.
    pub jobs: crate::events::JobsConfig,
    /// Package catalogs and SBOMs of every image (`[catalog]`).
    pub catalog: crate::sbom::CatalogConfig,
    /// The Kubernetes admission webhooks (`[admission]`, `[[admission.rule]]`).
    pub admission: AdmissionConfig,
    /// The web interface (`[ui]`).
    pub ui: UiSection,
    /// Encryption at rest (`[encryption]`, `[[encryption.key]]`).
    pub encryption: encryption::EncryptionConfig,
    /// Node-local sharing (`berth node` agents); off by default.
    pub p2p: crate::p2p::P2pConfig,
}

/// `[ui]`: the web interface under `/ui`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSection {
    /// Host names the interface answers to besides `public_url`'s host, `localhost` and IP
    /// addresses; any other `Host` is refused (DNS rebinding).
    pub hosts: Vec<String>,
    /// How long a login lasts.
    pub session_ttl_secs: u64,
}

impl Default for UiSection {
    fn default() -> Self {
        UiSection {
            hosts: Vec::new(),
            session_ttl_secs: 8 * 3600,
        }
    }
}

/// `[admission]`: the webhooks' listener and certificate, how nodes name Berth, and the
/// rules (`[[admission.rule]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Where the webhooks listen (HTTPS); unset: no webhooks.
    pub listen: Option<SocketAddr>,
    /// The webhook certificate (its CA is the `caBundle` of the webhook configurations).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Berth's registry host as nodes pull from it (`registry.example.com`); default the
    /// host of `public_url`.
    pub registry: Option<String>,
    /// Other names nodes use for the same registry.
    pub aliases: Vec<String>,
    /// How long a pin may wait for a configured upstream, in milliseconds.
    pub upstream_timeout_ms: u64,
    #[serde(rename = "rule")]
    pub rules: Vec<berth_registry::admission::AdmissionRuleSpec>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            listen: None,
            cert_file: None,
            key_file: None,
            registry: None,
            aliases: Vec::new(),
            upstream_timeout_ms: 1500,
            rules: Vec::new(),
        }
    }
}

impl Config {
    /// The admission settings: the registry host defaults to `public_url`'s.
    pub fn admission_settings(&self) -> berth_registry::admission::AdmissionSettings {
        let from_url = self.public_url.as_deref().and_then(|u| {
            let rest = u.split_once("://").map_or(u, |(_, r)| r);
            let host = rest.split('/').next()?;
            (!host.is_empty()).then(|| host.to_owned())
        });
        berth_registry::admission::AdmissionSettings {
            registry: self.admission.registry.clone().or(from_url),
            aliases: self.admission.aliases.clone(),
            upstream_timeout: std::time::Duration::from_millis(
                self.admission.upstream_timeout_ms.max(1),
            ),
        }
    }

    /// The webhooks' TLS pair: the API server calls webhooks over HTTPS only.
    pub fn admission_tls(&self) -> anyhow::Result<Option<berth_server::TlsSettings>> {
        if self.admission.listen.is_none() {
            return Ok(None);
        }
        match (&self.admission.cert_file, &self.admission.key_file) {
            (Some(cert), Some(key)) => Ok(Some(berth_server::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                reload_interval: std::time::Duration::from_secs(
                    self.tls.reload_interval_secs.max(1),
                ),
            })),
            _ if self.admission.listen.is_some_and(|l| l.ip().is_loopback()) => Ok(None),
            _ => anyhow::bail!(
                "[admission] listen is set but cert_file and key_file are not: the Kubernetes \
                 API server calls webhooks over HTTPS only (plain HTTP is allowed on loopback)"
            ),
        }
    }
}

/// One `[[replicate]]` rule: pushes to matching repositories are copied to `url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// Glob over full repository names: `team-a/*`, `*`.
    pub repositories: String,
    /// The target registry (`https://backup.example:5000`).
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates trusted for the target besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Prepended to repository names on the target.
    #[serde(default)]
    pub prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./berth-data"),
            public_url: None,
            metadata: MetadataConfig::default(),
            storage: storage::StorageConfig::default(),
            limits: LimitsConfig::default(),
            uploads: UploadsConfig::default(),
            log: LogConfig::default(),
            security: SecurityConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            gc: GcConfig::default(),
            audit: AuditConfig::default(),
            allow_sparse_index: false,
            upstreams: Vec::new(),
            replicas: Vec::new(),
            tag_rule: None,
            retention: Vec::new(),
            trust: Vec::new(),
            policy: Vec::new(),
            vulnerability_policy: Vec::new(),
            webhooks: Vec::new(),
            events: crate::events::EventsConfig::default(),
            jobs: crate::events::JobsConfig::default(),
            catalog: crate::sbom::CatalogConfig::default(),
            admission: AdmissionConfig::default(),
            ui: UiSection::default(),
            encryption: encryption::EncryptionConfig::default(),
            p2p: crate::p2p::P2pConfig::default(),
        }
    }
}

/// One pull-through upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// The registry host clients use (`docker.io`): repositories named `docker.io/...`
    /// and mirror requests with `?ns=docker.io` are served from this upstream.
    pub name: String,
    /// The URL actually contacted. Default: `https://<name>`, and for `docker.io`
    /// `https://registry-1.docker.io`.
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Seconds a tag fetched from the upstream is served before it is checked again.
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl_secs: u64,
    /// Seconds an upstream "not found" (manifest, tag or blob) is believed without asking
    /// again; 0 asks every time.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl_secs: u64,
    /// PEM file of CA certificates trusted for this upstream besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for a connection, and for each read, before the upstream counts as
    /// unavailable (and cached content is served instead).
    #[serde(default = "default_upstream_timeout")]
    pub timeout_secs: u64,
    /// Globs over upstream-relative names (`library/*`) this upstream serves; unset: all.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Keep what is fetched (the default); false: pass requests through, store nothing.
    #[serde(default = "yes")]
    pub cache: bool,
    /// With `[auth] enabled`: who may pull through this upstream's cache.
    #[serde(default)]
    pub pull: CachePullConfig,
    /// Cached manifests neither fetched nor pulled for this many days are evicted (by
    /// `berth retention` and the `[gc]` schedule). Unset: kept.
    pub evict_after_days: Option<u64>,
    /// Past this many bytes, the least recently pulled cached manifests are evicted until
    /// the cache fits. Unset: no limit.
    pub max_bytes: Option<u64>,
}

/// `pull` of an `[[upstream]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePullConfig {
    /// Anyone, without credentials.
    Anonymous,
    /// Any logged-in user or robot.
    #[default]
    Authenticated,
    /// Members of the tenant named after the upstream, and admins.
    Members,
}

impl From<CachePullConfig> for berth_auth::policy::CachePull {
    fn from(p: CachePullConfig) -> Self {
        match p {
            CachePullConfig::Anonymous => berth_auth::policy::CachePull::Anonymous,
            CachePullConfig::Authenticated => berth_auth::policy::CachePull::Authenticated,
            CachePullConfig::Members => berth_auth::policy::CachePull::Members,
        }
    }
}

fn default_tag_ttl() -> u64 {
    300
}

fn yes() -> bool {
    true
}

fn default_upstream_timeout() -> u64 {
    30
}

fn default_negative_ttl() -> u64 {
    30
}

impl Config {
    /// Upstream names are the first component of the cached repositories and the names
    /// of their tenants, so they must be valid as both, and distinct.
    pub fn check_upstreams(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            let (host, port) = match u.name.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (u.name.as_str(), None),
            };
            let port_ok =
                port.is_none_or(|p| !p.starts_with('0') && p.parse::<u16>().is_ok_and(|n| n > 0));
            if !berth_auth::valid_name(host) || host.contains('_') || !port_ok {
                anyhow::bail!(
                    "[[upstream]] name {:?} is invalid: a registry host as clients name it, \
                     with its port if it has one (lowercase letters, digits, and . - between \
                     them; `registry.internal:5000`)",
                    u.name
                );
            }
            if !seen.insert(u.prefix()) {
                anyhow::bail!("[[upstream]] name {:?} appears twice", u.name);
            }
            if u.password.is_some() && u.username.is_none() {
                anyhow::bail!("[[upstream]] {}: password without username", u.name);
            }
        }
        Ok(())
    }

    /// The access settings, including the tenants of the pull-through caches.
    pub fn access_config(&self) -> berth_registry::access::AccessConfig {
        berth_registry::access::AccessConfig {
            cache_tenants: self
                .upstreams
                .iter()
                .map(|u| (u.prefix(), u.pull.into()))
                .collect(),
            ..self.auth.access_config()
        }
    }
}

impl UpstreamEntry {
    /// Where its cache lives: the first component of the cached repositories and the name
    /// of their tenant (`registry.internal:5000` → `registry.internal_5000`).
    pub fn prefix(&self) -> String {
        berth_registry::upstream_prefix(&self.name)
    }

    pub fn url(&self) -> String {
        match (&self.url, self.name.as_str()) {
            (Some(u), _) => u.clone(),
            (None, "docker.io") => "https://registry-1.docker.io".to_owned(),
            (None, host) => format!("https://{host}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `sqlite:PATH` or `postgres://user:pass@host/db`. Default: `sqlite:<data_dir>/berth.db`.
    pub url: Option<String>,
    /// PostgreSQL: milliseconds a request waits for a database connection, opening one
    /// included, before it is answered 503 `UNAVAILABLE`.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL: `statement_timeout` of every connection, in milliseconds (0: none).
    pub statement_timeout_ms: u64,
    /// PostgreSQL: connections per replica at most.
    pub max_connections: u32,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        let d = berth_meta::PoolSettings::default();
        MetadataConfig {
            url: None,
            acquire_timeout_ms: d.acquire_timeout.as_millis() as u64,
            statement_timeout_ms: d.statement_timeout.as_millis() as u64,
            max_connections: d.max_connections,
        }
    }
}

impl MetadataConfig {
    pub fn pool_settings(&self) -> berth_meta::PoolSettings {
        berth_meta::PoolSettings {
            acquire_timeout: std::time::Duration::from_millis(self.acquire_timeout_ms.max(1)),
            statement_timeout: std::time::Duration::from_millis(self.statement_timeout_ms),
            max_connections: self.max_connections.max(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted (bytes); larger gets 413.
    pub max_manifest_bytes: u64,
    /// Largest blob accepted (bytes); 0 means no limit.
    pub max_blob_bytes: u64,
    /// Seconds a client may take to send its request headers; also the deadline for a
    /// TLS handshake and, on a new connection, for its first request.
    pub header_read_timeout_secs: u64,
    /// Connections open at once (per replica). At the limit a new connection evicts the
    /// one idle the longest; it is refused only when every connection is busy.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64), per replica;
    /// `[security] trusted_proxies` are exempt. 0: no cap.
    pub max_connections_per_client: usize,
    /// Seconds a connection may stay open with no request in flight (HTTP/2: no open
    /// stream) before it is closed. HTTP/1 keep-alive closes sooner, at
    /// `header_read_timeout_secs`.
    pub idle_timeout_secs: u64,
    /// Seconds a client may go without reading any of a response, or without sending any
    /// of an upload's body, before the request is cut off. A slow client that keeps making
    /// progress is never cut off.
    pub stall_timeout_secs: u64,
    /// Most entries per tags or catalog page.
    pub max_page: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 0,
            header_read_timeout_secs: 10,
            max_connections: 4096,
            max_connections_per_client: 256,
            idle_timeout_secs: 60,
            stall_timeout_secs: 60,
            max_page: 10_000,
        }
    }
}

/// Garbage collection (`[gc]`), for `berth gc` and the schedule inside `berth serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Seconds new content (and content a tag just left) is kept whatever else holds.
    pub grace_secs: u64,
    /// Seconds the tag history keeps the digests it names alive, so a rollback within
    /// this window always finds its target.
    pub rollback_window_secs: u64,
    /// Seconds between collections inside `berth serve`; 0 (the default) runs none. With
    /// several replicas, one at a time collects (a lease in the metadata store).
    pub interval_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace_secs: 3600,
            rollback_window_secs: 7 * 24 * 3600,
            interval_secs: 0,
        }
    }
}

impl GcConfig {
    pub fn options(&self, dry_run: bool) -> berth_registry::gc::GcOptions {
        berth_registry::gc::GcOptions {
            dry_run,
            grace: std::time::Duration::from_secs(self.grace_secs),
            rollback_window: std::time::Duration::from_secs(self.rollback_window_secs),
        }
    }
}

/// The audit log (`[audit]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Rows older than this many days are deleted (hourly inside `berth serve`, and by
    /// `berth audit --prune`); 0 keeps them forever.
    pub keep_days: u64,
    /// Refused requests and failed logins are summed per client address over this many
    /// seconds and written as one row (a lone refusal stays a row of its own).
    pub refusal_window_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            keep_days: 90,
            refusal_window_secs: 10,
        }
    }
}

impl AuditConfig {
    /// How long rows are kept, if they are pruned at all.
    pub fn keep(&self) -> Option<std::time::Duration> {
        (self.keep_days > 0)
            .then(|| std::time::Duration::from_secs(self.keep_days.saturating_mul(86_400)))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Unfinished uploads untouched this long (seconds) are removed.
    pub ttl_secs: u64,
    /// How often (seconds) to look for them.
    pub purge_interval_secs: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            ttl_secs: 24 * 3600,
            purge_interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Milliseconds a cached tag, manifest or blob link is served without asking the
    /// metadata store. Writes through this replica invalidate at once; the TTL bounds how
    /// long another replica's change can go unseen. 0 turns the cache off.
    pub ttl_ms: u64,
    /// Entries kept in each of the three caches.
    pub entries: usize,
    /// Seconds a tag, manifest or blob link read from the metadata store may still be
    /// served (manifests with a `Warning`) while the store is unreachable; also how long
    /// `/readyz` stays ready (degraded) during an outage. 0: never serve stale.
    pub stale_on_error_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl_ms: 2000,
            entries: 10_000,
            stale_on_error_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Challenge {
    Bearer,
    Basic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require credentials (users, robots, tenants). Off: anonymous push and pull, which
    /// protected mode allows on loopback only.
    pub enabled: bool,
    /// How 401s ask clients to log in: `bearer` (the Docker token flow; tokens from
    /// `/token`) or `basic` (HTTP Basic on every request).
    pub challenge: Challenge,
    /// The token `service` (and audience).
    pub service: String,
    /// Lifetime of access tokens, seconds (at least 60).
    pub token_ttl_secs: u64,
    /// Lifetime of refresh tokens (`offline_token`), seconds.
    pub refresh_ttl_secs: u64,
    /// How long a verified password is remembered, seconds.
    pub login_cache_secs: u64,
    /// Failed logins of one user from one client address (an IPv6 /64 counts as one)
    /// before that pair's attempts are delayed: 250 ms, doubling with each further failure
    /// up to `max_login_delay_ms`. Delayed, never refused: a correct password gets in.
    /// (`max_failures_per_user`, its name before delays replaced lockouts, is accepted.)
    #[serde(alias = "max_failures_per_user")]
    pub failures_before_delay: u32,
    /// Failed logins from one client address, whatever the user, before its attempts are
    /// delayed the same way (against password spraying). (Formerly
    /// `max_failures_per_source`.)
    #[serde(alias = "max_failures_per_source")]
    pub source_failures_before_delay: u32,
    /// The longest login delay, milliseconds.
    pub max_login_delay_ms: u64,
    /// Failures are forgotten this long after the last one, seconds.
    pub failure_window_secs: u64,
    /// Threads that check passwords (argon2); at most this many checks run at once.
    /// Default: half the cores, at least one, so a login flood leaves the rest to pulls.
    pub password_check_threads: usize,
    /// Password checks from clients without recent failures that may wait for a thread;
    /// past that, the one waiting longest is answered 503. Clients with recent failures
    /// wait in a queue a quarter this long, past which newcomers get 503 at once.
    pub password_check_queue: usize,
    /// A file holding the token signing key (at least 32 bytes). Unset: a key generated
    /// at first start and kept in the metadata store, shared by replicas.
    pub signing_key_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let d = berth_registry::access::AccessConfig::default();
        AuthConfig {
            enabled: false,
            challenge: Challenge::Bearer,
            service: d.service,
            token_ttl_secs: d.token_ttl.as_secs(),
            refresh_ttl_secs: d.refresh_ttl.as_secs(),
            login_cache_secs: d.login_cache_ttl.as_secs(),
            failures_before_delay: d.failures_before_delay,
            source_failures_before_delay: d.source_failures_before_delay,
            max_login_delay_ms: u64::try_from(d.max_login_delay.as_millis()).unwrap_or(u64::MAX),
            failure_window_secs: d.failure_window.as_secs(),
            password_check_threads: d.password_threads,
            password_check_queue: d.password_queue,
            signing_key_file: None,
        }
    }
}

impl AuthConfig {
    pub fn access_config(&self) -> berth_registry::access::AccessConfig {
        use std::time::Duration;
        berth_registry::access::AccessConfig {
            service: self.service.clone(),
            issuer: self.service.clone(),
            // The token spec's minimum lifetime.
            token_ttl: Duration::from_secs(self.token_ttl_secs.max(60)),
            refresh_ttl: Duration::from_secs(self.refresh_ttl_secs.max(60)),
            login_cache_ttl: Duration::from_secs(self.login_cache_secs),
            failures_before_delay: self.failures_before_delay,
            source_failures_before_delay: self.source_failures_before_delay,
            max_login_delay: Duration::from_millis(self.max_login_delay_ms),
            failure_window: Duration::from_secs(self.failure_window_secs.max(1)),
            password_threads: self.password_check_threads.max(1),
            password_queue: self.password_check_queue.max(1),
            // Filled from the `[[upstream]]` tables by `Config::access_config`.
            cache_tenants: Vec::new(),
            // The keyring is read (from its files) where the registry is opened.
            encryption: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `berth_server=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Allow anonymous push and pull on a non-loopback address. Off by default: Berth then
    /// refuses to start there until authentication is configured.
    pub allow_anonymous_on_network: bool,
    /// Serve plain HTTP with authentication on a non-loopback address: for TLS terminated
    /// in front of Berth (an ingress). Off by default: credentials would otherwise travel in
    /// clear text.
    pub allow_insecure_http: bool,
    /// Proxies (addresses or networks: `10.0.0.0/8`, `fd00::/8`) in front of Berth whose
    /// `X-Forwarded-For` is believed: the client is the rightmost entry that is not one of
    /// them. Empty (the default): the connection's peer is the client and the header is
    /// ignored, since any client can send it.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key_file`, Berth serves HTTPS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// How often (seconds) to look for a renewed certificate and key.
    pub reload_interval_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            reload_interval_secs: 10,
        }
    }
}

/// How the server faces the network, as protected mode decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Bound to loopback: only this machine can connect.
    Loopback,
    /// On the network with Berth's own TLS.
    Https,
    /// On the network in plain HTTP with authentication, TLS terminated in front
    /// (`allow_insecure_http`).
    InsecureHttp,
    /// On the network, anonymous, by choice (`allow_anonymous_on_network`).
    Anonymous,
    /// On the network without authentication, not allowed: refuses to start.
    RefusedAnonymous,
    /// On the network with authentication but neither TLS nor `allow_insecure_http`:
    /// refuses to start.
    RefusedCleartext,
}

impl Exposure {
    /// The startup log line.
    pub fn describe(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Exposure::Loopback, true) => "serving HTTPS on loopback",
            (Exposure::Loopback, false) => "serving plain HTTP on loopback",
            (Exposure::Https, _) => "serving HTTPS",
            (Exposure::InsecureHttp, _) => {
                "plain HTTP: TLS is terminated in front of Berth (allow_insecure_http)"
            }
            (Exposure::Anonymous, true) => {
                "serving HTTPS: anonymous push and pull from the network (allow_anonymous_on_network)"
            }
            (Exposure::Anonymous, false) => {
                "serving plain HTTP: anonymous push and pull from the network (allow_anonymous_on_network)"
            }
            (Exposure::RefusedAnonymous | Exposure::RefusedCleartext, _) => {
                "refused by protected mode"
            }
        }
    }
}

impl Config {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading config {}: {e}", p.display()))?;
                let config: Config = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?;
                config
                    .tag_rules()
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?;
                config
                    .trusted_proxies()
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?;
                Ok(config)
            }
        }
    }

    /// The keyring of `[encryption]` (read from its files and variables), `None` when
    /// encryption is off; refuses settings that cannot go with it.
    pub fn keyring(&self) -> anyhow::Result<Option<std::sync::Arc<berth_storage::seal::Keyring>>> {
        let ring = self.encryption.keyring(&|k| std::env::var(k).ok())?;
        if ring.is_some() && self.storage.redirect_blob_gets {
            anyhow::bail!(
                "[storage] redirect_blob_gets = true cannot be used with [encryption]: the bucket holds only ciphertext, so clients must get blobs through Berth"
            );
        }
        Ok(ring)
    }

    /// The tag rules in force: the configured ones, or semver immutability everywhere.
    pub fn tag_rules(&self) -> anyhow::Result<berth_registry::TagRules> {
        let specs = match &self.tag_rule {
            Some(rules) => rules.clone(),
            None => vec![berth_registry::TagRuleSpec::semver_everywhere()],
        };
        Ok(berth_registry::TagRules::new(specs)?)
    }

    pub fn retention(&self) -> anyhow::Result<berth_registry::retention::RetentionPolicies> {
        Ok(berth_registry::retention::RetentionPolicies::new(
            self.retention.clone(),
        )?)
    }

    /// The retention policies and cache eviction limits, as `berth retention` and the
    /// `[gc]` schedule apply them.
    pub fn housekeeping(&self) -> anyhow::Result<berth_registry::retention::Housekeeping> {
        Ok(berth_registry::retention::Housekeeping {
            policies: self.retention()?,
            cache_limits: self.cache_limits(),
        })
    }

    /// Each upstream with eviction limits, and its limits.
    pub fn cache_limits(&self) -> Vec<(String, berth_registry::retention::CacheLimits)> {
        self.upstreams
            .iter()
            .filter(|u| u.evict_after_days.is_some() || u.max_bytes.is_some())
            .map(|u| {
                (
                    u.prefix(),
                    berth_registry::retention::CacheLimits {
                        max_age: u
                            .evict_after_days
                            .map(|d| std::time::Duration::from_secs(d.saturating_mul(86_400))),
                        max_bytes: u.max_bytes,
                    },
                )
            })
            .collect()
    }

    pub fn metadata_url(&self) -> String {
        match &self.metadata.url {
            Some(u) => u.clone(),
            None => format!("sqlite:{}", self.data_dir.join("berth.db").display()),
        }
    }

    /// `[security] trusted_proxies`, checked.
    pub fn trusted_proxies(&self) -> anyhow::Result<berth_server::client::TrustedProxies> {
        berth_server::client::TrustedProxies::parse(&self.security.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("[security] trusted_proxies: {e}"))
    }

    /// The certificate and key to serve HTTPS with, if both are set.
    pub fn tls_settings(&self) -> anyhow::Result<Option<berth_server::TlsSettings>> {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => Ok(Some(berth_server::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                reload_interval: std::time::Duration::from_secs(
                    self.tls.reload_interval_secs.max(1),
                ),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!(
                "[tls] cert_file is set but key_file is not: set both (or --tls-cert and \
                 --tls-key), or neither for plain HTTP"
            ),
            (None, Some(_)) => anyhow::bail!(
                "[tls] key_file is set but cert_file is not: set both (or --tls-cert and \
                 --tls-key), or neither for plain HTTP"
            ),
        }
    }

    /// Which row of the protected-mode table this configuration falls in.
    pub fn exposure(&self, auth_enabled: bool) -> Exposure {
        let tls = self.tls.cert_file.is_some() && self.tls.key_file.is_some();
        if self.listen.ip().is_loopback() {
            Exposure::Loopback
        } else if !auth_enabled {
            if self.security.allow_anonymous_on_network {
                Exposure::Anonymous
            } else {
                Exposure::RefusedAnonymous
            }
        } else if tls {
            Exposure::Https
        } else if self.security.allow_insecure_http {
            Exposure::InsecureHttp
        } else {
            Exposure::RefusedCleartext
        }
    }

    /// Protected mode: on a network address, anonymous access only when explicitly allowed,
    /// and credentials only over TLS unless TLS is explicitly said to end in front of Berth.
    /// Loopback always starts: nothing leaves the machine.
    pub fn check_protected_mode(&self, auth_enabled: bool) -> anyhow::Result<()> {
        match self.exposure(auth_enabled) {
            Exposure::RefusedAnonymous => anyhow::bail!(
                "refusing to serve anonymous push and pull on {}: no authentication is configured.\n\
                 Listen on loopback (--listen 127.0.0.1:5000), or, on a network you trust, set\n\
                 [security]\nallow_anonymous_on_network = true\nin the config file.",
                self.listen
            ),
            Exposure::RefusedCleartext => anyhow::bail!(
                "refusing to accept credentials over plain HTTP on {}: TLS is not configured, so\n\
                 passwords and tokens would cross the network in clear text.\n\
                 Configure TLS (--tls-cert FILE --tls-key FILE, or [tls] cert_file and key_file),\n\
                 or, if TLS is terminated in front of Berth (an ingress), set\n\
                 [security]\nallow_insecure_http = true\nin the config file.",
                self.listen
            ),
            Exposure::Loopback | Exposure::Https | Exposure::InsecureHttp | Exposure::Anonymous => {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_rules_default_to_semver_and_are_checked() {
        let c = Config::load(None).expect("defaults");
        let rules = c.tag_rules().expect("rules");
        assert_eq!(
            rules.immutable("a/b", "v1.2.3").as_deref(),
            Some("* semver")
        );
        assert_eq!(rules.immutable("a/b", "latest"), None);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "[[tag_rule]]\nrepositories = \"team-a/*\"\nimmutable = [\"semver\", \"[0-9]*.[0-9]*\"]\nrefuse = [\"latest\"]\n",
        )
        .expect("write");
        let rules = Config::load(Some(&path))
            .expect("valid")
            .tag_rules()
            .expect("rules");
        assert!(
            rules.immutable("team-b/x", "1.2.3").is_none(),
            "the default is replaced"
        );
        assert!(rules.refusal("team-a/x", "latest").is_some());

        std::fs::write(&path, "tag_rule = []\n").expect("write");
        let rules = Config::load(Some(&path))
            .expect("valid")
            .tag_rules()
            .expect("rules");
        assert!(rules.immutable("a", "1.2.3").is_none(), "all rules off");

        for bad in [
            "[[tag_rule]]\nrepositories = \"*\"\nimmutable = [\"[0-9\"]\n",
            "[[tag_rule]]\nrepositories = \"*\"\nimmutables = [\"x\"]\n",
            "[[tag_rule]]\nimmutable = [\"x\"]\n",
        ] {
            std::fs::write(&path, bad).expect("write");
            assert!(Config::load(Some(&path)).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let c = Config::load(None).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert!(c.metadata_url().starts_with("sqlite:"));
        assert!(c.check_protected_mode(false).is_ok());
        assert!(c.tls_settings().expect("no tls").is_none());
    }

    /// Every cell of the README's protected-mode table, written out rather than computed,
    /// so a change to the rules has to change this table too.
    #[test]
    fn protected_mode_truth_table() {
        use Exposure::{Anonymous as Anon, Https, InsecureHttp as Insecure, Loopback as Lo};
        const NET: bool = true;
        const LO: bool = false;
        // Refusals name the setting that fixes them.
        const ANON_KEY: &str = "allow_anonymous_on_network";
        const HTTP_KEY: &str = "allow_insecure_http";
        /// network, auth, tls, allow_insecure_http, allow_anonymous_on_network, result
        type Cell = (bool, bool, bool, bool, bool, Result<Exposure, &'static str>);
        #[rustfmt::skip]
        let table: [Cell; 32] = [
            // network, auth,  tls,   insecure_http, anonymous, result
            (LO,  false, false, false, false, Ok(Lo)),
            (LO,  false, false, false, true,  Ok(Lo)),
            (LO,  false, false, true,  false, Ok(Lo)),
            (LO,  false, false, true,  true,  Ok(Lo)),
            (LO,  false, true,  false, false, Ok(Lo)),
            (LO,  false, true,  false, true,  Ok(Lo)),
            (LO,  false, true,  true,  false, Ok(Lo)),
            (LO,  false, true,  true,  true,  Ok(Lo)),
            (LO,  true,  false, false, false, Ok(Lo)),
            (LO,  true,  false, false, true,  Ok(Lo)),
            (LO,  true,  false, true,  false, Ok(Lo)),
            (LO,  true,  false, true,  true,  Ok(Lo)),
            (LO,  true,  true,  false, false, Ok(Lo)),
            (LO,  true,  true,  false, true,  Ok(Lo)),
            (LO,  true,  true,  true,  false, Ok(Lo)),
            (LO,  true,  true,  true,  true,  Ok(Lo)),
            (NET, false, false, false, false, Err(ANON_KEY)),
            (NET, false, false, false, true,  Ok(Anon)),
            (NET, false, false, true,  false, Err(ANON_KEY)),
            (NET, false, false, true,  true,  Ok(Anon)),
            (NET, false, true,  false, false, Err(ANON_KEY)),
            (NET, false, true,  false, true,  Ok(Anon)),
            (NET, false, true,  true,  false, Err(ANON_KEY)),
            (NET, false, true,  true,  true,  Ok(Anon)),
            (NET, true,  false, false, false, Err(HTTP_KEY)),
            (NET, true,  false, false, true,  Err(HTTP_KEY)),
            (NET, true,  false, true,  false, Ok(Insecure)),
            (NET, true,  false, true,  true,  Ok(Insecure)),
            (NET, true,  true,  false, false, Ok(Https)),
            (NET, true,  true,  false, true,  Ok(Https)),
            (NET, true,  true,  true,  false, Ok(Https)),
            (NET, true,  true,  true,  true,  Ok(Https)),
        ];
        for (network, auth, tls, insecure_http, anonymous, expected) in table {
            for listen in if network {
                ["0.0.0.0:5000", "[::]:5000", "192.0.2.7:5000"]
            } else {
                ["127.0.0.1:5000", "[::1]:5000", "127.0.0.2:5000"]
            } {
                let mut c = Config {
                    listen: listen.parse().expect("address"),
                    ..Config::default()
                };
                if tls {
                    c.tls.cert_file = Some("/etc/berth/tls.crt".into());
                    c.tls.key_file = Some("/etc/berth/tls.key".into());
                }
                c.security.allow_insecure_http = insecure_http;
                c.security.allow_anonymous_on_network = anonymous;
                let cell = format!(
                    "listen={listen} auth={auth} tls={tls} allow_insecure_http={insecure_http} \
                     allow_anonymous_on_network={anonymous}"
                );
                match (c.check_protected_mode(auth), expected) {
                    (Ok(()), Ok(want)) => assert_eq!(c.exposure(auth), want, "{cell}"),
                    (Err(e), Err(key)) => {
                        let msg = e.to_string();
                        assert!(msg.contains(key), "{cell}: message lacks {key}: {msg}");
                        assert!(
                            msg.contains(listen),
                            "{cell}: message lacks the address: {msg}"
                        );
                    }
                    (got, want) => panic!(
                        "{cell}: got {got:?} ({:?}), want {want:?}",
                        c.exposure(auth)
                    ),
                }
            }
        }
    }

    #[test]
    fn tls_needs_both_files() {
        let c: Config = toml::from_str(
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nreload_interval_secs = 3",
        )
        .expect("parse");
        let t = c.tls_settings().expect("both set").expect("tls on");
        assert_eq!(t.cert, PathBuf::from("/c.pem"));
        assert_eq!(t.key, PathBuf::from("/k.pem"));
        assert_eq!(t.reload_interval, std::time::Duration::from_secs(3));
        let c: Config = toml::from_str("[tls]\ncert_file = \"/c.pem\"").expect("parse");
        let e = c.tls_settings().expect_err("key missing").to_string();
        assert!(e.contains("key_file"), "{e}");
        let c: Config = toml::from_str("[tls]\nkey_file = \"/k.pem\"").expect("parse");
        let e = c.tls_settings().expect_err("cert missing").to_string();
        assert!(e.contains("cert_file"), "{e}");
        assert!(toml::from_str::<Config>("[tls]\ncert = \"/c.pem\"").is_err());
        let c: Config = toml::from_str("[security]\nallow_insecure_http = true").expect("parse");
        assert!(c.security.allow_insecure_http);
    }

    #[test]
    fn upstreams() {
        let c: Config = toml::from_str(
            "[[upstream]]\nname = \"docker.io\"\n\n[[upstream]]\nname = \"ghcr.io\"\n\
             url = \"http://127.0.0.1:5001\"\nusername = \"u\"\npassword = \"p\"\ntag_ttl_secs = 5",
        )
        .expect("parse");
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.upstreams[0].url(), "https://registry-1.docker.io");
        assert_eq!(c.upstreams[0].tag_ttl_secs, 300);
        assert_eq!(c.upstreams[1].url(), "http://127.0.0.1:5001");
        assert_eq!(c.upstreams[1].username.as_deref(), Some("u"));
        assert_eq!(c.upstreams[0].negative_ttl_secs, 30);
        assert_eq!(c.upstreams[0].timeout_secs, 30);
        assert_eq!(c.upstreams[0].pull, CachePullConfig::Authenticated);
        assert!(c.check_upstreams().is_ok());
        let c: Config = toml::from_str(
            "[[upstream]]\nname = \"quay.io\"\npull = \"anonymous\"\nnegative_ttl_secs = 0\n\
             ca_file = \"/etc/ca.pem\"",
        )
        .expect("parse");
        assert_eq!(c.upstreams[0].pull, CachePullConfig::Anonymous);
        assert_eq!(c.upstreams[0].negative_ttl_secs, 0);
        assert_eq!(
            c.upstreams[0].ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(
            toml::from_str::<Config>("[[upstream]]\nname = \"x\"\npull = \"everyone\"").is_err()
        );
        for bad in [
            "[[upstream]]\nname = \"Docker.io\"",
            "[[upstream]]\nname = \"localhost:\"",
            "[[upstream]]\nname = \"a\"\n[[upstream]]\nname = \"a\"",
            "[[upstream]]\nname = \"a\"\npassword = \"p\"",
        ] {
            let c: Config = toml::from_str(bad).expect("parse");
            assert!(c.check_upstreams().is_err(), "{bad}");
        }
        assert!(toml::from_str::<Config>("[[upstream]]\nname = \"x\"\nttl = 1").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("listn = \"x\"").is_err());
        let c: Config =
            toml::from_str("[limits]\nmax_manifest_bytes = 10\n[log]\nformat = \"json\"")
                .expect("parse");
        assert_eq!(c.limits.max_manifest_bytes, 10);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn upstream_names_may_carry_a_port() {
        let config = |names: &[&str]| Config {
            upstreams: names
                .iter()
                .map(|n| toml::from_str::<UpstreamEntry>(&format!("name = {n:?}")).expect("entry"))
                .collect(),
            ..Config::default()
        };
        let ok = config(&["docker.io", "registry.internal:5000", "127.0.0.1:5001"]);
        ok.check_upstreams().expect("valid");
        let prefixes: Vec<String> = ok.upstreams.iter().map(UpstreamEntry::prefix).collect();
        assert_eq!(
            prefixes,
            ["docker.io", "registry.internal_5000", "127.0.0.1_5001"]
        );
        assert_eq!(ok.upstreams[1].url(), "https://registry.internal:5000");
        let tenants: Vec<String> = ok
            .access_config()
            .cache_tenants
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(tenants, prefixes, "the tenants are the prefixes");
        for bad in [
            "registry.internal:",
            "registry.internal:0",
            "registry.internal:65536",
            "registry.internal:05000",
            "registry.internal:50x",
            "Registry.internal",
            "registry_internal",
            ":5000",
            "a:1:2",
        ] {
            assert!(config(&[bad]).check_upstreams().is_err(), "{bad}");
        }
        assert!(
            config(&["host:5000", "host:5000"])
                .check_upstreams()
                .is_err()
        );
    }

    #[test]
    fn login_limits_keep_their_old_names() {
        let old: Config =
            toml::from_str("[auth]\nmax_failures_per_user = 7\nmax_failures_per_source = 9")
                .expect("old names");
        let a = old.auth.access_config();
        assert_eq!(
            (a.failures_before_delay, a.source_failures_before_delay),
            (7, 9)
        );
        let new: Config = toml::from_str(
            "[auth]\nfailures_before_delay = 3\nmax_login_delay_ms = 1500\npassword_check_threads = 2",
        )
        .expect("new names");
        let a = new.auth.access_config();
        assert_eq!(a.failures_before_delay, 3);
        assert_eq!(a.max_login_delay, std::time::Duration::from_millis(1500));
        assert_eq!(a.password_threads, 2);
    }

    #[test]
    fn connection_limits_parse_with_defaults() {
        let c: Config = toml::from_str("").expect("empty");
        assert_eq!(c.limits.max_connections_per_client, 256);
        assert_eq!(c.limits.idle_timeout_secs, 60);
        let c: Config =
            toml::from_str("[limits]\nmax_connections_per_client = 0\nidle_timeout_secs = 5")
                .expect("parse");
        assert_eq!(c.limits.max_connections_per_client, 0);
        assert_eq!(c.limits.idle_timeout_secs, 5);
    }
}
