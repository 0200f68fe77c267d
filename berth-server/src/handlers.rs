//! One function per endpoint and method. Handlers translate HTTP into `berth-registry` calls
//! and back; the rules live in the registry.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use berth_auth::Actions;
use berth_meta::AuditRecord;
use berth_oci::range::parse_content_range;
use berth_oci::{Digest, ErrorCode, Reference, RepoName, Tag};
use berth_registry::{Actor, BlobSource, PulledBlob, RegistryError, policy};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::auth::{self, Caller, Ctx};
use crate::endpoint::{Endpoint, parse_digest};
use crate::error::{ApiError, upload_range};
use crate::metrics::RequestLabels;
use crate::{AppState, ConnInfo};

type ApiResult = Result<Response, ApiError>;

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: whether this replica can serve. While the metadata store has been
/// unreachable for less than `stale_on_error` the replica stays ready (`degraded`): it
/// still serves pulls of recently served content and answers everything else with a clean
/// 503, and since every replica shares the one database, taking all of them out of the
/// Service would turn those answers into refused connections.
pub async fn readyz(State(state): State<AppState>) -> Response {
    use berth_registry::health::Readiness;
    match state.registry().readiness().await {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::Degraded { down_for } => (
            StatusCode::OK,
            format!(
                "degraded: metadata store unreachable for {} s; serving recently pulled content\n",
                down_for.as_secs()
            ),
        )
            .into_response(),
        Readiness::Unavailable { down_for } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: metadata store unreachable for {} s\n",
                down_for.as_secs()
            ),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics().encode();
    // The registry's own counters, in the same exposition, before its closing `# EOF`.
    let mut extra = String::new();
    let mut family = "";
    for c in state.registry().counters() {
        use std::fmt::Write as _;
        if c.name != family {
            family = c.name;
            let _ = write!(
                extra,
                "# HELP berth_{n} {h}.\n# TYPE berth_{n} counter\n",
                n = c.name,
                h = c.help,
            );
        }
        let label = c
            .label
            .map(|(k, v)| format!("{{{k}=\"{v}\"}}"))
            .unwrap_or_default();
        let _ = writeln!(extra, "berth_{}_total{label} {}", c.name, c.value);
    }
    {
        use std::fmt::Write as _;
        let stats = state.registry().admission_stats();
        let reviews = stats.reviews.lock().map(|m| m.clone()).unwrap_or_default();
        let rules = stats.rules.lock().map(|m| m.clone()).unwrap_or_default();
        if !reviews.is_empty() {
            extra.push_str(
                "# HELP berth_admission_reviews AdmissionReviews answered, by webhook and result \
                 (allowed, patched, warned, denied, invalid).\n# TYPE berth_admission_reviews counter\n",
            );
            for ((webhook, result), n) in reviews {
                let _ = writeln!(
                    extra,
                    "berth_admission_reviews_total{{webhook=\"{webhook}\",result=\"{result}\"}} {n}"
                );
            }
        }
        if !rules.is_empty() {
            extra.push_str(
                "# HELP berth_admission_rule_hits Reviews in which an admission rule acted or would have, \
                 by kind, mode and result.\n# TYPE berth_admission_rule_hits counter\n",
            );
            for ((kind, mode, result), n) in rules {
                let _ = writeln!(
                    extra,
                    "berth_admission_rule_hits_total{{kind=\"{kind}\",mode=\"{mode}\",result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = write!(
            extra,
            "# HELP berth_admission_audit_repeats Admission audit rows not written because the \
             same row was written within the last minute.\n\
             # TYPE berth_admission_audit_repeats counter\n\
             berth_admission_audit_repeats_total {}\n",
            stats
                .audit_repeats
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let p = state.registry().meta().pool_stats();
        let _ = write!(
            extra,
            "# HELP berth_metadata_pool_connections Connections the metadata pool holds open.\n\
             # TYPE berth_metadata_pool_connections gauge\n\
             berth_metadata_pool_connections {}\n\
             # HELP berth_metadata_pool_idle Connections of the metadata pool not in use.\n\
             # TYPE berth_metadata_pool_idle gauge\n\
             berth_metadata_pool_idle {}\n\
             # HELP berth_metadata_read_only_connections Connections to a server that only \
             takes read-only transactions (a standby, a demoted primary after a failover): \
             pooled ones closed (replaced), new ones refused.\n\
             # TYPE berth_metadata_read_only_connections counter\n\
             berth_metadata_read_only_connections_total{{action=\"replaced\"}} {}\n\
             berth_metadata_read_only_connections_total{{action=\"refused\"}} {}\n",
            p.size, p.idle, p.replaced_read_only, p.refused_read_only
        );
    }
    if let Some(auth) = state.auth() {
        use std::fmt::Write as _;
        let mut described = std::collections::BTreeSet::new();
        for m in auth.access.metrics() {
            let kind = if m.gauge { "gauge" } else { "counter" };
            if described.insert(m.name) {
                let _ = write!(
                    extra,
                    "# HELP berth_{n} {h}.\n# TYPE berth_{n} {kind}\n",
                    n = m.name,
                    h = m.help,
                );
            }
            let suffix = if m.gauge { "" } else { "_total" };
            let labels = m
                .label
                .map(|(k, v)| format!("{{{k}=\"{v}\"}}"))
                .unwrap_or_default();
            let _ = writeln!(extra, "berth_{}{suffix}{labels} {}", m.name, m.value);
        }
    }
    {
        use std::fmt::Write as _;
        let mut described = std::collections::BTreeSet::new();
        for m in state.registry().job_metrics() {
            let kind = if m.gauge { "gauge" } else { "counter" };
            if described.insert(m.name) {
                let _ = write!(
                    extra,
                    "# HELP berth_{n} {h}.\n# TYPE berth_{n} {kind}\n",
                    n = m.name,
                    h = m.help,
                );
            }
            let suffix = if m.gauge { "" } else { "_total" };
            let labels: Vec<String> = m
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(extra, "berth_{}{suffix}{labels} {}", m.name, m.value);
        }
    }
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &extra),
        None => text.push_str(&extra),
    }
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// A label value as the exposition format escapes it (queue names come from
/// configuration and API input).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Entry point for everything that is not an operational route.
pub async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let method = req.method().clone();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || header_str(req.headers(), header::CONTENT_LENGTH).is_some_and(|v| v != "0");
    let (route, result) = match Endpoint::parse(req.uri().path()) {
        Ok(ep) => (ep.route(), authorize_and_handle(&state, ep, req).await),
        // No manifest can exist under a malformed tag: reading one is a plain miss, only
        // writing one is a bad request.
        Err(ApiError::ManifestInvalidReference) if method != Method::PUT => (
            "manifest",
            Err(ApiError::Registry(RegistryError::ManifestUnknown)),
        ),
        Err(e) => ("invalid", Err(e)),
    };
    if let Err(e) = &result {
        if e.is_metadata_unavailable() {
            state.metrics().metadata_unavailable.inc();
        } else if e.is_storage_unavailable() {
            state.metrics().storage_unavailable.inc();
        }
    }
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    // A refusal sent before the request body was read (401 on a PUT, 413, ...) leaves
    // unread bytes on the connection, so it cannot be reused; saying so lets the client
    // open a new one instead of failing its next request on a closed socket.
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut()
        .insert("docker-distribution-api-version", API_VERSION);
    state
        .metrics()
        .requests
        .get_or_create(&RequestLabels {
            route,
            method: method.as_str().to_owned(),
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// What a request needs: nothing beyond being let in, or actions on a repository.
fn needs(ep: &Endpoint, m: &Method) -> Option<(RepoName, Actions)> {
    let pull = Actions::PULL;
    match ep {
        Endpoint::Base | Endpoint::Catalog => None,
        Endpoint::Tags { name } | Endpoint::Referrers { name, .. } => Some((name.clone(), pull)),
        Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } => match *m {
            Method::DELETE => Some((name.clone(), Actions::DELETE)),
            Method::PUT => Some((name.clone(), Actions::PUSH)),
            _ => Some((name.clone(), pull)),
        },
        Endpoint::UploadStart { name } | Endpoint::Upload { name, .. } => {
            Some((name.clone(), Actions::PUSH))
        }
    }
}

async fn authorize_and_handle(state: &AppState, ep: Endpoint, req: Request) -> ApiResult {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let ctx = auth::authenticate(state, req.headers(), req.uri(), conn).await?;
    // Permissions are checked on the name the content is cached under, so a `?ns=` request
    // is judged exactly like the same pull by prefix.
    let ep = mirror_endpoint(state, ep, &req);
    let needed = needs(&ep, req.method());
    if let Some((repo, need)) = &needed
        && !need
            .intersect(Actions::PUSH.union(Actions::DELETE))
            .is_empty()
        && let Some(upstream) = state.registry().cached_upstream(repo)
    {
        // Before the permission check: not even an admin may write here, and a challenge
        // would only send the client off for a token that cannot help.
        audit_denied(state, &ctx, repo, req.method(), *need);
        return Err(ApiError::Registry(RegistryError::Denied(format!(
            "{} is the pull-through cache of {upstream}: its content is managed by the cache, \
             not pushed or deleted",
            berth_auth::tenant_of(repo.as_str())
        ))));
    }
    match needed {
        Some((repo, need)) if !ctx.allows(repo.as_str(), need) => {
            if matches!(ctx.caller, Caller::Anonymous(_) | Caller::Open) {
                // A challenge, not a denial: every token-flow pull starts with one.
                state.metrics().challenges.inc();
            } else {
                audit_denied(state, &ctx, &repo, req.method(), need);
            }
            // A mount needs pull on its source too: the challenge asks for both, as CNCF
            // Distribution's does, so the client's one token can mount rather than upload.
            let from = mount_source(&ep, &req);
            let mut scopes = vec![(repo.as_str(), need)];
            if let Some(from) = &from {
                scopes.push((from.as_str(), Actions::PULL));
            }
            return Err(ctx.refuse_scopes(state, &scopes));
        }
        // `/v2/` is how clients find out whether and how to log in: anonymous callers
        // get the challenge even when public tenants would let them pull.
        None if matches!(ep, Endpoint::Base) && matches!(ctx.caller, Caller::Anonymous(_)) => {
            state.metrics().challenges.inc();
            return Err(ctx.challenge(state, None, None));
        }
        _ => {}
    }
    handle(state, ep, req, &ctx).await
}

/// The repository a blob upload asks to mount from (`?mount=<digest>&from=<name>`).
fn mount_source(ep: &Endpoint, req: &Request) -> Option<RepoName> {
    if !matches!(ep, Endpoint::UploadStart { .. }) || req.method() != Method::POST {
        return None;
    }
    let q = query(req);
    q.get("mount")?;
    q.get("from")?.parse().ok()
}

fn audit_denied(state: &AppState, ctx: &Ctx, repo: &RepoName, method: &Method, need: Actions) {
    state.audit(AuditRecord {
        at: berth_meta::now_micros(),
        actor: ctx.name().to_owned(),
        source: ctx.source.map(|s| s.to_string()),
        action: "access".into(),
        tenant: Some(berth_auth::tenant_of(repo.as_str()).to_owned()),
        repository: Some(repo.to_string()),
        outcome: "denied".into(),
        detail: Some(format!("{method} {}", need.names().join(","))),
        ..AuditRecord::default()
    });
}

async fn handle(state: &AppState, ep: Endpoint, req: Request, ctx: &Ctx) -> ApiResult {
    let actor = ctx.actor();
    let m = req.method().clone();
    match ep {
        Endpoint::Base => match m {
            Method::GET | Method::HEAD => Ok(json_response(StatusCode::OK, b"{}".to_vec())),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Catalog if m == Method::GET => catalog(state, req, ctx).await,
        Endpoint::Tags { name } if m == Method::GET => tags(state, name, req).await,
        Endpoint::Manifest { name, reference } => match m {
            Method::GET => {
                let resp = get_manifest(state, ctx, &name, &reference, req, true).await;
                if let Ok(r) = &resp {
                    audit_pull(state, ctx, &name, &reference, r);
                    if state.registry().wants_pull_events() {
                        pull_event(state, ctx, &name, &reference, r);
                    }
                }
                resp
            }
            Method::HEAD => get_manifest(state, ctx, &name, &reference, req, false).await,
            Method::PUT => put_manifest(state, name, reference, req, &actor).await,
            Method::DELETE => {
                let admin = ctx.is_admin(state).await?;
                state
                    .registry()
                    .delete_manifest(&name, &reference, &actor, admin)
                    .await?;
                Ok(StatusCode::ACCEPTED.into_response())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Blob { name, digest } => match m {
            Method::GET => get_blob(state, name, digest, req, true).await,
            Method::HEAD => get_blob(state, name, digest, req, false).await,
            Method::DELETE => {
                state.registry().delete_blob(&name, &digest, &actor).await?;
                Ok(StatusCode::ACCEPTED.into_response())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::UploadStart { name } if m == Method::POST => {
            start_upload(state, name, req, ctx).await
        }
        Endpoint::Upload { name, id } => match m {
            Method::GET => {
                let s = state.registry().upload_status(&name, &id).await?;
                Ok(upload_response(
                    state,
                    StatusCode::NO_CONTENT,
                    &name,
                    &id,
                    s.offset,
                ))
            }
            Method::PATCH => patch_upload(state, name, id, req).await,
            Method::PUT => finish_upload(state, name, id, req, &actor).await,
            Method::DELETE => {
                state.registry().cancel_upload(&name, &id).await?;
                state.metrics().uploads_in_progress.dec();
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Referrers { name, digest } if m == Method::GET => {
            referrers(state, name, digest, req).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

// ---- helpers ----

/// containerd used as a mirror sends `?ns=<upstream host>` with the upstream-relative
/// name; reads are routed to the cached copy under `<host>/<name>`.
fn mirror_endpoint(state: &AppState, ep: Endpoint, req: &Request) -> Endpoint {
    if req.uri().query().is_none() {
        return ep;
    }
    let q = query(req);
    let Some(ns) = q.get("ns").map(String::as_str) else {
        return ep;
    };
    let reg = state.registry();
    match ep {
        Endpoint::Manifest { name, reference } => Endpoint::Manifest {
            name: reg.proxy_name(name, Some(ns)),
            reference,
        },
        Endpoint::Blob { name, digest } => Endpoint::Blob {
            name: reg.proxy_name(name, Some(ns)),
            digest,
        },
        other => other,
    }
}

fn query(req: &Request) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn hv(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|e| ApiError::Registry(RegistryError::Internal(e.to_string())))
}

fn location(state: &AppState, path: &str) -> String {
    match &state.config().public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => path.to_owned(),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}

fn upload_location(state: &AppState, name: &RepoName, id: &str) -> String {
    location(state, &format!("/v2/{name}/blobs/uploads/{id}"))
}

fn upload_response(
    state: &AppState,
    status: StatusCode,
    name: &RepoName,
    id: &str,
    offset: u64,
) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&upload_location(state, name, id)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&upload_range(offset)) {
        h.insert(header::RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("docker-upload-uuid", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

fn blob_created(state: &AppState, name: &RepoName, digest: &Digest) -> ApiResult {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&location(state, &format!("/v2/{name}/blobs/{digest}")))?,
    );
    h.insert("docker-content-digest", hv(digest.as_str())?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(resp)
}

/// A chunk's announced range, if the request has one.
fn content_range(req: &Request) -> Result<Option<(u64, u64)>, ApiError> {
    match header_str(req.headers(), header::CONTENT_RANGE) {
        None => Ok(None),
        Some(v) => parse_content_range(v).map(Some).map_err(|_| {
            ApiError::BadRequest(
                ErrorCode::BlobUploadInvalid,
                format!("malformed Content-Range {v:?}"),
            )
        }),
    }
}

/// The body's announced length; hyper holds the body to it.
fn content_length(req: &Request) -> Option<u64> {
    header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

/// An upload's body, ending with an error if the client sends nothing for the stall
/// timeout (a client holding a connection busy by sending nothing must not hold it
/// forever; see [`crate::stall`]).
fn body_stream(
    state: &AppState,
    req: Request,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, axum::Error>> + Send + use<> {
    use futures_util::{StreamExt as _, TryStreamExt};
    let body = TryStreamExt::map_err(req.into_body().into_data_stream(), std::io::Error::other);
    crate::stall::BodyStall::new(
        body,
        state.config().stall_timeout,
        state
            .metrics()
            .connections_timed_out
            .get_or_create(&crate::metrics::StageLabels {
                stage: "stalled_body",
            })
            .clone(),
    )
    .map(|r| r.map_err(axum::Error::new))
}

/// Turns an out-of-order chunk into the 416 that tells the client where the upload stands,
/// and notes a session a quota refusal cancelled.
fn chunk_error(state: &AppState, name: &RepoName, id: &str, e: RegistryError) -> ApiError {
    match e {
        // A quota refusal cancels the session.
        e @ RegistryError::OverQuota(_) => {
            state.metrics().uploads_in_progress.dec();
            ApiError::Registry(e)
        }
        RegistryError::ChunkOutOfOrder { offset } => ApiError::ChunkOutOfOrder {
            location: upload_location(state, name, id),
            offset,
        },
        other => ApiError::Registry(other),
    }
}

// ---- blobs ----

async fn get_blob(
    state: &AppState,
    name: RepoName,
    digest: Digest,
    req: Request,
    with_body: bool,
) -> ApiResult {
    let range = header_str(req.headers(), header::RANGE);
    let reg = state.registry();
    // With redirects on, the bytes come straight from the bucket: answer a GET of a blob
    // this repository links with a 307 to a short-lived presigned URL (the client sends
    // its Range there). Anything else (not linked, cached upstream) takes the normal path.
    if with_body && let Some(url) = reg.blobs().presign_get(&digest) {
        match reg.read_blob(&name, &digest, None, false).await {
            Ok(_) => {
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                let h = resp.headers_mut();
                h.insert(header::LOCATION, hv(&url)?);
                h.insert("docker-content-digest", hv(digest.as_str())?);
                return Ok(resp);
            }
            Err(RegistryError::BlobUnknown) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let read = match reg.read_blob(&name, &digest, range, with_body).await {
        Err(RegistryError::BlobUnknown) => {
            match reg.fetch_blob(&name, &digest, with_body).await? {
                BlobSource::Upstream(pulled) => return pulled_blob(state, &digest, pulled),
                // Fetched by a concurrent request: now an ordinary read, ranges included.
                BlobSource::Stored => reg.read_blob(&name, &digest, range, with_body).await?,
            }
        }
        other => other?,
    };
    let (status, len) = match read.range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, last - first + 1),
        None => (StatusCode::OK, read.size),
    };
    let body = match read.reader {
        Some(r) => {
            state.metrics().bytes_out.inc_by(len);
            Body::from_stream(r.body)
        }
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, OCTET_STREAM);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-content-digest", hv(digest.as_str())?);
    h.insert(header::ETAG, hv(&format!("\"{digest}\""))?);
    if let Some((first, last)) = read.range {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {first}-{last}/{}", read.size))?,
        );
    }
    Ok(resp)
}

/// A blob coming from an upstream. A `Range` is not honoured here (the whole blob streams
/// so that it can be verified and kept); clients accept a 200 for a ranged request.
fn pulled_blob(state: &AppState, digest: &Digest, pulled: PulledBlob) -> ApiResult {
    let body = match pulled.body {
        Some(b) => {
            if let Some(n) = pulled.size {
                state.metrics().bytes_out.inc_by(n);
            }
            Body::from_stream(b)
        }
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, OCTET_STREAM);
    if let Some(n) = pulled.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    h.insert("docker-content-digest", hv(digest.as_str())?);
    h.insert(header::ETAG, hv(&format!("\"{digest}\""))?);
    Ok(resp)
}

/// Whether a mount refused for the token's scope would succeed with a token the caller can
/// get: a Bearer caller whose identity may read `from`, where `from` holds the blob. For
/// anyone else the answer stays the silent fallback to an upload, which says nothing about
/// `from`.
async fn mount_needs_a_token_for(
    state: &AppState,
    ctx: &Ctx,
    from: &RepoName,
    digest: &Digest,
) -> Result<bool, ApiError> {
    if !matches!(ctx.caller, Caller::Bearer(_)) {
        return Ok(false);
    }
    let Some(id) = ctx.identity(state).await? else {
        return Ok(false);
    };
    if !id
        .grants
        .on_repository(from.as_str())
        .contains(Actions::PULL)
    {
        return Ok(false);
    }
    Ok(state.registry().stat_blob(from, digest).await.is_ok())
}

async fn start_upload(state: &AppState, name: RepoName, req: Request, ctx: &Ctx) -> ApiResult {
    let actor = &ctx.actor();
    let q = query(&req);
    let reg = state.registry();
    if let Some(mount) = q.get("mount") {
        let digest = parse_digest(mount)?;
        // Without `from` there is nothing to mount from: automatic discovery would let a
        // client probe other repositories, so it falls back to an ordinary upload.
        if let Some(from) = q.get("from") {
            let from: RepoName = from.parse().map_err(|_| ApiError::NameInvalid)?;
            // A blob is reachable only through repositories the caller may read: mounting
            // from any other would hand it over, so that falls back to an upload too.
            if ctx.allows(from.as_str(), Actions::PULL) {
                if reg.mount_blob(&name, &digest, &from, actor).await? {
                    return blob_created(state, &name, &digest);
                }
            } else if mount_needs_a_token_for(state, ctx, &from, &digest).await? {
                // The identity may read `from`, only its token does not say so: ask for a
                // token naming both repositories (as CNCF Distribution does), rather than
                // have the client upload bytes the registry already holds.
                return Err(ctx.challenge_scopes(
                    state,
                    &[
                        (name.as_str(), Actions::PUSH),
                        (from.as_str(), Actions::PULL),
                    ],
                    Some("insufficient_scope"),
                ));
            }
        }
    } else if let Some(d) = q.get("digest") {
        let digest = parse_digest(d)?;
        let length = content_length(&req);
        let size = reg
            .put_blob(&name, &digest, length, body_stream(state, req), actor)
            .await?;
        state.metrics().bytes_in.inc_by(size);
        return blob_created(state, &name, &digest);
    }
    let s = reg.start_upload(&name).await?;
    state.metrics().uploads_started.inc();
    state.metrics().uploads_in_progress.inc();
    Ok(upload_response(
        state,
        StatusCode::ACCEPTED,
        &name,
        &s.id,
        s.offset,
    ))
}

async fn patch_upload(state: &AppState, name: RepoName, id: String, req: Request) -> ApiResult {
    let range = content_range(&req)?;
    let before = state.registry().upload_status(&name, &id).await?.offset;
    let length = content_length(&req);
    let s = state
        .registry()
        .upload_chunk(&name, &id, range, length, body_stream(state, req))
        .await
        .map_err(|e| chunk_error(state, &name, &id, e))?;
    state
        .metrics()
        .bytes_in
        .inc_by(s.offset.saturating_sub(before));
    Ok(upload_response(
        state,
        StatusCode::ACCEPTED,
        &name,
        &id,
        s.offset,
    ))
}

async fn finish_upload(
    state: &AppState,
    name: RepoName,
    id: String,
    req: Request,
    actor: &Actor,
) -> ApiResult {
    let q = query(&req);
    let digest = match q.get("digest") {
        Some(d) => parse_digest(d)?,
        None => {
            return Err(ApiError::BadRequest(
                ErrorCode::DigestInvalid,
                "the digest query parameter is required to finish an upload".into(),
            ));
        }
    };
    let range = content_range(&req)?;
    let before = state.registry().upload_status(&name, &id).await?.offset;
    let length = content_length(&req);
    let size = state
        .registry()
        .complete_upload(
            &name,
            &id,
            &digest,
            range,
            length,
            body_stream(state, req),
            actor,
        )
        .await
        .map_err(|e| chunk_error(state, &name, &id, e))?;
    state.metrics().bytes_in.inc_by(size.saturating_sub(before));
    state.metrics().uploads_in_progress.dec();
    blob_created(state, &name, &digest)
}

// ---- manifests ----

/// Whether an `Accept` header admits `media_type`. No header, or a wildcard, admits all.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == media_type || t == "*/*" || t == "application/*" {
                return true;
            }
        }
    }
    !any
}

/// Records a manifest download as a pull (blob downloads are not recorded: a pull is one
/// manifest and many blobs).
fn audit_pull(
    state: &AppState,
    ctx: &Ctx,
    name: &RepoName,
    reference: &Reference,
    resp: &Response,
) {
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.audit(AuditRecord {
        at: berth_meta::now_micros(),
        actor: ctx.name().to_owned(),
        source: ctx.source.map(|s| s.to_string()),
        action: "manifest.pull".into(),
        tenant: Some(berth_auth::tenant_of(name.as_str()).to_owned()),
        repository: Some(name.to_string()),
        target: Some(reference.to_string()),
        outcome: "ok".into(),
        detail: digest,
    });
}

/// Records a pull a policy rule refused or would refuse (audit mode).
fn policy_audit(
    state: &AppState,
    ctx: &Ctx,
    name: &RepoName,
    reference: &Reference,
    outcome: &str,
    detail: String,
) {
    state.audit(AuditRecord {
        at: berth_meta::now_micros(),
        actor: ctx.name().to_owned(),
        source: ctx.source.map(|s| s.to_string()),
        action: "policy.pull".into(),
        tenant: Some(berth_auth::tenant_of(name.as_str()).to_owned()),
        repository: Some(name.to_string()),
        target: Some(reference.to_string()),
        outcome: outcome.into(),
        detail: Some(detail),
    });
}

/// Hands a manifest download to the webhooks that subscribe to pulls.
fn pull_event(
    state: &AppState,
    ctx: &Ctx,
    name: &RepoName,
    reference: &Reference,
    resp: &Response,
) {
    let h = resp.headers();
    let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let (Some(digest), Some(media_type)) = (text("docker-content-digest"), text("content-type"))
    else {
        return;
    };
    let size = text("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let tag = match reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    state
        .registry()
        .record_pull(name, tag, digest, media_type, size, &ctx.actor());
}

async fn get_manifest(
    state: &AppState,
    ctx: &Ctx,
    name: &RepoName,
    reference: &Reference,
    req: Request,
    with_body: bool,
) -> ApiResult {
    let pulled = state
        .registry()
        .get_manifest_proxied(name, reference)
        .await?;
    let m = pulled.manifest;
    if !accepts(req.headers(), &m.media_type) {
        return Err(ApiError::Registry(RegistryError::ManifestUnknown));
    }
    // The policy layer: refused here (403 DENIED naming the rule and digest), or served
    // with the violation recorded. Blob GETs are not judged: they are content-addressed,
    // and a client reaches them only through a manifest it was served.
    // Pushers may read what they pushed (signers must); never an anonymous caller. A
    // token scoped to pull (what clients ask for to read) is asked about its identity's
    // current grants only when a rule would refuse.
    let caller = match &ctx.caller {
        Caller::Basic(_) | Caller::Bearer(_) if ctx.allows(name.as_str(), Actions::PUSH) => {
            policy::Caller::Pusher
        }
        Caller::Bearer(_) => policy::Caller::Unknown,
        _ => policy::Caller::Puller,
    };
    let request = policy::PullRequest {
        tag: match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        },
        method: if with_body { "GET" } else { "HEAD" },
        actor: ctx.name(),
        source: ctx.source,
    };
    let mut admitted = state.registry().admit(name, &m, caller, &request).await;
    if let Ok(policy::Admission::NeedsPushCheck) = admitted {
        let pusher = ctx.identity(state).await?.is_some_and(|id| {
            id.grants
                .on_repository(name.as_str())
                .contains(Actions::PUSH)
        });
        let caller = if pusher {
            policy::Caller::Pusher
        } else {
            policy::Caller::Puller
        };
        admitted = state.registry().admit(name, &m, caller, &request).await;
    }
    if let Err(RegistryError::Denied(why)) = &admitted {
        policy_audit(state, ctx, name, reference, "denied", why.clone());
    }
    match admitted? {
        policy::Admission::Serve | policy::Admission::NeedsPushCheck => {}
        policy::Admission::Audited { rule, reason } => policy_audit(
            state,
            ctx,
            name,
            reference,
            "audited",
            format!("policy rule {rule:?} would refuse {}: {reason}", m.digest),
        ),
        policy::Admission::Bypassed { rule, reason } => policy_audit(
            state,
            ctx,
            name,
            reference,
            "bypassed",
            format!(
                "policy rule {rule:?} refuses {} ({reason}); served to a pusher",
                m.digest
            ),
        ),
    }
    // Served with every check passed: if this came from an enrolled node, its agent may
    // now fetch the manifest's blobs (node-local sharing).
    if with_body && let Some(from) = ctx.source {
        state
            .registry()
            .p2p_note_pull(from, name, &m.digest, &m.content, &m.media_type)
            .await;
    }
    let len = m.content.len();
    let mut resp = if with_body {
        Response::new(Body::from(m.content))
    } else {
        Response::new(Body::empty())
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type)?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("docker-content-digest", hv(m.digest.as_str())?);
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest))?);
    if let Some(w) = pulled.warning {
        h.insert(header::WARNING, hv(&w)?);
    }
    Ok(resp)
}

async fn put_manifest(
    state: &AppState,
    name: RepoName,
    reference: Reference,
    req: Request,
    actor: &Actor,
) -> ApiResult {
    let limit = state.registry().config().max_manifest_bytes;
    let too_large = || ApiError::Registry(RegistryError::ManifestTooLarge { limit });
    let announced =
        header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let more_tags = tag_params(&req)?;
    // Read at most the limit: a huge body is cut off without ever being buffered whole.
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = bytes::BytesMut::new();
    let mut stream = std::pin::pin!(body_stream(state, req));
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| ApiError::Registry(RegistryError::Body(e.to_string())))?;
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let out = state
        .registry()
        .put_manifest_tagged(
            &name,
            &reference,
            &more_tags,
            content_type.as_deref(),
            body,
            actor,
        )
        .await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&location(
            state,
            &format!("/v2/{name}/manifests/{}", out.digest),
        ))?,
    );
    h.insert("docker-content-digest", hv(out.digest.as_str())?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(subject) = out.subject {
        h.insert("oci-subject", hv(&subject)?);
    }
    for tag in &out.tags {
        h.append("oci-tag", hv(tag)?);
    }
    Ok(resp)
}

/// Tags a push may set at once through `?tag=` (the spec asks for at least 10).
const MAX_TAG_PARAMS: usize = 100;

/// The `tag` query parameters of a manifest push, in order, each a valid tag.
fn tag_params(req: &Request) -> Result<Vec<Tag>, ApiError> {
    let Some(q) = req.uri().query() else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).map_err(|_| {
        ApiError::BadRequest(ErrorCode::Unsupported, "malformed query string".into())
    })?;
    let mut tags = Vec::new();
    for (_, v) in pairs.into_iter().filter(|(k, _)| k == "tag") {
        if tags.len() == MAX_TAG_PARAMS {
            return Err(ApiError::TooManyTags {
                limit: MAX_TAG_PARAMS,
            });
        }
        let tag: Tag = v.parse().map_err(|_| {
            ApiError::BadRequest(
                ErrorCode::TagInvalid,
                format!(
                    "{:?} is not a valid tag",
                    v.chars().take(200).collect::<String>()
                ),
            )
        })?;
        tags.push(tag);
    }
    Ok(tags)
}

// ---- listings ----

/// `n` as the spec defines it; absurd values are clamped by the registry, junk is refused.
fn page_size(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("n") {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(v.parse().unwrap_or(u64::MAX)))
        }
        Some(v) => Err(ApiError::BadRequest(
            ErrorCode::Unsupported,
            format!("n must be a non-negative integer, not {v:?}"),
        )),
    }
}

fn with_next_link(
    mut resp: Response,
    more: bool,
    path: &str,
    n: u64,
    last: Option<&String>,
) -> Result<Response, ApiError> {
    if let (true, Some(last)) = (more, last) {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        resp.headers_mut().insert(header::LINK, hv(&link)?);
    }
    Ok(resp)
}

async fn tags(state: &AppState, name: RepoName, req: Request) -> ApiResult {
    let q = query(&req);
    let n = page_size(&q)?;
    let last = q.get("last").map(String::as_str);
    let (tags, more) = state.registry().list_tags(&name, n, last).await?;
    // Serialised from the borrowed page: no copy of ten thousand strings into a `Value`.
    #[derive(serde::Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: &'a [String],
    }
    let body = serde_json::to_vec(&TagList {
        name: name.as_str(),
        tags: &tags,
    })
    .map_err(|e| ApiError::Registry(RegistryError::Internal(e.to_string())))?;
    let page = n
        .unwrap_or(state.registry().config().max_page)
        .min(state.registry().config().max_page);
    with_next_link(
        json_response(StatusCode::OK, body),
        more,
        &format!("/v2/{name}/tags/list"),
        page,
        tags.last(),
    )
}

async fn catalog(state: &AppState, req: Request, ctx: &Ctx) -> ApiResult {
    let q = query(&req);
    let n = page_size(&q)?;
    let last = q.get("last").map(String::as_str);
    let (repos, more) = match ctx.identity(state).await? {
        None => state.registry().catalog(n, last).await?,
        Some(id) => {
            state
                .registry()
                .catalog_visible(n, last, |r| {
                    id.grants.on_repository(r).contains(Actions::PULL)
                })
                .await?
        }
    };
    let body = serde_json::to_vec(&serde_json::json!({"repositories": repos}))
        .map_err(|e| ApiError::Registry(RegistryError::Internal(e.to_string())))?;
    let page = n
        .unwrap_or(state.registry().config().max_page)
        .min(state.registry().config().max_page);
    with_next_link(
        json_response(StatusCode::OK, body),
        more,
        "/v2/_catalog",
        page,
        repos.last(),
    )
}

async fn referrers(state: &AppState, name: RepoName, digest: Digest, req: Request) -> ApiResult {
    let q = query(&req);
    let artifact_type = q.get("artifactType").filter(|s| !s.is_empty());
    let body = state
        .registry()
        .referrers(&name, &digest, artifact_type.map(String::as_str))
        .await?;
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(berth_oci::media::OCI_INDEX),
    );
    if artifact_type.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
