//! Built-in TLS and protected mode: skopeo and curl over HTTPS with certificates made by the
//! `openssl` CLI, certificate reload while serving, a stalled handshake beside a working
//! client, and the protected-mode cells that need a real process.

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Berth, Launch, Layout, assert_same_image_blobs, cmd, exec, free_port, http, run, run_fails,
    run_stdout, tempdir, unique, wait_until,
};

/// A throwaway CA and a server certificate it signed, for IP 127.0.0.1 and DNS localhost.
struct Pki {
    dir: PathBuf,
}

/// Private key formats the server must read.
#[derive(Clone, Copy)]
enum KeyKind {
    /// `BEGIN PRIVATE KEY`, EC P-256.
    Pkcs8Ec,
    /// `BEGIN RSA PRIVATE KEY`.
    Pkcs1Rsa,
    /// `BEGIN EC PRIVATE KEY`.
    Sec1Ec,
}

impl Pki {
    /// Makes `<dir>/ca.crt`, `<dir>/server.crt` (subject CN=`cn`, serial `serial`) and
    /// `<dir>/server.key`.
    #[track_caller]
    fn new(dir: PathBuf, cn: &str, serial: u32, kind: KeyKind) -> Pki {
        std::fs::create_dir_all(&dir).expect("creating the PKI directory");
        let p = |name: &str| dir.join(name);
        run(cmd("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN=Berth test CA for {cn}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.crt")));
        match kind {
            KeyKind::Pkcs8Ec => run(cmd("openssl")
                .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-out"])
                .arg(p("server.key"))),
            KeyKind::Pkcs1Rsa => run(cmd("openssl")
                .args(["genrsa", "-traditional", "-out"])
                .arg(p("server.key"))
                .arg("2048")),
            KeyKind::Sec1Ec => run(cmd("openssl")
                .args([
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                ])
                .arg(p("server.key"))),
        };
        let header = std::fs::read_to_string(p("server.key")).expect("reading the key");
        let want = match kind {
            KeyKind::Pkcs8Ec => "-----BEGIN PRIVATE KEY-----",
            KeyKind::Pkcs1Rsa => "-----BEGIN RSA PRIVATE KEY-----",
            KeyKind::Sec1Ec => "-----BEGIN EC PRIVATE KEY-----",
        };
        assert!(
            header.starts_with(want),
            "openssl wrote another key format: {header}"
        );
        run(cmd("openssl")
            .args(["req", "-new", "-subj", &format!("/CN={cn}"), "-key"])
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")));
        std::fs::write(
            p("server.ext"),
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("writing the extensions file");
        run(cmd("openssl")
            .args([
                "x509",
                "-req",
                "-days",
                "2",
                "-set_serial",
                &serial.to_string(),
            ])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.crt"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("server.ext"))
            .arg("-out")
            .arg(p("server.crt")));
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A directory holding only `ca.crt`, as skopeo's `--*-cert-dir` wants it.
    fn cert_dir(&self) -> PathBuf {
        let d = self.dir.join("certs.d");
        std::fs::create_dir_all(&d).expect("creating the cert dir");
        std::fs::copy(self.ca(), d.join("ca.crt")).expect("copying ca.crt");
        d
    }
}

/// A `[tls]` section serving `cert` and `key`.
fn tls_config(cert: &Path, key: &Path, reload_secs: u64) -> String {
    format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval_secs = {reload_secs}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn start_tls(config: &str, ca: &Path) -> Berth {
    Berth::start_launched(
        config,
        &[],
        Launch {
            tls_ca: Some(ca.to_owned()),
            ..Launch::default()
        },
    )
}

/// `curl --cacert ca https://<addr><path>`: (exit success, HTTP status or 0, HTTP version).
fn curl_https(addr: &str, ca: &Path, path: &str) -> (bool, String) {
    let out = exec(
        cmd("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--output", "/dev/null"])
            .args(["--write-out", "%{http_code} %{http_version}"])
            .arg("--cacert")
            .arg(ca)
            .arg(format!("https://{addr}{path}")),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The subject and serial of the certificate the server presents to a new connection,
/// as `openssl x509 -subject -serial` prints them.
fn served_certificate(addr: &str, scratch: &Path) -> String {
    let out = exec(
        cmd("openssl")
            .args(["s_client", "-connect", addr, "-servername", "localhost"])
            .arg("-showcerts"),
    );
    let pem = scratch.join("served.pem");
    std::fs::write(&pem, &out.stdout).expect("writing the s_client output");
    let parsed = exec(
        cmd("openssl")
            .args([
                "x509", "-noout", "-subject", "-serial", "-nameopt", "RFC2253",
            ])
            .arg("-in")
            .arg(&pem),
    );
    String::from_utf8_lossy(&parsed.stdout).trim().to_owned()
}

#[test]
fn tls_skopeo_round_trip_curl_and_no_plain_http() {
    let work = tempdir();
    let pki = Pki::new(work.path().join("pki"), "localhost", 1001, KeyKind::Sec1Ec);
    let berth = start_tls(&tls_config(&pki.cert(), &pki.key(), 10), &pki.ca());
    let certs = pki.cert_dir();

    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("hello.txt", &unique("hello over TLS"))]);
    let remote = format!("docker://{}/e2e/tls:v1", berth.addr());
    // Verification stays on: skopeo trusts only the test CA from the cert dir.
    run(cmd("skopeo")
        .args(["copy", "--quiet", "--dest-cert-dir"])
        .arg(&certs)
        .args([&src.oci("v1"), &remote]));
    let back = Layout::at(work.path().join("back"));
    run(cmd("skopeo")
        .args(["copy", "--quiet", "--src-cert-dir"])
        .arg(&certs)
        .args([&remote, &back.oci("v1")]));
    assert_eq!(
        back.digest("v1"),
        digest,
        "digest after the HTTPS round trip"
    );
    assert_same_image_blobs(&src, &back, &digest);

    let (ok, out) = curl_https(berth.addr(), &pki.ca(), "/v2/");
    assert!(ok, "curl --cacert https://.../v2/: {out}");
    // ALPN offers h2, and curl takes it.
    assert_eq!(out, "200 2", "status and HTTP version");
    let out = run_stdout(
        cmd("curl")
            .args([
                "--silent",
                "--http1.1",
                "--write-out",
                "%{http_code} %{http_version}",
            ])
            .args(["--output", "/dev/null", "--cacert"])
            .arg(pki.ca())
            .arg(format!("https://localhost:{}/v2/", port(berth.addr()))),
    );
    assert_eq!(out, "200 1.1", "HTTP/1.1 over TLS, by DNS name");

    // Without the CA, the certificate is not trusted.
    let out = exec(
        cmd("curl")
            .args(["--silent", "--max-time", "10"])
            .arg(format!("https://{}/v2/", berth.addr())),
    );
    assert!(!out.status.success(), "curl trusted an unknown CA");

    // Plain HTTP on the TLS port gets no HTTP answer, and the server keeps serving.
    let plain = http(berth.addr(), "GET", "/v2/", &[]);
    assert!(
        plain.is_err(),
        "plain HTTP on the TLS port answered: {plain:?}"
    );
    let (ok, out) = curl_https(berth.addr(), &pki.ca(), "/v2/");
    assert!(ok, "after a plain HTTP attempt: {out}");
    assert!(
        berth.log().contains("serving HTTPS on loopback"),
        "startup mode line missing:\n{}",
        berth.log()
    );
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(_, p)| p)
}

#[test]
fn tls_certificate_reload_and_broken_files_keep_the_old_one() {
    let work = tempdir();
    let a = Pki::new(work.path().join("a"), "berth-a", 0xA1, KeyKind::Pkcs8Ec);
    let b = Pki::new(work.path().join("b"), "berth-b", 0xB2, KeyKind::Pkcs1Rsa);
    let live = work.path().join("live");
    std::fs::create_dir_all(&live).expect("creating the live dir");
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    std::fs::copy(a.cert(), &cert).expect("installing cert A");
    std::fs::copy(a.key(), &key).expect("installing key A");
    let berth = start_tls(&tls_config(&cert, &key, 1), &a.ca());
    let addr = berth.addr().to_owned();

    let served = served_certificate(&addr, work.path());
    assert!(served.contains("subject=CN=berth-a"), "{served}");
    assert!(served.contains("serial=A1"), "{served}");

    // Key first, then certificate: for a moment they do not match, which must not be served.
    std::fs::copy(b.key(), &key).expect("installing key B");
    std::fs::copy(b.cert(), &cert).expect("installing cert B");
    wait_until(
        Duration::from_secs(15),
        "certificate B to be served",
        || served_certificate(&addr, work.path()).contains("subject=CN=berth-b"),
    );
    let served = served_certificate(&addr, work.path());
    assert!(served.contains("serial=B2"), "{served}");
    let (ok, out) = curl_https(&addr, &b.ca(), "/v2/");
    assert!(ok, "curl trusting CA B after the reload: {out}");
    let (ok, _) = curl_https(&addr, &a.ca(), "/v2/");
    assert!(!ok, "CA A still accepted after the reload");
    assert!(berth.log().contains("reloaded the TLS certificate"));

    // A half-written certificate: the old one stays, the server stays up.
    let full = std::fs::read(b.cert()).expect("reading cert B");
    std::fs::write(&cert, &full[..full.len() / 2]).expect("truncating the certificate");
    wait_until(
        Duration::from_secs(15),
        "a warning about the broken file",
        || berth.log().contains("still serving the previous one"),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let served = served_certificate(&addr, work.path());
    assert!(served.contains("subject=CN=berth-b"), "{served}");
    let (ok, out) = curl_https(&addr, &b.ca(), "/v2/");
    assert!(ok, "curl while the certificate file is broken: {out}");

    // Plain garbage, then a good pair again: the reload recovers.
    std::fs::write(&cert, b"not a certificate at all\n").expect("writing garbage");
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, out) = curl_https(&addr, &b.ca(), "/v2/");
    assert!(ok, "curl while the certificate file is garbage: {out}");
    std::fs::copy(a.key(), &key).expect("installing key A again");
    std::fs::copy(a.cert(), &cert).expect("installing cert A again");
    wait_until(
        Duration::from_secs(15),
        "certificate A to be served again",
        || served_certificate(&addr, work.path()).contains("subject=CN=berth-a"),
    );
    let (ok, out) = curl_https(&addr, &a.ca(), "/v2/");
    assert!(ok, "curl trusting CA A after recovering: {out}");
}

#[test]
fn tls_stalled_handshake_does_not_block_other_clients() {
    let work = tempdir();
    let pki = Pki::new(work.path().join("pki"), "localhost", 7, KeyKind::Pkcs8Ec);
    let config = format!(
        "{}[limits]\nheader_read_timeout_secs = 3\n",
        tls_config(&pki.cert(), &pki.key(), 10)
    );
    let berth = start_tls(&config, &pki.ca());

    // Connected, sending nothing: a handshake that never starts.
    let mut stalled: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(berth.addr()).expect("connecting"))
        .collect();
    let started = Instant::now();
    let (ok, out) = curl_https(berth.addr(), &pki.ca(), "/v2/");
    let took = started.elapsed();
    assert!(ok, "curl beside stalled handshakes: {out}");
    assert!(took < Duration::from_secs(2), "curl took {took:?}");

    // The stalled connections are dropped once the header read timeout passes.
    let first = &mut stalled[0];
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("setting a read timeout");
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the server sent bytes to a client that never said hello"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stalled handshake was kept {:?}",
        started.elapsed()
    );
    let (ok, out) = curl_https(berth.addr(), &pki.ca(), "/v2/");
    assert!(ok, "curl after the stalled handshakes timed out: {out}");
}

#[test]
fn tls_startup_refuses_missing_or_invalid_files() {
    let work = tempdir();
    let pki = Pki::new(work.path().join("pki"), "localhost", 9, KeyKind::Pkcs8Ec);
    let serve = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(extra)
            .env("NO_COLOR", "1");
        c
    };
    let missing = work.path().join("missing.key");
    let err = run_fails(&mut serve(&[
        "--tls-cert",
        &pki.cert().display().to_string(),
        "--tls-key",
        &missing.display().to_string(),
    ]));
    assert!(err.contains("missing.key"), "{err}");

    let garbage = work.path().join("garbage.crt");
    std::fs::write(&garbage, "hello\n").expect("writing garbage");
    let err = run_fails(&mut serve(&[
        "--tls-cert",
        &garbage.display().to_string(),
        "--tls-key",
        &pki.key().display().to_string(),
    ]));
    assert!(err.contains("no PEM certificate"), "{err}");

    // A key that belongs to another certificate.
    let other = Pki::new(work.path().join("other"), "localhost", 10, KeyKind::Sec1Ec);
    let err = run_fails(&mut serve(&[
        "--tls-cert",
        &pki.cert().display().to_string(),
        "--tls-key",
        &other.key().display().to_string(),
    ]));
    assert!(err.contains("usable key"), "{err}");

    // One without the other.
    let err = run_fails(&mut serve(&[
        "--tls-cert",
        &pki.cert().display().to_string(),
    ]));
    assert!(err.contains("--tls-key"), "{err}");
}

#[test]
fn protected_mode_network_address_without_auth() {
    let work = tempdir();
    let addr = format!("0.0.0.0:{}", free_port());
    let err = run_fails(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(work.path().join("data"))
            .env("NO_COLOR", "1"),
    );
    assert!(err.contains("allow_anonymous_on_network"), "{err}");
    assert!(err.contains(&addr), "{err}");

    // TLS alone does not make anonymous access on the network acceptable.
    let pki = Pki::new(work.path().join("pki"), "localhost", 11, KeyKind::Pkcs8Ec);
    let err = run_fails(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(work.path().join("data"))
            .arg("--tls-cert")
            .arg(pki.cert())
            .arg("--tls-key")
            .arg(pki.key())
            .env("NO_COLOR", "1"),
    );
    assert!(err.contains("allow_anonymous_on_network"), "{err}");

    let berth = Berth::start_launched(
        "[security]\nallow_anonymous_on_network = true\n",
        &[],
        Launch {
            listen_ip: Some("0.0.0.0".to_owned()),
            ..Launch::default()
        },
    );
    assert_eq!(berth.get("/v2/").status, 200);
    assert!(
        berth
            .log()
            .contains("serving plain HTTP: anonymous push and pull from the network"),
        "{}",
        berth.log()
    );

    let config = format!(
        "[security]\nallow_anonymous_on_network = true\n{}",
        tls_config(&pki.cert(), &pki.key(), 10)
    );
    let berth = Berth::start_launched(
        &config,
        &[],
        Launch {
            listen_ip: Some("0.0.0.0".to_owned()),
            tls_ca: Some(pki.ca()),
            ..Launch::default()
        },
    );
    let (ok, out) = curl_https(berth.addr(), &pki.ca(), "/v2/");
    assert!(ok, "{out}");
    assert!(
        berth
            .log()
            .contains("serving HTTPS: anonymous push and pull")
    );
}

/// `curl --cacert ca -d @body https://<addr><path>`: the status and body.
fn curl_post_https(addr: &str, ca: &Path, path: &str, body: &Path) -> (String, String) {
    let out = run(cmd("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--write-out", "\n%{http_code}"])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg("--cacert")
        .arg(ca)
        .arg(format!("https://{addr}{path}")));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

/// `berth serve` with `[admission]`: the webhooks answer over HTTPS on their own port
/// with their own certificate (curl trusts only its CA), from the images Berth holds: a
/// Pod naming an image pushed with skopeo is pinned to its digest, and `:latest` refused.
#[test]
fn admission_webhooks_served_by_berth_serve() {
    use base64::Engine as _;
    let work = tempdir();
    let pki = Pki::new(work.path().join("pki"), "localhost", 1002, KeyKind::Pkcs8Ec);
    let hook_port = free_port();
    let config = format!(
        "[admission]\nlisten = \"127.0.0.1:{hook_port}\"\ncert_file = {:?}\nkey_file = {:?}\n\
         registry = \"registry.example.com\"\n\n\
         [[admission.rule]]\nname = \"no-latest\"\nnamespaces = [\"team-*\"]\nkind = \"refuse-latest\"\nmode = \"enforce\"\n\n\
         [[admission.rule]]\nname = \"pin\"\nnamespaces = [\"team-*\"]\nkind = \"pin\"\nmode = \"enforce\"\n",
        pki.cert().display().to_string(),
        pki.key().display().to_string()
    );
    let berth = Berth::start_with(&config, &[]);
    let src = Layout::init(work.path().join("src"));
    let digest = src.build("v1", "amd64", &[("app.txt", &unique("admission"))]);
    crate::harness::skopeo_copy(
        &[],
        &src.oci("v1"),
        &format!("docker://{}/team-a/app:1.0", berth.addr()),
    );
    let hook = format!("127.0.0.1:{hook_port}");
    crate::harness::wait_until(Duration::from_secs(10), "the webhook listener", || {
        curl_https(&hook, &pki.ca(), "/healthz").0
    });
    let review = |image: &str| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "e2e-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a", "operation": "CREATE",
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "app", "image": image}]}}}
        })
    };
    let body = work.path().join("review.json");
    std::fs::write(
        &body,
        review("registry.example.com/team-a/app:1.0").to_string(),
    )
    .expect("write");
    let (status, text) = curl_post_https(&hook, &pki.ca(), "/mutate", &body);
    assert_eq!(status, "200", "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["response"]["uid"], "e2e-1");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(v["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: serde_json::Value = serde_json::from_slice(&patch).expect("patch");
    assert_eq!(
        patch,
        serde_json::json!([{"op": "replace", "path": "/spec/containers/0/image",
            "value": format!("registry.example.com/team-a/app:1.0@{digest}")}])
    );
    std::fs::write(&body, review("nginx:latest").to_string()).expect("write");
    let (status, text) = curl_post_https(&hook, &pki.ca(), "/validate", &body);
    assert_eq!(status, "200", "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["response"]["allowed"], false, "{text}");
    assert!(text.contains("no-latest"), "{text}");
    std::fs::write(&body, "{").expect("write");
    let (status, _) = curl_post_https(&hook, &pki.ca(), "/validate", &body);
    assert_eq!(status, "400");
    // The registry port does not answer reviews, and the webhook port serves no registry.
    let (_, out) = curl_https(&hook, &pki.ca(), "/v2/");
    assert!(out.starts_with("404"), "{out}");
}

/// `berth k8s webhook-cert` makes what the webhooks need without openssl: `berth serve`
/// answers reviews with the certificate, curl trusting only the made CA accepts it under
/// the Service's name, and the refusal is in the audit log. `berth k8s manifests
/// --admission` without `--webhook-ca` renders the Secret and the CA bundle itself.
#[test]
fn admission_with_the_certificate_berth_makes() {
    let work = tempdir();
    let out = work.path().join("webhook-pki");
    let made = exec(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "k8s",
                "webhook-cert",
                "--name",
                "berth",
                "--namespace",
                "registry",
            ])
            .args(["--days", "30", "--out"])
            .arg(&out),
    );
    assert!(made.status.success(), "{made:?}");
    let secret = std::fs::read_to_string(out.join("secret.yaml")).expect("secret.yaml");
    assert!(secret.contains("type: kubernetes.io/tls"), "{secret}");
    assert!(secret.contains("name: berth-webhook-tls"), "{secret}");
    assert!(secret.contains("namespace: registry"), "{secret}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(out.join("tls.key"))
            .expect("tls.key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let hook_port = free_port();
    let config = format!(
        "[admission]\nlisten = \"127.0.0.1:{hook_port}\"\ncert_file = {:?}\nkey_file = {:?}\n\
         registry = \"registry.example.com\"\n\n\
         [[admission.rule]]\nname = \"no-latest\"\nnamespaces = [\"team-*\"]\nkind = \"refuse-latest\"\nmode = \"enforce\"\n",
        out.join("tls.crt").display().to_string(),
        out.join("tls.key").display().to_string()
    );
    let berth = Berth::start_with(&config, &[]);
    let host = "berth-webhook.registry.svc";
    let curl = |path: &str, body: Option<&Path>| {
        let mut c = cmd("curl");
        c.args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--write-out", "\n%{http_code}"])
            .arg("--resolve")
            .arg(format!("{host}:{hook_port}:127.0.0.1"))
            .arg("--cacert")
            .arg(out.join("ca.crt"));
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("@{}", b.display()));
        }
        exec(c.arg(format!("https://{host}:{hook_port}{path}")))
    };
    crate::harness::wait_until(Duration::from_secs(10), "the webhook listener", || {
        curl("/healthz", None).status.success()
    });
    let body = work.path().join("review.json");
    std::fs::write(
        &body,
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "e2e-2", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "team-a", "operation": "CREATE", "name": "p",
                "userInfo": {"username": "alice"},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "app", "image": "nginx:latest"}]}}}
        })
        .to_string(),
    )
    .expect("write");
    let r = curl("/validate", Some(&body));
    assert!(r.status.success(), "{r:?}");
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    let (json, status) = text.rsplit_once('\n').expect("status");
    assert_eq!(status, "200", "{text}");
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    assert_eq!(v["response"]["allowed"], false, "{text}");
    // Another name than the certificate's is refused by curl.
    let wrong = exec(
        cmd("curl")
            .args(["--silent", "--max-time", "10", "--resolve"])
            .arg(format!("other.registry.svc:{hook_port}:127.0.0.1"))
            .arg("--cacert")
            .arg(out.join("ca.crt"))
            .arg(format!("https://other.registry.svc:{hook_port}/healthz")),
    );
    assert!(!wrong.status.success(), "a name not in the certificate");

    let audit = || run_stdout(berth.cli().args(["audit", "--json"]));
    crate::harness::wait_until(
        Duration::from_secs(10),
        "the refusal in the audit log",
        || audit().contains("admission.deny"),
    );
    let row = audit()
        .lines()
        .map(|l| crate::harness::parse_json(l.as_bytes(), "an audit row"))
        .find(|r| r["action"] == "admission.deny")
        .expect("the row");
    assert_eq!(row["actor"], "k8s:alice", "{row}");
    assert_eq!(row["outcome"], "denied", "{row}");
    assert_eq!(row["target"], "team-a/Pod/p", "{row}");
    let detail: serde_json::Value =
        serde_json::from_str(row["detail"].as_str().expect("detail")).expect("detail JSON");
    assert_eq!(detail["container"], "app", "{detail}");
    assert_eq!(detail["image"], "nginx:latest", "{detail}");
    assert_eq!(detail["rule"], "no-latest", "{detail}");
    assert_eq!(detail["mode"], "enforce", "{detail}");

    let manifests = exec(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "k8s",
                "manifests",
                "--image",
                "registry.example.com/berth:0.1.0",
            ])
            .arg("--admission"),
    );
    assert!(manifests.status.success(), "{manifests:?}");
    let yaml = String::from_utf8_lossy(&manifests.stdout);
    assert!(yaml.contains("type: kubernetes.io/tls"), "{yaml}");
    assert!(yaml.contains("caBundle: "), "{yaml}");
    assert!(
        String::from_utf8_lossy(&manifests.stderr).contains("private key"),
        "{manifests:?}"
    );
}
