#!/usr/bin/env bash
# Builds what bench/gpu-check.sh needs on a GPU machine that has no Go and
# no network, and packs it into one tarball:
#
#   opencluster-gpu/bin/opencluster         the plain build (dispatch, devices)
#   opencluster-gpu/bin/opencluster-cuda    the CUDA build (-tags cuda)
#   opencluster-gpu/bin/kernels.test        the GPU tests (go test -c -tags cuda ./kernels)
#   opencluster-gpu/bench/gpu-check.sh, bench/peers/*.py, configs/*.yaml
#
# Usage: scripts/build-gpu-bundle.sh [OUT.tar.gz]   (default bin/opencluster-gpu-bundle.tar.gz)
# Then, on the GPU machine:
#   tar xzf opencluster-gpu-bundle.tar.gz && cd opencluster-gpu && bash bench/gpu-check.sh
# and copy opencluster-gpu/bench/results/*.md back into bench/results/.
#
# Needs Go and the CUDA toolkit here (scripts/install-cuda.sh), no GPU. The
# binaries link the C library dynamically (cgo: go-nvml, the CUDA driver),
# so the GPU machine's glibc must be at least the one printed below.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH" CGO_ENABLED=1
out=${1:-bin/opencluster-gpu-bundle.tar.gz}
go=${GO:-go}

if ! command -v nvcc >/dev/null 2>&1 || [ ! -f /usr/include/cuda.h ]; then
  echo "build-gpu-bundle: the CUDA toolkit is missing; run scripts/install-cuda.sh" >&2
  exit 1
fi
./scripts/kernels.sh --check

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
b=$stage/opencluster-gpu
mkdir -p "$b/bin" "$b/bench/peers" "$b/bench/results" "$b/configs"
"$go" build -trimpath -o "$b/bin/opencluster" ./cmd/opencluster
"$go" build -trimpath -tags cuda -o "$b/bin/opencluster-cuda" ./cmd/opencluster
"$go" test -c -trimpath -tags cuda -o "$b/bin/kernels.test" ./kernels
cp bench/gpu-check.sh "$b/bench/"
cp bench/peers/*.py "$b/bench/peers/"
cp configs/*.yaml "$b/configs/"
chmod +x "$b/bin/"* "$b/bench/gpu-check.sh"
git rev-parse HEAD >"$b/COMMIT" 2>/dev/null || echo unknown >"$b/COMMIT"
git status --porcelain >>"$b/COMMIT" 2>/dev/null || true

glibc=$(objdump -T "$b/bin/opencluster-cuda" "$b/bin/kernels.test" 2>/dev/null |
  grep -o 'GLIBC_[0-9.]*' | sort -t. -k1,1 -k2,2n -k3,3n -u | tail -n1 || true)

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$(dirname "$out")/.bundle-XXXXXX")
tar -C "$stage" -czf "$tmp" opencluster-gpu
sync "$tmp" 2>/dev/null || true
mv "$tmp" "$out"
echo "build-gpu-bundle: wrote $out ($(du -h "$out" | cut -f1)); needs ${glibc:-an unknown glibc} or newer on the GPU machine"
echo "on the GPU machine: tar xzf $(basename "$out") && cd opencluster-gpu && bash bench/gpu-check.sh"
