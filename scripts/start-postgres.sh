#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for weft's store tests, listening on 127.0.0.1 only.
# Idempotent: installs the Debian package if missing, initialises the cluster once,
# starts it if it is not running, ensures the role and database exist.
#
# Usage (as root on Debian):
#   export WEFT_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
#   scripts/start-postgres.sh stop
# stdout: only the connection URL; progress goes to stderr.
# Environment: WEFT_PG_PORT (default 54329), WEFT_PG_DATA (default /var/tmp/weft-pg).
set -euo pipefail

PORT="${WEFT_PG_PORT:-54329}"
DATA="${WEFT_PG_DATA:-/var/tmp/weft-pg}"
USER_NAME=weft
PASSWORD=weft
DB=weft
URL="postgres://${USER_NAME}:${PASSWORD}@127.0.0.1:${PORT}/${DB}"

log() { echo "start-postgres: $*" >&2; }

find_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN="$(find_bin)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "postgresql is not installed and we are not root"; exit 1
    fi
    log "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # Keep the package's own cluster from starting: we run our own on 127.0.0.1.
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN="$(find_bin)"
fi

as_pg() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

if [ "${1:-}" = stop ]; then
    if [ -f "$DATA/PG_VERSION" ]; then
        as_pg "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true
    fi
    exit 0
fi

# A data directory left by another PostgreSQL major version cannot be started: start over.
MAJOR="$(basename "$(dirname "$BIN")")"
if [ -f "$DATA/PG_VERSION" ] && [ "$(cat "$DATA/PG_VERSION")" != "$MAJOR" ]; then
    log "discarding $DATA (made by PostgreSQL $(cat "$DATA/PG_VERSION"), have $MAJOR)"
    rm -rf "$DATA"
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initialising cluster in $DATA"
    mkdir -p "$DATA"
    chown postgres:postgres "$DATA"
    chmod 700 "$DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >&2 2>&1 || \
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C >&2
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    log "starting postgres on 127.0.0.1:$PORT"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
        -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DATA -c fsync=on -c max_connections=200" start >&2 \
        || { cat "$DATA/server.log" >&2; exit 1; }
fi

psql_admin() {
    as_pg "$BIN/psql" -h "$DATA" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"
}

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$USER_NAME'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $USER_NAME LOGIN CREATEDB PASSWORD '$PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB OWNER $USER_NAME" >&2
fi

echo "$URL"
