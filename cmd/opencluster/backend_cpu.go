//go:build !cuda

package main

import (
	"fmt"

	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/spf13/cobra"
)

// newBackend opens the Backend a command runs its model on. This is the
// plain build: every request runs on the CPU, except an explicit GPU
// request, which dispatch (dispatch.go) has already either handed to
// opencluster-cuda or refused; reaching here with one is an error.
func newBackend(dev string, threads int) (backend.Backend, error) {
	req, err := device.ParseRequest(dev)
	if err != nil {
		return nil, err
	}
	if req.Kind == "cuda" {
		return nil, fmt.Errorf("--device %s: this is the CPU build (opencluster); GPUs run in opencluster-cuda (make cuda)", req)
	}
	if threads < 0 {
		return nil, fmt.Errorf("threads %d: must be 0 (every core) or more", threads)
	}
	return backend.NewCPU(threads), nil
}

// benchGPU runs the GPU rows of `bench` when the request lands on a GPU.
// The plain build has none: it reports false and the CPU rows run (an
// explicit --device cuda never gets here, see dispatch).
func benchGPU(*cobra.Command, string) (bool, error) { return false, nil }
