#!/usr/bin/env bash
# Checks a GPU bundle (scripts/build-gpu-bundle.sh) on a machine without a
# GPU, as a GPU machine would find it: unpacked into a temporary folder far
# from the sources. Its bin/kernels.test must list the GPU tests and no test
# that reads the kernel sources, and the tests that need no GPU must pass
# there. gorgonia.org/cu calls cuInit in its package init and exits when it
# fails, so the binary runs with a one-function stand-in for the driver's
# cuInit (LD_PRELOAD); no test that needs the GPU is run.
#
# Usage: scripts/check-gpu-bundle.sh [BUNDLE.tar.gz]  (default bin/opencluster-gpu-bundle.tar.gz)
set -euo pipefail
bundle=$(realpath "${1:-bin/opencluster-gpu-bundle.tar.gz}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xzf "$bundle"
printf 'int cuInit(unsigned int flags) { (void)flags; return 0; }\n' >"$work/cuinit.c"
${CC:-cc} -shared -fPIC -o "$work/libcuinit.so" "$work/cuinit.c"
cd "$work/opencluster-gpu"
run() { LD_PRELOAD="$work/libcuinit.so" bin/kernels.test "$@"; }
list=$(run -test.list .)
fail=0
# Tests that read *.cu, *.cuh or ptx.sum from the package folder.
for t in TestEveryModuleListed TestPTXSumMatchesFiles; do
  if grep -qx "$t" <<<"$list"; then echo "check-gpu-bundle: bin/kernels.test lists $t, which needs the kernel sources" >&2; fail=1; fi
done
for t in TestTrainingStep TestMatmul TestNF4 TestBF16 TestFree TestOOMRetry TestCloseRacingOps; do
  if ! grep -qx "$t" <<<"$list"; then echo "check-gpu-bundle: bin/kernels.test does not list the GPU test $t" >&2; fail=1; fi
done
[ $fail = 0 ] || exit 1
# The tests that need no GPU, run where the bundle is.
run -test.run '^(TestPTXEntries|TestEmbeddedPTXVersionAndDriver|TestFormatPCIBusID|TestCtxThread.*)$' -test.v >"$work/out" 2>&1 || {
  cat "$work/out" >&2; echo "check-gpu-bundle: the GPU-free tests of bin/kernels.test failed outside the repository" >&2; exit 1; }
grep -c '^--- PASS' "$work/out" | xargs -I{} echo "check-gpu-bundle: $(wc -l <<<"$list") tests listed, none reads the sources; {} GPU-free tests pass outside the repository"
