//! The web interface under `/ui`, served by the registry's own listener: server-rendered
//! HTML (maud: templates checked at compile time, every interpolated value escaped), a
//! stylesheet and a little script embedded in the binary.
//!
//! Defences, each counted in `berth_ui_refused_total{reason}`:
//! * `Host` must be one Berth serves (`public_url`'s host, `[ui] hosts`, `localhost`, or an
//!   IP literal), else 421: a DNS-rebinding page whose name resolves to 127.0.0.1 sends its
//!   own name, and never reaches a page.
//! * Every response carries a strict Content-Security-Policy (no inline script or style,
//!   nothing from other origins, no framing).
//! * Sessions: a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` with TLS or an
//!   https `public_url`), stored hashed in the metadata store (every replica honours it, a
//!   logout anywhere ends it), expiring, and void once the user's password changes.
//! * Every POST carries its session's CSRF token (the login form a double-submit cookie),
//!   and a POST whose `Origin` or `Sec-Fetch-Site` says another site sent it is refused.
//! * Authorization is the API's: the session's user and its current grants, the same
//!   `berth-registry` use cases. With authentication off the interface only reads.

// The refusals are finished responses, returned once per request on its way out: boxing
// them would only add an allocation.
#![allow(clippy::result_large_err)]

mod assets;
mod pages;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_auth::Actions;
use berth_oci::{Digest, Reference, RepoName, Tag};
use berth_registry::access::Identity;
use berth_registry::{RegistryError, Rollback};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::error::ApiError;
use crate::metrics::ReasonLabels;
use crate::{AppState, ConnInfo};

/// `[ui]` settings.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Host names (without port) the interface answers besides `public_url`'s host,
    /// `localhost` and IP literals.
    pub hosts: Vec<String>,
    /// How long a session lasts from login.
    pub session_ttl: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            hosts: Vec::new(),
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

const SESSION_COOKIE: &str = "berth_session";
const LOGIN_COOKIE: &str = "berth_login";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Rows per page of the repository and tag tables.
const PAGE: u64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/static/{file}", get(assets::serve))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/tenants", get(tenants))
        .route("/ui/tenant", get(tenant))
        .route("/ui/audit", get(audit))
        .route("/ui/operations", get(operations))
        .route("/ui/dry-run", axum::routing::post(dry_run))
        .route("/ui/robot", axum::routing::post(robot))
        .route("/ui/pull-secret", axum::routing::post(pull_secret))
        .route("/ui/repositories", get(repositories))
        .route("/ui/repository", get(repository))
        .route("/ui/image", get(image))
        .route("/ui/history", get(history))
        .route("/ui/rollback", get(rollback_confirm).post(rollback))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers every `/ui` response carries, whichever handler (or rejection) made it.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn refuse(state: &AppState, reason: &'static str) {
    state
        .metrics()
        .ui_refused
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// The host part of a `Host` header or an origin's authority (`[::1]:5000` → `::1`).
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// Whether `Host` names this registry. An IP literal cannot come from DNS rebinding (the
/// attack needs a name the attacker's DNS answers for), nor can `localhost`.
fn host_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
    else {
        // HTTP/2 carries the authority in the URI, which hyper does not copy to `Host`.
        return false;
    };
    let name = host_part(host).trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    if name.parse::<IpAddr>().is_ok() || name == "localhost" {
        return true;
    }
    let cfg = state.config();
    if let Some(public) = cfg.public_url.as_deref() {
        let authority = public
            .split_once("://")
            .map_or(public, |(_, r)| r)
            .split('/')
            .next()
            .unwrap_or("");
        if host_part(authority).eq_ignore_ascii_case(&name) {
            return true;
        }
    }
    cfg.ui.hosts.iter().any(|h| h.eq_ignore_ascii_case(&name))
}

fn check_host(state: &AppState, parts: &Parts) -> Result<(), Response> {
    // Two `Host` headers are malformed (RFC 9112 §3.2), and which one a check reads and
    // which one a proxy routed by need not agree.
    if parts.headers.get_all(header::HOST).iter().count() > 1 {
        refuse(state, "host");
        return Err((StatusCode::BAD_REQUEST, "more than one Host header\n").into_response());
    }
    // The authority of an HTTP/2 request is in its URI.
    let mut headers = parts.headers.clone();
    if !headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
    if host_allowed(state, &headers) {
        return Ok(());
    }
    refuse(state, "host");
    Err((
        StatusCode::MISDIRECTED_REQUEST,
        "this host name is not served by this registry\n",
    )
        .into_response())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Cookies go out `Secure` whenever the browser reaches Berth over HTTPS: its own TLS, or
/// an https `public_url` (behind an ingress Berth sees plain HTTP).
fn secure_cookies(state: &AppState) -> bool {
    state.config().tls.is_some()
        || state.config().public_url.as_deref().is_some_and(|u| {
            u.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        })
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if secure_cookies(state) {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("berth_invalid=; Max-Age=0"))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn html(status: StatusCode, m: maud::Markup) -> Response {
    let mut r = (status, m.into_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Who is looking: the session's user, or nobody with authentication off (read-only).
pub struct Viewer {
    id: Option<Identity>,
    csrf: String,
    source: Option<IpAddr>,
}

impl Viewer {
    /// What the viewer may do to `repo`, exactly as the API would decide.
    fn may(&self, repo: &str) -> Actions {
        match &self.id {
            Some(id) => id.grants.on_repository(repo),
            // Authentication off: reading only, so a page the user visits elsewhere cannot
            // make the browser change the registry.
            None => Actions::PULL,
        }
    }

    fn name(&self) -> Option<&str> {
        self.id.as_ref().map(|i| i.name.as_str())
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        check_host(state, parts)?;
        let source = state.client_ip(parts.extensions.get::<ConnInfo>(), &parts.headers);
        let Some(auth) = state.auth() else {
            return Ok(Viewer {
                id: None,
                csrf: String::new(),
                source,
            });
        };
        let session = match cookie(&parts.headers, SESSION_COOKIE) {
            Some(c) => auth
                .access
                .session(c)
                .await
                .map_err(|e| error_page(state, None, ApiError::Registry(e)))?,
            None => None,
        };
        match session {
            Some(s) => Ok(Viewer {
                id: Some(s.identity),
                csrf: s.csrf,
                source,
            }),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/ui/repositories", |p| p.as_str());
                let target = format!(
                    "/ui/login?{}",
                    serde_urlencoded::to_string([("next", next)]).unwrap_or_default()
                );
                Err(redirect(&target))
            }
        }
    }
}

/// A request that only passed the `Host` check (the login page, assets).
pub struct HostChecked;

impl FromRequestParts<AppState> for HostChecked {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        check_host(state, parts)?;
        Ok(HostChecked)
    }
}

/// Refuses a POST another site made the browser send: `Sec-Fetch-Site` (sent by every
/// current browser) other than same-origin, or an `Origin` naming another host.
fn same_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s == "same-origin" || s == "none");
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            o.split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        }
    };
    if site_ok && origin_ok {
        Ok(())
    } else {
        refuse(state, "origin");
        Err(forbidden(
            "This request came from another site and was refused.",
        ))
    }
}

fn forbidden(msg: &str) -> Response {
    html(StatusCode::FORBIDDEN, pages::message("Refused", msg))
}

/// A form body, and the CSRF check against the viewer's session.
fn form_of(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<HashMap<String, String>, Response> {
    same_origin(state, headers)?;
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body)
        .map_err(|_| html(StatusCode::BAD_REQUEST, pages::message("Bad request", "")))?;
    let sent = form.get("csrf").map_or("", String::as_str);
    if viewer.csrf.is_empty() || !constant_time_eq(sent, &viewer.csrf) {
        refuse(state, "csrf");
        return Err(forbidden(
            "The form's security token is missing or does not match your session. \
             Reload the page and try again.",
        ));
    }
    Ok(form)
}

fn error_page(state: &AppState, viewer: Option<&Viewer>, e: ApiError) -> Response {
    if e.is_metadata_unavailable() {
        state.metrics().metadata_unavailable.inc();
    }
    let (status, _) = e.status_and_code();
    let msg = match status {
        StatusCode::NOT_FOUND => "Not found, or not visible to you.".to_owned(),
        StatusCode::FORBIDDEN => "You are not allowed to do this.".to_owned(),
        StatusCode::SERVICE_UNAVAILABLE => {
            "The registry's metadata store is unavailable; try again shortly.".to_owned()
        }
        s if s.is_client_error() => e.to_string(),
        _ => {
            tracing::warn!(error = %e, "web interface request failed");
            "Something went wrong; the registry's log has the details.".to_owned()
        }
    };
    let title = status.canonical_reason().unwrap_or("Error");
    html(
        status,
        pages::layout(viewer.map(pages::Nav::of), title, pages::message_body(&msg)),
    )
}

fn not_found() -> ApiError {
    ApiError::Registry(RegistryError::NameUnknown)
}

/// The repository named by `?repository=`, if the viewer may read it: otherwise the same
/// 404 as an absent one, so names it cannot read are never confirmed.
fn readable(viewer: &Viewer, q: &HashMap<String, String>) -> Result<RepoName, ApiError> {
    let repo: RepoName = q
        .get("repository")
        .and_then(|r| r.parse().ok())
        .ok_or_else(not_found)?;
    if !viewer.may(repo.as_str()).contains(Actions::PULL) {
        return Err(not_found());
    }
    Ok(repo)
}

fn tag_param(q: &HashMap<String, String>) -> Result<Tag, ApiError> {
    q.get("tag")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ApiError::Registry(RegistryError::Invalid("a valid tag is required".into())))
}

type Page = Result<Response, Response>;

// ---- handlers ----

async fn home(_: HostChecked) -> Response {
    redirect("/ui/repositories")
}

async fn login_page(
    State(state): State<AppState>,
    _: HostChecked,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    login_form(&state, q.get("next").map(String::as_str), None)
}

/// The login form, with a fresh double-submit token: the cookie and the hidden field must
/// match, so another site cannot log the browser in to an account of its choosing.
fn login_form(state: &AppState, next: Option<&str>, error: Option<&str>) -> Response {
    if state.auth().is_none() {
        return redirect("/ui/repositories");
    }
    let token = berth_registry::web::random_token();
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut r = html(
        status,
        pages::login(&token, next.filter(|n| local_path(n)), error),
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, 3600),
    );
    r
}

/// Only a path of this interface may be a redirect target after login (no open redirect).
fn local_path(p: &str) -> bool {
    p.starts_with("/ui/") && !p.starts_with("//") && !p.contains('\\')
}

async fn login(
    State(state): State<AppState>,
    _: HostChecked,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    same_origin(&state, &headers)?;
    let Some(auth) = state.auth() else {
        return Ok(redirect("/ui/repositories"));
    };
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| html(StatusCode::BAD_REQUEST, pages::message("Bad request", "")))?;
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    let next = Some(get("next")).filter(|n| local_path(n));
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !constant_time_eq(get("csrf"), expected) {
        refuse(&state, "csrf");
        return Ok(login_form(
            &state,
            next,
            Some("The form expired; please log in again."),
        ));
    }
    let source = state.client_ip(conn.as_ref().map(|c| &c.0), &headers);
    let id = match crate::auth::login(&state, &auth.access, get("user"), get("password"), source)
        .await
    {
        Ok(id) => id,
        Err(_) => {
            return Ok(login_form(
                &state,
                next,
                Some("Wrong user name or password."),
            ));
        }
    };
    let (cookie_value, _) = auth
        .access
        .open_session(&id, state.config().ui.session_ttl)
        .await
        .map_err(|e| {
            html(
                StatusCode::FORBIDDEN,
                pages::message("Login refused", &e.to_string()),
            )
        })?;
    let mut r = redirect(next.unwrap_or("/ui/repositories"));
    let ttl = state.config().ui.session_ttl.as_secs();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &cookie_value, ttl),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", 0));
    Ok(r)
}

async fn logout(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    form_of(&state, &viewer, &headers, &body)?;
    if let (Some(auth), Some(c)) = (state.auth(), cookie(&headers, SESSION_COOKIE)) {
        auth.access
            .close_session(c)
            .await
            .map_err(|e| error_page(&state, Some(&viewer), ApiError::Registry(e)))?;
    }
    let mut r = redirect("/ui/login");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    Ok(r)
}

async fn tenants(State(state): State<AppState>, viewer: Viewer) -> Page {
    let rows = match (state.auth(), &viewer.id) {
        (Some(auth), Some(id)) => Some(
            auth.access
                .list_tenants(id)
                .await
                .map_err(|e| error_page(&state, Some(&viewer), ApiError::Registry(e)))?,
        ),
        _ => None,
    };
    Ok(html(
        StatusCode::OK,
        pages::tenants(&viewer, rows.as_deref()),
    ))
}

async fn tenant(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    let (Some(auth), Some(id)) = (state.auth(), &viewer.id) else {
        return Err(fail(not_found()));
    };
    let name = q.get("name").map(String::as_str).unwrap_or("");
    // A tenant the viewer does not see is the same 404 as one that does not exist.
    let visible = auth
        .access
        .list_tenants(id)
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| fail(not_found()))?;
    // Quota and usage are for its members and admins, as in the API.
    let quota = auth.access.tenant_quota(id, name).await.ok();
    // Members and robots are for the tenant's managers (owners, admins), as in the API.
    let manager = berth_registry::access::require_manager(id, name).is_ok();
    let (members, robots) = if manager {
        let members = auth
            .access
            .members(id, name)
            .await
            .map_err(|e| fail(ApiError::Registry(e)))?;
        let robots = auth
            .access
            .robots(id, name)
            .await
            .map_err(|e| fail(ApiError::Registry(e)))?;
        (Some(members), Some(robots))
    } else {
        (None, None)
    };
    Ok(html(
        StatusCode::OK,
        pages::tenant(
            &viewer,
            &visible,
            quota.as_ref(),
            members.as_deref(),
            robots.as_deref(),
        ),
    ))
}

/// "Pull secret for namespace X": the namespace's own pull-only robot (created, or with
/// `rotate` given a new secret), and its Kubernetes Secret, shown once.
async fn pull_secret(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let form = form_of(&state, &viewer, &headers, &body)?;
    let fail = |e| error_page(&state, Some(&viewer), e);
    let (Some(auth), Some(id)) = (state.auth(), &viewer.id) else {
        refuse(&state, "read-only");
        return Err(forbidden(
            "The web interface is read-only while authentication is off.",
        ));
    };
    let tenant = form.get("tenant").map(String::as_str).unwrap_or("");
    let namespace = form
        .get("namespace")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    let rotate = form.get("rotate").is_some_and(|v| v == "yes");
    if berth_registry::access::require_manager(id, tenant).is_err() {
        refuse(&state, "denied");
        return Err(fail(denied()));
    }
    let mut done = auth
        .access
        .namespace_pull_robots(
            id,
            viewer.source,
            tenant,
            std::slice::from_ref(&namespace),
            rotate,
        )
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    let Some(robot) = done.pop() else {
        return Err(fail(not_found()));
    };
    let server = crate::api::registry_host(&state, &headers);
    Ok(html(
        StatusCode::OK,
        pages::pull_secret(&viewer, tenant, &server, &robot),
    ))
}

/// The audit log, newest first, filtered by user, tenant, action and a day range; what the
/// viewer may read of it is `Access::audit`'s decision (admins all, owners their tenant).
async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    let (Some(auth), Some(id)) = (state.auth(), &viewer.id) else {
        return Err(fail(not_found()));
    };
    let text = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let day = |k: &str, end: bool| -> Result<Option<i64>, Response> {
        match text(k) {
            None => Ok(None),
            Some(d) => pages::day_micros(&d, end).map(Some).ok_or_else(|| {
                fail(ApiError::Registry(RegistryError::Invalid(format!(
                    "{k} must be a date like 2026-12-06"
                ))))
            }),
        }
    };
    let query = berth_meta::AuditQuery {
        since: day("from", false)?,
        until: day("to", true)?,
        actor: text("user"),
        tenant: text("tenant"),
        repository: text("repository"),
        action: text("action"),
        before_id: text("before").and_then(|b| b.parse().ok()),
        limit: PAGE * 2,
    };
    // An owner reads its own tenants' rows: ask for one rather than refuse the page.
    if !id.is_admin() && query.tenant.is_none() {
        return Ok(html(
            StatusCode::OK,
            pages::audit(
                &viewer,
                &q,
                &[],
                false,
                Some(
                    "Admins read the whole log; a tenant's owners read its rows: give the tenant.",
                ),
            ),
        ));
    }
    let rows = auth
        .access
        .audit(id, &query)
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    let more = rows.len() as u64 == query.limit;
    Ok(html(
        StatusCode::OK,
        pages::audit(&viewer, &q, &rows, more, None),
    ))
}

/// Robot accounts of a tenant, for its managers: `op` is `create` (with the actions and
/// repository patterns chosen), `rotate` (a new secret, shown once), `disable`, `enable`.
async fn robot(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let form = form_of(&state, &viewer, &headers, &body)?;
    let fail = |e| error_page(&state, Some(&viewer), e);
    let (Some(auth), Some(id)) = (state.auth(), &viewer.id) else {
        refuse(&state, "read-only");
        return Err(forbidden(
            "The web interface is read-only while authentication is off.",
        ));
    };
    let get = |k: &str| form.get(k).map(|v| v.trim()).unwrap_or("");
    let tenant = get("tenant");
    let name = get("name");
    if berth_registry::access::require_manager(id, tenant).is_err() {
        refuse(&state, "denied");
        return Err(fail(denied()));
    }
    let access = &auth.access;
    let creds = match get("op") {
        "create" => {
            let actions = Actions::from_names(
                ["pull", "push", "delete"]
                    .into_iter()
                    .filter(|a| get(&format!("action_{a}")) == "yes"),
            );
            let repositories = get("repositories")
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            let description = Some(get("description").to_owned()).filter(|d| !d.is_empty());
            let spec = berth_registry::access::NewRobot {
                actions,
                repositories,
                description,
                expires_in: None,
            };
            Some(
                access
                    .create_robot(id, viewer.source, tenant, name, &spec)
                    .await,
            )
        }
        "rotate" => Some(access.rotate_robot(id, viewer.source, tenant, name).await),
        op @ ("disable" | "enable") => {
            access
                .set_robot_disabled(id, viewer.source, tenant, name, op == "disable")
                .await
                .map_err(|e| fail(ApiError::Registry(e)))?;
            None
        }
        _ => {
            return Err(fail(ApiError::Registry(RegistryError::Invalid(
                "unknown operation".into(),
            ))));
        }
    };
    match creds {
        Some(c) => {
            let c = c.map_err(|e| fail(ApiError::Registry(e)))?;
            Ok(html(
                StatusCode::OK,
                pages::robot_secret(&viewer, tenant, &c),
            ))
        }
        None => Ok(redirect(&format!(
            "/ui/tenant?{}",
            serde_urlencoded::to_string([("name", tenant)]).unwrap_or_default()
        ))),
    }
}

/// Operations, for admins (or anyone with authentication off, which shows neither jobs nor
/// dry runs): the metadata store's readiness, each upstream cache (this replica's hits,
/// fills, stale serves and latest failure), the job queues (event delivery, replication,
/// scans, maintenance: backlog, dead jobs), the GC and retention dry runs and their reports,
/// and this replica's counters.
async fn operations(State(state): State<AppState>, viewer: Viewer) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    if let Some(id) = &viewer.id
        && !id.is_admin()
    {
        return Err(fail(denied()));
    }
    let registry = state.registry();
    let readiness = match registry.readiness().await {
        berth_registry::health::Readiness::Ready => ("ready".to_owned(), true),
        berth_registry::health::Readiness::Degraded { down_for } => (
            format!(
                "degraded: the metadata store has not answered for {} s; recent content is served stale",
                down_for.as_secs()
            ),
            false,
        ),
        berth_registry::health::Readiness::Unavailable { down_for } => (
            format!(
                "unavailable: the metadata store has not answered for {} s",
                down_for.as_secs()
            ),
            false,
        ),
    };
    let reg = |e| fail(ApiError::Registry(e));
    let (dead, queues, runs) = match &viewer.id {
        Some(id) => (
            Some(
                registry
                    .jobs(id, None, Some(berth_meta::JobState::Dead), None, 50)
                    .await
                    .map_err(reg)?,
            ),
            Some(registry.queue_status(id).await.map_err(reg)?),
            Some(registry.dry_runs(id, 10).await.map_err(reg)?),
        ),
        None => (None, None, None),
    };
    let view = pages::OpsView {
        readiness,
        upstreams: registry.upstream_status(),
        queues,
        runs,
        dead,
        counters: registry.counters(),
    };
    Ok(html(StatusCode::OK, pages::operations(&viewer, &view)))
}

/// Starts a GC or retention dry run (admins): a job of the durable queue, whose report
/// the operations page shows once ready.
async fn dry_run(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let form = form_of(&state, &viewer, &headers, &body)?;
    let fail = |e| error_page(&state, Some(&viewer), e);
    let Some(id) = &viewer.id else {
        refuse(&state, "read-only");
        return Err(forbidden(
            "The web interface is read-only while authentication is off.",
        ));
    };
    if !id.is_admin() {
        refuse(&state, "denied");
        return Err(fail(denied()));
    }
    let task = form
        .get("task")
        .and_then(|t| berth_registry::maintenance::DryRun::parse(t))
        .ok_or_else(|| {
            fail(ApiError::Registry(RegistryError::Invalid(
                "task must be gc or retention".into(),
            )))
        })?;
    state
        .registry()
        .start_dry_run(id, task)
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    Ok(redirect("/ui/operations#dry-runs"))
}

async fn repositories(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let search = q.get("q").map(|s| s.trim().to_owned()).unwrap_or_default();
    let after = q.get("after").map(String::as_str).filter(|s| !s.is_empty());
    let needle = search.to_lowercase();
    let (repos, more) = state
        .registry()
        .catalog_search(
            Some(needle.as_str()).filter(|n| !n.is_empty()),
            Some(PAGE),
            after,
            |r| viewer.may(r).contains(Actions::PULL),
        )
        .await
        .map_err(|e| error_page(&state, Some(&viewer), ApiError::Registry(e)))?;
    Ok(html(
        StatusCode::OK,
        pages::repositories(&viewer, &search, &repos, more),
    ))
}

async fn repository(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    let repo = readable(&viewer, &q).map_err(fail)?;
    let after = q.get("after").map(String::as_str).filter(|s| !s.is_empty());
    // Versions, newest first, by default; every tag by name on request. Both are ranges of
    // an index, so a page costs the same at any depth of a large repository.
    let by_name = q.get("order").is_some_and(|o| o == "name");
    let page = if by_name {
        state.registry().tag_page(&repo, PAGE, after).await
    } else {
        state.registry().version_page(&repo, PAGE, after).await
    };
    let (rows, more) = page.map_err(|e| fail(ApiError::Registry(e)))?;
    let mut tags = Vec::with_capacity(rows.len());
    for row in rows {
        // The manifest comes through the registry's read cache; its content gives the
        // platforms of an index and the size of an image.
        let summary = match row.digest.parse::<Digest>() {
            Ok(d) => match state
                .registry()
                .get_manifest(&repo, &Reference::Digest(d))
                .await
            {
                Ok(m) => pages::summarize(&m.content),
                Err(_) => pages::Summary::default(),
            },
            Err(_) => pages::Summary::default(),
        };
        tags.push((row, summary));
    }
    let rules = state.registry().tag_rules();
    let immutable: Vec<bool> = tags
        .iter()
        .map(|(r, _)| rules.immutable(repo.as_str(), &r.name).is_some())
        .collect();
    Ok(html(
        StatusCode::OK,
        pages::repository(&viewer, repo.as_str(), by_name, &tags, &immutable, more),
    ))
}

async fn image(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    let repo = readable(&viewer, &q).map_err(fail)?;
    let reference: Reference = q
        .get("reference")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| fail(not_found()))?;
    let reg = state.registry();
    let m = reg
        .get_manifest(&repo, &reference)
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    let parsed = berth_oci::manifest::parse_manifest(&m.content, Some(&m.media_type)).ok();
    let is_index = parsed.as_ref().is_some_and(|p| !p.manifests.is_empty())
        || m.media_type.contains("index")
        || m.media_type.contains("manifest.list");
    let config = match parsed.as_ref().and_then(|p| p.config.as_ref()) {
        Some(c) if !is_index => match c.known_digest() {
            Some(d) => reg.read_config_blob(&repo, &d, 4 << 20).await.ok(),
            None => None,
        },
        _ => None,
    };
    let referrers = reg
        .referrers(&repo, &m.digest, None)
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    let verify = reg
        .verify_report(&repo, &m.digest)
        .await
        .ok()
        .and_then(|r| serde_json::to_value(r).ok());
    let layer_digests: Vec<&str> = parsed
        .as_ref()
        .map(|p| p.layers.iter().map(|l| l.digest.as_str()).collect())
        .unwrap_or_default();
    // Known only for layers the cataloger read to their end; the page says so otherwise.
    let uncompressed = if layer_digests.is_empty() {
        HashMap::new()
    } else {
        reg.uncompressed_sizes(&layer_digests)
            .await
            .unwrap_or_default()
    };
    let packages = if is_index {
        None
    } else {
        reg.catalog_of(&repo, &Reference::Digest(m.digest.clone()), None)
            .await
            .ok()
            .flatten()
            .and_then(|c| serde_json::to_value(c).ok())
    };
    let vulns = if is_index {
        None
    } else {
        reg.image_findings(m.digest.as_str())
            .await
            .ok()
            .flatten()
            .and_then(|r| serde_json::to_value(r).ok())
    };
    Ok(html(
        StatusCode::OK,
        pages::image(&pages::ImageView {
            viewer: &viewer,
            repo: repo.as_str(),
            reference: &reference.to_string(),
            manifest: &m,
            parsed: parsed.as_ref(),
            config: config.as_deref(),
            referrers: &referrers,
            verify,
            vulns,
            uncompressed: &uncompressed,
            packages,
        }),
    ))
}

async fn history(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    let repo = readable(&viewer, &q).map_err(fail)?;
    let tag = tag_param(&q).map_err(fail)?;
    let entries = state
        .registry()
        .tag_history(&repo, &tag, 100)
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    let immutable = state
        .registry()
        .tag_rules()
        .immutable(repo.as_str(), tag.as_str());
    let may_roll_back = may_roll_back(&viewer, &repo, immutable.is_some());
    Ok(html(
        StatusCode::OK,
        pages::history(&pages::HistoryView {
            viewer: &viewer,
            repo: repo.as_str(),
            tag: tag.as_str(),
            entries: &entries,
            immutable: immutable.as_deref(),
            may_roll_back,
            done: q.get("done").map(String::as_str),
        }),
    ))
}

/// Rollback is offered to those the API would let roll back: a logged-in user with push
/// on the repository (an immutable tag: an admin). With authentication off, nobody.
fn may_roll_back(viewer: &Viewer, repo: &RepoName, immutable: bool) -> bool {
    match &viewer.id {
        Some(id) => {
            viewer.may(repo.as_str()).contains(Actions::PUSH) && (!immutable || id.is_admin())
        }
        None => false,
    }
}

async fn rollback_confirm(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let fail = |e| error_page(&state, Some(&viewer), e);
    let repo = readable(&viewer, &q).map_err(fail)?;
    let tag = tag_param(&q).map_err(fail)?;
    let to: Digest = q.get("to").and_then(|d| d.parse().ok()).ok_or_else(|| {
        fail(ApiError::Registry(RegistryError::Invalid(
            "a digest is required".into(),
        )))
    })?;
    let immutable = state
        .registry()
        .tag_rules()
        .immutable(repo.as_str(), tag.as_str())
        .is_some();
    if !may_roll_back(&viewer, &repo, immutable) {
        return Err(fail(denied()));
    }
    Ok(html(
        StatusCode::OK,
        pages::rollback_confirm(&viewer, repo.as_str(), tag.as_str(), to.as_str()),
    ))
}

fn denied() -> ApiError {
    ApiError::Registry(RegistryError::Denied(
        "requested access to the resource is denied".into(),
    ))
}

async fn rollback(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let form = form_of(&state, &viewer, &headers, &body)?;
    let fail = |e| error_page(&state, Some(&viewer), e);
    let Some(id) = &viewer.id else {
        refuse(&state, "read-only");
        return Err(forbidden(
            "The web interface is read-only while authentication is off.",
        ));
    };
    let repo = readable(&viewer, &form).map_err(fail)?;
    let tag = tag_param(&form).map_err(fail)?;
    let to: Digest = form.get("to").and_then(|d| d.parse().ok()).ok_or_else(|| {
        fail(ApiError::Registry(RegistryError::Invalid(
            "a digest is required".into(),
        )))
    })?;
    if !viewer.may(repo.as_str()).contains(Actions::PUSH) {
        refuse(&state, "denied");
        return Err(fail(denied()));
    }
    let digest = state
        .registry()
        .rollback_tag(
            &repo,
            &tag,
            &Rollback::To(to),
            &id.actor(viewer.source),
            id.is_admin(),
        )
        .await
        .map_err(|e| fail(ApiError::Registry(e)))?;
    let target = format!(
        "/ui/history?{}",
        serde_urlencoded::to_string([
            ("repository", repo.as_str()),
            ("tag", tag.as_str()),
            ("done", digest.as_str()),
        ])
        .unwrap_or_default()
    );
    Ok(redirect(&target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_strips_ports_and_brackets() {
        assert_eq!(host_part("example.com:5000"), "example.com");
        assert_eq!(host_part("[::1]:5000"), "::1");
        assert_eq!(host_part("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn only_paths_of_the_interface_are_redirect_targets() {
        assert!(local_path("/ui/image?repository=a"));
        assert!(!local_path("//evil.example/ui/"));
        assert!(!local_path("https://evil.example/"));
        assert!(!local_path("/ui\\..\\"));
    }
}
