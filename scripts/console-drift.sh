#!/usr/bin/env bash
# Checks that console/dist/ (the committed build the control plane embeds)
# is what console/'s sources build to: installs the locked packages
# (npm ci), builds into a scratch directory and compares. Fails on drift,
# like the schema.graphql test does for the schema.
set -euo pipefail
cd "$(dirname "$0")/../console"
../scripts/require-node.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npm ci --no-audit --no-fund --loglevel=error
CONSOLE_OUT_DIR="$out" npm run --silent build >/dev/null
node scripts/check-drift.mjs "$out"
