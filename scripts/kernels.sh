#!/usr/bin/env bash
# Compiles every kernels/*.cu to PTX for compute_75 and compute_80 with nvcc
# (the driver JIT-compiles PTX on newer GPUs) and records the SHA-256 of
# every source (*.cu, *.cuh) and every .ptx in kernels/ptx.sum, which the
# untagged test kernels/ptx_test.go checks in plain CI (no nvcc needed there).
#
# With --check, regenerates into a temporary folder and fails when a
# committed .ptx or ptx.sum differs from what the sources produce.
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
tmpdir=$(mktemp -d kernels/.gen.XXXXXX)
trap 'rm -rf "$tmpdir"' EXIT
# -lineinfo and -G are left off: they embed file paths and would make the
# PTX depend on where the tree is checked out.
for cu in "${sources[@]}"; do
  base=$(basename "${cu%.cu}")
  for arch in 75 80; do
    nvcc -ptx -arch=compute_${arch} -O3 -o "$tmpdir/$base.sm${arch}.ptx" "$cu"
  done
done
# The manifest: sources first, then PTX, each sorted by name.
(
  cd kernels
  for f in $(ls *.cu *.cuh 2>/dev/null | LC_ALL=C sort); do sha256sum "$f"; done
  for f in $(cd "../$tmpdir" && ls *.ptx | LC_ALL=C sort); do
    (cd "../$tmpdir" && sha256sum "$f")
  done
) >"$tmpdir/ptx.sum"
stale=0
if [ $check = 1 ]; then
  for f in "$tmpdir"/*.ptx "$tmpdir/ptx.sum"; do
    out="kernels/$(basename "$f")"
    if ! cmp -s "$f" "$out"; then echo "kernels: $out is stale; run 'make kernels' and commit" >&2; stale=1; fi
  done
  for f in kernels/*.ptx; do
    [ -f "$tmpdir/$(basename "$f")" ] || { echo "kernels: $f has no source; delete it" >&2; stale=1; }
  done
  [ $stale = 0 ] && echo "kernels: committed PTX matches the sources"
  exit $stale
fi
# Write: rename each file into place (same file system, atomic per file).
expected=$(cd "$tmpdir" && ls *.ptx)
for f in "$tmpdir"/*.ptx "$tmpdir/ptx.sum"; do
  out="kernels/$(basename "$f")"
  if ! cmp -s "$f" "$out"; then mv "$f" "$out"; echo "kernels: wrote $out"; fi
done
# PTX whose source is gone is removed.
for f in kernels/*.ptx; do
  grep -qFx "$(basename "$f")" <<<"$expected" || { rm -f "$f"; echo "kernels: removed $f (no source)"; }
done
exit 0
