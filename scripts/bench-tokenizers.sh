#!/usr/bin/env bash
# Tokenizer encode speed on one core: our Go tokenizer (BenchmarkEncode,
# -cpu 1) and, in the same run on the same text, the Hugging Face tokenizers
# library's npm build (Rust core) and tokenizers.js, each on one thread.
# The text is Go's net/http sources (code with English comments) and the
# multilingual test texts, encoded in chunks of about 4 KiB.
# Usage: scripts/bench-tokenizers.sh [SECONDS]   (prints a Markdown table)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-5}"
cache="$("$root/scripts/fetch-tokenizers.sh")"
text="$(mktemp --suffix=.txt)"
trap 'rm -f "$text"' EXIT
goroot="$(go env GOROOT)"
cat "$goroot/src/net/http/server.go" "$goroot/src/net/http/transport.go" "$goroot/src/net/http/request.go" >"$text"
node -e 'for (const t of JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).texts) process.stdout.write(t + "\n")' \
  "$root/train/tokenizer/testdata/texts.json" >>"$text"


echo "| tokenizer | implementation | MB/s (wall) | MB per CPU-second |"
echo "|---|---|---|---|"
for model in llama3 qwen sentencepiece-bpe; do
  row="$(cd "$root" && OPENCLUSTER_TOKENIZERS="$cache" OPENCLUSTER_BENCH_TEXT="$text" \
    go test -run '^$' -bench "^BenchmarkEncode/$model\$" -benchtime "${secs}s" -cpu 1 ./train/tokenizer/ |
    awk '/MB\/s/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "MB/s") w = $i; if ($(i+1) == "MB/cpu-s") c = $i }; print w " | " c }')"
  echo "| $model | opencluster train/tokenizer (Go) | $row |"
  node "$cache/npm/reference.js" bench "$cache/models/$model/tokenizer.json" "$text" "$secs" |
    node -e 'for (const r of JSON.parse(require("fs").readFileSync(0, "utf8"))) console.log(`| '"$model"' | ${r.peer} | ${r.mb_per_s.toFixed(2)} | ${r.mb_per_cpu_s.toFixed(2)} |`)'
done
