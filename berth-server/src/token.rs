//! The token endpoint of the Docker registry token authentication spec: `GET /token` with
//! Basic credentials (or none, for an anonymous token), and its OAuth2 variant, `POST
//! /token` with `grant_type=password` or `grant_type=refresh_token`.
//!
//! Scopes are `repository:<name>:<actions>` (also written `repository(plugin):...`),
//! `registry:catalog:*`, and Berth's management scope `berth:api:*`. A scope of any other
//! type, or one that does not parse, fails the request with 400 rather than being dropped:
//! a caller must not walk away with a token that means less, or something else, than it
//! asked for.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_auth::Scope;
use berth_meta::AuditRecord;
use berth_registry::RegistryError;
use berth_registry::access::{Identity, IssueVia, IssuedToken};
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use crate::auth::{self, AuthSettings, Credentials};
use crate::error::ApiError;
use crate::metrics::ReasonLabels;
use crate::{AppState, ConnInfo};

/// A token request form is a few hundred bytes.
const MAX_FORM_BYTES: usize = 64 * 1024;

fn settings(state: &AppState) -> Result<&AuthSettings, ApiError> {
    state.auth().ok_or(ApiError::NotFound)
}

fn params(raw: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes(raw).map_err(|_| {
        ApiError::Registry(RegistryError::Invalid(
            "malformed form or query string".into(),
        ))
    })
}

fn one<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn check_service(s: &AuthSettings, p: &[(String, String)]) -> Result<(), ApiError> {
    match one(p, "service") {
        Some(svc) if svc != s.access.config().service => Err(ApiError::Registry(
            RegistryError::Invalid(format!("this is service {:?}", s.access.config().service)),
        )),
        _ => Ok(()),
    }
}

/// `GET /token?service=...&scope=...&offline_token=true`
pub async fn get(State(state): State<AppState>, req: Request) -> Response {
    get_inner(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn get_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let s = settings(state)?;
    let source = state.client_ip(req.extensions().get::<ConnInfo>(), req.headers());
    let p = params(req.uri().query().unwrap_or("").as_bytes())?;
    check_service(s, &p)?;
    let who = match auth::credentials(req.headers()) {
        Credentials::None => {
            Identity::clone(&*s.access.anonymous().await.map_err(RegistryError::from)?)
        }
        Credentials::Basic { user, password } => {
            Identity::clone(&*auth::login(state, &s.access, &user, &password, source).await?)
        }
        Credentials::Bearer(_) | Credentials::Malformed(_) => {
            return Err(ApiError::Registry(RegistryError::Unauthorized(
                "the token endpoint takes Basic credentials".into(),
            )));
        }
    };
    let scopes = scopes(
        state,
        p.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )?;
    let offline = one(&p, "offline_token") == Some("true");
    let issued = issue(
        state,
        s,
        &who,
        &scopes,
        offline,
        IssueVia::Credentials,
        source,
    )?;
    Ok(token_response(&issued, false))
}

/// `POST /token` (form): `grant_type=password|refresh_token`.
pub async fn post(State(state): State<AppState>, req: Request) -> Response {
    post_inner(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn post_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let s = settings(state)?;
    let source = state.client_ip(req.extensions().get::<ConnInfo>(), req.headers());
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::Registry(RegistryError::Invalid("token form too large".into())))?
        .to_bytes();
    let p = params(&body)?;
    check_service(s, &p)?;
    let scopes = scopes(state, one(&p, "scope"))?;
    let (who, via) = match one(&p, "grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (one(&p, "username"), one(&p, "password")) else {
                return Err(ApiError::Registry(RegistryError::Invalid(
                    "grant_type=password needs username and password".into(),
                )));
            };
            (
                Identity::clone(&*auth::login(state, &s.access, user, password, source).await?),
                IssueVia::Credentials,
            )
        }
        Some("refresh_token") => {
            let Some(token) = one(&p, "refresh_token") else {
                return Err(ApiError::Registry(RegistryError::Invalid(
                    "grant_type=refresh_token needs refresh_token".into(),
                )));
            };
            (
                s.access.redeem_refresh(token).await?,
                IssueVia::RefreshToken,
            )
        }
        _ => {
            return Err(ApiError::Registry(RegistryError::Invalid(
                "grant_type must be password or refresh_token".into(),
            )));
        }
    };
    let offline = one(&p, "access_type") == Some("offline");
    let issued = issue(state, s, &who, &scopes, offline, via, source)?;
    Ok(token_response(&issued, true))
}

/// The requested scopes, or 400 naming the first one Berth cannot read.
fn scopes<'a>(
    state: &AppState,
    params: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Scope>, ApiError> {
    Scope::parse_all(params).map_err(|e| {
        state
            .metrics()
            .tokens_refused
            .get_or_create(&ReasonLabels { reason: "scope" })
            .inc();
        ApiError::Registry(RegistryError::Invalid(e.to_string()))
    })
}

fn issue(
    state: &AppState,
    s: &AuthSettings,
    who: &Identity,
    scopes: &[Scope],
    offline: bool,
    via: IssueVia,
    source: Option<IpAddr>,
) -> Result<IssuedToken, ApiError> {
    let issued = s.access.issue(who, scopes, offline, via).map_err(|e| {
        if via == IssueVia::RefreshToken && matches!(e, RegistryError::Invalid(_)) {
            state
                .metrics()
                .tokens_refused
                .get_or_create(&ReasonLabels {
                    reason: "management-refresh",
                })
                .inc();
        }
        ApiError::Registry(e)
    })?;
    state.metrics().tokens_issued.inc();
    let granted: Vec<String> = issued
        .granted
        .iter()
        .map(|e| format!("{}:{}:{}", e.kind, e.name, e.actions.join(",")))
        .collect();
    state.audit(AuditRecord {
        at: berth_meta::now_micros(),
        actor: who.name.clone(),
        source: source.map(|s| s.to_string()),
        action: "token".into(),
        outcome: "ok".into(),
        detail: Some(granted.join(" ")),
        ..AuditRecord::default()
    });
    Ok(issued)
}

fn token_response(t: &IssuedToken, oauth: bool) -> Response {
    let mut body = serde_json::json!({
        "access_token": t.token,
        "expires_in": t.expires_in,
        "issued_at": berth_oci::time::rfc3339(t.issued_at),
    });
    if !oauth {
        body["token"] = serde_json::Value::from(t.token.as_str());
    } else {
        let scope: Vec<String> = t
            .granted
            .iter()
            .map(|e| format!("{}:{}:{}", e.kind, e.name, e.actions.join(",")))
            .collect();
        body["scope"] = serde_json::Value::from(scope.join(" "));
    }
    if let Some(r) = &t.refresh_token {
        body["refresh_token"] = serde_json::Value::from(r.as_str());
    }
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Tokens must not end up in shared caches.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
