//! The configuration file (`berth.toml`). Every field has a default, so no file is needed.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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
    pub limits: LimitsConfig,
    pub uploads: UploadsConfig,
    pub log: LogConfig,
    pub security: SecurityConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    /// Accept an index whose child manifests are not in the repository.
    pub allow_sparse_index: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./berth-data"),
            public_url: None,
            metadata: MetadataConfig::default(),
            limits: LimitsConfig::default(),
            uploads: UploadsConfig::default(),
            log: LogConfig::default(),
            security: SecurityConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            allow_sparse_index: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `sqlite:PATH` or `postgres://user:pass@host/db`. Default: `sqlite:<data_dir>/berth.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted (bytes); larger gets 413.
    pub max_manifest_bytes: u64,
    /// Largest blob accepted (bytes); 0 means no limit.
    pub max_blob_bytes: u64,
    /// Seconds a client may take to send its request headers.
    pub header_read_timeout_secs: u64,
    /// Connections served at once.
    pub max_connections: usize,
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
            max_page: 10_000,
        }
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
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl_ms: 2000,
            entries: 10_000,
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
    /// Failed logins per user, and per client address, within `failure_window_secs`
    /// before further attempts get 429 with Retry-After.
    pub max_failures_per_user: u32,
    pub max_failures_per_source: u32,
    pub failure_window_secs: u64,
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
            max_failures_per_user: d.max_failures_per_user,
            max_failures_per_source: d.max_failures_per_source,
            failure_window_secs: d.failure_window.as_secs(),
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
            max_failures_per_user: self.max_failures_per_user.max(1),
            max_failures_per_source: self.max_failures_per_source.max(1),
            failure_window: Duration::from_secs(self.failure_window_secs.max(1)),
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
}

impl Config {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading config {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))
            }
        }
    }

    pub fn metadata_url(&self) -> String {
        match &self.metadata.url {
            Some(u) => u.clone(),
            None => format!("sqlite:{}", self.data_dir.join("berth.db").display()),
        }
    }

    /// Protected mode: anonymous access is only for loopback unless explicitly allowed.
    pub fn check_protected_mode(&self) -> anyhow::Result<()> {
        if self.listen.ip().is_loopback()
            || self.security.allow_anonymous_on_network
            || self.auth.enabled
        {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to serve anonymous push and pull on {}: no authentication is configured.\n\
             Listen on loopback (--listen 127.0.0.1:5000), or, on a network you trust, set\n\
             [security]\nallow_anonymous_on_network = true\nin the config file.",
            self.listen
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let c = Config::load(None).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert!(c.metadata_url().starts_with("sqlite:"));
        assert!(c.check_protected_mode().is_ok());
    }

    #[test]
    fn protected_mode_truth_table() {
        let mut c: Config = toml::from_str(r#"listen = "0.0.0.0:5000""#).expect("parse");
        assert!(c.check_protected_mode().is_err());
        c.security.allow_anonymous_on_network = true;
        assert!(c.check_protected_mode().is_ok());
        let c: Config = toml::from_str(r#"listen = "[::1]:5000""#).expect("parse");
        assert!(c.check_protected_mode().is_ok());
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
}
