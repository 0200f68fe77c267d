//! The policy layer under `/api/v1`: what a manifest's signatures prove (`/verify`, for
//! anyone who may pull the repository), the trust and rules managed at run time
//! (`/policy`, admins only: they name other tenants' repositories and keys), and the dry
//! run every rule needs before it may enforce (`/policy/check`, admins only).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use berth_auth::Actions;
use berth_oci::{Reference, RepoName};
use berth_registry::RegistryError;
use berth_registry::access;
use berth_registry::policy::PolicySpec;
use bytes::Bytes;
use http::StatusCode;

use super::{ApiResult, Caller, Reader, done, json, parse};
use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/verify", get(verify))
        .route("/policy", get(get_policy).put(set_policy))
        .route("/policy/check", post(check))
        .route("/admission", get(get_admission).put(set_admission))
}

fn invalid(msg: String) -> ApiError {
    ApiError::Registry(RegistryError::Invalid(msg))
}

/// `?repository=R&reference=TAG|DIGEST`: the signatures of the manifest and each rule's
/// decision. Refused alike whether or not the repository exists.
async fn verify(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let repo: RepoName = q
        .get("repository")
        .ok_or_else(|| invalid("query parameter repository is required".into()))?
        .parse()
        .map_err(|_| ApiError::NameInvalid)?;
    let may = match &c {
        Reader::Caller(c) => c.id.grants.on_repository(repo.as_str()),
        Reader::Token(t) => t.actions_on(repo.as_str()),
    };
    if !may.contains(Actions::PULL) {
        return Err(ApiError::Registry(RegistryError::Denied(
            "requested access to the resource is denied".into(),
        )));
    }
    let reference: Reference = q
        .get("reference")
        .ok_or_else(|| invalid("query parameter reference is required".into()))?
        .parse()
        .map_err(|_| invalid("reference is neither a tag nor a digest".into()))?;
    let registry = state.registry();
    let digest = registry.resolve(&repo, &reference).await?;
    let report = registry.verify_report(&repo, &digest).await?;
    let v = serde_json::to_value(&report).map_err(|e| invalid(e.to_string()))?;
    Ok(json(StatusCode::OK, &v))
}

async fn get_policy(State(state): State<AppState>, c: Caller) -> ApiResult {
    access::require_admin(&c.id)?;
    let registry = state.registry();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "config": registry.config_policy(),
            "managed": registry.managed_policy(),
        }),
    ))
}

/// Replaces the managed trust and rules: `{"trust": [...], "rules": [...]}`.
async fn set_policy(State(state): State<AppState>, c: Caller, body: Bytes) -> ApiResult {
    access::require_admin(&c.id)?;
    let spec: PolicySpec = parse(&body)?;
    state
        .registry()
        .set_managed_policy(spec, &c.id.actor(c.source))
        .await?;
    done()
}

/// `?rule=NAME` (default: every rule): judges every stored image as enforcing would and
/// records the run.
async fn check(
    State(state): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    access::require_admin(&c.id)?;
    let runs = state
        .registry()
        .policy_check(q.get("rule").map(String::as_str))
        .await?;
    let v = serde_json::to_value(&runs).map_err(|e| invalid(e.to_string()))?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "runs": v })))
}

async fn get_admission(State(state): State<AppState>, c: Caller) -> ApiResult {
    access::require_admin(&c.id)?;
    let registry = state.registry();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "config": registry.config_admission(),
            "managed": registry.managed_admission(),
        }),
    ))
}

/// Replaces the admission rules managed at run time: `{"rules": [...]}`, checked whole,
/// in force on every replica within seconds.
async fn set_admission(State(state): State<AppState>, c: Caller, body: Bytes) -> ApiResult {
    access::require_admin(&c.id)?;
    let spec: berth_registry::admission::AdmissionSpec = parse(&body)?;
    state
        .registry()
        .set_managed_admission(spec, &c.id.actor(c.source))
        .await?;
    done()
}
