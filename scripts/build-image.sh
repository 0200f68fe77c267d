#!/usr/bin/env bash
# Build Berth's container image without Docker: a reproducible release build of the
# binary, then scripts/oci-image.py writes the OCI image layout (see its header).
#
#   bash scripts/build-image.sh [--binary PATH] [--out DIR] [oci-image.py options...]
#
# Then, for example:
#   skopeo copy oci:target/image/berth:0.1.0 docker://registry.example.com/berth:0.1.0
#
# The release build is reproducible: SOURCE_DATE_EPOCH is HEAD's commit time unless set,
# --remap-path-prefix turns the checkout into /berth and Cargo's home into /cargo (and
# -ffile-prefix-map does the same for the C code some crates compile), incremental
# compilation is off; so two clean builds of one commit in different directories give the
# same binary, and the same image digest. With --binary, that binary is packaged as it is.
#
# Needs: cargo, python3, dpkg-deb, apt-get (to fetch the Debian packages once, into
# target/image-debs), ldd.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

BINARY=
OUT=$ROOT/target/image/berth
PASS=()
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BINARY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) PASS+=("$1"); shift ;;
  esac
done

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct)
fi
export SOURCE_DATE_EPOCH

if [ -z "$BINARY" ]; then
  CARGO_HOME_DIR=$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  maps=("$ROOT=/berth" "$CARGO_HOME_DIR=/cargo")
  case $TARGET_DIR in
    "$ROOT"/*) ;;
    *) maps+=("$(mkdir -p "$TARGET_DIR" && cd "$TARGET_DIR" && pwd -P)=/target") ;;
  esac
  rustflags=() cflags=()
  for m in "${maps[@]}"; do
    rustflags+=("--remap-path-prefix=$m")
    cflags+=("-ffile-prefix-map=$m")
  done
  export RUSTFLAGS="${rustflags[*]}"
  export CFLAGS="${cflags[*]}" CXXFLAGS="${cflags[*]}"
  export CARGO_INCREMENTAL=0
  echo "[build-image] cargo build --release -p berth (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" >&2
  cargo build --release --locked -p berth >&2
  BINARY=$TARGET_DIR/release/berth
fi

DIGEST=$(python3 "$ROOT/scripts/oci-image.py" --binary "$BINARY" --out "$OUT" "${PASS[@]}")
echo "[build-image] $OUT: $DIGEST" >&2
echo "$DIGEST"
