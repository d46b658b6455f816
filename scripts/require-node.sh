#!/usr/bin/env bash
# The console's build and browser tests need Node 20.19 or newer (Vite's
# floor); the Rust build does not.
set -euo pipefail
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "Node.js 20.19+ and npm are needed for the console checks (https://nodejs.org, or your distribution's nodejs 20+)" >&2
  exit 1
fi
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>20||(a===20&&b>=19)?0:1)'; then
  echo "Node.js $(node --version) is too old for the console: 20.19 or newer is needed" >&2
  exit 1
fi
