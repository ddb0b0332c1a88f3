#!/usr/bin/env bash
# local-demo.sh BIN DIR: the single-machine flow (`make local-demo`): pretrain, QLoRA, generate.
#
# It needs nothing beyond the Go installation that built BIN: two prose corpora
# come from $(go env GOROOT):
#   A = $GOROOT/doc (the language spec, the memory model, the assembler guide)
#   B = every package documentation file $GOROOT/src/**/doc.go
# It pretrains the tiny preset on A, QLoRA-fine-tunes that base on B, and
# prints the validation loss before and after each phase and a generation
# before and after the adapter. A few minutes at most on 2 CPU cores.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BIN DIR" >&2
  exit 2
fi
bin=$1
out=$2
steps_a=${DEMO_PRETRAIN_STEPS:-300}
steps_b=${DEMO_TRAIN_STEPS:-300}
lr_b=${DEMO_TRAIN_LR:-1e-2} # adapters take a higher learning rate than full training
go=${GO:-go}

goroot=$("$go" env GOROOT)
corpus_a=$goroot/doc
if [ ! -d "$corpus_a" ]; then
  echo "demo: $corpus_a not found; is Go installed with its docs?" >&2
  exit 1
fi

rm -rf "$out"
mkdir -p "$out/corpus-b"
corpus_b=$(cd "$out/corpus-b" && pwd)
# Corpus B: copy the doc.go files under their package paths (testdata left out).
(cd "$goroot/src" && find . -name doc.go -not -path '*/testdata/*') | while IFS= read -r f; do
  mkdir -p "$corpus_b/$(dirname "$f")"
  cp "$goroot/src/$f" "$corpus_b/$f"
done
nb=$(find "$corpus_b" -name doc.go | wc -l)
bytes() { find "$1" -type f -print0 | xargs -0 cat | wc -c; }
echo "== corpus A: $corpus_a ($(bytes "$corpus_a") bytes); corpus B: $nb doc.go files ($(bytes "$corpus_b") bytes)"

prompt_a='The type of a '
prompt_b='// Package '

echo
echo "== 1. pretrain the tiny preset on corpus A for $steps_a steps"
"$bin" pretrain --config tiny --data "$corpus_a" --out "$out/base" --steps "$steps_a" --log-level warn

echo
echo "== 2. the base, prompted with '$prompt_b':"
"$bin" generate --base "$out/base" --prompt "$prompt_b" --max-tokens 160 --seed 1

echo
echo "== 3. QLoRA: freeze the base in NF4, train rank-8 adapters on corpus B for $steps_b steps at lr $lr_b"
"$bin" train --config tiny --base "$out/base" --data "$corpus_b" --out "$out/adapter" --steps "$steps_b" --lr "$lr_b" --log-level warn

echo
echo "== 4. the base plus the adapter, same prompt and seed:"
"$bin" generate --base "$out/base" --adapter "$out/adapter" --prompt "$prompt_b" --max-tokens 160 --seed 1

echo
echo "== and the base alone on corpus A's kind of text:"
"$bin" generate --base "$out/base" --prompt "$prompt_a" --max-tokens 120 --seed 1
echo
echo "demo: outputs in $out (base/ a Hugging Face folder, adapter/ in PEFT layout)"
