//! Berth's own container image, as `scripts/oci-image.py` writes it: reproducible, run as
//! its non-root user with nothing but the libraries it carries, on a read-only root
//! filesystem (as the Kubernetes manifests run it), and carried through Berth to
//! containerd, which pulls and runs it.
//!
//! The image packages this test run's `berth` binary; the Debian packages come from
//! `$BERTH_TOOLS_PREFIX/image-debs`, fetched by `scripts/install-test-tools.sh` (these
//! tests never download).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::containerd::Containerd;
use crate::harness::{
    Berth, Layout, cmd, exec, free_port, http, parse_json, require_root, run, run_stdout,
    short_tempdir, skopeo_copy, tempdir, tool, unique, wait_until,
};

const SOURCE: &str = "https://example.invalid/berth";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const UID: u32 = berth_k8s::RUN_AS_UID;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/oci-image.py")
}

fn debs() -> PathBuf {
    let prefix =
        std::env::var_os("BERTH_TOOLS_PREFIX").unwrap_or_else(|| "/opt/berth-tools".into());
    PathBuf::from(prefix).join("image-debs")
}

/// Runs the image script on `binary`, writing the layout `out` from the working directory
/// `cwd` under `umask`, and returns the manifest digest it prints.
#[track_caller]
fn build_image(binary: &Path, out: &Path, cwd: &Path, umask: &str, epoch: Option<&str>) -> String {
    let mut c = cmd("sh");
    c.current_dir(cwd)
        .args(["-c", &format!("umask {umask} && exec \"$@\""), "sh"])
        .arg(tool("python3"))
        .arg(script())
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(out)
        .arg("--debs")
        .arg(debs())
        .args(["--offline", "--source", SOURCE]);
    if let Some(e) = epoch {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    let stdout = run_stdout(&mut c);
    let digest = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(digest.starts_with("sha256:"), "no digest printed: {stdout}");
    digest
}

/// A tool of the base system that may live in an sbin directory root's PATH can lack.
fn system_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| tool(name))
}

/// One image of this run's binary for the tests that only use it, built once per run
/// in Cargo's directory for test scratch space.
fn shared_image() -> &'static (Layout, String) {
    static IMAGE: OnceLock<(Layout, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-berth-image");
        let digest = build_image(
            Path::new(env!("CARGO_BIN_EXE_berth")),
            &out,
            Path::new(env!("CARGO_MANIFEST_DIR")),
            "022",
            None,
        );
        (Layout::at(out), digest)
    })
}

/// The image config of the manifest `digest` in `layout`.
fn image_config(layout: &Layout, digest: &str) -> Value {
    let manifest = layout.json_blob(digest);
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("a config digest")
        .to_owned();
    layout.json_blob(&config)
}

#[test]
fn berth_image_builds_reproducibly_from_one_binary_in_two_directories() {
    let work = tempdir();
    // The same bytes under different names, paths and modification times.
    let a = work.path().join("a");
    let b = work.path().join("elsewhere/b");
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let bin_a = a.join("berth");
    let bin_b = b.join("berth-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), &bin_a).expect("copying the binary");
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), &bin_b).expect("copying the binary");
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&bin_b));

    let epoch = "1700000000";
    let first = build_image(&bin_a, &a.join("image"), &a, "022", Some(epoch));
    let second = build_image(&bin_b, &b.join("out/layout"), &b, "077", Some(epoch));
    assert_eq!(
        first, second,
        "two builds of one binary gave different images"
    );

    let la = Layout::at(a.join("image"));
    let lb = Layout::at(b.join("out/layout"));
    for file in ["index.json", "oci-layout"] {
        assert_eq!(
            std::fs::read(la.dir.join(file)).expect("reading"),
            std::fs::read(lb.dir.join(file)).expect("reading"),
            "{file} differs"
        );
    }
    assert_eq!(la.digest(VERSION), first, "index.json names the version");
    let mut blobs = vec![first.clone()];
    blobs.extend(la.image_blobs(&first));
    for blob in &blobs {
        // Layout::blob checks that each file hashes to its name.
        assert_eq!(la.blob(blob), lb.blob(blob), "{blob} differs");
    }
    assert_eq!(blobs.len(), 4, "a config and two layers: {blobs:?}");

    // Labels, and the timestamp of every entry, come from SOURCE_DATE_EPOCH.
    let config = image_config(&la, &first);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.source"], SOURCE);
    assert_eq!(
        labels["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .expect("a revision label");
    assert!(
        revision.len() == 40 && revision.bytes().all(|c| c.is_ascii_hexdigit()),
        "revision {revision:?}"
    );
    assert_eq!(la.json_blob(&first)["annotations"], *labels);
    for layer in &blobs[2..] {
        let listing = run_stdout(
            cmd("tar")
                .env("TZ", "UTC")
                .args(["-tvzf"])
                .arg(
                    la.dir
                        .join("blobs/sha256")
                        .join(layer.trim_start_matches("sha256:")),
                )
                .args(["--numeric-owner", "--full-time"]),
        );
        for line in listing.lines() {
            assert!(line.contains(" 2023-11-14 22:13:20 "), "{layer}: {line}");
            assert!(
                line.contains(" 0/0 ") || line.contains(&format!(" {UID}/{UID} ")),
                "{layer}: owner of {line}"
            );
        }
    }
}

#[test]
fn berth_image_runs_as_its_non_root_user_with_only_its_own_libraries() {
    require_root("unpacking an image keeps owners; chroot and mounts need root");
    let (layout, digest) = shared_image();
    let config = image_config(layout, digest);
    assert_eq!(config["config"]["User"], format!("{UID}:{UID}"));
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/berth");

    let work = short_tempdir("be2e-img.");
    let bundle = work.path().join("bundle");
    run(cmd("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{VERSION}", layout.dir.display()))
        .arg(&bundle));
    let runtime = parse_json(
        &std::fs::read(bundle.join("config.json")).expect("reading config.json"),
        "the runtime config",
    );
    let (uid, gid) = (
        runtime["process"]["user"]["uid"].as_u64().expect("a uid"),
        runtime["process"]["user"]["gid"].as_u64().expect("a gid"),
    );
    assert_eq!((uid, gid), (u64::from(UID), u64::from(UID)));
    let rootfs = bundle.join("rootfs");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd.contains(&format!("berth:x:{UID}:{UID}:")),
        "the user is named in /etc/passwd:\n{passwd}"
    );
    // Nothing but Berth: no shell to exec into, no package manager.
    for absent in ["bin/sh", "usr/bin", "sbin", "usr/sbin"] {
        assert!(!rootfs.join(absent).exists(), "/{absent} is in the image");
    }
    assert!(
        std::fs::metadata(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .expect("the CA bundle")
            .len()
            > 100_000
    );

    // The binary starts with the image's own loader and libraries, as the image's user,
    // with an empty environment.
    let version = run_stdout(
        Command::new(tool("env"))
            .arg("-i")
            .arg(system_tool("chroot"))
            .arg(format!("--userspec={uid}:{gid}"))
            .arg(&rootfs)
            .args(["/usr/local/bin/berth", "--version"]),
    );
    assert_eq!(version.trim(), format!("berth {VERSION}"));

    // Serving from a read-only root, writing only to the data directory and /tmp (the
    // volumes the Kubernetes manifests mount), as the image's user.
    let port = free_port();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir");
    std::fs::write(
        conf.join("berth.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[auth]\nenabled = true\n",
            berth_k8s::DATA_DIR
        ),
    )
    .expect("writing berth.toml");
    let server = ReadOnlyServer::start(&rootfs, &conf, port, work.path());
    let addr = format!("127.0.0.1:{port}");
    let v2 = http(&addr, "GET", "/v2/", &[]).expect("GET /v2/");
    assert_eq!(v2.status, 401, "authentication is on: {v2:?}");

    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>();
    assert_eq!(
        uids,
        vec![UID.to_string(); 4],
        "real, effective, saved, fs uid"
    );

    // The generated admin password went to the data directory (mode 0600, the user's).
    let data = PathBuf::from(format!(
        "/proc/{}/root{}",
        server.pid(),
        berth_k8s::DATA_DIR
    ));
    let password_file = data.join("admin-password");
    let password = std::fs::read_to_string(&password_file).expect("the admin password file");
    let meta = std::fs::metadata(&password_file).expect("its metadata");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (UID, 0o600));

    // A push lands in the data directory.
    let src = Layout::init(work.path().join("src"));
    src.build("v1", "amd64", &[("f.txt", unique("read-only root"))]);
    skopeo_copy(
        &["--dest-creds", &format!("admin:{}", password.trim())],
        &src.oci("v1"),
        &format!("docker://{addr}/e2e/pushed:v1"),
    );
    let blobs = data.join("blobs/sha256");
    let stored = std::fs::read_dir(&blobs)
        .unwrap_or_else(|e| panic!("reading {}: {e}", blobs.display()))
        .count();
    assert!(stored > 0, "no blob under {}", blobs.display());
    drop(server);
}

/// `berth serve` from an unpacked image in a mount namespace of its own: the root
/// filesystem bound read-only, tmpfs on /tmp and on the data directory (owned by the
/// image's user, as `fsGroup` makes the pod's volume), the configuration bound read-only
/// on /etc/berth; run with `chroot --userspec` as the image's user. Killed on drop.
struct ReadOnlyServer {
    child: Child,
    log: PathBuf,
}

const READ_ONLY_RUN: &str = r#"set -eu
root=$1 conf=$2 uid=$3 data=$4
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o "uid=$uid,gid=$uid,mode=0750" tmpfs "$root$data"
mount --bind "$conf" "$root/etc/berth"
mount -o remount,bind,ro "$root/etc/berth"
exec chroot --userspec="$uid:$uid" "$root" /usr/local/bin/berth serve --config /etc/berth/berth.toml
"#;

impl ReadOnlyServer {
    fn start(rootfs: &Path, conf: &Path, port: u16, dir: &Path) -> ReadOnlyServer {
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log).expect("creating the log");
        // unshare and sh exec into chroot, which execs berth: the child's pid is berth's.
        let child = Command::new(tool("unshare"))
            .args(["--mount", "--propagation", "private"])
            .arg(tool("sh"))
            .args(["-c", READ_ONLY_RUN, "sh"])
            .arg(rootfs)
            .arg(conf)
            .arg(UID.to_string())
            .arg(berth_k8s::DATA_DIR)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting unshare");
        let mut server = ReadOnlyServer { child, log };
        let addr = format!("127.0.0.1:{port}");
        wait_until(
            Duration::from_secs(20),
            "berth in the image to serve",
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("berth exited ({status}):\n{}", server.log_text());
                }
                http(&addr, "GET", "/healthz", &[]).is_ok_and(|r| r.status == 200)
            },
        );
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ReadOnlyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- berth in the image ---\n{}", self.log_text());
        }
    }
}

#[test]
fn berth_image_pushed_to_berth_is_pulled_and_run_by_containerd() {
    let (layout, digest) = shared_image();
    let berth = Berth::start();
    let name = format!("berth/berth:{VERSION}");
    skopeo_copy(&[], &layout.oci(VERSION), &berth.docker(&name));

    let daemon = Containerd::start();
    let reference = berth.image(&name);
    run(daemon
        .ctr("image")
        .args(["image", "pull", "--plain-http", &reference]));
    let ls = run_stdout(daemon.ctr("image").args(["image", "ls"]));
    let listed = ls
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&reference.as_str()))
        .and_then(|cols| cols.get(2).map(|d| (*d).to_owned()))
        .unwrap_or_else(|| panic!("{reference} missing from `ctr image ls`:\n{ls}"));
    assert_eq!(&listed, digest, "containerd pulled another image");
    for blob in layout.image_blobs(digest) {
        let bytes = run(daemon.ctr("image").args(["content", "get", &blob])).stdout;
        assert_eq!(
            bytes,
            layout.blob(&blob),
            "{blob} differs from the layout's"
        );
    }

    // containerd (runc) runs what it pulled: the image's user, a read-only root, tmpfs
    // volumes where Berth writes, the host's network so the test reaches it.
    let work = short_tempdir("be2e-ctrrun.");
    let port = free_port();
    std::fs::write(
        work.path().join("berth.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[auth]\nenabled = true\n",
            berth_k8s::DATA_DIR
        ),
    )
    .expect("writing berth.toml");
    let task = format!("berth-{}", std::process::id());
    let running = CtrRun {
        child: daemon
            .ctr("image")
            .args(["run", "--rm", "--net-host", "--read-only", "--mount"])
            .arg("type=tmpfs,src=tmpfs,dst=/tmp,options=rw:mode=1777")
            .arg("--mount")
            .arg(format!(
                "type=tmpfs,src=tmpfs,dst={},options=rw:uid={UID}:gid={UID}:mode=0750",
                berth_k8s::DATA_DIR
            ))
            .arg("--mount")
            .arg(format!(
                "type=bind,src={},dst=/etc/berth,options=rbind:ro",
                work.path().display()
            ))
            .args([&reference, &task])
            .args([
                "/usr/local/bin/berth",
                "serve",
                "--config",
                "/etc/berth/berth.toml",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ctr run"),
        daemon: &daemon,
        task: task.clone(),
    };
    let addr = format!("127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(30),
        "berth in containerd to serve",
        || http(&addr, "GET", "/healthz", &[]).is_ok_and(|r| r.status == 200),
    );
    let v2 = http(&addr, "GET", "/v2/", &[]).expect("GET /v2/");
    assert_eq!(v2.status, 401, "{v2:?}");
    let tasks = run_stdout(daemon.ctr("image").args(["task", "ls"]));
    let pid = tasks
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&task.as_str()))
        .and_then(|cols| cols.get(1).map(|p| (*p).to_owned()))
        .unwrap_or_else(|| panic!("task {task} missing:\n{tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("task status");
    assert!(
        status.contains(&format!("\nUid:\t{UID}\t{UID}\t{UID}\t{UID}\n")),
        "the container runs as {UID}:\n{status}"
    );
    drop(running);
}

/// A `ctr run` in the foreground; on drop its task is killed and the run waited for.
struct CtrRun<'a> {
    child: Child,
    daemon: &'a Containerd,
    task: String,
}

impl Drop for CtrRun<'_> {
    fn drop(&mut self) {
        let _ = exec(
            self.daemon
                .ctr("image")
                .args(["task", "kill", "--signal", "SIGKILL", &self.task]),
        );
        let _ = self.child.wait();
    }
}
