// Package backend defines the Backend interface every model op goes through,
// and the CPU reference implementation the CUDA backend is tested against.
//
// CONTRACT (skeleton): the model helper fills in the interface and the CPU
// backend. Only NewCPU's signature is fixed.
package backend

// Backend runs the model's ops on one device.
type Backend interface {
	// Name is "cpu" or "cuda:N".
	Name() string
}

// NewCPU returns the CPU reference backend using threads workers for the
// matrix products (0 means every core).
func NewCPU(threads int) Backend { return cpu{} }

type cpu struct{}

func (cpu) Name() string { return "cpu" }
