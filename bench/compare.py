#!/usr/bin/env python3
"""Berth against CNCF Distribution, side by side, on the same data in one run.

Starts both registries on loopback (Berth from target/release, Distribution from Debian's
`docker-registry` package), loads the same images into each, and measures every figure
alternately A/B, reporting the median of --runs runs and the ratio Berth/Distribution.

    cargo build --release -p berth -p berth-bench
    python3 bench/compare.py [--runs 5] [--seconds 5] [--size-mib 1024]

Needs: docker-registry, wrk, containerd (for `ctr content fetch`, as root). The raw-client
figures (push, GET, HEAD, pulls) use target/release/berth-load, a plain HTTP client, so they
measure the servers; the ctr figure includes containerd's own work.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BERTH = os.path.join(TARGET, "release", "berth")
LOAD = os.path.join(TARGET, "release", "berth-load")
ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers, if only with 401: it is up
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


class Server:
    def __init__(self, name, argv, port, env=None):
        self.name, self.port = name, port
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(WORK, f"{name}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=env)
        wait_http(self.base + "/v2/")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_berth():
    port = free_port()
    data = os.path.join(WORK, "berth-data")
    env = dict(os.environ, RUST_LOG="warn")
    return Server("berth", [BERTH, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data], port, env)


def start_distribution():
    port = free_port()
    data = os.path.join(WORK, "distribution-data")
    cfg = os.path.join(WORK, "distribution.yml")
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
""")
    return Server("distribution", ["/usr/bin/docker-registry", "serve", cfg], port)


def http(method, url, body=b"", headers=None):
    req = urllib.request.Request(url, data=body if method in ("POST", "PUT", "PATCH") else None,
                                 method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.headers, r.read()


def push_small_blob(base, repo, data, headers=None):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    _, h, _ = http("POST", f"{base}/v2/{repo}/blobs/uploads/", headers=headers)
    loc = h["Location"]
    loc = loc if loc.startswith("http") else base + loc
    sep = "&" if "?" in loc else "?"
    http("PUT", f"{loc}{sep}digest={d}", data, {"Content-Type": "application/octet-stream", **(headers or {})})
    return d, len(data)


def put_manifest(base, repo, tag, config, layers, headers=None):
    m = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n} for d, n in layers],
    }).encode()
    http("PUT", f"{base}/v2/{repo}/manifests/{tag}", m, {"Content-Type": OCI_MANIFEST, **(headers or {})})
    return "sha256:" + hashlib.sha256(m).hexdigest()


def load(*args):
    out = subprocess.run([LOAD, *map(str, args)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def wrk(url, seconds, connections=64):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-H", f"Accept: {ACCEPT}", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"wrk saw {non2xx.group(1)} error responses from {url}")
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale}


def ctr_fetch(ref):
    """Wall seconds of `ctr content fetch` into a fresh containerd (started outside the timing)."""
    c = tempfile.mkdtemp(prefix="bc", dir="/tmp")
    sock = os.path.join(c, "s")
    cfg = os.path.join(c, "config.toml")
    with open(cfg, "w") as f:
        f.write(f"""version = 2
root = "{c}/root"
state = "{c}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"
""")
    d = subprocess.Popen(["containerd", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["ctr", "--address", sock, "version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        t = time.time()
        subprocess.run(["ctr", "--address", sock, "-n", "bench", "content", "fetch", "--plain-http", ref],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.time() - t
    finally:
        d.terminate()
        d.wait()
        shutil.rmtree(c, ignore_errors=True)


def main():
    global WORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each requests/s run")
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big blob")
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma-separated figure names to skip")
    args = ap.parse_args()
    for tool in (BERTH, LOAD, "/usr/bin/docker-registry"):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    WORK = tempfile.mkdtemp(prefix="berth-bench-", dir="/var/tmp")
    size = args.size_mib << 20
    skip = set(filter(None, args.skip.split(",")))
    servers = {"berth": start_berth(), "distribution": start_distribution()}
    names = list(servers)
    results = {}  # figure -> name -> [values]
    rng = random.Random(42)
    small = [rng.randbytes(n) for n in (64 << 10, 256 << 10, 1 << 20)]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digests = {}
    try:
        for name, s in servers.items():
            c = push_small_blob(s.base, "bench/small", cfg)
            layers = [push_small_blob(s.base, "bench/small", b) for b in small]
            digests[name] = put_manifest(s.base, "bench/small", "v1", c, layers)
            big = load("push", s.base, "bench/big", "--size", size, "--seed", 1)
            put_manifest(s.base, "bench/big", "v1", push_small_blob(s.base, "bench/big", cfg), [(big["digest"], size)])
            digests[name + "-big"] = big["digest"]
        assert digests["berth"] == digests["distribution"]

        def figure(key, unit, better, fn):
            if key in skip:
                return
            results[key] = {"unit": unit, "better": better, **{n: [] for n in names}}
            for i in range(args.runs):
                order = names if i % 2 == 0 else names[::-1]
                for n in order:
                    results[key][n].append(fn(n, servers[n], i))
            print(f"  {key}: " + ", ".join(f"{n} {statistics.median(results[key][n]):.3f}" for n in names), file=sys.stderr)

        seed = iter(range(100, 10_000))
        big = f"{args.size_mib} MiB"
        figure(f"push {big} blob, monolithic (s)", "s", "lower",
               lambda n, s, i: load("push", s.base, f"bench/p{i}", "--size", size, "--seed", next(seed))["seconds"])
        figure(f"push {big} blob, {args.chunk_mib} MiB chunks (s)", "s", "lower",
               lambda n, s, i: load("push", s.base, f"bench/c{i}", "--size", size, "--chunk", args.chunk_mib << 20,
                                    "--seed", next(seed))["seconds"])
        figure(f"GET {big} blob, raw client (s)", "s", "lower",
               lambda n, s, i: load("get", f"{s.base}/v2/bench/big/blobs/{digests['berth-big']}")["seconds"])
        if shutil.which("ctr") and os.geteuid() == 0:
            figure(f"ctr content fetch, {big} image (s)", "s", "lower",
                   lambda n, s, i: ctr_fetch(f"127.0.0.1:{s.port}/bench/big:v1"))
        for label, ref in (("tag", "v1"), ("digest", digests["berth"])):
            cache = {}

            def run_wrk(n, s, i, ref=ref, cache=cache):
                r = wrk(f"{s.base}/v2/bench/small/manifests/{ref}", args.seconds)
                cache.setdefault(n, []).append(r["p99_ms"])
                return r["rps"]
            figure(f"manifest GET by {label} (req/s)", "req/s", "higher", run_wrk)
            if f"manifest GET by {label} (req/s)" in results:
                results[f"manifest GET by {label}, p99 (ms)"] = {"unit": "ms", "better": "lower", **cache}
        blob = f"/v2/bench/small/blobs/{'sha256:' + hashlib.sha256(small[2]).hexdigest()}"
        head = {}

        def run_head(n, s, i):
            r = load("rps", s.base + blob, "--method", "HEAD", "--connections", 64, "--seconds", args.seconds)
            head.setdefault(n, []).append(r["p99_ms"])
            return r["rps"]
        figure("blob HEAD (req/s)", "req/s", "higher", run_head)
        if head:
            results["blob HEAD, p99 (ms)"] = {"unit": "ms", "better": "lower", **head}
        figure("32 concurrent pulls x10 of a 1.3 MiB image (s)", "s", "lower",
               lambda n, s, i: load("pull", s.base, "bench/small", "v1", "--concurrency", 32, "--rounds", 10)["seconds"])
        for n, s in servers.items():
            results.setdefault("peak RSS (MiB)", {"unit": "MiB", "better": "lower"})[n] = [s.peak_rss_mib()]
            results.setdefault("server CPU seconds, whole run", {"unit": "s", "better": "lower"})[n] = [s.cpu_seconds()]
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(WORK, ignore_errors=True)

    print(f"\n{'figure':<48} {'Berth':>11} {'Distribution':>13} {'Berth/Dist':>11} {'Berth better by':>16}")
    for key, r in results.items():
        b, d = statistics.median(r["berth"]), statistics.median(r["distribution"])
        ratio = b / d if d else float("nan")
        adv = ratio if r["better"] == "higher" else (1 / ratio if ratio else float("nan"))
        print(f"{key:<48} {b:>11.3f} {d:>13.3f} {ratio:>11.3f} {adv:>15.2f}x")
    print(f"\nmedian of {args.runs} runs, alternating A/B; {os.cpu_count()} cores; "
          f"{args.size_mib} MiB big blob, {args.chunk_mib} MiB chunks, {args.seconds}s per req/s run")


if __name__ == "__main__":
    main()
