#!/usr/bin/env bash
# Smoke test of the e2e client tools against a plain-HTTP registry on loopback,
# and a reference for the exact command lines the e2e tests can use.
#
#   scripts/smoke-tools.sh                 # starts Debian's docker-registry (Distribution 2.8)
#                                      # on 127.0.0.1:${PORT:-5077} in a temp dir, tests, stops it
#   REGISTRY=127.0.0.1:5000 scripts/smoke-tools.sh   # test an already running registry (e.g. Berth)
#
# Everything it starts (registry, private containerd) lives in one temp dir and
# is stopped on exit. Needs root and scripts/install-test-tools.sh.
set -euo pipefail

PORT=${PORT:-5077}
W=$(mktemp -d /tmp/berth-smoke.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n=== %s\n' "$*" >&2; }
wait_for() { # wait_for SECONDS CMD...
  local t=$1; shift
  for _ in $(seq 1 $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  "$@"
}

# --- registry ---------------------------------------------------------------
if [ -z "${REGISTRY:-}" ]; then
  REGISTRY=127.0.0.1:$PORT
  step "start docker-registry on $REGISTRY"
  mkdir -p "$W/reg"
  cat >"$W/reg/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/reg/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  /usr/bin/docker-registry serve "$W/reg/config.yml" >"$W/reg/log" 2>&1 &
  PIDS+=($!)
  wait_for 10 curl -fsS "http://$REGISTRY/v2/"
fi
R=$REGISTRY

# --- umoci: build a tiny OCI image layout ----------------------------------
step "umoci: build OCI layout $W/oci:v1"
mkdir -p "$W/files/etc"
echo hello-berth >"$W/files/hello.txt"
echo "berth smoke" >"$W/files/etc/motd"
umoci init --layout "$W/oci"
umoci new --image "$W/oci:v1"
umoci insert --image "$W/oci:v1" "$W/files/hello.txt" /hello.txt
umoci insert --image "$W/oci:v1" "$W/files/etc" /etc
umoci config --image "$W/oci:v1" --os linux --architecture amd64 \
  --config.cmd /hello.txt --config.label org.example.berth=smoke
umoci gc --layout "$W/oci"
DIGEST=$(jq -r '.manifests[0].digest' "$W/oci/index.json")

# --- skopeo -----------------------------------------------------------------
step "skopeo: copy oci:$W/oci:v1 -> docker://$R/test/img:v1"
skopeo copy --dest-tls-verify=false "oci:$W/oci:v1" "docker://$R/test/img:v1"
got=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$R/test/img:v1")
[ "$got" = "$DIGEST" ] || { echo "digest mismatch: $got != $DIGEST" >&2; exit 1; }
skopeo copy --src-tls-verify=false "docker://$R/test/img:v1" "oci:$W/oci-back:v1"
curl -fsS "http://$R/v2/test/img/tags/list"; echo

# --- containerd + ctr ------------------------------------------------------
step "containerd: private daemon in $W/ctrd"
C=$W/ctrd; S=$C/containerd.sock
mkdir -p "$C/certs.d/$R"
cat >"$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$S"

[ttrpc]
  address = "$S.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
EOF
cat >"$C/certs.d/$R/hosts.toml" <<EOF
server = "http://$R"

[host."http://$R"]
  capabilities = ["pull", "resolve", "push"]
EOF
containerd --config "$C/config.toml" >"$C/log" 2>&1 &
PIDS+=($!)
wait_for 10 ctr --address "$S" version
CTR=(ctr --address "$S")
export CONTAINERD_SNAPSHOTTER=native   # same as --snapshotter native on each command

step "ctr: pull --plain-http"
"${CTR[@]}" --namespace test image pull --plain-http "$R/test/img:v1"
"${CTR[@]}" --namespace test image ls -q | grep -qx "$R/test/img:v1"
step "ctr: pull --hosts-dir"
"${CTR[@]}" --namespace test-hosts image pull --hosts-dir "$C/certs.d" "$R/test/img:v1"
step "ctr: push (plain-http and hosts-dir)"
"${CTR[@]}" --namespace test image tag "$R/test/img:v1" "$R/test/ctr:v1"
"${CTR[@]}" --namespace test image push --plain-http "$R/test/ctr:v1"
"${CTR[@]}" --namespace test-hosts image tag "$R/test/img:v1" "$R/test/ctr:v2"
"${CTR[@]}" --namespace test-hosts image push --hosts-dir "$C/certs.d" "$R/test/ctr:v2"

# --- podman -----------------------------------------------------------------
step "podman: pull/push with vfs storage in $W/podman"
P=$W/podman
PODMAN=(podman --root "$P/root" --runroot "$P/runroot" --tmpdir "$P/tmp"
        --storage-driver vfs --cgroup-manager cgroupfs --events-backend file)
"${PODMAN[@]}" pull --tls-verify=false "$R/test/img:v1"
"${PODMAN[@]}" tag "$R/test/img:v1" "$R/test/podman:v1"
"${PODMAN[@]}" push --tls-verify=false "$R/test/podman:v1"
"${PODMAN[@]}" push --tls-verify=false --format oci "$R/test/img:v1" "$R/test/podman:oci"
"${PODMAN[@]}" rmi -a -f >/dev/null
"${PODMAN[@]}" pull --tls-verify=false "$R/test/podman:oci"

# --- oras -------------------------------------------------------------------
step "oras: push/pull/attach/discover"
O=$W/oras; mkdir -p "$O/out"
echo "artifact payload" >"$O/payload.txt"
echo '{"sig":"fake"}' >"$O/sig.json"
(cd "$O" && oras push --plain-http --artifact-type application/vnd.berth.test.v1 \
   "$R/test/art:v1" payload.txt:text/plain)
oras manifest fetch --plain-http "$R/test/art:v1" | jq -e '.artifactType == "application/vnd.berth.test.v1"' >/dev/null
oras pull --plain-http -o "$O/out" "$R/test/art:v1"
cmp "$O/payload.txt" "$O/out/payload.txt"
(cd "$O" && oras attach --plain-http --artifact-type application/vnd.berth.sig.v1 \
   "$R/test/img:v1" sig.json:application/json)
oras discover --plain-http --format json "$R/test/img:v1" \
  | jq -e '[.manifests[] | select(.artifactType == "application/vnd.berth.sig.v1")] | length == 1' >/dev/null
oras discover --plain-http "$R/test/img:v1"

step "all tool smoke checks passed against $R"
