#!/bin/sh
# The entrypoint of the compose test's stand-in for the postgres image
# (.ci/compose-postgres.Containerfile): the part of the official image's
# docker-entrypoint.sh that deploy/docker-compose.yml relies on, in POSIX
# sh with no other program than PostgreSQL's own.
#
# - Any command but `postgres` runs as it is (the setup service's psql).
# - On an empty $PGDATA: a cluster whose superuser is $POSTGRES_USER with
#   $POSTGRES_PASSWORD, password logins over TCP from anywhere, the
#   database $POSTGRES_DB, then every /docker-entrypoint-initdb.d/*.sql
#   run as $POSTGRES_USER in $POSTGRES_DB (ON_ERROR_STOP), on a server
#   that listens on no TCP port meanwhile.
# - Then the server, listening on every interface.
set -eu

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?the official image refuses to start without a password, and so does this}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=/tmp/postgres-password
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256
    : >"$pwfile"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

    pg_ctl --pgdata="$PGDATA" --wait --options="-c listen_addresses=''" start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql --no-psqlrc -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
            --command="CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
        *.sql)
            echo "$0: running $script"
            psql --no-psqlrc -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
                --dbname="$POSTGRES_DB" --file="$script"
            ;;
        *) echo "$0: ignoring $script" ;;
        esac
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
fi

exec postgres -D "$PGDATA" -c listen_addresses='*'
