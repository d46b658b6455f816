#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers at HTTVPS_TEST_PG_URL
# (default postgres://postgres@127.0.0.1:5432/postgres): starts the local
# cluster when it is down, installs Debian's postgresql when it is missing
# (with trust auth on loopback, for tests only), and fails loudly otherwise.
set -euo pipefail

url="${HTTVPS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

answers() { pg_isready -q -d "$url" 2>/dev/null; }

if command -v pg_isready >/dev/null 2>&1 && answers; then
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "PostgreSQL is not installed: installing Debian's postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  installed_here=1
fi

version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ]; then
  echo "error: no PostgreSQL cluster under /etc/postgresql" >&2
  exit 1
fi
if [ "${installed_here:-0}" = 1 ]; then
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Test clusters only: trust connections from this machine.
  sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/; s/^(local\s+all\s+postgres\s+)\S+/\1trust/' "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
  || pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true

for _ in $(seq 1 30); do
  if answers; then
    exit 0
  fi
  sleep 1
done
echo "error: PostgreSQL does not answer at $url; the database tests cannot run" >&2
exit 1
