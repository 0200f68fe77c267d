#!/usr/bin/env bash
# Start the Debian PostgreSQL 15 "main" cluster (creating it if missing), make
# sure role berth/berth and database berth_test exist, and print the URL on
# stdout (everything else goes to stderr):
#   postgres://berth:berth@127.0.0.1:5432/berth_test
#
# Idempotent; run as root; needs `postgresql` (see scripts/install-test-tools.sh).
# Works without systemd (pg_ctlcluster starts postgres directly).
# Stop it again with: pg_ctlcluster 15 main stop
set -euo pipefail

PG_VERSION=${PG_VERSION:-15}
PG_CLUSTER=${PG_CLUSTER:-main}
PG_PORT=${PG_PORT:-5432}
DB_USER=${BERTH_DB_USER:-berth}
DB_PASS=${BERTH_DB_PASSWORD:-berth}
DB_NAME=${BERTH_DB_NAME:-berth_test}

log() { printf '[start-postgres] %s\n' "$*" >&2; }
die() { printf '[start-postgres] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
command -v pg_ctlcluster >/dev/null || die "pg_ctlcluster not found: run scripts/install-test-tools.sh (installs postgresql)"
[ -x "/usr/lib/postgresql/$PG_VERSION/bin/postgres" ] || die "PostgreSQL $PG_VERSION server not installed (package postgresql-$PG_VERSION)"

# Create the cluster if it does not exist (e.g. create_main_cluster=false, or
# it was dropped). --start-conf=manual: nothing should auto-start it at boot.
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {f=1} END {exit !f}'; then
  log "creating cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
  pg_createcluster --port "$PG_PORT" --start-conf=manual "$PG_VERSION" "$PG_CLUSTER" >&2
fi

port=$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $3}')
status=$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}')
[ "$port" = "$PG_PORT" ] || log "warning: cluster $PG_VERSION/$PG_CLUSTER uses port $port, not $PG_PORT"

if [ "$status" != online ]; then
  log "starting cluster $PG_VERSION/$PG_CLUSTER"
  # pg_ctlcluster would delegate to systemctl when systemd runs; --skip-systemctl-redirect
  # keeps it working the same way on both kinds of host.
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start >&2
fi

psql_su() { runuser -u postgres -- psql --no-psqlrc -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"; }

# wait until it accepts connections (pg_ctlcluster waits already; belt and braces)
for _ in $(seq 1 60); do
  if psql_su -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then break; fi
  sleep 0.5
done
psql_su -d postgres -tAc 'SELECT 1' >/dev/null || die "cluster does not accept connections"

psql_su -d postgres -v u="$DB_USER" -v p="$DB_PASS" >&2 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'u', :'p')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'u', :'p') \gexec
SQL

if [ "$(psql_su -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
  log "creating database $DB_NAME"
  runuser -u postgres -- createdb -p "$port" -O "$DB_USER" "$DB_NAME"
fi

URL="postgres://$DB_USER:$DB_PASS@127.0.0.1:$port/$DB_NAME"
# verify password login over TCP, as the tests will connect
PGCONNECT_TIMEOUT=10 psql "$URL" -X -tAc 'SELECT 1' >/dev/null || die "cannot log in as $DB_USER over TCP ($URL)"
echo "$URL"
