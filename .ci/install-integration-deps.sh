#!/usr/bin/env bash
# Install the external servers/tools that tests/integration uses: redis-server,
# PostgreSQL (initdb + postgres) and wrk. Idempotent and quiet: does nothing when they
# are already present. Debian/Ubuntu (apt-get); uses sudo when not root.
set -euo pipefail

have_pg() {
  command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if command -v redis-server >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && have_pg; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends redis-server postgresql wrk >/dev/null
