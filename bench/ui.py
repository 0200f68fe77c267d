#!/usr/bin/env python3
"""The web interface's pages at scale. The repository page: one repository with --tags tags (100,000 by
default; nine in ten are versions like 3.14.159, the rest names like build-000123), then
--requests GETs of `/ui/repository` at pages spread over the whole list, in both orders
(versions newest first, and by name), each following an `after=` cursor taken from a
random tag. The image page of a 50-layer image (config with 50 history entries and
labels), --requests times. Prints p50/p99/max of each and the issue's target (p99 < 50 ms). Times are
measured at the client over loopback, so they include the connection and HTML transfer:
an upper bound of the server time.

Berth runs with authentication off (the interface then reads as anyone may): a session
costs the same two indexed lookups on every page, and the login is not what is measured.

    cargo build --release -p berth
    python3 bench/ui.py [--tags 100000] [--requests 500] [--fill-threads 8] [--berth PATH]

Filling pushes one manifest and PUTs it under every tag from --fill-threads keep-alive
connections; it is not timed.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import OCI_MANIFEST, push_small_blob  # noqa: E402

REPO = "bench/ui-tags"


def tag_names(n):
    names = []
    for i in range(n):
        if i % 10 == 9:
            names.append(f"build-{i:06d}")
        else:
            names.append(f"{i % 7}.{(i // 7) % 100}.{i // 700}")
    return names


def fill(server, names, threads):
    config = push_small_blob(server.base, REPO, b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
        "layers": [],
    }).encode()
    errors = []

    def work(part):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for t in part:
            conn.request("PUT", f"/v2/{REPO}/manifests/{t}", manifest, {"Content-Type": OCI_MANIFEST})
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                errors.append(f"{t}: {r.status} {r.read()[:200]!r}")
                return
        conn.close()

    workers = [threading.Thread(target=work, args=(names[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise SystemExit(f"filling tags failed: {errors[:3]}")


def push_layered_image(server, layers):
    """An image of `layers` small distinct layers and a config with a history entry each."""
    descs = []
    for i in range(layers):
        d, n = push_small_blob(server.base, REPO, f"layer {i} of the bench image".encode())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Labels": {f"org.example.label{i}": f"value {i}" for i in range(20)}},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"RUN step {i}"} for i in range(layers)],
    }).encode()
    c, n = push_small_blob(server.base, REPO, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": n},
        "layers": descs,
    }).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("PUT", f"/v2/{REPO}/manifests/fifty-layers", manifest, {"Content-Type": OCI_MANIFEST})
    r = conn.getresponse()
    r.read()
    if r.status != 201:
        raise SystemExit(f"pushing the 50-layer image: {r.status}")


def measure_paths(server, paths, marker):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    times = []
    for path in paths:
        start = time.perf_counter()
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - start)
        if r.status != 200 or marker not in body:
            raise SystemExit(f"{path}: {r.status} {body[:300]!r}")
    conn.close()
    ts = sorted(times)
    return {
        "requests": len(ts),
        "p50_ms": round(statistics.median(ts) * 1000, 2),
        "p99_ms": round(ts[max(0, int(len(ts) * 0.99) - 1)] * 1000, 2),
        "max_ms": round(ts[-1] * 1000, 2),
    }


def measure(server, names, order, requests):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    rng = random.Random(order)
    times = []
    for i in range(requests):
        q = {"repository": REPO}
        if order == "name":
            q["order"] = "name"
        if i > 0:  # the first page, then pages after random tags
            q["after"] = rng.choice(names)
        path = "/ui/repository?" + urllib.parse.urlencode(q)
        start = time.perf_counter()
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - start)
        if r.status != 200 or b'id="tags"' not in body and b"No tag" not in body:
            raise SystemExit(f"{path}: {r.status} {body[:300]!r}")
    conn.close()
    ts = sorted(times)
    return {
        "requests": len(ts),
        "p50_ms": round(statistics.median(ts) * 1000, 2),
        "p99_ms": round(ts[max(0, int(len(ts) * 0.99) - 1)] * 1000, 2),
        "max_ms": round(ts[-1] * 1000, 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--fill-threads", type=int, default=8)
    ap.add_argument("--berth", default=compare.BERTH, help="the berth binary (default: the release build)")
    args = ap.parse_args()
    compare.BERTH = args.berth
    if not os.path.exists(compare.BERTH):
        raise SystemExit(f"missing {compare.BERTH}: see the docstring")
    compare.WORK = tempfile.mkdtemp(prefix="berth-ui-bench-")
    server = None
    try:
        server = compare.start_berth()
        names = tag_names(args.tags)
        t = time.time()
        fill(server, names, args.fill_threads)
        print(f"{args.tags} tags filled in {time.time() - t:.0f} s", file=sys.stderr)
        out = {"tags": args.tags, "target_p99_ms": 50}
        for order in ("version", "name"):
            measure(server, names, order, 20)  # warm the caches and the connection
            out[order] = measure(server, names, order, args.requests)
        push_layered_image(server, 50)
        image = "/ui/image?" + urllib.parse.urlencode({"repository": REPO, "reference": "fifty-layers"})
        measure_paths(server, [image] * 20, b'id="layers"')
        out["image_50_layers"] = measure_paths(server, [image] * args.requests, b'id="layers"')
        print(json.dumps(out, indent=2))
    finally:
        if server:
            server.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
