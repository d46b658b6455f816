#!/usr/bin/env bash
# Drives the console in Debian's Chromium (through playwright-core: no
# browser download) against `httvps up` and `httvps serve` on PostgreSQL.
# Installs chromium with apt-get when it is missing. Screenshots of every
# page, and each server's log (server.log), go to
# target/browser-screenshots/<mode>/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/require-node.sh
if [ -z "${CHROMIUM_BIN:-}" ] && ! [ -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
cargo build --bins --quiet
cd tests/browser
npm ci --no-audit --no-fund --loglevel=error
npm test
