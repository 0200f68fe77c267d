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

The audit page (--audit-rows, 1,000,000 by default) needs a user: a second Berth runs with
authentication on, its log is filled straight into the metadata store in bulk (SQLite, or
with --postgres URL a fresh schema in that PostgreSQL database, dropped after),
spread over 30 days, 200 users, 20 tenants, 2,000 repositories and 12 actions, and an
admin's session then asks for it filtered by each filter alone: one day (time), a user, a
tenant, a repository, an action (a common one, a rare one, and a family), --requests times
each with a random value, half of them at a page deeper in (an `before=` cursor taken from a
random matching row). --audit-rows 0 skips it; --tags 0 skips the repository and image.

The repository search (--repos, 100,000 by default, written straight into SQLite): a name
that matches one repository, one that matches all (its first page), and one that matches
none. --repos 0 skips it.

    cargo build --release -p berth
    python3 bench/ui.py [--tags 100000] [--audit-rows 1000000] [--repos 100000] [--requests 500]
                        [--fill-threads 8] [--berth PATH] [--postgres URL]

Filling pushes one manifest and PUTs it under every tag from --fill-threads keep-alive
connections; it is not timed.
"""

import argparse
import re
import sqlite3
import subprocess
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


AUDIT_ACTIONS = (
    # (action, weight): pulls dominate a real log; user changes are rare.
    ("manifest.pull", 60), ("blob.pull", 15), ("manifest.put", 8), ("blob.put", 5),
    ("tag.delete", 2), ("login.ok", 5), ("login.fail", 2), ("token.issue", 1),
    ("robot.create", 1), ("robot.rotate", 1), ("user.create", 0.05), ("user.disable", 0.05),
)
DAY = 86_400_000_000
AUDIT_END = 1_796_515_200 * 1_000_000  # 2026-12-05T00:00:00Z, in microseconds


def audit_rows(n):
    """`n` rows oldest first, as a replica writes them: times rising with the id."""
    rng = random.Random(24)
    actions = [a for a, _ in AUDIT_ACTIONS]
    weights = [w for _, w in AUDIT_ACTIONS]
    start = AUDIT_END - 30 * DAY
    step = 30 * DAY // max(n, 1)
    picks = rng.choices(actions, weights, k=n)
    for i in range(n):
        t = rng.randrange(20)
        repo = f"tenant-{t:02d}/app-{rng.randrange(100):03d}"
        yield (start + i * step, f"user-{rng.randrange(200):03d}", f"10.0.{t}.{rng.randrange(250)}",
               picks[i], f"tenant-{t:02d}", repo, "v1", "ok", None)


def fill_audit_sqlite(db, n):
    conn = sqlite3.connect(db, timeout=60)
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        conn.executemany(
            "INSERT INTO audit_log (at, actor, source, action, tenant, repository, target, outcome, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", audit_rows(n))
    conn.close()


def fill_audit_postgres(url, n):
    copy = subprocess.Popen(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c",
         "COPY audit_log (at, actor, source, action, tenant, repository, target, outcome, detail)"
         " FROM STDIN"],
        stdin=subprocess.PIPE, text=True)
    for r in audit_rows(n):
        copy.stdin.write("\t".join("\\N" if v is None else str(v) for v in r) + "\n")
    copy.stdin.close()
    if copy.wait() != 0:
        raise SystemExit("COPY into audit_log failed")
    subprocess.run(["psql", "-q", url, "-c", "ANALYZE audit_log"], check=True)


def psql_admin(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def ui_login(server, user, password):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/ui/login", headers={"Host": "127.0.0.1"})
    r = conn.getresponse()
    body = r.read().decode()
    pre = r.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    form = urllib.parse.urlencode({"user": user, "password": password, "csrf": token, "next": "/ui/audit"})
    conn.request("POST", "/ui/login", form, {"Host": "127.0.0.1", "Cookie": pre,
                                            "Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    if r.status != 303:
        raise SystemExit(f"login: {r.status}")
    conn.close()
    return [c for c in r.headers.get_all("Set-Cookie") if c.startswith("berth_session=")][0].split(";")[0]


def measure_audit(server, cookie, filters, requests, first_id):
    """p50/p99/max of `/ui/audit` under each filter; every answer must list entries. A
    filter gives the query and the ids its rows may have (for the deeper pages' cursors)."""
    rng = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    out = {}
    for name, pick in filters.items():
        times = []
        for i in range(requests + 10):
            q, (lo, hi) = pick(rng)
            if i % 2:
                q["before"] = str(first_id + rng.randrange(lo + (hi - lo) // 4, hi))
            path = "/ui/audit?" + urllib.parse.urlencode(q)
            start = time.perf_counter()
            conn.request("GET", path, headers={"Host": "127.0.0.1", "Cookie": cookie})
            r = conn.getresponse()
            body = r.read()
            if i >= 10:  # the first ten warm the caches
                times.append(time.perf_counter() - start)
            if r.status != 200 or b'id="audit"' not in body:
                raise SystemExit(f"{path}: {r.status} {body[:300]!r}")
        ts = sorted(times)
        out[name] = {
            "requests": len(ts),
            "p50_ms": round(statistics.median(ts) * 1000, 2),
            "p99_ms": round(ts[max(0, int(len(ts) * 0.99) - 1)] * 1000, 2),
            "max_ms": round(ts[-1] * 1000, 2),
        }
    conn.close()
    return out


def bench_audit(args):
    work = tempfile.mkdtemp(prefix="berth-ui-audit-bench-", dir="/var/tmp")
    compare.WORK = work
    password = "bench-password-24"
    data = os.path.join(work, "data")
    os.makedirs(data)
    config = os.path.join(work, "berth.toml")
    db_url = None
    if args.postgres:
        schema = f"berth_ui_bench_{os.getpid()}"
        psql_admin(args.postgres, f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.postgres else "?"
        db_url = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
    with open(config, "w") as f:
        f.write("[auth]\nenabled = true\n[log]\nlevel = \"warn\"\n")
        if db_url:
            f.write(f"[metadata]\nurl = \"{db_url}\"\n")
    env = dict(os.environ, BERTH_ADMIN_PASSWORD=password, RUST_LOG="warn")
    port = compare.free_port()
    server = compare.Server("berth", [compare.BERTH, "serve", "--config", config, "--data-dir", data,
                                      "--listen", f"127.0.0.1:{port}"], port, env)
    try:
        t = time.time()
        if db_url:
            fill_audit_postgres(db_url, args.audit_rows)
        else:
            fill_audit_sqlite(os.path.join(data, "berth.db"), args.audit_rows)
        print(f"{args.audit_rows} audit rows filled in {time.time() - t:.0f} s", file=sys.stderr)
        # The id of the first filled row: the rows Berth itself wrote at start come before.
        last_sql = "SELECT max(id) FROM audit_log"
        if db_url:
            last = subprocess.run(["psql", "-tA", db_url, "-c", last_sql], check=True,
                                  capture_output=True, text=True).stdout
        else:
            with sqlite3.connect(os.path.join(data, "berth.db")) as c:
                last = c.execute(last_sql).fetchone()[0]
        first_id = int(last) - args.audit_rows + 1
        cookie = ui_login(server, "admin", password)
        start_day = AUDIT_END - 30 * DAY

        n = args.audit_rows
        everywhere = (n // 2, n)

        def day(rng):
            k = rng.randrange(30)
            d = time.strftime("%Y-%m-%d", time.gmtime((start_day + k * DAY) / 1e6))
            return {"from": d, "to": d}, (k * n // 30, (k + 1) * n // 30)

        filters = {
            "time (one day)": day,
            "user": lambda rng: ({"user": f"user-{rng.randrange(200):03d}"}, everywhere),
            "tenant": lambda rng: ({"tenant": f"tenant-{rng.randrange(20):02d}"}, everywhere),
            "repository": lambda rng: (
                {"repository": f"tenant-{rng.randrange(20):02d}/app-{rng.randrange(100):03d}"}, everywhere),
            "action manifest.pull (60 %)": lambda rng: ({"action": "manifest.pull"}, everywhere),
            "action user.create (0.05 %)": lambda rng: ({"action": "user.create"}, everywhere),
            "action family login (7 %)": lambda rng: ({"action": "login"}, everywhere),
            "action family user (0.1 %)": lambda rng: ({"action": "user"}, everywhere),
        }
        return {"audit_rows": args.audit_rows, "metadata": "postgres" if db_url else "sqlite",
                "target_p99_ms": 50,
                "audit": measure_audit(server, cookie, filters, args.requests, first_id)}
    finally:
        server.stop()
        if db_url:
            psql_admin(args.postgres, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        shutil.rmtree(work, ignore_errors=True)


def bench_search(args):
    """`/ui/repositories?q=` over --repos repositories (written straight into SQLite: one
    manifest row each, which is all the listing reads), with authentication off."""
    compare.WORK = tempfile.mkdtemp(prefix="berth-ui-search-bench-", dir="/var/tmp")
    server = compare.start_berth()
    try:
        db = sqlite3.connect(os.path.join(compare.WORK, "berth-data", "berth.db"), timeout=60)
        with db:
            db.executemany("INSERT INTO repositories (id, name, created_at) VALUES (?, ?, 0)",
                           ((i + 1_000_000, f"team-{i % 50:02d}/svc-{i:06d}") for i in range(args.repos)))
            db.executemany(
                "INSERT INTO manifests (repo_id, digest, media_type, content, created_at)"
                " VALUES (?, 'sha256:' || printf('%064d', 0), ?, x'7b7d', 0)",
                ((i + 1_000_000, OCI_MANIFEST) for i in range(args.repos)))
        db.close()
        rng = random.Random(5)
        needles = {
            "one match (svc-0XXXXX)": lambda: f"svc-{rng.randrange(args.repos):06d}",
            "every name (svc), first page": lambda: "svc",
            "no match": lambda: "nothing-here",
        }
        out = {"repositories": args.repos}
        for name, pick in needles.items():
            paths = ["/ui/repositories?" + urllib.parse.urlencode({"q": pick()}) for _ in range(args.requests)]
            measure_paths(server, paths[:10], b"<main")
            out[name] = measure_paths(server, paths, b"<main")
        return out
    finally:
        server.stop()
        shutil.rmtree(compare.WORK, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--audit-rows", type=int, default=1_000_000)
    ap.add_argument("--repos", type=int, default=100_000)
    ap.add_argument("--postgres", help="a PostgreSQL URL: the audit log lives in a fresh schema of its database")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--fill-threads", type=int, default=8)
    ap.add_argument("--berth", default=compare.BERTH, help="the berth binary (default: the release build)")
    args = ap.parse_args()
    compare.BERTH = args.berth
    if not os.path.exists(compare.BERTH):
        raise SystemExit(f"missing {compare.BERTH}: see the docstring")
    if args.audit_rows:
        print(json.dumps(bench_audit(args), indent=2))
    if args.repos:
        print(json.dumps(bench_search(args), indent=2))
    if not args.tags:
        return
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
