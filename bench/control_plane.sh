#!/usr/bin/env bash
# Control-plane benchmark: validate-device requests per second through the
# real HTTP route (50 concurrent callers, wrk) against pgbench's select-only
# rate on the same PostgreSQL, in one run; prints the ratio and appends the
# figures to BENCHMARKS.md. Usage: bench/control_plane.sh [devices] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
devices="${1:-100000}"
seconds="${2:-15}"
admin_url="${HTTVPS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
base="${admin_url%/*}"
db=httvps_bench
scripts/ensure-postgres.sh
command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }
cargo build --release --bins -q
psql -q -d "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
dsn="$base/$db"
target/release/httvps migrate --db-dsn "$dsn" >/dev/null
echo "seeding $devices devices"
psql -q -d "$dsn" <<SQL
INSERT INTO plans VALUES ('00000000-0000-4000-8000-000000000001','bench',0,'USD',30,NULL,100,'none',false,now(),now());
INSERT INTO regions VALUES ('00000000-0000-4000-8000-000000000002','bench','Bench','chacha20-ietf-poly1305','benchbenchbenchbench',now());
INSERT INTO users SELECT '10000000-0000-4000-8000-' || lpad(i::text, 12, '0'), 'u' || i || '@bench.test', 'x', 'user', 'active', 0, now(), now()
  FROM generate_series(1, ($devices + 9) / 10) i;
INSERT INTO subscriptions SELECT '20000000-0000-4000-8000-' || lpad(i::text, 12, '0'), '10000000-0000-4000-8000-' || lpad(i::text, 12, '0'),
  '00000000-0000-4000-8000-000000000001', 'active', now() - interval '1 day', now() + interval '30 days', NULL, 0, now(), now(), now()
  FROM generate_series(1, ($devices + 9) / 10) i;
INSERT INTO devices SELECT '30000000-0000-4000-8000-' || lpad(i::text, 12, '0'), '10000000-0000-4000-8000-' || lpad(((i + 9) / 10)::text, 12, '0'),
  'd' || i, 'linux', 'active', encode(sha256(('bench' || lpad(i::text, 38, '0'))::bytea), 'hex'), NULL, now(), NULL
  FROM generate_series(1, $devices) i;
INSERT INTO gateway_nodes VALUES ('00000000-0000-4000-8000-000000000003','00000000-0000-4000-8000-000000000002','gw','https://gw.bench',
  encode(sha256('benchgatewaytoken00000000000000000000000000'::bytea), 'hex'),'active','unknown',NULL,0,NULL,now(),now());
ANALYZE;
SQL
BACKEND_DB_DSN="$dsn" BACKEND_SECRET_KEY="bench-secret-bench-secret-bench-secret-0001" BACKEND_PORT=18900 \
  BACKEND_DB_POOL_SIZE=32 RUST_LOG=warn target/release/httvps serve > /tmp/httvps-bench.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs http://127.0.0.1:18900/api/v1/health >/dev/null && break; sleep 0.2; done
cat > /tmp/httvps-validate.lua <<LUA
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer benchgatewaytoken00000000000000000000000000"
request = function()
  local i = math.random(1, $devices)
  return wrk.format(nil, nil, nil, string.format('{"device_token":"bench%038d"}', i))
end
LUA
echo "validate-device: 50 connections, ${seconds}s"
ours=$(wrk -t2 -c50 -d"${seconds}s" --latency -s /tmp/httvps-validate.lua http://127.0.0.1:18900/api/v1/auth/validate-device)
echo "$ours" | grep -E "Requests/sec|99%|Non-2xx" || true
ours_rps=$(echo "$ours" | awk '/Requests\/sec/ {print $2}')
if echo "$ours" | grep -q "Non-2xx"; then
  echo "error: validate-device answered errors; the figures would be meaningless" >&2
  exit 1
fi
ours_p99=$(echo "$ours" | awk '$1=="99%" {print $2}')
pgbench -q -i -s 10 "$dsn" >/dev/null 2>&1
echo "pgbench select-only: 50 clients, ${seconds}s"
peer=$(pgbench -S -c 50 -j 2 -T "$seconds" "$dsn" 2>/dev/null)
peer_tps=$(echo "$peer" | awk -F'= ' '/^tps/ {split($2,a," "); print a[1]}')
ratio=$(awk -v a="$ours_rps" -v b="$peer_tps" 'BEGIN { printf "%.2f", a / b }')
echo "validate-device ${ours_rps} req/s (p99 ${ours_p99}) vs pgbench select-only ${peer_tps} tps: ratio ${ratio} (target >= 0.5)"
{
  echo
  echo "## Control plane, $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m))"
  echo
  echo "| measure | ours | peer | ratio |"
  echo "|---|---|---|---|"
  echo "| validate-device, 50 callers, ${devices} devices | ${ours_rps} req/s, p99 ${ours_p99} | pgbench -S ${peer_tps} tps | ${ratio} |"
} >> BENCHMARKS.md
psql -q -d "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
