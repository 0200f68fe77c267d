//! Shared machinery of the end-to-end tests: a real `berth serve` process, a small HTTP/1.1
//! client, the external tools (which must be installed: a missing tool fails the test),
//! and OCI image layouts built with umoci.

use std::fmt::Write as _;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest type a modern client accepts.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Longest any single external command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Where `scripts/install-test-tools.sh` puts tools that are not Debian packages.
const EXTRA_TOOL_DIR: &str = "/opt/berth-tools/bin";

// ---- small helpers ----

/// Text that no other test run produces, so every image has its own blobs.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{label} pid={} t={nanos} n={n}\n", std::process::id())
}

/// `len` bytes that do not compress, different on every call (xorshift64*).
pub fn noise(len: usize) -> Vec<u8> {
    let seed = Sha256::digest(unique("noise").as_bytes());
    let mut x = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes of seed")) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[track_caller]
pub fn parse_json(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// The strings of a JSON array of strings.
#[track_caller]
pub fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what} holds a non-string: {v}"))
                .to_owned()
        })
        .collect()
}

pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("berth-e2e-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

// ---- external tools ----

/// The path of a required tool. A missing tool fails the test: these tests never skip.
#[track_caller]
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::iter::once(PathBuf::from(EXTRA_TOOL_DIR)))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "required tool `{name}` was not found on PATH or in {EXTRA_TOOL_DIR}; \
                 install the e2e tools with `scripts/install-test-tools.sh` (the e2e tests never skip)"
            )
        })
}

/// A command for a required tool.
#[track_caller]
pub fn cmd(name: &str) -> Command {
    Command::new(tool(name))
}

/// Fails the test unless it runs as root (containerd and podman need it).
#[track_caller]
pub fn require_root(why: &str) {
    let out = exec(Command::new("id").arg("-u"));
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(uid, "0", "the e2e tests must run as root: {why}");
}

fn describe(cmd: &Command, status: Option<ExitStatus>, out: &[u8], err: &[u8]) -> String {
    let mut s = format!("command: {cmd:?}\n");
    if let Some(st) = status {
        let _ = writeln!(s, "status: {st}");
    }
    let _ = writeln!(
        s,
        "--- stdout ---\n{}",
        String::from_utf8_lossy(out).trim_end()
    );
    let _ = write!(
        s,
        "--- stderr ---\n{}",
        String::from_utf8_lossy(err).trim_end()
    );
    s
}

/// Runs a command to completion (or `COMMAND_TIMEOUT`) and returns what it printed.
#[track_caller]
pub fn exec(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for a command") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "timed out after {COMMAND_TIMEOUT:?}\n{}",
            describe(cmd, None, &stdout, &stderr)
        ),
    }
}

/// Runs a command that must succeed.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = exec(cmd);
    assert!(
        out.status.success(),
        "command failed\n{}",
        describe(cmd, Some(out.status), &out.stdout, &out.stderr)
    );
    out
}

/// Runs a command that must succeed and returns its standard output as text.
#[track_caller]
pub fn run_stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("command printed UTF-8")
}

/// Runs a command that must fail; returns its standard error as text.
#[track_caller]
pub fn run_fails(cmd: &mut Command) -> String {
    let out = exec(cmd);
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded\n{}",
        describe(cmd, Some(out.status), &out.stdout, &out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- skopeo ----

/// `skopeo copy`, plain HTTP on both ends, with `extra` flags before the references.
#[track_caller]
pub fn skopeo_copy(extra: &[&str], src: &str, dst: &str) {
    run(cmd("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(extra)
        .args([src, dst]));
}

/// `skopeo inspect --raw`: the manifest bytes exactly as served.
#[track_caller]
pub fn skopeo_raw(image: &str) -> Vec<u8> {
    run(cmd("skopeo").args(["inspect", "--raw", "--tls-verify=false", image])).stdout
}

/// `skopeo inspect` as JSON.
#[track_caller]
pub fn skopeo_inspect(image: &str) -> Value {
    let out = run(cmd("skopeo").args(["inspect", "--tls-verify=false", image]));
    parse_json(&out.stdout, "skopeo inspect output")
}

// ---- HTTP ----

pub use crate::http::{HttpResponse, parse_response, sha256_digest};

/// One HTTP/1.1 request without a body, on its own connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    crate::http::request(addr, method, path, headers, b"")
}

// ---- the server ----

/// A `berth serve` process on a free loopback port with its own data directory. Killed on drop.
pub struct Berth {
    child: Child,
    addr: String,
    log: PathBuf,
    dir: TempDir,
    env: Vec<(String, String)>,
    /// How the server is started and probed (plain HTTP on 127.0.0.1 unless a test asks).
    launch: Launch,
}

/// What differs between servers beyond their config file and environment.
#[derive(Clone, Default)]
pub struct Launch {
    /// The IP `--listen` gets (the port is picked by the harness); `None`: 127.0.0.1.
    /// Clients always connect to 127.0.0.1.
    pub listen_ip: Option<String>,
    /// The server speaks HTTPS with a certificate this CA signed: the readiness probe
    /// uses `curl --cacert` instead of plain HTTP.
    pub tls_ca: Option<PathBuf>,
    /// A data directory shared with other servers (replicas); `None`: its own.
    pub data_dir: Option<PathBuf>,
    /// The port to listen on (a test that named it in another server's config); `None`: a
    /// free one.
    pub port: Option<u16>,
}

impl Berth {
    pub fn start() -> Berth {
        Berth::start_with("", &[])
    }

    /// A server with `config` (TOML) as its `--config` file and `env` added to its
    /// environment.
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Berth {
        Berth::start_launched(config, env, Launch::default())
    }

    /// [`Berth::start_with`], listening and probed as `launch` says.
    pub fn start_launched(config: &str, env: &[(&str, &str)], launch: Launch) -> Berth {
        let dir = tempdir();
        let log = dir.path().join("berth.log");
        // Cataloging is on by default and pushes two SBOM referrers per image; the suites
        // count exactly the manifests, blobs, referrers and events they cause, so it is
        // off unless a test configures it (sbom.rs does; the conformance runs use the
        // defaults).
        let config = if config.contains("[catalog]") {
            config.to_owned()
        } else {
            format!("{config}\n[catalog]\nenabled = false\n")
        };
        std::fs::write(dir.path().join("berth.toml"), config).expect("writing berth.toml");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..3 {
            let addr = format!("127.0.0.1:{}", launch.port.unwrap_or_else(free_port));
            match spawn_berth(&addr, dir.path(), &log, &env, &launch) {
                Ok(child) => {
                    return Berth {
                        child,
                        addr,
                        log,
                        dir,
                        env,
                        launch,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("berth did not start (3 attempts); last: {last_error}");
    }

    /// The server's log so far.
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's data directory.
    #[allow(dead_code)]
    pub fn data_dir(&self) -> PathBuf {
        self.launch
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// The `berth` binary run with the same config file and data directory (for the
    /// offline subcommands: `user`, `robot`, `secret`, ...).
    #[allow(dead_code)]
    pub fn cli(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.env("BERTH_CONFIG", self.dir.path().join("berth.toml"))
            .env("BERTH_DATA_DIR", self.data_dir())
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Stops the server and starts it again on the same address and data directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn_berth(
                &self.addr,
                self.dir.path(),
                &self.log,
                &self.env,
                &self.launch,
            ) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                // The port may linger for a moment after the old process died.
                Err(e) if Instant::now() > deadline => panic!("berth did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Peak resident memory of the server process so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("server process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `127.0.0.1:PORT/<name_and_tag>`
    pub fn image(&self, name_and_tag: &str) -> String {
        format!("{}/{name_and_tag}", self.addr)
    }

    /// `docker://127.0.0.1:PORT/<name_and_tag>`, a skopeo reference.
    pub fn docker(&self, name_and_tag: &str) -> String {
        format!("docker://{}/{name_and_tag}", self.addr)
    }

    #[track_caller]
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http(&self.addr, method, path, headers)
            .unwrap_or_else(|e| panic!("{method} {path} against berth failed: {e}"))
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[])
    }

    /// `GET /v2/<name>/manifests/<reference>` accepting `accept`.
    #[track_caller]
    pub fn manifest(&self, name: &str, reference: &str, accept: &str) -> HttpResponse {
        self.request(
            "GET",
            &format!("/v2/{name}/manifests/{reference}"),
            &[("Accept", accept)],
        )
    }

    /// The tags of a repository, in the order the registry lists them.
    #[track_caller]
    pub fn tags(&self, name: &str) -> Vec<String> {
        let resp = self.get(&format!("/v2/{name}/tags/list"));
        assert_eq!(resp.status, 200, "tags/list of {name}: {resp:?}");
        strings(&resp.json()["tags"], "tags")
    }
}

/// `GET https://<addr>/healthz` answers 200 with a certificate `ca` signed.
pub fn https_healthy(addr: &str, ca: &Path) -> bool {
    Command::new(tool("curl"))
        .args(["--silent", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(format!("https://{addr}/healthz"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `berth serve` on `addr` with data in `dir/data`, appending its log to `log`,
/// and waits until `GET /healthz` answers 200.
fn spawn_berth(
    addr: &str,
    dir: &Path,
    log: &Path,
    env: &[(String, String)],
    launch: &Launch,
) -> Result<Child, String> {
    let listen = match &launch.listen_ip {
        Some(ip) => format!("{ip}:{}", addr.rsplit_once(':').map_or("", |(_, p)| p)),
        None => addr.to_owned(),
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", &listen, "--data-dir"])
        .arg(launch.data_dir.clone().unwrap_or_else(|| dir.join("data")))
        .arg("--config")
        .arg(dir.join("berth.toml"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("starting the berth binary: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "berth exited ({status}) before serving on {addr}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        let healthy = match &launch.tls_ca {
            None => http(addr, "GET", "/healthz", &[]).is_ok_and(|r| r.status == 200),
            Some(ca) => https_healthy(addr, ca),
        };
        if healthy {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "berth did not answer GET /healthz with 200 within 20s on {listen}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- berth log ({}), last lines ---", self.addr);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

// ---- OCI image layouts ----

/// An OCI image layout on disk, built with umoci or written by skopeo.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// A new, empty layout (`umoci init`).
    #[track_caller]
    pub fn init(dir: PathBuf) -> Layout {
        run(cmd("umoci").arg("init").arg("--layout").arg(&dir));
        Layout { dir }
    }

    /// A layout some tool wrote (or will write) at `dir`.
    pub fn at(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    /// The skopeo reference `oci:<dir>:<tag>`.
    pub fn oci(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// Builds image `tag` for `arch`: one layer per file (path in the image, content), and
    /// returns its manifest digest. Files under a `bin/` directory are executable.
    #[track_caller]
    pub fn build<C: AsRef<[u8]>>(&self, tag: &str, arch: &str, files: &[(&str, C)]) -> String {
        let image = format!("{}:{tag}", self.dir.display());
        let staging = self.dir.with_extension(format!("files-{tag}"));
        run(cmd("umoci").args(["new", "--image", &image]));
        for (i, (path, content)) in files.iter().enumerate() {
            let src = staging.join(i.to_string());
            std::fs::create_dir_all(&src).expect("creating a staging directory");
            let file = src.join("f");
            std::fs::write(&file, content.as_ref()).expect("writing a staging file");
            if path.contains("bin/") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
            run(cmd("umoci")
                .args(["insert", "--image", &image])
                .arg(&file)
                .arg(format!("/{path}")));
        }
        run(cmd("umoci").args([
            "config",
            "--image",
            &image,
            "--os",
            "linux",
            "--architecture",
            arch,
            "--config.cmd",
            &format!("/{}", files.first().map_or("true", |f| f.0)),
            "--config.label",
            &format!("org.example.berth.e2e={tag}"),
        ]));
        let _ = std::fs::remove_dir_all(&staging);
        self.digest(tag)
    }

    #[track_caller]
    pub fn index(&self) -> Value {
        let path = self.dir.join("index.json");
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        parse_json(&bytes, "index.json")
    }

    /// The descriptor `index.json` has for `tag`.
    #[track_caller]
    pub fn descriptor(&self, tag: &str) -> Value {
        let index = self.index();
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .cloned()
            .unwrap_or_else(|| panic!("no tag {tag:?} in {}: {index}", self.dir.display()))
    }

    /// The digest `index.json` has for `tag`.
    #[track_caller]
    pub fn digest(&self, tag: &str) -> String {
        let d = self.descriptor(tag);
        d["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("descriptor without a digest: {d}"))
            .to_owned()
    }

    /// The bytes of a blob; checks they hash to `digest`.
    #[track_caller]
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        let path = self.dir.join("blobs/sha256").join(hex);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert_eq!(
            sha256_digest(&bytes),
            digest,
            "{} does not hash to its name",
            path.display()
        );
        bytes
    }

    #[track_caller]
    pub fn json_blob(&self, digest: &str) -> Value {
        parse_json(&self.blob(digest), digest)
    }

    /// Config and layer digests of an image manifest, config first.
    #[track_caller]
    pub fn image_blobs(&self, manifest_digest: &str) -> Vec<String> {
        image_blobs(&self.json_blob(manifest_digest))
    }

    /// Writes an image index over `children` (manifest digest, architecture), tags it `tag`
    /// in `index.json`, and returns its digest.
    #[track_caller]
    pub fn add_index(&self, tag: &str, children: &[(&str, &str)]) -> String {
        let manifests: Vec<Value> = children
            .iter()
            .map(|(digest, arch)| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": self.blob(digest).len(),
                    "platform": {"architecture": arch, "os": "linux"},
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).expect("serializing an index");
        let digest = sha256_digest(&bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), &bytes)
            .expect("writing the index blob");
        let mut top = self.index();
        top["manifests"]
            .as_array_mut()
            .expect("index.json has manifests")
            .push(serde_json::json!({
                "mediaType": OCI_INDEX,
                "digest": digest,
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }));
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&top).expect("serializing index.json"),
        )
        .expect("writing index.json");
        digest
    }
}

/// Config and layer digests of an image manifest, config first.
#[track_caller]
pub fn image_blobs(manifest: &Value) -> Vec<String> {
    let mut out = vec![
        manifest["config"]["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("manifest without a config: {manifest}"))
            .to_owned(),
    ];
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        out.push(
            layer["digest"]
                .as_str()
                .unwrap_or_else(|| panic!("layer without a digest: {manifest}"))
                .to_owned(),
        );
    }
    out
}

/// Asserts that every blob of image `digest` is byte for byte the same in both layouts.
#[track_caller]
pub fn assert_same_image_blobs(src: &Layout, back: &Layout, digest: &str) {
    assert_eq!(
        back.blob(digest),
        src.blob(digest),
        "manifest {digest} differs after the round trip"
    );
    let blobs = src.image_blobs(digest);
    assert!(blobs.len() >= 2, "image {digest} has no layers");
    for blob in blobs {
        assert_eq!(
            back.blob(&blob),
            src.blob(&blob),
            "blob {blob} differs after the round trip"
        );
    }
}

/// Keeps `_dir` alive as long as the value lives; for tests that need a path in `/tmp`
/// short enough for a unix socket.
pub fn short_tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("creating a temporary directory in /tmp")
}

/// Waits until `ready` holds, or panics after `timeout` with `what`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds an amd64 image holding `files` as `src:v1` under `work` and pushes it to `berth`
/// as `dest` with skopeo. Returns the layout and the image's manifest digest.
pub fn push_new_image<C: AsRef<[u8]>>(
    berth: &Berth,
    work: &Path,
    files: &[(&str, C)],
    dest: &str,
) -> (Layout, String) {
    let src = Layout::init(work.join("src"));
    let digest = src.build("v1", "amd64", files);
    skopeo_copy(&[], &src.oci("v1"), &berth.docker(dest));
    (src, digest)
}
