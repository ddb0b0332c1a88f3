#!/usr/bin/env bash
# Compiles every kernels/*.cu to PTX for compute_75 and compute_80 with nvcc
# (the driver JIT-compiles PTX on newer GPUs). With --check, fails when a
# committed .ptx differs from what the sources produce.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
sources=(kernels/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "kernels: no kernels/*.cu yet; nothing to compile"
  exit 0
fi
if ! command -v nvcc >/dev/null 2>&1; then
  echo "kernels: nvcc not found; install the CUDA toolkit (scripts/install-cuda.sh)" >&2
  exit 1
fi
check=0
[ "${1:-}" = "--check" ] && check=1
stale=0
for cu in "${sources[@]}"; do
  for arch in 75 80; do
    out="${cu%.cu}.sm${arch}.ptx"
    tmp=$(mktemp)
    nvcc -ptx -arch=compute_${arch} -O3 -o "$tmp" "$cu"
    if [ $check = 1 ]; then
      if ! cmp -s "$tmp" "$out"; then echo "kernels: $out is stale; run 'make kernels' and commit" >&2; stale=1; fi
      rm -f "$tmp"
    else
      mv "$tmp" "$out"; echo "kernels: wrote $out"
    fi
  done
done
exit $stale
