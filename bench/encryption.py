#!/usr/bin/env python3
"""What encryption at rest costs, in one run: the same Berth build twice, each with its own
data directory (filesystem blobs, SQLite), one with `[encryption]` on, measured in
alternating runs:

* 1 GiB blob push (monolithic `POST ?digest=`; `--chunk` for a chunked upload), MB/s;
* 1 GiB blob GET, MB/s (the blob pushed in the same run);
* manifest GET (requests/s, `berth-load rps`).

Prints medians and the ratios encrypted / plain.

    cargo build --release -p berth -p berth-bench
    python3 bench/encryption.py [--runs 3] [--size-mib 1024] [--seconds 5] [--chunk BYTES]
"""

import argparse
import base64
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, Server, free_port, load, push_small_blob, put_manifest  # noqa: E402


def start(name, encrypted):
    work = os.path.join(compare.WORK, name)
    os.makedirs(work)
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write("[log]\nlevel = \"warn\"\n")
        if encrypted:
            key = os.path.join(work, "kek")
            with open(key, "w") as k:
                k.write(base64.b64encode(os.urandom(32)).decode())
            f.write(f"[encryption]\n[[encryption.key]]\nid = \"bench\"\nfile = {json.dumps(key)}\n")
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn")
    return Server(name, [BERTH, "serve", "--config", config, "--data-dir", os.path.join(work, "data"),
                         "--listen", f"127.0.0.1:{port}"], port, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=None, help="chunked upload with chunks of this many bytes")
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    compare.WORK = tempfile.mkdtemp(prefix="berth-encryption-bench-", dir="/var/tmp")
    size = args.size_mib << 20
    servers = {}
    try:
        servers = {"plain": start("plain", False), "encrypted": start("encrypted", True)}
        cfg = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        for s in servers.values():
            c = push_small_blob(s.base, "bench/app", cfg)
            layer = push_small_blob(s.base, "bench/app", os.urandom(4096))
            put_manifest(s.base, "bench/app", "v1", c, [layer])
        accept = "Accept: application/vnd.oci.image.manifest.v1+json"
        push = {n: [] for n in servers}
        get = {n: [] for n in servers}
        rps = {n: [] for n in servers}
        for i in range(args.runs):
            order = ["plain", "encrypted"] if i % 2 == 0 else ["encrypted", "plain"]
            for name in order:
                s = servers[name]
                extra = ["--chunk", args.chunk] if args.chunk else []
                r = load("push", s.base, "bench/big", "--size", size, "--seed", 100 + i, *extra)
                push[name].append(size / r["seconds"] / 1e6)
                g = load("get", f"{s.base}/v2/bench/big/blobs/{r['digest']}")
                if g["bytes"] != size:
                    raise SystemExit(f"GET {name}: {g['bytes']} bytes, {size} expected")
                get[name].append(size / g["seconds"] / 1e6)
                m = load("rps", f"{s.base}/v2/bench/app/manifests/v1", "--connections", args.connections,
                         "--seconds", args.seconds, "--header", accept)
                if m["errors"]:
                    raise SystemExit(f"manifest GET {name}: {m['errors']} failed requests")
                rps[name].append(m["rps"])
                print(f"  run {i} {name}: push {push[name][-1]:.0f} MB/s, GET {get[name][-1]:.0f} MB/s, "
                      f"manifest GET {m['rps']:.0f}/s", file=sys.stderr)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)
    med = statistics.median
    print(f"\n{'figure':<40} {'plain':>10} {'encrypted':>10} {'ratio':>7}")
    for label, d in ((f"{args.size_mib} MiB push (MB/s)", push), (f"{args.size_mib} MiB GET (MB/s)", get),
                     ("manifest GET (req/s)", rps)):
        p, e = med(d["plain"]), med(d["encrypted"])
        print(f"{label:<40} {p:>10.0f} {e:>10.0f} {e / p:>7.3f}")
    how = f"chunks of {args.chunk} bytes" if args.chunk else "monolithic"
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores; push {how}; "
          f"manifest GET: {args.connections} connections, {args.seconds}s")


if __name__ == "__main__":
    main()
