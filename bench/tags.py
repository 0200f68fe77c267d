#!/usr/bin/env python3
"""Tag listing at scale: one repository with --tags tags (100,000 by default) in Berth and in
CNCF Distribution, started side by side on loopback and filled with the same tags; then the
whole list is walked in pages of --page (1000) following the `Link` header, alternately
A/B, --runs times. Prints the median time per page (p50 over every page of every walk),
the p99, the time of a whole walk, and the ratio Berth/Distribution.

    cargo build --release -p berth -p berth-bench
    python3 bench/tags.py [--tags 100000] [--page 1000] [--runs 5] [--fill-threads 16]

Filling pushes one manifest and then PUTs it under every tag (Distribution has no other
way to create a tag), from --fill-threads keep-alive connections; it is not timed.
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import OCI_MANIFEST, push_small_blob, start_berth, start_distribution  # noqa: E402

REPO = "bench/many-tags"


def fill(server, tags, threads):
    config = push_small_blob(server.base, REPO, b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
        "layers": [],
    }).encode()
    names = [f"build-{i:06d}" for i in range(tags)]
    errors = []

    def work(part):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for t in part:
            conn.request("PUT", f"/v2/{REPO}/manifests/{t}", manifest, {"Content-Type": OCI_MANIFEST})
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                errors.append(f"{t}: {r.status}")
                return
        conn.close()

    workers = [threading.Thread(target=work, args=(names[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise SystemExit(f"{server.name}: filling tags failed: {errors[:3]}")


def walk(server, page):
    """Times every page of one walk of the tag list; returns (per-page seconds, tag count)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    path = f"/v2/{REPO}/tags/list?n={page}"
    times, count = [], 0
    while path:
        start = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - start)
        if r.status != 200:
            raise SystemExit(f"{server.name}: {path}: {r.status}")
        count += len(json.loads(body)["tags"] or [])
        link = r.getheader("Link")
        if not link:
            break
        target = link.split(";")[0].strip().strip("<>")
        parsed = urllib.parse.urlsplit(target)
        path = parsed.path + ("?" + parsed.query if parsed.query else "")
    conn.close()
    return times, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--page", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fill-threads", type=int, default=16)
    args = ap.parse_args()
    compare.WORK = tempfile.mkdtemp(prefix="berth-tags-bench-")
    servers = []
    try:
        servers = [start_berth(), start_distribution()]
        for s in servers:
            t = time.time()
            fill(s, args.tags, args.fill_threads)
            print(f"{s.name}: {args.tags} tags filled in {time.time() - t:.0f} s", file=sys.stderr)
        pages = {s.name: [] for s in servers}
        walks = {s.name: [] for s in servers}
        for run in range(args.runs):
            for s in (servers if run % 2 == 0 else servers[::-1]):
                times, count = walk(s, args.page)
                if count != args.tags:
                    raise SystemExit(f"{s.name}: walked {count} tags, expected {args.tags}")
                pages[s.name].extend(times)
                walks[s.name].append(sum(times))
        result = {}
        for name in pages:
            ts = sorted(pages[name])
            result[name] = {
                "page_p50_ms": statistics.median(ts) * 1000,
                "page_p99_ms": ts[int(len(ts) * 0.99) - 1] * 1000,
                "walk_s": statistics.median(walks[name]),
            }
        b, d = result["berth"], result["distribution"]
        print(json.dumps({
            "tags": args.tags, "page": args.page, "runs": args.runs, **result,
            "ratio_page_p50": b["page_p50_ms"] / d["page_p50_ms"],
            "ratio_walk": b["walk_s"] / d["walk_s"],
        }, indent=2))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
