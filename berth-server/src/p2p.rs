//! Node-local sharing, the central Berth's HTTP face (`/p2p/v1`): agents enroll, get
//! tickets and piece hashes, announce what they hold, ask who holds a blob, and fetch a
//! blob for a ticket when no peer can serve it. The rules are `berth_registry::p2p`'s;
//! every request is judged by the address it comes from (through trusted proxies), which
//! is how a node's agent is tied to its kubelet's pulls.

use std::net::IpAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_oci::Digest;
use berth_registry::RegistryError;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;

use crate::error::ApiError;
use crate::{AppState, ConnInfo};

/// The header an agent carries its ticket in, to the central Berth and to peers.
pub const TICKET_HEADER: &str = "x-berth-ticket";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/enroll", post(enroll))
        .route("/tickets/{digest}", get(ticket))
        .route("/peers/{digest}", get(peers))
        .route("/announce", post(announce))
        .route("/grants", get(grants))
        .route("/withdraw", post(withdraw))
        .route("/blobs/{digest}", get(blob))
        .route("/status", get(status))
}

type ApiResult = Result<Response, ApiError>;

#[allow(non_snake_case)]
fn Json<T: serde::Serialize>(v: T) -> Response {
    match serde_json::to_vec(&v) {
        Ok(body) => {
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn from_of(
    state: &AppState,
    req_conn: Option<&ConnInfo>,
    headers: &HeaderMap,
) -> Result<IpAddr, ApiError> {
    state
        .client_ip(req_conn, headers)
        .ok_or_else(|| ApiError::Registry(RegistryError::Internal("no peer address".into())))
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Registry(RegistryError::Unauthorized(
                "a node credential (Bearer) is required".into(),
            ))
        })
}

fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse()
        .map_err(|_| ApiError::Registry(RegistryError::Invalid("not a digest".into())))
}

#[derive(Deserialize)]
struct EnrollBody {
    node: String,
    port: u16,
    /// Hex, the agent's P-256 public point: agent-to-agent TLS is mandatory, so an
    /// agent without one is not enrolled.
    tls_public_key: String,
}

/// The asking agent's address, its bearer credential (or bootstrap token) and its JSON
/// body, which is small: 64 KiB at most.
async fn node_request<T: serde::de::DeserializeOwned>(
    state: &AppState,
    req: Request,
) -> Result<(IpAddr, String, T), ApiError> {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let from = from_of(state, conn.as_ref(), req.headers())?;
    let credential = bearer(req.headers())?.to_owned();
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::Registry(RegistryError::Invalid(e.to_string())))?;
    let b = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Registry(RegistryError::Invalid(e.to_string())))?;
    Ok((from, credential, b))
}

async fn enroll(State(state): State<AppState>, req: Request) -> ApiResult {
    let (from, token, b) = node_request::<EnrollBody>(&state, req).await?;
    let tls_key = hex::decode(&b.tls_public_key).map_err(|_| {
        ApiError::Registry(RegistryError::Invalid("tls_public_key: not hex".into()))
    })?;
    let e = state
        .registry()
        .p2p_enroll(&token, &b.node, from, b.port, &tls_key)
        .await?;
    Ok(Json(e))
}

async fn ticket(State(state): State<AppState>, Path(d): Path<String>, req: Request) -> ApiResult {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let from = from_of(&state, conn.as_ref(), req.headers())?;
    let issued = state
        .registry()
        .p2p_ticket(bearer(req.headers())?, from, &digest(&d)?)
        .await?;
    Ok(Json(issued))
}

async fn peers(State(state): State<AppState>, Path(d): Path<String>, req: Request) -> ApiResult {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let from = from_of(&state, conn.as_ref(), req.headers())?;
    let peers = state
        .registry()
        .p2p_peers(bearer(req.headers())?, from, &digest(&d)?)
        .await?;
    Ok(Json(serde_json::json!({ "peers": peers })))
}

#[derive(Deserialize)]
struct GrantsQuery {
    /// The cursor of the last answer (0: every grant not expired).
    #[serde(default)]
    after: i64,
    /// Seconds to wait for a grant when there is none yet (long poll, capped).
    #[serde(default)]
    wait: u64,
}

/// The node's grants (its recorded manifest pulls, each with tickets for its blobs) after
/// a cursor, waiting a bounded time for one: the agent holds its tickets before containerd
/// asks for a blob, and keeps them if the central Berth goes away.
async fn grants(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<GrantsQuery>,
    req: Request,
) -> ApiResult {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let from = from_of(&state, conn.as_ref(), req.headers())?;
    let g = state
        .registry()
        .p2p_grants(
            bearer(req.headers())?,
            from,
            q.after,
            std::time::Duration::from_secs(q.wait),
        )
        .await?;
    Ok(Json(g))
}

#[derive(Deserialize)]
struct AnnounceBody {
    ticket: String,
}

async fn announce(State(state): State<AppState>, req: Request) -> ApiResult {
    let (from, cred, b) = node_request::<AnnounceBody>(&state, req).await?;
    let peers = state
        .registry()
        .p2p_announce(&cred, from, &b.ticket)
        .await?;
    Ok(Json(serde_json::json!({ "peers": peers })))
}

#[derive(Deserialize)]
struct WithdrawBody {
    digest: String,
}

async fn withdraw(State(state): State<AppState>, req: Request) -> ApiResult {
    let (from, cred, b) = node_request::<WithdrawBody>(&state, req).await?;
    state
        .registry()
        .p2p_withdraw(&cred, from, &digest(&b.digest)?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn blob(State(state): State<AppState>, Path(d): Path<String>, req: Request) -> ApiResult {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let from = from_of(&state, conn.as_ref(), req.headers())?;
    let d = digest(&d)?;
    let ticket = req
        .headers()
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::Registry(RegistryError::Denied("a ticket is required".into())))?;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let read = state
        .registry()
        .p2p_read_blob(from, ticket, &d, range)
        .await?;
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
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some((first, last)) = read.range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", read.size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// The tracker's view, for administrators (`berth p2p status`).
async fn status(State(state): State<AppState>, req: Request) -> ApiResult {
    let conn = req.extensions().get::<ConnInfo>().copied();
    let ctx = crate::auth::authenticate(&state, req.headers(), req.uri(), conn).await?;
    if !ctx.is_admin(&state).await? {
        return Err(ApiError::Registry(RegistryError::Denied(
            "the tracker's view is for administrators".into(),
        )));
    }
    Ok(Json(state.registry().p2p_status().await?))
}
