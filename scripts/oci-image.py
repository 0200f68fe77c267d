#!/usr/bin/env python3
"""Berth's container image, written as an OCI image layout without Docker, reproducibly.

    scripts/oci-image.py --binary target/release/berth --out target/image/berth \
        [--debs DIR] [--offline] [--tag TAG] [--source URL] [--revision REV]
    scripts/oci-image.py --fetch-debs --debs DIR

The image holds the `berth` binary, the shared libraries it links (glibc and libgcc_s,
found with ldd and taken from the Debian packages of the versions installed on the build
host, which the binary was linked against), the Mozilla CA bundle from Debian's
ca-certificates, the packages' copyright files, and an /etc/passwd and /etc/group with the
non-root user `berth` (65532) it runs as. Nothing else: no shell, no package manager.

Two layers: the Debian files and /etc (changing only with a Debian update), then the
binary. Every tar entry has the same owner (root, or berth for its data directory), a
normalised mode and the modification time SOURCE_DATE_EPOCH (default: the commit time of
HEAD); entries are sorted; gzip stores no name and no time; the JSON is written with sorted
keys. So the same binary and .deb files give the same image digest, whatever directory,
umask or clock the build runs with. (gzip's output depends on the zlib version: build on
the same Debian release to compare digests across machines.)

The last line on standard output is the manifest digest; everything else goes to stderr.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

UID = 65532  # berth-k8s's RUN_AS_UID: the pods' runAsUser and fsGroup
DATA_DIR = "var/lib/berth"
BINARY_PATH = "usr/local/bin/berth"
PORT = 5000
# The Debian packages the image takes files from. gcc-12-base only for its copyright
# file, which libgcc-s1's documentation directory links to.
PACKAGES = ["libc6", "libgcc-s1", "gcc-12-base", "ca-certificates"]
# gzip -6: level 9 took five times as long for 1% less (measured on the binary).
GZIP_LEVEL = 6

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg):
    print(f"[oci-image] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(1)


def run(args, **kw):
    try:
        return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout
    except FileNotFoundError:
        die(f"{args[0]} is not installed")
    except subprocess.CalledProcessError as e:
        die(f"{' '.join(map(str, args))} failed ({e.returncode}): {e.stderr.strip()}")


REPO = Path(__file__).resolve().parent.parent


def git(*args):
    return run(["git", "-C", str(REPO), *args]).strip()


# ---- Debian packages ----

def installed_version(pkg):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def deb_field(deb, field):
    return run(["dpkg-deb", "-f", str(deb), field]).strip()


def find_deb(debs, pkg, version):
    """The .deb of `pkg` in `debs`: of `version` if given and present, else the only one."""
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    found = [d for d in found if deb_field(d, "Package") == pkg]
    if version:
        exact = [d for d in found if deb_field(d, "Version") == version]
        if exact:
            return exact[0]
    if len(found) == 1:
        return found[0]
    return None


def fetch_debs(debs, offline):
    """One .deb per package: the installed version (what the binary was linked
    against), or the archive's candidate when that version can no longer be had."""
    debs.mkdir(parents=True, exist_ok=True)
    paths = {}
    for pkg in PACKAGES:
        version = installed_version(pkg)
        deb = find_deb(debs, pkg, version)
        if deb is None or (version and deb_field(deb, "Version") != version and not offline):
            if offline:
                die(f"no {pkg} .deb in {debs} (--offline); fetch them with "
                    f"`scripts/oci-image.py --fetch-debs --debs {debs}`")
            apt = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"]
            wanted = f"{pkg}={version}" if version else pkg
            log(f"downloading {wanted} into {debs}")
            got = subprocess.run(apt + [wanted], cwd=debs, capture_output=True, text=True)
            if got.returncode != 0 and version:
                log(f"{wanted} is not in the archive any more; taking the candidate")
                got = subprocess.run(apt + [pkg], cwd=debs, capture_output=True, text=True)
            if got.returncode != 0:
                die(f"apt-get download {pkg} failed: {got.stderr.strip()}")
            deb = find_deb(debs, pkg, version) or find_deb(debs, pkg, None)
            if deb is None:
                die(f"apt-get download {pkg} left no single .deb in {debs}")
        paths[pkg] = deb
    return paths


# ---- what goes into the image ----

class Entry:
    """One tar entry: a directory, a regular file (bytes or a file on disk) or a symlink."""

    def __init__(self, path, kind, mode, uid=0, data=None, src=None, target=None):
        self.path, self.kind, self.mode, self.uid = path, kind, mode, uid
        self.data, self.src, self.target = data, src, target


def file_mode(path):
    """0755 for anything executable, 0644 otherwise: modes do not depend on the umask
    or the tool that unpacked the package."""
    return 0o755 if os.stat(path).st_mode & 0o111 else 0o644


def needed_libraries(binary):
    """(path or soname, is the interpreter) for every library `ldd` says the binary loads."""
    out = run(["ldd", str(binary)])
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("linux-vdso") or "statically linked" in line:
            continue
        m = re.match(r"^(\S+) => (\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append((m.group(1), False))
            continue
        m = re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append((m.group(1), True))
            continue
        die(f"cannot read this ldd line: {line!r}")
    return libs


def add_from_package(entries, roots, rel):
    """Adds `rel` (a path inside the packages) and, for a symlink, what it points to."""
    for root in roots.values():
        p = root / rel
        if p.is_symlink():
            target = os.readlink(p)
            entries[rel] = Entry(rel, "symlink", 0o777, target=target)
            resolved = (Path("/") / rel).parent / target if not target.startswith("/") else Path(target)
            add_from_package(entries, roots, os.path.normpath(resolved).lstrip("/"))
            return
        if p.is_file():
            entries[rel] = Entry(rel, "file", file_mode(p), src=p)
            return
    die(f"{rel} is in none of the packages {', '.join(roots)}")


def library_entries(binary, roots):
    entries = {}
    for name, interpreter in needed_libraries(binary):
        if interpreter:
            add_from_package(entries, roots, name.lstrip("/"))
            continue
        candidates = sorted(
            str(p.relative_to(root))
            for root in roots.values()
            for p in root.glob(f"**/{name}")
            if re.match(r"^(usr/)?lib(64|32)?/", str(p.relative_to(root)))
        )
        if not candidates:
            die(f"{name} (needed by the binary) is in none of {', '.join(roots)}")
        add_from_package(entries, roots, candidates[0])
    return entries


def ca_bundle(root):
    """The CA bundle update-ca-certificates would write from the packaged Mozilla roots,
    in a fixed order."""
    certs = sorted((root / "usr/share/ca-certificates/mozilla").glob("*.crt"))
    if len(certs) < 50:
        die(f"only {len(certs)} CA certificates in ca-certificates")
    out = b""
    for c in certs:
        pem = c.read_bytes()
        out += pem if pem.endswith(b"\n") else pem + b"\n"
    return out


def base_entries(binary, roots):
    entries = library_entries(binary, roots)
    text = lambda s: s.encode()
    entries["etc/passwd"] = Entry("etc/passwd", "file", 0o644, data=text(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"berth:x:{UID}:{UID}:Berth:/{DATA_DIR}:/usr/sbin/nologin\n"))
    entries["etc/group"] = Entry("etc/group", "file", 0o644, data=text(
        f"root:x:0:\nberth:x:{UID}:\n"))
    entries["etc/nsswitch.conf"] = Entry("etc/nsswitch.conf", "file", 0o644, data=text(
        "passwd: files\ngroup: files\nhosts: files dns\n"))
    entries["etc/ssl/certs/ca-certificates.crt"] = Entry(
        "etc/ssl/certs/ca-certificates.crt", "file", 0o644,
        data=ca_bundle(roots["ca-certificates"]))
    # The configuration's mount point, the data directory (owned by berth: writable
    # without a volume too), and a world-writable /tmp as on any Linux system.
    entries["etc/berth"] = Entry("etc/berth", "dir", 0o755)
    entries[DATA_DIR] = Entry(DATA_DIR, "dir", 0o750, uid=UID)
    entries["tmp"] = Entry("tmp", "dir", 0o1777)
    # Licences of what is redistributed.
    for pkg, root in roots.items():
        doc = root / "usr/share/doc" / pkg
        rel = f"usr/share/doc/{pkg}"
        if doc.is_symlink():
            entries[rel] = Entry(rel, "symlink", 0o777, target=os.readlink(doc))
        elif (doc / "copyright").is_file():
            entries[f"{rel}/copyright"] = Entry(f"{rel}/copyright", "file", 0o644,
                                                src=doc / "copyright")
    return entries


def with_parents(entries):
    """Every parent directory as its own entry (root-owned, 0755), sorted by path."""
    out = dict(entries)
    for path in list(entries):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            out.setdefault(d, Entry(d, "dir", 0o755))
    return [out[p] for p in sorted(out)]


# ---- writing the layout ----

class Hashing:
    """A write-only stream that hashes and counts what passes through to `inner`."""

    def __init__(self, inner):
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        return self.inner.write(b)

    def flush(self):
        pass


def blob_path(layout, digest):
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def write_blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_layer(layout, entries, epoch):
    """A gzip-compressed tar of `entries`; returns its descriptor and diff id."""
    partial = layout / "blobs" / "layer.partial"
    with open(partial, "wb") as f:
        compressed = Hashing(f)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed,
                           compresslevel=GZIP_LEVEL, mtime=0) as gz:
            plain = Hashing(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for e in entries:
                    ti = tarfile.TarInfo(e.path)
                    ti.mtime = epoch
                    ti.mode = e.mode
                    ti.uid = ti.gid = e.uid
                    ti.uname = ti.gname = ""
                    if e.kind == "dir":
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif e.kind == "symlink":
                        ti.type = tarfile.SYMTYPE
                        ti.linkname = e.target
                        tar.addfile(ti)
                    elif e.data is not None:
                        ti.size = len(e.data)
                        tar.addfile(ti, io.BytesIO(e.data))
                    else:
                        ti.size = e.src.stat().st_size
                        with open(e.src, "rb") as src:
                            tar.addfile(ti, src)
    digest = "sha256:" + compressed.sha.hexdigest()
    os.replace(partial, blob_path(layout, digest))
    return ({"mediaType": OCI_LAYER, "digest": digest, "size": compressed.size},
            "sha256:" + plain.sha.hexdigest(), plain.size)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(args):
    binary = Path(args.binary)
    if not binary.is_file():
        die(f"no binary at {binary}")
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct")
    try:
        epoch = int(epoch_text)
    except ValueError:
        die(f"SOURCE_DATE_EPOCH {epoch_text!r} is not a number of seconds")
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    revision = args.revision or git("rev-parse", "HEAD")
    source = args.source
    if source is None:
        got = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"],
                             capture_output=True, text=True)
        source = got.stdout.strip() if got.returncode == 0 else ""
        if not source:
            log("warning: no --source and no git remote `origin`: "
                "org.opencontainers.image.source is left out")
    version_line = run([str(binary), "--version"]).strip()
    m = re.fullmatch(r"berth (\S+)", version_line)
    if not m:
        die(f"{binary} --version printed {version_line!r}, not `berth <version>`")
    version = m.group(1)
    tag = args.tag or version
    arch = run(["dpkg", "--print-architecture"]).strip()

    debs = fetch_debs(Path(args.debs), args.offline)
    out = Path(args.out)
    if out.exists() and not (out / "oci-layout").is_file() and any(out.iterdir()):
        die(f"{out} exists and is not an OCI image layout; not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside the output, so the finished layout is renamed into place.
    work = Path(tempfile.mkdtemp(prefix=".berth-image-", dir=out.parent))
    try:
        roots = {}
        versions = {}
        for pkg, deb in debs.items():
            roots[pkg] = work / "pkgs" / pkg
            roots[pkg].mkdir(parents=True)
            run(["dpkg-deb", "-x", str(deb), str(roots[pkg])])
            versions[pkg] = deb_field(deb, "Version")
        layout = work / "layout"
        (layout / "blobs" / "sha256").mkdir(parents=True)

        base = with_parents(base_entries(binary, roots))
        app = with_parents({BINARY_PATH: Entry(BINARY_PATH, "file", 0o755, src=binary)})
        layers, diff_ids, unpacked = [], [], 0
        for entries in (base, app):
            desc, diff_id, size = write_layer(layout, entries, epoch)
            layers.append(desc)
            diff_ids.append(diff_id)
            unpacked += size

        labels = {
            "org.opencontainers.image.title": "berth",
            "org.opencontainers.image.description": "Berth: a container image registry for Kubernetes",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": revision,
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.licenses": "Apache-2.0",
        }
        if source:
            labels["org.opencontainers.image.source"] = source
        debian = ", ".join(f"{p} {v}" for p, v in sorted(versions.items()))
        config = {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": {
                "User": f"{UID}:{UID}",
                "Entrypoint": [f"/{BINARY_PATH}"],
                "Cmd": ["serve", "--listen", f"0.0.0.0:{PORT}", "--data-dir", f"/{DATA_DIR}"],
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin",
                        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
                "WorkingDir": f"/{DATA_DIR}",
                "ExposedPorts": {f"{PORT}/tcp": {}},
                "Volumes": {f"/{DATA_DIR}": {}},
                "StopSignal": "SIGTERM",
                "Labels": labels,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": created, "created_by": f"scripts/oci-image.py: Debian bookworm files ({debian}), /etc/passwd, /etc/group"},
                {"created": created, "created_by": f"scripts/oci-image.py: /{BINARY_PATH} (berth {version})"},
            ],
        }
        config_desc = dict(write_blob(layout, canonical(config)), mediaType=OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": layers,
            "annotations": labels,
        }
        manifest_desc = dict(write_blob(layout, canonical(manifest)), mediaType=OCI_MANIFEST)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [dict(manifest_desc,
                               platform={"architecture": arch, "os": "linux"},
                               annotations={"org.opencontainers.image.ref.name": tag})],
        }
        (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_bytes(canonical(index))

        if out.exists():
            shutil.rmtree(out)
        os.replace(layout, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    compressed = sum(l["size"] for l in layers)
    log(f"berth {version} ({revision[:12]}, {created}) for linux/{arch}: {out}:{tag}")
    log(f"layers: {compressed} bytes compressed, {unpacked} bytes of tar; Debian: {debian}")
    print(manifest_desc["digest"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", help="the berth binary to package")
    p.add_argument("--out", help="the OCI image layout directory to write (replaced)")
    p.add_argument("--debs", default=str(REPO / "target" / "image-debs"),
                   help="where the Debian packages are kept (downloaded if missing)")
    p.add_argument("--offline", action="store_true",
                   help="use only the .deb files in --debs; never download")
    p.add_argument("--fetch-debs", action="store_true",
                   help="only download the Debian packages into --debs")
    p.add_argument("--tag", help="the tag in index.json (default: the version)")
    p.add_argument("--source", help="org.opencontainers.image.source (default: git origin)")
    p.add_argument("--revision", help="org.opencontainers.image.revision (default: git HEAD)")
    args = p.parse_args()
    if args.fetch_debs:
        for pkg, deb in fetch_debs(Path(args.debs), False).items():
            log(f"{pkg}: {deb}")
        return
    if not args.binary or not args.out:
        p.error("--binary and --out are required")
    build(args)


if __name__ == "__main__":
    main()
