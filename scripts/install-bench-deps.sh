#!/usr/bin/env bash
# install-bench-deps.sh installs the peers that `opencluster bench` measures
# our CPU paths against:
#   - OpenBLAS (Debian's libopenblas0-pthread), the sgemm peer. The
#     opencluster binary never links it; the bench loads it at run time.
#   - PyTorch for Debian's Python (python3-torch, for /usr/bin/python3), the
#     optional peer of the QLoRA step rows (its fp32 LoRA step of the same
#     shape). It is large (about 1 GB with its dependencies); set
#     OPENCLUSTER_BENCH_TORCH=0 to skip it (the bench then says so in those
#     rows, or pass --no-torch).
# It installs only what is missing, and never fails the bench when it cannot
# install (the bench then prints its rows without that peer and says why).
set -u

have_openblas() {
	if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so'; then
		return 0
	fi
	for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
		if ls "$d"/libopenblas.so* >/dev/null 2>&1 || ls "$d"/openblas-pthread/libopenblas.so* >/dev/null 2>&1; then
			return 0
		fi
	done
	return 1
}

have_torch() {
	[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import torch' >/dev/null 2>&1
}

want=()
if have_openblas; then
	echo "install-bench-deps: OpenBLAS already present"
else
	want+=(libopenblas0-pthread)
fi
if [ "${OPENCLUSTER_BENCH_TORCH:-1}" = "0" ]; then
	echo "install-bench-deps: PyTorch peer skipped (OPENCLUSTER_BENCH_TORCH=0)"
elif have_torch; then
	echo "install-bench-deps: PyTorch already present for /usr/bin/python3"
else
	want+=(python3-torch)
fi
if [ ${#want[@]} -eq 0 ]; then
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-bench-deps: no apt-get here; install ${want[*]} yourself to measure those peers (the bench runs without them)"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "install-bench-deps: not root and no sudo; skipping ${want[*]} (the bench runs without those peers)"
		exit 0
	fi
fi

echo "install-bench-deps: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${want[@]}"; then
	$SUDO apt-get update -q && $SUDO apt-get install -y --no-install-recommends "${want[@]}" || {
		echo "install-bench-deps: apt-get failed; the bench runs without ${want[*]}"
		exit 0
	}
fi
echo "install-bench-deps: done"
