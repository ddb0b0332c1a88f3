#!/usr/bin/env bash
# Installs the CUDA toolkit (nvcc, cuda.h, the libcuda stub) from Debian's
# non-free component when nvcc is missing. Needs root (CI and dev boxes are).
set -euo pipefail
if command -v nvcc >/dev/null 2>&1 && [ -f /usr/include/cuda.h ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-cuda: need root to apt-get install nvidia-cuda-toolkit" >&2
  exit 1
fi
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'non-free' "$src"; then
  sed -i 's/^Components: main$/Components: main contrib non-free/' "$src"
elif [ ! -f "$src" ] && [ -f /etc/apt/sources.list ] && ! grep -q 'non-free' /etc/apt/sources.list; then
  sed -i 's/ main$/ main contrib non-free/' /etc/apt/sources.list
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit >/dev/null
nvcc --version | tail -1
