//! The web interface of the real `berth serve`: `[ui] hosts` and `public_url` decide the
//! hosts served, an https `public_url` makes the session cookie `Secure` (Berth behind a
//! TLS-terminating ingress sees plain HTTP), `[ui] session_ttl_secs` its lifetime, and a
//! session outlives a restart of the process (it lives in the metadata store, which every
//! replica shares). The full walk in a browser is `berth-server/tests/ui.rs`.

use crate::harness::Berth;
use crate::http;

const CONFIG: &str = "public_url = \"https://registry.example\"\n\
                      [auth]\nenabled = true\n\
                      [ui]\nhosts = [\"berth.internal\"]\nsession_ttl_secs = 600\n";

fn request(
    berth: &Berth,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> http::HttpResponse {
    http::request(berth.addr(), method, path, headers, body).expect("request")
}

fn hidden(html: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let at = html.find(&key).expect("hidden field") + key.len();
    html[at..].split('"').next().expect("value").to_owned()
}

#[test]
fn web_sessions_follow_the_configuration_and_survive_a_restart() {
    let admin = format!("ui-admin-password-{}", std::process::id());
    let mut berth = Berth::start_with(CONFIG, &[("BERTH_ADMIN_PASSWORD", &admin)]);

    for (host, status) in [
        ("berth.internal", 200),
        ("registry.example", 200),
        ("127.0.0.1", 200),
        ("evil.example", 421),
    ] {
        let r = request(&berth, "GET", "/ui/login", &[("Host", host)], b"");
        assert_eq!(r.status, status, "Host {host}");
    }

    let page = request(
        &berth,
        "GET",
        "/ui/login",
        &[("Host", "berth.internal")],
        b"",
    );
    let pre = page.header("set-cookie").expect("login cookie");
    let pre = pre.split(';').next().expect("pair").to_owned();
    let token = hidden(&page.text(), "csrf");
    let form = format!("user=admin&password={admin}&csrf={token}");
    let r = request(
        &berth,
        "POST",
        "/ui/login",
        &[
            ("Host", "berth.internal"),
            ("Cookie", &pre),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r.header("set-cookie").expect("session cookie").to_owned();
    assert!(set.starts_with("berth_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=600"] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    let cookie = set.split(';').next().expect("pair").to_owned();
    let get = |berth: &Berth| {
        request(
            berth,
            "GET",
            "/ui/repositories",
            &[("Host", "berth.internal"), ("Cookie", &cookie)],
            b"",
        )
    };
    assert_eq!(get(&berth).status, 200);
    assert_eq!(
        request(
            &berth,
            "GET",
            "/ui/repositories",
            &[("Host", "berth.internal")],
            b""
        )
        .status,
        303,
        "no cookie, no page"
    );

    let metrics = request(&berth, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("berth_ui_refused_total{reason=\"host\"} 1"),
        "{metrics}"
    );

    berth.restart();
    let r = get(&berth);
    assert_eq!(r.status, 200, "the session outlives the process");
    assert!(r.text().contains("Signed in as"));
}
