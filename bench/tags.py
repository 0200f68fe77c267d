#!/usr/bin/env python3
"""Tag listing at scale: one repository with --tags tags (100,000 by default) in Berth and in
CNCF Distribution, started side by side on loopback and filled with the same tags; then the
whole list is walked in pages of --page (1000) following the `Link` header, alternately
A/B, --runs times, for each page size of --pages. Prints the median time per page (p50
over every page of every walk), the p99, the number of pages a walk took, the time of a
whole walk, and the ratios Berth/Distribution.

Distribution (Debian's docker-registry 2.8) ignores `n` and answers the whole list in one
response, so its "page" is the whole list: compare the walk times. Berth pages as asked
(up to `[limits] max_page`, 10,000 by default).

    cargo build --release -p berth -p berth-bench
    python3 bench/tags.py [--tags 100000] [--pages 1000,10000] [--runs 5] [--fill-threads 16]

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
    ap.add_argument("--pages", default="1000,10000", help="page sizes (n) to walk with")
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
        out = {"tags": args.tags, "runs": args.runs}
        for page in [int(p) for p in args.pages.split(",")]:
            pages = {s.name: [] for s in servers}
            walks = {s.name: [] for s in servers}
            counts = {}
            for run in range(args.runs):
                for s in (servers if run % 2 == 0 else servers[::-1]):
                    times, count = walk(s, page)
                    if count != args.tags:
                        raise SystemExit(f"{s.name}: walked {count} tags, expected {args.tags}")
                    pages[s.name].extend(times)
                    walks[s.name].append(sum(times))
                    counts[s.name] = len(times)
            result = {}
            for name in pages:
                ts = sorted(pages[name])
                result[name] = {
                    "pages_per_walk": counts[name],
                    "page_p50_ms": statistics.median(ts) * 1000,
                    "page_p99_ms": ts[max(0, int(len(ts) * 0.99) - 1)] * 1000,
                    "walk_ms": statistics.median(walks[name]) * 1000,
                }
            b, d = result["berth"], result["distribution"]
            out[f"n={page}"] = {**result, "ratio_page_p50": b["page_p50_ms"] / d["page_p50_ms"],
                                "ratio_walk": b["walk_ms"] / d["walk_ms"]}
        print(json.dumps(out, indent=2))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
