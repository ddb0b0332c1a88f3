#!/usr/bin/env bash
# Runs the GPU checks of issue 5 on a GPU machine, from binaries built
# elsewhere: that machine needs the NVIDIA driver, PyTorch (python3 -c
# 'import torch'), and for the sanitizer steps compute-sanitizer; no Go and
# no network. Run it from a bundle made by scripts/build-gpu-bundle.sh:
#
#   tar xzf opencluster-gpu-bundle.tar.gz && cd opencluster-gpu && bash bench/gpu-check.sh
#
# Steps (each logged; a failing step is recorded and the rest still run):
#   1. devices      bin/opencluster devices: NVML sees the GPU and the plain
#                   build would exec opencluster-cuda (the dispatch path)
#   2. gpu-tests    bin/kernels.test -test.v (every kernel against the CPU)
#   3. memcheck     compute-sanitizer --tool memcheck on a short subset
#   4. racecheck    compute-sanitizer --tool racecheck on the same subset
#   5. bench        bin/opencluster-cuda bench --json --device cuda
#   6. bench-7b     the llama-7b QLoRA memory row (OPENCLUSTER_BENCH_QLORA)
#   7. peers        bench/peers/torch_peers.py: cuBLAS, torch NF4, torch LoRA
# then bench/peers/report.py writes bench/results/<gpu>-<date>.md (the
# target table, the steps, every row, the raw log). Exit status: 0 when
# every step ran clean, 1 otherwise (the report is written either way).
#
# Environment: GPU_CHECK_QUICK=1 for short runs; GPU_CHECK_SANITIZE_RUN
# (a -test.run pattern) picks the sanitizer subset; GPU_CHECK_DEVICE
# (default cuda) the --device; RESULTS (default bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."

results=${RESULTS:-bench/results}
device=${GPU_CHECK_DEVICE:-cuda}
sanitize_run=${GPU_CHECK_SANITIZE_RUN:-'NF4|Matmul|RMSNorm|Attention|CrossEntropy'}
quick=()
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && quick=(--quick)
py=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$work/raw.log
steps=$work/steps.tsv
: >"$steps"

for f in bin/opencluster bin/opencluster-cuda bin/kernels.test bench/peers/torch_peers.py bench/peers/report.py; do
  if [ ! -e "$f" ]; then
    echo "gpu-check: $f is missing: run scripts/build-gpu-bundle.sh on a machine with Go and unpack its bundle here" >&2
    exit 2
  fi
done

gpu=unknown-gpu
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
fi
slug=$(printf '%s' "${gpu:-unknown-gpu}" | tr '[:upper:]' '[:lower:]' | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/^-+|-+$//g')
date=$(date -u +%F)
report=$results/${slug:-unknown-gpu}-$date.md

# step NAME CMD...: runs CMD with its output in the log (and on screen),
# records NAME, exit code and seconds.
step() {
  local name=$1
  shift
  echo "=== $name: $*" | tee -a "$log"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$steps"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
}

# rows FILE CMD...: runs CMD with its stdout (JSON rows) also kept in FILE,
# so the rows measured before a crash still reach the report.
rows() {
  local file=$1
  shift
  "$@" | tee "$file"
  return "${PIPESTATUS[0]}"
}

skip() {
  echo "=== $1: skipped: $2" | tee -a "$log"
  printf '%s\tskip\t0\n' "$1" >>"$steps"
}

{
  echo "gpu-check on $(hostname) at $(date -u +%FT%TZ)"
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
} | tee -a "$log"

step devices bin/opencluster devices
step gpu-tests bin/kernels.test -test.v -test.count=1
if command -v compute-sanitizer >/dev/null 2>&1; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 bin/kernels.test -test.run "$sanitize_run" -test.short
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 bin/kernels.test -test.run "$sanitize_run" -test.short
else
  skip memcheck "compute-sanitizer not on PATH"
  skip racecheck "compute-sanitizer not on PATH"
fi
step bench rows "$work/ours.jsonl" bin/opencluster-cuda bench --json --device "$device" "${quick[@]}"
step bench-7b rows "$work/ours-7b.jsonl" env OPENCLUSTER_BENCH_QLORA=llama-7b bin/opencluster-cuda bench --json --quick --device "$device"
step peers rows "$work/peers.jsonl" "$py" bench/peers/torch_peers.py --configs configs "${quick[@]}"

"$py" bench/peers/report.py --gpu "$gpu" --date "$date" \
  --ours "$work/ours.jsonl" --qlora-only "$work/ours-7b.jsonl" --peers "$work/peers.jsonl" \
  --steps "$steps" --log "$log" --out "$report"
rc=$?
[ $rc = 0 ] || { echo "gpu-check: writing the report failed" >&2; exit 1; }

if awk -F'\t' '$2 != "0" && $2 != "skip" { bad = 1 } END { exit !bad }' "$steps"; then
  echo "gpu-check: some steps failed; see $report"
  exit 1
fi
echo "gpu-check: every step ran clean; results in $report (commit it)"
