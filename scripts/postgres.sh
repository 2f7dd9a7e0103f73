#!/usr/bin/env bash
# Makes sure a local PostgreSQL server is running for the tests and prints the
# URL of a role the tests may use to create (and drop) one database per test.
#
# The role is the script's own, modelreg_test (LOGIN, CREATEDB, a known
# password), never a role someone else made: an existing `modelreg` role
# without CREATEDB made every PostgreSQL test fail with "permission denied to
# create database". The role is created, or given what it lacks, on every run;
# when it still cannot log in or create databases the script says which right
# is missing and fails.
#
# - A Debian cluster that exists but is stopped is started (pg_ctlcluster).
# - Without PostgreSQL, and as root, it is installed from Debian's packages.
# - Without a cluster (or with MODELREG_PG_THROWAWAY=1), a throwaway one is
#   initialised under ${MODELREG_PG_DIR:-/tmp/modelreg-pg} and started on
#   port ${MODELREG_PG_PORT:-5433}.
# Everything it changes is local to this machine and safe to repeat.
set -euo pipefail

ROLE=modelreg_test
PASSWORD=modelreg_test
DATABASE=modelreg_test
log() { echo "postgres.sh: $*" >&2; }

# Only the URL goes to stdout (callers capture it): everything the tools print
# (pg_ctlcluster says "Removed stale pid file.", for one) goes to stderr, and
# no server started here keeps the caller's pipe open.
{
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$bin" ] && echo "$bin"
}

if [ -z "$(pg_bin)" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "PostgreSQL is not installed and this is not root: cannot install it"
        exit 1
    fi
    log "installing PostgreSQL from Debian's packages"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(pg_bin)

HOST=127.0.0.1
PORT=""
if [ "${MODELREG_PG_THROWAWAY:-0}" != 1 ] && command -v pg_lsclusters >/dev/null \
    && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters -h | head -n1)
    if [ "$STATUS" != online ]; then
        log "starting cluster $VERSION/$CLUSTER on port $PORT"
        # A machine stopped without shutting PostgreSQL down leaves a socket
        # lock naming a process that no longer exists: it would refuse to start.
        lock=/var/run/postgresql/.s.PGSQL.$PORT.lock
        if [ -f "$lock" ] && ! kill -0 "$(head -n1 "$lock")" 2>/dev/null; then
            log "removing stale $lock"
            rm -f "$lock"
        fi
        pg_ctlcluster "$VERSION" "$CLUSTER" start
    fi
else
    DIR=${MODELREG_PG_DIR:-/tmp/modelreg-pg}
    PORT=${MODELREG_PG_PORT:-5433}
    if [ ! -f "$DIR/PG_VERSION" ]; then
        log "initialising a throwaway cluster in $DIR"
        mkdir -p "$DIR"
        chown postgres: "$DIR" 2>/dev/null || true
        as_postgres "$BIN/initdb" -D "$DIR" -U postgres -A trust >/dev/null
    fi
    if ! as_postgres "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
        log "starting the throwaway cluster on port $PORT"
        as_postgres "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" \
            -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    fi
fi

for _ in $(seq 1 60); do
    if "$BIN/pg_isready" -q -h "$HOST" -p "$PORT"; then break; fi
    sleep 0.5
done
"$BIN/pg_isready" -q -h "$HOST" -p "$PORT" || { log "PostgreSQL did not become ready on $HOST:$PORT"; exit 1; }

psql_admin() { as_postgres "$BIN/psql" -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U postgres -d postgres "$@"; }
# Debian clusters authenticate the postgres user by peer over the socket.
if ! psql_admin -c 'SELECT 1' >/dev/null 2>&1; then
    psql_admin() { as_postgres "$BIN/psql" -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@"; }
fi
# What the tests need, and no more: log in with the password, and create the
# databases they then own (and so may migrate, alter and drop).
if ! psql_admin <<SQL >/dev/null
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
        CREATE ROLE $ROLE;
    END IF;
END
\$\$;
ALTER ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD';
SQL
then
    log "cannot create the role $ROLE or give it LOGIN and CREATEDB as the postgres user"
    exit 1
fi
if [ -z "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" ]; then
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE" >/dev/null
fi

# Check as the tests will connect: over TCP with the password.
rights=$(PGPASSWORD=$PASSWORD "$BIN/psql" -X -q -tA -h "$HOST" -p "$PORT" -U "$ROLE" -d "$DATABASE" \
    -c "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>&1) || {
    log "role $ROLE cannot log in to database $DATABASE on $HOST:$PORT with its password (LOGIN, CONNECT or pg_hba.conf): $rights"
    exit 1
}
if [ "$rights" != t ]; then
    log "role $ROLE lacks CREATEDB: the tests create a database each (ALTER ROLE $ROLE CREATEDB as a superuser)"
    exit 1
fi
} >&2
echo "postgres://$ROLE:$PASSWORD@$HOST:$PORT/$DATABASE"
