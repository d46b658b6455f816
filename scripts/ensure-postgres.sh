#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers at HTTVPS_TEST_PG_URL
# (default postgres://postgres@127.0.0.1:5432/postgres): starts the local
# cluster when it is down, installs Debian's postgresql when it is missing
# (with trust auth on loopback, for tests only), and fails loudly otherwise.
set -euo pipefail

url="${HTTVPS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

answers() { pg_isready -q -d "$url" 2>/dev/null; }

# The database link's TLS test (tests/link_tls.rs) needs the server's TLS:
# Debian's clusters have it on with the snakeoil certificate (self-signed
# for localhost); where it is off, it is turned on with that certificate.
ensure_tls() {
  if [ "$(psql -d "$url" -Atc 'SHOW ssl' 2>/dev/null)" = on ]; then
    return 0
  fi
  cert=/etc/ssl/certs/ssl-cert-snakeoil.pem
  key=/etc/ssl/private/ssl-cert-snakeoil.key
  if [ ! -f "$cert" ] && command -v make-ssl-cert >/dev/null 2>&1; then
    make-ssl-cert generate-default-snakeoil
  fi
  if [ ! -f "$cert" ]; then
    echo "warning: PostgreSQL has ssl = off and $cert is missing: the TLS test will fail" >&2
    return 0
  fi
  echo "turning on PostgreSQL's TLS with $cert" >&2
  psql -q -d "$url" -c "ALTER SYSTEM SET ssl_cert_file = '$cert'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$key'" -c "ALTER SYSTEM SET ssl = on" \
    -c "SELECT pg_reload_conf()" >/dev/null
}

if command -v pg_isready >/dev/null 2>&1 && answers; then
  ensure_tls
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
    ensure_tls
    exit 0
  fi
  sleep 1
done
echo "error: PostgreSQL does not answer at $url; the database tests cannot run" >&2
exit 1
