//! Webhooks and the job queue under `/api/v1`.
//!
//! * `GET /webhooks`, `PUT|DELETE /webhooks/{name}`: global webhooks (admins).
//! * `GET /tenants/{t}/webhooks`, `PUT|DELETE /tenants/{t}/webhooks/{name}`: a tenant's
//!   (its owners, admins). A webhook's address must be one the allowlist admits.
//! * `GET /events?state=pending|dead&before=ID&limit=N`, `POST /events/{id}/redeliver`:
//!   every queued or dead job (admins).
//! * `GET /tenants/{t}/events`, `POST /tenants/{t}/events/{id}/redeliver`: the jobs of the
//!   tenant's webhooks (its owners).
//!
//! The rules are the registry's (`berth_registry::events`), shared with `berth events`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use berth_meta::JobState;
use berth_registry::RegistryError;
use berth_registry::events::{JobView, WebhookSpec};
use bytes::Bytes;
use http::StatusCode;

use super::{ApiResult, Caller, done, json};
use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list_global))
        .route("/webhooks/{name}", put(put_global).delete(delete_global))
        .route("/tenants/{tenant}/webhooks", get(list_tenant))
        .route(
            "/tenants/{tenant}/webhooks/{name}",
            put(put_tenant).delete(delete_tenant),
        )
        .route("/events", get(jobs_global))
        .route("/events/{id}/redeliver", post(redeliver_global))
        .route("/tenants/{tenant}/events", get(jobs_tenant))
        .route(
            "/tenants/{tenant}/events/{id}/redeliver",
            post(redeliver_tenant),
        )
}

fn invalid(msg: String) -> ApiError {
    ApiError::Registry(RegistryError::Invalid(msg))
}

async fn list(state: &AppState, c: &Caller, tenant: Option<&str>) -> ApiResult {
    let hooks = state.registry().webhooks(&c.id, tenant)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "webhooks": hooks }),
    ))
}

async fn list_global(State(state): State<AppState>, c: Caller) -> ApiResult {
    list(&state, &c, None).await
}

async fn list_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
) -> ApiResult {
    list(&state, &c, Some(&tenant)).await
}

/// The body is the webhook without its name (the path gives it): `url`, and optionally
/// `events`, `repositories`, `secret`, `format`, `timeout_secs`.
fn spec(name: &str, body: &Bytes) -> Result<WebhookSpec, ApiError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("request body: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(invalid("request body: a JSON object".into()));
    };
    if let Some(given) = obj.get("name")
        && given.as_str() != Some(name)
    {
        return Err(invalid(format!(
            "the body names another webhook than the path ({name})"
        )));
    }
    obj.insert("name".into(), name.into());
    serde_json::from_value(v).map_err(|e| invalid(format!("request body: {e}")))
}

async fn put_global(
    State(state): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let spec = spec(&name, &body)?;
    state
        .registry()
        .put_webhook(&c.id, c.source, None, spec)
        .await?;
    done()
}

async fn put_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let spec = spec(&name, &body)?;
    state
        .registry()
        .put_webhook(&c.id, c.source, Some(&tenant), spec)
        .await?;
    done()
}

async fn delete_global(
    State(state): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .registry()
        .delete_webhook(&c.id, c.source, None, &name)
        .await?;
    done()
}

async fn delete_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, name)): Path<(String, String)>,
) -> ApiResult {
    state
        .registry()
        .delete_webhook(&c.id, c.source, Some(&tenant), &name)
        .await?;
    done()
}

async fn jobs(
    state: &AppState,
    c: &Caller,
    tenant: Option<&str>,
    q: &HashMap<String, String>,
) -> ApiResult {
    let job_state = match q.get("state").map(String::as_str) {
        None | Some("") => None,
        Some("pending") => Some(JobState::Pending),
        Some("dead") => Some(JobState::Dead),
        Some(other) => {
            return Err(invalid(format!("state {other:.32?}: pending or dead")));
        }
    };
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| invalid(format!("{k} must be an integer")))
            })
            .transpose()
    };
    let limit = num("limit")?.map_or(100, |n| n.clamp(1, 1000) as u64);
    let list: Vec<JobView> = state
        .registry()
        .jobs(&c.id, tenant, job_state, num("before")?, limit)
        .await?;
    let next = (list.len() as u64 == limit)
        .then(|| list.last().map(|j| j.id))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "jobs": list, "next_before": next }),
    ))
}

async fn jobs_global(
    State(state): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    jobs(&state, &c, None, &q).await
}

async fn jobs_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    jobs(&state, &c, Some(&tenant), &q).await
}

async fn redeliver_global(
    State(state): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
) -> ApiResult {
    state
        .registry()
        .redeliver(&c.id, c.source, None, id)
        .await?;
    done()
}

async fn redeliver_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, id)): Path<(String, i64)>,
) -> ApiResult {
    state
        .registry()
        .redeliver(&c.id, c.source, Some(&tenant), id)
        .await?;
    done()
}
