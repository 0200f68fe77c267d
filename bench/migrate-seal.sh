#!/bin/bash
# migrate-storage fs -> fs, plain target vs encrypted target (release build), N blobs of S MiB.
# Usage: cargo build --release -p berth && N=8 S=64 bench/migrate-seal.sh
# Blobs are pushed to a fresh server with monolithic uploads, then migrated twice to each target.
set -euo pipefail
B=${BERTH:-target/release/berth}
N=${N:-4}; S=${S:-64}
D=$(mktemp -d)
printf '[catalog]\nenabled = false\n' > $D/src.toml
PORT=$((20000 + RANDOM % 20000))
$B serve --listen 127.0.0.1:$PORT --data-dir $D/src --config $D/src.toml > $D/serve.log 2>&1 &
PID=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/v2/ && break; sleep 0.2; done
for i in $(seq $N); do
  head -c $((S << 20)) /dev/urandom > $D/blob
  dig=$(sha256sum $D/blob | cut -d' ' -f1)
  curl -s -f -X POST -H 'Content-Type: application/octet-stream' --data-binary @$D/blob \
    "http://127.0.0.1:$PORT/v2/bench/m/blobs/uploads/?digest=sha256:$dig" -o /dev/null
done
rm $D/blob
kill $PID; wait $PID || true
printf 'data_dir = "%s/plain"\n[metadata]\nurl = "sqlite:%s/plain/berth.db"\n' $D $D > $D/plain.toml
printf 'data_dir = "%s/enc"\n[metadata]\nurl = "sqlite:%s/enc/berth.db"\n[encryption]\nactive = "b"\n[[encryption.key]]\nid = "b"\nenv = "BENCH_KEK"\n' $D $D > $D/enc.toml
export BENCH_KEK=$(printf 'ab%.0s' $(seq 32))
sync
for t in plain enc plain enc; do
  rm -rf $D/$t
  s=$(date +%s.%N)
  $B migrate-storage --data-dir $D/src --config $D/src.toml --to $D/$t.toml > $D/out.txt; head -1 $D/out.txt
  e=$(date +%s.%N)
  echo "$t: $(echo "$e - $s" | bc) s"
done
du -sb $D/src/blobs $D/plain/blobs $D/enc/blobs
rm -rf $D
