#!/usr/bin/env python3
"""What vulnerability matching costs. Two figures:

- the re-match after an import: N stored image catalogs of ~300 packages over 5 distinct
  base layers, against M advisory records (the issue: 10,000 images, ~200,000 records,
  < 10 s), by the `vuln_rematch` example of berth-registry (SQLite in a temp dir, or
  --metadata-url);
- manifest GET by tag under an enforcing `[[vulnerability_policy]]` and without one, on
  one Berth in open mode, alternating runs, medians and their ratio (the issue asks
  >= 0.9: a pull judged by the rule costs a hash lookup once its findings are cached).
  The image is a real layer with a dpkg database, cataloged by the server; the fixture
  advisories are imported with `berth advisories import` while it serves; the rule
  (critical) lets it through, so every request is judged and served.

    cargo build --release -p berth -p berth-bench
    cargo build --release -p berth-registry --example vuln_rematch
    python3 bench/vulns.py [--images 10000] [--advisories 200000] [--runs 5] [--seconds 5]
        [--metadata-url postgres://...] [--rematch-binary OTHER_BUILD] [--skip-pulls]
"""

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, OCI_MANIFEST, Server, free_port, load, push_small_blob  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMATCH = os.path.join(ROOT, "target", "release", "examples", "vuln_rematch")
FIXTURES = os.path.join(ROOT, "berth-vuln", "tests", "fixtures")
STATUS = (b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n"
          b"Source: glibc (2.36-9+deb12u1)\nVersion: 2.36-9+deb12u1\n\n"
          b"Package: libcurl4\nStatus: install ok installed\nArchitecture: amd64\n"
          b"Source: curl\nVersion: 7.88.1-10+deb12u5\n")


def layer():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in [("etc/os-release", b'ID=debian\nVERSION_ID="12"\n'),
                           ("var/lib/dpkg/status", STATUS)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image(base, repo):
    cfg = push_small_blob(base, repo, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    lay = push_small_blob(base, repo, layer())
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg[0], "size": cfg[1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": lay[0], "size": lay[1]}],
    }).encode()
    compare.http("PUT", f"{base}/v2/{repo}/manifests/v1", body, {"Content-Type": OCI_MANIFEST})


def status(url):
    try:
        s, _, _ = compare.http("GET", url, None, {"Accept": OCI_MANIFEST})
        return s
    except Exception as e:  # compare.http raises on 4xx
        return getattr(e, "code", 0)


def rematch(args):
    binary = args.rematch_binary or REMATCH
    if not os.path.exists(binary):
        raise SystemExit(f"missing {binary}: see the docstring")
    argv = [binary, "--images", str(args.images), "--advisories", str(args.advisories)]
    if args.metadata_url:
        argv += ["--metadata-url", args.metadata_url]
    if args.reuse:
        argv.append("--reuse")
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    return out.stdout


def pulls(args):
    work = tempfile.mkdtemp(prefix="berth-vuln-bench-", dir="/var/tmp")
    compare.WORK = work
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write("""[log]
level = "warn"

[catalog]
enabled = true
referrers = false

[jobs]
poll_ms = 100

[[vulnerability_policy]]
name = "no-critical"
repositories = ["prod/*"]
mode = "enforce"
severity = "critical"
""")
    port = free_port()
    data = os.path.join(work, "data")
    os.makedirs(data)
    server = Server("berth", [BERTH, "serve", "--config", config, "--data-dir", data,
                              "--listen", f"127.0.0.1:{port}"], port, env=dict(os.environ, RUST_LOG="warn"))
    try:
        base = server.base
        image(base, "prod/app")
        image(base, "open/app")
        url = lambda repo: f"{base}/v2/{repo}/manifests/v1"
        deadline = time.time() + 60
        while status(url("prod/app")) != 200:
            if time.time() > deadline:
                raise SystemExit("the image was not cataloged within 60 s")
            time.sleep(0.2)
        subprocess.run([BERTH, "advisories", "--config", config, "--data-dir", data, "import", FIXTURES],
                       check=True, capture_output=True)
        time.sleep(2)
        if status(url("prod/app")) != 200:
            raise SystemExit("the image was refused under the critical rule")
        cases = {"manifest GET by tag, vulnerability rule (req/s)": url("prod/app"),
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
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return cases, results, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--advisories", type=int, default=200000)
    ap.add_argument("--metadata-url")
    ap.add_argument("--reuse", action="store_true",
                    help="the catalogs of an earlier run with the same --metadata-url are there")
    ap.add_argument("--rematch-binary", help="another build of the vuln_rematch example (a before/after comparison)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--skip-rematch", action="store_true")
    ap.add_argument("--skip-pulls", action="store_true")
    args = ap.parse_args()
    if not args.skip_rematch:
        print(rematch(args))
    if args.skip_pulls:
        return
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    cases, results, p99 = pulls(args)
    a, b = list(cases)
    ma, mb = statistics.median(results[a]), statistics.median(results[b])
    print(f"{'figure':<52} {'median':>10} {'p99 ms':>8}")
    for k in cases:
        print(f"{k:<52} {statistics.median(results[k]):>10.0f} {statistics.median(p99[k]):>8.2f}")
    print(f"{'ratio rule / no rule':<52} {ma / mb:>10.3f}")
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores; {args.connections} connections, "
          f"{args.seconds}s per run")


if __name__ == "__main__":
    main()
