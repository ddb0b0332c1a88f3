#!/usr/bin/env bash
# demo.sh BIN DIR: what `make demo` runs: the federated demo on this machine.
#
# `opencluster demo` needs nothing beyond the Go installation that built BIN:
# it pretrains a tiny base on $(go env GOROOT)/doc (cached in DIR), splits
# $(go env GOROOT)/src into non-IID shards by package group, starts one
# coordinator and DEMO_WORKERS worker processes on loopback, runs DEMO_ROUNDS
# rounds of federated QLoRA with compressed, signed updates, prints per round
# the participants, bytes, compression ratio, train and validation loss and
# energy, then a generation before and after, and verifies the ledger.
# Under 3 minutes on 2 CPU cores.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BIN DIR" >&2
  exit 2
fi
bin=$1
out=$2
workers=${DEMO_WORKERS:-4}
rounds=${DEMO_ROUNDS:-8}
steps=${DEMO_STEPS:-10}

mkdir -p "$out"
"$bin" demo --workers "$workers" --rounds "$rounds" --steps "$steps" --dir "$out" --device cpu --log-level warn
ledger="$out/coordinator/ledger.jsonl"

# A one-byte edit must make verification fail.
tampered="$out/ledger-tampered.jsonl"
cp "$ledger" "$tampered"
# Change one digit: the first digit of the first update's "bytes" field.
d=$(grep -o '"bytes":[0-9]' "$ledger" | head -1 | cut -d: -f2)
nd=$(( (d + 1) % 10 ))
sed -i "0,/\"bytes\":$d/s//\"bytes\":$nd/" "$tampered"
cmp -s "$ledger" "$tampered" && { echo "demo: could not tamper with $tampered" >&2; exit 1; }
if "$bin" ledger verify "$tampered" >/dev/null 2>&1; then
  echo "demo: ledger verify accepted a tampered ledger ($tampered)" >&2
  exit 1
fi
echo "demo: ledger verify refuses the one-byte-edited copy $tampered, as it should"
