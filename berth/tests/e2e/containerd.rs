//! A private containerd daemon (CRI disabled, native snapshotter) in a short `/tmp`
//! directory, and `ctr` commands against it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::{cmd, exec, require_root, short_tempdir, tool, wait_until};

pub struct Containerd {
    child: Child,
    socket: String,
    dir: TempDir,
    /// The network namespace the daemon and every `ctr` run in; `None`: the test's own.
    netns: Option<String>,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_in(None)
    }

    /// A daemon inside network namespace `netns` (`ip netns`), whose `ctr` commands run
    /// there too: with `ctr image pull` the client process resolves and fetches, so it must
    /// reach the network the node has.
    pub fn start_in(netns: Option<&str>) -> Containerd {
        require_root("containerd needs root");
        // A unix socket path must stay under 108 bytes: keep the directory short.
        let dir = short_tempdir("be2e-ctrd.");
        let c = dir.path().display().to_string();
        let socket = format!("{c}/containerd.sock");
        let config = format!(
            r#"version = 2
root = "{c}/root"
state = "{c}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"
"#
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("writing the containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log"))
            .expect("creating the containerd log");
        let mut command = match netns {
            Some(ns) => {
                let mut c = cmd("ip");
                c.args(["netns", "exec", ns]).arg(tool("containerd"));
                c
            }
            None => Command::new(tool("containerd")),
        };
        let child = command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let mut daemon = Containerd {
            child,
            socket,
            dir,
            netns: netns.map(str::to_owned),
        };
        let socket = daemon.socket.clone();
        let ctr = tool("ctr");
        wait_until(Duration::from_secs(20), "containerd to answer", || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("containerd exited ({status}); log:\n{}", daemon.log_text());
            }
            exec(Command::new(&ctr).args(["--address", &socket, "version"]))
                .status
                .success()
        });
        daemon
    }

    /// The daemon's gRPC socket.
    #[allow(dead_code)]
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// `ctr --address <socket> --namespace <namespace>`, with the native snapshotter.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = cmd("ip");
                c.args(["netns", "exec", ns]).arg(tool("ctr"));
                c
            }
            None => cmd("ctr"),
        };
        c.args(["--address", &self.socket, "--namespace", namespace])
            .env("CONTAINERD_SNAPSHOTTER", "native");
        c
    }

    /// A directory for `--hosts-dir` (`certs.d`).
    fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// Writes `certs.d/<host>/hosts.toml` sending `host` to the plain-HTTP `server`.
    pub fn write_hosts_toml(&self, host: &str, server: &str) -> PathBuf {
        let dir = self.hosts_dir().join(host);
        std::fs::create_dir_all(&dir).expect("creating a certs.d entry");
        let text = format!(
            "server = \"http://{server}\"\n\n[host.\"http://{server}\"]\n  \
             capabilities = [\"pull\", \"resolve\", \"push\"]\n"
        );
        std::fs::write(dir.join("hosts.toml"), text).expect("writing hosts.toml");
        self.hosts_dir()
    }

    /// Writes `certs.d/<host>/hosts.toml` with exactly `text`, for setups the plain-HTTP
    /// shorthand above cannot express (a mirror in front of a different `server`).
    #[allow(dead_code)]
    pub fn write_hosts_toml_text(&self, host: &str, text: &str) -> PathBuf {
        let dir = self.hosts_dir().join(host);
        std::fs::create_dir_all(&dir).expect("creating a certs.d entry");
        std::fs::write(dir.join("hosts.toml"), text).expect("writing hosts.toml");
        self.hosts_dir()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM first so containerd shuts down cleanly; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log_text());
        }
    }
}
