#!/usr/bin/env python3
"""What authentication costs: one Berth with [auth] enabled, the same manifest fetched
anonymously (public tenant), with a Bearer token, and with Basic credentials, alternating
runs; plus the token endpoint's own rate. Prints medians and the ratio to anonymous.

    cargo build --release -p berth -p berth-bench
    python3 bench/auth.py [--runs 5] [--seconds 5]
"""

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, Server, free_port, load, push_small_blob, put_manifest  # noqa: E402

PASSWORD = "bench password 1"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    work = tempfile.mkdtemp(prefix="berth-auth-bench-", dir="/var/tmp")
    compare.WORK = work
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write("[auth]\nenabled = true\n[log]\nlevel = \"warn\"\n")
    port = free_port()
    data = os.path.join(work, "data")
    env = dict(os.environ, BERTH_ADMIN_PASSWORD=PASSWORD, RUST_LOG="warn")
    run = lambda *a: subprocess.run([BERTH, *a, "--config", config, "--data-dir", data], env=env, check=True,
                                    stdout=subprocess.DEVNULL)
    os.makedirs(data)
    server = Server("berth", [BERTH, "serve", "--config", config, "--data-dir", data,
                              "--listen", f"127.0.0.1:{port}"], port, env=env)
    try:
        run("tenant", "add", "pub", "--public")
        basic = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        auth = {"Authorization": basic}
        cfg = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        c = push_small_blob(server.base, "pub/app", cfg, headers=auth)
        layer = push_small_blob(server.base, "pub/app", os.urandom(1 << 20), headers=auth)
        put_manifest(server.base, "pub/app", "v1", c, [layer], headers=auth)
        scope = "repository:pub/app:pull"
        token_url = f"{server.base}/token?service=berth&scope={scope}"
        _, _, body = compare.http("GET", token_url, headers=auth)
        token = json.loads(body)["token"]
        # The server reads tenants' visibility through a 2 s cache: let it see `pub`.
        time.sleep(2.5)
        url = f"{server.base}/v2/pub/app/manifests/v1"
        accept = "Accept: application/vnd.oci.image.manifest.v1+json"
        cases = {
            "manifest GET, anonymous (req/s)": [accept],
            "manifest GET, Bearer token (req/s)": [accept, f"Authorization: Bearer {token}"],
            "manifest GET, Basic (req/s)": [accept, f"Authorization: {basic}"],
            "token endpoint GET, Basic (req/s)": None,
        }
        results = {k: [] for k in cases}
        p99 = {k: [] for k in cases}
        for i in range(args.runs):
            order = list(cases) if i % 2 == 0 else list(cases)[::-1]
            for k in order:
                if cases[k] is None:
                    r = load("rps", token_url, "--connections", args.connections, "--seconds", args.seconds,
                             "--header", f"Authorization: {basic}")
                else:
                    hdrs = []
                    for h in cases[k]:
                        hdrs += ["--header", h]
                    r = load("rps", url, "--connections", args.connections, "--seconds", args.seconds, *hdrs)
                if r["errors"]:
                    raise SystemExit(f"{k}: {r['errors']} failed requests")
                results[k].append(r["rps"])
                p99[k].append(r["p99_ms"])
                print(f"  {k}: {r['rps']:.0f}", file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(results["manifest GET, anonymous (req/s)"])
    print(f"\n{'figure':<40} {'median':>10} {'p99 ms':>8} {'vs anonymous':>13}")
    for k in cases:
        m = statistics.median(results[k])
        print(f"{k:<40} {m:>10.0f} {statistics.median(p99[k]):>8.2f} {m / base:>13.3f}")
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores; {args.connections} connections, "
          f"{args.seconds}s per run; tokens are checked per request (HMAC), Basic logins hit the login cache")


if __name__ == "__main__":
    main()
