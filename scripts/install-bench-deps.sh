#!/usr/bin/env bash
# install-bench-deps.sh installs the peer that `opencluster bench` measures
# our CPU kernels against: OpenBLAS (Debian's libopenblas0-pthread). The
# opencluster binary never links OpenBLAS; the bench loads it at run time, so
# this script is only needed to get the peer's figures. It does nothing when
# the library is already present, and never fails the bench when it cannot
# install (the bench then prints its rows without the peer and says why).
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

if have_openblas; then
	echo "install-bench-deps: OpenBLAS already present"
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-bench-deps: no apt-get here; install OpenBLAS yourself to measure the peer (the bench runs without it)"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "install-bench-deps: not root and no sudo; skipping OpenBLAS (the bench runs without the peer)"
		exit 0
	fi
fi

echo "install-bench-deps: installing libopenblas0-pthread"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends libopenblas0-pthread; then
	$SUDO apt-get update -q && $SUDO apt-get install -y --no-install-recommends libopenblas0-pthread || {
		echo "install-bench-deps: apt-get failed; the bench runs without the OpenBLAS peer"
		exit 0
	}
fi
echo "install-bench-deps: done"
