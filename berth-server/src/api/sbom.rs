//! What is inside an image under `/api/v1`, for anyone who may pull the repository:
//! `/catalog` (the stored package catalog as JSON) and `/sbom` (a CycloneDX or SPDX
//! document rendered from it, the same bytes as the referrer stored beside the image).
//! and `/vulnerabilities` (its findings against the imported advisories). All three
//! answer 404 with `{"error": "not cataloged"}` while the catalog job has not run.
//! `/advisories` is the status of the imported advisory feeds.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use berth_auth::Actions;
use berth_oci::{Reference, RepoName};
use berth_registry::RegistryError;
use berth_registry::catalog::Format;
use http::{StatusCode, header};

use super::{ApiResult, Reader, json};
use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/catalog", get(catalog))
        .route("/sbom", get(sbom))
        .route("/vulnerabilities", get(vulnerabilities))
        .route("/advisories", get(advisories))
}

fn invalid(msg: String) -> ApiError {
    ApiError::Registry(RegistryError::Invalid(msg))
}

/// `?repository=R&reference=TAG|DIGEST[&platform=os/arch]`, checked like `/verify`:
/// refused alike whether or not the repository exists.
fn target(
    c: &Reader,
    q: &HashMap<String, String>,
) -> Result<(RepoName, Reference, Option<String>), ApiError> {
    let repo: RepoName = q
        .get("repository")
        .ok_or_else(|| invalid("query parameter repository is required".into()))?
        .parse()
        .map_err(|_| ApiError::NameInvalid)?;
    let may = match c {
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
    Ok((repo, reference, q.get("platform").cloned()))
}

fn not_cataloged() -> axum::response::Response {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not cataloged"}),
    )
}

async fn catalog(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (repo, reference, platform) = target(&c, &q)?;
    match state
        .registry()
        .catalog_of(&repo, &reference, platform.as_deref())
        .await?
    {
        Some(v) => {
            let v = serde_json::to_value(&v).map_err(|e| invalid(e.to_string()))?;
            Ok(json(StatusCode::OK, &v))
        }
        None => Ok(not_cataloged()),
    }
}

/// `&format=cyclonedx|spdx` (default cyclonedx).
async fn sbom(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (repo, reference, platform) = target(&c, &q)?;
    let name = q.get("format").map_or("cyclonedx", String::as_str);
    let format = Format::parse(name)
        .ok_or_else(|| invalid(format!("format {name:?}: cyclonedx or spdx")))?;
    match state
        .registry()
        .sbom(&repo, &reference, platform.as_deref(), format)
        .await?
    {
        Some((media_type, bytes)) => {
            Ok(([(header::CONTENT_TYPE, media_type)], bytes).into_response())
        }
        None => Ok(not_cataloged()),
    }
}

/// The image's findings (`berth scan --json`), matched against the imported advisories.
async fn vulnerabilities(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (repo, reference, platform) = target(&c, &q)?;
    match state
        .registry()
        .scan(&repo, &reference, platform.as_deref())
        .await?
    {
        Some(v) => {
            let v = serde_json::to_value(&v).map_err(|e| invalid(e.to_string()))?;
            Ok(json(StatusCode::OK, &v))
        }
        None => Ok(not_cataloged()),
    }
}

/// The imported feeds (`berth advisories status --json`), for any authenticated caller:
/// it names sources and counts, nothing of any repository.
async fn advisories(State(state): State<AppState>, _c: Reader) -> ApiResult {
    let s = state.registry().advisory_status().await?;
    let v = serde_json::to_value(&s).map_err(|e| invalid(e.to_string()))?;
    Ok(json(StatusCode::OK, &v))
}
