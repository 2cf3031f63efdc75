#!/usr/bin/env bash
# Peer benchmark: graphile-worker doing `outboxd bench`'s drain and latency
# job (signed webhooks to a loopback receiver). One command:
#
#   bash benches/peers/graphile/run.sh [--messages N] [--concurrency N] ...
#
# Installs the pinned npm packages into this folder when node_modules is
# missing, then runs bench.js. Without DATABASE_URL it starts a throwaway
# PostgreSQL (fsync on, 127.0.0.1, a free port), removed when this script
# exits however it exits; with DATABASE_URL, bench.js creates and drops a
# database graphile_bench_<pid> on that server. The JSON result goes to
# stdout, progress and a table to stderr. `--help` lists the options.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

command -v node >/dev/null || { echo "run.sh: needs Node.js 20+ (node not found)" >&2; exit 2; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "run.sh: needs Node.js 20+, found $(node --version)" >&2
  exit 2
fi

for arg in "$@"; do
  if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
    exec node bench.js --help
  fi
done

if [ ! -d node_modules/graphile-worker ] || [ ! -d node_modules/pg ]; then
  echo "run.sh: installing graphile-worker and pg (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2 || npm install --no-audit --no-fund --loglevel=error >&2
fi

# Bad options fail here, before a cluster is started.
BENCH_VALIDATE_ONLY=1 node bench.js "$@"

if [ -n "${DATABASE_URL:-}" ]; then
  echo "run.sh: using the server of DATABASE_URL (a database graphile_bench_<pid> is created and dropped)" >&2
  exec node bench.js "$@"
fi

# --- a throwaway PostgreSQL, like `outboxd bench` starts ---------------------
pg_bin=""
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
  pg_bin="$(pg_config --bindir)"
fi
if [ -z "$pg_bin" ] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
  pg_bin="$(dirname "$(readlink -f "$(command -v initdb)")")"
fi
if [ -z "$pg_bin" ]; then
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ] || [ ! -x "$pg_bin/pg_ctl" ]; then
  echo "run.sh: PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL or set DATABASE_URL" >&2
  exit 2
fi

root="$(mktemp -d /tmp/graphile-bench.XXXXXX)"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: run it as the postgres OS user, with
  # a directory it owns.
  id postgres >/dev/null 2>&1 || { echo "run.sh: running as root needs a 'postgres' OS user" >&2; exit 2; }
  chown postgres: "$root"
  as_pg=(runuser -u postgres --)
fi
data="$root/data"
started=0

bench_pid=""

cleanup() {
  local status=$?
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$bench_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$bench_pid" 2>/dev/null || true
  fi
  if [ "$started" = 1 ]; then
    "${as_pg[@]}" "$pg_bin/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1 || true
  fi
  rm -rf "$root"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${as_pg[@]}" "$pg_bin/initdb" -U postgres --auth=trust -E UTF8 --locale=C -N -D "$data" >"$root/initdb.log" 2>&1 \
  || { cat "$root/initdb.log" >&2; exit 1; }
# The same settings as `outboxd bench`'s throwaway cluster: fsync,
# synchronous_commit and full_page_writes stay at their (durable) defaults.
"${as_pg[@]}" tee -a "$data/postgresql.conf" >/dev/null <<EOF

# graphile-worker peer bench throwaway cluster (as outboxd bench's)
listen_addresses = '127.0.0.1'
max_connections = 400
shared_buffers = 128MB
unix_socket_directories = '$data'
wal_level = 'logical'
max_replication_slots = '16'
EOF

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

port=""
for _ in 1 2 3 4 5; do
  candidate="$(free_port)"
  if "${as_pg[@]}" "$pg_bin/pg_ctl" start -w -t 60 -D "$data" -l "$root/server.log" -o "-p $candidate" >/dev/null 2>&1; then
    port="$candidate"
    started=1
    break
  fi
done
if [ -z "$port" ]; then
  echo "run.sh: PostgreSQL did not start; server log:" >&2
  tail -n 20 "$root/server.log" >&2 || true
  exit 1
fi
echo "run.sh: throwaway PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (fsync on), data in $root" >&2

# Not exec: the trap must stop the cluster after the bench ends. In the
# background with `wait`, so that a signal to this script runs its trap at
# once (the trap hands it on to the bench, which drops its database).
status=0
DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres" BENCH_DATABASE_KIND=throwaway \
  node bench.js "$@" &
bench_pid=$!
wait "$bench_pid" || status=$?
bench_pid=""
exit "$status"
