#!/usr/bin/env bash
# web.sh [--check]: builds the dashboard from web/_ui into web/static (and
# the region table protocol/regions_gen.go) with the npm packages pinned by
# web/_ui/package-lock.json. Commit the result: `go build` needs no Node.
# With --check it builds into a temporary folder and fails when the
# committed files differ (as kernels.sh --check does for the PTX).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || ./scripts/install-chromium.sh >/dev/null
(cd web/_ui && npm ci --no-audit --no-fund --loglevel=error >&2)
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd web/_ui && node build.mjs "$tmp/static" "$tmp/regions_gen.go" >/dev/null)
  stale=0
  for f in index.html app.js app.css; do
    cmp -s "$tmp/static/$f" "web/static/$f" || { echo "web/static/$f is stale: run scripts/web.sh and commit" >&2; stale=1; }
  done
  cmp -s "$tmp/regions_gen.go" protocol/regions_gen.go || { echo "protocol/regions_gen.go is stale: run scripts/web.sh and commit" >&2; stale=1; }
  [ $stale = 0 ] && echo "web: the committed bundle matches its sources"
  exit $stale
fi
(cd web/_ui && node build.mjs)
