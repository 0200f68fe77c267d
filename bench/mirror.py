#!/usr/bin/env python3
"""The pull-through cache: an upstream Berth and a cache Berth in front of it (as
`docker.io`), both release binaries on loopback, measured alternately:

  (a) cold pull through the cache vs the same pull directly from the upstream (a new
      image upstream for every run, so the cache has never seen its blobs): the cache's
      overhead on a miss;
  (b) warm pull from the cache vs a pull of the same image pushed to the cache as an
      ordinary repository: what serving cached content costs;
  (c) time to the first body byte of a cold large blob through the cache vs the time of
      the whole blob: the cache streams instead of downloading first.

Pulls use `berth-load pull` (one client, manifest then each blob in turn), so they measure
the servers, not a client's unpacking.

    cargo build --release -p berth -p berth-bench
    python3 bench/mirror.py [--runs 5] [--size-mib 64] [--ttfb-mib 256] [--throttle-mibps 50]

With --throttle-mibps, everything that reaches the upstream (the cache's fetches and the
direct pulls alike) goes through a small TCP relay in this script that passes at most that
many MiB/s from the upstream to its clients, all connections sharing the budget like one
network link: (a) then compares the two over the same link, as a cluster pulling from the
internet would see it, instead of against an upstream reading from the page cache.
"""

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, Server, free_port, load, push_small_blob, put_manifest  # noqa: E402

CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def start(name, config_text):
    config = os.path.join(compare.WORK, f"{name}.toml")
    with open(config, "w") as f:
        f.write(config_text)
    port = free_port()
    data = os.path.join(compare.WORK, f"{name}-data")
    env = dict(os.environ, RUST_LOG="warn")
    return Server(name, [BERTH, "serve", "--config", config, "--data-dir", data,
                         "--listen", f"127.0.0.1:{port}"], port, env=env)


def push_image(server, repo, size, seed):
    """An image with one random layer of `size` bytes (and a unique config); its layer digest."""
    layer = load("push", server.base, repo, "--size", size, "--seed", seed)
    config = push_small_blob(server.base, repo, CONFIG[:-1] + f', "seed": {seed}}}'.encode())
    put_manifest(server.base, repo, "v1", config, [(layer["digest"], size)])
    return layer["digest"]


def pull(server, repo):
    r = load("pull", server.base, repo, "v1", "--concurrency", 1, "--rounds", 1)
    return r["seconds"]


class Throttle:
    """A TCP relay to 127.0.0.1:`target` on a free port: client -> upstream unthrottled,
    upstream -> client at most `mibps` MiB/s across all connections (a shared token
    bucket, refilled continuously)."""

    def __init__(self, target, mibps):
        self.target, self.rate = target, mibps * (1 << 20)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.tokens, self.last = 0.0, time.monotonic()
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.lock = asyncio.Lock()
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _spend(self, n):
        async with self.lock:
            while True:
                now = time.monotonic()
                # At most 50 ms of burst: a link does not save up bandwidth.
                self.tokens = min(self.tokens + (now - self.last) * self.rate, self.rate * 0.05)
                self.last = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)

    async def _pipe(self, reader, writer, throttled):
        try:
            while True:
                data = await reader.read(64 << 10)
                if not data:
                    break
                if throttled:
                    await self._spend(len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _conn(self, creader, cwriter):
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(self._pipe(creader, uwriter, False), self._pipe(ureader, cwriter, True))


class Via:
    """The upstream as reached through a relay: same server, another port."""

    def __init__(self, server, relay):
        self.name, self.port, self.base = server.name, relay.port, relay.base


def timed_get(port, path, digest):
    """(seconds to the first body byte, seconds to the last) of a raw HTTP/1.1 GET; the
    body must hash to `digest`."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        started = time.perf_counter()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise SystemExit(f"GET {path}: connection closed in the headers")
            head += chunk
        head, body = head.split(b"\r\n\r\n", 1)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise SystemExit(f"GET {path}: {head.decode(errors='replace')}")
        if b"chunked" in head.lower():
            raise SystemExit("chunked blob responses are not handled by this client")
        while not body:
            body = s.recv(1 << 20)
        first = time.perf_counter() - started
        h = hashlib.sha256(body)
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
        total = time.perf_counter() - started
    finally:
        s.close()
    if "sha256:" + h.hexdigest() != digest:
        raise SystemExit(f"GET {path}: the body does not hash to {digest}")
    return first, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=64, help="layer size of the pulled image")
    ap.add_argument("--ttfb-mib", type=int, default=256, help="size of the blob for time to first byte")
    ap.add_argument("--throttle-mibps", type=float, default=0,
                    help="limit upstream -> client bandwidth (MiB/s) for everything reaching the upstream")
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    compare.WORK = tempfile.mkdtemp(prefix="berth-mirror-bench-", dir="/var/tmp")
    size, big = args.size_mib << 20, args.ttfb_mib << 20
    upstream = cache = None
    results = {}
    try:
        upstream = start("upstream", '[log]\nlevel = "warn"\n')
        # What clients of the upstream reach: the upstream itself, or a throttled link to it.
        remote = Via(upstream, Throttle(upstream.port, args.throttle_mibps)) if args.throttle_mibps else upstream
        cache = start("cache", f'[log]\nlevel = "warn"\n\n[[upstream]]\nname = "docker.io"\n'
                               f'url = "{remote.base}"\n')
        seed = iter(range(1000, 100_000))

        def record(key, value):
            results.setdefault(key, []).append(value)

        # (a) Each run gets its own image upstream: the cache has never seen its blobs.
        for i in range(args.runs):
            repo = f"library/cold{i}"
            push_image(upstream, repo, size, next(seed))
            order = ["cache", "direct"] if i % 2 == 0 else ["direct", "cache"]
            for side in order:
                if side == "cache":
                    record("cold via cache", pull(cache, f"docker.io/{repo}"))
                else:
                    record("cold direct", pull(remote, repo))
            print(f"  cold run {i}: cache {results['cold via cache'][-1]:.3f}s, "
                  f"direct {results['cold direct'][-1]:.3f}s", file=sys.stderr)

        # (b) The same image cached and pushed locally: both served from the cache's disk.
        warm_seed = next(seed)
        push_image(upstream, "library/warm", size, warm_seed)
        pull(cache, "docker.io/library/warm")
        push_image(cache, "bench/local", size, warm_seed)
        for i in range(args.runs):
            order = ["cached", "local"] if i % 2 == 0 else ["local", "cached"]
            for side in order:
                if side == "cached":
                    record("warm from cache", pull(cache, "docker.io/library/warm"))
                else:
                    record("local repository", pull(cache, "bench/local"))

        # (c) A new large blob upstream per run, fetched once through the cache, once directly.
        for i in range(args.runs):
            repo = f"library/big{i}"
            digest = push_image(upstream, repo, big, next(seed))
            first, total = timed_get(cache.port, f"/v2/docker.io/{repo}/blobs/{digest}", digest)
            record("ttfb via cache", first)
            record("whole blob via cache", total)
            _, direct = timed_get(remote.port, f"/v2/{repo}/blobs/{digest}", digest)
            record("whole blob direct", direct)
            print(f"  big run {i}: first byte {first * 1000:.1f} ms, whole {total:.3f}s, "
                  f"direct {direct:.3f}s", file=sys.stderr)
    finally:
        for s in (cache, upstream):
            if s:
                s.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)

    m = {k: statistics.median(v) for k, v in results.items()}
    rows = [
        (f"(a) cold pull of a {args.size_mib} MiB image (s)", m["cold via cache"], m["cold direct"],
         "cache / direct", "<= 1.10"),
        (f"(b) warm pull of a {args.size_mib} MiB image (s)", m["warm from cache"], m["local repository"],
         "cached / local", "~ 1.0"),
        (f"(c) cold {args.ttfb_mib} MiB blob: first byte vs whole (s)", m["ttfb via cache"],
         m["whole blob via cache"], "first / whole", "<< 1"),
    ]
    print(f"\n{'figure':<46} {'A':>9} {'B':>9} {'ratio':>7}  {'A / B':<15} target")
    for name, a, b, label, target in rows:
        print(f"{name:<46} {a:>9.3f} {b:>9.3f} {a / b:>7.3f}  {label:<15} {target}")
    print(f"{'(c) same blob directly from the upstream (s)':<46} {m['whole blob direct']:>9.3f}")
    link = f"upstream link throttled to {args.throttle_mibps:g} MiB/s" if args.throttle_mibps else "upstream on loopback, unthrottled"
    print(f"\nmedian of {args.runs} runs, alternating; {os.cpu_count()} cores; {link}; "
          f"berth-load pull with one client; raw HTTP/1.1 GET for (c)")


if __name__ == "__main__":
    main()
