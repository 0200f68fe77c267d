//! Node-local sharing with the real binaries: `berth serve` with `[p2p]`, two `berth node`
//! agents (node A at 127.0.0.1, node B at 127.0.0.2), and containerd on node A pulling a
//! private image with a user's credentials through the `hosts.toml` its agent wrote:
//! manifests at the registry, blobs through the agent. Node B's blobs then come from
//! node A's agent, and the registry sends each blob once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::containerd::Containerd;
use crate::harness::{
    Berth, Layout, cmd, free_port, run, run_stdout, skopeo_copy, tempdir, unique, wait_until,
};

const TOKEN: &str = "e2e-bootstrap-token-0123456789";

struct Agent {
    child: Child,
    mirror: String,
    log: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(berth: &Berth, node: &str, ip: &str, dir: &std::path::Path) -> Agent {
    agent_with(berth, node, ip, dir, node, &[])
}

/// An agent whose spool, log and `certs.d` are named `run` (a restarted agent gets an
/// empty spool with a new `run`), with `extra` arguments.
fn agent_with(
    berth: &Berth,
    node: &str,
    ip: &str,
    dir: &std::path::Path,
    run: &str,
    extra: &[&str],
) -> Agent {
    let mirror = format!("{ip}:{}", free_port());
    let log = dir.join(format!("{run}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["node", "--node", node])
        .args(["--central", &format!("http://{}", berth.addr())])
        .args(["--listen", &mirror])
        .args(["--peer-listen", &format!("{ip}:{}", free_port())])
        .args(["--local-address", ip])
        .arg("--spool")
        .arg(dir.join(format!("{run}-spool")))
        .args(["--registry-host", berth.addr()])
        .arg("--containerd-certs-d")
        .arg(dir.join(format!("{run}-certs.d")))
        .args(extra)
        .env("BERTH_P2P_BOOTSTRAP_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("agent log"))
        .spawn()
        .expect("starting berth node");
    let a = Agent { child, mirror, log };
    wait_until(Duration::from_secs(20), "the agent to enroll", || {
        std::fs::read_to_string(&a.log).is_ok_and(|l| l.contains("node agent serving"))
            && std::fs::read_to_string(&a.log).is_ok_and(|l| l.contains("enrolled"))
    });
    a
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn curl(args: &[&str]) -> Vec<u8> {
    run(cmd("curl").args(["-sSf"]).args(args)).stdout
}

#[test]
fn containerd_pulls_blobs_through_the_node_agent_and_the_next_node_gets_them_from_a_peer() {
    let admin = hex::encode(unique("admin").as_bytes())[..32].to_owned();
    let berth = Berth::start_with(
        "[auth]\nenabled = true\nchallenge = \"basic\"\n[p2p]\nenabled = true\n",
        &[
            ("BERTH_ADMIN_PASSWORD", &admin),
            ("BERTH_P2P_BOOTSTRAP_TOKEN", TOKEN),
        ],
    );
    run(berth.cli().args(["tenant", "add", "team-a"]));
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let big: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let digest = src.build(
        "v1",
        "amd64",
        &[("big.bin", big), ("id.txt", unique("p2p").into_bytes())],
    );
    let creds = format!("admin:{admin}");
    skopeo_copy(
        &["--dest-creds", &creds],
        &src.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    let blobs = src.image_blobs(&digest);
    let total: u64 = blobs.iter().map(|b| src.blob(b).len() as u64).sum();

    let a = agent(&berth, "node-a", "127.0.0.1", work.path());
    let b = agent(&berth, "node-b", "127.0.0.2", work.path());
    let hosts = work.path().join("node-a-certs.d");
    assert!(hosts.join(berth.addr()).join("hosts.toml").exists());

    // Node A: containerd resolves at the registry with the credentials and fetches the
    // blobs through the agent.
    let daemon = Containerd::start();
    let reference = berth.image("team-a/app:v1");
    run(daemon
        .ctr("p2p")
        .args(["image", "pull", "--user", &creds, "--hosts-dir"])
        .arg(&hosts)
        .arg(&reference));
    for blob in &blobs {
        let bytes = run(daemon.ctr("p2p").args(["content", "get", blob])).stdout;
        assert!(bytes == src.blob(blob), "{blob} in containerd");
    }
    let ma = String::from_utf8(curl(&[&format!("http://{}/metrics", a.mirror)])).expect("utf-8");
    assert_eq!(
        metric(&ma, "berth_node_bytes_from_central_total"),
        total,
        "{ma}"
    );

    // Node B: its kubelet resolves the manifest from node B's address, then containerd
    // would ask node B's agent for each blob.
    curl(&[
        "--interface",
        "127.0.0.2",
        "-u",
        &creds,
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        "-o",
        "/dev/null",
        &format!("http://{}/v2/team-a/app/manifests/{digest}", berth.addr()),
    ]);
    for blob in &blobs {
        let bytes = curl(&[
            "--interface",
            "127.0.0.2",
            &format!("http://{}/v2/team-a/app/blobs/{blob}", b.mirror),
        ]);
        assert!(bytes == src.blob(blob), "{blob} through node B's agent");
    }
    let mb = String::from_utf8(curl(&[&format!("http://{}/metrics", b.mirror)])).expect("utf-8");
    assert_eq!(
        metric(&mb, "berth_node_bytes_from_peers_total"),
        total,
        "{mb}"
    );
    assert_eq!(
        metric(&mb, "berth_node_bytes_from_central_total"),
        0,
        "{mb}"
    );
    let central =
        String::from_utf8(curl(&[&format!("http://{}/metrics", berth.addr())])).expect("utf-8");
    assert_eq!(
        metric(&central, "berth_p2p_bytes_to_agents_total"),
        total,
        "the registry sent each blob once"
    );

    let status = run_stdout(
        berth
            .cli()
            .args([
                "p2p",
                "status",
                "--url",
                &format!("http://{}", berth.addr()),
            ])
            .args(["--user", "admin", "--password", &admin]),
    );
    for blob in &blobs {
        let line = status
            .lines()
            .find(|l| l.contains(blob.as_str()))
            .unwrap_or_else(|| panic!("{blob} not in:\n{status}"));
        assert!(
            line.contains("node-a") && line.contains("node-b"),
            "{status}"
        );
    }
}

fn metrics_of(a: &Agent) -> String {
    String::from_utf8(curl(&[&format!("http://{}/metrics", a.mirror)])).expect("utf-8")
}

/// Node `ip`'s kubelet resolves the manifest, then its containerd asks its agent for
/// each blob; every blob must arrive whole.
fn pull_through(berth: &Berth, ip: &str, a: &Agent, creds: &str, digest: &str, src: &Layout) {
    curl(&[
        "--interface",
        ip,
        "-u",
        creds,
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        "-o",
        "/dev/null",
        &format!("http://{}/v2/team-a/app/manifests/{digest}", berth.addr()),
    ]);
    for blob in src.image_blobs(digest) {
        let bytes = curl(&[
            "--interface",
            ip,
            &format!("http://{}/v2/team-a/app/blobs/{blob}", a.mirror),
        ]);
        assert!(bytes == src.blob(&blob), "{blob} through the agent at {ip}");
    }
}

#[test]
fn layers_containerd_holds_are_served_to_peers_through_its_content_api_until_it_deletes_them() {
    let admin = hex::encode(unique("admin").as_bytes())[..32].to_owned();
    let berth = Berth::start_with(
        "[auth]\nenabled = true\nchallenge = \"basic\"\n[p2p]\nenabled = true\n",
        &[
            ("BERTH_ADMIN_PASSWORD", &admin),
            ("BERTH_P2P_BOOTSTRAP_TOKEN", TOKEN),
        ],
    );
    run(berth.cli().args(["tenant", "add", "team-a"]));
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    // Incompressible, so the layer is three pieces and a bit after gzip: piece ranges are
    // read at offsets through containerd.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = (0..(12u32 << 20) + 777)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let digest = src.build(
        "v1",
        "amd64",
        &[("big.bin", big), ("id.txt", unique("p2pctr").into_bytes())],
    );
    let creds = format!("admin:{admin}");
    skopeo_copy(
        &["--dest-creds", &creds],
        &src.oci("v1"),
        &berth.docker("team-a/app:v1"),
    );
    let blobs = src.image_blobs(&digest);
    let total: u64 = blobs.iter().map(|b| src.blob(b).len() as u64).sum();
    assert!(
        blobs.iter().any(|b| src.blob(b).len() > 8 << 20),
        "a layer of three pieces"
    );

    // Node A's containerd pulls through A's agent.
    let daemon = Containerd::start();
    let a = agent(&berth, "node-a", "127.0.0.1", work.path());
    let reference = berth.image("team-a/app:v1");
    run(daemon
        .ctr("p2p")
        .args(["image", "pull", "--user", &creds, "--hosts-dir"])
        .arg(work.path().join("node-a-certs.d"))
        .arg(&reference));
    drop(a);

    // A's agent restarts with an empty spool: what it can share now is what containerd
    // holds, read through containerd's content service. Its one listing, at start,
    // announces the image's blobs (the next would be in an hour).
    let socket = daemon.socket().to_owned();
    let a = agent_with(
        &berth,
        "node-a",
        "127.0.0.1",
        work.path(),
        "node-a-restarted",
        &[
            "--containerd-socket",
            &socket,
            "--containerd-namespace",
            "p2p",
            "--containerd-scan-secs",
            "3600",
        ],
    );
    wait_until(
        Duration::from_secs(20),
        "node A's agent to announce containerd's blobs",
        || metric(&metrics_of(&a), "berth_node_containerd_announced_total") >= blobs.len() as u64,
    );
    assert_eq!(
        std::fs::read_dir(work.path().join("node-a-restarted-spool"))
            .expect("spool")
            .count(),
        0,
        "A's spool is empty"
    );

    // Node B gets every blob from A, which reads them from containerd.
    let b = agent(&berth, "node-b", "127.0.0.2", work.path());
    pull_through(&berth, "127.0.0.2", &b, &creds, &digest, &src);
    let mb = metrics_of(&b);
    assert_eq!(
        metric(&mb, "berth_node_bytes_from_peers_total"),
        total,
        "{mb}"
    );
    assert_eq!(
        metric(&mb, "berth_node_bytes_from_central_total"),
        0,
        "{mb}"
    );
    let ma = metrics_of(&a);
    assert_eq!(
        metric(&ma, "berth_node_bytes_to_peers_from_containerd_total"),
        total,
        "{ma}"
    );
    let central_metric = |name: &str| {
        let text =
            String::from_utf8(curl(&[&format!("http://{}/metrics", berth.addr())])).expect("utf-8");
        metric(&text, name)
    };
    assert_eq!(
        central_metric("berth_p2p_bytes_to_agents_total"),
        total,
        "the registry sent the image once, to node A"
    );

    // containerd on A drops the image and its content; A's agent has not listed it since.
    run(daemon
        .ctr("p2p")
        .args(["image", "rm", "--sync", &reference]));
    for blob in &blobs {
        // Gone already when the garbage collector took it.
        let _ = crate::harness::exec(daemon.ctr("p2p").args(["content", "rm", blob]));
    }
    let left = run_stdout(daemon.ctr("p2p").args(["content", "ls", "-q"]));
    for blob in &blobs {
        assert!(!left.contains(blob.as_str()), "{blob} still in containerd");
    }

    // B, restarted with an empty spool, pulls again: the tracker still names A, whose
    // read through containerd fails; A answers an error (B moves on at once, to the
    // registry) and withdraws its announcement.
    drop(b);
    let b = agent_with(&berth, "node-b", "127.0.0.2", work.path(), "node-b-2", &[]);
    pull_through(&berth, "127.0.0.2", &b, &creds, &digest, &src);
    let mb = metrics_of(&b);
    assert_eq!(
        metric(&mb, "berth_node_bytes_from_central_total"),
        total,
        "{mb}"
    );
    assert_eq!(metric(&mb, "berth_node_bytes_from_peers_total"), 0, "{mb}");
    assert!(
        metric(&mb, "berth_node_peers_dropped_total{reason=\"failed\"}") >= 1,
        "{mb}"
    );
    let ma = metrics_of(&a);
    assert_eq!(
        metric(&ma, "berth_node_bytes_to_peers_from_containerd_total"),
        total,
        "A served nothing more: {ma}"
    );
    assert_eq!(
        metric(&ma, "berth_node_containerd_withdrawn_total"),
        blobs.len() as u64,
        "{ma}"
    );
    assert_eq!(
        central_metric("berth_p2p_withdrawals_total"),
        blobs.len() as u64
    );
    let status = run_stdout(
        berth
            .cli()
            .args([
                "p2p",
                "status",
                "--url",
                &format!("http://{}", berth.addr()),
            ])
            .args(["--user", "admin", "--password", &admin]),
    );
    for blob in &blobs {
        if let Some(line) = status.lines().find(|l| l.contains(blob.as_str())) {
            assert!(!line.contains("node-a"), "A still named:\n{status}");
        }
    }

    // containerd on A pulls the image again, from the registry itself this time, and A's
    // agent, restarted to list containerd's content every second, announces it; once
    // containerd deletes it, the next listing withdraws it without any peer asking.
    drop(a);
    run(daemon
        .ctr("p2p")
        .args(["image", "pull", "--plain-http", "--user", &creds])
        .arg(&reference));
    let a = agent_with(
        &berth,
        "node-a",
        "127.0.0.1",
        work.path(),
        "node-a-third",
        &[
            "--containerd-socket",
            &socket,
            "--containerd-namespace",
            "p2p",
            "--containerd-scan-secs",
            "1",
        ],
    );
    wait_until(
        Duration::from_secs(20),
        "A to announce containerd's blobs again",
        || metric(&metrics_of(&a), "berth_node_containerd_announced_total") >= blobs.len() as u64,
    );
    run(daemon
        .ctr("p2p")
        .args(["image", "rm", "--sync", &reference]));
    for blob in &blobs {
        let _ = crate::harness::exec(daemon.ctr("p2p").args(["content", "rm", blob]));
    }
    wait_until(
        Duration::from_secs(20),
        "A to withdraw what containerd deleted",
        || metric(&metrics_of(&a), "berth_node_containerd_withdrawn_total") >= blobs.len() as u64,
    );
    let ma = metrics_of(&a);
    assert_eq!(
        metric(&ma, "berth_node_bytes_to_peers_total"),
        0,
        "no peer asked"
    );
    assert_eq!(
        metric(&ma, "berth_node_containerd_errors_total"),
        0,
        "an empty content store is listed without error: {ma}"
    );
    assert_eq!(
        central_metric("berth_p2p_withdrawals_total"),
        2 * blobs.len() as u64
    );
}
