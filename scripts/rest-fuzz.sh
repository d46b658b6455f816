#!/usr/bin/env bash
# Schema-driven fuzzing of the REST routes: schemathesis (pinned, in a venv
# under target/) reads /api/v1/openapi.json from a local `httvps serve` on
# SQLite and sends generated requests, valid and invalid, with a gateway's
# token; it fails on any server error and on any answer the document does
# not describe (status, content type or body). The server is stopped by its
# PID at the end. Bounded: REST_FUZZ_EXAMPLES examples per route (default
# 150), at most REST_FUZZ_MAX_SECS seconds (default 120).
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
examples="${REST_FUZZ_EXAMPLES:-150}"
max_secs="${REST_FUZZ_MAX_SECS:-120}"
root=target/rest-fuzz
venv="$root/venv"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build -q --bin httvps
bin="${CARGO_TARGET_DIR:-target}/debug/httvps"
run="$root/run"
rm -rf "$run" && mkdir -p "$run"
export BACKEND_DB_DSN="sqlite://$PWD/$run/httvps.db"
BACKEND_SECRET_KEY="$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
export BACKEND_SECRET_KEY
export BACKEND_HOST=127.0.0.1 BACKEND_PORT=0 BACKEND_LOG_FORMAT=json BACKEND_DEBUG=false
unset RUST_LOG
password="fuzz-admin-$(head -c 12 /dev/urandom | base64 | tr -d '\n/+=')"
"$bin" migrate >/dev/null
printf '%s\n' "$password" | "$bin" admin create --email fuzz@example.com --password-stdin >/dev/null

"$bin" serve 2>"$run/server.log" >/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
base=""
for _ in $(seq 1 200); do
  base="$(sed -nE 's/.*"http\.addr":"([0-9.:]+)".*/http:\/\/\1/p' "$run/server.log" | head -n1)"
  [ -n "$base" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$run/server.log"; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { echo "the server did not start" >&2; cat "$run/server.log"; exit 1; }

gql() { # token query -> JSON answer
  curl -sS --max-time 20 -H 'content-type: application/json' ${1:+-H "authorization: Bearer $1"} \
    --data "$(python3 -c 'import json,sys; print(json.dumps({"query": sys.argv[1]}))' "$2")" "$base/graphql"
}
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d"+sys.argv[1]))' "$1"; }
admin="$(gql "" "mutation{login(email:\"fuzz@example.com\",password:\"$password\"){accessToken}}" | field '["data"]["login"]["accessToken"]')"
gql "$admin" 'mutation{createRegion(code:"eu",name:"Europe"){id}}' >/dev/null
gateway="$(gql "$admin" 'mutation{registerGatewayNode(input:{region:"eu",name:"fuzz",publicUrl:"https://gw.example"}){token}}' | field '["data"]["registerGatewayNode"]["token"]')"

# The access-event stream never ends by design, so it is left out.
status=0
"$venv/bin/st" run "$base/api/v1/openapi.json" \
  --header "Authorization: Bearer $gateway" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /api/v1/gateway/access-events \
  --max-examples "$examples" --max-time "$max_secs" \
  --request-timeout 10 --seed 1 --workers 2 --no-color \
  --suppress-health-check all --warnings off || status=$?
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
trap - EXIT
if grep -q '"level":"ERROR"' "$run/server.log"; then
  echo "the server logged errors during the run:" >&2
  grep '"level":"ERROR"' "$run/server.log" | head -n 20 >&2
  status=1
fi
exit "$status"
