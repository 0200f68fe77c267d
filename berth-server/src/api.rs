//! The management API under `/api/v1`: users, tenants, members, robot accounts, pull
//! secrets, the audit log, key rotation, webhooks and the job queue (`events`). JSON in and out. Every rule is
//! `berth_registry::access`'s, shared with the CLI.
//!
//! Credentials: Basic (a user or robot and its password), or a Bearer token that carries
//! the management scope `berth:api:*` (which `/token` grants to users who ask for it with
//! their password); either way the caller's current grants decide. A token without that
//! scope (the repository tokens registry clients fetch) is refused with 403, whoever it
//! was issued to, and an anonymous token with 401: a short-lived pull token must never
//! become account control. The version read endpoints (tag history, semver tags,
//! resolve) also take a repository token carrying pull on the repository asked about;
//! rollback, a write, does not (see `versions`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::sync::Arc;

use berth_auth::{Actions, Claims, MANAGEMENT_SCOPE};
use berth_meta::AuditQuery;
use berth_registry::RegistryError;
use berth_registry::access::{self, Identity, NewRobot, RobotCredentials};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;

use crate::auth::{self, Credentials};
use crate::error::ApiError;
use crate::metrics::ReasonLabels;
use crate::{AppState, ConnInfo};

mod events;
mod policy;
mod sbom;
mod versions;

type ApiResult = Result<Response, ApiError>;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{name}",
            axum::routing::patch(update_user).delete(delete_user),
        )
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/tenants/{tenant}",
            axum::routing::patch(update_tenant).delete(delete_tenant),
        )
        .route("/tenants/{tenant}/members", get(list_members))
        .route("/tenants/{tenant}/quota", get(get_quota).put(set_quota))
        .route(
            "/tenants/{tenant}/members/{user}",
            put(set_member).delete(remove_member),
        )
        .route(
            "/tenants/{tenant}/robots",
            get(list_robots).post(create_robot),
        )
        .route(
            "/tenants/{tenant}/robots/{robot}",
            axum::routing::patch(update_robot).delete(delete_robot),
        )
        .route(
            "/tenants/{tenant}/robots/{robot}/rotate",
            post(rotate_robot),
        )
        .route(
            "/tenants/{tenant}/robots/{robot}/pull-secret",
            post(pull_secret),
        )
        .route("/audit", get(audit))
        .route("/keys/rotate", post(rotate_key))
        .route("/tag-rules", get(get_tag_rules).put(set_tag_rules))
        .merge(versions::router())
        .merge(policy::router())
        .merge(sbom::router())
        .merge(events::router())
}

/// An authenticated management caller: Basic credentials, or a token with the management
/// scope.
pub struct Caller {
    id: Identity,
    source: Option<IpAddr>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match authenticate(parts, state).await {
            Ok(Authenticated::Caller(c)) => Ok(*c),
            Ok(Authenticated::RepositoryToken(_)) => Err(scope_refusal(state).into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A caller of the read-only version endpoints: a management caller, or a repository
/// token whose own `access` claim decides (it can pull what it names anyway).
pub enum Reader {
    Caller(Box<Caller>),
    Token(Arc<Claims>),
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match authenticate(parts, state).await {
            Ok(Authenticated::Caller(c)) => Ok(Reader::Caller(c)),
            Ok(Authenticated::RepositoryToken(t)) => Ok(Reader::Token(t)),
            Err(e) => Err(e.into_response()),
        }
    }
}

enum Authenticated {
    Caller(Box<Caller>),
    /// A token without the management scope, from a named (not anonymous) caller.
    RepositoryToken(Arc<Claims>),
}

fn scope_refusal(state: &AppState) -> ApiError {
    state
        .metrics()
        .api_refused
        .get_or_create(&ReasonLabels {
            reason: "token-scope",
        })
        .inc();
    ApiError::Registry(RegistryError::Denied(format!(
        "this token does not grant {MANAGEMENT_SCOPE}: the management API takes Basic \
         credentials or a token for that scope"
    )))
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Authenticated, ApiError> {
    let Some(s) = state.auth() else {
        return Err(ApiError::Registry(RegistryError::NotFound(
            "the management API needs authentication: set [auth] enabled = true".into(),
        )));
    };
    let conn = parts.extensions.get::<ConnInfo>().copied();
    let source = state.client_ip(conn.as_ref(), &parts.headers);
    let unauthorized = || {
        ApiError::Registry(RegistryError::Unauthorized(
            "the management API needs credentials".into(),
        ))
    };
    let id = match auth::credentials(&parts.headers) {
        Credentials::Basic { user, password } => {
            Identity::clone(&*auth::login(state, &s.access, &user, &password, source).await?)
        }
        Credentials::Bearer(token) => {
            let claims = s.access.verify(&token).map_err(|_| unauthorized())?;
            if claims.anon {
                state
                    .metrics()
                    .api_refused
                    .get_or_create(&ReasonLabels {
                        reason: "anonymous-token",
                    })
                    .inc();
                return Err(unauthorized());
            }
            if !claims.grants_management() {
                return Ok(Authenticated::RepositoryToken(claims));
            }
            s.access
                .token_identity(&claims)
                .await
                .map_err(RegistryError::from)?
                .ok_or_else(unauthorized)?
        }
        Credentials::None | Credentials::Malformed(_) => return Err(unauthorized()),
    };
    Ok(Authenticated::Caller(Box::new(Caller { id, source })))
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Registry(RegistryError::Invalid(format!("request body: {e}"))))
}

fn done() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn whoami(c: Caller) -> ApiResult {
    let roles: HashMap<&String, &str> =
        c.id.grants
            .roles
            .iter()
            .map(|(t, r)| (t, r.as_str()))
            .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "name": c.id.name,
            "admin": c.id.is_admin(),
            "roles": roles,
        }),
    ))
}

// ---- users ----

async fn list_users(State(state): State<AppState>, c: Caller) -> ApiResult {
    let users = access_of(&state)?.list_users(&c.id).await?;
    let list: Vec<serde_json::Value> = users
        .iter()
        .map(|u| {
            serde_json::json!({
                "name": u.name, "admin": u.admin, "disabled": u.disabled,
                "created_at": u.created_at / 1_000_000,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "users": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(State(state): State<AppState>, c: Caller, body: Bytes) -> ApiResult {
    let u: NewUser = parse(&body)?;
    access_of(&state)?
        .create_user(&c.id, c.source, &u.name, &u.password, u.admin)
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"name": u.name}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    password: Option<String>,
    /// Required to change one's own password.
    current_password: Option<String>,
    admin: Option<bool>,
    disabled: Option<bool>,
}

async fn update_user(
    State(state): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let p: UserPatch = parse(&body)?;
    access_of(&state)?
        .update_user(
            &c.id,
            c.source,
            &name,
            &access::UserUpdate {
                password: p.password.as_deref(),
                current_password: p.current_password.as_deref(),
                admin: p.admin,
                disabled: p.disabled,
            },
        )
        .await?;
    done()
}

async fn delete_user(
    State(state): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    access_of(&state)?
        .delete_user(&c.id, c.source, &name)
        .await?;
    done()
}

// ---- tenants and members ----

async fn list_tenants(State(state): State<AppState>, c: Caller) -> ApiResult {
    let tenants = access_of(&state)?.list_tenants(&c.id).await?;
    let list: Vec<serde_json::Value> = tenants
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "public": t.public}))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tenants": list }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    public: bool,
}

async fn create_tenant(State(state): State<AppState>, c: Caller, body: Bytes) -> ApiResult {
    let t: NewTenant = parse(&body)?;
    access_of(&state)?
        .create_tenant(&c.id, c.source, &t.name, t.public)
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"name": t.name, "public": t.public}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    public: bool,
}

async fn update_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult {
    let p: TenantPatch = parse(&body)?;
    access_of(&state)?
        .set_tenant_public(&c.id, c.source, &tenant, p.public)
        .await?;
    done()
}

async fn delete_tenant(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
) -> ApiResult {
    access_of(&state)?
        .delete_tenant(&c.id, c.source, &tenant)
        .await?;
    done()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Quota {
    /// Bytes; `null` removes the quota.
    bytes: Option<u64>,
}

async fn get_quota(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
) -> ApiResult {
    let (quota, used) = access_of(&state)?.tenant_quota(&c.id, &tenant).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "tenant": tenant,
            "bytes": quota,
            "used": used.total(),
            "blobs": used.blobs,
            "manifests": used.manifests,
            "uploads": used.uploads,
        }),
    ))
}

async fn set_quota(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult {
    let q: Quota = parse(&body)?;
    access_of(&state)?
        .set_tenant_quota(&c.id, c.source, &tenant, q.bytes)
        .await?;
    done()
}

async fn list_members(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
) -> ApiResult {
    let members = access_of(&state)?.members(&c.id, &tenant).await?;
    let list: Vec<serde_json::Value> = members
        .iter()
        .map(|(u, r)| serde_json::json!({"user": u, "role": r}))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "members": list }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Membership {
    role: String,
}

async fn set_member(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m: Membership = parse(&body)?;
    access_of(&state)?
        .set_member(&c.id, c.source, &tenant, &user, Some(&m.role))
        .await?;
    done()
}

async fn remove_member(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> ApiResult {
    access_of(&state)?
        .set_member(&c.id, c.source, &tenant, &user, None)
        .await?;
    done()
}

// ---- robots ----

async fn list_robots(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
) -> ApiResult {
    let robots = access_of(&state)?.robots(&c.id, &tenant).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "robots": robots }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotSpec {
    name: String,
    #[serde(default = "default_actions")]
    actions: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
    description: Option<String>,
    expires_in_days: Option<u64>,
}

fn default_actions() -> Vec<String> {
    vec!["pull".into()]
}

fn credentials_json(c: &RobotCredentials) -> serde_json::Value {
    serde_json::json!({"robot": c.robot, "secret": c.secret})
}

async fn create_robot(
    State(state): State<AppState>,
    c: Caller,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult {
    let r: RobotSpec = parse(&body)?;
    let unknown: Vec<&String> = r
        .actions
        .iter()
        .filter(|a| !matches!(a.as_str(), "pull" | "push" | "delete"))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::Registry(RegistryError::Invalid(format!(
            "unknown actions {unknown:?}: pull, push, delete"
        ))));
    }
    let spec = NewRobot {
        actions: Actions::from_names(r.actions.iter().map(String::as_str)),
        repositories: r.repositories,
        description: r.description,
        expires_in: r
            .expires_in_days
            .map(|d| Duration::from_secs(d.saturating_mul(86_400))),
    };
    let creds = access_of(&state)?
        .create_robot(&c.id, c.source, &tenant, &r.name, &spec)
        .await?;
    Ok(json(StatusCode::CREATED, &credentials_json(&creds)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotPatch {
    disabled: bool,
}

async fn update_robot(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, robot)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let p: RobotPatch = parse(&body)?;
    access_of(&state)?
        .set_robot_disabled(&c.id, c.source, &tenant, &robot, p.disabled)
        .await?;
    done()
}

async fn delete_robot(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, robot)): Path<(String, String)>,
) -> ApiResult {
    access_of(&state)?
        .delete_robot(&c.id, c.source, &tenant, &robot)
        .await?;
    done()
}

async fn rotate_robot(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, robot)): Path<(String, String)>,
) -> ApiResult {
    let creds = access_of(&state)?
        .rotate_robot(&c.id, c.source, &tenant, &robot)
        .await?;
    Ok(json(StatusCode::OK, &credentials_json(&creds)))
}

/// A ready `kubernetes.io/dockerconfigjson` Secret (or, with `format=config-json`, a
/// `.docker/config.json`) for the robot, whose secret is rotated (or which is created
/// pull-only) in the process.
async fn pull_secret(
    State(state): State<AppState>,
    c: Caller,
    Path((tenant, robot)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: http::HeaderMap,
) -> ApiResult {
    let namespace = q.get("namespace").map(String::as_str);
    if let Some(ns) = namespace
        && !access::valid_namespace(ns)
    {
        return Err(ApiError::Registry(RegistryError::Invalid(format!(
            "{ns:.64?} is not a Kubernetes namespace name"
        ))));
    }
    // Tenant and robot names may hold `_`, a Secret name may not: checked before any robot
    // is created or rotated.
    let secret_name = q
        .get("name")
        .cloned()
        .unwrap_or_else(|| format!("{tenant}-{robot}-pull"));
    if matches!(q.get("format").map(String::as_str), None | Some("secret"))
        && !access::is_secret_name(&secret_name)
    {
        return Err(ApiError::Registry(RegistryError::Invalid(format!(
            "{secret_name:.64?} is not a Kubernetes Secret name; give one with ?name="
        ))));
    }
    let server = registry_host(&state, &headers);
    let creds = access_of(&state)?
        .pull_credentials(&c.id, c.source, &tenant, &robot)
        .await?;
    let body = match q.get("format").map(String::as_str) {
        None | Some("secret") => access::pull_secret(
            &secret_name,
            namespace,
            &server,
            &creds.robot.login,
            &creds.secret,
        ),
        Some("config-json") => access::docker_config(&server, &creds.robot.login, &creds.secret),
        Some(other) => {
            return Err(ApiError::Registry(RegistryError::Invalid(format!(
                "format {other:.32?}: secret or config-json"
            ))));
        }
    };
    Ok(json(StatusCode::OK, &body))
}

/// The registry's host as clients name it in image references: from `public_url`, else
/// the Host the caller used.
pub(crate) fn registry_host(state: &AppState, headers: &http::HeaderMap) -> String {
    if let Some(u) = &state.config().public_url {
        let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
        return rest.trim_end_matches('/').to_owned();
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost")
        .to_owned()
}

// ---- audit and keys ----

async fn audit(
    State(state): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::Registry(RegistryError::Invalid(format!("{k} must be an integer")))
                })
            })
            .transpose()
    };
    let micros = |v: Option<i64>| v.map(|s| s.saturating_mul(1_000_000));
    let query = AuditQuery {
        since: micros(num("since")?),
        until: micros(num("until")?),
        actor: q.get("user").cloned(),
        tenant: q.get("tenant").cloned(),
        repository: q.get("repository").cloned(),
        action: q.get("action").cloned(),
        before_id: num("before")?,
        limit: num("limit")?.map_or(100, |n| n.clamp(1, 1000) as u64),
    };
    let rows = access_of(&state)?.audit(&c.id, &query).await?;
    let next = rows.last().map(|(id, _)| *id);
    let entries: Vec<serde_json::Value> = rows
        .iter()
        .map(|(id, r)| {
            serde_json::json!({
                "id": id,
                "at": r.at / 1_000_000,
                "at_micros": r.at,
                "actor": r.actor,
                "source": r.source,
                "action": r.action,
                "tenant": r.tenant,
                "repository": r.repository,
                "target": r.target,
                "outcome": r.outcome,
                "detail": r.detail,
            })
        })
        .collect();
    let more = entries.len() as u64 == query.limit;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"entries": entries, "next_before": if more { next } else { None }}),
    ))
}

async fn rotate_key(State(state): State<AppState>, c: Caller) -> ApiResult {
    let kid = access_of(&state)?.rotate_key(&c.id, c.source).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({"kid": kid})))
}

// ---- tag rules managed at run time ----

/// The rules name other tenants' repositories: admins only. Others learn a rule when it
/// refuses their push, whose message names it.
async fn get_tag_rules(State(state): State<AppState>, c: Caller) -> ApiResult {
    access::require_admin(&c.id)?;
    let registry = state.registry();
    let managed = registry.managed_tag_rules().await?;
    let config: Vec<_> = registry.config().tag_rules.specs().cloned().collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"config": config, "managed": managed}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagedRules {
    rules: Vec<berth_registry::TagRuleSpec>,
}

/// Replaces the managed rules (admins only); the configuration's stay in force first.
async fn set_tag_rules(State(state): State<AppState>, c: Caller, body: Bytes) -> ApiResult {
    access::require_admin(&c.id)?;
    let r: ManagedRules = parse(&body)?;
    state
        .registry()
        .set_managed_tag_rules(r.rules, &c.id.actor(c.source))
        .await?;
    done()
}

fn access_of(state: &AppState) -> Result<&access::Access, ApiError> {
    state.auth().map(|a| &a.access).ok_or(ApiError::NotFound)
}
