//! The web interface over real HTTP: the `Host` check, the security headers, session
//! cookies and their flags, login and logout (on one replica and across two), CSRF and
//! cross-origin refusals, authorization (a reader sees no rollback and cannot forge one),
//! escaping of what pushers wrote, read-only mode without authentication, and a walk in
//! headless Chromium over WebDriver (`tests/support/ui_browser.py`).

mod common;

use std::process::Command;

use berth_registry::RegistryConfig;
use berth_registry::access::AccessConfig;
use berth_server::{ChallengeKind, ServerConfig};
use common::{Cred, OCI_MANIFEST, PASSWORD, Setup, TestServer as Server, sha256};
use reqwest::{Method, StatusCode, header};
use serde_json::json;

const REPO: &str = "team-a/app";

async fn start_with(server: ServerConfig, postgres: bool) -> Server {
    let s = common::start(Setup {
        registry: RegistryConfig::default(),
        server,
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        postgres,
        ..Setup::default()
    })
    .await;
    common::add_users(
        s.access(),
        &[
            ("admin", true),
            ("owner", false),
            ("maint", false),
            ("reader", false),
        ],
    )
    .await;
    common::add_tenant(
        s.access(),
        "team-a",
        false,
        &[
            ("owner", "owner"),
            ("maint", "maintainer"),
            ("reader", "reader"),
        ],
    )
    .await;
    s
}

async fn start() -> Server {
    start_with(ServerConfig::default(), false).await
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The value of `name="csrf"`'s hidden field in a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

/// `name=value` of a `Set-Cookie` header for `name`, and the whole header.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or("").to_owned();
            (pair, v.to_owned())
        })
}

/// Logs `user` in through the form; the session cookie (`berth_session=...`) and the
/// whole `Set-Cookie` header.
async fn login(s: &Server, user: &str) -> (String, String) {
    let http = client();
    let page = http
        .get(s.url("/ui/login"))
        .send()
        .await
        .expect("login page");
    assert_eq!(page.status(), StatusCode::OK);
    let (pre, _) = set_cookie(&page, "berth_login").expect("login cookie");
    let token = csrf_of(&page.text().await.expect("body"));
    let r = http
        .post(s.url("/ui/login"))
        .header(header::COOKIE, pre)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("user", user),
                ("password", PASSWORD),
                ("csrf", &token),
                ("next", "/ui/tenants"),
            ])
            .expect("form"),
        )
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "login of {user}");
    assert_eq!(r.headers()[header::LOCATION], "/ui/tenants");
    set_cookie(&r, "berth_session").expect("session cookie")
}

async fn get(s: &Server, path: &str, cookie: &str) -> reqwest::Response {
    client()
        .get(s.url(path))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .expect("get")
}

async fn post(s: &Server, path: &str, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(s.url(path))
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).expect("form"))
        .send()
        .await
        .expect("post")
}

async fn csrf_for(s: &Server, cookie: &str) -> String {
    let r = get(s, "/ui/repositories", cookie).await;
    assert_eq!(r.status(), StatusCode::OK);
    csrf_of(&r.text().await.expect("body"))
}

fn metric(text: &str, reason: &str) -> u64 {
    common::metric(
        text,
        &format!("berth_ui_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Two images under `tag` in turn; (first digest, second digest).
async fn two_pushes(s: &Server, tag: &str) -> (String, String) {
    let admin = Cred::user("admin");
    let (_, d1, _) = s.push_image_as(&admin, REPO, &[tag], b"first layer").await;
    let (_, d2, _) = s.push_image_as(&admin, REPO, &[tag], b"second layer").await;
    assert_ne!(d1, d2);
    (d1, d2)
}

async fn tag_digest(s: &Server, tag: &str) -> String {
    let r = s
        .request_as(
            Method::HEAD,
            &format!("/v2/{REPO}/manifests/{tag}"),
            &Cred::user("admin"),
        )
        .header(header::ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .expect("head");
    r.headers()["docker-content-digest"]
        .to_str()
        .expect("digest")
        .to_owned()
}

#[tokio::test]
async fn foreign_hosts_are_refused_and_pages_carry_a_strict_csp() {
    let s = start().await;
    let before = metric(&s.metrics().await, "host");
    for host in ["evil.example", "evil.example:5000", "127.0.0.1.nip.io"] {
        let r = client()
            .get(s.url("/ui/login"))
            .header(header::HOST, host)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "Host {host}");
    }
    // Two Host headers, the first one served: refused, whichever a check would read.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = s.base.trim_start_matches("http://");
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(
            format!(
                "GET /ui/login HTTP/1.1\r\nHost: {addr}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).await.expect("read");
        let head = String::from_utf8_lossy(&raw);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
    assert_eq!(metric(&s.metrics().await, "host"), before + 4);
    // The API is not the interface's business: a foreign Host still reaches /v2.
    let r = client()
        .get(s.url("/v2/"))
        .header(header::HOST, "evil.example")
        .send()
        .await
        .expect("get");
    assert_ne!(r.status(), StatusCode::MISDIRECTED_REQUEST);

    for host in [None, Some("localhost:5000")] {
        let mut req = client().get(s.url("/ui/login"));
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let r = req.send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "Host {host:?}");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let body = r.text().await.expect("body");
        assert!(!body.contains("<script>"), "no inline script");
        assert!(!body.contains("style="), "no inline style");
    }
}

#[tokio::test]
async fn assets_are_embedded_with_etags_and_long_caching_when_versioned() {
    let s = start().await;
    let page = client()
        .get(s.url("/ui/login"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    let at = page
        .find("/ui/static/berth.css?v=")
        .expect("versioned css link");
    let href: String = page[at..].chars().take_while(|c| *c != '"').collect();
    let r = client().get(s.url(&href)).send().await.expect("css");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/css")
    );
    assert!(
        r.headers()[header::CACHE_CONTROL]
            .to_str()
            .expect("cache")
            .contains("immutable")
    );
    let etag = r.headers()[header::ETAG].clone();
    assert!(
        r.text()
            .await
            .expect("css")
            .contains("prefers-color-scheme: dark")
    );
    let again = client()
        .get(s.url("/ui/static/berth.css"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("css");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let missing = client()
        .get(s.url("/ui/static/other.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn login_sets_a_strict_cookie_and_logout_ends_the_session() {
    let s = start().await;
    // Without a session every page leads to the login form.
    let r = get(&s, "/ui/repositories", "").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[header::LOCATION]
            .to_str()
            .expect("location")
            .starts_with("/ui/login?next=")
    );

    let (cookie, header_value) = login(&s, "maint").await;
    assert!(header_value.contains("HttpOnly"), "{header_value}");
    assert!(header_value.contains("SameSite=Strict"), "{header_value}");
    assert!(header_value.contains("Path=/ui"), "{header_value}");
    assert!(header_value.contains("Max-Age="), "{header_value}");
    // Plain HTTP and no https public_url: a Secure cookie would never be sent back.
    assert!(!header_value.contains("Secure"), "{header_value}");

    let r = get(&s, "/ui/repositories", &cookie).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.expect("body");
    assert!(body.contains("Signed in as"), "{body}");
    let token = csrf_of(&body);

    // The stored session is keyed by a hash: the cookie's value is not in the database.
    let value = cookie.split_once('=').expect("pair").1;
    let hashed = &sha256(value.as_bytes())["sha256:".len()..];
    assert!(s.meta.ui_session(hashed).await.expect("read").is_some());
    assert!(s.meta.ui_session(value).await.expect("read").is_none());

    // Logout needs the session's token like any other form.
    let r = post(&s, "/ui/logout", &cookie, &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        get(&s, "/ui/repositories", &cookie).await.status(),
        StatusCode::OK
    );
    let r = post(&s, "/ui/logout", &cookie, &[("csrf", &token)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, cleared) = set_cookie(&r, "berth_session").expect("cleared cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie no longer works, whoever replays it.
    let r = get(&s, "/ui/repositories", &cookie).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn bad_passwords_and_forged_logins_open_no_session() {
    let s = start().await;
    let http = client();
    let page = http.get(s.url("/ui/login")).send().await.expect("page");
    let (pre, _) = set_cookie(&page, "berth_login").expect("cookie");
    let token = csrf_of(&page.text().await.expect("body"));
    let form = |pw: &str, csrf: &str| {
        serde_urlencoded::to_string([("user", "maint"), ("password", pw), ("csrf", csrf)])
            .expect("form")
    };
    let r = http
        .post(s.url("/ui/login"))
        .header(header::COOKIE, &pre)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form("wrong password", &token))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&r, "berth_session").is_none());
    // The right password without the form's cookie (another site posting the form).
    let r = http
        .post(s.url("/ui/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(PASSWORD, &token))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&r, "berth_session").is_none());
    // A robot's secret opens no session either: the interface is for people.
    assert!(metric(&s.metrics().await, "csrf") >= 1);
}

#[tokio::test]
async fn secure_cookies_behind_an_https_public_url() {
    let s = start_with(
        ServerConfig {
            public_url: Some("https://registry.example".into()),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let (_, header_value) = login(&s, "maint").await;
    assert!(header_value.contains("; Secure"), "{header_value}");
    // public_url's host is served.
    let r = client()
        .get(s.url("/ui/login"))
        .header(header::HOST, "registry.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn rollback_needs_push_a_session_token_and_the_same_origin() {
    let s = start().await;
    let (d1, d2) = two_pushes(&s, "stable").await;
    let (maint, _) = login(&s, "maint").await;
    let (reader, _) = login(&s, "reader").await;
    let history = format!("/ui/history?repository={REPO}&tag=stable");

    // The reader sees the history but no rollback, and cannot open the confirmation.
    let r = get(&s, &history, &reader).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.expect("body");
    assert!(body.contains(&d1[..19]), "{body}");
    assert!(!body.contains("Roll back to this"), "{body}");
    let confirm = format!("/ui/rollback?repository={REPO}&tag=stable&to={d1}");
    assert_eq!(
        get(&s, &confirm, &reader).await.status(),
        StatusCode::FORBIDDEN
    );
    // The maintainer sees one.
    let body = get(&s, &history, &maint).await.text().await.expect("body");
    assert!(body.contains("Roll back to this"), "{body}");
    assert_eq!(get(&s, &confirm, &maint).await.status(), StatusCode::OK);

    let base = [("repository", REPO), ("tag", "stable"), ("to", d1.as_str())];
    fn with<'a>(base: &[(&'a str, &'a str)], csrf: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut f = base.to_vec();
        f.push(("csrf", csrf));
        f
    }
    let before = s.metrics().await;
    // No token, a wrong token, another session's token.
    let reader_token = csrf_for(&s, &reader).await;
    let maint_token = csrf_for(&s, &maint).await;
    assert_eq!(
        post(&s, "/ui/rollback", &maint, &base).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&s, "/ui/rollback", &maint, &with(&base, "forged"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&s, "/ui/rollback", &maint, &with(&base, &reader_token))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // The right token from another site.
    let r = client()
        .post(s.url("/ui/rollback"))
        .header(header::COOKIE, &maint)
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(with(&base, &maint_token)).expect("form"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The reader with its own valid token: its role does not allow it.
    assert_eq!(
        post(&s, "/ui/rollback", &reader, &with(&base, &reader_token))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(tag_digest(&s, "stable").await, d2, "nothing moved the tag");
    let after = s.metrics().await;
    assert_eq!(metric(&after, "csrf"), metric(&before, "csrf") + 3);
    assert_eq!(metric(&after, "origin"), metric(&before, "origin") + 1);
    assert_eq!(metric(&after, "denied"), metric(&before, "denied") + 1);

    // The maintainer's own form.
    let r = post(&s, "/ui/rollback", &maint, &with(&base, &maint_token)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(tag_digest(&s, "stable").await, d1);
    let body = get(&s, &history, &maint).await.text().await.expect("body");
    assert!(body.contains("rollback"), "{body}");
    assert!(body.contains("maint"), "{body}");
}

#[tokio::test]
async fn what_pushers_wrote_is_shown_inert() {
    let s = start().await;
    let admin = Cred::user("admin");
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"evil": "<script>alert('label')</script>"}},
        "history": [{"created_by": "<img src=x onerror=alert(1)>"}],
    })
    .to_string()
    .into_bytes();
    let c = s.push_blob_as(&admin, REPO, &config).await;
    let l = s.push_blob_as(&admin, REPO, b"layer").await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": 5}],
        "annotations": {"<b>key</b>": "\"><script>alert('annotation')</script>"},
    })
    .to_string()
    .into_bytes();
    let r = s
        .put_manifest_as(&admin, REPO, "v1.0.0", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (cookie, _) = login(&s, "maint").await;
    let r = get(
        &s,
        &format!("/ui/image?repository={REPO}&reference=v1.0.0"),
        &cookie,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.expect("body");
    assert!(body.contains(&sha256(&manifest)), "the image page");
    for raw in ["<script>alert", "<img src=x", "<b>key", "\"><script>alert"] {
        assert!(
            !body.contains(raw),
            "{raw} reached the page unescaped: {body}"
        );
    }
    assert!(
        body.contains("&lt;script&gt;alert('label')&lt;/script&gt;"),
        "{body}"
    );
    assert!(
        body.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{body}"
    );
    assert!(body.contains("&lt;b&gt;key&lt;/b&gt;"), "{body}");
}

/// The tag names of a repository page, in order, and its next-page link.
fn tags_of(html: &str) -> (Vec<String>, Option<String>) {
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("class=\"tag\"") {
        rest = &rest[at..];
        let start = rest.find('>').expect("tag link") + 1;
        let end = rest[start..].find('<').expect("end") + start;
        tags.push(rest[start..end].to_owned());
        rest = &rest[end..];
    }
    let next = html.find("rel=\"next\"").map(|at| {
        let before = &html[..at];
        let href = before.rfind("href=\"").expect("href") + "href=\"".len();
        html[href..]
            .split('"')
            .next()
            .expect("link")
            .replace("&amp;", "&")
    });
    (tags, next)
}

#[tokio::test]
async fn tags_page_in_semver_order_newest_first_through_keyset_pages() {
    semver_pages(false).await;
}

#[tokio::test]
async fn tags_page_in_semver_order_on_postgres() {
    semver_pages(true).await;
}

async fn semver_pages(postgres: bool) {
    let s = start_with(ServerConfig::default(), postgres).await;
    let admin = Cred::user("admin");
    let (bytes, _, _) = s.push_image_as(&admin, REPO, &["latest"], b"v").await;
    let mut names: Vec<String> = (0..55).map(|i| format!("1.0.{i}")).collect();
    names.extend(["2.0.0", "2.0.0-rc.1", "v2.0.0-beta", "1.10.0", "1.9.0"].map(String::from));
    // Pushed in an order that is neither the version nor the name order.
    names.reverse();
    names.swap(3, 40);
    for t in &names {
        let r = s
            .put_manifest_as(&admin, REPO, t, OCI_MANIFEST, &bytes)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let (cookie, _) = login(&s, "reader").await;
    let mut seen = Vec::new();
    let mut next = Some(format!("/ui/repository?repository={REPO}"));
    let mut pages = 0;
    while let Some(path) = next {
        let r = get(&s, &path, &cookie).await;
        assert_eq!(r.status(), StatusCode::OK);
        let (tags, more) = tags_of(&r.text().await.expect("body"));
        seen.extend(tags);
        next = more;
        pages += 1;
    }
    let mut want: Vec<String> = vec!["2.0.0", "2.0.0-rc.1", "v2.0.0-beta", "1.10.0", "1.9.0"]
        .into_iter()
        .map(String::from)
        .collect();
    want.extend((0..55).rev().map(|i| format!("1.0.{i}")));
    assert_eq!(
        seen, want,
        "versions newest first, across pages, without `latest`"
    );
    assert_eq!(pages, 2);
    // By name, every tag, `latest` too, in the listing order.
    let mut all = Vec::new();
    let mut next = Some(format!("/ui/repository?repository={REPO}&order=name"));
    while let Some(path) = next {
        let body = get(&s, &path, &cookie).await.text().await.expect("body");
        let (tags, more) = tags_of(&body);
        all.extend(tags);
        next = more;
    }
    assert_eq!(all.len(), 61);
    assert_eq!(all[..3], ["1.0.0", "1.0.1", "1.0.10"]);
    assert!(all.contains(&"latest".to_owned()));
}

#[tokio::test]
async fn pages_show_only_what_the_role_may_read() {
    let s = start().await;
    let admin = Cred::user("admin");
    s.push_image_as(&admin, REPO, &["v1"], b"a").await;
    s.push_image_as(&admin, "hidden/secret", &["v1"], b"b")
        .await;
    let (cookie, _) = login(&s, "reader").await;
    let body = get(&s, "/ui/repositories", &cookie)
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains(REPO), "{body}");
    assert!(!body.contains("hidden/secret"), "{body}");
    // The same 404 for a repository it cannot read as for one that does not exist.
    let hidden = get(&s, "/ui/repository?repository=hidden/secret", &cookie).await;
    let absent = get(&s, "/ui/repository?repository=team-a/none", &cookie).await;
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        hidden.text().await.expect("body"),
        absent.text().await.expect("body")
    );
}

#[tokio::test]
async fn without_authentication_the_interface_only_reads() {
    let s = common::start(Setup::default()).await;
    let open = Cred::Anonymous;
    let (_, d1, _) = s.push_image_as(&open, REPO, &["t"], b"one").await;
    let (_, d2, _) = s.push_image_as(&open, REPO, &["t"], b"two").await;
    let body = get(&s, &format!("/ui/history?repository={REPO}&tag=t"), "")
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains("Read-only"), "{body}");
    assert!(body.contains(&d1[..19]), "{body}");
    assert!(!body.contains("Roll back to this"), "{body}");
    let r = post(
        &s,
        "/ui/rollback",
        "",
        &[
            ("repository", REPO),
            ("tag", "t"),
            ("to", &d1),
            ("csrf", ""),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(tag_digest(&s, "t").await, d2);
}

#[tokio::test]
async fn every_replica_honours_a_session_and_a_logout_anywhere_ends_it() {
    let a = start_with(ServerConfig::default(), true).await;
    let b = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        stores: Some(a.stores()),
        ..Setup::default()
    })
    .await;
    let (cookie, _) = login(&a, "maint").await;
    assert_eq!(
        get(&b, "/ui/tenants", &cookie).await.status(),
        StatusCode::OK
    );
    let token = csrf_for(&b, &cookie).await;
    let r = post(&b, "/ui/logout", &cookie, &[("csrf", &token)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&a, "/ui/tenants", &cookie).await.status(),
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_password_change_ends_the_users_sessions() {
    let s = start().await;
    let (cookie, _) = login(&s, "maint").await;
    assert_eq!(
        get(&s, "/ui/tenants", &cookie).await.status(),
        StatusCode::OK
    );
    s.access()
        .update_user(
            &berth_registry::access::cli_identity(),
            None,
            "maint",
            &berth_registry::access::UserUpdate {
                password: Some("another long password"),
                current_password: None,
                admin: None,
                disabled: None,
            },
        )
        .await
        .expect("password change");
    assert_eq!(
        get(&s, "/ui/tenants", &cookie).await.status(),
        StatusCode::SEE_OTHER
    );
}

/// The registry login and password in a pull-secret page's Secret.
fn pull_creds(html: &str) -> (String, String) {
    use base64::Engine as _;
    let at = html
        .find("<pre class=\"card\" id=\"pull-secret\">")
        .expect("the Secret");
    let rest = &html[at..];
    let start = rest.find('>').expect("pre") + 1;
    let end = rest.find("</pre>").expect("end");
    let text = rest[start..end]
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    let secret: serde_json::Value = serde_json::from_str(&text).expect("Secret JSON");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    let config = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][".dockerconfigjson"].as_str().expect("data"))
        .expect("base64");
    let config: serde_json::Value = serde_json::from_slice(&config).expect("config");
    let auth = config["auths"]
        .as_object()
        .and_then(|a| a.values().next())
        .expect("one registry");
    (
        auth["username"].as_str().expect("user").to_owned(),
        auth["password"].as_str().expect("password").to_owned(),
    )
}

#[tokio::test]
async fn pull_secret_per_namespace_pulls_and_rotating_one_breaks_no_other() {
    let s = start().await;
    s.push_image_as(&Cred::user("admin"), REPO, &["v1"], b"x")
        .await;
    let (owner, _) = login(&s, "owner").await;
    let page = get(&s, "/ui/tenant?name=team-a", &owner).await;
    assert_eq!(page.status(), StatusCode::OK);
    let body = page.text().await.expect("body");
    assert!(
        body.contains("Robot accounts") && body.contains("maintainer"),
        "{body}"
    );
    assert!(body.contains("Quota and usage"), "{body}");
    let token = csrf_of(&body);
    let make = |ns: &'static str, rotate: bool| {
        let mut f = vec![
            ("tenant", "team-a"),
            ("namespace", ns),
            ("csrf", token.as_str()),
        ];
        if rotate {
            f.push(("rotate", "yes"));
        }
        f
    };
    let pulls = |user: String, pass: String| {
        let s = &s;
        async move {
            s.request_as(
                Method::GET,
                &format!("/v2/{REPO}/manifests/v1"),
                &Cred::Basic(user, pass),
            )
            .header(header::ACCEPT, OCI_MANIFEST)
            .send()
            .await
            .expect("pull")
            .status()
        }
    };
    let r = post(&s, "/ui/pull-secret", &owner, &make("prod", false)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (prod_user, prod_pass) = pull_creds(&r.text().await.expect("body"));
    assert_eq!(prod_user, "team-a+k8s-prod");
    let r = post(&s, "/ui/pull-secret", &owner, &make("dev", false)).await;
    let (dev_user, dev_pass) = pull_creds(&r.text().await.expect("body"));
    assert_eq!(
        pulls(prod_user.clone(), prod_pass.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        pulls(dev_user.clone(), dev_pass.clone()).await,
        StatusCode::OK
    );
    // Pull only.
    let push = s
        .put_manifest_as(
            &Cred::Basic(prod_user.clone(), prod_pass.clone()),
            REPO,
            "v2",
            OCI_MANIFEST,
            b"{}",
        )
        .await;
    assert!(push.status().is_client_error());
    // Asked again, the secret is not shown (it cannot be read back).
    let r = post(&s, "/ui/pull-secret", &owner, &make("dev", false)).await;
    let body = r.text().await.expect("body");
    assert!(!body.contains("id=\"pull-secret\""), "{body}");
    // Rotating dev's: the old dev secret stops working, prod's goes on.
    let r = post(&s, "/ui/pull-secret", &owner, &make("dev", true)).await;
    let (_, new_dev_pass) = pull_creds(&r.text().await.expect("body"));
    s.access().forget_logins();
    assert_eq!(
        pulls(dev_user.clone(), dev_pass).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(pulls(dev_user, new_dev_pass).await, StatusCode::OK);
    assert_eq!(pulls(prod_user, prod_pass).await, StatusCode::OK);

    // A maintainer is no manager: no form, and its POST is refused.
    let (maint, _) = login(&s, "maint").await;
    let body = get(&s, "/ui/tenant?name=team-a", &maint)
        .await
        .text()
        .await
        .expect("body");
    assert!(!body.contains("make-pull-secret"), "{body}");
    let maint_token = csrf_for(&s, &maint).await;
    let r = post(
        &s,
        "/ui/pull-secret",
        &maint,
        &[
            ("tenant", "team-a"),
            ("namespace", "qa"),
            ("csrf", &maint_token),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // And the owner's own form without its token.
    let r = post(
        &s,
        "/ui/pull-secret",
        &owner,
        &[("tenant", "team-a"), ("namespace", "qa")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        s.access()
            .robots(&berth_registry::access::cli_identity(), "team-a")
            .await
            .expect("robots")
            .iter()
            .all(|r| r.name != "k8s-qa")
    );
}

/// The login and secret on a robot's secret page.
fn robot_creds(html: &str) -> (String, String) {
    let value = |id: &str| {
        let key = format!("id=\"{id}\">");
        let at = html.find(&key).expect(id) + key.len();
        html[at..].split('<').next().expect("value").to_owned()
    };
    (value("robot-login"), value("robot-secret"))
}

#[tokio::test]
async fn robots_are_created_rotated_and_disabled_by_managers_only() {
    let s = start().await;
    let admin = Cred::user("admin");
    s.push_image_as(&admin, REPO, &["v1"], b"x").await;
    s.push_image_as(&admin, "team-a/other", &["v1"], b"y").await;
    let (owner, _) = login(&s, "owner").await;
    let token = csrf_for(&s, &owner).await;
    let r = post(
        &s,
        "/ui/robot",
        &owner,
        &[
            ("csrf", &token),
            ("tenant", "team-a"),
            ("op", "create"),
            ("name", "ci"),
            ("action_pull", "yes"),
            ("action_push", "yes"),
            ("repositories", "app"),
            ("description", "<script>alert('robot')</script>"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (login_name, secret) = robot_creds(&r.text().await.expect("body"));
    assert_eq!(login_name, "team-a+ci");
    let pushes = |repo: &'static str, secret: String| {
        let s = &s;
        let who = Cred::Basic("team-a+ci".into(), secret);
        async move {
            s.request_as(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(b"robot")),
                &who,
            )
            .body(b"robot".to_vec())
            .send()
            .await
            .expect("push")
            .status()
        }
    };
    assert_eq!(pushes(REPO, secret.clone()).await, StatusCode::CREATED);
    assert_eq!(
        pushes("team-a/other", secret.clone()).await,
        StatusCode::FORBIDDEN
    );
    let body = get(&s, "/ui/tenant?name=team-a", &owner)
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains("team-a+ci"), "{body}");
    assert!(!body.contains("<script>alert('robot')"), "{body}");

    let op = |op: &'static str| {
        [
            ("csrf", token.clone()),
            ("tenant", "team-a".to_owned()),
            ("op", op.to_owned()),
            ("name", "ci".to_owned()),
        ]
    };
    let form = |f: &[(&'static str, String); 4]| {
        f.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    let r = client()
        .post(s.url("/ui/robot"))
        .header(header::COOKIE, &owner)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form(&op("rotate"))).expect("form"))
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status(), StatusCode::OK);
    let (_, rotated) = robot_creds(&r.text().await.expect("body"));
    s.access().forget_logins();
    assert_eq!(pushes(REPO, secret).await, StatusCode::UNAUTHORIZED);
    assert_eq!(pushes(REPO, rotated.clone()).await, StatusCode::CREATED);
    let r = client()
        .post(s.url("/ui/robot"))
        .header(header::COOKIE, &owner)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form(&op("disable"))).expect("form"))
        .send()
        .await
        .expect("disable");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    s.access().forget_logins();
    assert_eq!(pushes(REPO, rotated).await, StatusCode::UNAUTHORIZED);

    // A maintainer manages no robots, even with its own valid token.
    let (maint, _) = login(&s, "maint").await;
    let maint_token = csrf_for(&s, &maint).await;
    let r = post(
        &s,
        "/ui/robot",
        &maint,
        &[
            ("csrf", &maint_token),
            ("tenant", "team-a"),
            ("op", "enable"),
            ("name", "ci"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let robots = s
        .access()
        .robots(&berth_registry::access::cli_identity(), "team-a")
        .await
        .expect("robots");
    assert!(robots.iter().any(|r| r.name == "ci" && r.disabled));
}

#[tokio::test]
async fn operations_for_admins_only() {
    let s = start().await;
    let (admin, _) = login(&s, "admin").await;
    let r = get(&s, "/ui/operations", &admin).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.expect("body");
    assert!(body.contains("ready"), "{body}");
    assert!(body.contains("upstream_failures"), "{body}");
    let (owner, _) = login(&s, "owner").await;
    assert_eq!(
        get(&s, "/ui/operations", &owner).await.status(),
        StatusCode::FORBIDDEN
    );
}

/// The operations page over real HTTP: an upstream cache's hits, fills, stale serves and
/// last failure; the job queues; GC and retention dry runs started as jobs, whose reports
/// appear when ready and which remove nothing; admins only, with the session's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_show_upstreams_queues_and_dry_runs() {
    let mut upstream = common::start(Setup::default()).await;
    upstream
        .push_image_as(&Cred::Anonymous, "library/app", &["v1"], b"upstream layer")
        .await;
    let s = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        upstreams: vec![berth_registry::UpstreamSettings {
            client: berth_registry::UpstreamConfig {
                timeout: std::time::Duration::from_secs(2),
                ..berth_registry::UpstreamConfig::new("docker.io", &upstream.base)
            },
            // Every tag request asks the upstream again (a HEAD): a hit when unchanged.
            tag_ttl: std::time::Duration::ZERO,
            negative_ttl: std::time::Duration::from_secs(30),
            repositories: Vec::new(),
            cache: true,
        }],
        maintenance: Some(berth_registry::maintenance::MaintenanceSettings {
            gc: berth_registry::gc::GcOptions {
                dry_run: true,
                grace: std::time::Duration::ZERO,
                rollback_window: std::time::Duration::ZERO,
            },
            ..Default::default()
        }),
        ..Setup::default()
    })
    .await;
    common::add_users(s.access(), &[("admin", true), ("owner", false)]).await;
    common::add_tenant(s.access(), "team-a", false, &[("owner", "owner")]).await;
    let admin_cred = Cred::user("admin");
    let pull = |s: &Server| {
        s.request_as(
            Method::GET,
            "/v2/docker.io/library/app/manifests/v1",
            &admin_cred,
        )
        .header(header::ACCEPT, OCI_MANIFEST)
        .send()
    };
    // A fill, then a hit (the upstream confirms the tag), then, with the upstream gone, a
    // stale serve and a failure.
    assert_eq!(pull(&s).await.expect("pull").status(), StatusCode::OK);
    assert_eq!(pull(&s).await.expect("pull").status(), StatusCode::OK);
    upstream.stop().await;
    let stale = pull(&s).await.expect("pull");
    assert_eq!(stale.status(), StatusCode::OK);
    assert!(stale.headers().contains_key("warning"));

    // Content for the collection: `v1` moved, its first manifest now unreferenced.
    let (_, first, _) = s.push_image_as(&admin_cred, REPO, &["v1"], b"first").await;
    s.push_image_as(&admin_cred, REPO, &["v1"], b"second").await;

    let (admin, _) = login(&s, "admin").await;
    let body = get(&s, "/ui/operations", &admin)
        .await
        .text()
        .await
        .expect("body");
    let upstreams = body
        .split(r#"id="upstreams""#)
        .nth(1)
        .expect("the upstream table")
        .split("</table>")
        .next()
        .unwrap_or("");
    assert!(upstreams.contains("docker.io"), "{upstreams}");
    assert!(
        upstreams.contains(r#"<td data-label="Hit ratio">50.0 %</td>"#),
        "one hit, one fill: {upstreams}"
    );
    assert!(
        upstreams.contains(r#"<td data-label="Stale serves">1</td>"#),
        "{upstreams}"
    );
    // At least the stale pull's revalidation failed; the background signature lookup of
    // the cached image may have met the stopped upstream too, and counts as a failure.
    assert!(
        !upstreams.contains(r#"<td data-label="Failures">0</td>"#),
        "{upstreams}"
    );
    assert!(
        !upstreams.contains(r#"<td data-label="Last failure">—"#),
        "the last failure is shown: {upstreams}"
    );
    assert!(body.contains(r#"id="queues""#), "{body}");
    assert!(body.contains("<code>maintenance</code>"), "{body}");
    assert!(body.contains("Upstreams: "), "the health summary: {body}");

    // A dry run needs the session's token, and an admin.
    let r = post(&s, "/ui/dry-run", &admin, &[("task", "gc")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (owner, _) = login(&s, "owner").await;
    let owner_token = csrf_for(&s, &owner).await;
    let r = post(
        &s,
        "/ui/dry-run",
        &owner,
        &[("task", "gc"), ("csrf", &owner_token)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        get(&s, "/ui/operations", &owner).await.status(),
        StatusCode::FORBIDDEN
    );
    let token = csrf_for(&s, &admin).await;
    for task in ["gc", "retention"] {
        let r = post(
            &s,
            "/ui/dry-run",
            &admin,
            &[("task", task), ("csrf", &token)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{task}");
    }
    // The job queue runs them; the page shows their reports when ready.
    let mut body = String::new();
    for _ in 0..100 {
        body = get(&s, "/ui/operations", &admin)
            .await
            .text()
            .await
            .expect("body");
        if body.matches(r#"data-state="done""#).count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        body.matches(r#"data-state="done""#).count(),
        2,
        "both reports: {body}"
    );
    assert!(
        body.contains("1 manifests and 1 blobs would go"),
        "the moved tag's first manifest and its layer: {body}"
    );
    assert!(body.contains("0 tags would expire"), "{body}");
    // A dry run removes nothing.
    let r = s
        .request_as(
            Method::GET,
            &format!("/v2/{REPO}/manifests/{first}"),
            &admin_cred,
        )
        .header(header::ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

/// The cell of `label` in the first row of table `id` that has one.
fn cell<'a>(html: &'a str, id: &str, label: &str) -> &'a str {
    let table = html
        .split(&format!(r#"id="{id}""#))
        .nth(1)
        .unwrap_or_default();
    table
        .split(&format!(r#"<td data-label="{label}">"#))
        .nth(1)
        .and_then(|c| c.split("</td>").next())
        .unwrap_or_default()
}

/// A layer's uncompressed size comes from its catalog once the cataloger read it whole,
/// and the image's packages from the image's catalog; before that (or without
/// cataloging) the page says they are not known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_page_shows_uncompressed_sizes_and_packages_once_cataloged() {
    let s = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        catalog: Some(berth_registry::catalog::CatalogSettings {
            referrers: false,
            ..Default::default()
        }),
        ..Setup::default()
    })
    .await;
    common::add_users(s.access(), &[("admin", true)]).await;
    let data = vec![b'x'; 5000];
    let layer = berth_catalog::fuzzing::tar(&[
        berth_catalog::fuzzing::Item::File("etc/os-release", b"ID=debian\nVERSION_ID=\"12\"\n"),
        berth_catalog::fuzzing::Item::File("srv/data.bin", &data),
        berth_catalog::fuzzing::Item::File(
            "srv/node_modules/lodash/package.json",
            br#"{"name":"lodash","version":"4.17.20"}"#,
        ),
    ]);
    s.push_image_as(&Cred::user("admin"), REPO, &["v1"], &layer)
        .await;
    let (admin, _) = login(&s, "admin").await;
    let path = format!("/ui/image?repository={REPO}&reference=v1");
    let mut body = String::new();
    for _ in 0..200 {
        body = get(&s, &path, &admin).await.text().await.expect("body");
        if !cell(&body, "layers", "Uncompressed").contains("not known")
            && body.contains(r#"id="packages""#)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let uncompressed = cell(&body, "layers", "Uncompressed");
    assert!(
        !uncompressed.is_empty() && !uncompressed.contains("not known"),
        "cataloged within 20 s: {body}"
    );
    // The image's packages, from its catalog.
    assert_eq!(cell(&body, "packages", "Package"), "lodash", "{body}");
    assert_eq!(cell(&body, "packages", "Version"), "4.17.20", "{body}");
    assert!(body.contains("on debian 12"), "{body}");
    // The layer is an uncompressed tar: its size is the layer's length, less the end
    // of the archive (two to twenty zero blocks) the cataloger stops before.
    let kib = |c: &str| -> f64 {
        let n = c
            .split(' ')
            .find_map(|w| w.parse::<f64>().ok())
            .expect("a number");
        assert!(c.ends_with("KiB"), "{c}");
        n * 1024.0
    };
    let whole = layer.len() as f64;
    let text = uncompressed
        .split('>')
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or(uncompressed);
    let shown = kib(text);
    assert!(uncompressed.contains("≈ "), "{uncompressed}");
    assert!(
        shown <= whole + 52.0 && shown >= whole - 10_240.0 - 52.0,
        "{shown} for a {whole}-byte tar"
    );

    // Without a catalog (another image's layer, never cataloged here), not known.
    let plain = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        ..Setup::default()
    })
    .await;
    common::add_users(plain.access(), &[("admin", true)]).await;
    plain
        .push_image_as(&Cred::user("admin"), REPO, &["v1"], &layer)
        .await;
    let (admin, _) = login(&plain, "admin").await;
    let body = get(&plain, &path, &admin).await.text().await.expect("body");
    assert!(
        cell(&body, "layers", "Uncompressed").contains("not known"),
        "{body}"
    );
    assert!(
        body.contains("Not available yet: this image has not been cataloged."),
        "{body}"
    );
}

#[tokio::test]
async fn audit_log_filtered_for_admins_and_owners_only() {
    let s = start().await;
    let (owner, _) = login(&s, "owner").await;
    let token = csrf_for(&s, &owner).await;
    let r = post(
        &s,
        "/ui/pull-secret",
        &owner,
        &[
            ("tenant", "team-a"),
            ("namespace", "audited"),
            ("csrf", &token),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    common::add_tenant(s.access(), "team-b", false, &[]).await;

    let (admin, _) = login(&s, "admin").await;
    let body = get(&s, "/ui/audit?user=owner&action=robot", &admin)
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains("robot.create"), "{body}");
    assert!(!body.contains("tenant.create"), "{body}");
    let body = get(&s, "/ui/audit?action=tenant", &admin)
        .await
        .text()
        .await
        .expect("body");
    assert!(
        body.contains("tenant.create") && !body.contains("robot.create"),
        "{body}"
    );
    let body = get(&s, "/ui/audit?from=1970-01-01&to=1970-01-02", &admin)
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains("No entry matches."), "{body}");

    // The repository filter: pushes to two repositories, once both are in the log.
    let admin_cred = Cred::user("admin");
    s.push_image_as(&admin_cred, "team-a/other", &["v1"], b"other")
        .await;
    s.push_image_as(&admin_cred, REPO, &["v1"], b"app").await;
    let target = |repo: &str| format!(r#"<td data-label="Target">{repo}"#);
    let mut logged = false;
    for _ in 0..100 {
        let body = get(&s, "/ui/audit?action=manifest", &admin)
            .await
            .text()
            .await
            .expect("body");
        if body.contains(&target("team-a/other")) && body.contains(&target(REPO)) {
            logged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(logged, "both pushes reach the audit log");
    let body = get(&s, "/ui/audit?repository=team-a/other", &admin)
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains(&target("team-a/other")), "{body}");
    assert!(!body.contains(&target(REPO)), "{body}");

    // The owner reads its tenant's rows, not team-b's; a reader reads none.
    let body = get(&s, "/ui/audit?tenant=team-a", &owner)
        .await
        .text()
        .await
        .expect("body");
    assert!(body.contains("robot.create"), "{body}");
    let r = get(&s, "/ui/audit?tenant=team-b", &owner).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (reader, _) = login(&s, "reader").await;
    let r = get(&s, "/ui/audit?tenant=team-a", &reader).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// axe-core's browser build: `BERTH_AXE_JS`, or where `scripts/install-test-tools.sh` puts
/// it. Missing is a failure, never a skip: without it the walk would prove nothing about
/// accessibility.
fn axe_js() -> std::path::PathBuf {
    let path = std::env::var_os("BERTH_AXE_JS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/berth-tools/axe-core/node_modules/axe-core/axe.min.js".into());
    assert!(
        path.is_file(),
        "axe-core not found at {} (run scripts/install-test-tools.sh, or set BERTH_AXE_JS to \
         axe.min.js from `npm install axe-core@4.14.1`)",
        path.display()
    );
    path
}

fn python() -> String {
    std::env::var("BERTH_UI_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The walk in a real browser: headless Chromium driven by chromedriver over WebDriver,
/// from a Python script that needs nothing beyond the standard library. axe-core runs on
/// every page at both widths and in both schemes and must report no violation.
/// Screenshots land in `target/ui-screenshots`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_walk() {
    let axe = axe_js();
    let s = start().await;
    let admin = Cred::user("admin");
    // Many repositories to find one among.
    for i in 0..60 {
        s.push_image_as(
            &admin,
            &format!("team-a/svc-{i:02}"),
            &["v1"],
            format!("l{i}").as_bytes(),
        )
        .await;
    }
    let (d1, d2) = two_pushes(&s, "stable").await;
    for t in ["v1.2.0", "1.10.0", "1.9.0-rc.1"] {
        s.push_image_as(&admin, REPO, &[t], t.as_bytes()).await;
    }
    // A label carrying markup, to be shown inert.
    let config = json!({"architecture": "amd64", "os": "linux",
        "config": {"Labels": {"note": "<img src=x id=pwned>"}}})
    .to_string()
    .into_bytes();
    let c = s.push_blob_as(&admin, REPO, &config).await;
    let l = s.push_blob_as(&admin, REPO, b"hostile layer").await;
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": 13}],
        "annotations": {"org.example.note": "<script id=pwned2>document.title='pwned'</script>"}})
    .to_string()
    .into_bytes();
    assert_eq!(
        s.put_manifest_as(&admin, REPO, "hostile", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ui_browser.py");
    let base = s.base.clone();
    let args = json!({
        "base": base,
        "password": PASSWORD,
        "repo": REPO,
        "old": d1,
        "new": d2,
        "screenshots": shots,
        "axe": axe,
    })
    .to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(args)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "browser walk failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // axe-core ran on every page the walk checked (the count guards against a walk that
    // quietly stopped running it).
    let axe_line = stdout
        .lines()
        .find(|l| l.starts_with("axe-core: no violation on "))
        .expect("the walk's axe-core summary");
    let axe_pages: u32 = axe_line
        .split(' ')
        .nth(4)
        .and_then(|n| n.parse().ok())
        .expect("a page count");
    assert!(axe_pages >= 40, "axe-core ran on only {axe_pages} pages");
    eprintln!("{axe_line}");
    // The walk made namespace prod's pull secret: its robot is what skopeo pulls with.
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PULL_SECRET "))
        .expect("the walk's pull secret");
    let creds: serde_json::Value = serde_json::from_str(line).expect("creds");
    let creds = format!(
        "{}:{}",
        creds["user"].as_str().expect("user"),
        creds["password"].as_str().expect("password")
    );
    assert!(creds.starts_with("team-a+k8s-prod:"), "{creds}");
    // The walk rolled `stable` back: a registry client now pulls the old digest.
    let host = base.trim_start_matches("http://").to_owned();
    let inspect = tokio::task::spawn_blocking(move || {
        Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                &creds,
                &format!("docker://{host}/{REPO}:stable"),
            ])
            .output()
            .expect("skopeo")
    })
    .await
    .expect("join");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(
        sha256(&inspect.stdout),
        d1,
        "skopeo pulls the rolled-back digest"
    );
}
