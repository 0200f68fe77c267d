//! A small S3 client: the dozen operations the store needs, signed with SigV4, over the
//! workspace's reqwest (rustls on ring).
//!
//! Request bodies are always in memory (at most one part), so every request can be retried
//! as it is; response bodies of object reads are handed back unread, to be streamed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::{Method, Response, StatusCode};

use super::sign::{self, Credentials, Signer};
use super::xml;
use crate::{Result, StorageError};

/// How the client meets a bucket that fails, throttles or stalls.
#[derive(Debug, Clone)]
pub struct S3Tuning {
    /// Attempts per request: S3 answers a small share of requests with 500/503
    /// (`SlowDown`, `InternalError`) or drops connections, and these succeed when
    /// repeated. Between attempts: an exponential backoff from 100 ms with jitter (half
    /// the step plus a random part of the other half).
    pub attempts: u32,
    /// One attempt's time until the response headers (a stalled request is abandoned and
    /// retried); with the backoff it bounds a whole request: at most
    /// `attempts × attempt_timeout` plus about 1.5 s of waits with the defaults.
    pub attempt_timeout: std::time::Duration,
    /// Longest pause inside a response body (a stalled read of an object).
    pub read_timeout: std::time::Duration,
    /// S3 requests in flight at once from this process; more wait for a slot, at most
    /// `attempt_timeout`, then fail as unavailable. Keeps requests from piling up behind
    /// a stalled bucket.
    pub max_in_flight: usize,
    /// Appends buffering at once (each holds at most two 8 MiB parts): more wait for a
    /// turn, at most `attempt_timeout`, before reading any of their body, then fail as
    /// unavailable. Bounds the memory uploads take when the bucket is slow.
    pub max_appends: usize,
}

impl Default for S3Tuning {
    fn default() -> Self {
        S3Tuning {
            attempts: 4,
            attempt_timeout: std::time::Duration::from_secs(30),
            read_timeout: std::time::Duration::from_secs(60),
            max_in_flight: 256,
            max_appends: 32,
        }
    }
}

/// What the client retried and gave up on, for `/metrics`.
#[derive(Debug, Default)]
pub struct S3Counters {
    /// Attempts repeated after a 5xx or 429 answer.
    pub retried_status: AtomicU64,
    /// Attempts repeated after a connection failure (refused, reset).
    pub retried_connection: AtomicU64,
    /// Attempts repeated after a stall past `attempt_timeout`.
    pub retried_timeout: AtomicU64,
    /// Requests that failed after their last attempt, or found no slot in time.
    pub failed: AtomicU64,
    /// Requests that waited for a slot (`max_in_flight` reached).
    pub waited_for_slot: AtomicU64,
    /// Appends that waited for a turn (`max_appends` reached).
    pub waited_for_append: AtomicU64,
}

/// A random duration in `[step / 2, step)`.
fn jittered(step: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    let half = step / 2;
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let nanos = half.as_nanos().max(1) as u64;
    half + Duration::from_nanos(r % nanos)
}

/// Where the bucket is and how to address it.
#[derive(Clone)]
pub struct ClientConfig {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub credentials: Credentials,
    pub path_style: bool,
}

/// An object in a listing.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// A multipart upload that was started and never completed nor aborted.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// A request body, with how its hash is signed.
enum Body {
    Empty,
    /// Small control documents: hashed and signed.
    Signed(Bytes),
    /// Object data: sent with `UNSIGNED-PAYLOAD` (TLS protects it in transit); hashing
    /// megabytes twice per request would cost more than it checks.
    Unsigned(Bytes),
}

pub struct Client {
    http: reqwest::Client,
    signer: Signer,
    /// `scheme://host[:port]`
    base: String,
    /// The `Host` header reqwest sends for `base` (path style) or `bucket.base`.
    host: String,
    bucket: String,
    path_style: bool,
    pub(crate) tuning: S3Tuning,
    slots: Arc<tokio::sync::Semaphore>,
    pub(crate) appends: Arc<tokio::sync::Semaphore>,
    pub(crate) counters: Arc<S3Counters>,
    /// Server-side encryption headers sent with every object written (SSE-S3, SSE-KMS).
    pub(crate) sse: Vec<(String, String)>,
}

fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another caller installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn config_error(msg: String) -> StorageError {
    StorageError::Config(msg)
}

impl Client {
    pub fn new(config: &ClientConfig, tuning: S3Tuning) -> Result<Client> {
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| config_error(format!("S3 endpoint {:?}: {e}", config.endpoint)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error(format!(
                "S3 endpoint {:?} must start with http:// or https://",
                config.endpoint
            )));
        }
        let Some(host) = url.host_str() else {
            return Err(config_error(format!(
                "S3 endpoint {:?} has no host",
                config.endpoint
            )));
        };
        if config.bucket.is_empty() {
            return Err(config_error("S3 bucket is not set".into()));
        }
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let host = if config.path_style {
            host
        } else {
            format!("{}.{host}", config.bucket)
        };
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(tuning.attempt_timeout.min(Duration::from_secs(10)))
            // Reads stall only when S3 does; a whole large object may take far longer, so
            // the bound is on a pause, not on the whole body.
            .read_timeout(tuning.read_timeout)
            .build()
            .map_err(|e| config_error(format!("S3 client: {e}")))?;
        Ok(Client {
            http,
            signer: Signer {
                credentials: config.credentials.clone(),
                region: config.region.clone(),
                service: "s3".into(),
            },
            base: format!("{}://{host}", url.scheme()),
            host,
            bucket: config.bucket.clone(),
            path_style: config.path_style,
            slots: Arc::new(tokio::sync::Semaphore::new(tuning.max_in_flight.max(1))),
            appends: Arc::new(tokio::sync::Semaphore::new(tuning.max_appends.max(1))),
            tuning,
            counters: Arc::default(),
            sse: Vec::new(),
        })
    }

    /// The URI-encoded path of `key` (or of the bucket, for an empty key).
    fn path(&self, key: &str) -> String {
        let key = sign::uri_encode(key, true);
        match (self.path_style, key.is_empty()) {
            (true, true) => format!("/{}", sign::uri_encode(&self.bucket, false)),
            (true, false) => format!("/{}/{key}", sign::uri_encode(&self.bucket, false)),
            (false, _) => format!("/{key}"),
        }
    }

    /// The value of `x-amz-copy-source` for `key` in this bucket.
    fn copy_source(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            sign::uri_encode(&self.bucket, false),
            sign::uri_encode(key, true)
        )
    }

    async fn send(
        &self,
        op: &'static str,
        method: Method,
        key: &str,
        query: &[(String, String)],
        extra: &[(String, String)],
        body: Body,
    ) -> Result<Response> {
        let path = self.path(key);
        let query_string = sign::canonical_query(query);
        let url = if query_string.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query_string}", self.base)
        };
        let (payload_hash, bytes) = match body {
            Body::Empty => (sign::EMPTY_SHA256.to_owned(), None),
            Body::Signed(b) => (sign::payload_hash(&b), Some(b)),
            Body::Unsigned(b) => (sign::UNSIGNED_PAYLOAD.to_owned(), Some(b)),
        };
        let mut headers = vec![
            ("host".to_owned(), self.host.clone()),
            ("x-amz-content-sha256".to_owned(), payload_hash.clone()),
        ];
        headers.extend(extra.iter().cloned());
        // A slot first: behind a stalled bucket, requests wait here (bounded) instead of
        // piling up connections and buffered bodies without end.
        let _slot = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.counters
                    .waited_for_slot
                    .fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    self.tuning.attempt_timeout,
                    self.slots.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        return Err(StorageError::S3Request {
                            op,
                            source: "too many S3 requests in flight; none finished in time".into(),
                        });
                    }
                }
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = sign::Request {
                method: method.as_str(),
                path: &path,
                query,
                headers: &headers,
                payload_hash: &payload_hash,
            };
            let signed = self.signer.sign_headers(&req, SystemTime::now());
            let mut rb = self.http.request(method.clone(), &url);
            // reqwest derives Host from the URL, identical to the signed one.
            for (k, v) in headers
                .iter()
                .chain(signed.iter())
                .filter(|(k, _)| k != "host")
            {
                rb = rb.header(k.as_str(), v.as_str());
            }
            if let Some(b) = &bytes {
                rb = rb.body(b.clone());
            } else if method == Method::PUT || method == Method::POST {
                rb = rb.header("content-length", "0");
            }
            let last = attempt >= self.tuning.attempts.max(1);
            let backoff = jittered(Duration::from_millis(100 << attempt.min(10)));
            let sent = tokio::time::timeout(self.tuning.attempt_timeout, rb.send()).await;
            match sent {
                Ok(Ok(resp))
                    if !last
                        && (resp.status().is_server_error()
                            || resp.status() == StatusCode::TOO_MANY_REQUESTS) =>
                {
                    self.counters.retried_status.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(op, status = %resp.status(), "S3 request will be retried");
                    tokio::time::sleep(backoff).await;
                }
                Ok(Ok(resp)) => {
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS
                    {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    self.counters
                        .retried_connection
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(op, error = %e, "S3 request will be retried");
                    tokio::time::sleep(backoff).await;
                }
                Ok(Err(e)) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(StorageError::S3Request {
                        op,
                        source: Box::new(e),
                    });
                }
                Err(_) if !last => {
                    self.counters
                        .retried_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(op, "S3 request stalled; it will be retried");
                    tokio::time::sleep(backoff).await;
                }
                Err(_) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(StorageError::S3Request {
                        op,
                        source: format!(
                            "no answer within {} ms",
                            self.tuning.attempt_timeout.as_millis()
                        )
                        .into(),
                    });
                }
            }
        }
    }

    /// `resp` if it succeeded; otherwise its S3 error code and message as an error.
    async fn check(op: &'static str, resp: Response) -> Result<Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(Self::error(op, resp).await)
    }

    async fn error(op: &'static str, resp: Response) -> StorageError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        s3_error(op, status.as_u16(), &body)
    }

    /// The body of a successful control request, which S3 may still turn into an error
    /// (`CopyObject`, `UploadPartCopy` and `CompleteMultipartUpload` can fail after their
    /// 200 was sent).
    async fn document(op: &'static str, resp: Response) -> Result<String> {
        let status = resp.status().as_u16();
        let resp = Self::check(op, resp).await?;
        let body = resp.text().await.map_err(|e| StorageError::S3Request {
            op,
            source: Box::new(e),
        })?;
        if xml::first(&body, "Error").is_some() {
            return Err(s3_error(op, status, &body));
        }
        Ok(body)
    }

    pub async fn head_object(&self, key: &str) -> Result<Option<u64>> {
        let op = "HeadObject";
        let resp = self
            .send(op, Method::HEAD, key, &[], &[], Body::Empty)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = Self::check(op, resp).await?;
        Ok(Some(content_length(&resp)))
    }

    /// One response header of a `HeadObject`, if the object and the header are there.
    pub async fn head_header(&self, key: &str, name: &str) -> Result<Option<String>> {
        let op = "HeadObject";
        let resp = self
            .send(op, Method::HEAD, key, &[], &[], Body::Empty)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = Self::check(op, resp).await?;
        Ok(resp
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    /// The object's response, unread, at an inclusive byte range if given; `None` if
    /// there is no such object.
    pub async fn get_object(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Response>> {
        let op = "GetObject";
        let extra: Vec<(String, String)> = range
            .map(|(a, b)| ("range".to_owned(), format!("bytes={a}-{b}")))
            .into_iter()
            .collect();
        let resp = self
            .send(op, Method::GET, key, &[], &extra, Body::Empty)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::check(op, resp).await.map(Some)
    }

    pub async fn put_object(&self, key: &str, data: Bytes) -> Result<()> {
        let op = "PutObject";
        let resp = self
            .send(op, Method::PUT, key, &[], &self.sse, Body::Unsigned(data))
            .await?;
        Self::check(op, resp).await.map(drop)
    }

    /// Deleting an absent object succeeds, as in S3 itself.
    pub async fn delete_object(&self, key: &str) -> Result<()> {
        let op = "DeleteObject";
        let resp = self
            .send(op, Method::DELETE, key, &[], &[], Body::Empty)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(op, resp).await.map(drop)
    }

    /// One page (up to 1000 keys) of the objects under `prefix`, in key order, and the
    /// token for the next page.
    pub async fn list(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<(Vec<Object>, Option<String>)> {
        self.list_page(prefix, token, None).await
    }

    /// [`Client::list`] with at most `max_keys` keys per page.
    pub async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<(Vec<Object>, Option<String>)> {
        let op = "ListObjectsV2";
        let mut query = vec![
            ("list-type".to_owned(), "2".to_owned()),
            ("prefix".to_owned(), prefix.to_owned()),
        ];
        if let Some(n) = max_keys {
            query.push(("max-keys".to_owned(), n.to_string()));
        }
        if let Some(t) = token {
            query.push(("continuation-token".to_owned(), t.to_owned()));
        }
        let resp = self
            .send(op, Method::GET, "", &query, &[], Body::Empty)
            .await?;
        let doc = Self::document(op, resp).await?;
        let mut objects = Vec::new();
        for entry in xml::all(&doc, "Contents") {
            let (Some(key), Some(size)) = (xml::text(entry, "Key"), xml::text(entry, "Size"))
            else {
                continue;
            };
            let size = size.trim().parse().map_err(|_| StorageError::S3 {
                op,
                status: 200,
                code: "MalformedResponse".into(),
                message: format!("object size {size:?}"),
            })?;
            objects.push(Object {
                key,
                size,
                last_modified: xml::text(entry, "LastModified").and_then(|t| parse_time(&t)),
            });
        }
        let truncated = xml::text(&doc, "IsTruncated").is_some_and(|t| t.trim() == "true");
        let next = xml::text(&doc, "NextContinuationToken").filter(|t| truncated && !t.is_empty());
        if truncated && next.is_none() {
            return Err(StorageError::S3 {
                op,
                status: 200,
                code: "MalformedResponse".into(),
                message: "a truncated listing without a continuation token".into(),
            });
        }
        Ok((objects, next))
    }

    /// Every object under `prefix`, all pages.
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<Object>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = self.list(prefix, token.as_deref()).await?;
            out.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    pub async fn create_multipart(&self, key: &str) -> Result<String> {
        let op = "CreateMultipartUpload";
        let query = [("uploads".to_owned(), String::new())];
        let resp = self
            .send(op, Method::POST, key, &query, &self.sse, Body::Empty)
            .await?;
        let doc = Self::document(op, resp).await?;
        xml::text(&doc, "UploadId").ok_or_else(|| StorageError::S3 {
            op,
            status: 200,
            code: "MalformedResponse".into(),
            message: "no UploadId".into(),
        })
    }

    fn part_query(upload_id: &str, part: u32) -> [(String, String); 2] {
        [
            ("partNumber".to_owned(), part.to_string()),
            ("uploadId".to_owned(), upload_id.to_owned()),
        ]
    }

    /// Uploads part `part` (from 1); returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part: u32,
        data: Bytes,
    ) -> Result<String> {
        let op = "UploadPart";
        let query = Self::part_query(upload_id, part);
        let resp = self
            .send(op, Method::PUT, key, &query, &[], Body::Unsigned(data))
            .await?;
        let resp = Self::check(op, resp).await?;
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| StorageError::S3 {
                op,
                status: 200,
                code: "MalformedResponse".into(),
                message: "no ETag".into(),
            })
    }

    /// Copies an inclusive byte range of `source` (in this bucket) as part `part`, inside
    /// S3; returns the part's ETag.
    pub async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: u32,
        source: &str,
        range: (u64, u64),
    ) -> Result<String> {
        let op = "UploadPartCopy";
        let query = Self::part_query(upload_id, part);
        let extra = [
            ("x-amz-copy-source".to_owned(), self.copy_source(source)),
            (
                "x-amz-copy-source-range".to_owned(),
                format!("bytes={}-{}", range.0, range.1),
            ),
        ];
        let resp = self
            .send(op, Method::PUT, key, &query, &extra, Body::Empty)
            .await?;
        let doc = Self::document(op, resp).await?;
        xml::text(&doc, "ETag").ok_or_else(|| StorageError::S3 {
            op,
            status: 200,
            code: "MalformedResponse".into(),
            message: "no ETag in CopyPartResult".into(),
        })
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        let op = "CompleteMultipartUpload";
        let query = [("uploadId".to_owned(), upload_id.to_owned())];
        let mut doc = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            doc.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml::escape(etag)
            ));
        }
        doc.push_str("</CompleteMultipartUpload>");
        let resp = self
            .send(
                op,
                Method::POST,
                key,
                &query,
                &[],
                Body::Signed(Bytes::from(doc)),
            )
            .await?;
        Self::document(op, resp).await.map(drop)
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let op = "AbortMultipartUpload";
        let query = [("uploadId".to_owned(), upload_id.to_owned())];
        let resp = self
            .send(op, Method::DELETE, key, &query, &[], Body::Empty)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(op, resp).await.map(drop)
    }

    /// Copies `source` to `key` inside S3 (objects up to 5 GiB).
    pub async fn copy_object(&self, key: &str, source: &str) -> Result<()> {
        let op = "CopyObject";
        let mut extra = vec![("x-amz-copy-source".to_owned(), self.copy_source(source))];
        // A copy is a new object: without the headers it would be stored unencrypted.
        extra.extend(self.sse.iter().cloned());
        let resp = self
            .send(op, Method::PUT, key, &[], &extra, Body::Empty)
            .await?;
        Self::document(op, resp).await.map(drop)
    }

    /// Multipart uploads under `prefix` that are neither completed nor aborted (one page
    /// of up to 1000; enough for a periodic sweep, which takes the rest next time).
    pub async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let op = "ListMultipartUploads";
        let query = [
            ("uploads".to_owned(), String::new()),
            ("prefix".to_owned(), prefix.to_owned()),
        ];
        let resp = self
            .send(op, Method::GET, "", &query, &[], Body::Empty)
            .await?;
        let doc = Self::document(op, resp).await?;
        Ok(xml::all(&doc, "Upload")
            .into_iter()
            .filter_map(|u| {
                Some(PendingUpload {
                    key: xml::text(u, "Key")?,
                    upload_id: xml::text(u, "UploadId")?,
                    initiated: xml::text(u, "Initiated").and_then(|t| parse_time(&t)),
                })
            })
            .collect())
    }

    /// A URL that lets its holder `GET` `key` without credentials until `expires` passes.
    pub fn presign_get(&self, key: &str, expires: Duration) -> String {
        let path = self.path(key);
        let headers = [("host".to_owned(), self.host.clone())];
        let req = sign::Request {
            method: "GET",
            path: &path,
            query: &[],
            headers: &headers,
            payload_hash: sign::UNSIGNED_PAYLOAD,
        };
        let query = self.signer.presign_query(&req, SystemTime::now(), expires);
        format!("{}{path}?{query}", self.base)
    }
}

/// `Content-Length` of the response itself (reqwest's `content_length` is the body's size
/// hint, which is 0 for a HEAD).
pub fn content_length(resp: &Response) -> u64 {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn s3_error(op: &'static str, status: u16, body: &str) -> StorageError {
    let code = xml::text(body, "Code").unwrap_or_else(|| {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown")
            .replace(' ', "")
    });
    let message = xml::text(body, "Message").unwrap_or_default();
    StorageError::S3 {
        op,
        status,
        code,
        message,
    }
}

/// `2026-11-22T05:56:10.000Z` (the form S3 lists times in).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let time = time.trim_end_matches('Z');
    let time = time.split(['.', '+']).next()?;
    let mut t = time.splitn(3, ':');
    let h: u64 = t.next()?.parse().ok()?;
    let min: u64 = t.next()?.parse().ok()?;
    let sec: u64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = u64::try_from(sign::days_from_civil(y, m, day)).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + min * 60 + sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(
            parse_time("2015-08-30T12:36:00.000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_440_938_160))
        );
        assert_eq!(parse_time("garbage"), None);
        assert_eq!(parse_time("2015-13-30T12:36:00Z"), None);
    }

    #[test]
    fn errors_carry_code_and_operation() {
        let e = s3_error(
            "PutObject",
            403,
            "<Error><Code>AccessDenied</Code><Message>no &amp; never</Message></Error>",
        );
        assert_eq!(
            e.to_string(),
            "S3 PutObject failed with AccessDenied (HTTP 403): no & never"
        );
        let e = s3_error("HeadObject", 403, "");
        assert!(e.to_string().contains("Forbidden"), "{e}");
    }
}
