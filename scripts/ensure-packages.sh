#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages the suite runs as real peers
# when their programs are missing: shadowsocks-libev and
# shadowsocks-v2ray-plugin (the stock client), pebble (the ACME test
# server). Done once before the tests start, so tests running in parallel
# never install at the same moment (they still install what is missing
# when run alone). apt-get waits for dpkg's lock rather than failing.
set -euo pipefail

need=()
command -v ss-local >/dev/null 2>&1 || need+=(shadowsocks-libev)
command -v ss-v2ray-plugin >/dev/null 2>&1 || need+=(shadowsocks-v2ray-plugin)
{ command -v pebble && command -v pebble-challtestsrv; } >/dev/null 2>&1 || need+=(pebble)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing ${need[*]}" >&2
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq)
export DEBIAN_FRONTEND=noninteractive
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
# A mirror's name that does not resolve for a moment (seen here) is tried
# again, a few seconds later.
for try in 1 2 3; do
  if $sudo "${apt[@]}" install "${need[@]}" >/dev/null \
    || { $sudo "${apt[@]}" update && $sudo "${apt[@]}" install "${need[@]}" >/dev/null; }; then
    exit 0
  fi
  [ "$try" -lt 3 ] && sleep $((try * 5))
done
echo "installing ${need[*]} failed three times" >&2
exit 1
