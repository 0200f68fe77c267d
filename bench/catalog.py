#!/usr/bin/env python3
"""What cataloging costs, in one run.

1. Throughput: one layer built from this machine's own files (`/usr/lib/x86_64-linux-gnu`,
   `/usr/bin`, `/usr/lib/python3`, `/var/lib/dpkg`, about 1.2 GB of tar), stored gzip (`gzip -6`) and
   zstd (`zstd -3`) as registries hold layers. Each is read in alternating runs by
   `gzip -dc >/dev/null` (or `zstd -dc`) and by Berth's cataloger (the `scan` example:
   decompress, walk the tar, parse the package databases). Figure: stored (compressed)
   bytes per second, and Berth's as a ratio of the tool's.
2. Serving while the queue works: two Berth servers on the same build, one with
   `[catalog] enabled = true` and a backlog of distinct images with that layer pushed
   before each of its measurements so its scan queue is busy throughout, one without cataloging. Figures:
   manifest GET requests/s (`berth-load rps`) and pushes of small images (`berth-load
   push-images`) on each; the ratio scanning / idle. The script checks the queue was still
   working when each measurement ended.

    cargo build --release -p berth -p berth-bench && cargo build --release -p berth-catalog --example scan
    python3 bench/catalog.py [--runs 5] [--seconds 5] [--images 200] [--backlog 4]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, TARGET, Server, free_port, http, load, push_small_blob  # noqa: E402

SCAN = os.path.join(TARGET, "release", "examples", "scan")
TREES = ["usr/lib/x86_64-linux-gnu", "usr/bin", "usr/lib/python3", "var/lib/dpkg", "etc/os-release"]
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def build_layers(work):
    raw = os.path.join(work, "layer.tar")
    trees = [t for t in TREES if os.path.exists("/" + t)]
    subprocess.run(["tar", "-C", "/", "--ignore-failed-read", "-cf", raw, *trees], check=True,
                   stderr=subprocess.DEVNULL)
    gz, zst = raw + ".gz", raw + ".zst"
    with open(gz, "wb") as out:
        subprocess.run(["gzip", "-6", "-c", raw], stdout=out, check=True)
    subprocess.run(["zstd", "-q", "-3", "-f", raw, "-o", zst], check=True)
    size = os.path.getsize(raw)
    os.remove(raw)
    return size, gz, zst


def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def scan(path):
    t = time.perf_counter()
    out = subprocess.run([SCAN, path], check=True, capture_output=True, text=True).stdout
    secs = time.perf_counter() - t
    packages = int(re.search(r"(\d+) packages", out).group(1))
    if "partial: None" not in out:
        raise SystemExit(f"the scan of {path} was partial: {out}")
    return secs, packages


def unique_prefix(i):
    """A gzip member holding one small file and no end-of-archive blocks: put in front of
    the big layer it makes a distinct layer digest whose scan still reads everything."""
    info = tarfile.TarInfo(f"bench/unique-{i}")
    data = f"{i} {time.time()}\n".encode()
    info.size = len(data)
    buf = info.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)
    return gzip.compress(buf)


def start(name, catalog):
    work = os.path.join(compare.WORK, name)
    os.makedirs(work)
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write("[log]\nlevel = \"warn\"\n")
        f.write(f"[catalog]\nenabled = {'true' if catalog else 'false'}\n")
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn")
    return Server(name, [BERTH, "serve", "--config", config, "--data-dir", os.path.join(work, "data"),
                         "--listen", f"127.0.0.1:{port}"], port, env=env)


def push_backlog(s, big, count, seed):
    cfg = push_small_blob(s.base, "bench/scan", json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    for i in range(count):
        body = unique_prefix(seed * 1000 + i) + big
        d = "sha256:" + hashlib.sha256(body).hexdigest()
        _, h, _ = http("POST", f"{s.base}/v2/bench/scan/blobs/uploads/")
        loc = h["Location"]
        loc = loc if loc.startswith("http") else s.base + loc
        http("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={d}", body, {"Content-Type": "application/octet-stream"})
        m = json.dumps({"schemaVersion": 2, "mediaType": compare.OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg[0], "size": cfg[1]},
                        "layers": [{"mediaType": LAYER, "digest": d, "size": len(body)}]}).encode()
        http("PUT", f"{s.base}/v2/bench/scan/manifests/b{seed}-{i}", m, {"Content-Type": compare.OCI_MANIFEST})


def scanning(s):
    _, _, body = http("GET", s.base + "/metrics")
    m = re.search(rb"^berth_catalog_scans_running (\d+)", body, re.M)
    return m is not None and int(m.group(1)) > 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--backlog", type=int, default=4, help="images with the big layer pushed before each measurement")
    args = ap.parse_args()
    for tool in (BERTH, LOAD, SCAN):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    compare.WORK = tempfile.mkdtemp(prefix="berth-catalog-bench-", dir="/var/tmp")
    servers = []
    try:
        tar_size, gz, zst = build_layers(compare.WORK)
        sizes = {"gzip": os.path.getsize(gz), "zstd": os.path.getsize(zst)}
        tool = {"gzip": [], "zstd": []}
        berth = {"gzip": [], "zstd": []}
        packages = 0
        for i in range(args.runs):
            for enc, path, argv in (("gzip", gz, ["gzip", "-dc", gz]), ("zstd", zst, ["zstd", "-dc", zst])):
                order = ["tool", "berth"] if i % 2 == 0 else ["berth", "tool"]
                for who in order:
                    if who == "tool":
                        tool[enc].append(timed(argv))
                    else:
                        secs, packages = scan(path)
                        berth[enc].append(secs)
                print(f"  run {i}: {enc}: tool {tool[enc][-1]:.2f}s, berth {berth[enc][-1]:.2f}s", file=sys.stderr)

        big = open(gz, "rb").read()
        idle = start("idle", False)
        busy = start("scanning", True)
        servers = [idle, busy]
        cfg = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        for s in servers:
            c = push_small_blob(s.base, "bench/app", cfg)
            layer = push_small_blob(s.base, "bench/app", os.urandom(4096))
            compare.put_manifest(s.base, "bench/app", "v1", c, [layer])
        accept = "Accept: application/vnd.oci.image.manifest.v1+json"
        get = {"idle": [], "scanning": []}
        p99 = {"idle": [], "scanning": []}
        push = {"idle": [], "scanning": []}
        for i in range(args.runs):
            for name in (["idle", "scanning"] if i % 2 == 0 else ["scanning", "idle"]):
                s = idle if name == "idle" else busy
                if name == "scanning":
                    push_backlog(busy, big, args.backlog, i)
                    deadline = time.time() + 30
                    while not scanning(busy):
                        if time.time() > deadline:
                            raise SystemExit("the scan queue did not start")
                        time.sleep(0.1)
                r = load("rps", f"{s.base}/v2/bench/app/manifests/v1", "--connections", args.connections,
                         "--seconds", args.seconds, "--header", accept)
                if r["errors"]:
                    raise SystemExit(f"GET {name}: {r['errors']} failed requests")
                get[name].append(r["rps"])
                p99[name].append(r["p99_ms"])
                r = load("push-images", s.base, f"bench/push{i}", "--images", args.images,
                         "--concurrency", 8, "--seed", 1000 * i + len(name))
                if r["errors"]:
                    raise SystemExit(f"push {name}: {r['errors']} failed images")
                push[name].append(r["images_per_s"])
                if name == "scanning" and not scanning(busy):
                    raise SystemExit("the backlog ran out during the measurement: raise --backlog")
                print(f"  run {i}: {name}: GET {get[name][-1]:.0f}/s, push {push[name][-1]:.1f} images/s",
                      file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)
    med = statistics.median
    print(f"\nlayer: {tar_size / 1e6:.0f} MB of tar, {sizes['gzip'] / 1e6:.0f} MB gzip, {sizes['zstd'] / 1e6:.0f} MB zstd; "
          f"{packages} packages found")
    print(f"{'figure':<56} {'median':>10} {'ratio':>7}")
    for enc in ("gzip", "zstd"):
        t = sizes[enc] / med(tool[enc]) / 1e6
        b = sizes[enc] / med(berth[enc]) / 1e6
        print(f"{f'{enc} -dc >/dev/null (stored MB/s)':<56} {t:>10.1f}")
        print(f"{f'Berth catalog, {enc} layer (stored MB/s)':<56} {b:>10.1f} {b / t:>7.3f}")
    print(f"{'manifest GET, idle registry (req/s)':<56} {med(get['idle']):>10.0f}")
    print(f"{'manifest GET, while the scan queue works (req/s)':<56} {med(get['scanning']):>10.0f} "
          f"{med(get['scanning']) / med(get['idle']):>7.3f}")
    print(f"{'  p99 ms idle / scanning':<56} {med(p99['idle']):>5.2f} / {med(p99['scanning']):.2f}")
    print(f"{'push of a small image, idle (images/s)':<56} {med(push['idle']):>10.1f}")
    print(f"{'push of a small image, while scanning (images/s)':<56} {med(push['scanning']):>10.1f} "
          f"{med(push['scanning']) / med(push['idle']):>7.3f}")
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
