#!/usr/bin/env bash
# The test command: makes sure PostgreSQL is up, then runs the whole suite
# (PostgreSQL and SQLite, real sockets on 127.0.0.1; tests install what they
# run with apt-get when missing: shadowsocks-libev, v2ray-plugin, pebble),
# then the schema-driven
# fuzzer of the REST routes, then the console's
# checks: its committed build matches its sources, and it works in Chromium
# against `httvps up` and `httvps serve` (these need Node 20.19+; Chromium is
# installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
scripts/ensure-packages.sh
# Databases left behind by an interrupted earlier run: their names start
# with the test process's id, so those of a suite still running stay.
url="${HTTVPS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v psql >/dev/null 2>&1; then
  psql -q -At -d "$url" -c "SELECT datname FROM pg_database WHERE datname LIKE 'httvps\_t\_%'" 2>/dev/null \
    | while read -r db; do
        pid=$(printf '%s' "$db" | sed -nE 's/^httvps_t_([0-9]+)_.*/\1/p')
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi
        psql -q -d "$url" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
      done
fi
# Where network namespaces can be made, the multi-host topology test must
# run, not skip.
probe="httvps-probe-$$"
if command -v ip >/dev/null 2>&1 && ip netns add "$probe" 2>/dev/null; then
  ip netns delete "$probe" 2>/dev/null || true
  export HTTVPS_NETLAB_REQUIRED=1
fi
# Load tests open a few thousand sockets.
ulimit -n 65536 2>/dev/null || true
cargo test --workspace --all-targets "$@"
# The REST routes against their OpenAPI document (schemathesis, about 2 min).
scripts/rest-fuzz.sh
scripts/console-drift.sh
scripts/browser-tests.sh
