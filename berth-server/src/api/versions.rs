//! Version management under `/api/v1`: tag history, rollback, semver listing and
//! resolution. Repository names hold slashes, so the repository (and tag) travel as query
//! parameters rather than path segments.
//!
//! Reading (history, semver tags, resolve) needs pull on the repository, from Basic
//! credentials, a management token (the caller's current grants decide), or a repository
//! token whose `access` claim grants pull on it: what such a token can pull anyway, so a
//! CI job resolving `1.4` with its pull token learns nothing more. Rolling back needs push
//! and Basic credentials or a management token: it is a deliberate act on the caller's own
//! account, and no token fetched by a registry client (short-lived, possibly logged or
//! leaked) can move tags through it; the admin flag that lets a rollback move an
//! immutable tag comes from the caller's current grants.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use berth_auth::Actions;
use berth_oci::{Digest, RepoName, Tag};
use berth_registry::{RegistryError, Rollback};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use super::{ApiResult, Caller, Reader, json, parse};
use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tag-history", get(history))
        .route("/tag-rollback", post(rollback))
        .route("/tags", get(tags))
        .route("/resolve", get(resolve))
}

fn invalid(msg: String) -> ApiError {
    ApiError::Registry(RegistryError::Invalid(msg))
}

fn param<'a>(q: &'a HashMap<String, String>, k: &str) -> Result<&'a str, ApiError> {
    q.get(k)
        .map(String::as_str)
        .ok_or_else(|| invalid(format!("query parameter {k} is required")))
}

/// The repository named by `?repository=`, if the caller may do `need` to it. The refusal
/// is the same whether or not the repository exists.
fn repository(
    may: impl FnOnce(&str) -> Actions,
    q: &HashMap<String, String>,
    need: Actions,
) -> Result<RepoName, ApiError> {
    let repo: RepoName = param(q, "repository")?
        .parse()
        .map_err(|_| ApiError::NameInvalid)?;
    if !may(repo.as_str()).contains(need) {
        return Err(ApiError::Registry(RegistryError::Denied(
            "requested access to the resource is denied".into(),
        )));
    }
    Ok(repo)
}

impl Reader {
    fn may(&self, repo: &str) -> Actions {
        match self {
            Reader::Caller(c) => c.id.grants.on_repository(repo),
            Reader::Token(t) => t.actions_on(repo),
        }
    }
}

fn tag(q: &HashMap<String, String>) -> Result<Tag, ApiError> {
    let t = param(q, "tag")?;
    t.parse()
        .map_err(|_| invalid(format!("{t:?} is not a valid tag")))
}

async fn history(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let repo = repository(|r| c.may(r), &q, Actions::PULL)?;
    let tag = tag(&q)?;
    let limit = match q.get("limit") {
        Some(n) => n
            .parse()
            .map_err(|_| invalid("limit must be a positive integer".into()))?,
        None => 100,
    };
    let entries = state.registry().tag_history(&repo, &tag, limit).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "repository": repo.as_str(),
            "tag": tag.as_str(),
            "entries": entries,
        }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<String>,
    steps: Option<u32>,
}

async fn rollback(
    State(state): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let repo = repository(|r| c.id.grants.on_repository(r), &q, Actions::PUSH)?;
    let tag = tag(&q)?;
    let b: RollbackBody = if body.is_empty() {
        RollbackBody::default()
    } else {
        parse(&body)?
    };
    let how = match (b.to, b.steps) {
        (Some(_), Some(_)) => return Err(invalid("give to or steps, not both".into())),
        (Some(to), None) => Rollback::To(
            to.parse::<Digest>()
                .map_err(|_| invalid(format!("{to:?} is not a digest")))?,
        ),
        (None, steps) => Rollback::Steps(steps.unwrap_or(1)),
    };
    let digest = state
        .registry()
        .rollback_tag(&repo, &tag, &how, &c.id.actor(c.source), c.id.is_admin())
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "repository": repo.as_str(),
            "tag": tag.as_str(),
            "digest": digest.as_str(),
        }),
    ))
}

async fn tags(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let repo = repository(|r| c.may(r), &q, Actions::PULL)?;
    match q.get("order").map(String::as_str) {
        Some("semver") => {}
        other => {
            return Err(invalid(format!(
                "order must be semver (got {other:?}); /v2/<name>/tags/list has the plain order"
            )));
        }
    }
    let tags = state.registry().semver_tags(&repo).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"repository": repo.as_str(), "tags": tags}),
    ))
}

async fn resolve(
    State(state): State<AppState>,
    c: Reader,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let repo = repository(|r| c.may(r), &q, Actions::PULL)?;
    let version = param(&q, "version")?;
    let prerelease = match q.get("prerelease").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(invalid(format!(
                "prerelease must be true or false, not {v:?}"
            )));
        }
    };
    let t = state
        .registry()
        .resolve_version(&repo, version, prerelease)
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "repository": repo.as_str(),
            "version": version,
            "tag": t.tag,
            "digest": t.digest,
            "prerelease": t.prerelease,
        }),
    ))
}
