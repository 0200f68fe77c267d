//! Authentication of `/v2` requests and the decision allow, challenge (401) or deny (403).
//!
//! A request carries HTTP Basic credentials, a Bearer token from `/token`, or nothing.
//! Bearer tokens are checked against their `access` claim alone (what was granted when
//! they were issued, for at most their short lifetime); Basic credentials and anonymous
//! callers are checked against their current grants.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use berth_auth::{Actions, Claims};
use berth_meta::{Actor, AuditRecord};
use berth_registry::RegistryError;
use berth_registry::access::{Access, Identity, LoginError};
use http::{HeaderMap, HeaderValue, header};

use crate::error::ApiError;
use crate::{AppState, ConnInfo};

/// How a 401 asks the client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// The Docker token flow: `Bearer realm=".../token",service=...,scope=...`.
    Bearer,
    /// Plain HTTP Basic on every request.
    Basic,
}

/// Authentication settings of a server that has it on.
#[derive(Clone)]
pub struct AuthSettings {
    pub access: Access,
    pub challenge: ChallengeKind,
}

/// Who sent a request.
#[derive(Clone)]
pub enum Caller {
    /// Authentication is off: everything is allowed (loopback or an explicit opt-in).
    Open,
    Anonymous(Arc<Identity>),
    Basic(Arc<Identity>),
    Bearer(Arc<Claims>),
}

/// A request's caller and where it came from.
#[derive(Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub source: Option<IpAddr>,
    /// For the realm of a challenge, computed only when one is sent.
    host: Option<HeaderValue>,
    tls: bool,
}

impl Ctx {
    /// May the caller do `need` to `repo`?
    pub fn allows(&self, repo: &str, need: Actions) -> bool {
        match &self.caller {
            Caller::Open => true,
            Caller::Anonymous(id) | Caller::Basic(id) => {
                id.grants.on_repository(repo).contains(need)
            }
            Caller::Bearer(c) => c.actions_on(repo).contains(need),
        }
    }

    pub fn name(&self) -> &str {
        match &self.caller {
            Caller::Open => "anonymous",
            Caller::Anonymous(id) | Caller::Basic(id) => &id.name,
            Caller::Bearer(c) => &c.sub,
        }
    }

    pub fn actor(&self) -> Actor {
        Actor {
            name: self.name().to_owned(),
            source: self.source.map(|s| s.to_string()),
        }
    }

    /// Whether the caller acts as an admin (may delete or roll back immutable tags). With
    /// authentication off everyone does, as everything else is allowed then too. A Bearer
    /// token does not say, so its subject is looked up (never an anonymous token's).
    pub async fn is_admin(&self, state: &AppState) -> Result<bool, ApiError> {
        Ok(match &self.caller {
            Caller::Open => true,
            Caller::Anonymous(id) | Caller::Basic(id) => id.is_admin(),
            Caller::Bearer(_) => self.identity(state).await?.is_some_and(|id| id.is_admin()),
        })
    }

    pub fn is_open(&self) -> bool {
        matches!(self.caller, Caller::Open)
    }

    /// The caller's current grants, for answers filtered per caller (the catalog). A
    /// Bearer token's subject is looked up afresh (an anonymous token's never: it is the
    /// anonymous caller whatever users exist); `None` means all (auth is off).
    pub async fn identity(&self, state: &AppState) -> Result<Option<Identity>, ApiError> {
        let Some(auth) = state.auth() else {
            return Ok(None);
        };
        Ok(Some(match &self.caller {
            Caller::Open => return Ok(None),
            Caller::Anonymous(id) | Caller::Basic(id) => Identity::clone(id),
            Caller::Bearer(c) => match auth
                .access
                .token_identity(c)
                .await
                .map_err(RegistryError::from)?
            {
                Some(id) => id,
                None => {
                    Identity::clone(&*auth.access.anonymous().await.map_err(RegistryError::from)?)
                }
            },
        }))
    }

    /// The refusal for a request that needs `need` on `repo`: a challenge naming the scope
    /// when more credentials could help (anonymous, or a token without that scope), 403
    /// when a logged-in identity simply may not. The message never says whether the
    /// repository exists.
    pub fn refuse(&self, state: &AppState, repo: &str, need: Actions) -> ApiError {
        self.refuse_scopes(state, &[(repo, need)])
    }

    /// [`Ctx::refuse`] for a request that needs several scopes: a challenge names them
    /// all, so one token covers the retry (a mount needs pull on its source as well).
    pub fn refuse_scopes(&self, state: &AppState, scopes: &[(&str, Actions)]) -> ApiError {
        match &self.caller {
            Caller::Basic(_) => ApiError::Registry(RegistryError::Denied(
                "requested access to the resource is denied".into(),
            )),
            Caller::Bearer(_) => self.challenge_scopes(state, scopes, Some("insufficient_scope")),
            Caller::Anonymous(_) | Caller::Open => self.challenge_scopes(state, scopes, None),
        }
    }

    /// A 401 with the configured challenge.
    pub fn challenge(
        &self,
        state: &AppState,
        scope: Option<(&str, Actions)>,
        error: Option<&str>,
    ) -> ApiError {
        self.challenge_scopes(state, scope.as_slice(), error)
    }

    /// A 401 whose Bearer challenge names every scope in `scopes` (space-separated in one
    /// `scope` parameter, as Docker's token spec and CNCF Distribution write it), so the
    /// client asks for one token granting all of them.
    pub fn challenge_scopes(
        &self,
        state: &AppState,
        scopes: &[(&str, Actions)],
        error: Option<&str>,
    ) -> ApiError {
        let kind = state.auth().map_or(ChallengeKind::Basic, |a| a.challenge);
        let challenge = match kind {
            ChallengeKind::Basic => "Basic realm=\"berth\", charset=\"UTF-8\"".to_owned(),
            ChallengeKind::Bearer => {
                let service = state
                    .auth()
                    .map_or("berth", |a| a.access.config().service.as_str());
                let realm = realm(state, self.host.as_ref(), self.tls);
                let mut c = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
                if !scopes.is_empty() {
                    let named: Vec<String> = scopes
                        .iter()
                        .map(|(repo, need)| {
                            // Clients ask for pull along with push, as docker does.
                            let need = if need.contains(Actions::PUSH) {
                                need.union(Actions::PULL)
                            } else {
                                *need
                            };
                            format!("repository:{repo}:{}", need.names().join(","))
                        })
                        .collect();
                    c.push_str(&format!(",scope=\"{}\"", named.join(" ")));
                }
                if let Some(e) = error {
                    c.push_str(&format!(",error=\"{e}\""));
                }
                c
            }
        };
        let message = match error {
            Some("invalid_token") => "token is invalid or expired",
            Some("insufficient_scope") => "token does not grant this access",
            _ => "authentication required",
        };
        ApiError::Unauthorized {
            challenge,
            message: message.to_owned(),
        }
    }
}

/// Where clients fetch tokens: `<public_url>/token`, else the address they reached us at.
fn realm(state: &AppState, host: Option<&HeaderValue>, tls: bool) -> String {
    if let Some(base) = &state.config().public_url {
        return format!("{}/token", base.trim_end_matches('/'));
    }
    let host = host
        .and_then(|h| h.to_str().ok())
        // Echoed into a header: only characters a host[:port] can have.
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}/token")
}

/// Credentials as sent.
pub enum Credentials {
    None,
    Basic { user: String, password: String },
    Bearer(String),
    Malformed(&'static str),
}

pub fn credentials(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(value) = value.to_str() else {
        return Credentials::Malformed("Authorization header is not ASCII");
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        // A user name and password fit in far less; anything longer is not credentials.
        if rest.len() > 4096 {
            return Credentials::Malformed("Basic credentials too long");
        }
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return Credentials::Malformed("Basic credentials are not base64");
        };
        let Ok(text) = String::from_utf8(raw) else {
            return Credentials::Malformed("Basic credentials are not UTF-8");
        };
        let Some((user, password)) = text.split_once(':') else {
            return Credentials::Malformed("Basic credentials have no ':'");
        };
        Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Credentials::Malformed("empty Bearer token");
        }
        Credentials::Bearer(rest.to_owned())
    } else {
        Credentials::Malformed("unsupported Authorization scheme")
    }
}

/// Logs a user in with Basic credentials, recording a failure in the audit log. `source` is
/// the client's address as `AppState::client_ip` found it; the login throttle counts it by
/// its group (`client::group`).
pub async fn login(
    state: &AppState,
    access: &Access,
    user: &str,
    password: &str,
    source: Option<IpAddr>,
) -> Result<Arc<Identity>, ApiError> {
    match access.login(user, password, source).await {
        Ok(id) => Ok(id),
        Err(e) => {
            let outcome = match &e {
                LoginError::Throttled(_) => "throttled",
                LoginError::Busy => "busy",
                LoginError::BadCredentials => "bad-credentials",
                LoginError::Meta(_) => "error",
            };
            state.metrics().login_failures.inc();
            state.audit(AuditRecord {
                at: berth_meta::now_micros(),
                // The name as typed, bounded: it may not exist, and may be hostile.
                actor: user.chars().take(64).collect(),
                source: source.map(|s| s.to_string()),
                action: "login".into(),
                outcome: outcome.into(),
                ..AuditRecord::default()
            });
            Err(ApiError::Registry(e.into()))
        }
    }
}

/// Authenticates a `/v2` request.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    uri: &http::Uri,
    conn: Option<ConnInfo>,
) -> Result<Ctx, ApiError> {
    let source = state.client_ip(conn.as_ref(), headers);
    let mut ctx = Ctx {
        caller: Caller::Open,
        source,
        // HTTP/1.1 names the host in `Host`, HTTP/2 in `:authority` (the URI).
        host: headers.get(header::HOST).cloned().or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
        tls: conn.is_some_and(|c| c.tls),
    };
    let Some(auth) = state.auth() else {
        return Ok(ctx);
    };
    ctx.caller = match credentials(headers) {
        Credentials::None => {
            Caller::Anonymous(auth.access.anonymous().await.map_err(RegistryError::from)?)
        }
        Credentials::Basic { user, password } => {
            match login(state, &auth.access, &user, &password, source).await {
                Ok(id) => Caller::Basic(id),
                Err(ApiError::Registry(RegistryError::Unauthorized(_))) => {
                    return Err(ctx.challenge(state, None, None));
                }
                Err(e) => return Err(e),
            }
        }
        Credentials::Bearer(token) => match auth.access.verify(&token) {
            Ok(claims) => Caller::Bearer(claims),
            Err(_) => return Err(ctx.challenge(state, None, Some("invalid_token"))),
        },
        Credentials::Malformed(why) => {
            let mut e = ctx.challenge(state, None, None);
            if let ApiError::Unauthorized { message, .. } = &mut e {
                *message = why.to_owned();
            }
            return Err(e);
        }
    };
    Ok(ctx)
}
