#!/usr/bin/env bash
# Makes sure initdb, pg_ctl and postgres are on PATH for the PostgreSQL store
# tests: uses the machine's binaries when present, else Debian's packages.
# Prints the directory to add to PATH.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
  dirname "$(command -v initdb)"
  exit 0
fi
for d in /usr/lib/postgresql/*/bin; do
  if [ -x "$d/initdb" ]; then echo "$d"; exit 0; fi
done
if [ "$(id -u)" != 0 ]; then
  echo "install-postgres: need root to apt-get install postgresql" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2
for d in /usr/lib/postgresql/*/bin; do
  if [ -x "$d/initdb" ]; then echo "$d"; exit 0; fi
done
echo "install-postgres: postgresql installed but initdb not found" >&2
exit 1
