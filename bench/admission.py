#!/usr/bin/env python3
"""What the admission webhooks cost. The issue asks p99 < 5 ms at 1,000 reviews/s for a
Deployment with three containers whose images Berth holds, every rule on, in one run.

Two Berths, open mode: an "upstream" holding `library/nginx:1.27` and its cosign
signature, and the registry under test with that upstream as `docker.io` (pull-through
cache), a cosign key trusted for `team-a/*` and `docker.io/library/*`, two signed images
of its own (`team-a/app:1.0`, `team-a/side:2.0`), the nginx image and its `.sig` pulled
through the cache once, and every admission rule enforcing in `team-*`: refuse-latest,
allowed-registries, signature, mirror, pin (templates too), pull-policy, pull-secret.
The webhooks listen on HTTPS with a certificate of a CA made here with openssl; the load
client trusts only that CA and keeps its connections (as the API server does).

The Deployment names `registry.example.com/team-a/app:1.0`, `.../team-a/side:2.0` and
`nginx:1.27`. `/mutate` is sent that CREATE (the answer: all three pinned, nginx mirrored,
pull policy and pull secret added); `/validate` is sent the object the mutation made
(every image signed, pinned, from an allowed registry: allowed). Each is paced at --rps
for --seconds after a warm-up, open loop (latency counts from when a request was due).

    cargo build --release -p berth -p berth-bench
    python3 bench/admission.py [--rps 1000] [--seconds 10]
"""

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import BERTH, LOAD, OCI_MANIFEST, Server, free_port, load, push_small_blob  # noqa: E402
from signatures import put, signature  # noqa: E402

HOST = "registry.example.com"


def image(base, repo, tag, seed):
    cfg = push_small_blob(base, repo, json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode())
    layer = push_small_blob(base, repo, f"a layer of {repo}:{tag}".encode())
    return put(base, repo, tag, {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg[0], "size": cfg[1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer[0], "size": layer[1]}],
    })


def pki(work):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=work)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "2", "-subj", "/CN=Berth admission bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "ca.key", "-out", "ca.crt")
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "hook.key")
    run("openssl", "req", "-new", "-subj", "/CN=127.0.0.1", "-key", "hook.key", "-out", "hook.csr")
    with open(os.path.join(work, "hook.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-days", "2", "-in", "hook.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-extfile", "hook.ext", "-out", "hook.crt")
    return tuple(os.path.join(work, n) for n in ("ca.crt", "hook.crt", "hook.key"))


RULES = [
    ("no-latest", "refuse-latest", ""),
    ("registries", "allowed-registries", f'registries = ["{HOST}", "docker.io"]\n'),
    ("signed", "signature", ""),
    ("mirror", "mirror", ""),
    ("pin", "pin", "templates = true\n"),
    ("pull-policy", "pull-policy", 'pull_policy = "IfNotPresent"\n'),
    ("pull-secret", "pull-secret", 'secret = "team-a-pull"\n'),
]


def deployment(images):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]}}}}


def review(obj, uid):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "namespace": "team-a", "operation": "CREATE", "object": obj, "oldObject": None, "dryRun": False,
        "userInfo": {"username": "bench"}}}


def post(url, body, ca):
    import ssl
    ctx = ssl.create_default_context(cafile=ca)
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.loads(r.read())["response"]


def apply(obj, patch):
    """The few ops the webhook sends (replace/add by path), enough to build the next body."""
    obj = json.loads(json.dumps(obj))
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = obj
        for p in parts[:-1]:
            target = target[int(p)] if isinstance(target, list) else target[p]
        last = parts[-1]
        if isinstance(target, list):
            target.append(op["value"]) if last == "-" else target.__setitem__(int(last), op["value"])
        else:
            target[last] = op["value"]
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rps", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--extra-config", default="",
                    help="TOML appended to the registry's berth.toml (e.g. '[cache]\\nttl_ms = 3600000')")
    args = ap.parse_args()
    for tool in (BERTH, LOAD):
        if not os.path.exists(tool):
            raise SystemExit(f"missing {tool}: see the docstring")
    work = tempfile.mkdtemp(prefix="berth-admission-bench-", dir="/var/tmp")
    compare.WORK = work
    key = os.path.join(work, "cosign.key")
    pub = os.path.join(work, "cosign.pub")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    subprocess.run(["openssl", "ec", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
    ca, cert, hkey = pki(work)
    servers = []
    try:
        up_port = free_port()
        up_data = os.path.join(work, "up-data")
        os.makedirs(up_data)
        up = Server("upstream", [BERTH, "serve", "--data-dir", up_data, "--listen", f"127.0.0.1:{up_port}"],
                    up_port, env=dict(os.environ, RUST_LOG="warn"))
        servers.append(up)
        nginx = image(up.base, "library/nginx", "1.27", 0)
        signature(up.base, "library/nginx", nginx, key, work, 0)

        hook_port = free_port()
        rules = "".join(f'\n[[admission.rule]]\nname = "{n}"\nnamespaces = ["team-*"]\nkind = "{k}"\n'
                        f'mode = "enforce"\n{extra}' for n, k, extra in RULES)
        config = os.path.join(work, "berth.toml")
        with open(config, "w") as f:
            f.write(f"""[log]
level = "warn"

[[upstream]]
name = "docker.io"
url = "{up.base}"

[[trust]]
name = "ci"
repositories = ["team-a/*", "docker.io/library/*"]
[[trust.cosign]]
name = "bench"
key_file = "{pub}"
algorithm = "ecdsa-p256"

[admission]
listen = "127.0.0.1:{hook_port}"
cert_file = "{cert}"
key_file = "{hkey}"
registry = "{HOST}"
{rules}
{args.extra_config.replace(chr(92) + 'n', chr(10))}
""")
        port = free_port()
        data = os.path.join(work, "data")
        os.makedirs(data)
        berth = Server("berth", [BERTH, "serve", "--config", config, "--data-dir", data,
                                 "--listen", f"127.0.0.1:{port}"], port, env=dict(os.environ, RUST_LOG="warn"))
        servers.append(berth)
        base = berth.base
        app = image(base, "team-a/app", "1.0", 1)
        side = image(base, "team-a/side", "2.0", 2)
        signature(base, "team-a/app", app, key, work, 0)
        signature(base, "team-a/side", side, key, work, 0)
        # nginx and its signature, through the cache, as nodes pulling it would leave them.
        # (The signature's payload layer too: verdicts read stored blobs only.)
        cache = f"{base}/v2/docker.io/library/nginx"
        compare.http("GET", f"{cache}/manifests/1.27", headers={"Accept": OCI_MANIFEST})
        _, _, sig = compare.http("GET", f"{cache}/manifests/sha256-{nginx[7:]}.sig", headers={"Accept": OCI_MANIFEST})
        for layer in json.loads(sig)["layers"]:
            compare.http("GET", f"{cache}/blobs/{layer['digest']}")

        hook = f"https://127.0.0.1:{hook_port}"
        deadline = time.time() + 20
        created = review(deployment([f"{HOST}/team-a/app:1.0", f"{HOST}/team-a/side:2.0", "nginx:1.27"]), "bench-1")
        while True:
            try:
                resp = post(f"{hook}/mutate", json.dumps(created).encode(), ca)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        patch = json.loads(base64.b64decode(resp["patch"]))
        mutated = apply(created["request"]["object"], patch)
        images = [c["image"] for c in mutated["spec"]["template"]["spec"]["containers"]]
        expect = [f"{HOST}/team-a/app:1.0@{app}", f"{HOST}/team-a/side:2.0@{side}",
                  f"{HOST}/docker.io/library/nginx:1.27@{nginx}"]
        if images != expect or mutated["spec"]["template"]["spec"].get("imagePullSecrets") != [{"name": "team-a-pull"}]:
            raise SystemExit(f"unexpected mutation: {patch}")
        validated = review(mutated, "bench-2")
        v = post(f"{hook}/validate", json.dumps(validated).encode(), ca)
        if not v["allowed"]:
            raise SystemExit(f"the mutated Deployment was refused: {v}")

        # The floor: a review no rule looks at (a ConfigMap), answered without any lookup:
        # what HTTPS, JSON and this machine cost by themselves.
        floor = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "bench-0", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "namespace": "team-a", "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}}}
        results = {}
        for name, body in (("floor", floor), ("mutate", created), ("validate", validated)):
            path = os.path.join(work, f"{name}.json")
            with open(path, "w") as f:
                json.dump(body, f)
            cpu0 = berth.cpu_seconds()
            target = "validate" if name == "floor" else name
            r = load("rate", f"{hook}/{target}", "--body", path, "--rps", args.rps, "--seconds", args.seconds,
                     "--warmup", args.warmup, "--ca", ca)
            r["server_cpu_s"] = berth.cpu_seconds() - cpu0
            results[name] = r
            print(f"  {name}: {r}", file=sys.stderr)
        rss = berth.peak_rss_mib()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'webhook':<10} {'target/s':>9} {'achieved/s':>11} {'requests':>9} {'errors':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'server CPU s':>13}")
    for name, r in results.items():
        print(f"{name:<10} {r['target_rps']:>9.0f} {r['achieved_rps']:>11.0f} {r['requests']:>9} {r['errors']:>7} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['p999_ms']:>9.2f} {r['max_ms']:>8.2f} "
              f"{r['server_cpu_s']:>13.1f}")
    ok = all(r["p99_ms"] < 5.0 and r["errors"] == 0 for n, r in results.items() if n != "floor")
    print(f"\n{os.cpu_count()} cores; {args.seconds}s measured after {args.warmup}s warm-up per webhook; "
          f"HTTPS, kept connections; peak RSS {rss:.0f} MiB; target p99 < 5 ms: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
