//! A private containerd daemon (native snapshotter) in a short `/tmp` directory, and `ctr`
//! commands against it. The CRI plugin is off unless a test asks for it; then [`cri_pull`]
//! is kubelet's image pull: `runtime.v1.ImageService/PullImage`
//! with the pod's credentials in `AuthConfig`, over the same socket.

use std::path::{Path, PathBuf};
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
        Containerd::start_in(None, None)
    }

    /// A daemon inside network namespace `netns` (`ip netns`), whose `ctr` commands run
    /// there too: with `ctr image pull` the client process resolves and fetches, so it must
    /// reach the network the node has. With `cri_hosts_dir`, the CRI plugin runs too, with
    /// `[plugins."io.containerd.grpc.v1.cri".registry] config_path` set to it as the README
    /// tells operators; its pulls are fetched by the daemon itself.
    pub fn start_in(netns: Option<&str>, cri_hosts_dir: Option<&Path>) -> Containerd {
        require_root("containerd needs root");
        // A unix socket path must stay under 108 bytes: keep the directory short.
        let dir = short_tempdir("be2e-ctrd.");
        let c = dir.path().display().to_string();
        let socket = format!("{c}/containerd.sock");
        let (cri_off, cri) = match cri_hosts_dir {
            None => ("\n  \"io.containerd.grpc.v1.cri\",", String::new()),
            // The plugin's own root and state are under the daemon's. PullImage needs no
            // sandbox: CNI is left unconfigured (the plugin only reports its network not
            // ready) and the stream server listens on an ephemeral port of the node's
            // loopback. One download at a time, as `ctr --max-concurrent-downloads 1` did:
            // the "central killed after resolve" case needs most layers asked for late.
            Some(hosts) => (
                "",
                format!(
                    r#"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_concurrent_downloads = 1
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{c}/cni/bin"
    conf_dir = "{c}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{}"
"#,
                    hosts.display()
                ),
            ),
        };
        let config = format!(
            r#"version = 2
root = "{c}/root"
state = "{c}/state"
disabled_plugins = [{cri_off}
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
{cri}"#
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

/// `runtime.v1.ImageService/PullImage` on `socket`, blocking (the tests are threads). The
/// messages, by the field numbers of cri-api's `pkg/apis/runtime/v1/api.proto`:
/// `PullImageRequest { ImageSpec image = 1; AuthConfig auth = 2; PodSandboxConfig
/// sandbox_config = 3; }`, `ImageSpec { string image = 1; }`, `AuthConfig { string
/// username = 1; string password = 2; string auth = 3; string server_address = 4; string
/// identity_token = 5; string registry_token = 6; }`, `PullImageResponse { string
/// image_ref = 1; }`.
///
/// `server_address` stays empty, as in the `AuthConfig` kubelet makes of a pull secret.
/// containerd 1.6 then offers the credentials to whichever host of the image's
/// `hosts.toml` challenges for them (a mirror too); only a set `server_address` restricts
/// them to that host (and 1.6.20 refuses one without a scheme, such as `10.77.0.1:5000`).
pub fn cri_pull(socket: &Path, image: &str, auth: Option<(&str, &str)>) -> Result<String, String> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        // Every field here is length-delimited (wire type 2) and under 2^14 bytes.
        assert!(bytes.len() < 1 << 14);
        out.push((number << 3) | 2);
        if bytes.len() >= 0x80 {
            out.push((bytes.len() as u8 & 0x7f) | 0x80);
            out.push((bytes.len() >> 7) as u8);
        } else {
            out.push(bytes.len() as u8);
        }
        out.extend_from_slice(bytes);
    }
    let mut spec = Vec::new();
    field(&mut spec, 1, image.as_bytes());
    let mut request = Vec::new();
    field(&mut request, 1, &spec);
    if let Some((user, password)) = auth {
        let mut a = Vec::new();
        field(&mut a, 1, user.as_bytes());
        field(&mut a, 2, password.as_bytes());
        field(&mut request, 2, &a);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the CRI call");
    let answer = runtime
        .block_on(berth_server::containerd::unary(
            socket,
            "k8s.io",
            "/runtime.v1.ImageService/PullImage",
            request,
            Duration::from_secs(120),
        ))
        .map_err(|e| e.to_string())?;
    // One field: 0x0a, a one-byte length (a `sha256:` reference is 71 bytes), the text.
    match &answer[..] {
        [0x0a, n, rest @ ..] if usize::from(*n) == rest.len() => {
            Ok(String::from_utf8_lossy(rest).into_owned())
        }
        other => Err(format!("unexpected PullImageResponse {other:?}")),
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
