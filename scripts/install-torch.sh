#!/usr/bin/env bash
# Makes sure python3 can import torch, for the tests that compare our
# forward pass with an independent reference written in plain torch
# (train/testdata/hf_reference.py). Uses the machine's torch when present,
# else Debian's python3-torch (about 150 MB to download, 630 MB installed,
# 182 packages; about 25 s to unpack on a 2-core machine). Without it those
# tests skip, unless OPENCLUSTER_REQUIRE_TORCH=1 (CI) makes that a failure.
set -euo pipefail
for py in /usr/bin/python3 python3; do
  if "$py" -c 'import torch' >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "install-torch: need root to apt-get install python3-torch" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends python3-torch python3-numpy >&2
/usr/bin/python3 -c 'import torch' || { echo "install-torch: python3-torch installed but torch does not import" >&2; exit 1; }
