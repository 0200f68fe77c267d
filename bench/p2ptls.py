#!/usr/bin/env python3
"""What serving peers costs a node agent in CPU, and how much of it is TLS (loopback).

The peer port speaks only mutual TLS, so the agent has no plain path to compare with.
This script measures two things on one machine, over loopback, with the release binary:

  1. agent: node A's agent (127.0.0.1) holds a blob of SIZE MiB in its spool; RUNS fresh
     agents (127.0.0.2, .3, ...), each after its "kubelet" pulled the manifest from its
     address, fetch it through their mirror, i.e. from A over mutual TLS piece by piece.
     Reported: A's CPU seconds (utime + stime of /proc/<pid>/stat) per GiB served.
  2. tls: the same blob served by the central Berth (`GET /v2/<repo>/blobs/<digest>`,
     the same server stack: hyper, axum, a file read) to curl, once over plain HTTP and
     once with `[tls]` (TLS 1.3, the server's ring provider), RUNS times each: the
     difference of the server's CPU seconds per GiB is the cost of TLS per GiB.

  3. with --containerd (root): the same as 1, but A's agent restarted with an empty spool
     and --containerd-socket, so it serves the blob from containerd's content store
     (which fetched it through A's agent before): A's and containerd's CPU per GiB.

All are turned into a share of one core at a link rate (--rate-mbit, default 160):
cpu_s_per_gib * (rate_bytes_per_s / 2^30).

    cargo build --release -p berth
    python3 bench/p2ptls.py [--size-mib 256] [--runs 3] [--binary target/release/berth]
        [--containerd]

Needs curl, skopeo and openssl. Everything it starts is stopped at exit.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from p2p import build_image  # noqa: E402  (the same uncompressed random layers)

TOKEN = "bench-bootstrap-token-0123456789abcdef"
ADMIN_PASSWORD = "bench-admin-" + os.urandom(8).hex()
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(*args, env=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def free_port(ip="127.0.0.1"):
    s = socket.socket()
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait(what, ok, timeout=60):
    deadline = time.time() + timeout
    while not ok():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def metric(url, name):
    text = sh("curl", "-sSf", url)
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + " "))


class Run:
    def __init__(self, args, work):
        self.args, self.work, self.procs = args, work, []

    def spawn(self, cmd, logname, env=None):
        f = open(os.path.join(self.work, logname), "w")
        p = subprocess.Popen([str(a) for a in cmd], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=f,
                             env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1", **(env or {})})
        self.procs.append(p)
        return p

    def stop(self, p):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def central(self, tls):
        a = self.args
        conf = os.path.join(self.work, "berth.toml")
        with open(conf, "w") as f:
            f.write('[auth]\nenabled = true\nchallenge = "basic"\n[p2p]\nenabled = true\n'
                    '[catalog]\nenabled = false\n')
            if tls:
                f.write(f'[tls]\ncert_file = "{self.work}/c.pem"\nkey_file = "{self.work}/k.pem"\n')
        self.env = {"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "BERTH_P2P_BOOTSTRAP_TOKEN": TOKEN,
                    "BERTH_CONFIG": conf, "BERTH_DATA_DIR": os.path.join(self.work, "data")}
        self.addr = f"127.0.0.1:{free_port()}"
        self.scheme = "https" if tls else "http"
        p = self.spawn([a.binary, "serve", "--listen", self.addr, "--data-dir",
                        self.env["BERTH_DATA_DIR"], "--config", conf],
                       f"central-{self.scheme}.log", self.env)
        wait("the central Berth", lambda: subprocess.run(
            ["curl", "-skf", f"{self.scheme}://{self.addr}/healthz"],
            capture_output=True).returncode == 0)
        return p

    def agent(self, n, run="", extra=()):
        ip = f"127.0.0.{n}"
        mirror = f"{ip}:{free_port(ip)}"
        logname = f"agent-{n}{run}.log"
        p = self.spawn([self.args.binary, "node", "--node", f"node-{n}",
                        "--central", f"http://{self.addr}", "--listen", mirror,
                        "--peer-listen", f"{ip}:{free_port(ip)}", "--local-address", ip,
                        "--serve-mbit", "0", "--spool", os.path.join(self.work, f"spool-{n}{run}"),
                        *extra],
                       logname, {"BERTH_P2P_BOOTSTRAP_TOKEN": TOKEN})
        path = os.path.join(self.work, logname)
        wait(f"agent {n}", lambda: "enrolled" in open(path).read())
        return p, mirror

    def pull(self, n, mirror, manifest, layer):
        ip = f"127.0.0.{n}"
        sh("curl", "-sSf", "--interface", ip, "-u", f"admin:{ADMIN_PASSWORD}", "-o", "/dev/null",
           "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
           f"http://{self.addr}/v2/team-a/app/manifests/{manifest}")
        sh("curl", "-sSf", "--interface", ip, "-o", "/dev/null",
           f"http://{mirror}/v2/team-a/app/blobs/{layer}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate-mbit", type=float, default=160)
    ap.add_argument("--binary", default="target/release/berth")
    ap.add_argument("--containerd", action="store_true")
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="berth-p2ptls.")
    r = Run(args, work)
    gib = 1 << 30
    link = args.rate_mbit * 1e6 / 8
    try:
        layout = os.path.join(work, "layout")
        build_image(layout, "v1", 1, args.size_mib << 20)
        central = r.central(tls=False)
        sh(args.binary, "tenant", "add", "team-a", env=r.env)
        sh("skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds",
           f"admin:{ADMIN_PASSWORD}", f"oci:{layout}:v1", f"docker://{r.addr}/team-a/app:v1")
        # As pushed (skopeo may rewrite the manifest): the tag is what nodes resolve.
        manifest = "v1"
        ldesc = json.loads(sh("curl", "-sSf", "-u", f"admin:{ADMIN_PASSWORD}", "-H",
                              "Accept: application/vnd.oci.image.manifest.v1+json",
                              f"http://{r.addr}/v2/team-a/app/manifests/v1"))["layers"][0]
        layer, size = ldesc["digest"], ldesc["size"]

        # 1. The agent serving peers over mutual TLS, from its spool.
        a, a_mirror = r.agent(1)
        r.pull(1, a_mirror, manifest, layer)
        agent_runs = []
        for i in range(args.runs):
            n = 2 + i
            b, b_mirror = r.agent(n)
            served0 = metric(f"http://{a_mirror}/metrics", "berth_node_bytes_to_peers_total")
            c0, t0 = cpu_seconds(a.pid), time.time()
            r.pull(n, b_mirror, manifest, layer)
            c1, t1 = cpu_seconds(a.pid), time.time()
            served = metric(f"http://{a_mirror}/metrics", "berth_node_bytes_to_peers_total") - served0
            if served != size:
                raise SystemExit(f"agent {n} got {served} bytes from A, not {size}")
            agent_runs.append({"cpu_s": round(c1 - c0, 3), "wall_s": round(t1 - t0, 3),
                               "cpu_s_per_gib": round((c1 - c0) / (served / gib), 3)})
            log(f"agent run {i + 1}: {agent_runs[-1]}")
            r.stop(b)
        r.stop(a)

        # 3. A serving the blob from containerd's content store.
        ctr_runs = []
        if args.containerd:
            # A central Berth restarted: the tracker forgets the agents stopped above.
            r.stop(central)
            central = r.central(tls=False)
            cdir = tempfile.mkdtemp(prefix="bbt.", dir="/tmp")
            with open(os.path.join(cdir, "config.toml"), "w") as f:
                f.write(f'version = 2\nroot = "{cdir}/root"\nstate = "{cdir}/state"\n'
                        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                        f'[grpc]\n  address = "{cdir}/s"\n[ttrpc]\n  address = "{cdir}/s.t"\n'
                        '[debug]\n  address = ""\n  level = "warn"\n[metrics]\n  address = ""\n'
                        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{cdir}/opt"\n')
            ctrd = r.spawn(["containerd", "--config", f"{cdir}/config.toml"], "containerd.log")
            wait("containerd", lambda: subprocess.run(
                ["ctr", "--address", f"{cdir}/s", "version"], capture_output=True).returncode == 0)
            certs = os.path.join(work, "certs.d")
            a, _ = r.agent(1, "-ctr-fill", ["--registry-host", r.addr, "--containerd-certs-d", certs])
            sh("ctr", "--address", f"{cdir}/s", "-n", "bench", "content", "fetch", "--user",
               f"admin:{ADMIN_PASSWORD}", "--hosts-dir", certs, f"{r.addr}/team-a/app:v1")
            r.stop(a)
            a, a_mirror = r.agent(1, "-ctr", ["--containerd-socket", f"{cdir}/s",
                                              "--containerd-namespace", "bench"])
            wait("A to announce containerd's blobs", lambda: metric(
                f"http://{a_mirror}/metrics", "berth_node_containerd_announced_total") >= 2)
            for i in range(args.runs):
                n = 2 + args.runs + i
                b, b_mirror = r.agent(n)
                name = "berth_node_bytes_to_peers_from_containerd_total"
                served0 = metric(f"http://{a_mirror}/metrics", name)
                c0, d0 = cpu_seconds(a.pid), cpu_seconds(ctrd.pid)
                r.pull(n, b_mirror, manifest, layer)
                c1, d1 = cpu_seconds(a.pid), cpu_seconds(ctrd.pid)
                served = metric(f"http://{a_mirror}/metrics", name) - served0
                if served != size:
                    raise SystemExit(f"agent {n} got {served} bytes from A's containerd, not {size}")
                ctr_runs.append({"agent_cpu_s_per_gib": round((c1 - c0) / (served / gib), 3),
                                 "containerd_cpu_s_per_gib": round((d1 - d0) / (served / gib), 3)})
                log(f"containerd run {i + 1}: {ctr_runs[-1]}")
                r.stop(b)
            r.stop(a)
            r.stop(ctrd)
            shutil.rmtree(cdir, ignore_errors=True)
        r.stop(central)

        # 2. The central Berth serving the same blob, plain and with TLS.
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", f"{work}/k.pem", "-out", f"{work}/c.pem", "-days", "1",
           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
        central_runs = {}
        for tls in (False, True):
            p = r.central(tls)
            url = f"{r.scheme}://{r.addr}/v2/team-a/app/blobs/{layer}"
            runs = []
            for i in range(args.runs):
                c0 = cpu_seconds(p.pid)
                sh("curl", "-sSfk", "-u", f"admin:{ADMIN_PASSWORD}", "-o", "/dev/null", url)
                c1 = cpu_seconds(p.pid)
                runs.append(round((c1 - c0) / (size / gib), 3))
            central_runs[r.scheme] = runs
            log(f"central {r.scheme}: cpu s/GiB {runs}")
            r.stop(p)

        med = statistics.median
        agent_gib = med(x["cpu_s_per_gib"] for x in agent_runs)
        tls_gib = med(central_runs["https"]) - med(central_runs["http"])
        print(json.dumps({
            "blob_mib": size / (1 << 20),
            "runs": args.runs,
            "agent_serving_mtls": agent_runs,
            "agent_cpu_s_per_gib_median": agent_gib,
            "agent_cpu_pct_at_link_rate": round(100 * agent_gib * link / gib, 2),
            "central_cpu_s_per_gib": central_runs,
            "tls_cpu_s_per_gib": round(tls_gib, 3),
            "tls_cpu_pct_at_link_rate": round(100 * tls_gib * link / gib, 2),
            "link_mbit": args.rate_mbit,
            "from_containerd": ctr_runs,
            **({"from_containerd_agent_cpu_s_per_gib_median":
                med(x["agent_cpu_s_per_gib"] for x in ctr_runs),
                "from_containerd_containerd_cpu_s_per_gib_median":
                med(x["containerd_cpu_s_per_gib"] for x in ctr_runs)} if ctr_runs else {}),
        }, indent=2))
    finally:
        for p in r.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
