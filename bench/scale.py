#!/usr/bin/env python3
"""Scale-out, side by side in one run: Berth with PostgreSQL metadata over a filesystem
directory or an S3 bucket, as one replica or two replicas sharing the same stores. For each
of the four setups, on the same generated data:

  pull   16 concurrent clients pulling an image (manifest, config, 4 x 4 MiB layers) for
         --rounds rounds, split evenly over the replicas; MiB/s delivered
  push   --pushes concurrent 8 MiB monolithic blob pushes, split over the replicas; MiB/s
  get    manifest GETs by tag from 64 keep-alive connections for --seconds; requests/s

Numbers are medians of --runs runs. Two replicas on one 2-core machine share its cores
with the load generator, PostgreSQL and the S3 server, so they show what sharing the
stores costs and what the stores bound, not how a cluster scales: the script prints the
CPU each process used, which says where the time went.

    cargo build --release -p berth -p berth-bench
    python3 bench/scale.py [--runs 3] [--rounds 4] [--pushes 8] [--seconds 5]

PostgreSQL and the S3-protocol server (moto) come from scripts/start-postgres.sh and
scripts/start-s3.sh, which this script runs (both are idempotent).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, ROOT, Server, free_port, push_small_blob, put_manifest  # noqa: E402

LAYERS, LAYER_MIB = 4, 4


def script(name):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", name)], check=True,
                          capture_output=True, text=True).stdout.strip()


def fresh_schema(pg):
    schema = "bench" + uuid.uuid4().hex[:12]
    subprocess.run(["psql", pg, "-q", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE SCHEMA {schema}"],
                   check=True, capture_output=True)
    sep = "&" if "?" in pg else "?"
    return f"{pg}{sep}options=-csearch_path%3D{schema}"


def start_replicas(kind, count, pg, s3):
    meta = fresh_schema(pg)
    data = os.path.join(compare.WORK, f"{kind}-{count}-{uuid.uuid4().hex[:6]}")
    os.makedirs(data)
    storage = ""
    if kind == "s3":
        storage = (f'[storage]\nkind = "s3"\nendpoint = "{s3}"\nbucket = "berth-test"\n'
                   f'prefix = "bench-{uuid.uuid4().hex[:8]}/"\npath_style = true\n')
    config = os.path.join(data, "berth.toml")
    with open(config, "w") as f:
        f.write(f'[log]\nlevel = "warn"\n[metadata]\nurl = "{meta}"\n{storage}')
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
               AWS_REGION="us-east-1", RUST_LOG="warn")
    servers = []
    for i in range(count):
        port = free_port()
        # Replicas over a filesystem share the directory, as on a ReadWriteMany volume.
        servers.append(Server(f"{kind}{count}-{i}", [BERTH, "serve", "--config", config, "--data-dir", data,
                                                   "--listen", f"127.0.0.1:{port}"], port, env))
    return servers


def parallel(commands):
    """Runs the berth-load commands at once; their JSON results."""
    procs = [subprocess.Popen([LOAD, *map(str, c)], stdout=subprocess.PIPE, text=True) for c in commands]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"berth-load failed: {commands}")
        out.append(json.loads(stdout))
    return out


def measure(servers, args, seed):
    first = servers[0]
    layers = [parallel([["push", first.base, "bench/app", "--size", LAYER_MIB << 20, "--seed", seed + i]])[0]
              for i in range(LAYERS)]
    config = push_small_blob(first.base, "bench/app", f'{{"seed": {seed}}}'.encode())
    put_manifest(first.base, "bench/app", "v1", config, [(l["digest"], LAYER_MIB << 20) for l in layers])
    n = len(servers)

    started = time.perf_counter()
    pulls = parallel([["pull", s.base, "bench/app", "v1", "--concurrency", 16 // n, "--rounds", args.rounds]
                      for s in servers])
    pull_mibps = sum(p["bytes"] for p in pulls) / (1 << 20) / (time.perf_counter() - started)

    started = time.perf_counter()
    pushes = parallel([["push", servers[i % n].base, f"bench/push{i}", "--size", 8 << 20, "--seed", seed + 100 + i]
                       for i in range(args.pushes)])
    push_mibps = len(pushes) * 8 / (time.perf_counter() - started)

    gets = parallel([["rps", f"{s.base}/v2/bench/app/manifests/v1", "--connections", 64 // n,
                      "--seconds", args.seconds, "--header", f"Accept: {compare.OCI_MANIFEST}"] for s in servers])
    if any(g["errors"] for g in gets):
        raise SystemExit(f"manifest GETs failed: {gets}")
    return {"pull MiB/s": pull_mibps, "push MiB/s": push_mibps, "manifest GET/s": sum(g["rps"] for g in gets)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pushes", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    pg, s3 = script("start-postgres.sh"), script("start-s3.sh")
    compare.WORK = tempfile.mkdtemp(prefix="berth-scale-bench-", dir="/var/tmp")
    setups = [("fs", 1), ("fs", 2), ("s3", 1), ("s3", 2)]
    results = {s: [] for s in setups}
    cpu = {s: [] for s in setups}
    try:
        seed = 1
        for run in range(args.runs):
            order = setups if run % 2 == 0 else setups[::-1]
            for setup in order:
                servers = start_replicas(*setup, pg, s3)
                try:
                    results[setup].append(measure(servers, args, seed))
                    cpu[setup].append(sum(s.cpu_seconds() for s in servers))
                finally:
                    for s in servers:
                        s.stop()
                seed += 1000
                print(f"  run {run} {setup[0]} x{setup[1]}: {results[setup][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(compare.WORK, ignore_errors=True)

    keys = ["pull MiB/s", "push MiB/s", "manifest GET/s"]
    print(f"\n{'setup':<22}" + "".join(f"{k:>16}" for k in keys) + f"{'berth CPU s':>14}")
    for setup in setups:
        med = {k: statistics.median(r[k] for r in results[setup]) for k in keys}
        name = f"{setup[0]} + PostgreSQL x{setup[1]}"
        print(f"{name:<22}" + "".join(f"{med[k]:>16.1f}" for k in keys) + f"{statistics.median(cpu[setup]):>14.1f}")
    print(f"\nmedian of {args.runs} runs, setups alternating; {os.cpu_count()} cores shared by the "
          "load generator, every replica, PostgreSQL and moto (one Python process)")


if __name__ == "__main__":
    main()
