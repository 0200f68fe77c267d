//! Node-local sharing across network namespaces: a bridge (in a namespace of its own), a
//! central Berth of two replicas (`berth serve` with `[p2p]`, one PostgreSQL schema, one
//! blob directory) in namespace `c` at two addresses, behind a link limited with `tc tbf`
//! (160 Mbit/s out of the central namespace), and four node namespaces, each with its own
//! containerd (own root, state and socket) and its own `berth node` agent, which writes the
//! node's `hosts.toml`. Every pull is kubelet's: CRI `runtime.v1.ImageService/PullImage`
//! on the node's containerd with the pod's credentials in `AuthConfig` (no server address,
//! as kubelet sends a pull secret's), so the daemon's CRI plugin resolves and fetches through
//! that `hosts.toml` (its `registry.config_path`), as on a cluster. The credentials reach
//! the central Berth (which challenges) and never the agent: containerd 1.6 would offer them
//! to any host of `hosts.toml` that challenged, and the agent never does (its
//! `berth_node_containerd_requests_with_authorization_total` stays 0). Nodes 1 and 3 resolve images at replica A and their agents
//! talk to replica B; nodes 2 and 4 the other way round: every grant, ticket and peer
//! answer crosses replicas. Bytes leaving the central Berth are read from its veth's
//! counters. PostgreSQL listens on the root namespace's loopback: the central namespace
//! reaches it through a veth of its own (not the limited link) and a small proxy thread
//! of the test.
//!
//! Everything created is removed by `Drop` guards, processes before namespaces, also when
//! an assertion fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, cri_pull};
use crate::harness::{
    Layout, cmd, exec, noise, parse_json, require_root, run, tempdir, unique, wait_until,
};

const TOKEN: &str = "netns-bootstrap-token-0123456789";
const CENTRAL_IP: &str = "10.77.0.1";
/// Replica A; replica B listens on the central namespace's second address.
const CENTRAL: &str = "10.77.0.1:5000";
const CENTRAL_B_IP: &str = "10.77.0.2";
const CENTRAL_B: &str = "10.77.0.2:5000";
/// The root namespace's end of the central namespace's path to PostgreSQL.
const PG_ROOT_IP: &str = "10.78.0.1";
const PG_CENTRAL_IP: &str = "10.78.0.2";
const NODES: usize = 4;
/// The central link's rate and each agent's cap on what it serves to peers: slower than
/// the link, so a transfer from a peer lasts long enough to stop that peer in the middle.
const LINK: &str = "160mbit";
const SERVE_MBIT: &str = "40";

/// A network namespace, deleted on drop (with the veths and bridge inside it).
struct Netns(String);

impl Netns {
    fn add(name: String) -> Netns {
        run(cmd("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    #[track_caller]
    fn ip(&self, args: &[&str]) {
        run(cmd("ip").args(["-n", &self.0]).args(args));
    }

    /// `ip netns exec <ns> <program>`
    fn exec(&self, program: &str) -> Command {
        let mut c = cmd("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Bytes sent out of `dev` in this namespace (the kernel's counter).
    fn tx_bytes(&self, dev: &str) -> u64 {
        let out = run(cmd("ip").args(["-n", &self.0, "-s", "-j", "link", "show", dev])).stdout;
        let v = parse_json(&out, "ip -s -j link");
        v[0]["stats64"]["tx"]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx bytes in {v}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started with `ip netns exec` (which execs it: the child is the process
/// itself), killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn signal(&self, sig: &str) {
        run(Command::new("kill").args([sig, &self.child.id().to_string()]));
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL's reaping promptly.
        let _ = self.child.kill();
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!("--- {} ---", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

struct Node {
    name: String,
    ip: String,
    /// The replica this node's kubelet resolves images at (its agent talks to the other).
    registry: &'static str,
    // Field order is drop order: the agent and containerd die before their namespace.
    agent: Option<Proc>,
    containerd: Containerd,
    certs_d: PathBuf,
    ns: Netns,
}

impl Node {
    fn metric(&self, name: &str) -> u64 {
        let out = run(self
            .ns
            .exec("curl")
            .args(["-sSf", "http://127.0.0.1:5050/metrics"]))
        .stdout;
        metric(&String::from_utf8_lossy(&out), name)
    }

    /// kubelet's pull of `reference` with a pull secret's `creds` (`user:password`; none:
    /// anonymous): CRI PullImage on this node's containerd, in a thread of its own.
    fn pull(&self, reference: &str, creds: Option<&str>) -> PullThread {
        let socket = PathBuf::from(self.containerd.socket());
        let reference = reference.to_owned();
        let creds = creds.map(|c| {
            let (u, p) = c.split_once(':').expect("user:password");
            (u.to_owned(), p.to_owned())
        });
        std::thread::spawn(move || {
            let auth = creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            cri_pull(&socket, &reference, auth)
        })
    }

    /// A pull that must succeed; the image reference CRI answered.
    #[track_caller]
    fn pull_ok(&self, reference: &str, creds: Option<&str>) -> String {
        let r = self.pull(reference, creds).join().expect("pull thread");
        r.unwrap_or_else(|e| panic!("{}: CRI pull of {reference} failed: {e}", self.name))
    }

    /// `name:v1` at this node's registry host.
    fn image(&self, name: &str) -> String {
        format!("{}/{name}:v1", self.registry)
    }

    fn holds(&self, blob: &str) -> bool {
        exec(self.containerd.ctr("k8s.io").args(["content", "get", blob]))
            .status
            .success()
    }
}

type PullThread = std::thread::JoinHandle<Result<String, String>>;

/// A veth of the root namespace, deleted on drop.
struct RootLink(String);

impl Drop for RootLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Forwards every connection to `listen` to PostgreSQL on the root namespace's loopback,
/// for as long as the test process lives (the address goes with the veth).
fn pg_proxy(listen: &str, to: String) -> u16 {
    let l = std::net::TcpListener::bind((listen, 0)).expect("proxy listener");
    let port = l.local_addr().expect("proxy address").port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(a) = conn else { return };
            let Ok(b) = std::net::TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (a.try_clone().expect("clone"), b.try_clone().expect("clone")),
                (b, a),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    port
}

struct Topology {
    nodes: Vec<Node>,
    /// Replicas A and B.
    central: Vec<Proc>,
    central_ns: Netns,
    _pg_link: RootLink,
    _switch: Netns,
    work: tempfile::TempDir,
    admin: String,
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

impl Topology {
    fn build() -> Topology {
        require_root("network namespaces, tc and containerd need root");
        let id = format!("bp{}", std::process::id() % 100_000);
        let work = tempdir();
        let switch = Netns::add(format!("{id}-sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let central_ns = Netns::add(format!("{id}-c"));
        attach(&switch, &central_ns, "c", CENTRAL_IP);
        central_ns.ip(&["addr", "add", &format!("{CENTRAL_B_IP}/24"), "dev", "eth0"]);
        // The replicas' way to PostgreSQL, beside the limited link (so the link's counters
        // are the registry's traffic alone).
        let pg_link = RootLink(format!("{id}pg"));
        run(cmd("ip").args([
            "link",
            "add",
            &pg_link.0,
            "type",
            "veth",
            "peer",
            "name",
            "pg0",
            "netns",
            &central_ns.0,
        ]));
        run(cmd("ip").args([
            "addr",
            "add",
            &format!("{PG_ROOT_IP}/24"),
            "dev",
            &pg_link.0,
        ]));
        run(cmd("ip").args(["link", "set", &pg_link.0, "up"]));
        central_ns.ip(&["addr", "add", &format!("{PG_CENTRAL_IP}/24"), "dev", "pg0"]);
        central_ns.ip(&["link", "set", "pg0", "up"]);
        let schema = crate::replicas::schema_url();
        let local = "@127.0.0.1:5432/";
        assert!(
            schema.contains(local),
            "BERTH_TEST_POSTGRES_URL is expected on 127.0.0.1:5432: {schema}"
        );
        let port = pg_proxy(PG_ROOT_IP, "127.0.0.1:5432".into());
        let metadata_url = schema.replacen(local, &format!("@{PG_ROOT_IP}:{port}/"), 1);
        // Everything leaving the central Berth crosses this qdisc.
        run(central_ns.exec("tc").args([
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", LINK, "burst", "64kb", "latency",
            "100ms",
        ]));

        let admin = hex::encode(unique("admin").as_bytes())[..32].to_owned();
        let config = format!(
            "[metadata]\nurl = \"{metadata_url}\"\n\
             [auth]\nenabled = true\nchallenge = \"basic\"\n\
             [p2p]\nenabled = true\noff = [\"team-off\"]\n\
             [catalog]\nenabled = false\n\
             [security]\nallow_insecure_http = true\n"
        );
        std::fs::write(work.path().join("berth.toml"), config).expect("berth.toml");
        // One after the other: the first makes the schema, the admin and the p2p keys.
        let central: Vec<Proc> = [("a", CENTRAL), ("b", CENTRAL_B)]
            .into_iter()
            .map(|(r, listen)| {
                let p = spawn(
                    central_ns
                        .exec(env!("CARGO_BIN_EXE_berth"))
                        .args(["serve", "--listen", listen, "--data-dir"])
                        .arg(work.path().join("data"))
                        .arg("--config")
                        .arg(work.path().join("berth.toml"))
                        .env("BERTH_ADMIN_PASSWORD", &admin)
                        .env("BERTH_P2P_BOOTSTRAP_TOKEN", TOKEN),
                    &work.path().join(format!("central-{r}.log")),
                );
                wait_until(Duration::from_secs(30), "a central replica", || {
                    exec(
                        central_ns
                            .exec("curl")
                            .args(["-sf", &format!("http://{listen}/healthz")]),
                    )
                    .status
                    .success()
                });
                p
            })
            .collect();

        let mut topo = Topology {
            nodes: Vec::new(),
            central,
            central_ns,
            _pg_link: pg_link,
            _switch: switch,
            work,
            admin,
        };
        for i in 1..=NODES {
            let name = format!("node-{i}");
            let ip = format!("10.77.0.{}", 10 + i);
            let ns = Netns::add(format!("{id}-n{i}"));
            attach(&topo._switch, &ns, &format!("n{i}"), &ip);
            let certs_d = topo.work.path().join(format!("{name}-certs.d"));
            let containerd = Containerd::start_in(Some(&ns.0), Some(&certs_d));
            let mut node = Node {
                name,
                ip,
                registry: if i % 2 == 1 { CENTRAL } else { CENTRAL_B },
                agent: None,
                containerd,
                certs_d,
                ns,
            };
            node.agent = Some(topo.agent(&node));
            topo.nodes.push(node);
        }
        topo
    }

    fn agent(&self, node: &Node) -> Proc {
        let log = self.work.path().join(format!("{}.log", node.name));
        let p = spawn(
            node.ns
                .exec(env!("CARGO_BIN_EXE_berth"))
                .args(["node", "--node", &node.name])
                .args([
                    "--central",
                    &format!("http://{}", other_replica(node.registry)),
                ])
                .args(["--listen", "127.0.0.1:5050"])
                .args(["--peer-listen", &format!("{}:5051", node.ip)])
                .args(["--local-address", &node.ip])
                .args(["--serve-mbit", SERVE_MBIT, "--stall-timeout-secs", "3"])
                .arg("--spool")
                .arg(self.work.path().join(format!("{}-spool", node.name)))
                .args(["--registry-host", node.registry])
                .arg("--containerd-certs-d")
                .arg(&node.certs_d)
                .env("BERTH_P2P_BOOTSTRAP_TOKEN", TOKEN),
            &log,
        );
        wait_until(Duration::from_secs(20), "an agent to enroll", || {
            let l = p.log_text();
            l.contains("node agent serving") && l.contains("enrolled")
        });
        p
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.env("BERTH_CONFIG", self.work.path().join("berth.toml"))
            .env("BERTH_DATA_DIR", self.work.path().join("data"))
            .env("BERTH_ADMIN_PASSWORD", &self.admin)
            .env("BERTH_P2P_BOOTSTRAP_TOKEN", TOKEN)
            .env("NO_COLOR", "1");
        c
    }

    /// Builds an image of `layers` incompressible layers of `size` bytes under `tag` and
    /// pushes it (from inside the central namespace: pushes do not cross the link).
    /// Returns the blobs (config first) and their total size.
    fn push(&self, name: &str, layers: usize, size: usize) -> (Vec<String>, u64) {
        let src = Layout::init(
            self.work
                .path()
                .join(format!("src-{}", name.replace('/', "-"))),
        );
        let files: Vec<(String, Vec<u8>)> = (0..layers)
            .map(|i| (format!("layer{i}.bin"), noise(size)))
            .collect();
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        let digest = src.build("v1", "amd64", &files);
        run(self.central_ns.exec("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("admin:{}", self.admin),
            &src.oci("v1"),
            &format!("docker://{CENTRAL}/{name}:v1"),
        ]));
        let blobs = src.image_blobs(&digest);
        let total = blobs.iter().map(|b| src.blob(b).len() as u64).sum();
        (blobs, total)
    }

    /// Bytes out of the central namespace's link, and both replicas' blob bytes
    /// (`berth_sent_bytes_total`, which counts `/v2` blobs and blobs sent to agents).
    fn central_bytes(&self) -> (u64, u64) {
        let sent = [CENTRAL, CENTRAL_B]
            .iter()
            .map(|r| {
                let out = run(self
                    .central_ns
                    .exec("curl")
                    .args(["-sSf", &format!("http://{r}/metrics")]))
                .stdout;
                metric(&String::from_utf8_lossy(&out), "berth_sent_bytes_total")
            })
            .sum();
        (self.central_ns.tx_bytes("eth0"), sent)
    }

    /// Every node pulls `name` at once; returns the wall time and the image references
    /// CRI answered.
    fn pull_all(&self, name: &str, creds: &str) -> (Duration, Vec<String>) {
        let start = Instant::now();
        let pulls: Vec<(String, PullThread)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.pull(&n.image(name), Some(creds))))
            .collect();
        let refs = pulls
            .into_iter()
            .map(|(node, p)| {
                p.join()
                    .expect("pull thread")
                    .unwrap_or_else(|e| panic!("{node}: pull of {name} failed: {e}"))
            })
            .collect();
        (start.elapsed(), refs)
    }

    /// Sum of the central replicas' `berth_http_requests_total` lines holding every one
    /// of `parts`.
    fn central_requests(&self, parts: &[&str]) -> u64 {
        [CENTRAL, CENTRAL_B]
            .iter()
            .map(|r| {
                let out = run(self
                    .central_ns
                    .exec("curl")
                    .args(["-sSf", &format!("http://{r}/metrics")]))
                .stdout;
                String::from_utf8_lossy(&out)
                    .lines()
                    .filter(|l| l.starts_with("berth_http_requests_total{"))
                    .filter(|l| parts.iter().all(|p| l.contains(p)))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            })
            .sum()
    }
}

fn other_replica(registry: &str) -> &'static str {
    if registry == CENTRAL {
        CENTRAL_B
    } else {
        CENTRAL
    }
}

/// Connects `ns` to the bridge through a veth: `port` on the bridge, `eth0` at `ip` in `ns`.
fn attach(switch: &Netns, ns: &Netns, port: &str, ip: &str) {
    switch.ip(&[
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
    ]);
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

fn spawn(c: &mut Command, log: &Path) -> Proc {
    let child = c
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {c:?}: {e}"));
    Proc {
        child,
        log: log.to_owned(),
    }
}

fn run_with_stdin(c: &mut Command, input: &str) {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("stdin write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl -w "%{http_code} %{size_download}"` said 403 with at most an error document:
/// the layers are 1 MiB, so no layer bytes came with it.
#[track_caller]
fn assert_refused(out: &[u8], what: &str) {
    let text = String::from_utf8_lossy(out);
    let (code, size) = text.split_once(' ').unwrap_or_else(|| panic!("{text}"));
    let size: u64 = size.parse().unwrap_or_else(|_| panic!("{text}"));
    assert!(code == "403" && size < 1024, "{what}: {text}");
}

#[test]
fn nodes_in_network_namespaces_share_layers_behind_a_limited_link() {
    let t = Topology::build();
    for tenant in ["team-a", "team-b", "team-off"] {
        run(t.cli().args(["tenant", "add", tenant]));
    }
    let dev_password = hex::encode(unique("dev").as_bytes())[..24].to_owned();
    run_with_stdin(
        t.cli().args(["user", "add", "dev", "--password-stdin"]),
        &format!("{dev_password}\n"),
    );
    run(t
        .cli()
        .args(["tenant", "member", "team-b", "dev", "developer"]));
    let creds = format!("admin:{}", t.admin);
    let outsider = format!("dev:{dev_password}");

    // 1. All nodes pull the same image at once: the central Berth sends it about once.
    let (blobs, size) = t.push("team-a/app", 3, 2 << 20);
    let (link0, app0) = t.central_bytes();
    let manifests =
        |status: &str| t.central_requests(&["route=\"manifest\"", &format!("status=\"{status}\"")]);
    let (challenged0, served0) = (manifests("401"), manifests("200"));
    let (wall, refs) = t.pull_all("team-a/app", &creds);
    let (link1, app1) = t.central_bytes();
    for (n, image_ref) in t.nodes.iter().zip(&refs) {
        for b in &blobs {
            assert!(n.holds(b), "{}: {b} missing in containerd", n.name);
        }
        // CRI answers the image's id, its config's digest, and labels the image it made
        // as its own: the pull went through the plugin, not a client of its own.
        assert_eq!(image_ref, &blobs[0], "{}: PullImage's image_ref", n.name);
        let images = run(n.containerd.ctr("k8s.io").args(["images", "ls"])).stdout;
        let images = String::from_utf8_lossy(&images);
        assert!(
            images.lines().any(|l| l.starts_with(&n.image("team-a/app"))
                && l.contains("io.cri-containerd.image=managed")),
            "{}: no CRI-managed image in\n{images}",
            n.name
        );
    }
    // The credential boundary: the central Berth challenged each node's resolve and
    // served the manifest to the credentials that followed; the agents, which serve the
    // blobs, never got an Authorization header.
    let (challenged, served) = (manifests("401") - challenged0, manifests("200") - served0);
    eprintln!("manifest requests at central: {challenged} challenged, {served} served");
    assert!(
        challenged >= NODES as u64 && served >= NODES as u64,
        "each node's manifest request was challenged and then authenticated: \
         {challenged} 401, {served} 200"
    );
    for n in &t.nodes {
        assert_eq!(
            n.metric("berth_node_containerd_requests_with_authorization_total"),
            0,
            "{}: containerd sent its agent a credential",
            n.name
        );
        assert!(
            n.metric("berth_node_blobs_served_total") >= blobs.len() as u64 - 1,
            "{}: the agent served containerd's blob requests",
            n.name
        );
    }
    let (link, app) = (link1 - link0, app1 - app0);
    eprintln!(
        "all {NODES} at once: {size} image bytes, {link} bytes left central's link ({:.2}x), \
         {app} blob bytes sent ({:.2}x), {wall:?}",
        link as f64 / size as f64,
        app as f64 / size as f64
    );
    assert!(
        link as f64 <= 1.2 * size as f64,
        "{link} bytes left the central link for a {size}-byte image"
    );
    assert!(
        app as f64 <= 1.2 * size as f64,
        "the central Berth sent {app} blob bytes for a {size}-byte image"
    );
    let from_peers: u64 = t
        .nodes
        .iter()
        .map(|n| n.metric("berth_node_bytes_from_peers_total"))
        .sum();
    assert!(
        from_peers >= (NODES as u64 - 1) * size * 8 / 10,
        "{from_peers} bytes came from peers"
    );

    // 2. Sharing off for a tenant: every node's blobs come from the central Berth.
    let (_, off_size) = t.push("team-off/app", 3, 2 << 20);
    let peers0: u64 = t
        .nodes
        .iter()
        .map(|n| n.metric("berth_node_bytes_from_peers_total"))
        .sum();
    let (link0, app0) = t.central_bytes();
    t.pull_all("team-off/app", &creds);
    let (link1, app1) = t.central_bytes();
    let peers1: u64 = t
        .nodes
        .iter()
        .map(|n| n.metric("berth_node_bytes_from_peers_total"))
        .sum();
    eprintln!(
        "sharing off: {} bytes left central's link ({:.2}x), {} blob bytes",
        link1 - link0,
        (link1 - link0) as f64 / off_size as f64,
        app1 - app0
    );
    assert!(
        app1 - app0 >= NODES as u64 * off_size,
        "central sent {} blob bytes, not N times {off_size}",
        app1 - app0
    );
    assert!(link1 - link0 >= NODES as u64 * off_size);
    assert_eq!(peers1, peers0, "no bytes from peers with sharing off");

    // 3. Anonymous and wrong-tenant pulls fail, and their agents get no layer bytes.
    let (private, _) = t.push("team-a/private", 2, 1 << 20);
    t.nodes[0].pull_ok(&t.nodes[0].image("team-a/private"), Some(&creds));
    let before: Vec<(u64, u64)> = t.nodes[1..3]
        .iter()
        .map(|n| {
            (
                n.metric("berth_node_bytes_from_peers_total"),
                n.metric("berth_node_bytes_from_central_total"),
            )
        })
        .collect();
    let served = t.nodes[0].metric("berth_node_bytes_to_peers_total");
    let anon = t.nodes[1].pull(&t.nodes[1].image("team-a/private"), None);
    let anon = anon.join().expect("pull thread");
    assert!(anon.is_err(), "an anonymous pull succeeded: {anon:?}");
    let wrong = t.nodes[2].pull(&t.nodes[2].image("team-a/private"), Some(&outsider));
    let wrong = wrong.join().expect("pull thread");
    assert!(wrong.is_err(), "a wrong-tenant pull succeeded: {wrong:?}");
    for (n, (p, c)) in t.nodes[1..3].iter().zip(before) {
        assert_eq!(
            n.metric("berth_node_bytes_from_peers_total"),
            p,
            "{}",
            n.name
        );
        assert_eq!(
            n.metric("berth_node_bytes_from_central_total"),
            c,
            "{}",
            n.name
        );
        for b in &private {
            assert!(!n.holds(b), "{} holds {b}", n.name);
            // The agent itself answers 403 and fetches nothing.
            let out = run(n.ns.exec("curl").args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                &format!("http://127.0.0.1:5050/v2/team-a/private/blobs/{b}"),
            ]))
            .stdout;
            assert_refused(&out, &format!("{}'s agent", n.name));
            // The holder's peer port speaks only mutual TLS with certificates from the
            // p2p CA: plain HTTP, and TLS without such a certificate, get no answer and
            // no bytes.
            for scheme in ["http", "https"] {
                let out =
                    n.ns.exec("curl")
                        .args([
                            "-s",
                            "-k",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code} %{size_download}",
                            &format!("{scheme}://{}:5051/p2p/v1/blobs/{b}", t.nodes[0].ip),
                        ])
                        .output()
                        .expect("curl");
                let text = String::from_utf8_lossy(&out.stdout);
                assert_eq!(text, "000 0", "node-1's peer port over {scheme}: {text}");
            }
        }
    }
    assert_eq!(
        t.nodes[0].metric("berth_node_bytes_to_peers_total"),
        served,
        "node-1 served nobody"
    );

    // 4. A peer stopped (SIGSTOP) in the middle of serving, and one killed: the pulls that
    // were fetching from them still finish (from another peer or the central Berth).
    let (big, big_size) = t.push("team-a/big", 1, 24 << 20);
    t.nodes[0].pull_ok(&t.nodes[0].image("team-a/big"), Some(&creds));
    let p2 = t.nodes[1].metric("berth_node_bytes_from_peers_total");
    let stopped = t.nodes[0].agent.as_ref().expect("agent");
    let pull2 = t.nodes[1].pull(&t.nodes[1].image("team-a/big"), Some(&creds));
    // node-2 reads from node-1 at SERVE_MBIT; stop node-1 once bytes flow.
    wait_until(
        Duration::from_secs(20),
        "node-2 to get bytes from node-1",
        || t.nodes[1].metric("berth_node_bytes_from_peers_total") > p2 + (1 << 20),
    );
    stopped.signal("-STOP");
    let started = Instant::now();
    let out = pull2.join().expect("pull thread");
    assert!(out.is_ok(), "node-2's pull with its peer stopped: {out:?}");
    eprintln!(
        "node-2 finished {:?} after its peer stopped",
        started.elapsed()
    );
    assert!(
        t.nodes[1].metric("berth_node_peers_dropped_total") >= 1,
        "node-2 dropped the stopped peer"
    );
    // node-3 now has node-1 (stopped) and node-2 as sources; node-2 is killed mid-way.
    let p3 = t.nodes[2].metric("berth_node_bytes_from_peers_total");
    let pull3 = t.nodes[2].pull(&t.nodes[2].image("team-a/big"), Some(&creds));
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.nodes[2].metric("berth_node_bytes_from_peers_total") < p3 + (1 << 20)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    t.nodes[1].agent.as_ref().expect("agent").signal("-KILL");
    let out = pull3.join().expect("pull thread");
    assert!(
        out.is_ok(),
        "node-3's pull with one peer stopped and one killed: {out:?}"
    );
    for b in &big {
        assert!(t.nodes[2].holds(b), "node-3 lacks {b}");
    }
    eprintln!("stop/kill case: {big_size}-byte image finished on node-2 and node-3");
    stopped.signal("-CONT");

    // 5. Both central replicas die once every node resolved the manifest: the layers
    // containerd has not asked for yet are fetched with the tickets the agents learned
    // from their grants, from the node that holds them. One layer at a time
    // (the CRI plugin's `max_concurrent_downloads = 1`), so most are asked for after the
    // replicas are gone.
    let mut t = t;
    let killed = t.nodes[1].agent.take();
    drop(killed);
    t.nodes[1].agent = Some(t.agent(&t.nodes[1]));
    // The restarted agent learns its node's earlier grants first, in one answer.
    wait_until(Duration::from_secs(20), "node-2's earlier grants", || {
        t.nodes[1].metric("berth_node_grants_received_total") > 0
    });
    let (late, _) = t.push("team-a/late", 4, 4 << 20);
    t.nodes[0].pull_ok(&t.nodes[0].image("team-a/late"), Some(&creds));
    let served = |n: &Node| n.metric("berth_node_blobs_served_total");
    let base: Vec<(u64, u64, u64)> = t.nodes[1..]
        .iter()
        .map(|n| {
            (
                n.metric("berth_node_bytes_from_peers_total"),
                n.metric("berth_node_grants_received_total"),
                served(n),
            )
        })
        .collect();
    let pulls: Vec<PullThread> = t.nodes[1..]
        .iter()
        .map(|n| n.pull(&n.image("team-a/late"), Some(&creds)))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "every node to resolve the manifest, hold its grants and start a transfer",
        || {
            t.nodes[1..].iter().zip(&base).all(|(n, (p, g, _))| {
                n.metric("berth_node_grants_received_total") >= g + late.len() as u64
                    && n.metric("berth_node_bytes_from_peers_total") > p + (256 << 10)
            })
        },
    );
    for c in &t.central {
        c.signal("-KILL");
    }
    let served_at_kill: Vec<u64> = t.nodes[1..].iter().map(served).collect();
    let peer_bytes = |t: &Topology| -> u64 {
        t.nodes[1..]
            .iter()
            .map(|n| n.metric("berth_node_bytes_from_peers_total"))
            .sum()
    };
    let at_kill = peer_bytes(&t);
    for (n, p) in t.nodes[1..].iter().zip(pulls) {
        let out = p.join().expect("pull thread");
        assert!(
            out.is_ok(),
            "{}: the pull did not finish without the central Berth: {out:?}",
            n.name
        );
        for b in &late {
            assert!(n.holds(b), "{} lacks {b}", n.name);
        }
    }
    let after = peer_bytes(&t);
    // One blob at a time: what a node had not finished at the kill, but the one in
    // flight, containerd asked for with the replicas gone (tickets from grants only).
    let asked_after: u64 = base
        .iter()
        .zip(&served_at_kill)
        .map(|((_, _, before), at)| (late.len() as u64 - (at - before)).saturating_sub(1))
        .sum();
    eprintln!(
        "central killed: {} bytes came from peers afterwards; {asked_after} blobs were asked \
         for after the replicas were gone",
        after - at_kill
    );
    // Typically 4 to 6 of the 15; one suffices: its ticket can only come from a grant.
    assert!(
        asked_after >= 1,
        "no blob was asked for without the central Berth: nothing proved"
    );
    drop(t);
}
