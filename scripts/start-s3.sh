#!/usr/bin/env bash
# Start an S3-compatible test server (moto in server mode) on 127.0.0.1, make sure the
# test bucket exists, and print the endpoint URL on stdout (everything else goes to
# stderr):
#   http://127.0.0.1:9190
#
# Idempotent. moto is installed (pinned) into its own virtualenv under
# $BERTH_TOOLS_PREFIX the first time. moto checks no signatures and keeps objects in
# memory: any access key works, and a restart empties every bucket. It also reports every
# multipart upload as initiated in 2010, so Berth's stale-upload sweep (which runs when
# `serve` starts) aborts any multipart upload pending under its prefix at that moment.
# Stop it again with: kill "$(cat "$BERTH_TOOLS_PREFIX/moto.pid")"
set -euo pipefail

PREFIX=${BERTH_TOOLS_PREFIX:-/opt/berth-tools}
PORT=${BERTH_S3_PORT:-9190}
BUCKET=${BERTH_TEST_S3_BUCKET:-berth-test}
MOTO_VERSION=5.2.5
VENV=$PREFIX/moto-venv
LOG=$PREFIX/moto.log
PIDFILE=$PREFIX/moto.pid
URL="http://127.0.0.1:$PORT"

log() { printf '[start-s3] %s\n' "$*" >&2; }
die() { printf '[start-s3] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$PREFIX"

answers() { curl -fsS -o /dev/null --max-time 2 "$URL/moto-api/" 2>/dev/null; }

if ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  log "installing moto[server]==$MOTO_VERSION into $VENV"
  if ! python3 -m venv "$VENV" >&2 2>&1; then
    # Debian's python3 ships venv separately.
    apt-get -y -q install python3-venv >&2 || die "cannot create a virtualenv (python3-venv)"
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" >&2 || die "pip install moto[server]==$MOTO_VERSION failed"
fi

if ! answers; then
  log "starting moto_server on 127.0.0.1:$PORT (log: $LOG)"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    answers && break
    sleep 0.2
  done
  answers || die "moto_server does not answer on $URL; see $LOG"
fi

# moto checks no signature, so an unsigned request creates the bucket; it answers 200
# whether or not the bucket already existed.
curl -fsS -o /dev/null -X PUT "$URL/$BUCKET" || die "cannot create bucket $BUCKET"
echo "$URL"
