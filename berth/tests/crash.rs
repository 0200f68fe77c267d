//! Crash safety, faults and a full disk, against the real `berth` binary.
//!
//! * `abort_*`: a failpoint (`BERTH_FAILPOINTS=<point>=abort`) kills the server at one exact
//!   step of a push; after a restart without failpoints nothing partial is visible, earlier
//!   pushes are intact, an interrupted chunked upload resumes or is cleanly unknown, and
//!   `berth fsck` (run beside the serving process) finds no damage.
//! * `kill_9_during_concurrent_pushes_loses_nothing_acknowledged`: threads push blobs
//!   (monolithic and chunked) and tagged manifests while the server is SIGKILLed at random
//!   moments; every object that was answered 2xx must come back byte-identical.
//!   `BERTH_CRASH_ROUNDS` (default 8) and `BERTH_CRASH_SECS` (default 90) bound it.
//! * `error_*`: `N*error` failpoints answer 5xx, the server stays up and consistent, and a
//!   retry succeeds once the point is spent.
//! * `full_disk_*`: a data directory on an 8 MiB tmpfs (needs root to mount; the test fails,
//!   not skips, without it) fills up: 507, still serving, and pushes work again once space
//!   is freed.
//! * `stale_uploads_are_purged`: the sweeper removes abandoned sessions and their files.
//!
//! The client is a few lines of HTTP/1.1 over `TcpStream` with `Connection: close`, so a
//! server that dies mid-request is seen exactly as a client sees it: a connection error.
//! Randomness is seeded per test and the seed printed; `BERTH_CRASH_SEED` replays one.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/http.rs"]
mod support_http;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIGABRT: i32 = 6;

// ---- randomness ----

/// xorshift64*: reproducible from a printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("BERTH_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: BERTH_CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next() | 1)
    }
}

use support_http::{HttpResponse as Resp, sha256_digest as sha256};

/// One request on its own connection. A server that dies before answering in full is an
/// `Err`, never a half response.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    support_http::request(addr, method, path, headers, body)
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    http(addr, "GET", path, &[], b"")
}

// ---- registry operations ----

fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> std::io::Result<Resp> {
    let path = format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data));
    http(
        addr,
        "POST",
        &path,
        &[("Content-Type", "application/octet-stream")],
        data,
    )
}

/// Opens an upload session; returns its location.
fn start_upload(addr: SocketAddr, repo: &str) -> std::io::Result<String> {
    let r = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )?;
    assert_eq!(r.status, 202, "start upload: {}", r.text());
    Ok(r.header("location").expect("upload location").to_owned())
}

fn patch_chunk(
    addr: SocketAddr,
    location: &str,
    offset: usize,
    data: &[u8],
) -> std::io::Result<Resp> {
    let range = format!("{offset}-{}", offset + data.len() - 1);
    http(
        addr,
        "PATCH",
        location,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        data,
    )
}

fn finish_upload(
    addr: SocketAddr,
    location: &str,
    digest: &str,
    data: &[u8],
) -> std::io::Result<Resp> {
    http(
        addr,
        "PUT",
        &format!("{location}?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
}

/// A chunked upload: `chunks` PATCHes, then a PUT with nothing. Returns the first answer
/// that is not a success, or the final one.
fn push_chunked(addr: SocketAddr, repo: &str, data: &[u8], chunks: usize) -> std::io::Result<Resp> {
    // Opening the session writes to the metadata store: on a disk with a few KiB left it
    // can meet the wall before any chunk does, and that answer is the push's answer.
    let r = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )?;
    if r.status != 202 {
        return Ok(r);
    }
    let location = r.header("location").expect("upload location").to_owned();
    let step = data.len().div_ceil(chunks.max(1)).max(1);
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + step).min(data.len());
        let r = patch_chunk(addr, &location, offset, &data[offset..end])?;
        if r.status != 202 {
            return Ok(r);
        }
        offset = end;
    }
    finish_upload(addr, &location, &sha256(data), b"")
}

fn put_manifest(
    addr: SocketAddr,
    repo: &str,
    reference: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", IMAGE_MANIFEST)],
        body,
    )
}

/// An OCI image manifest over `config` and `layers` (digest, size); `note` makes it unique.
fn image_manifest(config: &(String, usize), layers: &[(String, usize)], note: &str) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(d, n)| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
        "annotations": {"note": note},
    }))
    .expect("manifest json")
}

/// Whether a blob is served, checking that whatever is served is exactly right.
fn blob_served(addr: SocketAddr, repo: &str, digest: &str, size: usize) -> bool {
    let r = get(addr, &format!("/v2/{repo}/blobs/{digest}")).expect("GET blob");
    match r.status {
        404 => false,
        200 => {
            assert_eq!(
                r.body.len(),
                size,
                "{repo}@{digest}: served with the wrong size"
            );
            assert_eq!(
                sha256(&r.body),
                digest,
                "{repo}@{digest}: served wrong bytes"
            );
            true
        }
        s => panic!("GET {repo}@{digest}: unexpected {s}: {}", r.text()),
    }
}

fn assert_blob(addr: SocketAddr, repo: &str, digest: &str, size: usize) {
    assert!(
        blob_served(addr, repo, digest, size),
        "{repo}@{digest} was acknowledged but is gone"
    );
}

/// Whether a manifest is served under `reference`, checking the bytes if it is.
fn manifest_served(addr: SocketAddr, repo: &str, reference: &str, bytes: &[u8]) -> bool {
    let r = get(addr, &format!("/v2/{repo}/manifests/{reference}")).expect("GET manifest");
    match r.status {
        404 => false,
        200 => {
            assert!(
                r.body == bytes,
                "{repo}:{reference}: served different manifest bytes"
            );
            true
        }
        s => panic!(
            "GET manifest {repo}:{reference}: unexpected {s}: {}",
            r.text()
        ),
    }
}

// ---- the server ----

/// A data directory and config file that servers come and go on.
struct Home {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    config: PathBuf,
    starts: AtomicU64,
}

impl Home {
    fn new(extra_config: &str) -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        Home::build(dir, root.join("data"), extra_config)
    }

    /// A home whose data directory is `data` (for example a mount point).
    fn with_data(data: PathBuf, extra_config: &str) -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        Home::build(dir, data, extra_config)
    }

    fn build(dir: tempfile::TempDir, data: PathBuf, extra_config: &str) -> Home {
        let root = dir.path().to_owned();
        let config = root.join("berth.toml");
        // JSON logs: the test reads the bound address from the startup line. Cataloging
        // (on by default) is off: its SBOM pushes would pass the failpoints a scenario
        // aims at its own push, and add to the blobs and manifests fsck counts.
        let catalog = if extra_config.contains("[catalog]") {
            ""
        } else {
            "\n[catalog]\nenabled = false\n"
        };
        std::fs::write(
            &config,
            format!("[log]\nformat = \"json\"\nlevel = \"info\"\n{extra_config}{catalog}"),
        )
        .expect("write config");
        Home {
            _dir: dir,
            root,
            data,
            config,
            starts: AtomicU64::new(0),
        }
    }

    fn start(&self, failpoints: Option<&str>) -> Server {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        let log = self.root.join(format!("server-{n}.log"));
        let mut cmd = Command::new(BERTH);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", "127.0.0.1:0"])
            // An abort may leave a core file in the working directory: keep it in the temp dir.
            .current_dir(&self.root)
            .env_remove("RUST_LOG")
            .env_remove("BERTH_METADATA_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match failpoints {
            Some(f) => cmd.env("BERTH_FAILPOINTS", f),
            None => cmd.env_remove("BERTH_FAILPOINTS"),
        };
        let mut child = cmd.spawn().expect("spawn berth");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).expect("log file");
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(addr) = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["listen"].as_str().map(str::to_owned))
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.addr = addr.parse().expect("listen address"),
            Err(_) => panic!("berth did not start:\n{}", server.log_tail()),
        }
        server
    }

    fn fsck(&self) -> Fsck {
        let out = Command::new(BERTH)
            .arg("fsck")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--json")
            .env_remove("BERTH_FAILPOINTS")
            .env_remove("BERTH_METADATA_URL")
            .output()
            .expect("run berth fsck");
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Fsck {
            code: out.status.code(),
            report,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// fsck must find nothing missing or corrupt; returns its report.
    fn fsck_clean(&self) -> Value {
        let f = self.fsck();
        assert_eq!(
            f.code,
            Some(0),
            "fsck found damage or failed:\n{:#}\n{}",
            f.report,
            f.stderr
        );
        f.report
    }
}

struct Fsck {
    code: Option<i32>,
    report: Value,
    stderr: String,
}

fn orphans(report: &Value) -> Vec<String> {
    report["orphan_blobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL, as an OOM killer or a node failure would.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to end by itself.
    fn exited(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("server process");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berth did not exit:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("server process");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "berth died:\n{}",
            self.log_tail()
        );
        let r = get(self.addr, "/healthz").expect("healthz");
        assert_eq!(r.status, 200);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- berth log ({}) ---\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        self.kill9();
    }
}

// ---- content pushed before a fault, which must survive it ----

struct Baseline {
    repo: &'static str,
    blobs: Vec<(String, usize)>,
    manifest: Vec<u8>,
}

fn push_baseline(addr: SocketAddr, rng: &mut Rng) -> Baseline {
    let repo = "crash/base";
    let config = rng.bytes(300);
    let layer = rng.bytes(200_000);
    let r = push_blob(addr, repo, &config).expect("push config");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = push_chunked(addr, repo, &layer, 3).expect("push layer");
    assert_eq!(r.status, 201, "{}", r.text());
    let blobs = vec![
        (sha256(&config), config.len()),
        (sha256(&layer), layer.len()),
    ];
    let manifest = image_manifest(&blobs[0], &blobs[1..], "baseline");
    let r = put_manifest(addr, repo, "v1", &manifest).expect("push manifest");
    assert_eq!(r.status, 201, "{}", r.text());
    Baseline {
        repo,
        blobs,
        manifest,
    }
}

fn check_baseline(addr: SocketAddr, b: &Baseline) {
    for (d, n) in &b.blobs {
        assert_blob(addr, b.repo, d, *n);
    }
    assert!(
        manifest_served(addr, b.repo, "v1", &b.manifest),
        "baseline tag lost"
    );
    assert!(
        manifest_served(addr, b.repo, &sha256(&b.manifest), &b.manifest),
        "baseline manifest lost"
    );
}

// ---- a: abort at each failpoint ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Monolithic,
    Chunked,
    Manifest,
}

/// What a restarted server may show of the interrupted object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Never committed: not served.
    Absent,
    /// Committed before the crash (only the answer was lost): served, byte-identical.
    Present,
}

/// What an interrupted chunked upload's session may do after the restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    /// It resumes from where it stands and completes.
    Resumes,
    /// It answers BLOB_UPLOAD_UNKNOWN (its data was consumed or lost); a fresh push works.
    Unknown,
}

/// Runs a push that hits `point`, which aborts the server; restarts without failpoints and
/// checks what is visible.
fn abort_scenario(point: &str, kind: Kind, after: After, session: Option<Session>) {
    let test = format!("abort at {point} during {kind:?}");
    let mut rng = Rng::seeded(&test);
    let home = Home::new("");
    let mut server = home.start(None);
    let base = push_baseline(server.addr, &mut rng);
    server.kill9();

    let repo = "crash/target";
    let size = 150_000 + rng.below(100_000) as usize;
    let data = rng.bytes(size);
    let digest = sha256(&data);
    let note = format!("target {}", rng.next());
    let manifest = image_manifest(&base.blobs[0], &base.blobs[1..], &note);
    let manifest_digest = sha256(&manifest);

    let mut server = home.start(Some(&format!("{point}=abort")));
    let addr = server.addr;
    let mut location = None;
    let result = match kind {
        Kind::Monolithic => push_blob(addr, repo, &data),
        Kind::Chunked => {
            let loc = start_upload(addr, repo).expect("start upload");
            location = Some(loc.clone());
            let half = data.len() / 2;
            match patch_chunk(addr, &loc, 0, &data[..half]) {
                Ok(r) if r.status == 202 => finish_upload(addr, &loc, &digest, &data[half..]),
                other => other,
            }
        }
        Kind::Manifest => {
            // The manifest needs its blobs in its own repository.
            for (d, _) in &base.blobs {
                let r = http(
                    addr,
                    "POST",
                    &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={}", base.repo),
                    &[],
                    b"",
                )
                .expect("mount");
                assert_eq!(r.status, 201, "mount: {}", r.text());
            }
            put_manifest(addr, repo, "t1", &manifest)
        }
    };
    assert!(
        result.is_err(),
        "{test}: expected the connection to die, got {result:?}"
    );
    let status = server.exited(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(SIGABRT), "{test}: {status:?}");

    let server = home.start(None);
    let addr = server.addr;
    check_baseline(addr, &base);
    let visible = match kind {
        Kind::Monolithic | Kind::Chunked => blob_served(addr, repo, &digest, data.len()),
        Kind::Manifest => {
            let by_digest = manifest_served(addr, repo, &manifest_digest, &manifest);
            let by_tag = manifest_served(addr, repo, "t1", &manifest);
            assert_eq!(by_digest, by_tag, "{test}: tag and manifest disagree");
            by_digest
        }
    };
    assert_eq!(visible, after == After::Present, "{test}: visibility");

    // Checked beside the serving process, before anything repairs the state.
    let report = home.fsck_clean();
    if point == "before_blob_link" {
        assert!(
            orphans(&report).contains(&digest),
            "{test}: bytes placed without metadata should be reported as an orphan: {report:#}"
        );
    }

    if let Some(loc) = location {
        let resumed = resume_upload(addr, &loc, &data);
        match session {
            Some(expected) => assert_eq!(resumed, expected, "{test}: session after restart"),
            None => panic!("{test}: no expectation for the session"),
        }
        if resumed == Session::Resumes {
            assert_blob(addr, repo, &digest, data.len());
        }
    }
    // Whatever was interrupted can be pushed again, and used.
    match kind {
        Kind::Monolithic | Kind::Chunked => {
            let r = push_blob(addr, repo, &data).expect("re-push");
            assert_eq!(r.status, 201, "{test}: re-push: {}", r.text());
            assert_blob(addr, repo, &digest, data.len());
            let cfg = (sha256(&data), data.len());
            let m = image_manifest(&cfg, std::slice::from_ref(&cfg), "uses the re-pushed blob");
            let r = put_manifest(addr, repo, "uses", &m).expect("manifest");
            assert_eq!(r.status, 201, "{test}: {}", r.text());
        }
        Kind::Manifest => {
            let r = put_manifest(addr, repo, "t1", &manifest).expect("re-push");
            assert_eq!(r.status, 201, "{test}: re-push: {}", r.text());
            assert!(manifest_served(addr, repo, "t1", &manifest));
        }
    }
    check_baseline(addr, &base);
    let report = home.fsck_clean();
    assert!(
        orphans(&report).is_empty(),
        "{test}: re-pushing adopts the orphan: {report:#}"
    );
    drop(server);
}

/// Continues an interrupted chunked upload from where the server says it stands.
fn resume_upload(addr: SocketAddr, location: &str, data: &[u8]) -> Session {
    let r = get(addr, location).expect("upload status");
    if r.status == 404 {
        assert_eq!(
            r.error_code().as_deref(),
            Some("BLOB_UPLOAD_UNKNOWN"),
            "{}",
            r.text()
        );
        return Session::Unknown;
    }
    assert_eq!(r.status, 204, "upload status: {}", r.text());
    let range = r.header("range").expect("Range on upload status");
    let end: usize = range
        .split_once('-')
        .and_then(|(_, e)| e.parse().ok())
        .expect("Range 0-<end>");
    // "0-0" is what an empty upload reports; every chunk here is far longer than a byte.
    let offset = if end == 0 { 0 } else { end + 1 };
    assert!(
        offset <= data.len(),
        "server claims {offset} of {} bytes",
        data.len()
    );
    if offset < data.len() {
        let r = patch_chunk(addr, location, offset, &data[offset..]).expect("resume PATCH");
        if r.status == 404 {
            assert_eq!(r.error_code().as_deref(), Some("BLOB_UPLOAD_UNKNOWN"));
            return Session::Unknown;
        }
        assert_eq!(r.status, 202, "resume PATCH: {}", r.text());
    }
    let r = finish_upload(addr, location, &sha256(data), b"").expect("resume PUT");
    match r.status {
        201 => Session::Resumes,
        404 => {
            assert_eq!(
                r.error_code().as_deref(),
                Some("BLOB_UPLOAD_UNKNOWN"),
                "{}",
                r.text()
            );
            Session::Unknown
        }
        s => panic!("resume PUT: unexpected {s}: {}", r.text()),
    }
}

#[test]
fn abort_after_temp_write_monolithic() {
    abort_scenario("after_temp_write", Kind::Monolithic, After::Absent, None);
}

#[test]
fn abort_after_temp_write_chunked() {
    abort_scenario(
        "after_temp_write",
        Kind::Chunked,
        After::Absent,
        Some(Session::Resumes),
    );
}

#[test]
fn abort_before_rename_monolithic() {
    abort_scenario("before_rename", Kind::Monolithic, After::Absent, None);
}

#[test]
fn abort_before_rename_chunked() {
    abort_scenario(
        "before_rename",
        Kind::Chunked,
        After::Absent,
        Some(Session::Resumes),
    );
}

#[test]
fn abort_before_blob_link_monolithic() {
    abort_scenario("before_blob_link", Kind::Monolithic, After::Absent, None);
}

#[test]
fn abort_before_blob_link_chunked() {
    abort_scenario(
        "before_blob_link",
        Kind::Chunked,
        After::Absent,
        Some(Session::Unknown),
    );
}

#[test]
fn abort_after_blob_link_monolithic() {
    abort_scenario("after_blob_link", Kind::Monolithic, After::Present, None);
}

#[test]
fn abort_after_blob_link_chunked() {
    abort_scenario(
        "after_blob_link",
        Kind::Chunked,
        After::Present,
        Some(Session::Unknown),
    );
}

#[test]
fn abort_before_manifest_commit() {
    abort_scenario(
        "before_manifest_commit",
        Kind::Manifest,
        After::Absent,
        None,
    );
}

#[test]
fn abort_after_manifest_commit() {
    abort_scenario(
        "after_manifest_commit",
        Kind::Manifest,
        After::Present,
        None,
    );
}

// ---- b: SIGKILL under a concurrent write load ----

#[derive(Clone, Debug)]
enum Acked {
    Blob {
        repo: String,
        digest: String,
        size: usize,
    },
    Manifest {
        repo: String,
        tag: String,
        bytes: Vec<u8>,
    },
}

#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<Acked>>,
    /// Answers that are wrong whatever the timing (a complete 4xx/5xx response).
    faults: Mutex<Vec<String>>,
    attempts: AtomicU64,
}

impl Ledger {
    fn blobs_in(&self, repo: &str) -> Vec<(String, usize)> {
        self.acked
            .lock()
            .expect("ledger")
            .iter()
            .filter_map(|a| match a {
                Acked::Blob {
                    repo: r,
                    digest,
                    size,
                } if r == repo => Some((digest.clone(), *size)),
                _ => None,
            })
            .collect()
    }
}

/// One worker: pushes until `stop`, recording what the server acknowledged.
fn workload(
    addr: SocketAddr,
    worker: usize,
    round: usize,
    mut rng: Rng,
    ledger: &Ledger,
    stop: &AtomicBool,
) {
    let repos = ["crash/a", "crash/b"];
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        ledger.attempts.fetch_add(1, Ordering::Relaxed);
        let repo = repos[rng.below(2) as usize];
        let op = rng.below(10);
        let known = ledger.blobs_in(repo);
        let result = if op < 3 && known.len() >= 2 {
            let pick = |rng: &mut Rng| known[rng.below(known.len() as u64) as usize].clone();
            let config = pick(&mut rng);
            let layers: Vec<_> = (0..1 + rng.below(3)).map(|_| pick(&mut rng)).collect();
            let tag = format!("w{worker}-r{round}-{n}");
            let bytes = image_manifest(&config, &layers, &tag);
            put_manifest(addr, repo, &tag, &bytes).map(|r| {
                (
                    r,
                    Acked::Manifest {
                        repo: repo.to_owned(),
                        tag,
                        bytes,
                    },
                )
            })
        } else {
            // Mostly small blobs, some large enough to be mid-write when the kill lands.
            let size = if rng.below(5) == 0 {
                200_000 + rng.below(1_500_000) as usize
            } else {
                1 + rng.below(40_000) as usize
            };
            let data = rng.bytes(size);
            let r = if op < 7 {
                push_blob(addr, repo, &data)
            } else {
                push_chunked(addr, repo, &data, 2 + rng.below(3) as usize)
            };
            r.map(|r| {
                (
                    r,
                    Acked::Blob {
                        repo: repo.to_owned(),
                        digest: sha256(&data),
                        size,
                    },
                )
            })
        };
        match result {
            Ok((r, acked)) if r.status == 201 => ledger.acked.lock().expect("ledger").push(acked),
            Ok((r, acked)) => ledger.faults.lock().expect("ledger").push(format!(
                "{} for {acked:?}: {}",
                r.status,
                r.text()
            )),
            // The server is being killed; whatever this was, it was not acknowledged.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn verify_ledger(addr: SocketAddr, ledger: &Ledger) -> (usize, usize) {
    let acked = ledger.acked.lock().expect("ledger").clone();
    let (mut blobs, mut manifests) = (0, 0);
    for a in &acked {
        match a {
            Acked::Blob { repo, digest, size } => {
                assert_blob(addr, repo, digest, *size);
                blobs += 1;
            }
            Acked::Manifest { repo, tag, bytes } => {
                assert!(
                    manifest_served(addr, repo, tag, bytes),
                    "{repo}:{tag} acknowledged but gone"
                );
                assert!(
                    manifest_served(addr, repo, &sha256(bytes), bytes),
                    "{repo}:{tag} acknowledged but its manifest is gone"
                );
                manifests += 1;
            }
        }
    }
    (blobs, manifests)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn kill_9_during_concurrent_pushes_loses_nothing_acknowledged() {
    const WORKERS: usize = 4;
    let rounds = env_u64("BERTH_CRASH_ROUNDS", 8) as usize;
    let budget = Duration::from_secs(env_u64("BERTH_CRASH_SECS", 90));
    let started = Instant::now();
    let mut rng = Rng::seeded("kill_9_during_concurrent_pushes_loses_nothing_acknowledged");
    let home = Home::new("");
    let ledger = Arc::new(Ledger::default());
    let mut server = home.start(None);
    let mut done = 0;
    let mut fsck_during_load = 0;
    for round in 0..rounds {
        if started.elapsed() > budget {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (ledger, stop, wrng) = (ledger.clone(), stop.clone(), rng.fork());
                let addr = server.addr;
                thread::spawn(move || workload(addr, w, round, wrng, &ledger, &stop))
            })
            .collect();
        // Every other round, fsck runs while the load (and the kill) happens: it must
        // never mistake work in flight for damage.
        let checker = (round % 2 == 1).then(|| {
            let (config, data) = (home.config.clone(), home.data.clone());
            thread::spawn(move || {
                Command::new(BERTH)
                    .arg("fsck")
                    .arg("--config")
                    .arg(config)
                    .arg("--data-dir")
                    .arg(data)
                    .arg("--json")
                    .env_remove("BERTH_FAILPOINTS")
                    .output()
                    .expect("fsck")
            })
        });
        thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("worker");
        }
        if let Some(checker) = checker {
            let out = checker.join().expect("fsck thread");
            assert_eq!(
                out.status.code(),
                Some(0),
                "fsck under load, round {round}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            fsck_during_load += 1;
        }
        let restart = Instant::now();
        server = home.start(None);
        let restart = restart.elapsed();
        assert!(restart < Duration::from_secs(5), "restart took {restart:?}");
        let faults = ledger.faults.lock().expect("ledger").clone();
        assert!(faults.is_empty(), "wrong answers under load: {faults:#?}");
        let (blobs, manifests) = verify_ledger(server.addr, &ledger);
        home.fsck_clean();
        done += 1;
        eprintln!(
            "round {round}: restart in {restart:?}; {blobs} blobs and {manifests} manifests acknowledged so far, all intact"
        );
    }
    let (blobs, manifests) = verify_ledger(server.addr, &ledger);
    let report = home.fsck_clean();
    eprintln!(
        "kill -9 loop: {done} rounds in {:?}, {} requests, {blobs} blobs and {manifests} manifests verified, \
         {fsck_during_load} fsck runs under load, {} orphans left by interrupted pushes",
        started.elapsed(),
        ledger.attempts.load(Ordering::Relaxed),
        orphans(&report).len()
    );
    assert!(done >= 1.min(rounds), "no round ran");
    assert!(
        blobs > 0 && manifests > 0,
        "the workload acknowledged nothing"
    );
}

/// The loop above at scale: two replicas over one PostgreSQL schema and one S3 prefix,
/// workers pushing through both, one replica (chosen at random) SIGKILLed per round and
/// restarted; everything either replica acknowledged must come back byte-identical from
/// both, and fsck over the database and the bucket must be clean. `BERTH_CRASH_ROUNDS`
/// (default 4 here) and `BERTH_CRASH_SECS` (default 60) bound it; the CI run takes about
/// a minute, long runs set both higher.
#[test]
fn kill_9_of_one_of_two_replicas_over_postgres_and_s3_loses_nothing_acknowledged() {
    const WORKERS: usize = 4;
    let rounds = env_u64("BERTH_CRASH_ROUNDS", 4) as usize;
    let budget = Duration::from_secs(env_u64("BERTH_CRASH_SECS", 60));
    let started = Instant::now();
    let mut rng = Rng::seeded("kill_9_of_one_of_two_replicas_over_postgres_and_s3");
    let url = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(berth_testkit::postgres_url())
    };
    let s3 = berth_testkit::s3_config(&format!("{}/", berth_testkit::unique()));
    let config = format!(
        "[metadata]\nurl = {url:?}\n[storage]\nkind = \"s3\"\nendpoint = {:?}\nbucket = {:?}\n\
         region = {:?}\nprefix = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n\
         path_style = true\n",
        s3.endpoint,
        s3.bucket,
        s3.region,
        s3.prefix,
        s3.credentials.access_key_id,
        s3.credentials.secret_access_key,
    );
    let homes = [Home::new(&config), Home::new(&config)];
    let ledger = Arc::new(Ledger::default());
    let mut servers = [homes[0].start(None), homes[1].start(None)];
    let mut done = 0;
    for round in 0..rounds {
        if started.elapsed() > budget {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (ledger, stop, wrng) = (ledger.clone(), stop.clone(), rng.fork());
                let addr = servers[w % 2].addr;
                thread::spawn(move || workload(addr, w, round, wrng, &ledger, &stop))
            })
            .collect();
        thread::sleep(Duration::from_millis(500 + rng.below(1500)));
        let victim = rng.below(2) as usize;
        servers[victim].kill9();
        // The survivor goes on taking pushes for a moment while the other is down.
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("worker");
        }
        servers[victim] = homes[victim].start(None);
        let faults = ledger.faults.lock().expect("ledger").clone();
        assert!(faults.is_empty(), "wrong answers under load: {faults:#?}");
        let mut counts = (0, 0);
        for server in &servers {
            counts = verify_ledger(server.addr, &ledger);
        }
        homes[0].fsck_clean();
        done += 1;
        eprintln!(
            "round {round}: replica {victim} killed; {} blobs and {} manifests acknowledged so far, all intact on both",
            counts.0, counts.1
        );
    }
    let (blobs, manifests) = verify_ledger(servers[0].addr, &ledger);
    eprintln!(
        "kill -9 loop over PostgreSQL + S3: {done} rounds in {:?}, {} requests, {blobs} blobs and {manifests} manifests verified on both replicas",
        started.elapsed(),
        ledger.attempts.load(Ordering::Relaxed),
    );
    assert!(done >= 1.min(rounds), "no round ran");
    assert!(
        blobs > 0 && manifests > 0,
        "the workload acknowledged nothing"
    );
}

// ---- c: error failpoints ----

/// With `point=1*error`, a push that hits it gets a 5xx, the server keeps serving, and the
/// same push succeeds once the point is spent.
fn error_scenario(point: &str, kind: Kind) {
    let test = format!("error at {point} during {kind:?}");
    let mut rng = Rng::seeded(&test);
    let home = Home::new("");
    let mut server = home.start(None);
    let base = push_baseline(server.addr, &mut rng);
    server.kill9();

    let mut server = home.start(Some(&format!("{point}=1*error")));
    let addr = server.addr;
    let repo = base.repo;
    let data = rng.bytes(100_000);
    let digest = sha256(&data);
    match kind {
        Kind::Monolithic => {
            let r = push_blob(addr, repo, &data).expect("push");
            assert!(r.status >= 500, "{test}: got {}", r.status);
            server.assert_alive();
            check_baseline(addr, &base);
            let visible = blob_served(addr, repo, &digest, data.len());
            assert_eq!(visible, point == "after_blob_link", "{test}: visibility");
            let r = push_blob(addr, repo, &data).expect("retry");
            assert_eq!(r.status, 201, "{test}: retry: {}", r.text());
        }
        Kind::Chunked => {
            let loc = start_upload(addr, repo).expect("start");
            let half = data.len() / 2;
            let r = patch_chunk(addr, &loc, 0, &data[..half]).expect("patch");
            let r = if r.status == 202 {
                finish_upload(addr, &loc, &digest, &data[half..]).expect("finish")
            } else {
                r
            };
            assert!(r.status >= 500, "{test}: got {}: {}", r.status, r.text());
            server.assert_alive();
            check_baseline(addr, &base);
            // Retrying where the session stands either completes it or, when the failed
            // request had already consumed the upload's data, says it is unknown.
            if resume_upload(addr, &loc, &data) == Session::Unknown {
                assert!(
                    matches!(point, "before_blob_link" | "after_blob_link"),
                    "{test}: the session should have survived the error"
                );
                let r = push_blob(addr, repo, &data).expect("fresh push");
                assert_eq!(r.status, 201, "{test}: {}", r.text());
            }
        }
        Kind::Manifest => {
            let m = image_manifest(&base.blobs[0], &base.blobs[1..], "error test");
            let r = put_manifest(addr, repo, "v2", &m).expect("put");
            assert!(r.status >= 500, "{test}: got {}", r.status);
            server.assert_alive();
            check_baseline(addr, &base);
            let visible = manifest_served(addr, repo, "v2", &m);
            assert_eq!(
                visible,
                point == "after_manifest_commit",
                "{test}: visibility"
            );
            let r = put_manifest(addr, repo, "v2", &m).expect("retry");
            assert_eq!(r.status, 201, "{test}: retry: {}", r.text());
            assert!(manifest_served(addr, repo, "v2", &m));
        }
    }
    if kind != Kind::Manifest {
        assert_blob(addr, repo, &digest, data.len());
    }
    server.assert_alive();
    home.fsck_clean();
}

#[test]
fn error_after_temp_write_then_retry() {
    error_scenario("after_temp_write", Kind::Monolithic);
    error_scenario("after_temp_write", Kind::Chunked);
}

#[test]
fn error_before_rename_then_retry() {
    error_scenario("before_rename", Kind::Monolithic);
    error_scenario("before_rename", Kind::Chunked);
}

#[test]
fn error_around_blob_link_then_retry() {
    error_scenario("before_blob_link", Kind::Monolithic);
    error_scenario("before_blob_link", Kind::Chunked);
    error_scenario("after_blob_link", Kind::Monolithic);
}

#[test]
fn error_around_manifest_commit_then_retry() {
    error_scenario("before_manifest_commit", Kind::Manifest);
    error_scenario("after_manifest_commit", Kind::Manifest);
}

#[test]
fn error_that_persists_fails_only_its_own_requests() {
    let mut rng = Rng::seeded("error_that_persists_fails_only_its_own_requests");
    let home = Home::new("");
    let mut server = home.start(None);
    let base = push_baseline(server.addr, &mut rng);
    server.kill9();

    let mut server = home.start(Some("before_manifest_commit=error"));
    let addr = server.addr;
    for i in 0..3 {
        let m = image_manifest(&base.blobs[0], &base.blobs[1..], &format!("attempt {i}"));
        let r = put_manifest(addr, base.repo, "v2", &m).expect("put");
        assert_eq!(r.status, 500, "{}", r.text());
    }
    // Blob pushes do not pass that point and go on working.
    let data = rng.bytes(50_000);
    let r = push_chunked(addr, base.repo, &data, 2).expect("push");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_blob(addr, base.repo, &sha256(&data), data.len());
    check_baseline(addr, &base);
    server.assert_alive();
    home.fsck_clean();
}

// ---- d: a full disk ----

/// A tmpfs mounted for the test's lifetime.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the full-disk test mounts a {size} tmpfs and needs root (CI runs as root): \
             mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a server being torn down): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes to `path` until the file system has no byte left.
fn fill_completely(path: &Path) {
    let mut f = std::fs::File::create(path).expect("top-up file");
    let block = vec![0u8; 64 * 1024];
    let mut len = block.len();
    while len > 0 {
        match f.write(&block[..len]) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => len /= 2,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

#[test]
fn full_disk_answers_507_keeps_serving_and_recovers() {
    let mut rng = Rng::seeded("full_disk_answers_507_keeps_serving_and_recovers");
    let outer = tempfile::tempdir().expect("tempdir");
    let data = outer.path().join("data");
    let mount = Mount::tmpfs(&data, "8m");
    let home = Home::with_data(data.clone(), "");
    let mut server = home.start(None);
    let addr = server.addr;
    let base = push_baseline(addr, &mut rng);

    // Most of the space goes to a filler the test can free later.
    let filler = data.join("filler");
    std::fs::write(&filler, vec![0u8; 5 << 20]).expect("filler");

    let mut stored = Vec::new();
    let mut failure = None;
    for _ in 0..40 {
        let blob = rng.bytes(512 * 1024);
        let r = push_blob(addr, base.repo, &blob).expect("push");
        if r.status == 201 {
            stored.push(blob);
        } else {
            failure = Some(r);
            break;
        }
    }
    let r = failure.expect("the disk never filled up");
    assert_eq!(
        r.status,
        507,
        "a full disk answers 507: got {}: {}",
        r.status,
        r.text()
    );
    // A chunked upload meets the same wall, and so does the session's next chunk.
    let big = rng.bytes(2 << 20);
    let r = push_chunked(addr, base.repo, &big, 2).expect("chunked push");
    assert_eq!(r.status, 507, "chunked push on a full disk: {}", r.text());

    // Now fill every last byte: a write that only touches the metadata store (a manifest)
    // meets a full disk too, and must say so the same way.
    let topup = data.join("topup");
    fill_completely(&topup);
    let m = image_manifest(&base.blobs[0], &base.blobs[1..], "on a full disk");
    let r = put_manifest(addr, base.repo, "full", &m).expect("manifest on a full disk");
    assert_eq!(
        r.status,
        507,
        "a metadata write on a full disk answers 507: got {}: {}",
        r.status,
        r.text()
    );
    std::fs::remove_file(&topup).expect("free the top-up");

    server.assert_alive();
    check_baseline(addr, &base);
    for b in &stored {
        assert_blob(addr, base.repo, &sha256(b), b.len());
    }
    let leftovers: Vec<_> = std::fs::read_dir(data.join("uploads"))
        .expect("uploads dir")
        .filter_map(Result::ok)
        .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        .map(|e| e.path())
        .collect();
    // A failed monolithic push removes its partial file; the chunked session keeps only
    // its acknowledged bytes (none here beyond what fit).
    assert!(
        leftovers.len() <= 1,
        "partial uploads left behind: {leftovers:?}"
    );

    std::fs::remove_file(&filler).expect("free space");
    // More writes in a row than the metadata pool has connections: a connection that the
    // full disk left in a broken state would fail one of them.
    for i in 0..12 {
        let small = rng.bytes(1000 + i);
        let r = push_blob(addr, base.repo, &small).expect("push after freeing");
        assert_eq!(r.status, 201, "write {i} after freeing space: {}", r.text());
    }
    let r = push_blob(addr, base.repo, &big).expect("push after freeing");
    assert_eq!(r.status, 201, "push after freeing space: {}", r.text());
    let more = rng.bytes(1 << 20);
    let r = push_chunked(addr, base.repo, &more, 3).expect("chunked push after freeing");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_blob(addr, base.repo, &sha256(&big), big.len());
    assert_blob(addr, base.repo, &sha256(&more), more.len());
    let cfg = (sha256(&more), more.len());
    let m = image_manifest(
        &cfg,
        &[(sha256(&big), big.len())],
        "after the disk was full",
    );
    let r = put_manifest(addr, base.repo, "after-full", &m).expect("manifest");
    assert_eq!(r.status, 201, "{}", r.text());
    check_baseline(addr, &base);
    home.fsck_clean();
    drop(server);
    drop(mount);
}

// ---- e: stale uploads ----

#[test]
fn stale_uploads_are_purged() {
    let home = Home::new("[uploads]\nttl_secs = 1\npurge_interval_secs = 1\n");
    let server = home.start(None);
    let addr = server.addr;
    let loc = start_upload(addr, "crash/stale").expect("start");
    let r = patch_chunk(addr, &loc, 0, b"abandoned bytes").expect("patch");
    assert_eq!(r.status, 202);
    let id = loc.rsplit('/').next().expect("upload id").to_owned();
    let file = home.data.join("uploads").join(&id);
    assert!(file.exists(), "upload data at {}", file.display());
    // A data file with no session, as a crashed monolithic push leaves.
    let leftover = home.data.join("uploads").join("leftover-from-a-crash");
    std::fs::write(&leftover, b"partial").expect("leftover");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(addr, &loc).expect("status");
        if r.status == 404 && !file.exists() && !leftover.exists() {
            assert_eq!(r.error_code().as_deref(), Some("BLOB_UPLOAD_UNKNOWN"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale upload not purged: status {}, file {}, leftover {}",
            r.status,
            file.exists(),
            leftover.exists()
        );
        thread::sleep(Duration::from_millis(250));
    }
    let r = patch_chunk(addr, &loc, 15, b"more").expect("patch after purge");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code().as_deref(), Some("BLOB_UPLOAD_UNKNOWN"));
    // A fresh session on the same server is not affected.
    let data = b"a blob pushed after the sweep".to_vec();
    let r = push_chunked(addr, "crash/stale", &data, 2).expect("push");
    assert_eq!(r.status, 201, "{}", r.text());
    home.fsck_clean();
}

// ---- f: encryption at rest: `berth encrypt` and `berth keys rewrap` killed ----

const SEG: usize = 65536;

impl Home {
    /// Rewrites the configuration (the next start and every CLI run read it).
    fn set_config(&self, extra_config: &str) {
        std::fs::write(
            &self.config,
            format!(
                "[log]\nformat = \"json\"\nlevel = \"info\"\n{extra_config}\n[catalog]\nenabled = false\n"
            ),
        )
        .expect("write config");
    }

    /// A key-encryption key file (64 hex digits) in the home directory.
    fn key_file(&self, id: &str, byte: u8) -> PathBuf {
        let path = self.root.join(format!("kek-{id}"));
        std::fs::write(&path, format!("{byte:02x}").repeat(32)).expect("key file");
        path
    }

    fn encryption(&self, keys: &[(&str, u8)], active: &str) -> String {
        let mut c = format!("[encryption]\nactive = \"{active}\"\n");
        for (id, byte) in keys {
            let f = self.key_file(id, *byte);
            c.push_str(&format!(
                "[[encryption.key]]\nid = \"{id}\"\nfile = {:?}\n",
                f.display().to_string()
            ));
        }
        c
    }

    /// `berth <args>` on this home, with `failpoints` armed.
    fn cli(&self, args: &[&str], failpoints: Option<&str>) -> Command {
        let mut cmd = Command::new(BERTH);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .current_dir(&self.root)
            .env_remove("BERTH_METADATA_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match failpoints {
            Some(f) => cmd.env("BERTH_FAILPOINTS", f),
            None => cmd.env_remove("BERTH_FAILPOINTS"),
        };
        cmd
    }
}

/// Blobs of a few segments each, every one starting with a marker that must not be left
/// in any stored file once it is sealed.
fn marked_blobs(rng: &mut Rng, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut b = format!("CRASH-PLAINTEXT-MARKER-{i:04}-").into_bytes();
            let len = 1 + rng.below(3 * SEG as u64 + 1000) as usize;
            b.extend(rng.bytes(len));
            (sha256(&b), b)
        })
        .collect()
}

/// Reads every blob whole and in a range across a segment boundary, over and over, until
/// told to stop: every answer must be exactly the blob's bytes (never ciphertext, never a
/// mix). Returns how many reads it made.
fn reader(
    addr: SocketAddr,
    repo: &'static str,
    blobs: Arc<Vec<(String, Vec<u8>)>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut reads = 0u64;
        while !stop.load(Ordering::SeqCst) {
            for (digest, data) in blobs.iter() {
                let path = format!("/v2/{repo}/blobs/{digest}");
                let r = get(addr, &path).expect("GET blob");
                assert_eq!(r.status, 200, "GET {digest}: {}", r.text());
                assert!(r.body == *data, "{digest}: served other bytes");
                let (a, b) = (SEG as u64 - 7, (data.len() as u64 - 1).min(SEG as u64 + 9));
                if a < b {
                    let range = format!("bytes={a}-{b}");
                    let r = http(addr, "GET", &path, &[("Range", &range)], b"").expect("GET range");
                    assert_eq!(r.status, 206, "GET {digest} {range}: {}", r.text());
                    assert!(
                        r.body == data[a as usize..=b as usize],
                        "{digest} {range}: served other bytes"
                    );
                }
                reads += 1;
            }
        }
        reads
    })
}

/// Every stored blob file, for looking for markers.
fn blob_files(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![data.join("blobs")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read blob file");
                out.push((p, bytes));
            }
        }
    }
    out
}

fn holds_marker(bytes: &[u8]) -> bool {
    bytes
        .windows(b"CRASH-PLAINTEXT-MARKER-".len())
        .any(|w| w == b"CRASH-PLAINTEXT-MARKER-")
}

/// Runs a CLI command and SIGKILLs it after `after`, unless it ended first; whether it
/// was killed.
fn kill9_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd.spawn().expect("spawn berth");
    let deadline = Instant::now() + after;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_and_abort_during_berth_encrypt_never_serve_a_mix_and_resume() {
    let mut rng = Rng::seeded("kill_9_and_abort_during_berth_encrypt_never_serve_a_mix_and_resume");
    let home = Home::new("");
    let mut server = home.start(None);
    let repo = "enc/crash";
    let blobs = marked_blobs(&mut rng, 60);
    for (d, b) in &blobs {
        let r = push_blob(server.addr, repo, b).expect("push");
        assert_eq!(r.status, 201, "push {d}: {}", r.text());
    }
    assert!(
        blob_files(&home.data).iter().any(|(_, b)| holds_marker(b)),
        "plaintext before encryption is turned on"
    );
    server.kill9();
    home.set_config(&home.encryption(&[("k1", 0x31)], "k1"));
    let server = home.start(None);
    let blobs = Arc::new(blobs);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| reader(server.addr, repo, Arc::clone(&blobs), Arc::clone(&stop)))
        .collect();

    // Killed at the exact step between sealing a blob in place and switching its state.
    let out = home
        .cli(&["encrypt"], Some("before_seal_switch=abort"))
        .output()
        .expect("run berth encrypt");
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "encrypt should die at before_seal_switch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Then SIGKILLed at random moments.
    let mut killed = 0;
    for _ in 0..6 {
        let after = Duration::from_millis(20 + rng.below(400));
        if kill9_after(home.cli(&["encrypt"], None), after) {
            killed += 1;
        }
    }
    eprintln!("berth encrypt killed {killed} times");
    let out = home
        .cli(&["encrypt"], None)
        .output()
        .expect("run berth encrypt");
    assert!(
        out.status.success(),
        "the last run finishes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(reads > 0);
    // Everything sealed: no marker in any blob file, every blob exactly right, fsck clean,
    // and a second run has nothing left to do.
    for (p, b) in blob_files(&home.data) {
        assert!(!holds_marker(&b), "{} still holds plaintext", p.display());
    }
    for (d, b) in blobs.iter() {
        assert_blob(server.addr, repo, d, b.len());
    }
    home.fsck_clean();
    let out = home
        .cli(&["encrypt"], None)
        .output()
        .expect("run berth encrypt");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sealed 0 blobs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kill_9_and_abort_during_keys_rewrap_resume_and_the_old_key_can_go() {
    let mut rng = Rng::seeded("kill_9_and_abort_during_keys_rewrap_resume_and_the_old_key_can_go");
    let home = Home::new("");
    home.set_config(&home.encryption(&[("k1", 0x41)], "k1"));
    let mut server = home.start(None);
    let repo = "enc/rewrap";
    let blobs = marked_blobs(&mut rng, 40);
    for (d, b) in &blobs {
        let r = push_blob(server.addr, repo, b).expect("push");
        assert_eq!(r.status, 201, "push {d}: {}", r.text());
    }
    server.kill9();
    home.set_config(&home.encryption(&[("k1", 0x41), ("k2", 0x42)], "k1"));
    let server = home.start(None);
    let out = home
        .cli(&["keys", "rotate", "--to", "k2"], None)
        .output()
        .expect("rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blobs = Arc::new(blobs);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| reader(server.addr, repo, Arc::clone(&blobs), Arc::clone(&stop)))
        .collect();

    let out = home
        .cli(&["keys", "rewrap"], Some("rewrap_batch=abort"))
        .output()
        .expect("run rewrap");
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "rewrap should die at rewrap_batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was committed: k1 cannot be retired yet, and says why.
    let out = home
        .cli(&["keys", "retire", "k1"], None)
        .output()
        .expect("retire");
    assert!(!out.status.success(), "k1 still wraps data keys");
    for _ in 0..4 {
        let after = Duration::from_millis(20 + rng.below(300));
        kill9_after(home.cli(&["keys", "rewrap"], None), after);
    }
    let out = home
        .cli(&["keys", "rewrap"], None)
        .output()
        .expect("run rewrap");
    assert!(
        out.status.success(),
        "the last run finishes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().expect("reader");
    }
    home.fsck_clean();
    let out = home
        .cli(&["keys", "retire", "k1"], None)
        .output()
        .expect("retire");
    assert!(
        out.status.success(),
        "nothing uses k1 any more: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without k1 in the keyring at all, every blob still opens.
    drop(server);
    home.set_config(&home.encryption(&[("k2", 0x42)], "k2"));
    let server = home.start(None);
    for (d, b) in blobs.iter() {
        assert_blob(server.addr, repo, d, b.len());
    }
    home.fsck_clean();
}

/// Stored bytes per sealed segment (format 2): a 12-byte nonce, the ciphertext, a 16-byte
/// tag.
const SEALED_STRIDE: usize = SEG + 28;

/// Every file under the data directory's `uploads/` (the upload's own file and anything
/// kept beside it), for the nonces it holds.
fn upload_files(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(data.join("uploads")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            let bytes = std::fs::read(&p).expect("read upload file");
            (p, bytes)
        })
        .collect()
}

/// Records every sealed segment of `bytes` (stored from a segment boundary) as nonce →
/// the ciphertext it sealed; one upload is one key, so a nonce seen again with other
/// ciphertext is a (key, nonce) pair used twice.
fn record_nonces(seen: &mut std::collections::HashMap<Vec<u8>, Vec<u8>>, what: &str, bytes: &[u8]) {
    for seg in bytes.chunks(SEALED_STRIDE).filter(|s| s.len() >= 28) {
        let (nonce, sealed) = seg.split_at(12);
        if let Some(before) = seen.insert(nonce.to_vec(), sealed.to_vec()) {
            assert!(
                before == sealed,
                "{what}: a (key, nonce) pair sealed two different ciphertexts"
            );
        }
    }
}

/// Killed (at a failpoint) while the filesystem backend re-seals an upload's partial last
/// segment: on a PATCH that continues it, or on the PUT that seals it as final. After the
/// restart the session resumes from the offset the server reports, the blob completes with
/// the right digest, and no (key, nonce) pair ever sealed two different ciphertexts.
fn reseal_crash_scenario(at_put: bool) {
    let test = format!("re-seal crash at {}", if at_put { "PUT" } else { "PATCH" });
    let mut rng = Rng::seeded(&test);
    let home = Home::new("");
    home.set_config(&home.encryption(&[("k1", 0x51)], "k1"));
    let repo = "enc/reseal";
    // Both chunks end inside a segment, so the next append (or the PUT) re-seals one.
    let len = 3 * SEG + 12_345 + rng.below(SEG as u64 / 2) as usize;
    let data = rng.bytes(len);
    let digest = sha256(&data);
    let first = SEG + 1_000 + rng.below(SEG as u64 - 2_000) as usize;
    let mut seen = std::collections::HashMap::new();
    let snapshot = |seen: &mut std::collections::HashMap<Vec<u8>, Vec<u8>>, when: &str| {
        for (p, b) in upload_files(&home.data) {
            record_nonces(seen, &format!("{test}: {when}: {}", p.display()), &b);
        }
    };

    // Armed from the start: the first PATCH cuts nothing back (the file is empty), so it
    // passes the point; the one that continues its partial segment dies there.
    let failpoints = "after_upload_cut=abort";
    let mut server = home.start(Some(failpoints).filter(|_| !at_put));
    let location = start_upload(server.addr, repo).expect("start upload");
    let r = patch_chunk(server.addr, &location, 0, &data[..first]).expect("first PATCH");
    assert_eq!(r.status, 202, "{test}: first PATCH: {}", r.text());
    snapshot(&mut seen, "after the first PATCH");
    let died = if at_put {
        let r = patch_chunk(server.addr, &location, first, &data[first..]).expect("PATCH");
        assert_eq!(r.status, 202, "{test}: second PATCH: {}", r.text());
        snapshot(&mut seen, "after the second PATCH");
        server.kill9();
        server = home.start(Some(failpoints));
        finish_upload(server.addr, &location, &digest, b"")
    } else {
        patch_chunk(server.addr, &location, first, &data[first..])
    };
    assert!(
        died.is_err(),
        "{test}: expected the connection to die, got {died:?}"
    );
    let status = server.exited(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(SIGABRT), "{test}: {status:?}");
    snapshot(&mut seen, "after the crash");

    let server = home.start(None);
    assert_eq!(
        resume_upload(server.addr, &location, &data),
        Session::Resumes,
        "{test}: the interrupted session must resume"
    );
    assert_blob(server.addr, repo, &digest, data.len());
    assert!(
        upload_files(&home.data).is_empty(),
        "{test}: nothing left under uploads/ once the blob is in place"
    );
    // The blob's segments: each nonce once in the blob, and never with other ciphertext
    // than any upload file held under it.
    let blob = std::fs::read(blob_path(&home.data, &digest)).expect("blob file");
    let mut own = std::collections::HashMap::new();
    record_nonces(&mut own, &format!("{test}: the blob"), &blob);
    assert_eq!(
        own.len(),
        data.len().div_ceil(SEG),
        "{test}: every segment of the blob has a nonce of its own"
    );
    record_nonces(&mut seen, &format!("{test}: the blob"), &blob);
    home.fsck_clean();
}

#[test]
fn kill_while_resealing_on_patch_resumes_and_reuses_no_nonce() {
    reseal_crash_scenario(false);
}

#[test]
fn kill_while_resealing_on_put_resumes_and_reuses_no_nonce() {
    reseal_crash_scenario(true);
}

// ---- fsck itself ----

fn blob_path(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

#[test]
fn fsck_reports_damage_and_exits_nonzero() {
    let mut rng = Rng::seeded("fsck_reports_damage_and_exits_nonzero");
    let home = Home::new("");
    let server = home.start(None);
    let base = push_baseline(server.addr, &mut rng);
    let (config, layer) = (&base.blobs[0].0, &base.blobs[1].0);
    let report = home.fsck_clean();
    assert_eq!(report["blobs_checked"], 2);
    assert_eq!(report["manifests_checked"], 1);

    // Damage behind the running server's back: lose one blob, flip a byte of another,
    // and drop in bytes nothing knows.
    std::fs::remove_file(blob_path(&home.data, config)).expect("lose config");
    let path = blob_path(&home.data, layer);
    let mut bytes = std::fs::read(&path).expect("read layer");
    bytes[1000] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt layer");
    let orphan = rng.bytes(777);
    let orphan_path = blob_path(&home.data, &sha256(&orphan));
    std::fs::create_dir_all(orphan_path.parent().expect("shard")).expect("shard");
    std::fs::write(&orphan_path, &orphan).expect("orphan");

    let f = home.fsck();
    assert_eq!(
        f.code,
        Some(1),
        "damage must fail fsck: {:#}\n{}",
        f.report,
        f.stderr
    );
    let r = &f.report;
    assert_eq!(r["missing_blobs"][0]["digest"], config.as_str(), "{r:#}");
    assert_eq!(r["missing_blobs"][0]["repositories"][0], base.repo);
    assert_eq!(r["corrupt_blobs"][0]["digest"], layer.as_str(), "{r:#}");
    assert_eq!(r["orphan_blobs"][0]["digest"], sha256(&orphan), "{r:#}");
    let broken: Vec<&str> = r["broken_manifests"]
        .as_array()
        .expect("broken manifests")
        .iter()
        .map(|b| b["reference"].as_str().expect("reference"))
        .collect();
    assert_eq!(broken.len(), 2, "{r:#}");
    assert!(broken.contains(&config.as_str()) && broken.contains(&layer.as_str()));

    let text = Command::new(BERTH)
        .arg("fsck")
        .arg("--config")
        .arg(&home.config)
        .arg("--data-dir")
        .arg(&home.data)
        .output()
        .expect("fsck text");
    assert_eq!(text.status.code(), Some(1));
    let out = String::from_utf8_lossy(&text.stdout);
    for needle in [
        "MISSING blobs",
        "CORRUPT blobs: 1",
        "BROKEN manifests",
        "orphan blobs",
        "result: DAMAGED (4 problems)",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
    assert!(
        text.stderr.is_empty(),
        "no progress bar without a terminal: {}",
        String::from_utf8_lossy(&text.stderr)
    );

    // Pointed at something that is no data directory, the check itself fails: exit 2.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BERTH)
        .arg("fsck")
        .arg("--data-dir")
        .arg(empty.path())
        .output()
        .expect("fsck elsewhere");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Berth data directory"));
    assert!(
        !empty.path().join("blobs").exists(),
        "fsck must not create a layout"
    );
    drop(server);
}
