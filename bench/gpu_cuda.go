//go:build cuda

package bench

// The CUDA build's side of the GPU rows: kernels.CUDA adapted to GPUKernels
// and GPUBackend, and the card's facts read from the CUDA device attributes.
// Only this file knows the exact method set of kernels.CUDA beyond the
// backend.Backend contract.

import (
	"fmt"

	"github.com/opencluster/opencluster/kernels"
	"gorgonia.org/cu"
)

// CUDAInfo reads the attributes the peaks are computed from for GPU ordinal.
func CUDAInfo(ordinal int) (GPUInfo, error) {
	d := cu.Device(ordinal)
	g := GPUInfo{Index: ordinal}
	name, err := d.Name()
	if err != nil {
		return g, fmt.Errorf("cuda:%d: name: %w", ordinal, err)
	}
	g.Name = name
	major, minor, err := d.ComputeCapability()
	if err != nil {
		return g, fmt.Errorf("cuda:%d (%s): compute capability: %w", ordinal, name, err)
	}
	g.CC = fmt.Sprintf("%d.%d", major, minor)
	attrs, err := d.Attributes(cu.MultiprocessorCount, cu.ClockRate, cu.MemoryClockRate, cu.GlobalMemoryBusWidth)
	if err != nil {
		return g, fmt.Errorf("cuda:%d (%s): device attributes: %w", ordinal, name, err)
	}
	g.SMs = attrs[0]
	g.ClockMHz = attrs[1] / 1000 // kHz
	g.MemClockMHz = attrs[2] / 1000
	g.BusBits = attrs[3]
	if mem, err := d.TotalMem(); err == nil {
		g.MemBytes = uint64(mem)
	}
	return g, nil
}

// cudaGPU adapts *kernels.CUDA to GPUBackend: only this file depends on
// the CUDA backend's methods beyond backend.Backend.
type cudaGPU struct{ *kernels.CUDA }

// OpenCUDA opens GPU ordinal through the CUDA backend.
func OpenCUDA(ordinal int) (GPUBackend, error) {
	c, err := kernels.NewCUDA(ordinal)
	if err != nil {
		return nil, err
	}
	return cudaGPU{c}, nil
}

// PeakBytes implements GPUBackend.
func (c cudaGPU) PeakBytes() uint64 { return uint64(max(c.CUDA.PeakMemory(), 0)) }

// ResetPeak implements GPUBackend.
func (c cudaGPU) ResetPeak() { c.CUDA.ResetPeakMemory() }

// MemInfo implements GPUBackend; a failed query reads as zeros.
func (c cudaGPU) MemInfo() (free, total uint64) {
	f, t, err := c.CUDA.MemInfo()
	if err != nil {
		return 0, 0
	}
	return f, t
}

// Close implements GPUBackend.
func (c cudaGPU) Close() { _ = c.CUDA.Close() }

// SetMixedPrecision switches the matrix products to bf16 tensor cores
// (fp16 on Turing, which has no bf16) for training benches, and returns the
// precision now in use.
func (c cudaGPU) SetMixedPrecision() string {
	p := kernels.BF16
	if major, _ := c.CUDA.ComputeCapability(); major < 8 {
		p = kernels.FP16
	}
	if _, err := c.CUDA.SetPrecision(p); err != nil {
		return string(c.CUDA.Precision())
	}
	return string(p)
}

// KernelsOf returns the GPUKernels of a GPUBackend from OpenCUDA.
func KernelsOf(b GPUBackend) (GPUKernels, error) {
	if c, ok := b.(cudaGPU); ok {
		return c.CUDA, nil
	}
	return nil, fmt.Errorf("bench: backend %s has no CUDA bench helpers", b.Name())
}
