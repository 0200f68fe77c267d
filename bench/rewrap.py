#!/usr/bin/env python3
"""How long `berth keys rewrap` takes for many blobs (issue #23: 100,000 under 30 s).

Seeds `blob_keys` in bulk with data keys wrapped by key `k1` exactly as Berth wraps them
(AES-256-GCM, random nonce, associated data `berth-wrap-v1 \\0 <key id> \\0 <digest>`), so
every row opens; then `berth keys rotate --to k2` and times `berth keys rewrap`, and checks
with `berth keys status --json` that nothing is left under k1. The blobs' bytes are not
needed: a rewrap changes only the wraps.

    cargo build --release -p berth
    python3 bench/rewrap.py [--blobs 100000] [--postgres postgres://berth:berth@127.0.0.1:5432/berth_test]

Needs python3-cryptography; for PostgreSQL, psql (the rows go in with COPY, in a schema
of their own that is dropped afterwards).
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = os.path.dirname(os.path.abspath(__file__))
BERTH = os.environ.get("BERTH_BIN", os.path.join(HERE, "..", "target", "release", "berth"))


def wrap(kek, key_id, digest, raw):
    nonce = os.urandom(12)
    aad = b"berth-wrap-v1\0" + key_id.encode() + b"\0" + digest.encode()
    return nonce + AESGCM(kek).encrypt(nonce, raw, aad)


def rows(n, kek):
    for i in range(n):
        digest = "sha256:" + hashlib.sha256(f"rewrap-bench-{i}".encode()).hexdigest()
        yield digest, wrap(kek, "k1", digest, os.urandom(32))


def berth(base, *args):
    out = subprocess.run([BERTH, *args, *base], check=True, capture_output=True, text=True)
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=100_000)
    ap.add_argument("--postgres", help="a PostgreSQL URL (default: SQLite in a temporary data directory)")
    args = ap.parse_args()
    if not os.path.exists(BERTH):
        raise SystemExit(f"missing {BERTH}: see the docstring (or set BERTH_BIN)")
    work = tempfile.mkdtemp(prefix="berth-rewrap-bench-", dir="/var/tmp")
    schema = None
    try:
        keks = {}
        config = os.path.join(work, "berth.toml")
        with open(config, "w") as f:
            f.write('[log]\nlevel = "warn"\n[encryption]\nactive = "k1"\n')
            for kid in ("k1", "k2"):
                keks[kid] = os.urandom(32)
                path = os.path.join(work, kid)
                with open(path, "w") as k:
                    k.write(keks[kid].hex())
                f.write(f'[[encryption.key]]\nid = "{kid}"\nfile = {json.dumps(path)}\n')
        base = ["--config", config, "--data-dir", os.path.join(work, "data")]
        if args.postgres:
            schema = f"rewrap_bench_{os.getpid()}"
            subprocess.run(["psql", args.postgres, "-qc", f"CREATE SCHEMA {schema}"], check=True)
            sep = "&" if "?" in args.postgres else "?"
            url = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
            base += ["--metadata-url", url]
        # Creates the schema (migrations) and records k1's check value.
        berth(base, "keys", "status", "--json")
        t = time.monotonic()
        now = int(time.time() * 1_000_000)
        if args.postgres:
            buf = io.StringIO()
            for digest, w in rows(args.blobs, keks["k1"]):
                buf.write(f"{digest}\tk1\t\\\\x{w.hex()}\tsealed2\t{now}\n")
            subprocess.run(
                ["psql", args.postgres, "-qc",
                 f"SET search_path = {schema}; COPY blob_keys (digest, key_id, wrapped, state, updated_at) FROM STDIN"],
                input=buf.getvalue(), text=True, check=True)
        else:
            import sqlite3
            db = sqlite3.connect(os.path.join(work, "data", "berth.db"))
            db.executemany(
                "INSERT INTO blob_keys (digest, key_id, wrapped, state, updated_at) VALUES (?, 'k1', ?, 'sealed2', ?)",
                ((d, w, now) for d, w in rows(args.blobs, keks["k1"])))
            db.commit()
            db.close()
        print(f"seeded {args.blobs} data keys in {time.monotonic() - t:.1f} s", file=sys.stderr)
        berth(base, "keys", "rotate", "--to", "k2")
        t = time.monotonic()
        out = berth(base, "keys", "rewrap")
        took = time.monotonic() - t
        status = berth(base, "keys", "status", "--json")
        print(out.strip(), file=sys.stderr)
        print(status.strip(), file=sys.stderr)
        backend = "postgresql" if args.postgres else "sqlite"
        print(json.dumps({"backend": backend, "blobs": args.blobs, "rewrap_seconds": round(took, 2)}))
    finally:
        if schema:
            subprocess.run(["psql", args.postgres, "-qc", f"SET client_min_messages = warning; DROP SCHEMA {schema} CASCADE"], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
