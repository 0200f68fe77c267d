#!/usr/bin/env python3
"""Node-local sharing over a limited link, in network namespaces on one machine (root).

The topology of the e2e test `p2pnet` (berth/tests/e2e/p2pnet.rs), larger: a bridge in a
namespace of its own; a central `berth serve` with [p2p] in namespace `c`, its veth
limited with `tc qdisc ... tbf rate RATE` (everything leaving the central Berth crosses
it); N node namespaces, each with its own containerd (own root, state, socket) and its
own `berth node` agent, which writes the node's hosts.toml. Pulls are `ctr content fetch
--user --hosts-dir` (containerd's resolver and fetcher, the ones its CRI plugin uses,
without unpacking: the figure is the network's, not the small machine's unpacking).

For each N it pushes two images of the same size (random, incompressible, uncompressed
tar layers written by this script), then:
  * one node fetches image A alone: wall time T1;
  * all N nodes fetch image B at once: wall time TN, bytes out of the central link
    (the veth's tx counter) and berth_sent_bytes_total;
  * the CPU time (from /proc/<pid>/stat) of the agent that served peers the most, during
    the all-at-once fetch, and the bytes it served: its CPU share at the link's rate is
    cpu_seconds / (bytes_served / link_bytes_per_second).
With --off it also fetches image C of a tenant with sharing off at all N nodes at once
(the baseline: the central Berth sends it N times).

    cargo build --release -p berth
    sudo python3 bench/p2p.py [--nodes 4 8] [--size-mib 256] [--layers 4] [--rate 160mbit]
        [--binary target/release/berth] [--off]

Everything it creates is removed at exit (processes first, then the namespaces).
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

TOKEN = "bench-bootstrap-token-0123456789abcdef"
CENTRAL_IP = "10.78.0.1"
CENTRAL = f"{CENTRAL_IP}:5000"
ADMIN_PASSWORD = "bench-admin-" + os.urandom(8).hex()


def sh(*args, ns=None, check=True, capture=True, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=capture, text=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout if capture else ""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- the image ----

def write_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_image(layout, tag, layers, layer_bytes):
    """An OCI image of `layers` uncompressed tar layers of random bytes."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    descs, diff_ids = [], []
    for i in range(layers):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo(f"layer{i}.bin")
            info.size = layer_bytes
            info.mtime = 0
            t.addfile(info, io.BytesIO(os.urandom(layer_bytes)))
        d = write_blob(layout, buf.getvalue())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **d})
        diff_ids.append(d["digest"])
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"bench": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json", **write_blob(layout, config)}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc, "layers": descs,
    }).encode()
    mdesc = write_blob(layout, manifest)
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"].append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    })
    with open(index_path, "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return cdesc["size"] + sum(d["size"] for d in descs)


# ---- the topology ----

class Topology:
    def __init__(self, args, n, work):
        self.args, self.n, self.work = args, n, work
        self.id = f"bb{os.getpid() % 10000}n{n}"
        self.namespaces, self.procs = [], []
        self.agents, self.containerds = [], []

    def netns(self, suffix):
        name = f"{self.id}-{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def attach(self, ns, port, ip):
        sw = self.switch
        sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def spawn(self, ns, args, logname, env=None):
        f = open(os.path.join(self.work, logname), "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns] + [str(a) for a in args],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                             env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1", **(env or {})})
        self.procs.append(p)
        return p

    def wait(self, what, ok, timeout=60):
        deadline = time.time() + timeout
        while not ok():
            if time.time() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.1)

    def up(self):
        a = self.args
        self.switch = self.netns("sw")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        self.central_ns = self.netns("c")
        self.attach(self.central_ns, "c", CENTRAL_IP)
        sh("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", a.rate,
           "burst", "256kb", "latency", "100ms", ns=self.central_ns)
        conf = os.path.join(self.work, "berth.toml")
        with open(conf, "w") as f:
            f.write('[auth]\nenabled = true\nchallenge = "basic"\n'
                    '[p2p]\nenabled = true\noff = ["team-off"]\n'
                    '[catalog]\nenabled = false\n[security]\nallow_insecure_http = true\n')
        self.env = {"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "BERTH_P2P_BOOTSTRAP_TOKEN": TOKEN,
                    "BERTH_CONFIG": conf, "BERTH_DATA_DIR": os.path.join(self.work, "data")}
        self.central = self.spawn(self.central_ns, [a.binary, "serve", "--listen", CENTRAL,
                                  "--data-dir", self.env["BERTH_DATA_DIR"], "--config", conf],
                                  "central.log", self.env)
        self.wait("the central Berth", lambda: subprocess.run(
            ["ip", "netns", "exec", self.central_ns, "curl", "-sf", f"http://{CENTRAL}/healthz"],
            capture_output=True).returncode == 0)
        for t in ["team-a", "team-off"]:
            sh(a.binary, "tenant", "add", t, env={**os.environ, **self.env})
        for i in range(1, self.n + 1):
            ns = self.netns(f"n{i}")
            ip = f"10.78.0.{10 + i}"
            self.attach(ns, f"n{i}", ip)
            cdir = tempfile.mkdtemp(prefix="bbc.", dir="/tmp")
            with open(os.path.join(cdir, "config.toml"), "w") as f:
                f.write(f'version = 2\nroot = "{cdir}/root"\nstate = "{cdir}/state"\n'
                        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                        f'[grpc]\n  address = "{cdir}/s"\n[ttrpc]\n  address = "{cdir}/s.t"\n'
                        f'[debug]\n  address = ""\n  level = "warn"\n[metrics]\n  address = ""\n'
                        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{cdir}/opt"\n')
            self.spawn(ns, ["containerd", "--config", f"{cdir}/config.toml"], f"containerd-{i}.log")
            self.containerds.append((ns, cdir))
            certs = os.path.join(self.work, f"n{i}-certs.d")
            agent = self.spawn(ns, [a.binary, "node", "--node", f"node-{i}",
                                    "--central", f"http://{CENTRAL}", "--listen", "127.0.0.1:5050",
                                    "--peer-listen", f"{ip}:5051", "--local-address", ip,
                                    "--serve-mbit", a.serve_mbit,
                                    "--spool", os.path.join(self.work, f"n{i}-spool"),
                                    "--registry-host", CENTRAL, "--containerd-certs-d", certs],
                               f"agent-{i}.log", {"BERTH_P2P_BOOTSTRAP_TOKEN": TOKEN})
            self.agents.append((ns, agent, certs))
            logp = os.path.join(self.work, f"agent-{i}.log")
            self.wait(f"agent {i}", lambda: "enrolled" in open(logp).read())
            self.wait(f"containerd {i}", lambda: subprocess.run(
                ["ctr", "--address", f"{cdir}/s", "version"], capture_output=True).returncode == 0)

    def push(self, layout, tag, repo):
        sh("skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds",
           f"admin:{ADMIN_PASSWORD}", f"oci:{layout}:{tag}", f"docker://{CENTRAL}/{repo}:v1",
           ns=self.central_ns)

    def fetch(self, i, repo):
        ns, cdir = self.containerds[i]
        certs = self.agents[i][2]
        return subprocess.Popen(["ip", "netns", "exec", ns, "ctr", "--address", f"{cdir}/s",
                                 "-n", "bench", "content", "fetch", "--user",
                                 f"admin:{ADMIN_PASSWORD}", "--hosts-dir", certs,
                                 f"{CENTRAL}/{repo}:v1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def fetch_all(self, nodes, repo):
        start = time.time()
        ps = [self.fetch(i, repo) for i in nodes]
        for i, p in zip(nodes, ps):
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"node-{i + 1}: fetch of {repo} failed: {err}")
        return time.time() - start

    def tx_bytes(self):
        out = json.loads(sh("ip", "-n", self.central_ns, "-s", "-j", "link", "show", "eth0"))
        return out[0]["stats64"]["tx"]["bytes"]

    def metric(self, ns, url, name):
        text = sh("curl", "-sSf", url, ns=ns)
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))

    def central_sent(self):
        return self.metric(self.central_ns, f"http://{CENTRAL}/metrics", "berth_sent_bytes_total")

    def served(self, i):
        return self.metric(self.agents[i][0], "http://127.0.0.1:5050/metrics",
                           "berth_node_bytes_to_peers_total")

    def cpu_seconds(self, i):
        pid = self.agents[i][1].pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat (12 and 13 after the name).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def down(self):
        for p in reversed(self.procs):
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(timeout=10)
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for _, cdir in self.containerds:
            shutil.rmtree(cdir, ignore_errors=True)


def rate_bytes(rate):
    units = {"kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}
    for u, m in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * m
    raise SystemExit(f"--rate {rate}: use kbit, mbit or gbit")


def run_one(args, n, layout, size):
    work = tempfile.mkdtemp(prefix=f"berth-bench-p2p-{n}-")
    topo = Topology(args, n, work)
    try:
        topo.up()
        topo.push(layout, "a", "team-a/one")
        topo.push(layout, "b", "team-a/all")
        if args.off:
            topo.push(layout, "c", "team-off/all")
        t1 = topo.fetch_all([0], "team-a/one")
        tx0, sent0 = topo.tx_bytes(), topo.central_sent()
        served0 = [topo.served(i) for i in range(n)]
        cpu0 = [topo.cpu_seconds(i) for i in range(n)]
        tn = topo.fetch_all(list(range(n)), "team-a/all")
        tx, sent = topo.tx_bytes() - tx0, topo.central_sent() - sent0
        served = [topo.served(i) - served0[i] for i in range(n)]
        cpu = [topo.cpu_seconds(i) - cpu0[i] for i in range(n)]
        top = max(range(n), key=lambda i: served[i])
        link = rate_bytes(args.rate)
        cpu_at_link = cpu[top] / (served[top] / link) if served[top] else float("nan")
        row = {
            "nodes": n, "image_bytes": size, "t1_s": round(t1, 2), "tn_s": round(tn, 2),
            "tn_over_t1": round(tn / t1, 2),
            "link_bytes_over_image": round(tx / size, 3),
            "sent_bytes_over_image": round(sent / size, 3),
            "top_agent": f"node-{top + 1}", "top_agent_served_mib": round(served[top] / 2**20, 1),
            "top_agent_cpu_s": round(cpu[top], 2),
            "top_agent_cpu_pct_during": round(100 * cpu[top] / tn, 1),
            "top_agent_cpu_pct_at_link_rate": round(100 * cpu_at_link, 1),
        }
        if args.off:
            tx0, sent0 = topo.tx_bytes(), topo.central_sent()
            toff = topo.fetch_all(list(range(n)), "team-off/all")
            row["off_tn_s"] = round(toff, 2)
            row["off_link_bytes_over_image"] = round((topo.tx_bytes() - tx0) / size, 3)
            row["off_sent_bytes_over_image"] = round((topo.central_sent() - sent0) / size, 3)
        return row
    finally:
        topo.down()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rate", default="160mbit")
    ap.add_argument("--serve-mbit", default="400", help="each agent's cap on serving peers")
    ap.add_argument("--binary", default="target/release/berth")
    ap.add_argument("--off", action="store_true", help="also the sharing-off baseline")
    ap.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)
    if os.geteuid() != 0:
        raise SystemExit("network namespaces and containerd need root")
    layout = tempfile.mkdtemp(prefix="berth-bench-p2p-image-")
    try:
        layer = args.size_mib * 2**20 // args.layers
        size = 0
        for tag in ["a", "b", "c"] if args.off else ["a", "b"]:
            size = build_image(layout, tag, args.layers, layer)
        log(f"images of {size} bytes ({args.layers} layers), link {args.rate}, binary {args.binary}")
        for n in args.nodes:
            row = run_one(args, n, layout, size)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(layout, ignore_errors=True)


if __name__ == "__main__":
    main()
