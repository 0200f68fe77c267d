//! Access control over real HTTP: the authorization matrix (every role × action × tenant,
//! with Basic credentials and with tokens), the token endpoint, throttling, hostile
//! credentials and the audit log.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use berth_auth::Actions;
use berth_meta::{AuditQuery, MetaStore};
use berth_registry::access::{AccessConfig, NewRobot, UserUpdate, cli_identity};
use berth_server::{ChallengeKind, ServerConfig};
use common::{
    Cred, OCI_MANIFEST, PASSWORD, Setup, TestServer as Server, client_from, metric, sha256,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn ip(a: &str) -> std::net::IpAddr {
    a.parse().expect("test address")
}

async fn start(config: AccessConfig) -> Server {
    start_with(config, ServerConfig::default()).await
}

async fn start_with(config: AccessConfig, server: ServerConfig) -> Server {
    common::start(Setup {
        server: ServerConfig {
            // Summed refusals reach the log within the tests' patience.
            audit_window: Duration::from_millis(300),
            ..server
        },
        auth: Some((config, ChallengeKind::Bearer)),
        ..Setup::default()
    })
    .await
}

impl Server {
    fn req(&self, method: Method, path: &str, cred: &Cred) -> reqwest::RequestBuilder {
        self.request_as(method, path, cred)
    }

    async fn send(&self, method: Method, path: &str, cred: &Cred) -> reqwest::Response {
        self.req(method, path, cred).send().await.expect("send")
    }

    /// A token for `scopes` from `GET /token`, as `docker` asks for one.
    async fn token(&self, cred: &Cred, scopes: &[String]) -> String {
        let mut url = format!("{}/token?service=berth", self.base);
        for s in scopes {
            url.push_str("&scope=");
            url.push_str(&s.replace(' ', "%20"));
        }
        let mut r = self.http.get(url);
        if let Cred::Basic(u, p) = cred {
            r = r.basic_auth(u, Some(p));
        }
        let resp = r.send().await.expect("token");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "token for {cred:?} {scopes:?}"
        );
        let v: Value = resp.json().await.expect("token json");
        assert!(v["expires_in"].as_u64().is_some_and(|e| e >= 60), "{v}");
        v["token"].as_str().expect("token").to_owned()
    }

    async fn push_blob(&self, repo: &str, data: &[u8], cred: &Cred) -> String {
        self.push_blob_as(cred, repo, data).await
    }

    /// Pushes an image to `repo` as admin and returns (manifest bytes, manifest digest,
    /// layer digest).
    async fn seed(&self, repo: &str, tags: &[&str]) -> (Vec<u8>, String, String) {
        let layer = format!("layer of {repo}");
        self.push_image_as(&admin(), repo, tags, layer.as_bytes())
            .await
    }
}

fn admin() -> Cred {
    Cred::user("admin")
}

/// The callers of the matrix, and how each logs in.
const CALLERS: &[&str] = &[
    "admin",
    "owner-a",
    "maint-a",
    "dev-a",
    "reader-a",
    "outsider",
    "lib-dev",
    "robot",
    "anonymous",
];
/// One repository per tenant column: team-a (private, the callers' own), team-b (private,
/// someone else's), pub (public), library (single-segment names).
const COLUMNS: [&str; 4] = ["team-a/app", "team-b/app", "pub/app", "alpine"];
const TENANTS: [&str; 4] = ["team-a", "team-b", "pub", "library"];

/// The expected cells, written out by hand: Y allowed, N refused, one letter per column
/// (team-a, team-b, pub, library). Actions:
/// pull     GET manifest
/// push     PUT manifest under a new tag
/// delete   DELETE a tag
/// tags     GET tags/list
/// refs     GET referrers
/// mount    POST mount=<layer>&from=<column repo> into the caller's own writable repo:
///          Y = mounted (201), N = refused or fallen back to an upload (202, no link)
/// nofrom   POST mount=<layer> without from into the column repo (Y = 202 upload)
/// manage   GET /api/v1/tenants/<tenant>/robots
const MATRIX: &[(&str, [&str; 8])] = &[
    //              pull    push    delete  tags    refs    mount   nofrom  manage
    (
        "admin",
        [
            "YYYY", "YYYY", "YYYY", "YYYY", "YYYY", "YYYY", "YYYY", "YYYY",
        ],
    ),
    (
        "owner-a",
        [
            "YNYN", "YNNN", "YNNN", "YNYN", "YNYN", "YNYN", "YNNN", "YNNN",
        ],
    ),
    (
        "maint-a",
        [
            "YNYN", "YNNN", "YNNN", "YNYN", "YNYN", "YNYN", "YNNN", "NNNN",
        ],
    ),
    (
        "dev-a",
        [
            "YNYN", "YNNN", "NNNN", "YNYN", "YNYN", "YNYN", "YNNN", "NNNN",
        ],
    ),
    (
        "reader-a",
        [
            "YNYN", "NNNN", "NNNN", "YNYN", "YNYN", "NNNN", "NNNN", "NNNN",
        ],
    ),
    (
        "outsider",
        [
            "NNYN", "NNNN", "NNNN", "NNYN", "NNYN", "NNNN", "NNNN", "NNNN",
        ],
    ),
    (
        "lib-dev",
        [
            "NNYY", "NNNY", "NNNN", "NNYY", "NNYY", "NNYY", "NNNY", "NNNN",
        ],
    ),
    (
        "robot",
        [
            "YNYN", "YNNN", "NNNN", "YNYN", "YNYN", "YNYN", "YNNN", "NNNN",
        ],
    ),
    (
        "anonymous",
        [
            "NNYN", "NNNN", "NNNN", "NNYN", "NNYN", "NNNN", "NNNN", "NNNN",
        ],
    ),
];
const ACTIONS: [&str; 8] = [
    "pull", "push", "delete", "tags", "refs", "mount", "nofrom", "manage",
];

/// Repositories each caller's `_catalog` must list, exactly.
const CATALOG: &[(&str, &[&str])] = &[
    (
        "admin",
        &[
            "alpine",
            "pub/app",
            "scratch",
            "team-a/app",
            "team-a/scratch",
            "team-b/app",
        ],
    ),
    ("owner-a", &["pub/app", "team-a/app", "team-a/scratch"]),
    ("maint-a", &["pub/app", "team-a/app", "team-a/scratch"]),
    ("dev-a", &["pub/app", "team-a/app", "team-a/scratch"]),
    ("reader-a", &["pub/app", "team-a/app", "team-a/scratch"]),
    ("outsider", &["pub/app"]),
    ("lib-dev", &["alpine", "pub/app", "scratch"]),
    ("robot", &["pub/app", "team-a/app", "team-a/scratch"]),
    ("anonymous", &["pub/app"]),
];

/// Where a caller may push, for the mount-with-from cells: a repository of its own, so one
/// caller's mount cannot make another's look linked. (Repositories holding only blobs are
/// not in the catalog.)
fn writable(caller: &str) -> Option<String> {
    match caller {
        "admin" | "owner-a" | "maint-a" | "dev-a" | "robot" => Some(format!("team-a/mnt-{caller}")),
        "lib-dev" => Some(format!("mnt-{caller}")),
        _ => None,
    }
}

struct World {
    s: Server,
    creds: BTreeMap<&'static str, Cred>,
    /// Per column: (manifest bytes, manifest digest, layer digest).
    digests: Vec<(Vec<u8>, String, String)>,
}

async fn world() -> World {
    let s = start(AccessConfig {
        // The matrix logs in many times; throttling has its own test.
        failures_before_delay: 1000,
        source_failures_before_delay: 1000,
        ..AccessConfig::default()
    })
    .await;
    let me = cli_identity();
    let a = s.access();
    a.create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    for t in ["team-a", "team-b"] {
        a.create_tenant(&me, None, t, false).await.expect("tenant");
    }
    a.create_tenant(&me, None, "pub", true)
        .await
        .expect("public tenant");
    for (user, tenant, role) in [
        ("owner-a", "team-a", Some("owner")),
        ("maint-a", "team-a", Some("maintainer")),
        ("dev-a", "team-a", Some("developer")),
        ("reader-a", "team-a", Some("reader")),
        ("outsider", "team-b", None),
        ("lib-dev", "library", Some("developer")),
    ] {
        a.create_user(&me, None, user, PASSWORD, false)
            .await
            .expect("user");
        if let Some(role) = role {
            a.set_member(&me, None, tenant, user, Some(role))
                .await
                .expect("member");
        }
    }
    let robot = a
        .create_robot(
            &me,
            None,
            "team-a",
            "ci",
            &NewRobot {
                actions: Actions::PULL.union(Actions::PUSH),
                repositories: Vec::new(),
                description: None,
                expires_in: None,
            },
        )
        .await
        .expect("robot");
    let mut creds = BTreeMap::new();
    for c in CALLERS {
        let cred = match *c {
            "anonymous" => Cred::Anonymous,
            "robot" => Cred::Basic(robot.robot.login.clone(), robot.secret.clone()),
            name => Cred::Basic(name.to_owned(), PASSWORD.to_owned()),
        };
        creds.insert(*c, cred);
    }
    let mut digests = Vec::new();
    for repo in COLUMNS {
        let mut tags = vec!["v1".to_owned()];
        tags.extend(CALLERS.iter().map(|c| format!("del-{c}")));
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        digests.push(s.seed(repo, &tag_refs).await);
    }
    // The writable repositories exist, so the catalog lists them.
    s.seed("team-a/scratch", &["base"]).await;
    s.seed("scratch", &["base"]).await;
    World { s, creds, digests }
}

/// Which repository actions a cell needs, for asking a token.
fn scopes_for(action: &str, repo: &str, caller: &str) -> Vec<String> {
    match action {
        "pull" | "tags" | "refs" => vec![format!("repository:{repo}:pull")],
        "push" | "nofrom" => vec![format!("repository:{repo}:pull,push")],
        "delete" => vec![format!("repository:{repo}:delete")],
        "mount" => {
            let mut v = vec![format!("repository:{repo}:pull")];
            if let Some(w) = writable(caller) {
                v.push(format!("repository:{w}:pull,push"));
            }
            v
        }
        _ => Vec::new(),
    }
}

/// Runs one cell; returns whether it was allowed, after checking that a refusal has the
/// right status and names no repository in its body.
async fn cell(w: &World, caller: &str, cred: &Cred, action: &str, col: usize) -> bool {
    let repo = COLUMNS[col];
    let tenant = TENANTS[col];
    let (manifest, digest, layer) = &w.digests[col];
    let s = &w.s;
    let resp = match action {
        "pull" => {
            s.send(Method::GET, &format!("/v2/{repo}/manifests/v1"), cred)
                .await
        }
        "push" => s
            .req(
                Method::PUT,
                &format!("/v2/{repo}/manifests/pushed-by-{caller}"),
                cred,
            )
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .expect("put"),
        "delete" => {
            s.send(
                Method::DELETE,
                &format!("/v2/{repo}/manifests/del-{caller}"),
                cred,
            )
            .await
        }
        "tags" => {
            s.send(Method::GET, &format!("/v2/{repo}/tags/list"), cred)
                .await
        }
        "refs" => {
            s.send(Method::GET, &format!("/v2/{repo}/referrers/{digest}"), cred)
                .await
        }
        "mount" => {
            let target = writable(caller).unwrap_or_else(|| "team-a/scratch".to_owned());
            let r = s
                .send(
                    Method::POST,
                    &format!("/v2/{target}/blobs/uploads/?mount={layer}&from={repo}"),
                    cred,
                )
                .await;
            if r.status() == StatusCode::ACCEPTED {
                // Fallen back to an upload: the blob must not have been linked.
                let head = s
                    .send(
                        Method::HEAD,
                        &format!("/v2/{target}/blobs/{layer}"),
                        &admin(),
                    )
                    .await;
                assert_eq!(
                    head.status(),
                    StatusCode::NOT_FOUND,
                    "{caller}: refused mount from {repo} linked the blob"
                );
                return false;
            }
            r
        }
        "nofrom" => {
            s.send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?mount={layer}"),
                cred,
            )
            .await
        }
        "manage" => {
            s.send(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/robots"),
                cred,
            )
            .await
        }
        other => panic!("unknown action {other}"),
    };
    let status = resp.status();
    if status.is_success() {
        return true;
    }
    let refused = match cred {
        Cred::Basic(..) if action == "manage" => StatusCode::FORBIDDEN,
        Cred::Basic(..) => StatusCode::FORBIDDEN,
        Cred::Anonymous | Cred::Bearer(_) => StatusCode::UNAUTHORIZED,
    };
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, refused, "{caller} {action} {repo}: {body}");
    assert!(
        !body.contains(repo) && !body.contains(tenant),
        "{caller} {action} {repo}: refusal body names it: {body}"
    );
    if refused == StatusCode::UNAUTHORIZED && action != "manage" {
        let c = challenge.unwrap_or_default();
        assert!(
            c.starts_with("Bearer realm=") && c.contains("service=\"berth\""),
            "{c}"
        );
    }
    false
}

async fn run_matrix(w: &World, with_tokens: bool) {
    let mut wrong = Vec::new();
    for (caller, rows) in MATRIX {
        let base = w.creds[caller].clone();
        for (ai, action) in ACTIONS.iter().enumerate() {
            for (col, expected) in rows[ai].chars().enumerate() {
                let cred = match (&base, with_tokens, *action) {
                    // The management API takes the caller's own credentials.
                    (_, false, _) | (_, _, "manage") => base.clone(),
                    (_, true, _) => Cred::Bearer(
                        w.s.token(&base, &scopes_for(action, COLUMNS[col], caller))
                            .await,
                    ),
                };
                let allowed = cell(w, caller, &cred, action, col).await;
                if allowed != (expected == 'Y') {
                    wrong.push(format!(
                        "{caller} {action} {}: expected {expected}, got {}",
                        COLUMNS[col],
                        if allowed { 'Y' } else { 'N' }
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells that differ (tokens: {with_tokens}):\n{}",
        wrong.join("\n")
    );
}

async fn check_catalogs(w: &World) {
    for (caller, expected) in CATALOG {
        let r =
            w.s.send(Method::GET, "/v2/_catalog", &w.creds[caller])
                .await;
        assert_eq!(r.status(), StatusCode::OK, "{caller}");
        let v: Value = r.json().await.expect("json");
        let got: Vec<&str> = v["repositories"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(got, *expected, "catalog of {caller}");
    }
    // Paged: n=1 walks only the visible names.
    let r =
        w.s.send(Method::GET, "/v2/_catalog?n=1", &w.creds["outsider"])
            .await;
    assert!(
        r.headers().get("link").is_none(),
        "outsider sees one repository: no next page"
    );
    let r =
        w.s.send(Method::GET, "/v2/_catalog?n=2", &w.creds["dev-a"])
            .await;
    let link = r.headers()["link"].to_str().expect("link").to_owned();
    assert!(link.contains("last=team-a/app"), "{link}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_with_basic_credentials() {
    let w = world().await;
    run_matrix(&w, false).await;
    check_catalogs(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_with_tokens() {
    let w = world().await;
    run_matrix(&w, true).await;
}

#[tokio::test]
async fn token_flow_challenge_refresh_and_tampering() {
    let w = start(AccessConfig::default()).await;
    let s = &w;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "alice", PASSWORD, false)
        .await
        .expect("user");
    s.access()
        .create_tenant(&me, None, "team-a", false)
        .await
        .expect("tenant");
    s.access()
        .set_member(&me, None, "team-a", "alice", Some("developer"))
        .await
        .expect("member");

    // The challenge on /v2/ and on a repository.
    let r = s.send(Method::GET, "/v2/", &Cred::Anonymous).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        c,
        format!("Bearer realm=\"{}/token\",service=\"berth\"", s.base)
    );
    let r = s
        .send(
            Method::POST,
            "/v2/team-a/app/blobs/uploads/",
            &Cred::Anonymous,
        )
        .await;
    let c = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        c.ends_with(",scope=\"repository:team-a/app:pull,push\""),
        "{c}"
    );

    // The granted access is the intersection of what was asked and what is allowed.
    let alice = Cred::Basic("alice".into(), PASSWORD.into());
    let r = s
        .http
        .get(format!(
            "{}/token?service=berth&scope=repository:team-a/app:pull,push,delete&scope=repository:team-b/app:pull&offline_token=true",
            s.base
        ))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.expect("json");
    let token = v["token"].as_str().expect("token").to_owned();
    assert_eq!(v["access_token"], v["token"]);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("claims"))
            .expect("b64"),
    )
    .expect("claims json");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}])
    );
    let refresh = v["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();

    let bearer = Cred::Bearer(token.clone());
    assert_eq!(
        s.send(Method::GET, "/v2/", &bearer).await.status(),
        StatusCode::OK
    );
    let r = s
        .send(Method::DELETE, "/v2/team-a/app/manifests/v1", &bearer)
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("error=\"insufficient_scope\"")
    );

    // A tampered token (claims edited, signature kept) is refused.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged["access"][0]["name"] = json!("team-b/app");
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
    let r = s
        .send(
            Method::GET,
            "/v2/team-b/app/tags/list",
            &Cred::Bearer(parts.join(".")),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("invalid_token")
    );
    // A refresh token is not an access token.
    let r = s
        .send(
            Method::GET,
            "/v2/team-a/app/tags/list",
            &Cred::Bearer(refresh.clone()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // OAuth2: refresh, and password grants.
    let form = |pairs: &[(&str, &str)]| {
        s.http
            .post(format!("{}/token", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).expect("form"))
    };
    let r = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "berth"),
        ("client_id", "test"),
        ("scope", "repository:team-a/app:pull"),
    ])
    .send()
    .await
    .expect("refresh");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["scope"], "repository:team-a/app:pull");
    let r = form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wrong password"),
        ("service", "berth"),
    ])
    .send()
    .await
    .expect("password grant");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Changing the password kills outstanding refresh tokens.
    s.access()
        .update_user(
            &me,
            None,
            "alice",
            &UserUpdate {
                password: Some("another password"),
                ..UserUpdate::default()
            },
        )
        .await
        .expect("passwd");
    let r = form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .send()
        .await
        .expect("refresh");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // ...and the old password, even remembered by the login cache, no longer works.
    assert_eq!(
        s.send(Method::GET, "/v2/", &alice).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A token for another service is refused.
    let r = s
        .http
        .get(format!("{}/token?service=other", s.base))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

async fn login_from(
    s: &Server,
    client: &reqwest::Client,
    user: &str,
    password: &str,
) -> reqwest::Response {
    client
        .get(format!("{}/v2/", s.base))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn failed_logins_slow_down_but_never_lock_out() {
    let cap = Duration::from_millis(400);
    let s = start(AccessConfig {
        failures_before_delay: 3,
        source_failures_before_delay: 1000,
        max_login_delay: cap,
        // Every login below is checked, none answered from memory.
        login_cache_ttl: Duration::ZERO,
        ..AccessConfig::default()
    })
    .await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "alice", PASSWORD, false)
        .await
        .expect("user");
    // Twelve wrong passwords from the attacker's address, one at a time: each is
    // answered 401 (slower and slower), none is refused.
    let attacker = client_from(ip("127.0.0.2"));
    for i in 0..12 {
        let r = login_from(&s, &attacker, "alice", "nope nope").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // The right password from another address gets in at once...
    let elsewhere = client_from(ip("127.0.0.3"));
    let t = std::time::Instant::now();
    let r = login_from(&s, &elsewhere, "alice", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK, "another address");
    let from_elsewhere = t.elapsed();
    // ...and from the attacker's own address, after at most the delay.
    let t = std::time::Instant::now();
    let r = login_from(&s, &attacker, "alice", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK, "the attacker's address");
    let from_attacker = t.elapsed();
    assert!(
        from_attacker < cap + Duration::from_secs(3),
        "{from_attacker:?}"
    );
    println!(
        "correct password: {from_elsewhere:?} from elsewhere, {from_attacker:?} from the attacker's address"
    );

    // A burst of concurrent guesses from one address queues one delay deep; the rest are
    // refused at once with 429 and Retry-After, never with a server error.
    for _ in 0..6 {
        login_from(&s, &attacker, "alice", "nope nope").await;
    }
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let c = attacker.clone();
            let url = format!("{}/v2/", s.base);
            tokio::spawn(async move {
                c.get(url)
                    .basic_auth("alice", Some("nope nope"))
                    .send()
                    .await
                    .expect("send")
            })
        })
        .collect();
    let mut refused = 0;
    for b in burst {
        let r = b.await.expect("task");
        match r.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("secs");
                assert!((1..=5).contains(&retry), "{retry}");
                let v: Value = r.json().await.expect("json");
                assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
            }
            other => panic!("burst answered {other}"),
        }
    }
    assert!(refused > 0, "a burst deeper than the delay is cut short");
    // After the burst, the right password from that address still gets in.
    let r = login_from(&s, &attacker, "alice", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK, "after the burst");

    // The failures are in the audit log with the attacker's address (the first of each
    // kind at once, the repeats summed per window), and counted.
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = poll_audit(&s.meta, "login", 1).await;
        if represented(&rows) >= 28 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(represented(&rows) >= 28, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.actor == "alice" && r.source.as_deref() == Some("127.0.0.2")),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.outcome == "throttled"), "{rows:?}");
    let m = s.metrics().await;
    // Timing decides how many waited (a slow check outlasts a short delay), but the
    // burst's second attempt always did.
    assert!(metric::<f64>(&m, "berth_login_delayed_total") >= 1.0, "{m}");
    assert_eq!(
        metric::<f64>(&m, "berth_login_throttled_total"),
        f64::from(refused),
        "{m}"
    );
    assert!(
        metric::<f64>(&m, "berth_password_checks_total{lane=\"suspect\"}") > 0.0,
        "{m}"
    );
    assert!(
        metric::<f64>(&m, "berth_login_failures_total") >= 28.0,
        "{m}"
    );
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let s = start_with(
        AccessConfig {
            source_failures_before_delay: 1000,
            ..AccessConfig::default()
        },
        ServerConfig {
            trusted_proxies: berth_server::client::TrustedProxies::parse(&["127.0.0.1"])
                .expect("proxies"),
            ..ServerConfig::default()
        },
    )
    .await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "alice", PASSWORD, false)
        .await
        .expect("user");
    // Which lane the next check went to tells whose failures it was counted under: the
    // suspect lane if its (user, client) pair or its client has failed before.
    let lanes = || async {
        let m = s.metrics().await;
        (
            metric::<f64>(&m, "berth_password_checks_total{lane=\"clean\"}"),
            metric::<f64>(&m, "berth_password_checks_total{lane=\"suspect\"}"),
        )
    };
    let guess = |client: reqwest::Client, forwarded: &'static str| {
        let url = format!("{}/v2/", s.base);
        async move {
            let r = client
                .get(url)
                .basic_auth("alice", Some("nope nope"))
                .header("x-forwarded-for", forwarded)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    };
    let lane_of =
        |before: (f64, f64), after: (f64, f64)| match (after.0 - before.0, after.1 - before.1) {
            (1.0, 0.0) => "clean",
            (0.0, 1.0) => "suspect",
            other => panic!("one check expected, got {other:?}"),
        };
    // Through the trusted proxy (127.0.0.1), the forwarded client counts: its first
    // failure makes it suspect, and only it.
    let proxy = client_from(ip("127.0.0.1"));
    let l = lanes().await;
    guess(proxy.clone(), "203.0.113.66, 198.51.100.7").await;
    assert_eq!(lane_of(l, lanes().await), "clean", "a first attempt");
    let l = lanes().await;
    guess(proxy.clone(), "198.51.100.7").await;
    assert_eq!(
        lane_of(l, lanes().await),
        "suspect",
        "the forwarded client failed"
    );
    let l = lanes().await;
    guess(proxy.clone(), "198.51.100.8").await;
    assert_eq!(
        lane_of(l, lanes().await),
        "clean",
        "another client behind the same proxy is not the one that failed"
    );
    // Two failures of 198.51.100.7 and one of .8 (repeats within a window are summed).
    let mut per_source = BTreeMap::new();
    for _ in 0..100 {
        per_source.clear();
        for r in poll_audit(&s.meta, "login", 1).await {
            let n = represented(std::slice::from_ref(&r));
            *per_source.entry(r.source).or_insert(0) += n;
        }
        if per_source.values().sum::<u64>() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        per_source,
        BTreeMap::from([
            (Some("198.51.100.7".to_owned()), 2),
            (Some("198.51.100.8".to_owned()), 1)
        ])
    );

    // From an untrusted peer the header is ignored: rotating it does not escape the
    // count, and the audit log names the peer.
    let direct = client_from(ip("127.0.0.9"));
    let l = lanes().await;
    guess(direct.clone(), "192.0.2.1").await;
    assert_eq!(
        lane_of(l, lanes().await),
        "clean",
        "the peer's first attempt"
    );
    let l = lanes().await;
    guess(direct.clone(), "192.0.2.2").await;
    assert_eq!(
        lane_of(l, lanes().await),
        "suspect",
        "a forged header does not make a new client"
    );
    let mut from_peer = 0;
    for _ in 0..100 {
        from_peer = poll_audit(&s.meta, "login", 1)
            .await
            .into_iter()
            .filter(|r| r.source.as_deref() == Some("127.0.0.9"))
            .map(|r| represented(&[r]))
            .sum::<u64>();
        if from_peer >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(from_peer, 2, "both failures are the peer's");
}

/// How many refusals audit rows stand for: one each, or the count of a summed row
/// (`N more since ...`).
fn represented(rows: &[berth_meta::AuditRecord]) -> u64 {
    rows.iter()
        .map(|r| {
            r.detail
                .as_deref()
                .and_then(|d| d.split_once(" more since "))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or(1)
        })
        .sum()
}

async fn poll_audit(
    meta: &MetaStore,
    action: &str,
    at_least: usize,
) -> Vec<berth_meta::AuditRecord> {
    for _ in 0..100 {
        let rows = meta
            .audit_query(&AuditQuery {
                action: Some(action.into()),
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .expect("audit");
        if rows.len() >= at_least {
            return rows.into_iter().map(|(_, r)| r).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {at_least} {action} audit rows");
}

#[tokio::test]
async fn hostile_credentials_get_401_never_500() {
    let s = start(AccessConfig::default()).await;
    let b64 = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
    let long_user = format!(
        "Basic {}",
        b64(format!("{}:pw", "u".repeat(100_000)).as_bytes())
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not base64", b"Basic !!!".to_vec()),
        ("no colon", format!("Basic {}", b64(b"alice")).into_bytes()),
        (
            "non-UTF-8 credentials",
            format!("Basic {}", b64(b"\xff\xfe:\xfd")).into_bytes(),
        ),
        ("non-ASCII header", b"Basic \xc3\xa9t\xc3\xa9".to_vec()),
        ("absurdly long user", long_user.into_bytes()),
        (
            "long user, short header",
            format!(
                "Basic {}",
                b64(format!("{}:pw", "u".repeat(3000)).as_bytes())
            )
            .into_bytes(),
        ),
        ("unknown scheme", b"Digest username=x".to_vec()),
        ("empty bearer", b"Bearer ".to_vec()),
        ("garbage bearer", b"Bearer a.b.c".to_vec()),
        (
            "huge bearer",
            format!("Bearer {}", "a".repeat(20_000)).into_bytes(),
        ),
    ];
    for (what, value) in cases {
        for path in [
            "/v2/",
            "/v2/team-a/app/tags/list",
            "/api/v1/users",
            "/token",
        ] {
            let r = s
                .http
                .get(format!("{}{path}", s.base))
                .header(
                    "authorization",
                    reqwest::header::HeaderValue::from_bytes(&value).expect("header"),
                )
                .send()
                .await
                .expect("send");
            let status = r.status();
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
                "{what} on {path}: {status}"
            );
            let v: Value = r
                .json()
                .await
                .unwrap_or_else(|e| panic!("{what} on {path}: body not JSON: {e}"));
            assert!(v["errors"][0]["code"].is_string(), "{what} on {path}: {v}");
        }
    }
    // Scopes Berth cannot read are refused with 400 naming them, never dropped, and never
    // a 500.
    for scope in ["whatever:x:y", "repository:", "%ff", "berth:api:pull"] {
        let r = s
            .http
            .get(format!("{}/token?scope={scope}", s.base))
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{scope}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["errors"][0]["code"], "INVALID", "{scope}: {v}");
    }
}

#[tokio::test]
async fn pulls_and_refusals_reach_the_audit_log() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    s.access()
        .create_user(&me, None, "eve", PASSWORD, false)
        .await
        .expect("user");
    s.access()
        .create_tenant(&me, None, "team-a", false)
        .await
        .expect("tenant");
    let (_, digest, _) = s.seed("team-a/app", &["v1"]).await;
    assert_eq!(
        s.send(Method::GET, "/v2/team-a/app/manifests/v1", &admin())
            .await
            .status(),
        StatusCode::OK
    );
    let eve = Cred::Basic("eve".into(), PASSWORD.into());
    assert_eq!(
        s.send(Method::GET, "/v2/team-a/app/manifests/v1", &eve)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let pulls = poll_audit(&s.meta, "manifest.pull", 1).await;
    assert_eq!(pulls[0].actor, "admin");
    assert_eq!(pulls[0].repository.as_deref(), Some("team-a/app"));
    assert_eq!(pulls[0].target.as_deref(), Some("v1"));
    assert_eq!(pulls[0].detail.as_deref(), Some(digest.as_str()));
    assert_eq!(pulls[0].source.as_deref(), Some("127.0.0.1"));
    let denied = poll_audit(&s.meta, "access", 1).await;
    assert_eq!(
        (denied[0].actor.as_str(), denied[0].outcome.as_str()),
        ("eve", "denied")
    );
    // The push wrote its rows in its own transactions, with who did it.
    let puts = poll_audit(&s.meta, "manifest.put", 1).await;
    assert_eq!(puts[0].actor, "admin");
    // The audit API: admin reads everything; eve reads nothing.
    let r = s
        .send(
            Method::GET,
            "/api/v1/audit?action=manifest&limit=5",
            &admin(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    // Filtered by repository: its rows only, and none for a repository never touched.
    let of = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["repository"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let v: Value = s
        .send(
            Method::GET,
            "/api/v1/audit?repository=team-a/app&limit=50",
            &admin(),
        )
        .await
        .json()
        .await
        .expect("json");
    let repos = of(&v);
    assert!(
        !repos.is_empty() && repos.iter().all(|r| r == "team-a/app"),
        "{v}"
    );
    let v: Value = s
        .send(
            Method::GET,
            "/api/v1/audit?repository=team-a/untouched",
            &admin(),
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(of(&v).is_empty(), "{v}");
    let r = s.send(Method::GET, "/api/v1/audit", &eve).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn management_api_round_trip() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    let a = admin();
    let post = |path: &str, body: Value| {
        s.req(Method::POST, path, &a)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let r = post("/api/v1/tenants", json!({"name": "team-a"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post("/api/v1/tenants", json!({"name": "team-a"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = post("/api/v1/tenants", json!({"name": "Bad Name"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(
        "/api/v1/users",
        json!({"name": "owner", "password": PASSWORD}),
    )
    .send()
    .await
    .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .req(Method::PUT, "/api/v1/tenants/team-a/members/owner", &a)
        .body(json!({"role": "owner"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The owner manages the tenant's robots, and gets a pull secret.
    let owner = Cred::Basic("owner".into(), PASSWORD.into());
    let r = s
        .req(Method::POST, "/api/v1/tenants/team-a/robots", &owner)
        .body(
            json!({"name": "ci", "actions": ["pull", "push"], "repositories": ["app"]}).to_string(),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["robot"]["login"], "team-a+ci");
    let secret = v["secret"].as_str().expect("secret").to_owned();
    // The robot logs in with its secret.
    let robot = Cred::Basic("team-a+ci".into(), secret.clone());
    assert_eq!(
        s.send(Method::GET, "/v2/", &robot).await.status(),
        StatusCode::OK
    );
    let r = s
        .send(
            Method::POST,
            "/api/v1/tenants/team-a/robots/ci/pull-secret?namespace=apps",
            &owner,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(v["metadata"]["namespace"], "apps");
    let config: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["data"][".dockerconfigjson"].as_str().expect("data"))
            .expect("b64"),
    )
    .expect("config json");
    let host = s.base.trim_start_matches("http://");
    let entry = &config["auths"][host];
    assert_eq!(entry["username"], "team-a+ci");
    let new_secret = entry["password"].as_str().expect("password");
    assert_ne!(
        new_secret, secret,
        "a pull secret rotates the robot's secret"
    );
    // The rotated-away secret stops working; the new one works.
    assert_eq!(
        s.send(Method::GET, "/v2/", &robot).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let robot = Cred::Basic("team-a+ci".into(), new_secret.to_owned());
    assert_eq!(
        s.send(Method::GET, "/v2/", &robot).await.status(),
        StatusCode::OK
    );
    // A Secret name Kubernetes would refuse is refused before the robot is rotated; a
    // valid one names the Secret.
    let r = s
        .send(
            Method::POST,
            "/api/v1/tenants/team-a/robots/ci/pull-secret?name=Team_A",
            &owner,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        s.send(Method::GET, "/v2/", &robot).await.status(),
        StatusCode::OK,
        "a refused request rotates nothing"
    );
    let r = s
        .send(
            Method::POST,
            "/api/v1/tenants/team-a/robots/ci/pull-secret?name=apps-pull",
            &owner,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["metadata"]["name"], "apps-pull");
    let config: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["data"][".dockerconfigjson"].as_str().expect("data"))
            .expect("b64"),
    )
    .expect("config json");
    let robot = Cred::Basic(
        "team-a+ci".into(),
        config["auths"][host]["password"]
            .as_str()
            .expect("password")
            .to_owned(),
    );
    assert_eq!(
        s.send(Method::GET, "/v2/", &robot).await.status(),
        StatusCode::OK
    );
    // The owner cannot create users, nor see another tenant's robots.
    let r = s
        .req(Method::POST, "/api/v1/users", &owner)
        .body(json!({"name": "x", "password": PASSWORD}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .send(Method::GET, "/api/v1/tenants/library/robots", &owner)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Disabling a user takes effect at once on this replica.
    let r = s
        .req(Method::PATCH, "/api/v1/users/owner", &a)
        .body(json!({"disabled": true}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.send(Method::GET, "/api/v1/whoami", &owner).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Key rotation: tokens signed before it still verify.
    let token = Cred::Bearer(s.token(&a, &["repository:team-a/app:pull".into()]).await);
    let r = s.send(Method::POST, "/api/v1/keys/rotate", &a).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        s.send(Method::GET, "/v2/team-a/app/tags/list", &token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_refused_body_closes_the_connection() {
    // Found by the conformance suite with `challenge = "basic"`: a 401 to a PUT whose body
    // was never read left the connection looking reusable, and the client's retry on it
    // failed with EOF.
    let s = start(AccessConfig::default()).await;
    let r = s
        .req(
            Method::PUT,
            "/v2/team-a/app/blobs/uploads/x?digest=sha256:00",
            &Cred::Anonymous,
        )
        .body(vec![7u8; 100_000])
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["connection"], "close");
    // Requests without a body keep their connection.
    let r = s.send(Method::GET, "/v2/", &Cred::Anonymous).await;
    assert!(r.headers().get("connection").is_none());
}

#[tokio::test]
async fn tenant_quota_over_the_api_refuses_a_push_past_it() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    s.access()
        .create_user(&me, None, "dev", PASSWORD, false)
        .await
        .expect("dev");
    s.access()
        .create_tenant(&me, None, "team-q", false)
        .await
        .expect("tenant");
    s.access()
        .set_member(&me, None, "team-q", "dev", Some("developer"))
        .await
        .expect("member");
    let a = admin();
    let dev = Cred::Basic("dev".into(), PASSWORD.into());
    let quota = |body: Value, who: &Cred| {
        s.req(Method::PUT, "/api/v1/tenants/team-q/quota", who)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // Only an admin sets it; members read it.
    let r = quota(json!({"bytes": 1000}), &dev).await.expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = quota(json!({"bytes": 1000}), &a).await.expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let push = |data: Vec<u8>| {
        let d = sha256(&data);
        s.req(
            Method::POST,
            &format!("/v2/team-q/app/blobs/uploads/?digest={d}"),
            &dev,
        )
        .body(data)
        .send()
    };
    assert_eq!(
        push(vec![1; 700]).await.expect("send").status(),
        StatusCode::CREATED
    );
    let r = push(vec![2; 700]).await.expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json body");
    assert_eq!(v["errors"][0]["code"], "DENIED");
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("storage quota of tenant team-q"), "{msg}");
    let r = s
        .send(Method::GET, "/api/v1/tenants/team-q/quota", &dev)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["bytes"].as_u64(), v["used"].as_u64()),
        (Some(1000), Some(700))
    );
    let r = quota(json!({"bytes": null}), &a).await.expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        push(vec![2; 700]).await.expect("send").status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn tag_rules_managed_through_the_api_apply_at_once() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    s.access()
        .create_user(&me, None, "dev", PASSWORD, false)
        .await
        .expect("dev");
    s.access()
        .create_tenant(&me, None, "team-r", false)
        .await
        .expect("tenant");
    s.access()
        .set_member(&me, None, "team-r", "dev", Some("developer"))
        .await
        .expect("member");
    let a = admin();
    let dev = Cred::Basic("dev".into(), PASSWORD.into());
    // Pushable before any managed rule.
    s.seed("team-r/app", &["latest"]).await;
    let put = |body: Value, who: &Cred| {
        s.req(Method::PUT, "/api/v1/tag-rules", who)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let rule = json!({"rules": [{"repositories": "team-r/*", "refuse": ["latest"], "immutable": ["release-*"]}]});
    assert_eq!(
        put(rule.clone(), &dev).await.expect("send").status(),
        StatusCode::FORBIDDEN
    );
    let bad = json!({"rules": [{"repositories": "team-r/*", "refuse": ["[z-a]"]}]});
    assert_eq!(
        put(bad, &a).await.expect("send").status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        put(rule, &a).await.expect("send").status(),
        StatusCode::NO_CONTENT
    );

    let r = s.send(Method::GET, "/api/v1/tag-rules", &a).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["managed"][0]["refuse"], json!(["latest"]));
    assert_eq!(v["config"], json!([]));

    // In force at once: `latest` refused naming the rule, `release-*` immutable.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let c = s.push_blob("team-r/app", config, &dev).await;
    let manifest = |n: u32| {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
            "layers": [],
            "annotations": {"n": n.to_string()},
        })
        .to_string()
    };
    let push = |tag: &str, body: String| {
        s.req(
            Method::PUT,
            &format!("/v2/team-r/app/manifests/{tag}"),
            &dev,
        )
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
    };
    let r = push("latest", manifest(1)).await.expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "DENIED");
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("team-r/* refuse latest"), "{msg}");
    assert_eq!(
        push("release-1", manifest(2)).await.expect("send").status(),
        StatusCode::CREATED
    );
    assert_eq!(
        push("release-1", manifest(3)).await.expect("send").status(),
        StatusCode::FORBIDDEN
    );
    // Audited as a management change.
    let r = s
        .send(Method::GET, "/api/v1/audit?action=tagrules.set", &a)
        .await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["entries"][0]["actor"], "admin", "{v}");
}

/// The claims of a token, unverified (the test only reads what the server wrote).
fn claims_of(token: &str) -> Value {
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("claims part"))
            .expect("base64"),
    )
    .expect("claims json")
}

/// `GET /token` with the raw query `scopes` (already `scope=...&...`).
async fn token_for(s: &Server, cred: &Cred, query: &str) -> reqwest::Response {
    let mut r = s
        .http
        .get(format!("{}/token?service=berth&{query}", s.base));
    if let Cred::Basic(u, p) = cred {
        r = r.basic_auth(u, Some(p));
    }
    r.send().await.expect("token")
}

async fn token_ok(s: &Server, cred: &Cred, query: &str) -> String {
    let r = token_for(s, cred, query).await;
    assert_eq!(r.status(), StatusCode::OK, "{cred:?} {query}");
    let v: Value = r.json().await.expect("json");
    v["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn anonymous_is_nobody_even_beside_a_user_of_that_name() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    s.access()
        .create_tenant(&me, None, "team-a", false)
        .await
        .expect("tenant");
    s.seed("team-a/app", &["v1"]).await;
    // Reserved names cannot be created through the API...
    for name in ["anonymous", "system", "cli"] {
        let r = s
            .req(Method::POST, "/api/v1/users", &admin())
            .body(json!({"name": name, "password": PASSWORD}).to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("reserved")),
            "{v}"
        );
    }
    // ...nor imported.
    let bcrypt = "$2y$04$abcdefghijklmnopqrstuu5Xy7u8zCPBzb9Q0Dv1dGz0ETt3hS0Hm";
    let e = s
        .access()
        .import_htpasswd(&me, &format!("anonymous:{bcrypt}\n"))
        .await
        .expect_err("reserved name imported");
    assert!(e.to_string().contains("reserved"), "{e}");

    // A user of that name left from before (written straight into the store, as the
    // migration would find it), an admin and owner of team-a.
    let hash = berth_auth::password::hash(PASSWORD).expect("hash");
    assert!(
        s.meta
            .create_user("anonymous", &hash, true, &berth_meta::Actor::named("old"))
            .await
            .expect("insert")
    );
    s.meta
        .set_member(
            "team-a",
            "anonymous",
            Some("owner"),
            &berth_meta::Actor::named("old"),
        )
        .await
        .expect("member");
    s.access().forget_logins();

    // An unauthenticated token says so, and carries nobody's roles.
    let token = token_ok(
        &s,
        &Cred::Anonymous,
        "scope=repository:team-a/app:pull&scope=registry:catalog:*&scope=berth:api:*",
    )
    .await;
    let claims = claims_of(&token);
    assert_eq!(claims["anon"], true, "{claims}");
    assert_eq!(
        claims["access"],
        json!([{"type": "registry", "name": "catalog", "actions": ["*"]}])
    );
    let anon = Cred::Bearer(token);
    for (method, path, body) in [
        (Method::GET, "/api/v1/whoami", None),
        (Method::GET, "/api/v1/users", None),
        (
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "mallory", "password": PASSWORD})),
        ),
        (Method::GET, "/api/v1/tenants/team-a/robots", None),
    ] {
        let mut r = s.req(method.clone(), path, &anon);
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let r = r.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert!(s.meta.user("mallory").await.expect("get").is_none());
    // On /v2 too: the catalog seen through that token is the anonymous one.
    let r = s.send(Method::GET, "/v2/_catalog", &anon).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["repositories"], json!([]), "{v}");
    // Nor does the name log in with that account's password.
    let r = s
        .send(
            Method::GET,
            "/v2/",
            &Cred::Basic("anonymous".into(), PASSWORD.into()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let m = s.metrics().await;
    assert_eq!(
        metric::<f64>(&m, "berth_reserved_names_refused_total"),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric::<f64>(
            &m,
            "berth_api_credentials_refused_total{reason=\"anonymous-token\"}"
        ),
        4.0,
        "{m}"
    );
}

/// Every management route, with a body where it takes one. None may answer a registry
/// token.
fn management_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/v1/whoami", None),
        (Method::GET, "/api/v1/users", None),
        (
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "mallory", "password": PASSWORD, "admin": true})),
        ),
        (
            Method::PATCH,
            "/api/v1/users/alice",
            Some(json!({"password": "taken over!"})),
        ),
        (Method::DELETE, "/api/v1/users/bob", None),
        (Method::GET, "/api/v1/tenants", None),
        (
            Method::POST,
            "/api/v1/tenants",
            Some(json!({"name": "evil"})),
        ),
        (
            Method::PATCH,
            "/api/v1/tenants/team-a",
            Some(json!({"public": true})),
        ),
        (Method::DELETE, "/api/v1/tenants/team-a", None),
        (Method::GET, "/api/v1/tenants/team-a/members", None),
        (
            Method::PUT,
            "/api/v1/tenants/team-a/members/bob",
            Some(json!({"role": "owner"})),
        ),
        (Method::DELETE, "/api/v1/tenants/team-a/members/alice", None),
        (Method::GET, "/api/v1/tenants/team-a/quota", None),
        (
            Method::PUT,
            "/api/v1/tenants/team-a/quota",
            Some(json!({"bytes": 1})),
        ),
        (Method::GET, "/api/v1/tenants/team-a/robots", None),
        (
            Method::POST,
            "/api/v1/tenants/team-a/robots",
            Some(json!({"name": "evil"})),
        ),
        (
            Method::PATCH,
            "/api/v1/tenants/team-a/robots/ci",
            Some(json!({"disabled": true})),
        ),
        (Method::DELETE, "/api/v1/tenants/team-a/robots/ci", None),
        (
            Method::POST,
            "/api/v1/tenants/team-a/robots/ci/rotate",
            None,
        ),
        (
            Method::POST,
            "/api/v1/tenants/team-a/robots/ci/pull-secret",
            None,
        ),
        (Method::GET, "/api/v1/audit", None),
        (Method::POST, "/api/v1/keys/rotate", None),
        (Method::GET, "/api/v1/tag-rules", None),
        (Method::PUT, "/api/v1/tag-rules", Some(json!({"rules": []}))),
        (
            Method::POST,
            "/api/v1/tag-rollback?repository=pub/img&tag=1.0.0",
            None,
        ),
        (
            Method::GET,
            "/api/v1/tag-history?repository=team-a/app&tag=v1",
            None,
        ),
        (
            Method::GET,
            "/api/v1/resolve?repository=team-a/app&version=1",
            None,
        ),
    ]
}

#[tokio::test]
async fn registry_tokens_are_not_keys_to_the_management_api() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    let a = s.access();
    a.create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    for u in ["alice", "bob"] {
        a.create_user(&me, None, u, PASSWORD, false)
            .await
            .expect("user");
    }
    a.create_tenant(&me, None, "team-a", false)
        .await
        .expect("tenant");
    a.create_tenant(&me, None, "pub", true)
        .await
        .expect("tenant");
    a.set_member(&me, None, "team-a", "alice", Some("owner"))
        .await
        .expect("member");
    a.set_member(&me, None, "pub", "alice", Some("developer"))
        .await
        .expect("member");
    let robot = a
        .create_robot(
            &me,
            None,
            "team-a",
            "ci",
            &NewRobot {
                actions: Actions::PULL,
                repositories: Vec::new(),
                description: None,
                expires_in: None,
            },
        )
        .await
        .expect("robot");
    s.seed("pub/img", &["1.0.0", "1.1.0"]).await;
    s.seed("team-a/app", &["v1"]).await;
    let alice = Cred::Basic("alice".into(), PASSWORD.into());

    // The issue's two tokens: the admin's pull token for a public image, and alice's
    // token with empty access. Neither opens any management route.
    let pull = Cred::Bearer(token_ok(&s, &admin(), "scope=repository:pub/img:pull").await);
    let empty = Cred::Bearer(token_ok(&s, &alice, "").await);
    for (label, cred) in [("pull token", &pull), ("empty token", &empty)] {
        for (method, path, body) in management_routes() {
            let mut r = s.req(method.clone(), path, cred);
            if let Some(b) = &body {
                r = r.body(b.to_string());
            }
            let r = r.send().await.expect("send");
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{label}: {method} {path}"
            );
        }
    }
    assert!(s.meta.user("mallory").await.expect("get").is_none());
    assert!(s.meta.user("bob").await.expect("get").is_some());
    assert_eq!(
        s.send(Method::GET, "/v2/", &alice).await.status(),
        StatusCode::OK,
        "alice's password is untouched"
    );
    // A pull token does read versions of the repository it pulls, and only that one.
    let r = s
        .send(
            Method::GET,
            "/api/v1/resolve?repository=pub/img&version=1",
            &pull,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tag"], "1.1.0");
    let r = s
        .send(
            Method::GET,
            "/api/v1/tag-history?repository=pub/img&tag=1.0.0",
            &pull,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // ...but a push token cannot roll back: that takes the management scope or Basic.
    let push = Cred::Bearer(token_ok(&s, &alice, "scope=repository:pub/img:pull,push").await);
    let r = s
        .send(
            Method::POST,
            "/api/v1/tag-rollback?repository=pub/img&tag=1.0.0",
            &push,
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The management scope, asked for by name with a password, opens the API with the
    // user's own rights.
    let r = token_for(&s, &admin(), "scope=berth:api:*&offline_token=true").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    let admin_mgmt = v["token"].as_str().expect("token").to_owned();
    let refresh = v["refresh_token"].as_str().expect("refresh").to_owned();
    assert_eq!(
        claims_of(&admin_mgmt)["access"],
        json!([{"type": "berth", "name": "api", "actions": ["*"]}])
    );
    let admin_mgmt = Cred::Bearer(admin_mgmt);
    let r = s
        .req(Method::POST, "/api/v1/users", &admin_mgmt)
        .body(json!({"name": "carol", "password": PASSWORD}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .send(
            Method::POST,
            "/api/v1/tag-rollback?repository=pub/img&tag=1.0.0",
            &admin_mgmt,
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "no earlier digest to go back to"
    );
    // alice's management token is alice: an owner, not an admin.
    let alice_mgmt = Cred::Bearer(token_ok(&s, &alice, "scope=berth:api:*").await);
    let r = s.send(Method::GET, "/api/v1/whoami", &alice_mgmt).await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["name"].as_str(), v["admin"].as_bool()),
        (Some("alice"), Some(false))
    );
    assert_eq!(
        s.send(Method::GET, "/api/v1/users", &alice_mgmt)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.send(Method::GET, "/api/v1/tenants/team-a/robots", &alice_mgmt)
            .await
            .status(),
        StatusCode::OK
    );
    // A robot is not granted the scope (it has no management rights to carry).
    let robot_cred = Cred::Basic(robot.robot.login.clone(), robot.secret.clone());
    let robot_token = token_ok(&s, &robot_cred, "scope=berth:api:*").await;
    assert_eq!(claims_of(&robot_token)["access"], json!([]));

    // A refresh token cannot mint the scope; it still renews repository access.
    let form = |pairs: &[(&str, &str)]| {
        s.http
            .post(format!("{}/token", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).expect("form"))
            .send()
    };
    let r = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("scope", "berth:api:*"),
    ])
    .await
    .expect("refresh");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("scope", "repository:pub/img:pull"),
    ])
    .await
    .expect("refresh");
    assert_eq!(r.status(), StatusCode::OK);
    // The password grant may ask for it.
    let r = form(&[
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", PASSWORD),
        ("scope", "berth:api:* repository:pub/img:pull"),
    ])
    .await
    .expect("password grant");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["scope"], "berth:api:* repository:pub/img:pull");

    // Scopes of unknown types fail the request instead of being dropped; what registry
    // clients send still works.
    let r = token_for(
        &s,
        &alice,
        "scope=repository:pub/img:pull&scope=admin:everything:*",
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for query in [
        "scope=repository:pub/img:pull,push",
        "scope=repository(plugin):pub/img:pull",
        "scope=registry:catalog:*",
        "scope=repository:pub/img:pull%20repository:team-a/app:pull",
        "scope=repository:pub/img:pull&scope=repository:team-a/app:pull,push&offline_token=true&client_id=docker",
    ] {
        assert_eq!(
            token_for(&s, &alice, query).await.status(),
            StatusCode::OK,
            "{query}"
        );
    }

    // A user changing its own password gives the current one, whatever the credential.
    let own = |body: Value, cred: &Cred| {
        s.req(Method::PATCH, "/api/v1/users/alice", cred)
            .body(body.to_string())
            .send()
    };
    let r = own(json!({"password": "new password 1"}), &alice_mgmt)
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = own(json!({"password": "new password 1"}), &alice)
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = own(
        json!({"password": "new password 1", "current_password": "not it at all"}),
        &alice_mgmt,
    )
    .await
    .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = own(
        json!({"password": "new password 1", "current_password": PASSWORD}),
        &alice_mgmt,
    )
    .await
    .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.send(
            Method::GET,
            "/v2/",
            &Cred::Basic("alice".into(), "new password 1".into())
        )
        .await
        .status(),
        StatusCode::OK
    );
    // An admin resets someone else's without it.
    let r = s
        .req(Method::PATCH, "/api/v1/users/bob", &admin_mgmt)
        .body(json!({"password": "reset by admin"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let m = s.metrics().await;
    assert!(
        metric::<f64>(
            &m,
            "berth_api_credentials_refused_total{reason=\"token-scope\"}"
        ) >= 50.0,
        "{m}"
    );
    assert_eq!(
        metric::<f64>(&m, "berth_token_requests_refused_total{reason=\"scope\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric::<f64>(
            &m,
            "berth_token_requests_refused_total{reason=\"management-refresh\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn owners_cannot_tell_which_users_exist_and_only_admins_read_tag_rules() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    let a = s.access();
    a.create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    for u in ["owner", "colleague", "stranger", "dev"] {
        a.create_user(&me, None, u, PASSWORD, false)
            .await
            .expect("user");
    }
    for t in ["team-a", "team-b", "team-z"] {
        a.create_tenant(&me, None, t, false).await.expect("tenant");
    }
    for (t, u, r) in [
        ("team-a", "owner", "owner"),
        ("team-b", "owner", "owner"),
        ("team-b", "colleague", "developer"),
        ("team-z", "stranger", "owner"),
        ("team-a", "dev", "developer"),
    ] {
        a.set_member(&me, None, t, u, Some(r))
            .await
            .expect("member");
    }
    let owner = Cred::Basic("owner".into(), PASSWORD.into());
    let put = |who: &Cred, user: &str| {
        s.req(
            Method::PUT,
            &format!("/api/v1/tenants/team-a/members/{user}"),
            who,
        )
        .body(json!({"role": "reader"}).to_string())
        .send()
    };
    // An existing user the owner cannot see, and a name nobody has: the same answer.
    let r1 = put(&owner, "stranger").await.expect("send");
    let (st1, b1) = (r1.status(), r1.text().await.expect("body"));
    let r2 = put(&owner, "strangex").await.expect("send");
    let (st2, b2) = (r2.status(), r2.text().await.expect("body"));
    assert_eq!((st1, st2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(b1.replace("stranger", "strangex"), b2);
    assert!(
        s.meta.roles_of("stranger").await.expect("roles").len() == 1,
        "stranger was not added"
    );
    // A user the owner already manages elsewhere is added.
    assert_eq!(
        put(&owner, "colleague").await.expect("send").status(),
        StatusCode::NO_CONTENT
    );
    // Admins add anyone, and are told when a name does not exist.
    assert_eq!(
        put(&admin(), "stranger").await.expect("send").status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put(&admin(), "nobody").await.expect("send").status(),
        StatusCode::NOT_FOUND
    );

    // Tag rules name other tenants' repositories: admins read them, nobody else.
    let rules = json!({"rules": [{"repositories": "team-z/secret-*", "immutable": ["v*"]}]});
    let r = s
        .req(Method::PUT, "/api/v1/tag-rules", &admin())
        .body(rules.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let robot = a
        .create_robot(
            &me,
            None,
            "team-a",
            "ci",
            &NewRobot {
                actions: Actions::PULL,
                repositories: Vec::new(),
                description: None,
                expires_in: None,
            },
        )
        .await
        .expect("robot");
    for who in [
        owner,
        Cred::Basic("dev".into(), PASSWORD.into()),
        Cred::Basic(robot.robot.login.clone(), robot.secret.clone()),
    ] {
        let r = s.send(Method::GET, "/api/v1/tag-rules", &who).await;
        let status = r.status();
        let body = r.text().await.expect("body");
        assert_eq!(status, StatusCode::FORBIDDEN, "{who:?}");
        assert!(!body.contains("team-z"), "{body}");
    }
    let r = s.send(Method::GET, "/api/v1/tag-rules", &admin()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_logins_at_once_share_one_password_check() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "ci", PASSWORD, false)
        .await
        .expect("user");
    let checks = |m: &str| {
        metric::<f64>(m, "berth_password_checks_total{lane=\"clean\"}")
            + metric::<f64>(m, "berth_password_checks_total{lane=\"suspect\"}")
    };
    let before = checks(&s.metrics().await);
    // Fifty nodes pulling with one robot's credentials at once: one check, not fifty
    // places in the password queue.
    let logins: Vec<_> = (0..50)
        .map(|_| {
            let r = s.req(
                Method::GET,
                "/v2/",
                &Cred::Basic("ci".into(), PASSWORD.into()),
            );
            tokio::spawn(async move { r.send().await.expect("send").status() })
        })
        .collect();
    for l in logins {
        assert_eq!(l.await.expect("task"), StatusCode::OK);
    }
    let after = checks(&s.metrics().await);
    assert_eq!(after - before, 1.0);
}

/// The `scope` values of a Bearer challenge (one parameter, space-separated scopes).
fn challenged_scopes(r: &reqwest::Response) -> Vec<String> {
    let h = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    h.split_once("scope=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(scopes, _)| scopes.split(' ').map(str::to_owned).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_mount_asks_for_the_source_scope_only_from_who_may_read_it() {
    let s = start(AccessConfig::default()).await;
    let me = cli_identity();
    s.access()
        .create_user(&me, None, "admin", PASSWORD, true)
        .await
        .expect("admin");
    for t in ["team-a", "team-b"] {
        s.access()
            .create_tenant(&me, None, t, false)
            .await
            .expect("tenant");
    }
    for (user, tenant) in [("dev-a", "team-a"), ("dev-b", "team-b")] {
        s.access()
            .create_user(&me, None, user, PASSWORD, false)
            .await
            .expect("user");
        s.access()
            .set_member(&me, None, tenant, user, Some("developer"))
            .await
            .expect("member");
    }
    let (_, _, layer) = s.seed("team-a/base", &["v1"]).await;
    let mount =
        |target: &str| format!("/v2/{target}/blobs/uploads/?mount={layer}&from=team-a/base");

    // Without credentials, the challenge to a mount names both repositories, so the one
    // token a client fetches from it mounts at once (the conformance suite's client and
    // docker retry only once).
    let dev_a = Cred::Basic("dev-a".into(), PASSWORD.into());
    let r = s
        .send(Method::POST, &mount("team-a/first"), &Cred::Anonymous)
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let scopes = challenged_scopes(&r);
    assert_eq!(
        scopes,
        [
            "repository:team-a/first:pull,push",
            "repository:team-a/base:pull"
        ]
    );
    let token = s.token(&dev_a, &scopes).await;
    let r = s
        .send(Method::POST, &mount("team-a/first"), &Cred::Bearer(token))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "mounted with the first token"
    );

    // A client asked for a token naming only the target, as a client that does not know
    // about mounts does: the mount is answered with a challenge naming both repositories.
    let narrow = s
        .token(&dev_a, &["repository:team-a/app:pull,push".to_owned()])
        .await;
    let r = s
        .send(Method::POST, &mount("team-a/app"), &Cred::Bearer(narrow))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let scopes = challenged_scopes(&r);
    assert_eq!(
        scopes,
        [
            "repository:team-a/app:pull,push",
            "repository:team-a/base:pull"
        ],
        "{:?}",
        r.headers().get("www-authenticate")
    );
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("error=\"insufficient_scope\"")
    );
    // Following the challenge as a client does: a token for exactly what it names.
    let wide = s.token(&dev_a, &scopes).await;
    let r = s
        .send(Method::POST, &mount("team-a/app"), &Cred::Bearer(wide))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the mount with both scopes"
    );
    assert_eq!(
        s.send(
            Method::HEAD,
            &format!("/v2/team-a/app/blobs/{layer}"),
            &admin()
        )
        .await
        .status(),
        StatusCode::OK
    );

    // Someone who may not read the source learns nothing: an ordinary upload starts, just
    // as for a source that does not exist.
    let dev_b = Cred::Basic("dev-b".into(), PASSWORD.into());
    let token = s
        .token(&dev_b, &["repository:team-b/app:pull,push".to_owned()])
        .await;
    for from in ["team-a/base", "team-a/nothing-here"] {
        let r = s
            .send(
                Method::POST,
                &format!("/v2/team-b/app/blobs/uploads/?mount={layer}&from={from}"),
                &Cred::Bearer(token.clone()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "from {from}");
        assert!(r.headers().get("www-authenticate").is_none());
    }
    // A reader of the source whose token lacks it, but where the source lacks the blob:
    // no challenge either, since a better token would not help.
    let r = s
        .send(
            Method::POST,
            &format!("/v2/team-a/app/blobs/uploads/?mount={layer}&from=team-a/nothing-here"),
            &Cred::Bearer(
                s.token(&dev_a, &["repository:team-a/app:pull,push".to_owned()])
                    .await,
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}
