# OpenCluster build. `make demo` and `make test` are the two set-up commands;
# everything else they need is installed by the scripts they call.
SHELL := /bin/bash
GO    ?= go
BIN   := bin
DEMO_DIR ?= demo-out
# Build flags shared by every target; CGO is needed for go-nvml and the CPU kernels.
export CGO_ENABLED := 1

.PHONY: all build cuda test test-short vet fmt-check demo bench kernels ci clean

all: build

build:
	$(GO) build -o $(BIN)/opencluster ./cmd/opencluster
	@if command -v nvcc >/dev/null 2>&1 && [ -f /usr/include/cuda.h ]; then $(MAKE) --no-print-directory cuda; \
	 else echo "make build: no CUDA toolkit here, skipping opencluster-cuda (see 'make cuda')"; fi

# The CUDA build: the same commands with the GPU backend (needs nvcc and cuda.h).
cuda:
	$(GO) build -tags cuda -o $(BIN)/opencluster-cuda ./cmd/opencluster

test:
	$(GO) test -race -count=1 ./...

test-short:
	$(GO) test -short -count=1 ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

demo: build
	./scripts/demo.sh $(BIN)/opencluster $(DEMO_DIR)

bench: build
	./scripts/install-bench-deps.sh
	$(BIN)/opencluster bench --device cpu

kernels:
	./scripts/kernels.sh

ci: fmt-check vet build test demo

clean:
	rm -rf $(BIN) $(DEMO_DIR)
