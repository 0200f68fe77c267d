#!/usr/bin/env python3
"""What the signature policy costs a pull. One Berth, open mode, with a cosign key trusted
for `prod/*` and an enforcing rule there; the same signed image in `prod/app` (judged) and
in `open/app` (no rule). Prints:

- manifest GET by tag under the enforcing rule and without one, alternating runs, medians
  and their ratio (the issue asks >= 0.9: a pull costs a hash lookup, no signature check);
- the first pull after a signature push: a new `.sig` manifest is pushed (which invalidates
  the verdict), then one GET is timed, which computes the verdict on demand (reads the
  signature manifest and payload, verifies ECDSA P-256); p50/p99 over --first samples.

Signatures are made with the `openssl` CLI in cosign's exact format (ASN.1 ECDSA over the
simple-signing payload).

    cargo build --release -p berth -p berth-bench
    python3 bench/signatures.py [--runs 5] [--seconds 5] [--first 200]
"""

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, OCI_MANIFEST, Server, free_port, load, push_small_blob  # noqa: E402

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


def sign(key, payload, work):
    path = os.path.join(work, "payload")
    with open(path, "wb") as f:
        f.write(payload)
    out = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key, path], check=True, capture_output=True).stdout
    return base64.b64encode(out).decode()


def put(base, repo, ref, manifest):
    body = json.dumps(manifest).encode()
    compare.http("PUT", f"{base}/v2/{repo}/manifests/{ref}", body, {"Content-Type": OCI_MANIFEST})
    return "sha256:" + hashlib.sha256(body).hexdigest()


def image(base, repo):
    cfg = push_small_blob(base, repo, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    layer = push_small_blob(base, repo, b"a layer of the benchmark image")
    return put(base, repo, "v1", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg[0], "size": cfg[1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer[0], "size": layer[1]}],
    })


def signature(base, repo, subject, key, work, n):
    payload = json.dumps({"critical": {"identity": {"docker-reference": f"bench/{repo}"},
                                       "image": {"docker-manifest-digest": subject},
                                       "type": "cosign container image signature"},
                          "optional": {"n": n}}).encode()
    p = push_small_blob(base, repo, payload)
    cfg = push_small_blob(base, repo, b'{"architecture":"","os":""}')
    return put(base, repo, f"sha256-{subject[7:]}.sig", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg[0], "size": cfg[1]},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": p[0], "size": p[1],
                    "annotations": {"dev.cosignproject.cosign/signature": sign(key, payload, work)}}],
    })


def get_status(url):
    req = urllib.request.Request(url, headers={"Accept": OCI_MANIFEST})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--first", type=int, default=200)
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    work = tempfile.mkdtemp(prefix="berth-sig-bench-", dir="/var/tmp")
    compare.WORK = work
    key = os.path.join(work, "cosign.key")
    pub = os.path.join(work, "cosign.pub")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    subprocess.run(["openssl", "ec", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write(f"""[log]
level = "warn"

[[trust]]
name = "ci"
repositories = ["prod/*"]
[[trust.cosign]]
name = "bench"
key_file = "{pub}"
algorithm = "ecdsa-p256"

[[policy]]
name = "signed-prod"
repositories = ["prod/*"]
mode = "enforce"
""")
    port = free_port()
    data = os.path.join(work, "data")
    os.makedirs(data)
    server = Server("berth", [BERTH, "serve", "--config", config, "--data-dir", data,
                              "--listen", f"127.0.0.1:{port}"], port, env=dict(os.environ, RUST_LOG="warn"))
    try:
        base = server.base
        judged = image(base, "prod/app")
        image(base, "open/app")
        url = lambda repo: f"{base}/v2/{repo}/manifests/v1"
        if get_status(url("prod/app")) != 403:
            raise SystemExit("the unsigned image was served under the enforcing rule")
        signature(base, "prod/app", judged, key, work, 0)
        if get_status(url("prod/app")) != 200:
            raise SystemExit("the signed image was refused")

        cases = {"manifest GET by tag, enforcing rule (req/s)": url("prod/app"),
                 "manifest GET by tag, no rule (req/s)": url("open/app")}
        results = {k: [] for k in cases}
        p99 = {k: [] for k in cases}
        for i in range(args.runs):
            order = list(cases) if i % 2 == 0 else list(cases)[::-1]
            for k in order:
                r = load("rps", cases[k], "--connections", args.connections, "--seconds", args.seconds,
                         "--header", f"Accept: {OCI_MANIFEST}")
                if r["errors"]:
                    raise SystemExit(f"{k}: {r['errors']} failed requests")
                results[k].append(r["rps"])
                p99[k].append(r["p99_ms"])
                print(f"  {k}: {r['rps']:.0f}", file=sys.stderr)

        first = []
        for n in range(1, args.first + 1):
            signature(base, "prod/app", judged, key, work, n)
            t0 = time.perf_counter()
            status = get_status(url("prod/app"))
            first.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise SystemExit(f"the image was refused after signature {n}")
        # The verdicts computed: every one of those pulls had to compute.
        _, _, metrics = compare.http("GET", f"{base}/metrics")
        computed = [line for line in metrics.decode().splitlines()
                    if line.startswith("berth_policy_verdicts_computed_total")]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    a, b = list(cases)
    ma, mb = statistics.median(results[a]), statistics.median(results[b])
    print(f"\n{'figure':<48} {'median':>10} {'p99 ms':>8}")
    for k in cases:
        print(f"{k:<48} {statistics.median(results[k]):>10.0f} {statistics.median(p99[k]):>8.2f}")
    print(f"{'ratio enforcing / no rule':<48} {ma / mb:>10.3f}")
    first.sort()
    q = lambda p: first[min(len(first) - 1, int(p * len(first)))]
    print(f"{'first pull after a signature push (ms)':<48} p50 {q(0.5):.2f}  p99 {q(0.99):.2f}  max {first[-1]:.2f}"
          f"  ({len(first)} samples; {computed[0] if computed else 'no counter'})")
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores; {args.connections} connections, "
          f"{args.seconds}s per run")


if __name__ == "__main__":
    main()
