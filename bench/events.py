#!/usr/bin/env python3
"""What webhooks cost, in one run: the same Berth build three times over, each with its own
data directory, measured in alternating runs:

* `plain`: no webhooks;
* `pull-hook`: one webhook subscribed to pulls;
* `push-hooks`: three webhooks subscribed to pushes (and tag moves, rollbacks, deletes).

Figures: manifest GET (requests/s, `berth-load rps`) on `plain` and `pull-hook`; pushes of
small images (config, one 4 KiB layer, manifest by tag; images/s, `berth-load
push-images`) on `plain` and `push-hooks`. Every webhook delivers to a `berth-load receive`
on loopback, and after each run the script waits until the receiver has everything the run
caused, so the delivery work of one run does not spill into the next. Prints medians and
the ratios with/without.

    cargo build --release -p berth -p berth-bench
    python3 bench/events.py [--runs 5] [--seconds 5] [--images 300]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, Server, free_port, load, push_small_blob, put_manifest  # noqa: E402


def receiver():
    proc = subprocess.Popen([LOAD, "receive", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    addr = json.loads(proc.stdout.readline())["listening"]
    return proc, f"http://{addr}"


def received(url):
    _, _, body = compare.http("GET", url + "/count")
    return json.loads(body)["requests"]


def start(name, webhooks):
    work = os.path.join(compare.WORK, name)
    os.makedirs(work)
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write("[log]\nlevel = \"warn\"\n")
        for w in webhooks:
            f.write("[[webhook]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in w.items()))
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn")
    return Server(name, [BERTH, "serve", "--config", config, "--data-dir", os.path.join(work, "data"),
                         "--listen", f"127.0.0.1:{port}"], port, env=env)


def drain(url, expected, what, timeout=120):
    """Waits until the receiver has `expected` deliveries; returns how long that took."""
    t = time.time()
    while received(url) < expected:
        if time.time() - t > timeout:
            raise SystemExit(f"{what}: {received(url)} of {expected} deliveries after {timeout}s")
        time.sleep(0.05)
    return time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--push-concurrency", type=int, default=8)
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    compare.WORK = tempfile.mkdtemp(prefix="berth-events-bench-", dir="/var/tmp")
    rx, rx_url = receiver()
    servers = []
    try:
        hook = lambda name, events, fmt="distribution": {
            "name": name, "url": f"{rx_url}/{name}", "events": events, "format": fmt, "secret": "bench"}
        plain = start("plain", [])
        pull_hook = start("pull-hook", [hook("pulls", ["pull"])])
        push_hooks = start("push-hooks", [hook("a", ["push"]), hook("b", ["push", "tag_move"], "cloudevents"),
                                          hook("c", ["push", "delete"])])
        servers = [plain, pull_hook, push_hooks]
        cfg = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        for s in (plain, pull_hook):
            c = push_small_blob(s.base, "bench/app", cfg)
            layer = push_small_blob(s.base, "bench/app", os.urandom(4096))
            put_manifest(s.base, "bench/app", "v1", c, [layer])
        accept = "Accept: application/vnd.oci.image.manifest.v1+json"
        get = {"plain": [], "pull-hook": []}
        get_p99 = {"plain": [], "pull-hook": []}
        push = {"plain": [], "push-hooks": []}
        lag = []
        expected = 0
        for i in range(args.runs):
            for name in (["plain", "pull-hook"] if i % 2 == 0 else ["pull-hook", "plain"]):
                s = plain if name == "plain" else pull_hook
                r = load("rps", f"{s.base}/v2/bench/app/manifests/v1", "--connections", args.connections,
                         "--seconds", args.seconds, "--header", accept)
                if r["errors"]:
                    raise SystemExit(f"GET {name}: {r['errors']} failed requests")
                get[name].append(r["rps"])
                get_p99[name].append(r["p99_ms"])
                print(f"  run {i}: manifest GET, {name}: {r['rps']:.0f}/s ({r['requests']} requests)", file=sys.stderr)
                if name == "pull-hook":
                    # Pull deliveries are batched: wait until the queue is empty again.
                    time.sleep(1)
                    before = received(rx_url)
                    while True:
                        time.sleep(0.5)
                        now = received(rx_url)
                        if now == before:
                            break
                        before = now
                    expected = received(rx_url)
            for name in (["plain", "push-hooks"] if i % 2 == 0 else ["push-hooks", "plain"]):
                s = plain if name == "plain" else push_hooks
                r = load("push-images", s.base, f"bench/push{i}", "--images", args.images,
                         "--concurrency", args.push_concurrency, "--seed", 1000 * i + len(name))
                if r["errors"]:
                    raise SystemExit(f"push {name}: {r['errors']} failed images")
                push[name].append(r["images_per_s"])
                print(f"  run {i}: push, {name}: {r['images_per_s']:.1f} images/s", file=sys.stderr)
                if name == "push-hooks":
                    expected += 3 * args.images
                    lag.append(drain(rx_url, expected, "push deliveries"))
    finally:
        for s in servers:
            s.stop()
        rx.terminate()
        shutil.rmtree(compare.WORK, ignore_errors=True)
    med = statistics.median
    print(f"\n{'figure':<52} {'median':>10} {'ratio':>7}")
    print(f"{'manifest GET, no webhook (req/s)':<52} {med(get['plain']):>10.0f}")
    print(f"{'manifest GET, a pull webhook (req/s)':<52} {med(get['pull-hook']):>10.0f} "
          f"{med(get['pull-hook']) / med(get['plain']):>7.3f}")
    print(f"{'  p99 ms without / with':<52} {med(get_p99['plain']):>5.2f} / {med(get_p99['pull-hook']):.2f}")
    print(f"{'push of a small image, no webhook (images/s)':<52} {med(push['plain']):>10.1f}")
    print(f"{'push of a small image, three webhooks (images/s)':<52} {med(push['push-hooks']):>10.1f} "
          f"{med(push['push-hooks']) / med(push['plain']):>7.3f}")
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores; GET: {args.connections} connections, "
          f"{args.seconds}s; push: {args.images} images, {args.push_concurrency} at a time; deliveries had caught "
          f"up {med(lag):.2f}s (median) after each push run ended")


if __name__ == "__main__":
    main()
