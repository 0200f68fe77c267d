//! A client for another registry, used by the pull-through cache: manifests (exact bytes,
//! media type, digest), blobs as streams, and the two ways registries authenticate pulls
//! (Basic, and the Docker token flow behind a `WWW-Authenticate: Bearer` challenge).
//!
//! Errors separate "the upstream is not there right now" ([`UpstreamError::Unavailable`])
//! from "the upstream says this does not exist" ([`UpstreamError::NotFound`]), because the
//! cache serves stale content for the first and a miss for the second.

mod push;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use berth_oci::{Algorithm, Digest, Reference};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use sha2::Digest as _;

/// The manifest types asked for; a registry picks one it has.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Pages of a referrers answer followed at most; a subject with more referrers than this
/// many pages hold is not a signed image but a flood.
const MAX_REFERRER_PAGES: usize = 8;

/// Largest manifest accepted from an upstream; a bigger answer is not a manifest.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Tokens without `expires_in` live 60 s per the token spec.
const DEFAULT_TOKEN_SECS: u64 = 60;

/// How long to leave an upstream alone after a 429 that did not say (Docker Hub always
/// says; this is for registries that do not).
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);

/// The longest wait an upstream can impose: a `Retry-After` of a day would otherwise turn
/// one bad answer into a day without refreshes.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, timeout, 5xx or 429: try again later, serve from cache meanwhile.
    #[error("upstream unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// How long the upstream asked us to stay away (a 503's `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The upstream rate-limited us (429), now or earlier and the wait is not over: no
    /// request was sent.
    #[error("upstream is rate limiting: retry in {} s", retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused our credentials: {0}")]
    Unauthorized(String),
    #[error("upstream content has digest {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Anything else the upstream answered that makes no sense for the request.
    #[error("invalid upstream response: {0}")]
    Invalid(String),
    /// The configuration cannot work (bad URL scheme, unreadable CA file).
    #[error("{0}")]
    Config(String),
}

impl UpstreamError {
    /// Worth serving stale content for: the upstream may answer differently later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unavailable { .. } | UpstreamError::Throttled { .. }
        )
    }
}

pub type Result<T, E = UpstreamError> = std::result::Result<T, E>;

/// One upstream as configured.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry host clients use (`docker.io`); the first path component that routes here.
    pub name: String,
    /// Base URL actually contacted (`https://registry-1.docker.io`).
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout for connecting and for headers; bodies may stream longer.
    pub timeout: Duration,
    /// PEM file with CA certificates trusted for this upstream, in addition to the
    /// system's roots (a private registry with its own CA).
    pub ca_file: Option<PathBuf>,
}

impl UpstreamConfig {
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            url: url.into(),
            username: None,
            password: None,
            timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }

    /// Docker Hub's convention: official images live under `library/`.
    pub fn remote_repo(&self, name: &str) -> String {
        if self.name == "docker.io" && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        }
    }
}

/// A manifest as the upstream served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

/// A blob body on its way from the upstream.
pub struct FetchedBlob {
    /// `Content-Length`, when the upstream sent one.
    pub size: Option<u64>,
    pub body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

struct CachedToken {
    token: String,
    expires: Instant,
}

pub struct Upstream {
    config: UpstreamConfig,
    http: reqwest::Client,
    /// Bearer tokens by scope, reused until shortly before they expire.
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// Until when the upstream asked to be left alone, and whether it was a rate limit.
    backoff: Mutex<Option<Backoff>>,
    /// The upstream asked for Basic once: send it up front from then on (a streamed
    /// body cannot be sent twice to answer a challenge).
    basic_seen: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    throttled: bool,
}

/// rustls needs a process-wide crypto provider for clients built by reqwest. Ring, like
/// the server side (see `berth-server`'s `tls`): aws-lc-rs is a large C build.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another caller installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream> {
        // Say so at startup rather than on every pull.
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(UpstreamError::Config(format!(
                "upstream {}: the URL must start with http:// or https://, not {}",
                config.name, config.url
            )));
        }
        ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                UpstreamError::Config(format!(
                    "upstream {}: reading ca_file {}: {e}",
                    config.name,
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                UpstreamError::Config(format!(
                    "upstream {}: ca_file {}: {e}",
                    config.name,
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(UpstreamError::Config(format!(
                    "upstream {}: ca_file {} holds no PEM certificate",
                    config.name,
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| UpstreamError::Config(format!("upstream {}: {e}", config.name)))?;
        Ok(Upstream {
            config,
            http,
            tokens: Mutex::new(HashMap::new()),
            backoff: Mutex::new(None),
            basic_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The error to answer instead of asking, while an earlier `Retry-After` runs.
    fn backing_off(&self) -> Option<UpstreamError> {
        let now = Instant::now();
        let b = (*self.backoff.lock().ok()?)?;
        let left = b.until.checked_duration_since(now)?;
        Some(if b.throttled {
            UpstreamError::Throttled { retry_after: left }
        } else {
            UpstreamError::Unavailable {
                reason: format!("upstream {} asked to wait", self.config.name),
                retry_after: Some(left),
            }
        })
    }

    /// Remembers a 429 (with or without `Retry-After`) or a 503 with `Retry-After`.
    fn note_status(&self, resp: &Response) {
        let status = resp.status();
        let throttled = status == StatusCode::TOO_MANY_REQUESTS;
        let asked = retry_after(resp);
        let wait = match (throttled, asked) {
            (true, Some(d)) => d,
            (true, None) => DEFAULT_BACKOFF,
            (false, Some(d)) if status == StatusCode::SERVICE_UNAVAILABLE => d,
            _ => return,
        }
        .min(MAX_BACKOFF);
        tracing::warn!(
            upstream = %self.config.name,
            %status,
            wait_secs = wait.as_secs(),
            "upstream asked to wait; not contacting it until then"
        );
        if let Ok(mut b) = self.backoff.lock() {
            *b = Some(Backoff {
                until: Instant::now() + wait,
                throttled,
            });
        }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }

    fn token_for(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.token.clone())
    }

    /// Sends a request for pulling, answering one auth challenge if the upstream asks.
    async fn send(&self, method: Method, path: &str, repo: &str, accept: &str) -> Result<Response> {
        self.send_with(method, path, repo, "pull", accept, None)
            .await
    }

    /// The credentials to send before any challenge: a token already fetched for `scope`,
    /// or Basic once the upstream has asked for Basic.
    fn known_auth(&self, scope: &str) -> Option<Auth> {
        if let Some(t) = self.token_for(scope) {
            return Some(Auth::Bearer(t));
        }
        self.basic_seen
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(Auth::Basic)
    }

    fn build(
        &self,
        method: &Method,
        path: &str,
        accept: &str,
        auth: Option<&Auth>,
        body: Option<&(Bytes, String)>,
    ) -> RequestBuilder {
        let mut rb = self
            .http
            .request(method.clone(), self.url(path))
            .header(header::ACCEPT, accept);
        if let Some((bytes, content_type)) = body {
            rb = rb
                .header(header::CONTENT_TYPE, content_type.as_str())
                .body(bytes.clone());
        }
        match auth {
            Some(Auth::Bearer(t)) => rb.bearer_auth(t),
            Some(Auth::Basic) => rb.basic_auth(
                self.config.username.clone().unwrap_or_default(),
                self.config.password.clone(),
            ),
            None => rb,
        }
    }

    /// Sends a request needing `actions` (`pull`, or `pull,push`) on `repo`, with an
    /// optional small body (kept, so the request can be repeated after a challenge).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        actions: &str,
        accept: &str,
        body: Option<(Bytes, String)>,
    ) -> Result<Response> {
        let scope = format!("repository:{repo}:{actions}");
        if let Some(e) = self.backing_off() {
            return Err(e);
        }
        let first = self.known_auth(&scope);
        let resp = self
            .build(&method, path, accept, first.as_ref(), body.as_ref())
            .send()
            .await
            .map_err(unavailable)?;
        self.note_status(&resp);
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let auth = self.answer_challenge(&resp, &scope).await?;
        let resp = self
            .build(&method, path, accept, Some(&auth), body.as_ref())
            .send()
            .await
            .map_err(unavailable)?;
        self.note_status(&resp);
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(UpstreamError::Unauthorized(
                "credentials refused after the challenge".into(),
            ));
        }
        Ok(resp)
    }

    /// Credentials that answer the 401 `resp`, fetching a token for `scope` if needed.
    async fn answer_challenge(&self, resp: &Response, scope: &str) -> Result<Auth> {
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| UpstreamError::Unauthorized("401 without a usable challenge".into()))?;
        Ok(match challenge {
            Challenge::Basic => {
                if self.config.username.is_none() {
                    return Err(UpstreamError::Unauthorized(
                        "Basic credentials required and none configured".into(),
                    ));
                }
                self.basic_seen
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Auth::Basic
            }
            Challenge::Bearer {
                realm,
                service,
                scope: challenged,
            } => {
                // Prefer the scope the upstream named: it knows what it will check.
                let scope_asked = challenged.unwrap_or_else(|| scope.to_owned());
                let token = self
                    .fetch_token(&realm, service.as_deref(), &scope_asked)
                    .await?;
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(scope.to_owned(), token.clone_cached());
                }
                Auth::Bearer(token.token)
            }
        })
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<CachedToken> {
        let sep = if realm.contains('?') { '&' } else { '?' };
        let mut url = format!("{realm}{sep}scope={}", encode(scope));
        if let Some(s) = service {
            url.push_str(&format!("&service={}", encode(s)));
        }
        let mut rb = self.http.get(url);
        if let Some(user) = &self.config.username {
            rb = rb.basic_auth(user, self.config.password.clone());
        }
        let resp = rb.send().await.map_err(unavailable)?;
        self.note_status(&resp);
        let resp = check_status(resp)?;
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| UpstreamError::Invalid(format!("token response: {e}")))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| UpstreamError::Invalid("token response without a token".into()))?
            .to_owned();
        let secs = body
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_TOKEN_SECS);
        // Renew a little early so a token does not expire between check and use.
        let life = Duration::from_secs(secs.saturating_sub(5).max(1));
        Ok(CachedToken {
            token,
            expires: Instant::now() + life,
        })
    }

    /// The digest a tag or digest names upstream, without the body.
    pub async fn head_manifest(&self, repo: &str, reference: &Reference) -> Result<Digest> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(Method::HEAD, &path, repo, ACCEPT_MANIFESTS)
            .await?;
        let resp = check_status(resp)?;
        match reference {
            Reference::Digest(d) => Ok(d.clone()),
            Reference::Tag(_) => resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| UpstreamError::Invalid("HEAD without Docker-Content-Digest".into())),
        }
    }

    /// A manifest's exact bytes; when fetched by digest, verified against it.
    pub async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(Method::GET, &path, repo, ACCEPT_MANIFESTS)
            .await?;
        let resp = check_status(resp)?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let announced: Option<Digest> = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(UpstreamError::Invalid("manifest too large".into()));
        }
        let content = read_capped(resp, MAX_MANIFEST_BYTES).await?;
        // By digest the reference is the truth; by tag the upstream's own header is the
        // claim to check (its algorithm may differ from ours), else we compute SHA-256.
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => announced,
        };
        let digest = match expected {
            Some(expected) => {
                let actual = digest_of(expected.algorithm(), &content);
                if actual != expected {
                    return Err(UpstreamError::DigestMismatch { expected, actual });
                }
                actual
            }
            None => digest_of(Algorithm::Sha256, &content),
        };
        Ok(FetchedManifest {
            digest,
            media_type,
            content,
        })
    }

    /// The digests of the manifests that name `subject` as theirs, by the OCI referrers
    /// API (every page, up to [`MAX_REFERRER_PAGES`]); `None` when the upstream has no
    /// referrers API (a 404, or an answer that is not an image index), so the caller can
    /// try the referrers tag schema instead.
    pub async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Option<Vec<Digest>>> {
        let mut path = format!("/v2/{repo}/referrers/{subject}");
        let mut out = Vec::new();
        for _ in 0..MAX_REFERRER_PAGES {
            let resp = self.send(Method::GET, &path, repo, OCI_INDEX).await?;
            let resp = match check_status(resp) {
                Ok(r) => r,
                Err(UpstreamError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            let is_index = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(';').next().unwrap_or(v).trim() == OCI_INDEX);
            let next = resp
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body = read_capped(resp, MAX_MANIFEST_BYTES).await?;
            if !is_index {
                return Ok(None);
            }
            let Some(digests) = index_digests(&body) else {
                return Ok(None);
            };
            out.extend(digests);
            match next {
                // Only a path on the same upstream: the link is followed with our
                // credentials.
                Some(n) if n.starts_with('/') => path = n,
                _ => return Ok(Some(out)),
            }
        }
        Ok(Some(out))
    }

    /// A blob's size, if the upstream has it.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::HEAD, &path, repo, "*/*").await?;
        let resp = check_status(resp)?;
        Ok(content_length(&resp))
    }

    /// A blob as a stream. The caller verifies the digest (it hashes while storing).
    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<FetchedBlob> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::GET, &path, repo, "*/*").await?;
        let resp = check_status(resp)?;
        let size = content_length(&resp);
        let body = resp.bytes_stream().map(|r| r.map_err(unavailable));
        Ok(FetchedBlob {
            size,
            body: Box::pin(body),
        })
    }
}

enum Auth {
    Bearer(String),
    Basic,
}

impl CachedToken {
    fn clone_cached(&self) -> CachedToken {
        CachedToken {
            token: self.token.clone(),
            expires: self.expires,
        }
    }
}

/// `Content-Length` of the response itself (reqwest's `content_length` is the body's
/// remaining size, which a HEAD response does not have).
fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn unavailable(e: reqwest::Error) -> UpstreamError {
    UpstreamError::Unavailable {
        reason: e.to_string(),
        retry_after: None,
    }
}

/// Maps non-success statuses to errors; passes 2xx through.
fn check_status(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(UpstreamError::NotFound);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(UpstreamError::Throttled {
            retry_after: retry_after(&resp).unwrap_or(DEFAULT_BACKOFF),
        });
    }
    if status.is_server_error() {
        return Err(UpstreamError::Unavailable {
            reason: format!("upstream answered {status}"),
            retry_after: retry_after(&resp),
        });
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(UpstreamError::Unauthorized(format!(
            "upstream answered {status}"
        )));
    }
    Err(UpstreamError::Invalid(format!(
        "upstream answered {status}"
    )))
}

/// `Retry-After` in either form: seconds, or an HTTP date.
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

async fn read_capped(resp: Response, cap: usize) -> Result<Bytes> {
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(unavailable)?;
        if buf.len() + chunk.len() > cap {
            return Err(UpstreamError::Invalid("manifest too large".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The digests an image index lists (`manifests[].digest`), or `None` if `body` is not
/// one. Public for the referrers tag schema, whose tag holds such an index.
pub fn index_digests(body: &[u8]) -> Option<Vec<Digest>> {
    let index: serde_json::Value = serde_json::from_slice(body).ok()?;
    let manifests = match index.get("manifests") {
        None => return Some(Vec::new()),
        Some(m) => m.as_array()?,
    };
    Some(
        manifests
            .iter()
            .filter_map(|d| d.get("digest")?.as_str()?.parse().ok())
            .collect(),
    )
}

/// The target of a `Link: <...>; rel="next"` header.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn digest_of(algorithm: Algorithm, data: &[u8]) -> Digest {
    match algorithm {
        Algorithm::Sha256 => Digest::from_hash(algorithm, &sha2::Sha256::digest(data)),
        Algorithm::Sha512 => Digest::from_hash(algorithm, &sha2::Sha512::digest(data)),
    }
}

/// Parses `Basic realm=".."` or `Bearer realm="..",service="..",scope=".."`.
fn parse_challenge(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    // Values are quoted and scope may itself contain commas
    // (`repository:a:pull,push`), so split on commas outside quotes only.
    let mut key = String::new();
    let mut val = String::new();
    let (mut in_val, mut quoted) = (false, false);
    for c in rest.chars().chain(std::iter::once(',')) {
        match c {
            '"' if in_val => quoted = !quoted,
            '=' if !in_val => in_val = true,
            ',' if !quoted => {
                if !key.trim().is_empty() {
                    params.insert(key.trim().to_ascii_lowercase(), val.clone());
                }
                key.clear();
                val.clear();
                in_val = false;
            }
            c if in_val => val.push(c),
            c => key.push(c),
        }
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn docker_hub_library() {
        let hub = UpstreamConfig::new("docker.io", "http://127.0.0.1:1");
        assert_eq!(hub.remote_repo("nginx"), "library/nginx");
        assert_eq!(hub.remote_repo("bitnami/nginx"), "bitnami/nginx");
        let ghcr = UpstreamConfig::new("ghcr.io", "http://127.0.0.1:1");
        assert_eq!(ghcr.remote_repo("nginx"), "nginx");
    }
}
